// gradchain/report.h — gradient-norm bookkeeping and clipping over gradient spans.
// Norms are sums of squares in float64 over fixed chunks, reduced in a fixed
// order (identical whatever the thread count), square-rooted at the end, and
// rescaled by the max-abs where a finite float64 tensor would overflow.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

namespace gradchain {

// Where a non-finite value was born (the report's nonfinite stages): the part of the first
// layer (or step) whose inputs were finite and whose output was not.
enum class NonfiniteStage : int {
  None = 0,
  Parameter = 1,           // forward: a parameter of the layer holds NaN/Inf
  Linear = 2,              // forward: the product z = a W^T + b (RNN: + h W_hh^T + b_hh)
  Norm = 3,                // forward: the norm layer's normalised values (its statistics)
  Activation = 4,          // forward: act(n) (a custom activation)
  Residual = 5,            // forward: a + alpha * act(n) overflowed with act(n) finite
  ActivationBackward = 6,  // backward: dL/dz = dL/da * act' (x alpha)
  NormBackward = 7,        // backward: the norm layer's dL/dz
  Product = 8,             // backward: dL/da_{l-1} = dL/dz W (+ the residual), dL/dz finite
};
const char* nonfinite_stage_name(NonfiniteStage s);

// Whether p[0..n) holds a NaN or an Inf (the forensics' recomputations, after a pass that
// produced one: not a hot loop).
template <class T>
bool any_nonfinite(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return true;
  return false;
}

struct MlpReport {
  std::vector<double> weight, bias;             // L+1: ||dL/dW_l||, ||dL/db_l|| (0 without bias)
  std::vector<double> norm_weight, norm_bias;   // L (empty without norm)
  std::vector<double> activation;               // L+1: ||dL/da_l||, l = 0..L
  double global_norm = 0.0;
  int first_nonfinite = -1;                     // first l scanning L..0 with NaN/Inf in dL/da_l
  int forward_first_nonfinite = -1;             // first l in 1..L (L+1 = y) with NaN/Inf
  // health (report on): hidden layer l's units (L each) and dL/da_l's entries (L+1 each)
  std::vector<double> dead, saturated;          // L: fractions of units (every example)
  std::vector<double> zeros, subnormals;        // L+1: fractions of dL/da_l's entries
  std::vector<double> mean_abs;                 // L: mean |a_l| of the forward pass
  NonfiniteStage forward_stage = NonfiniteStage::None;   // at forward_first_nonfinite
  NonfiniteStage backward_stage = NonfiniteStage::None;  // at first_nonfinite (forward finite)
  // per_example: (L+1) x B, ||dz_{l,i}|| * sqrt(||a_{l,i}||^2 + bias [+ layer norm terms]),
  // example i's share of layer l's gradient (without the batch-size factor)
  std::vector<double> example_layer;
};

// Raised by clip_grad_norm(error_if_nonfinite=true) on a NaN/Inf total (RuntimeError in Python).
class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class T>
using Spans = std::vector<std::pair<T*, int64_t>>;

// ||x|| from a precomputed float64 sum of squares `ss`: sqrt(ss), unless ss
// overflowed while every element is finite, then a rescaled recomputation.
template <class T>
double norm_from_sumsq(const T* x, int64_t n, double ss);
// ||x||: parallel over fixed chunks (opens its own OpenMP region).
template <class T>
double tensor_norm(const T* x, int64_t n);
// A tensor holds NaN/Inf iff its float64 sum of squares and its (rescaled) norm are not finite.
inline bool has_nonfinite(double ss, double norm) { return !std::isfinite(ss) && !std::isfinite(norm); }
// sqrt(sum(norms^2)) without overflow (the norm of the per-tensor norms, as PyTorch's total).
double combine_norms(const std::vector<double>& norms);

// PyTorch clip_grad_norm_ (norm_type 2): returns the total norm before clipping.
template <class T>
double clip_grad_norm(const Spans<T>& grads, double max_norm, bool error_if_nonfinite);
template <class T>
void clip_grad_value(const Spans<T>& grads, double clip_value);
// The same formula per tensor; returns the per-tensor norms before clipping.
template <class T>
std::vector<double> clip_grad_norm_per_tensor(const Spans<T>& grads, double max_norm);

// The health report's dead / saturated units of one layer or step: hd holds nrb row blocks'
// column maxima of |act'| (nrb x n, block-major); a column is dead when its maximum over
// the blocks is 0, saturated when it is below thr. Columns in chunks of 64 on the stack,
// so the maxima and the counts are plain vector loops (the per-column scalar loop over
// the blocks was 1% of rnn-long-narrow's pass with the report: 4096 steps x 64 units).
template <class T>
inline void dead_saturated(const T* hd, int64_t nrb, int64_t n, double thr, int64_t& dead,
                           int64_t& sat) {
  constexpr int64_t kChunk = 64;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t w = n - c0 < kChunk ? n - c0 : kChunk;
    T m[kChunk] = {};
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const T* h = hd + rb * n + c0;
      for (int64_t c = 0; c < w; ++c) m[c] = h[c] > m[c] ? h[c] : m[c];
    }
    for (int64_t c = 0; c < w; ++c) {
      dead += m[c] == T(0) ? 1 : 0;
      sat += double(m[c]) < thr ? 1 : 0;
    }
  }
}

}  // namespace gradchain
