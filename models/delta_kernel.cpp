// Fused CPU kernels for one z2_delta block (the equations of models/gated_delta.py; loaded by
// models/delta_cpu_kernel.py): the block's RMSNorm, the invariant features of (u_t, u_{t-1}), the
// gates with both linear recurrences, and the even state's modulation of the odd one, each forward
// and backward. The matmuls stay in torch (BLAS); these kernels replace the elementwise torch ops,
// and their autograd nodes, around them.
//
// Plain C ABI on raw pointers of contiguous row-major arrays, so the library builds in about a
// second with any C++11 compiler and needs no torch headers. Batch rows are independent through
// time, so each thread walks its own rows, once forward and once in reverse; every loop over
// channels is written so that the compiler vectorises it, the exponential included.
//
// Shapes (B rows, T steps, d stream (= odd) channels, e even channels, k bilinear pairs):
//   u (B, T, d), the unit's normalised input; lr (B, T, 2k), its projections [L u | R u];
//   features f (B, T, 3 + 2k) = [u_t.u_{t-1}/d, |u_t|^2/d, |u_{t-1}|^2/d, (L u_t)(R u_t), (L u_t)(R u_{t-1})]
//   with u_{-1} = 0; pre (B, T, P), P = seam + d + 2e, the pre-activations [seam score (only with the
//   seam), update gate (d odd, e even), even candidate (e)]; xu (B, T, d) = W u. The states:
//   h_odd,t  = (1 - beta_t)(1 - 2 s_t) h_odd,{t-1} + beta_t xu_t,  s_t = sigmoid(score_t / temperature)
//   h_even,t = (1 - beta_t) h_even,{t-1} + beta_t tanh(candidate_t)
// Around the unit: the RMSNorm u = x r w of the block's input x (B, T, d), r = 1 / sqrt(|x|^2 / d + eps),
// and the modulation h_odd sigmoid(m) of the odd state by m = G h_even + c (B, T, d).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernel.h"

namespace {

using cpu_kernel::dot;
using cpu_kernel::sigmoid;
using cpu_kernel::sigmoid_into;
using cpu_kernel::tanh_into;

// Mirrors the ctypes Structure `Shape` of models/delta_cpu_kernel.py field by field.
struct Shape {
  int64_t batch, steps, stream, even, rank;
  int32_t seam, threads;
  double inv_temperature, eps;
};

constexpr int kBaseFeatures = 3;
// Below this many row-steps per thread a thread costs more to start than it saves.
constexpr int64_t kMinRowStepsPerThread = 512;

int64_t workers(const Shape& s) {
  return cpu_kernel::worker_count(s.threads, s.batch, s.batch * s.steps, kMinRowStepsPerThread);
}

// For the kernels whose steps are independent (the norm, the modulation): they split B T steps.
int64_t step_workers(const Shape& s) {
  const int64_t steps = s.batch * s.steps;
  return cpu_kernel::worker_count(s.threads, steps, steps, kMinRowStepsPerThread);
}

// Sum of x[0..n) in kLanes interleaved partial sums, so the additions vectorise (a fixed order:
// the result is deterministic, though not the left-to-right sum).
constexpr int64_t kLanes = 8;
template <typename S>
S sum(const S* x, int64_t n) {
  S partial[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) partial[lane] += x[j + lane];
  }
  for (; j < n; ++j) partial[0] += x[j];
  S total = 0;
  for (int64_t lane = 0; lane < kLanes; ++lane) total += partial[lane];
  return total;
}

// x . y over n values in kLanes interleaved partial sums (vectorised like `sum`, same fixed order).
template <typename S>
S lane_dot(const S* x, const S* y, int64_t n) {
  S partial[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) partial[lane] += x[j + lane] * y[j + lane];
  }
  for (; j < n; ++j) partial[0] += x[j] * y[j];
  S total = 0;
  for (int64_t lane = 0; lane < kLanes; ++lane) total += partial[lane];
  return total;
}

// The RMSNorm u = x r w of every step; r (B T) is kept for the backward.
template <typename S>
void norm_forward(const S* x, const S* w, S* u, S* r, const Shape& s) {
  const int64_t d = s.stream;
  cpu_kernel::for_row_ranges(s.batch * s.steps, step_workers(s), [&](int64_t first, int64_t last, int64_t) {
    for (int64_t at = first; at < last; ++at) {
      const S* xt = x + at * d;
      const S rt = S(1) / std::sqrt(lane_dot(xt, xt, d) / S(d) + S(s.eps));
      r[at] = rt;
      S* ut = u + at * d;
      for (int64_t j = 0; j < d; ++j) ut[j] = xt[j] * rt * w[j];
    }
  });
}

// The norm's gradients from g = grad u: grad_x = r (g w - x r^2 (g w . x) / d) and
// grad_w = sum over steps of g x r, accumulated in double per thread and added in thread order.
template <typename S>
void norm_backward(const S* x, const S* w, const S* r, const S* g, S* grad_x, S* grad_w, const Shape& s) {
  const int64_t d = s.stream, count = step_workers(s);
  std::vector<double> partial(count * d, 0.0);
  cpu_kernel::for_row_ranges(s.batch * s.steps, count, [&](int64_t first, int64_t last, int64_t worker) {
    double* accumulated = partial.data() + worker * d;
    std::vector<S> weighted(d);
    for (int64_t at = first; at < last; ++at) {
      const S* xt = x + at * d;
      const S* gt = g + at * d;
      const S rt = r[at];
      for (int64_t j = 0; j < d; ++j) weighted[j] = gt[j] * w[j];
      const S c = rt * rt * lane_dot(weighted.data(), xt, d) / S(d);
      S* gx = grad_x + at * d;
      for (int64_t j = 0; j < d; ++j) {
        gx[j] = rt * (weighted[j] - xt[j] * c);
        accumulated[j] += static_cast<double>(gt[j] * xt[j] * rt);
      }
    }
  });
  for (int64_t j = 0; j < d; ++j) {
    double total = 0.0;
    for (int64_t worker = 0; worker < count; ++worker) total += partial[worker * d + j];
    grad_w[j] = static_cast<S>(total);
  }
}

// The gates go through a block buffer first (here and in the backward). Fused into one loop, the
// compiler can turn exp's clamp into a select whose saturated branch, h times sigmoid(-88) ~ 6e-39,
// it computes for every element: a denormal each, with a microcode assist (measured, g++ 12: 6.4 ms
// instead of 0.5 ms for 1M values on one thread).
constexpr int64_t kGateBlock = 256;

template <typename S>
void modulate_range(const S* __restrict h, const S* __restrict m, S* __restrict out, int64_t n) {
  S gate[kGateBlock];
  for (int64_t start = 0; start < n; start += kGateBlock) {
    const int64_t count = std::min(kGateBlock, n - start);
    sigmoid_into(m + start, gate, count);
    for (int64_t i = 0; i < count; ++i) out[start + i] = h[start + i] * gate[i];
  }
}

// The modulated odd state h sigmoid(m), elementwise over (B, T, d).
template <typename S>
void modulate_forward(const S* h, const S* m, S* out, const Shape& s) {
  const int64_t d = s.stream;
  cpu_kernel::for_row_ranges(s.batch * s.steps, step_workers(s), [&](int64_t first, int64_t last, int64_t) {
    modulate_range(h + first * d, m + first * d, out + first * d, (last - first) * d);
  });
}

template <typename S>
void modulate_backward_range(const S* __restrict h, const S* __restrict m, const S* __restrict g,
                             S* __restrict grad_h, S* __restrict grad_m, int64_t n) {
  S gate[kGateBlock];
  for (int64_t start = 0; start < n; start += kGateBlock) {
    const int64_t count = std::min(kGateBlock, n - start);
    sigmoid_into(m + start, gate, count);
    for (int64_t i = 0; i < count; ++i) {
      const S grad = g[start + i];
      grad_h[start + i] = grad * gate[i];
      grad_m[start + i] = grad * h[start + i] * gate[i] * (S(1) - gate[i]);
    }
  }
}

// grad_h = g sigmoid(m) and grad_m = g h sigmoid'(m) from g, the sigmoid recomputed from m.
template <typename S>
void modulate_backward(const S* h, const S* m, const S* g, S* grad_h, S* grad_m, const Shape& s) {
  const int64_t d = s.stream;
  cpu_kernel::for_row_ranges(s.batch * s.steps, step_workers(s), [&](int64_t first, int64_t last, int64_t) {
    const int64_t at = first * d;
    modulate_backward_range(h + at, m + at, g + at, grad_h + at, grad_m + at, (last - first) * d);
  });
}

template <typename S>
void features_forward(const S* u, const S* lr, S* f, const Shape& s) {
  const int64_t T = s.steps, d = s.stream, k = s.rank, F = kBaseFeatures + 2 * k;
  cpu_kernel::for_row_ranges(s.batch, workers(s), [&](int64_t first, int64_t last, int64_t) {
    for (int64_t row = first; row < last; ++row) {
      for (int64_t t = 0; t < T; ++t) {
        const S* ut = u + (row * T + t) * d;
        const S* lt = lr + (row * T + t) * 2 * k;
        const S* rt = lt + k;
        S* ft = f + (row * T + t) * F;
        ft[1] = dot(ut, ut, d) / S(d);
        if (t == 0) {
          ft[0] = ft[2] = S(0);
          for (int64_t j = 0; j < k; ++j) ft[kBaseFeatures + k + j] = S(0);
        } else {
          ft[0] = dot(ut, ut - d, d) / S(d);
          ft[2] = ft[1 - F];
          const S* r_before = rt - 2 * k;
          for (int64_t j = 0; j < k; ++j) ft[kBaseFeatures + k + j] = lt[j] * r_before[j];
        }
        for (int64_t j = 0; j < k; ++j) ft[kBaseFeatures + j] = lt[j] * rt[j];
      }
    }
  });
}

// grad_u and grad_lr of the features, from their gradient g (B, T, 3 + 2k).
template <typename S>
void features_backward(const S* u, const S* lr, const S* g, S* grad_u, S* grad_lr, const Shape& s) {
  const int64_t T = s.steps, d = s.stream, k = s.rank, F = kBaseFeatures + 2 * k;
  cpu_kernel::for_row_ranges(s.batch, workers(s), [&](int64_t first, int64_t last, int64_t) {
    for (int64_t row = first; row < last; ++row) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t at = row * T + t;
        const S* gt = g + at * F;
        const bool has_before = t > 0, has_after = t + 1 < T;
        // u_t enters the dots of steps t and t + 1, the squared norm of step t, and as u_{t-1} of step t + 1.
        const S dot_now = has_before ? gt[0] / S(d) : S(0);
        const S dot_next = has_after ? gt[F] / S(d) : S(0);
        const S square = S(2) * (gt[1] + (has_after ? gt[F + 2] : S(0))) / S(d);
        const S* ut = u + at * d;
        const S* before = has_before ? ut - d : ut;
        const S* after = has_after ? ut + d : ut;
        S* gu = grad_u + at * d;
        for (int64_t j = 0; j < d; ++j) gu[j] = dot_now * before[j] + dot_next * after[j] + square * ut[j];
        const S* lt = lr + at * 2 * k;
        const S* rt = lt + k;
        const S* r_before = has_before ? rt - 2 * k : rt;
        const S* l_after = has_after ? lt + 2 * k : lt;
        const S* g_pair = gt + kBaseFeatures;         // (L u_t)(R u_t)
        const S* g_lagged = g_pair + k;               // (L u_t)(R u_{t-1})
        const S* g_lagged_after = has_after ? g_lagged + F : g_lagged;  // (L u_{t+1})(R u_t)
        const S lag_now = has_before ? S(1) : S(0), lag_next = has_after ? S(1) : S(0);
        S* gl = grad_lr + at * 2 * k;
        S* gr = gl + k;
        for (int64_t j = 0; j < k; ++j) {
          gl[j] = g_pair[j] * rt[j] + lag_now * g_lagged[j] * r_before[j];
          gr[j] = g_pair[j] * lt[j] + lag_next * g_lagged_after[j] * l_after[j];
        }
      }
    }
  });
}

// The gates of one step from its pre-activations: seam flip 1 - 2 s, update gates, even candidate.
template <typename S>
struct StepGates {
  std::vector<S> beta, candidate;
  S seam = 0, flip = 1;

  explicit StepGates(const Shape& s) : beta(s.stream + s.even), candidate(s.even) {}

  void compute(const S* p, const Shape& s) {
    if (s.seam) {
      seam = sigmoid(p[0] * S(s.inv_temperature));
      flip = S(1) - S(2) * seam;
      ++p;
    }
    sigmoid_into(p, beta.data(), s.stream + s.even);
    tanh_into(p + s.stream + s.even, candidate.data(), s.even);
  }
};

template <typename S>
void odd_step(S flip, const S* __restrict beta, const S* __restrict before, const S* __restrict x, S* __restrict h,
              int64_t n) {
  for (int64_t j = 0; j < n; ++j) h[j] = (flip - flip * beta[j]) * before[j] + beta[j] * x[j];
}

template <typename S>
void even_step(const S* __restrict beta, const S* __restrict before, const S* __restrict candidate, S* __restrict h,
               int64_t n) {
  for (int64_t j = 0; j < n; ++j) h[j] = (S(1) - beta[j]) * before[j] + beta[j] * candidate[j];
}

// The reverse of odd_step: from g = grad h_t + carry, the gradients of xu_t and of beta's
// pre-activation, each channel's share of the flip's gradient, and the carry to step t - 1.
template <typename S>
void odd_step_backward(S flip, const S* __restrict beta, const S* __restrict before, const S* __restrict x,
                       const S* __restrict grad_h, S* __restrict carry, S* __restrict grad_x,
                       S* __restrict grad_beta, S* __restrict flip_terms, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const S g = grad_h[j] + carry[j];
    const S b = beta[j];
    grad_x[j] = g * b;
    grad_beta[j] = g * (x[j] - flip * before[j]) * b * (S(1) - b);
    flip_terms[j] = g * (S(1) - b) * before[j];
    carry[j] = g * (flip - flip * b);
  }
}

template <typename S>
void even_step_backward(const S* __restrict beta, const S* __restrict before, const S* __restrict candidate,
                        const S* __restrict grad_h, S* __restrict carry, S* __restrict grad_beta,
                        S* __restrict grad_candidate, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const S g = grad_h[j] + carry[j];
    const S b = beta[j], c = candidate[j];
    grad_beta[j] = g * (c - before[j]) * b * (S(1) - b);
    grad_candidate[j] = g * b * (S(1) - c * c);
    carry[j] = g * (S(1) - b);
  }
}

// The states h_odd (B, T, d) and h_even (B, T, e); h0_odd, h0_even (B, d), (B, e) may be null (zeros).
template <typename S>
void scan_forward(const S* pre, const S* xu, const S* h0_odd, const S* h0_even, S* h_odd, S* h_even, const Shape& s) {
  const int64_t T = s.steps, d = s.stream, e = s.even, P = s.seam + d + 2 * e;
  cpu_kernel::for_row_ranges(s.batch, workers(s), [&](int64_t first, int64_t last, int64_t) {
    StepGates<S> gates(s);
    const std::vector<S> zeros(std::max(d, e), S(0));
    for (int64_t row = first; row < last; ++row) {
      const S* odd_before = h0_odd ? h0_odd + row * d : zeros.data();
      const S* even_before = h0_even ? h0_even + row * e : zeros.data();
      for (int64_t t = 0; t < T; ++t) {
        const int64_t at = row * T + t;
        gates.compute(pre + at * P, s);
        const S* beta = gates.beta.data();
        S* odd = h_odd + at * d;
        S* even = h_even + at * e;
        odd_step(gates.flip, beta, odd_before, xu + at * d, odd, d);
        even_step(beta + d, even_before, gates.candidate.data(), even, e);
        odd_before = odd;
        even_before = even;
      }
    }
  });
}

// One reverse walk: grad_pre (B, T, P), grad_xu (B, T, d) and the initial states' gradients from the
// states' gradients (either may be null: zero). Gates are recomputed from pre rather than stored.
// grad_pre may be pre and grad_xu may be xu: each row is read before it is overwritten.
template <typename S>
void scan_backward(const S* pre, const S* xu, const S* h_odd, const S* h_even, const S* h0_odd, const S* h0_even,
                   const S* grad_odd, const S* grad_even, S* grad_pre, S* grad_xu, S* grad_h0_odd,
                   S* grad_h0_even, const Shape& s) {
  const int64_t T = s.steps, d = s.stream, e = s.even, P = s.seam + d + 2 * e;
  cpu_kernel::for_row_ranges(s.batch, workers(s), [&](int64_t first, int64_t last, int64_t) {
    StepGates<S> gates(s);
    const std::vector<S> zeros(std::max(d, e), S(0));
    std::vector<S> carry_odd(d), carry_even(e), flip_terms(d), x(d);
    for (int64_t row = first; row < last; ++row) {
      std::fill(carry_odd.begin(), carry_odd.end(), S(0));
      std::fill(carry_even.begin(), carry_even.end(), S(0));
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t at = row * T + t;
        if (t > cpu_kernel::kPrefetchSteps) {
          const int64_t ahead = at - cpu_kernel::kPrefetchSteps;
          cpu_kernel::prefetch(pre + ahead * P, P);
          cpu_kernel::prefetch(xu + ahead * d, d);
          cpu_kernel::prefetch(h_odd + (ahead - 1) * d, d);
          cpu_kernel::prefetch(h_even + (ahead - 1) * e, e);
          if (grad_odd) cpu_kernel::prefetch(grad_odd + ahead * d, d);
          if (grad_even) cpu_kernel::prefetch(grad_even + ahead * e, e);
        }
        gates.compute(pre + at * P, s);
        const S* beta = gates.beta.data();
        const S* odd_before = t > 0 ? h_odd + (at - 1) * d : (h0_odd ? h0_odd + row * d : zeros.data());
        const S* even_before = t > 0 ? h_even + (at - 1) * e : (h0_even ? h0_even + row * e : zeros.data());
        S* gp = grad_pre + at * P;
        S* gp_beta = gp + s.seam;
        std::copy(xu + at * d, xu + (at + 1) * d, x.begin());  // grad_xu may overwrite this row
        odd_step_backward(gates.flip, beta, odd_before, x.data(), grad_odd ? grad_odd + at * d : zeros.data(),
                          carry_odd.data(), grad_xu + at * d, gp_beta, flip_terms.data(), d);
        if (s.seam) {
          gp[0] = S(-2) * sum(flip_terms.data(), d) * gates.seam * (S(1) - gates.seam) * S(s.inv_temperature);
        }
        even_step_backward(beta + d, even_before, gates.candidate.data(),
                           grad_even ? grad_even + at * e : zeros.data(), carry_even.data(), gp_beta + d,
                           gp_beta + d + e, e);
      }
      if (grad_h0_odd) std::copy(carry_odd.begin(), carry_odd.end(), grad_h0_odd + row * d);
      if (grad_h0_even) std::copy(carry_even.begin(), carry_even.end(), grad_h0_even + row * e);
    }
  });
}

}  // namespace

#define DELTA_KERNELS(S, suffix)                                                                               \
  void delta_norm_forward_##suffix(const S* x, const S* w, S* u, S* r, const Shape* s) {                      \
    norm_forward(x, w, u, r, *s);                                                                             \
  }                                                                                                           \
  void delta_norm_backward_##suffix(const S* x, const S* w, const S* r, const S* g, S* grad_x, S* grad_w,    \
                                    const Shape* s) {                                                         \
    norm_backward(x, w, r, g, grad_x, grad_w, *s);                                                            \
  }                                                                                                           \
  void delta_modulate_forward_##suffix(const S* h, const S* m, S* out, const Shape* s) {                      \
    modulate_forward(h, m, out, *s);                                                                          \
  }                                                                                                           \
  void delta_modulate_backward_##suffix(const S* h, const S* m, const S* g, S* grad_h, S* grad_m,            \
                                        const Shape* s) {                                                     \
    modulate_backward(h, m, g, grad_h, grad_m, *s);                                                           \
  }                                                                                                           \
  void delta_features_forward_##suffix(const S* u, const S* lr, S* f, const Shape* s) {                       \
    features_forward(u, lr, f, *s);                                                                           \
  }                                                                                                           \
  void delta_features_backward_##suffix(const S* u, const S* lr, const S* g, S* grad_u, S* grad_lr,          \
                                        const Shape* s) {                                                     \
    features_backward(u, lr, g, grad_u, grad_lr, *s);                                                        \
  }                                                                                                           \
  void delta_scan_forward_##suffix(const S* pre, const S* xu, const S* h0_odd, const S* h0_even, S* h_odd,    \
                                   S* h_even, const Shape* s) {                                              \
    scan_forward(pre, xu, h0_odd, h0_even, h_odd, h_even, *s);                                               \
  }                                                                                                           \
  void delta_scan_backward_##suffix(const S* pre, const S* xu, const S* h_odd, const S* h_even,              \
                                    const S* h0_odd, const S* h0_even, const S* grad_odd, const S* grad_even, \
                                    S* grad_pre, S* grad_xu, S* grad_h0_odd, S* grad_h0_even, const Shape* s) { \
    scan_backward(pre, xu, h_odd, h_even, h0_odd, h0_even, grad_odd, grad_even, grad_pre, grad_xu,          \
                  grad_h0_odd, grad_h0_even, *s);                                                            \
  }

extern "C" {
DELTA_KERNELS(float, f32)
DELTA_KERNELS(double, f64)
}  // extern "C"
