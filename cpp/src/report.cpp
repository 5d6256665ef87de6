// report.cpp — norms and clipping over gradient spans.
#include "gradchain/report.h"

#include <cmath>
#include <limits>

#include "gradchain/dispatch.h"
#include "gradchain/parallel.h"

namespace gradchain {

const char* nonfinite_stage_name(NonfiniteStage s) {
  switch (s) {
    case NonfiniteStage::None: return "";
    case NonfiniteStage::Parameter: return "parameter";
    case NonfiniteStage::Linear: return "linear";
    case NonfiniteStage::Norm: return "norm";
    case NonfiniteStage::Activation: return "activation";
    case NonfiniteStage::Residual: return "residual";
    case NonfiniteStage::ActivationBackward: return "activation_backward";
    case NonfiniteStage::NormBackward: return "norm_backward";
    case NonfiniteStage::Product: return "product";
  }
  return "";
}

template <class T>
double norm_from_sumsq(const T* x, int64_t n, double ss) {
  if (std::isfinite(ss)) return std::sqrt(ss);
  // Either a NaN/Inf element (the norm is then NaN/Inf, as PyTorch's), or
  // finite float64 elements whose squares overflowed: rescale by max |x|.
  const double m = kernels<T>().maxabs(x, n);
  if (!std::isfinite(m)) return m != m ? m : std::numeric_limits<double>::infinity();
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double v = double(x[i]) / m;
    s += v * v;
  }
  return m * std::sqrt(s);
}

template <class T>
double tensor_norm(const T* x, int64_t n) {
  const int64_t nc = ceil_div(n, kNormChunk);
  std::vector<double> part(size_t(nc), 0.0);
  const auto& K = kernels<T>();
#pragma omp parallel for schedule(static) num_threads(threads_for(n)) // over fixed chunks
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t i0 = c * kNormChunk;
    part[size_t(c)] = K.sumsq(x + i0, (i0 + kNormChunk < n ? kNormChunk : n - i0));
  }
  double ss = 0.0;
  for (double p : part) ss += p;
  return norm_from_sumsq(x, n, ss);
}

double combine_norms(const std::vector<double>& norms) {
  double m = 0.0;
  for (double v : norms) {
    if (!std::isfinite(v)) {
      if (v != v) return v;
      m = std::numeric_limits<double>::infinity();
    } else if (v > m) {
      m = v;
    }
  }
  if (m == 0.0 || !std::isfinite(m)) {
    for (double v : norms)
      if (v != v) return v;
    return m;
  }
  double s = 0.0;
  for (double v : norms) s += (v / m) * (v / m);
  return m * std::sqrt(s);
}

template <class T>
static void scale_span(T* x, int64_t n, T s) {
  const auto& K = kernels<T>();
  const int64_t nc = ceil_div(n, kNormChunk);
#pragma omp parallel for schedule(static) num_threads(threads_for(n))
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t i0 = c * kNormChunk;
    K.scale(x + i0, (i0 + kNormChunk < n ? kNormChunk : n - i0), s);
  }
}

template <class T>
double clip_grad_norm(const Spans<T>& grads, double max_norm, bool error_if_nonfinite) {
  std::vector<double> norms;
  norms.reserve(grads.size());
  for (auto& g : grads) norms.push_back(tensor_norm(g.first, g.second));
  const double total = combine_norms(norms);
  if (error_if_nonfinite && !std::isfinite(total))
    throw NonFiniteError(
        "The total norm of order 2.0 for gradients is non-finite, so it cannot be clipped. To "
        "disable this error and scale the gradients by the non-finite norm anyway, set "
        "error_if_nonfinite=False");
  // As torch: coef = max_norm / (total + 1e-6), clamped to at most 1 (NaN stays NaN),
  // and every gradient multiplied by it, even when it is 1.
  const double coef = max_norm / (total + 1e-6);
  const T c = T(coef > 1.0 ? 1.0 : coef);
  for (auto& g : grads) scale_span(g.first, g.second, c);
  return total;
}

template <class T>
void clip_grad_value(const Spans<T>& grads, double clip_value) {
  const auto& K = kernels<T>();
  for (auto& g : grads) K.clamp(g.first, g.second, T(-clip_value), T(clip_value));
}

template <class T>
std::vector<double> clip_grad_norm_per_tensor(const Spans<T>& grads, double max_norm) {
  std::vector<double> norms;
  for (auto& g : grads) {
    const double nrm = tensor_norm(g.first, g.second);
    norms.push_back(nrm);
    const double coef = max_norm / (nrm + 1e-6);
    scale_span(g.first, g.second, T(coef > 1.0 ? 1.0 : coef));
  }
  return norms;
}

#define GC_INSTANTIATE(T)                                                              \
  template double norm_from_sumsq<T>(const T*, int64_t, double);                       \
  template double tensor_norm<T>(const T*, int64_t);                                   \
  template double clip_grad_norm<T>(const Spans<T>&, double, bool);                    \
  template void clip_grad_value<T>(const Spans<T>&, double);                           \
  template std::vector<double> clip_grad_norm_per_tensor<T>(const Spans<T>&, double);
GC_INSTANTIATE(float)
GC_INSTANTIATE(double)
#undef GC_INSTANTIATE

}  // namespace gradchain
