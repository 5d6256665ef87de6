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

struct MlpReport {
  std::vector<double> weight, bias;             // L+1: ||dL/dW_l||, ||dL/db_l|| (0 without bias)
  std::vector<double> norm_weight, norm_bias;   // L (empty without norm)
  std::vector<double> activation;               // L+1: ||dL/da_l||, l = 0..L
  double global_norm = 0.0;
  int first_nonfinite = -1;                     // first l scanning L..0 with NaN/Inf in dL/da_l
  int forward_first_nonfinite = -1;             // first l in 1..L (L+1 = y) with NaN/Inf
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

}  // namespace gradchain
