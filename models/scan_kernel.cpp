// Fused CPU kernels for the linear scan h_t = a_t * h_{t-1} + b_t (models/scan.py loads them).
//
// Plain C ABI on raw pointers of contiguous (B, T, H) arrays, so the library builds in about a
// second with any C++11 compiler and needs no torch headers. Each (batch row, channel block) is an
// independent recurrence walked once in time: the forward reads a and b and writes h once, the
// backward reads a, h and the incoming gradient once and writes grad_b and grad_a once, which is
// the memory floor of the op. The inner loop runs over contiguous channels and vectorises.
// Arithmetic is the same multiply-add as the reference loop, exact for any real a.
//
// Each walk keeps its running state (h, or d in the backward) in a carry buffer that stays in L1,
// so an output row is written and never read back. That lets `stream` write the outputs with
// non-temporal stores where AVX has them: a normal store first reads each line it overwrites
// (read-for-ownership), so once the tensors no longer fit in the caches forward and backward move
// 11 tensors, not 8. models/scan_cpu_kernel.py streams only at such sizes: below them the backward
// finds h in cache, where a streamed forward would have sent it to memory.

#include <algorithm>
#include <cstdint>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu_kernel.h"

namespace {

// Channels per work unit: long enough to vectorise, short enough to split small batches.
constexpr int64_t kBlock = 256;
// Below this many elements a thread costs more to start than it saves.
constexpr int64_t kMinElementsPerThread = 1 << 15;

// body(row, first_channel, last_channel) on every (batch row, channel block) unit, split over threads.
template <typename F>
void for_each_unit(int64_t B, int64_t T, int64_t H, int threads, F body) {
  const int64_t blocks = (H + kBlock - 1) / kBlock;
  const int64_t units = B * blocks;
  const int64_t workers = cpu_kernel::worker_count(threads, units, B * T * H, kMinElementsPerThread);
  cpu_kernel::for_row_ranges(units, workers, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t u = first; u < last; ++u) {
      const int64_t row = u / blocks, lo = (u % blocks) * kBlock;
      body(row, lo, std::min(H, lo + kBlock));
    }
  });
}

#if defined(__AVX__)
inline void stream_vector(float* to, const float* from) { _mm256_stream_ps(to, _mm256_loadu_ps(from)); }
inline void stream_vector(double* to, const double* from) { _mm256_stream_pd(to, _mm256_loadu_pd(from)); }
#endif

// to[0:n] = from[0:n]; with `stream`, the 32-byte aligned part of the row bypasses the caches.
template <typename S>
inline void store_row(S* to, const S* from, int64_t n, bool stream) {
  int64_t c = 0;
#if defined(__AVX__)
  constexpr int64_t kLanes = 32 / sizeof(S);
  if (stream) {
    for (; c < n && reinterpret_cast<uintptr_t>(to + c) % 32 != 0; ++c) to[c] = from[c];
    for (; c + kLanes <= n; c += kLanes) stream_vector(to + c, from + c);
  }
#endif
  for (; c < n; ++c) to[c] = from[c];
}

// Non-temporal stores are weakly ordered: each unit fences its own before its worker moves on.
inline void finish_streaming(bool stream) {
#if defined(__AVX__)
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// h0 may be null (zero initial state).
template <typename S>
void forward(const S* a, const S* b, const S* h0, S* h, int64_t B, int64_t T, int64_t H, int threads, bool stream) {
  for_each_unit(B, T, H, threads, [=](int64_t row, int64_t lo, int64_t hi) {
    const int64_t n = hi - lo, offset = row * T * H + lo;
    const S* ar = a + offset;
    const S* br = b + offset;
    S* hr = h + offset;
    S carry[kBlock];
    if (h0 == nullptr) {
      for (int64_t c = 0; c < n; ++c) carry[c] = br[c];
    } else {
      const S* start = h0 + row * H + lo;
      for (int64_t c = 0; c < n; ++c) carry[c] = ar[c] * start[c] + br[c];
    }
    store_row(hr, carry, n, stream);
    for (int64_t t = 1; t < T; ++t) {
      const S* at = ar + t * H;
      const S* bt = br + t * H;
      for (int64_t c = 0; c < n; ++c) carry[c] = at[c] * carry[c] + bt[c];
      store_row(hr + t * H, carry, n, stream);
    }
    finish_streaming(stream);
  });
}

// d_t = g_t + a_{t+1} d_{t+1} (d is grad_b), grad_a_t = d_t h_{t-1} with h_{-1} = h0 (or 0).
// grad_a may be null (not needed); h0 may be null.
template <typename S>
void backward(const S* a, const S* h, const S* h0, const S* g, S* d, S* grad_a, int64_t B, int64_t T,
              int64_t H, int threads, bool stream) {
  for_each_unit(B, T, H, threads, [=](int64_t row, int64_t lo, int64_t hi) {
    const int64_t n = hi - lo, offset = row * T * H + lo;
    const S* ar = a + offset;
    const S* hr = h + offset;
    const S* gr = g + offset;
    S* dr = d + offset;
    S* gar = grad_a == nullptr ? nullptr : grad_a + offset;
    S carry[kBlock], grad_a_row[kBlock];
    for (int64_t t = T - 1; t >= 0; --t) {
      if (t > cpu_kernel::kPrefetchSteps) {
        const int64_t ahead = (t - cpu_kernel::kPrefetchSteps) * H;
        cpu_kernel::prefetch(ar + ahead, n);
        cpu_kernel::prefetch(gr + ahead, n);
        cpu_kernel::prefetch(hr + ahead - H, n);
      }
      const S* gt = gr + t * H;
      if (t == T - 1) {
        for (int64_t c = 0; c < n; ++c) carry[c] = gt[c];
      } else {
        const S* anext = ar + (t + 1) * H;
        for (int64_t c = 0; c < n; ++c) carry[c] = anext[c] * carry[c] + gt[c];
      }
      store_row(dr + t * H, carry, n, stream);
      if (gar == nullptr) continue;
      if (t > 0) {
        const S* prev = hr + (t - 1) * H;
        for (int64_t c = 0; c < n; ++c) grad_a_row[c] = carry[c] * prev[c];
      } else if (h0 != nullptr) {
        const S* start = h0 + row * H + lo;
        for (int64_t c = 0; c < n; ++c) grad_a_row[c] = carry[c] * start[c];
      } else {
        for (int64_t c = 0; c < n; ++c) grad_a_row[c] = S(0);
      }
      store_row(gar + t * H, grad_a_row, n, stream);
    }
    finish_streaming(stream);
  });
}

}  // namespace

extern "C" {

void scan_forward_f32(const float* a, const float* b, const float* h0, float* h, int64_t B, int64_t T, int64_t H,
                      int threads, int stream) {
  forward(a, b, h0, h, B, T, H, threads, stream != 0);
}

void scan_forward_f64(const double* a, const double* b, const double* h0, double* h, int64_t B, int64_t T,
                      int64_t H, int threads, int stream) {
  forward(a, b, h0, h, B, T, H, threads, stream != 0);
}

void scan_backward_f32(const float* a, const float* h, const float* h0, const float* g, float* d, float* grad_a,
                       int64_t B, int64_t T, int64_t H, int threads, int stream) {
  backward(a, h, h0, g, d, grad_a, B, T, H, threads, stream != 0);
}

void scan_backward_f64(const double* a, const double* h, const double* h0, const double* g, double* d,
                       double* grad_a, int64_t B, int64_t T, int64_t H, int threads, int stream) {
  backward(a, h, h0, g, d, grad_a, B, T, H, threads, stream != 0);
}

}  // extern "C"
