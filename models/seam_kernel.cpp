// Fused CPU kernels for the z2_seam recurrence (the equations of models/z2_seam.py; loaded by
// models/seam_cpu_kernel.py): the whole time loop forward, and its backward through time.
//
// Plain C ABI on raw pointers of contiguous row-major arrays, so the library builds in about a
// second with any C++11 compiler and needs no torch headers. Batch rows are independent through
// time, so each thread walks its own rows; in the backward each thread sums its weight gradients
// in its own buffers, added together at the end. Every small mat-vec is written as a sum of
// scaled rows (y += a_j W_j over contiguous W_j), which vectorises without reassociating sums, so
// the arithmetic stays as deterministic and as exactly odd under x -> -x as the equations.
//
// Shapes (B rows, T steps, D inputs, E even and O odd channels, C = E, plus 1 for the learned gate):
//   x (B, T, D); static (B, T, C); drive (B, T, O); state_weight (3 + E, C), which maps the features
//   [x.y, ||y||^2, alpha, h_even] to the pre-activations [gate score (learned only), even];
//   odd_weight (O, O), modulation_weight (O, E), modulation_bias (O), readout_weight (D, O), as
//   nn.Linear stores them (output, input). The forward stores every state, initial one first:
//   h_even (B, T + 1, E), h_odd and modulation sigmoid(G h_even + c) (B, T + 1, O), the prediction
//   y (B, T + 1, D) and the parity energy alpha (B, T + 1) of each state, and the gate (B, T).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_kernel.h"

namespace {

using cpu_kernel::dot;
using cpu_kernel::sigmoid;
using cpu_kernel::sigmoid_into;
using cpu_kernel::tanh_into;

enum GateKind : int32_t { kLearned = 0, kThreshold = 1, kConstant = 2 };

// Mirrors the ctypes Structure `Shape` of models/seam_cpu_kernel.py field by field.
struct Shape {
  int64_t batch, steps, input, even, odd;
  int32_t gate, threads;
  double temperature, constant_gate, threshold;
};

constexpr int kFeatures = 3;  // x.y, ||y||^2, alpha: the state-dependent invariants before h_even
// Below this many row-steps per thread a thread costs more to start than it saves.
constexpr int64_t kMinRowStepsPerThread = 256;

template <typename S>
inline void axpy(S a, const S* __restrict x, S* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y[0..n) += sum over j < rows of a[j] w[j, 0..n) (w row-major): each y[i] summed in the order of j,
// as that many axpys would, but over all rows for one block of y at a time, kept in a local array,
// instead of one pass over the whole of y per row (measured faster: docs/speed.md, z2_seam kernel).
template <typename S>
void add_rows(const S* __restrict a, const S* __restrict w, int64_t rows, int64_t n, S* __restrict y) {
  constexpr int64_t kBlock = 128 / sizeof(S);  // four 32-byte vectors
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    S block[kBlock];
    for (int64_t l = 0; l < kBlock; ++l) block[l] = y[i + l];
    for (int64_t j = 0; j < rows; ++j) {
      const S a_j = a[j];
      const S* row = w + j * n + i;
      for (int64_t l = 0; l < kBlock; ++l) block[l] += a_j * row[l];
    }
    for (int64_t l = 0; l < kBlock; ++l) y[i + l] = block[l];
  }
  if (i < n) {
    for (int64_t j = 0; j < rows; ++j) axpy(a[j], w + j * n + i, y + i, n - i);
  }
}

// add_outer_products on the rows [first_row, last_row) and columns [first_col, cols) only, step by step.
template <typename S>
void add_outer_products_by_step(const S* l, int64_t l_step, const S* scale, const S* r, int64_t r_step,
                                int64_t steps, int64_t first_row, int64_t last_row, int64_t first_col, int64_t cols,
                                S* g) {
  if (first_col >= cols) return;
  for (int64_t t = 0; t < steps; ++t) {
    const S factor = scale == nullptr ? S(1) : scale[t];
    for (int64_t i = first_row; i < last_row; ++i) {
      axpy(factor * l[t * l_step + i], r + t * r_step + first_col, g + i * cols + first_col, cols - first_col);
    }
  }
}

// g[i, j] += sum over steps t < steps of scale_t l[t, i] r[t, j] for i < rows, j < cols, with
// steps strided by l_step and r_step, g row-major with `cols` columns; scale null means 1. A tile of
// 4 rows x 2 vectors of sums stays in registers through all steps, so g is loaded and stored once
// per call, where one outer product per step would load and store all of g at every step.
template <typename S>
void add_outer_products(const S* __restrict l, int64_t l_step, const S* __restrict scale, const S* __restrict r,
                        int64_t r_step, int64_t steps, int64_t rows, int64_t cols, S* __restrict g) {
  typedef S Vec __attribute__((vector_size(32)));
  constexpr int64_t kLanes = 32 / sizeof(S), kTileRows = 4, kTileCols = 2 * kLanes;
  int64_t i0 = 0;
  for (; i0 + kTileRows <= rows; i0 += kTileRows) {
    int64_t j0 = 0;
    for (; j0 + kTileCols <= cols; j0 += kTileCols) {
      Vec sums[kTileRows][2] = {};
      for (int64_t t = 0; t < steps; ++t) {
        const S* l_t = l + t * l_step + i0;
        Vec low, high;
        std::memcpy(&low, r + t * r_step + j0, sizeof low);
        std::memcpy(&high, r + t * r_step + j0 + kLanes, sizeof high);
        const S factor = scale == nullptr ? S(1) : scale[t];
        for (int64_t a = 0; a < kTileRows; ++a) {
          const Vec left = Vec{} + factor * l_t[a];
          sums[a][0] += left * low;
          sums[a][1] += left * high;
        }
      }
      for (int64_t a = 0; a < kTileRows; ++a) {
        S* g_row = g + (i0 + a) * cols + j0;
        for (int64_t c = 0; c < kLanes; ++c) {
          g_row[c] += sums[a][0][c];
          g_row[kLanes + c] += sums[a][1][c];
        }
      }
    }
    add_outer_products_by_step(l, l_step, scale, r, r_step, steps, i0, i0 + kTileRows, j0, cols, g);
  }
  add_outer_products_by_step(l, l_step, scale, r, r_step, steps, i0, rows, int64_t(0), cols, g);
}

template <typename S>
std::vector<S> transposed(const S* w, int64_t rows, int64_t cols) {
  std::vector<S> t(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = w[r * cols + c];
  return t;
}

int64_t worker_count(const Shape& s) {
  return cpu_kernel::worker_count(s.threads, s.batch, s.batch * s.steps, kMinRowStepsPerThread);
}

template <typename S>
S parity_energy(const S* h_even, const S* h_odd, int64_t E, int64_t O) {
  const S odd = dot(h_odd, h_odd, O);
  return odd / (odd + dot(h_even, h_even, E) + S(1e-8));
}

template <typename S>
struct Weights {
  const S* state;       // (3 + E, C)
  const S* odd;         // (O, O)
  const S* modulation;  // (O, E)
  const S* bias;        // (O)
  const S* readout;     // (D, O)
};

// P: S* where the forward writes them, const S* where the backward reads them.
template <typename P>
struct States {
  P h_even;      // (B, T + 1, E)
  P h_odd;       // (B, T + 1, O)
  P modulation;  // (B, T + 1, O)
  P y;           // (B, T + 1, D)
  P alpha;       // (B, T + 1)
  P gate;        // (B, T)
};

template <typename S>
void forward(const S* x, const S* static_part, const S* drive, Weights<S> w, const S* h_even0, const S* h_odd0,
             States<S*> out, const Shape& s) {
  const int64_t T = s.steps, D = s.input, E = s.even, O = s.odd;
  const int64_t C = E + (s.gate == kLearned ? 1 : 0), even_column = C - E;
  // Forward mat-vecs run over input rows: (input, output) layouts.
  const std::vector<S> odd_t = transposed(w.odd, O, O);
  const std::vector<S> modulation_t = transposed(w.modulation, O, E);
  const std::vector<S> readout_t = transposed(w.readout, D, O);
  const S temperature = S(s.temperature), threshold = S(s.threshold), constant = S(s.constant_gate);

  // `linear` is a scratch row of O values: a pre-activation before its sigmoid or tanh.
  auto readout = [&](const S* h_even, const S* h_odd, S* linear, S* modulation, S* y) {
    std::copy(w.bias, w.bias + O, linear);
    add_rows(h_even, modulation_t.data(), E, O, linear);
    sigmoid_into(linear, modulation, O);
    std::fill(y, y + D, S(0));
    for (int64_t i = 0; i < O; ++i) axpy(h_odd[i] * modulation[i], readout_t.data() + i * D, y, D);
  };

  cpu_kernel::for_row_ranges(s.batch, worker_count(s), [&](int64_t first, int64_t last, int64_t) {
    std::vector<S> pre(C), flipped(O), linear(O);
    for (int64_t r = first; r < last; ++r) {
      S* h_even = out.h_even + r * (T + 1) * E;
      S* h_odd = out.h_odd + r * (T + 1) * O;
      S* modulation = out.modulation + r * (T + 1) * O;
      S* y = out.y + r * (T + 1) * D;
      S* alpha = out.alpha + r * (T + 1);
      S* gate = out.gate + r * T;
      std::copy(h_even0 + r * E, h_even0 + (r + 1) * E, h_even);
      std::copy(h_odd0 + r * O, h_odd0 + (r + 1) * O, h_odd);
      readout(h_even, h_odd, linear.data(), modulation, y);
      alpha[0] = parity_energy(h_even, h_odd, E, O);
      for (int64_t t = 0; t < T; ++t) {
        const S* x_t = x + (r * T + t) * D;
        const S* y_t = y + t * D;
        const S* even_prev = h_even + t * E;
        const S* odd_prev = h_odd + t * O;
        const S* static_t = static_part + (r * T + t) * C;
        std::copy(static_t, static_t + C, pre.data());
        axpy(dot(x_t, y_t, D), w.state, pre.data(), C);
        axpy(dot(y_t, y_t, D), w.state + C, pre.data(), C);
        axpy(alpha[t], w.state + 2 * C, pre.data(), C);
        add_rows(even_prev, w.state + kFeatures * C, E, C, pre.data());
        S g;
        if (s.gate == kLearned) {
          g = sigmoid(pre[0]);
        } else if (s.gate == kThreshold) {
          g = sigmoid((alpha[t] - threshold) / temperature);
        } else {
          g = constant;
        }
        gate[t] = g;
        const S flip = S(1) - S(2) * g;
        for (int64_t j = 0; j < O; ++j) flipped[j] = flip * odd_prev[j];
        S* odd_next = h_odd + (t + 1) * O;
        std::copy(drive + (r * T + t) * O, drive + (r * T + t + 1) * O, linear.data());
        add_rows(flipped.data(), odd_t.data(), O, O, linear.data());
        tanh_into(linear.data(), odd_next, O);
        S* even_next = h_even + (t + 1) * E;
        tanh_into(pre.data() + even_column, even_next, E);
        readout(even_next, odd_next, linear.data(), modulation + (t + 1) * O, y + (t + 1) * D);
        alpha[t + 1] = parity_energy(even_next, odd_next, E, O);
      }
    }
  });
}

template <typename S>
struct Gradients {
  S* x;            // (B, T, D): through x.y only; the other uses of x are torch ops outside the kernel
  S* state;        // (3 + E, C)
  S* static_part;  // (B, T, C)
  S* drive;        // (B, T, O)
  S* odd;          // (O, O)
  S* modulation;   // (O, E)
  S* bias;         // (O)
  S* readout;      // (D, O)
  S* h_even0;      // (B, E)
  S* h_odd0;       // (B, O)
};

// Reverse-mode through the whole recurrence. Upstream: grad_y (B, T, D) of the predictions
// y_1..y_T; grad_h_even / grad_h_odd of the final state, grad_gate (B, T) and grad_alpha (B, T)
// of the diagnostics: each may be null (zero).
template <typename S>
void backward(const S* x, Weights<S> w, States<const S*> saved, const S* grad_y, const S* grad_h_even,
              const S* grad_h_odd, const S* grad_gate, const S* grad_alpha, Gradients<S> grad, const Shape& s) {
  const int64_t T = s.steps, D = s.input, E = s.even, O = s.odd;
  const int64_t C = E + (s.gate == kLearned ? 1 : 0), even_column = C - E, F = kFeatures + E;
  // Backward mat-vecs run over output rows: (output, input) layouts, which are the given ones
  // except for the state weight.
  const std::vector<S> state_t = transposed(w.state, F, C);
  const S temperature = S(s.temperature);
  const int64_t sizes[] = {F * C, O * O, O * E, O, D * O};
  S* totals[] = {grad.state, grad.odd, grad.modulation, grad.bias, grad.readout};
  int64_t offsets[6] = {0};
  for (int i = 0; i < 5; ++i) offsets[i + 1] = offsets[i] + sizes[i];
  const int64_t workers = worker_count(s);
  std::vector<std::vector<S>> partial(workers, std::vector<S>(offsets[5], S(0)));

  cpu_kernel::for_row_ranges(s.batch, workers, [&](int64_t first, int64_t last, int64_t worker) {
    S* g_state = partial[worker].data() + offsets[0];
    S* g_odd = partial[worker].data() + offsets[1];
    S* g_modulation = partial[worker].data() + offsets[2];
    S* g_bias = partial[worker].data() + offsets[3];
    S* g_readout = partial[worker].data() + offsets[4];
    std::vector<S> d_even(E), d_odd(O), d_y(D), d_z(O), d_flipped(O), d_features(F);
    std::vector<S> next_even(E), next_odd(O), next_y(D);
    // Of one row: each state's gradient of G h_even + c, and each step's flip 1 - 2 g.
    std::vector<S> modulation_pre_grads((T + 1) * O), flips(T);
    for (int64_t r = first; r < last; ++r) {
      const S* h_even = saved.h_even + r * (T + 1) * E;
      const S* h_odd = saved.h_odd + r * (T + 1) * O;
      const S* modulation = saved.modulation + r * (T + 1) * O;
      const S* y = saved.y + r * (T + 1) * D;
      const S* alpha = saved.alpha + r * (T + 1);
      const S* gate = saved.gate + r * T;
      if (grad_h_even != nullptr) {
        std::copy(grad_h_even + r * E, grad_h_even + (r + 1) * E, d_even.begin());
      } else {
        std::fill(d_even.begin(), d_even.end(), S(0));
      }
      if (grad_h_odd != nullptr) {
        std::copy(grad_h_odd + r * O, grad_h_odd + (r + 1) * O, d_odd.begin());
      } else {
        std::fill(d_odd.begin(), d_odd.end(), S(0));
      }
      std::fill(d_y.begin(), d_y.end(), S(0));
      S d_alpha = 0;
      // State n (0: the initial one) feeds y_n and alpha_n, read by step n and reported as output n - 1.
      for (int64_t n = T; n >= 0; --n) {
        if (n > cpu_kernel::kPrefetchSteps) {
          const int64_t ahead = n - cpu_kernel::kPrefetchSteps;
          cpu_kernel::prefetch(h_even + ahead * E, E);
          cpu_kernel::prefetch(h_odd + ahead * O, O);
          cpu_kernel::prefetch(modulation + ahead * O, O);
          cpu_kernel::prefetch(y + ahead * D, D);
          cpu_kernel::prefetch(grad_y + (r * T + ahead - 1) * D, D);
          cpu_kernel::prefetch(x + (r * T + ahead - 1) * D, D);
        }
        const S* even = h_even + n * E;
        const S* odd = h_odd + n * O;
        const S* m = modulation + n * O;
        if (n > 0) {
          axpy(S(1), grad_y + (r * T + n - 1) * D, d_y.data(), D);
          if (grad_alpha != nullptr) d_alpha += grad_alpha[r * T + n - 1];
        }
        // y = V (h_odd * m), m = sigmoid(G h_even + c).
        std::fill(d_z.begin(), d_z.end(), S(0));
        add_rows(d_y.data(), w.readout, D, O, d_z.data());
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t i = 0; i < O; ++i) g_readout[d * O + i] += d_y[d] * odd[i] * m[i];
        }
        S* d_q = modulation_pre_grads.data() + n * O;
        for (int64_t i = 0; i < O; ++i) {
          d_odd[i] += d_z[i] * m[i];
          d_q[i] = d_z[i] * odd[i] * m[i] * (S(1) - m[i]);
          g_bias[i] += d_q[i];
        }
        add_rows(d_q, w.modulation, O, E, d_even.data());
        // alpha = o / (o + e + eps), o = ||h_odd||^2, e = ||h_even||^2.
        {
          const S o = dot(odd, odd, O), total = o + dot(even, even, E) + S(1e-8);
          const S d_o = d_alpha * (total - o) / (total * total), d_e = -d_alpha * o / (total * total);
          axpy(S(2) * d_o, odd, d_odd.data(), O);
          axpy(S(2) * d_e, even, d_even.data(), E);
        }
        if (n == 0) break;
        const int64_t t = n - 1;  // step t maps state t to state n
        const S* odd_prev = h_odd + t * O;
        const S* x_t = x + (r * T + t) * D;
        const S* y_t = y + t * D;
        const S g = gate[t], flip = S(1) - S(2) * g;
        flips[t] = flip;
        // h_odd,n = tanh(W_oo (flip h_odd,t) + drive_t).
        S* d_pre_odd = grad.drive + (r * T + t) * O;
        for (int64_t i = 0; i < O; ++i) d_pre_odd[i] = d_odd[i] * (S(1) - odd[i] * odd[i]);
        std::fill(d_flipped.begin(), d_flipped.end(), S(0));
        add_rows(d_pre_odd, w.odd, O, O, d_flipped.data());
        for (int64_t j = 0; j < O; ++j) next_odd[j] = flip * d_flipped[j];
        S d_gate = S(-2) * dot(d_flipped.data(), odd_prev, O);
        if (grad_gate != nullptr) d_gate += grad_gate[r * T + t];
        // h_even,n = tanh(pre[even]), pre = static_t + features_t W_state.
        S* d_pre = grad.static_part + (r * T + t) * C;
        for (int64_t k = 0; k < E; ++k) d_pre[even_column + k] = d_even[k] * (S(1) - even[k] * even[k]);
        S d_alpha_prev = 0;
        if (s.gate == kLearned) {
          d_pre[0] = d_gate * g * (S(1) - g);
        } else if (s.gate == kThreshold) {
          d_alpha_prev += d_gate * g * (S(1) - g) / temperature;
        }
        axpy(dot(x_t, y_t, D), d_pre, g_state, C);
        axpy(dot(y_t, y_t, D), d_pre, g_state + C, C);
        axpy(alpha[t], d_pre, g_state + 2 * C, C);
        std::fill(d_features.begin(), d_features.end(), S(0));
        add_rows(d_pre, state_t.data(), C, F, d_features.data());
        const S d_xy = d_features[0], d_yy = d_features[1];
        d_alpha_prev += d_features[2];
        std::copy(d_features.begin() + kFeatures, d_features.end(), next_even.begin());
        // x.y and ||y||^2 with y = y_t, the prediction read from state t.
        S* g_x = grad.x + (r * T + t) * D;
        for (int64_t d = 0; d < D; ++d) {
          g_x[d] = d_xy * y_t[d];
          next_y[d] = d_xy * x_t[d] + S(2) * d_yy * y_t[d];
        }
        d_even.swap(next_even);
        d_odd.swap(next_odd);
        d_y.swap(next_y);
        d_alpha = d_alpha_prev;
      }
      std::copy(d_even.begin(), d_even.end(), grad.h_even0 + r * E);
      std::copy(d_odd.begin(), d_odd.end(), grad.h_odd0 + r * O);
      // The weight gradients that are outer products with the states, over the row's steps at once.
      add_outer_products<S>(h_even, E, nullptr, grad.static_part + r * T * C, C, T, E, C, g_state + kFeatures * C);
      add_outer_products<S>(grad.drive + r * T * O, O, flips.data(), h_odd, O, T, O, O, g_odd);
      add_outer_products<S>(modulation_pre_grads.data(), O, nullptr, h_even, E, T + 1, O, E, g_modulation);
    }
  });
  for (int i = 0; i < 5; ++i) {
    std::fill(totals[i], totals[i] + sizes[i], S(0));
    for (int64_t worker = 0; worker < workers; ++worker) {
      axpy(S(1), partial[worker].data() + offsets[i], totals[i], sizes[i]);
    }
  }
}

}  // namespace

// Pointers in the order of the autograd Function's inputs in models/seam_cpu_kernel.py: x, state
// weight, static part, odd drive, odd weight, modulation weight and bias, readout weight, initial
// h_even and h_odd. The forward then writes the states; the backward reads x, the four weights and
// the states, then the upstream gradients, and writes the gradients of every input.
#define SEAM_FORWARD(NAME, S)                                                                                          \
  void NAME(const S* x, const S* state_weight, const S* static_part, const S* drive, const S* odd_weight,              \
            const S* modulation_weight, const S* modulation_bias, const S* readout_weight, const S* h_even0,           \
            const S* h_odd0, S* h_even, S* h_odd, S* modulation, S* y, S* alpha, S* gate, const Shape* shape) {        \
    forward<S>(x, static_part, drive,                                                                                  \
               {state_weight, odd_weight, modulation_weight, modulation_bias, readout_weight}, h_even0, h_odd0,        \
               {h_even, h_odd, modulation, y, alpha, gate}, *shape);                                                   \
  }

#define SEAM_BACKWARD(NAME, S)                                                                                         \
  void NAME(const S* x, const S* state_weight, const S* odd_weight, const S* modulation_weight,                        \
            const S* readout_weight, const S* h_even, const S* h_odd, const S* modulation, const S* y,                 \
            const S* alpha, const S* gate, const S* grad_y, const S* grad_h_even, const S* grad_h_odd,                 \
            const S* grad_gate, const S* grad_alpha, S* grad_x, S* grad_state, S* grad_static, S* grad_drive,          \
            S* grad_odd, S* grad_modulation, S* grad_bias, S* grad_readout, S* grad_h_even0, S* grad_h_odd0,           \
            const Shape* shape) {                                                                                      \
    backward<S>(x, {state_weight, odd_weight, modulation_weight, nullptr, readout_weight},                             \
                {h_even, h_odd, modulation, y, alpha, gate}, grad_y, grad_h_even, grad_h_odd, grad_gate, grad_alpha,   \
                {grad_x, grad_state, grad_static, grad_drive, grad_odd, grad_modulation, grad_bias, grad_readout,      \
                 grad_h_even0, grad_h_odd0},                                                                           \
                *shape);                                                                                               \
  }

extern "C" {
SEAM_FORWARD(seam_forward_f32, float)
SEAM_FORWARD(seam_forward_f64, double)
SEAM_BACKWARD(seam_backward_f32, float)
SEAM_BACKWARD(seam_backward_f64, double)
}  // extern "C"
