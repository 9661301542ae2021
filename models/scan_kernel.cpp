// Fused CPU kernels for the linear scan h_t = a_t * h_{t-1} + b_t (models/scan.py loads them).
//
// Plain C ABI on raw pointers of contiguous (B, T, H) arrays, so the library builds in about a
// second with any C++11 compiler and needs no torch headers. Each (batch row, channel block) is an
// independent recurrence walked once in time: the forward reads a and b and writes h once, the
// backward reads a, h and the incoming gradient once and writes grad_b and grad_a once, which is
// the memory floor of the op. The inner loop runs over contiguous channels and vectorises.
// Arithmetic is the same multiply-add as the reference loop, exact for any real a.

#include <algorithm>
#include <cstdint>

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

// h0 may be null (zero initial state).
template <typename S>
void forward(const S* a, const S* b, const S* h0, S* h, int64_t B, int64_t T, int64_t H, int threads) {
  for_each_unit(B, T, H, threads, [=](int64_t row, int64_t lo, int64_t hi) {
    const S* ar = a + row * T * H;
    const S* br = b + row * T * H;
    S* hr = h + row * T * H;
    if (h0 == nullptr) {
      for (int64_t c = lo; c < hi; ++c) hr[c] = br[c];
    } else {
      const S* start = h0 + row * H;
      for (int64_t c = lo; c < hi; ++c) hr[c] = ar[c] * start[c] + br[c];
    }
    for (int64_t t = 1; t < T; ++t) {
      const S* at = ar + t * H;
      const S* bt = br + t * H;
      const S* prev = hr + (t - 1) * H;
      S* ht = hr + t * H;
      for (int64_t c = lo; c < hi; ++c) ht[c] = at[c] * prev[c] + bt[c];
    }
  });
}

// d_t = g_t + a_{t+1} d_{t+1} (d is grad_b), grad_a_t = d_t h_{t-1} with h_{-1} = h0 (or 0).
// grad_a may be null (not needed); h0 may be null.
template <typename S>
void backward(const S* a, const S* h, const S* h0, const S* g, S* d, S* grad_a, int64_t B, int64_t T,
              int64_t H, int threads) {
  for_each_unit(B, T, H, threads, [=](int64_t row, int64_t lo, int64_t hi) {
    const int64_t offset = row * T * H;
    const S* ar = a + offset;
    const S* hr = h + offset;
    const S* gr = g + offset;
    S* dr = d + offset;
    S* gar = grad_a == nullptr ? nullptr : grad_a + offset;
    for (int64_t t = T - 1; t >= 0; --t) {
      if (t > cpu_kernel::kPrefetchSteps) {
        const int64_t ahead = (t - cpu_kernel::kPrefetchSteps) * H + lo;
        cpu_kernel::prefetch(ar + ahead, hi - lo);
        cpu_kernel::prefetch(gr + ahead, hi - lo);
        cpu_kernel::prefetch(hr + ahead - H, hi - lo);
      }
      const S* gt = gr + t * H;
      S* dt = dr + t * H;
      if (t == T - 1) {
        for (int64_t c = lo; c < hi; ++c) dt[c] = gt[c];
      } else {
        const S* anext = ar + (t + 1) * H;
        const S* dnext = dt + H;
        for (int64_t c = lo; c < hi; ++c) dt[c] = anext[c] * dnext[c] + gt[c];
      }
      if (gar == nullptr) continue;
      S* gat = gar + t * H;
      if (t > 0) {
        const S* prev = hr + (t - 1) * H;
        for (int64_t c = lo; c < hi; ++c) gat[c] = dt[c] * prev[c];
      } else if (h0 != nullptr) {
        const S* start = h0 + row * H;
        for (int64_t c = lo; c < hi; ++c) gat[c] = dt[c] * start[c];
      } else {
        for (int64_t c = lo; c < hi; ++c) gat[c] = S(0);
      }
    }
  });
}

}  // namespace

extern "C" {

void scan_forward_f32(const float* a, const float* b, const float* h0, float* h, int64_t B, int64_t T, int64_t H,
                      int threads) {
  forward(a, b, h0, h, B, T, H, threads);
}

void scan_forward_f64(const double* a, const double* b, const double* h0, double* h, int64_t B, int64_t T,
                      int64_t H, int threads) {
  forward(a, b, h0, h, B, T, H, threads);
}

void scan_backward_f32(const float* a, const float* h, const float* h0, const float* g, float* d, float* grad_a,
                       int64_t B, int64_t T, int64_t H, int threads) {
  backward(a, h, h0, g, d, grad_a, B, T, H, threads);
}

void scan_backward_f64(const double* a, const double* h, const double* h0, const double* g, double* d,
                       double* grad_a, int64_t B, int64_t T, int64_t H, int threads) {
  backward(a, h, h0, g, d, grad_a, B, T, H, threads);
}

}  // extern "C"
