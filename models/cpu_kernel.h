// What the fused CPU kernels (models/*_kernel.cpp) share: splitting their independent batch rows
// over threads, prefetching the rows a walk backwards in time reads next, a dot product, and exp,
// sigmoid and tanh written so that loops calling them vectorise.
//
// models/cpu_kernel_build.py hashes this header with each kernel's source, so an edit here rebuilds
// every kernel that includes it.

#ifndef SEAM_CPU_KERNEL_H_
#define SEAM_CPU_KERNEL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// exp for float32 in plain arithmetic (Cephes' range reduction and polynomial, about 1 ulp), so that
// loops calling it vectorise; float64, the precision of the checks, keeps std::exp.
inline float exp_of(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline double exp_of(double x) { return std::exp(x); }

template <typename S>
inline S sigmoid(S v) {
  return S(1) / (S(1) + exp_of(-v));
}

// tanh for float32 as Cephes computes it (an odd polynomial below |v| = 0.625, where 1 - 2 / (e^2|v| + 1)
// would lose the digits of small values, that form above), on |v| with v's sign put back: exactly
// odd, as the Z2 models' equivariance needs. float64 keeps std::tanh.
inline float tanh_of(float v) {
  const float a = std::fabs(v), z = a * a;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
       3.33332819422e-1f) * z * a + a;
  const float large = 1.0f - 2.0f / (exp_of(2.0f * a) + 1.0f);
  return std::copysign(a < 0.625f ? small : large, v);
}

inline double tanh_of(double v) { return std::tanh(v); }

template <typename S>
void sigmoid_into(const S* __restrict p, S* __restrict out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = sigmoid(p[j]);
}

template <typename S>
void tanh_into(const S* __restrict p, S* __restrict out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = tanh_of(p[j]);
}

}  // namespace cpu_kernel

#endif  // SEAM_CPU_KERNEL_H_
