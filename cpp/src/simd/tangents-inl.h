// tangents-inl.h — one row of a tangent (forward mode) or cotangent (reverse mode) batch
// through a hidden layer's elementwise part, linearised at a saved primal pass, compiled
// once per ISA (table-inl.h). The primal's multiplier m (n) folds the activation's
// derivative with the norm's per-feature factor (gamma / sqrt(running_var + eps) for an
// eval-mode batch norm, gamma for a layer norm, 1 without a norm); the layer norm's
// projection onto the zero-mean, xhat-orthogonal subspace is its own Jacobian (symmetric,
// so the same two row means serve both directions). Used by cpp/src/jacobian.cpp.
#pragma once

#include "math-inl.h"

namespace gradchain {
namespace GC_ISA_NS {

// out = scale * m * u [+ resid]  (resid: the residual tangent, or null); out may alias u.
template <class T, bool kResid>
static void tan_fwd_row(const T* u, const T* m, const T scale, const T* resid, T* out,
                        int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    T v = scale * m[c] * u[c];
    if constexpr (kResid) v += resid[c];
    out[c] = v;
  }
}

template <class T>
static void tan_fwd(const T* u, const T* m, T scale, const T* resid, T* out, int64_t n) {
  if (resid)
    tan_fwd_row<T, true>(u, m, scale, resid, out, n);
  else
    tan_fwd_row<T, false>(u, m, scale, resid, out, n);
}

// Layer norm: out = scale * m * istd * (u - mean(u) - xhat * mean(u * xhat)) [+ resid].
// The two row means in float64 (one pass), the result in a second pass (row in cache).
template <class T, bool kResid>
static void tan_fwd_ln_row(const T* u, const T* m, const T* xhat, const T istd, const T scale,
                           const T* resid, T* out, int64_t n) {
  double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t c = 0; c < n; ++c) {
    s1 += double(u[c]);
    s2 += double(u[c]) * double(xhat[c]);
  }
  const T m1 = T(s1 / double(n)), m2 = T(s2 / double(n)), k = scale * istd;
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    T v = k * m[c] * (u[c] - m1 - xhat[c] * m2);
    if constexpr (kResid) v += resid[c];
    out[c] = v;
  }
}

template <class T>
static void tan_fwd_ln(const T* u, const T* m, const T* xhat, T istd, T scale, const T* resid,
                       T* out, int64_t n) {
  if (resid)
    tan_fwd_ln_row<T, true>(u, m, xhat, istd, scale, resid, out, n);
  else
    tan_fwd_ln_row<T, false>(u, m, xhat, istd, scale, resid, out, n);
}

// dz = scale * m * g; returns sum(g^2) in float64 (the row's squared norm at this layer).
template <class T>
static double tan_bwd(const T* g, const T* m, T scale, T* dz, int64_t n) {
  double ss = 0.0;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < n; ++c) {
    const T gv = g[c];
    dz[c] = scale * m[c] * gv;
    ss += double(gv) * double(gv);
  }
  return ss;
}

// Layer norm: dxh = scale * m * g; dz = istd * (dxh - mean(dxh) - xhat * mean(dxh * xhat));
// returns sum(g^2).
template <class T>
static double tan_bwd_ln(const T* g, const T* m, const T* xhat, T istd, T scale, T* dz,
                         int64_t n) {
  double ss = 0.0, s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : ss, s1, s2)
  for (int64_t c = 0; c < n; ++c) {
    const T gv = g[c];
    const T v = scale * m[c] * gv;
    dz[c] = v;
    s1 += double(v);
    s2 += double(v) * double(xhat[c]);
    ss += double(gv) * double(gv);
  }
  const T m1 = T(s1 / double(n)), m2 = T(s2 / double(n));
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) dz[c] = istd * (dz[c] - m1 - xhat[c] * m2);
  return ss;
}

}  // namespace GC_ISA_NS
}  // namespace gradchain
