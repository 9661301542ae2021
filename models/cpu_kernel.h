// What the fused CPU kernels (models/*_kernel.cpp) share: splitting their independent batch rows
// over threads, prefetching the rows a walk backwards in time reads next, and a dot product.
//
// models/cpu_kernel_build.py hashes this header with each kernel's source, so an edit here rebuilds
// every kernel that includes it.

#ifndef SEAM_CPU_KERNEL_H_
#define SEAM_CPU_KERNEL_H_

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace cpu_kernel {

// How many of `threads` to use on `rows` independent rows worth `work` units in all: a thread
// costs more to start than it saves below `min_work_per_thread` units.
inline int64_t worker_count(int64_t threads, int64_t rows, int64_t work, int64_t min_work_per_thread) {
  const int64_t by_size = std::max<int64_t>(1, work / min_work_per_thread);
  return std::max<int64_t>(1, std::min<int64_t>({threads, rows, by_size}));
}

// body(first_row, last_row, worker) on `workers` contiguous row ranges, worker 0 on this thread.
// Built with OpenMP (models/cpu_kernel_build.py), the workers are torch's own thread pool.
template <typename F>
void for_row_ranges(int64_t rows, int64_t workers, F body) {
  const int64_t per = (rows + workers - 1) / workers;
#ifdef _OPENMP
#pragma omp parallel for num_threads(workers) schedule(static, 1)
  for (int64_t w = 0; w < workers; ++w) body(std::min(rows, w * per), std::min(rows, (w + 1) * per), w);
#else
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < workers; ++w) {
    pool.emplace_back(body, std::min(rows, w * per), std::min(rows, (w + 1) * per), w);
  }
  body(0, std::min(rows, per), int64_t(0));
  for (auto& thread : pool) thread.join();
#endif
}

// Asks for the n values at `row` ahead of their use. A walk backwards in time reads addresses in
// descending order, which the hardware prefetchers of some CPUs do not follow; measured on the
// z2_delta backward, fetching the row 8 steps ahead took it from 2.4-3.3 ms to 1.4-1.5 ms.
template <typename S>
inline void prefetch(const S* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 64 / static_cast<int64_t>(sizeof(S))) __builtin_prefetch(row + i);
}

// How many steps ahead a backward walk prefetches.
constexpr int64_t kPrefetchSteps = 8;

// x . y over n values, summed left to right.
template <typename S>
inline S dot(const S* x, const S* y, int64_t n) {
  S sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

}  // namespace cpu_kernel

#endif  // SEAM_CPU_KERNEL_H_
