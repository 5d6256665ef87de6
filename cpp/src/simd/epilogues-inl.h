// epilogues-inl.h — the fused elementwise passes between two GEMMs, compiled once per
// ISA (table-inl.h): forward (bias, norm, activation and its derivative, residual, the
// non-finite check) and backward (the activation's derivative, the norm's reductions, the
// bias-gradient partials and the incoming gradient's sum of squares), for every norm kind.
#pragma once

#include <cmath>
#include <limits>
#include <utility>

#include "gradchain/kernels.h"
#include "activations-inl.h"

namespace gradchain {
namespace GC_ISA_NS {

// ---------------------------------------------------------------------------
// Forward epilogues
//
// Each kernel's loops live in a template over the activation functor and
// compile-time flags (bias present, residual present, ...), with every pointer a
// plain argument: GCC vectorises a loop only when no pointer has to be reloaded
// from a struct inside it and no branch on a loop-invariant pointer remains.
// ---------------------------------------------------------------------------
template <class T, class Act, bool kBias, bool kResid, bool kAbs>
static double fwd_plain_rows(const Act act, const T* z, T* a, T* d, const T* bias,
                             const T* resid, const T alpha, int64_t rows, int64_t n,
                             double* abs_out) {
  double chk = 0.0, absum = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
    T* ar = a + r * n;
    T* dr = d + r * n;
    const T* rr = resid + r * n;
    T rowchk = 0;
    double rowabs = 0.0;
#pragma omp simd reduction(+ : rowchk, rowabs)
    for (int64_t c = 0; c < n; ++c) {
      T x = zr[c];
      if constexpr (kBias) x += bias[c];
      T f, df;
      act(x, f, df);
      T out = f;
      if constexpr (kResid) out = rr[c] + alpha * f;
      ar[c] = out;
      dr[c] = df;
      rowchk += out * T(0);  // 0 unless out is NaN/Inf
      if constexpr (kAbs) rowabs += double(std::abs(out));  // the report's mean |a|
    }
    chk += double(rowchk);
    absum += rowabs;
  }
  if (abs_out) *abs_out = absum;
  return chk;
}

// a = [resid + alpha *] act(z + b); d = act'(z + b). One pass; a may alias z. With
// A.abs_sum also sum |a| (the health report's).
template <class T>
static double fwd_plain(const FwdArgs<T>& A, const T* z, T* a, T* d, int64_t rows, int64_t n) {
  return with_act<T>(A.act, [&](auto act) {
    using F = decltype(act);
#define GC_FP(B, R, S) \
  fwd_plain_rows<T, F, B, R, S>(act, z, a, d, A.bias, A.resid, A.alpha, rows, n, A.abs_sum)
    if (A.abs_sum) {
      if (A.bias) return A.resid ? GC_FP(true, true, true) : GC_FP(true, false, true);
      return A.resid ? GC_FP(false, true, true) : GC_FP(false, false, true);
    }
    if (A.bias) return A.resid ? GC_FP(true, true, false) : GC_FP(true, false, false);
    return A.resid ? GC_FP(false, true, false) : GC_FP(false, false, false);
#undef GC_FP
  });
}

// One element of the normalised epilogues: xhat stored, a = [resid + alpha *]
// act(gamma * xhat + beta), d = act'(.); returns a (for the non-finite check).
template <class T, class Act, bool kResid>
static inline T norm_act_element(const Act& act, T xh, T g, T b, const T* rr, int64_t c, T alpha,
                                 T* xr, T* ar, T* dr) {
  T f, df;
  act(g * xh + b, f, df);
  T out = f;
  if constexpr (kResid) out = rr[c] + alpha * f;
  xr[c] = xh;
  ar[c] = out;
  dr[c] = df;
  return out;
}

template <class T, class Act, bool kResid>
static double fwd_batchnorm_rows(const Act act, const T* z, T* xhat, T* a, T* d, const T* sh,
                                 const T* sc, const T* g, const T* b, const T* resid,
                                 const T alpha, int64_t rows, int64_t n, double* abs_out) {
  double chk = 0.0, absum = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
    T* xr = xhat + r * n;
    T* ar = a + r * n;
    T* dr = d + r * n;
    const T* rr = resid + r * n;
    T rowchk = 0;
    double rowabs = 0.0;
#pragma omp simd reduction(+ : rowchk, rowabs)
    for (int64_t c = 0; c < n; ++c) {
      const T xh = (zr[c] - sh[c]) * sc[c];
      const T out =
          norm_act_element<T, Act, kResid>(act, xh, g[c], b[c], rr, c, alpha, xr, ar, dr);
      rowchk += out * T(0);
      rowabs += double(std::abs(out));
    }
    chk += double(rowchk);
    absum += rowabs;
  }
  if (abs_out) *abs_out = absum;
  return chk;
}

// xhat = (z - shift) * scale; a = [resid + alpha *] act(gamma * xhat + beta).
template <class T>
static double fwd_batchnorm(const FwdArgs<T>& A, const T* z, T* xhat, T* a, T* d, int64_t rows,
                            int64_t n) {
  return with_act<T>(A.act, [&](auto act) {
    using F = decltype(act);
    return A.resid ? fwd_batchnorm_rows<T, F, true>(act, z, xhat, a, d, A.col_shift, A.col_scale,
                                                   A.gamma, A.beta, A.resid, A.alpha, rows, n, A.abs_sum)
                   : fwd_batchnorm_rows<T, F, false>(act, z, xhat, a, d, A.col_shift, A.col_scale,
                                                    A.gamma, A.beta, A.resid, A.alpha, rows, n,
                                                    A.abs_sum);
  });
}

template <class T, class Act, bool kBias, bool kResid>
static double fwd_layernorm_rows(const Act act, const T* z, T* xhat, T* a, T* d, T* row_mean,
                                 T* row_istd, const T* bias, const T* g, const T* b,
                                 const T* resid, const T alpha, const double eps, int64_t rows,
                                 int64_t n, double* abs_out) {
  double chk = 0.0, absum = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
    T* xr = xhat + r * n;
    T* ar = a + r * n;
    T* dr = d + r * n;
    const T* rr = resid + r * n;
    // mean and biased variance of z + b in float64, two passes over the row (in cache)
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n; ++c) {
      T v = zr[c];
      if constexpr (kBias) v += bias[c];
      s += double(v);
    }
    const double mean = s / double(n);
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < n; ++c) {
      T v = zr[c];
      if constexpr (kBias) v += bias[c];
      double t = double(v) - mean;
      ss += t * t;
    }
    const T m = T(mean);
    const T istd = T(1.0 / std::sqrt(ss / double(n) + eps));
    row_mean[r] = m;
    row_istd[r] = istd;
    T rowchk = 0;
    double rowabs = 0.0;
#pragma omp simd reduction(+ : rowchk, rowabs)
    for (int64_t c = 0; c < n; ++c) {
      T v = zr[c];
      if constexpr (kBias) v += bias[c];
      const T xh = (v - m) * istd;
      const T out =
          norm_act_element<T, Act, kResid>(act, xh, g[c], b[c], rr, c, alpha, xr, ar, dr);
      rowchk += out * T(0);
      rowabs += double(std::abs(out));
    }
    chk += double(rowchk);
    absum += rowabs;
  }
  if (abs_out) *abs_out = absum;
  return chk;
}

// Layer norm over each row: statistics of (z + b), then the fused pass.
template <class T>
static double fwd_layernorm(const FwdArgs<T>& A, const T* z, T* xhat, T* a, T* d, T* row_mean,
                            T* row_istd, int64_t rows, int64_t n) {
  return with_act<T>(A.act, [&](auto act) {
    using F = decltype(act);
    const double eps = double(A.eps);
#define GC_LN(B, R)                                                                          \
  fwd_layernorm_rows<T, F, B, R>(act, z, xhat, a, d, row_mean, row_istd, A.bias, A.gamma,    \
                                 A.beta, A.resid, A.alpha, eps, rows, n, A.abs_sum)
    if (A.bias) return A.resid ? GC_LN(true, true) : GC_LN(true, false);
    return A.resid ? GC_LN(false, true) : GC_LN(false, false);
#undef GC_LN
  });
}

template <class T, bool kBias>
static double add_bias_rows(T* y, const T* b, int64_t rows, int64_t n) {
  double chk = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    T* yr = y + r * n;
    T rowchk = 0;
#pragma omp simd reduction(+ : rowchk)
    for (int64_t c = 0; c < n; ++c) {
      T v = yr[c];
      if constexpr (kBias) v += b[c];
      yr[c] = v;
      rowchk += v * T(0);
    }
    chk += double(rowchk);
  }
  return chk;
}

template <class T>
static double add_bias(T* y, const T* b, int64_t rows, int64_t n) {
  return b ? add_bias_rows<T, true>(y, b, rows, n) : add_bias_rows<T, false>(y, b, rows, n);
}

// ---------------------------------------------------------------------------
// Backward epilogues. Each also returns sum(g^2) of the incoming gradient, so
// the report's ||dL/da_l|| costs no extra pass over memory. kSelect: where
// act' == 0 the result is 0 even for an infinite g (PyTorch's relu/hardtanh).
// ---------------------------------------------------------------------------
template <class T, bool kSelect>
static inline T grad_times(T g, T scale, T d) {
  T v = g * scale * d;
  if constexpr (kSelect) v = d == T(0) ? T(0) : v;
  return v;
}
// The same for a vector (Vec<T>::V) of g and d.
template <bool kSelect, class VT>
static inline VT grad_times_v(VT g, VT scale, VT d) {
  VT v = g * scale * d;
  if constexpr (kSelect) v = d == VT{} ? VT{} : v;
  return v;
}

// kSS: also the float64 sum of squares of g (the report's); off for gradients only.
template <class T, bool kDb, bool kSelect, bool kSS>
static double bwd_plain_rows(const T* g, const T* d, const T scale, T* dz, double* db_acc,
                             int64_t rows, int64_t n) {
  double ss = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * n;
    const T* dr = d + r * n;
    T* zr = dz + r * n;
    double rs = 0.0;
#pragma omp simd reduction(+ : rs)
    for (int64_t c = 0; c < n; ++c) {
      T gv = gr[c];
      T v = grad_times<T, kSelect>(gv, scale, dr[c]);
      zr[c] = v;
      if constexpr (kDb) db_acc[c] += double(v);
      if constexpr (kSS) rs += double(gv) * double(gv);
    }
    ss += rs;
  }
  return ss;
}

template <class T>
static inline T tiny_of() { return std::numeric_limits<T>::min(); }

// Lanes [Off, Off + W/2) of a float vector as a float64 vector (VD: W/2 doubles).
template <class VD, int64_t Off, class V, size_t... I>
static inline VD half_to_f64_(V v, std::index_sequence<I...>) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, (I + Off)...), VD);
}
template <class VD, int64_t Off, class V>
static inline VD half_to_f64(V v) {
#if GC_VBYTES == 64 && defined(__AVX512F__)
  // one conversion each (the generic shuffle took three); the full-mask maskz forms
  // because GCC 12 warns on the plain ones' _mm512_undefined sources
  const __m512 x = (__m512)v;
  return (VD)_mm512_maskz_cvtps_pd(
      0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(x), Off ? 1 : 0)));
#elif GC_VBYTES == 32 && defined(__AVX__)
  const __m256 x = (__m256)v;
  if constexpr (Off == 0) return (VD)_mm256_cvtps_pd(_mm256_castps256_ps128(x));
  else return (VD)_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
#else
  return half_to_f64_<VD, Off>(v, std::make_index_sequence<sizeof(V) / sizeof(float) / 2>{});
#endif
}

// The report's backward epilogue (bwd_plain with want_ss, and bwd_plain_health with kHealth):
// dz and db exactly as bwd_plain_rows computes them (the same operations per element, the
// same order of db's float64 sums), and the report's reductions in vector accumulators that
// run across the rows of the block: sum g^2 (float64), and with kHealth the zero / subnormal
// counts of g (integer lanes), the column maxima of |act'| and sum(dz * 0). A reduction per
// row (omp simd reduction) paid four horizontal sums per row: at n = 64 (rnn-long-narrow,
// mlp-deep-narrow) more than the row's own work. The order of the float64 additions is
// fixed by (rows, n) alone.
template <class T, bool kDb, bool kSelect, bool kHealth>
static double bwd_plain_rep_rows(const T* g, const T* d, const T scale, T* dz, double* db_acc,
                                 T* dmax, int64_t rows, int64_t n, GradHealth<T>* h) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  typedef typename Vec<T>::V VT;     // the ISA's full width of T
  typedef decltype(VT{} < VT{}) VI;  // integers of T's width (lane masks: -1 / 0)
  constexpr int64_t W = Vec<T>::W;
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  const VT vscale = Vec<T>::splat(scale);
  const VT vtiny = Vec<T>::splat(tiny_of<T>());
  const VI absmask = ~(VI)Vec<T>::splat(T(-0.0));  // every bit but the sign
  const VT zero = {};
  const T tiny = tiny_of<T>();
  VD rs0 = {}, rs1 = {};
  VI rz = {}, rlt = {};  // counts of |g| == 0 and of |g| < tiny (zeros included)
  VT rck = {};
  double ss = 0.0, zc = 0.0, sc = 0.0;  // the columns after the last full vector
  T ck = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * n;
    const T* dr = d + r * n;
    T* zr = dz + r * n;
    int64_t c = 0;
    for (; c + W <= n; c += W) {
      const VT gv = Vec<T>::load(gr + c);
      const VT dv = Vec<T>::load(dr + c);
      const VT v = grad_times_v<kSelect>(gv, vscale, dv);
      Vec<T>::store(zr + c, v);
      if constexpr (sizeof(T) == 4) {
        const VD gd0 = half_to_f64<VD, 0>(gv), gd1 = half_to_f64<VD, W / 2>(gv);
        rs0 += gd0 * gd0;
        rs1 += gd1 * gd1;
        if constexpr (kDb) {
          VD a0, a1;
          std::memcpy(&a0, db_acc + c, sizeof a0);
          std::memcpy(&a1, db_acc + c + WD, sizeof a1);
          a0 += half_to_f64<VD, 0>(v);
          a1 += half_to_f64<VD, W / 2>(v);
          std::memcpy(db_acc + c, &a0, sizeof a0);
          std::memcpy(db_acc + c + WD, &a1, sizeof a1);
        }
      } else {
        rs0 += gv * gv;
        if constexpr (kDb) {
          VD a;
          std::memcpy(&a, db_acc + c, sizeof a);
          a += v;
          std::memcpy(db_acc + c, &a, sizeof a);
        }
      }
      if constexpr (kHealth) {
        const VT ag = (VT)((VI)gv & absmask);
        rz -= ag == zero;
        rlt -= ag < vtiny;
        const VT ad = (VT)((VI)dv & absmask);
        VT dm = Vec<T>::load(dmax + c);
        dm = ad > dm ? ad : dm;
        Vec<T>::store(dmax + c, dm);
        rck += v * zero;
      }
    }
    for (; c < n; ++c) {
      const T gv = gr[c];
      const T dv = dr[c];
      const T v = grad_times<T, kSelect>(gv, scale, dv);
      zr[c] = v;
      if constexpr (kDb) db_acc[c] += double(v);
      ss += double(gv) * double(gv);
      if constexpr (kHealth) {
        const T ag = std::abs(gv);
        zc += ag == T(0) ? 1.0 : 0.0;
        sc += (ag > T(0) && ag < tiny) ? 1.0 : 0.0;
        const T ad = std::abs(dv);
        dmax[c] = ad > dmax[c] ? ad : dmax[c];
        ck += v * T(0);
      }
    }
  }
  const VD rs = rs0 + rs1;
  for (int64_t j = 0; j < WD; ++j) ss += rs[j];
  if constexpr (kHealth) {  // the counts summed as integers (exact), converted once
    int64_t zi = 0, li = 0;
    for (int64_t j = 0; j < W; ++j) {
      zi += int64_t(rz[j]);
      li += int64_t(rlt[j]);
    }
    for (int64_t j = 0; j < W; ++j) ck += rck[j];
    h->zeros += zc + double(zi);
    h->subnormals += sc + double(li - zi);
    h->dz_check += double(ck);
  }
  return ss;
}

template <class T, bool kHealth>
static double bwd_plain_rep(const T* g, const T* d, T scale, bool select, T* dz, double* db_acc,
                            T* dm, int64_t rows, int64_t n, GradHealth<T>* h) {
  if (db_acc)
    return select ? bwd_plain_rep_rows<T, true, true, kHealth>(g, d, scale, dz, db_acc, dm, rows, n, h)
                  : bwd_plain_rep_rows<T, true, false, kHealth>(g, d, scale, dz, db_acc, dm, rows, n, h);
  return select ? bwd_plain_rep_rows<T, false, true, kHealth>(g, d, scale, dz, db_acc, dm, rows, n, h)
                : bwd_plain_rep_rows<T, false, false, kHealth>(g, d, scale, dz, db_acc, dm, rows, n, h);
}

template <class T>
static double bwd_plain(const T* g, const T* d, T scale, bool select, bool want_ss, T* dz,
                        double* db_acc, int64_t rows, int64_t n) {
  if (want_ss)
    return bwd_plain_rep<T, false>(g, d, scale, select, dz, db_acc, nullptr, rows, n, nullptr);
  if (db_acc)
    return select ? bwd_plain_rows<T, true, true, false>(g, d, scale, dz, db_acc, rows, n)
                  : bwd_plain_rows<T, true, false, false>(g, d, scale, dz, db_acc, rows, n);
  return select ? bwd_plain_rows<T, false, true, false>(g, d, scale, dz, db_acc, rows, n)
                : bwd_plain_rows<T, false, false, false>(g, d, scale, dz, db_acc, rows, n);
}

// Batch norm's two backward passes. dn, dz and the float64 column partials (acc0, acc1,
// db) by the same operations per element in the same order as before (the gradients'
// bits); sum g^2 and, with kHealth (the report's health statistics, kernels.h's
// GradHealth), the zero / subnormal counts of g, the column maxima of |act'| (pass 1) and
// dz's non-finite check (pass 2) in vector accumulators that run across the rows of the
// block, as in bwd_plain_rep_rows: a separate pass (grad_health) read g, act' and dz
// again, and a per-row reduction paid a horizontal sum per row (n = 64 in
// mlp-deep-narrow). The order of the float64 additions is fixed by (rows, n) alone.
template <class T, bool kSelect, bool kHealth>
static double bwd_bn1_rows(const T* g, const T* d, const T* xhat, const T scale, T* dn_out,
                           double* acc0, double* acc1, int64_t rows, int64_t n,
                           GradHealth<T>* h) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  typedef typename Vec<T>::V VT;
  typedef decltype(VT{} < VT{}) VI;  // integers of T's width (lane masks: -1 / 0)
  constexpr int64_t W = Vec<T>::W;
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  const VT vscale = Vec<T>::splat(scale);
  const VT vtiny = Vec<T>::splat(tiny_of<T>());
  const VI absmask = ~(VI)Vec<T>::splat(T(-0.0));  // every bit but the sign
  const VT zero = {};
  const T tiny = tiny_of<T>();
  T* dmax = kHealth ? h->dmax : nullptr;
  VD rs0 = {}, rs1 = {};
  VI rz = {}, rlt = {};  // counts of |g| == 0 and of |g| < tiny (zeros included)
  double ss = 0.0, zc = 0.0, sc = 0.0;  // the columns after the last full vector
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * n;
    const T* dr = d + r * n;
    const T* xr = xhat + r * n;
    T* zr = dn_out + r * n;
    int64_t c = 0;
    for (; c + W <= n; c += W) {
      const VT gv = Vec<T>::load(gr + c);
      const VT dv = Vec<T>::load(dr + c);
      const VT v = grad_times_v<kSelect>(gv, vscale, dv);
      Vec<T>::store(zr + c, v);
      const VT xv = Vec<T>::load(xr + c);
      if constexpr (sizeof(T) == 4) {
        const VD v0 = half_to_f64<VD, 0>(v), v1 = half_to_f64<VD, W / 2>(v);
        const VD x0 = half_to_f64<VD, 0>(xv), x1 = half_to_f64<VD, W / 2>(xv);
        VD a0, a1, b0, b1;
        std::memcpy(&a0, acc0 + c, sizeof a0);
        std::memcpy(&a1, acc0 + c + WD, sizeof a1);
        std::memcpy(&b0, acc1 + c, sizeof b0);
        std::memcpy(&b1, acc1 + c + WD, sizeof b1);
        a0 += v0;
        a1 += v1;
        b0 += v0 * x0;
        b1 += v1 * x1;
        std::memcpy(acc0 + c, &a0, sizeof a0);
        std::memcpy(acc0 + c + WD, &a1, sizeof a1);
        std::memcpy(acc1 + c, &b0, sizeof b0);
        std::memcpy(acc1 + c + WD, &b1, sizeof b1);
        const VD g0 = half_to_f64<VD, 0>(gv), g1 = half_to_f64<VD, W / 2>(gv);
        rs0 += g0 * g0;
        rs1 += g1 * g1;
      } else {
        VD a, b;
        std::memcpy(&a, acc0 + c, sizeof a);
        std::memcpy(&b, acc1 + c, sizeof b);
        a += v;
        b += v * xv;
        std::memcpy(acc0 + c, &a, sizeof a);
        std::memcpy(acc1 + c, &b, sizeof b);
        rs0 += gv * gv;
      }
      if constexpr (kHealth) {
        const VT ag = (VT)((VI)gv & absmask);
        rz -= ag == zero;
        rlt -= ag < vtiny;
        const VT ad = (VT)((VI)dv & absmask);
        VT dm = Vec<T>::load(dmax + c);
        dm = ad > dm ? ad : dm;
        Vec<T>::store(dmax + c, dm);
      }
    }
    for (; c < n; ++c) {
      const T gv = gr[c];
      const T dv = dr[c];
      const T dn = grad_times<T, kSelect>(gv, scale, dv);
      zr[c] = dn;
      acc0[c] += double(dn);
      acc1[c] += double(dn) * double(xr[c]);
      ss += double(gv) * double(gv);
      if constexpr (kHealth) {
        const T ag = std::abs(gv);
        zc += ag == T(0) ? 1.0 : 0.0;
        sc += (ag > T(0) && ag < tiny) ? 1.0 : 0.0;
        const T ad = std::abs(dv);
        dmax[c] = ad > dmax[c] ? ad : dmax[c];
      }
    }
  }
  const VD rs = rs0 + rs1;
  for (int64_t j = 0; j < WD; ++j) ss += rs[j];
  if constexpr (kHealth) {  // the counts summed as integers (exact), converted once
    int64_t zi = 0, li = 0;
    for (int64_t j = 0; j < W; ++j) {
      zi += int64_t(rz[j]);
      li += int64_t(rlt[j]);
    }
    h->zeros += zc + double(zi);
    h->subnormals += sc + double(li - zi);
  }
  return ss;
}

template <class T>
static double bwd_bn1(const T* g, const T* d, const T* xhat, T scale, bool select, T* dn_out,
                      double* acc0, double* acc1, int64_t rows, int64_t n, GradHealth<T>* h) {
#define GC_BN1(SEL, H) \
  bwd_bn1_rows<T, SEL, H>(g, d, xhat, scale, dn_out, acc0, acc1, rows, n, h)
  if (h) return select ? GC_BN1(true, true) : GC_BN1(false, true);
  return select ? GC_BN1(true, false) : GC_BN1(false, false);
#undef GC_BN1
}

// Pass 2; with kHealth dz's non-finite check as the lanes' "exponent all ones" bits, OR-ed
// across the rows (integer operations: no add chain waiting on its latency).
template <class T, bool kDb, bool kHealth>
static void bwd_bn2_rows(T* dn_dz, const T* xhat, const T* k, const T* m1, const T* m2,
                         double* db_acc, int64_t rows, int64_t n, GradHealth<T>* h) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  typedef typename Vec<T>::V VT;
  typedef decltype(VT{} < VT{}) VI;
  constexpr int64_t W = Vec<T>::W;
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  const VI expmask = (VI)Vec<T>::splat(std::numeric_limits<T>::infinity());
  VI bad = {};
  T ck = 0;
  for (int64_t r = 0; r < rows; ++r) {
    T* zr = dn_dz + r * n;
    const T* xr = xhat + r * n;
    int64_t c = 0;
    for (; c + W <= n; c += W) {
      const VT v = Vec<T>::load(k + c) * (Vec<T>::load(zr + c) - Vec<T>::load(m1 + c) -
                                          Vec<T>::load(xr + c) * Vec<T>::load(m2 + c));
      Vec<T>::store(zr + c, v);
      if constexpr (kDb) {
        if constexpr (sizeof(T) == 4) {
          VD a0, a1;
          std::memcpy(&a0, db_acc + c, sizeof a0);
          std::memcpy(&a1, db_acc + c + WD, sizeof a1);
          a0 += half_to_f64<VD, 0>(v);
          a1 += half_to_f64<VD, W / 2>(v);
          std::memcpy(db_acc + c, &a0, sizeof a0);
          std::memcpy(db_acc + c + WD, &a1, sizeof a1);
        } else {
          VD a;
          std::memcpy(&a, db_acc + c, sizeof a);
          a += v;
          std::memcpy(db_acc + c, &a, sizeof a);
        }
      }
      if constexpr (kHealth) bad |= ((VI)v & expmask) == expmask;
    }
    for (; c < n; ++c) {
      const T v = k[c] * (zr[c] - m1[c] - xr[c] * m2[c]);
      zr[c] = v;
      if constexpr (kDb) db_acc[c] += double(v);
      if constexpr (kHealth) ck += v * T(0);
    }
  }
  if constexpr (kHealth) {
    bool any = false;
    for (int64_t j = 0; j < W; ++j) any = any || bad[j] != 0;
    h->dz_check += any ? std::numeric_limits<double>::quiet_NaN() : double(ck);
  }
}

template <class T>
static void bwd_bn2(T* dn_dz, const T* xhat, const T* k, const T* m1, const T* m2, double* db_acc,
                    int64_t rows, int64_t n, GradHealth<T>* h) {
#define GC_BN2(DB, H) bwd_bn2_rows<T, DB, H>(dn_dz, xhat, k, m1, m2, db_acc, rows, n, h)
  if (db_acc) {
    if (h) GC_BN2(true, true); else GC_BN2(true, false);
  } else {
    if (h) GC_BN2(false, true); else GC_BN2(false, false);
  }
#undef GC_BN2
}

template <class T, bool kDb, bool kSelect>
static double bwd_layernorm_rows(const T* g, const T* d, const T* xhat, const T* gamma,
                                 const T* row_istd, const T scale, T* dz, double* dgamma_acc,
                                 double* dbeta_acc, double* db_acc, int64_t rows, int64_t n) {
  double ss = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * n;
    const T* dr = d + r * n;
    const T* xr = xhat + r * n;
    T* zr = dz + r * n;
    double rs = 0.0, s1 = 0.0, s2 = 0.0;
    // pass 1 over the row: dxh = g*scale*d*gamma (kept in dz), its two row means
#pragma omp simd reduction(+ : rs, s1, s2)
    for (int64_t c = 0; c < n; ++c) {
      T gv = gr[c];
      T dn = grad_times<T, kSelect>(gv, scale, dr[c]);
      dgamma_acc[c] += double(dn) * double(xr[c]);
      dbeta_acc[c] += double(dn);
      T dxh = dn * gamma[c];
      zr[c] = dxh;
      s1 += double(dxh);
      s2 += double(dxh) * double(xr[c]);
      rs += double(gv) * double(gv);
    }
    const T m1 = T(s1 / double(n));
    const T m2 = T(s2 / double(n));
    const T istd = row_istd[r];
    // pass 2 (row in cache): dz = istd * (dxh - m1 - xhat * m2)
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      T v = istd * (zr[c] - m1 - xr[c] * m2);
      zr[c] = v;
      if constexpr (kDb) db_acc[c] += double(v);
    }
    ss += rs;
  }
  return ss;
}

template <class T>
static double bwd_layernorm(const T* g, const T* d, const T* xhat, const T* gamma,
                            const T* row_istd, T scale, bool select, T* dz, double* dgamma_acc,
                            double* dbeta_acc, double* db_acc, int64_t rows, int64_t n) {
#define GC_LNB(DB, SEL)                                                                      \
  bwd_layernorm_rows<T, DB, SEL>(g, d, xhat, gamma, row_istd, scale, dz, dgamma_acc,         \
                                 dbeta_acc, db_acc, rows, n)
  if (db_acc) return select ? GC_LNB(true, true) : GC_LNB(true, false);
  return select ? GC_LNB(false, true) : GC_LNB(false, false);
#undef GC_LNB
}


// ---------------------------------------------------------------------------
// Health statistics (the report's dead / saturated units, zero / subnormal fractions of
// dL/da and where a non-finite dz was born) and per-example gradient norms.
// ---------------------------------------------------------------------------
template <class T>
static double bwd_plain_health(const T* g, const T* d, T scale, bool select, T* dz,
                               double* db_acc, int64_t rows, int64_t n, GradHealth<T>* h) {
  return bwd_plain_rep<T, true>(g, d, scale, select, dz, db_acc, h->dmax, rows, n, h);
}

// Vector accumulators across the rows (one horizontal sum per call, not per row: at n = 64,
// batch norm's blocks in mlp-deep-narrow, the per-row sums cost more than the compares).
template <class T>
static void grad_health(const T* g, const T* d, const T* dz, int64_t rows, int64_t n,
                        GradHealth<T>* h) {
  typedef typename Vec<T>::V VT;
  typedef decltype(VT{} < VT{}) VI;  // integers of T's width (lane masks: -1 / 0)
  constexpr int64_t W = Vec<T>::W;
  const T tiny = tiny_of<T>();
  const VT zero = {};
  const VI absmask = ~(VI)Vec<T>::splat(T(-0.0));  // every bit but the sign
  if (g) {
    const VT vtiny = Vec<T>::splat(tiny);
    VI rz = {}, rlt = {};  // |g| == 0, |g| < tiny (zeros included)
    double zc = 0.0, sc = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * n;
      int64_t c = 0;
      for (; c + W <= n; c += W) {
        const VT ag = (VT)((VI)Vec<T>::load(gr + c) & absmask);
        rz -= ag == zero;
        rlt -= ag < vtiny;
      }
      for (; c < n; ++c) {
        const T ag = std::abs(gr[c]);
        zc += ag == T(0) ? 1.0 : 0.0;
        sc += (ag > T(0) && ag < tiny) ? 1.0 : 0.0;
      }
    }
    int64_t zi = 0, li = 0;  // summed as integers (exact), converted once
    for (int64_t j = 0; j < W; ++j) {
      zi += int64_t(rz[j]);
      li += int64_t(rlt[j]);
    }
    h->zeros += zc + double(zi);
    h->subnormals += sc + double(li - zi);
  }
  if (d && h->dmax) {
    T* dmax = h->dmax;
    for (int64_t r = 0; r < rows; ++r) {
      const T* dr = d + r * n;
      int64_t c = 0;
      for (; c + W <= n; c += W) {
        const VT ad = (VT)((VI)Vec<T>::load(dr + c) & absmask);
        VT dm = Vec<T>::load(dmax + c);
        dm = ad > dm ? ad : dm;
        Vec<T>::store(dmax + c, dm);
      }
      for (; c < n; ++c) {
        const T ad = std::abs(dr[c]);
        dmax[c] = ad > dmax[c] ? ad : dmax[c];
      }
    }
  }
  if (dz) {  // four accumulators: one would wait on the add's latency every vector
    VT k0 = {}, k1 = {}, k2 = {}, k3 = {};
    T ck = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T* zr = dz + r * n;
      int64_t c = 0;
      for (; c + 4 * W <= n; c += 4 * W) {
        k0 += Vec<T>::load(zr + c) * zero;
        k1 += Vec<T>::load(zr + c + W) * zero;
        k2 += Vec<T>::load(zr + c + 2 * W) * zero;
        k3 += Vec<T>::load(zr + c + 3 * W) * zero;
      }
      for (; c + W <= n; c += W) k0 += Vec<T>::load(zr + c) * zero;
      for (; c < n; ++c) ck += zr[c] * T(0);
    }
    const VT rck = (k0 + k1) + (k2 + k3);
    for (int64_t j = 0; j < W; ++j) ck += rck[j];
    h->dz_check += double(ck);
  }
}

// The lanes of a compare's mask (-1 / 0 per lane) as bits, lane j at bit j.
template <class VI>
static inline uint64_t lane_bits(VI m) {
  constexpr int64_t W = int64_t(sizeof(VI) / sizeof(m[0]));
#if GC_VBYTES == 64 && defined(__AVX512DQ__)
  if constexpr (W == 16) return uint64_t(_mm512_movepi32_mask((__m512i)m));
  else return uint64_t(_mm512_movepi64_mask((__m512i)m));
#elif GC_VBYTES == 32 && defined(__AVX__)
  if constexpr (W == 8) return uint64_t(unsigned(_mm256_movemask_ps((__m256)m)));
  else return uint64_t(unsigned(_mm256_movemask_pd((__m256d)m)));
#elif GC_VBYTES == 16 && defined(__SSE2__)
  if constexpr (W == 4) return uint64_t(unsigned(_mm_movemask_ps((__m128)m)));
  else return uint64_t(unsigned(_mm_movemask_pd((__m128d)m)));
#else
  uint64_t b = 0;
  for (int64_t j = 0; j < W; ++j) b |= uint64_t(m[j] != 0) << j;
  return b;
#endif
}

// The RNN's backward step with the report (rnn.cpp): dz and db exactly as bwd_plain_rows
// computes them (the same operations per element, each db's float64 sum in row order), sum
// g^2 (float64, returned) and h's statistics. Column chunks outer, rows inner: a chunk's
// db accumulators and |act'| maxima stay in registers over the block's rows (one load and
// store per call, not per row), and each maximum is stored as two bits per unit (> 0, >=
// h->thr). The zero / subnormal test is a running min |g| per lane (one op per vector);
// the exact counts come from a second pass over the block (in L1) only when that min is
// below the smallest normal number (an underflowing gradient). bwd_plain_health's
// sweep, two compares and counts, a max read and written per row and sum(dz * 0) per
// vector, was 30 instructions per 16 floats against the plain pass's dozen.
template <class T, bool kDb, bool kSelect>
static double bwd_step_health_rows(const T* g, const T* d, const T scale, T* dz,
                                   double* db_acc, int64_t rows, int64_t n, StepHealth<T>* h) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  typedef typename Vec<T>::V VT;
  typedef decltype(VT{} < VT{}) VI;
  constexpr int64_t W = Vec<T>::W;
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  const VT vscale = Vec<T>::splat(scale);
  const VT vthr = Vec<T>::splat(h->thr);
  const VI absmask = ~(VI)Vec<T>::splat(T(-0.0));  // every bit but the sign
  const VT zero = {};
  const T tiny = tiny_of<T>();
  const T big = std::numeric_limits<T>::infinity();
  const int64_t words = (n + 63) / 64;
  for (int64_t w = 0; w < words; ++w) h->live[w] = h->unsat[w] = 0;
  VD rs0 = {}, rs1 = {};
  VT vmin = Vec<T>::splat(big);
  double ss = 0.0;  // the columns after the last full vector
  T mn = big;
  // Chunks of kV column vectors (the whole row at n = 64 in float32 on AVX-512): the rows
  // inner, the chunk's vectors innermost, so each row is read and written in address
  // order (as the plain pass) while the chunk's accumulators stay in registers.
  auto chunk = [&](int64_t c0, auto nv) {
    constexpr int64_t kV = decltype(nv)::value;
    VD a0[kV] = {}, a1[kV] = {};
    VT dm[kV] = {};
    if constexpr (kDb) {
      for (int64_t k = 0; k < kV; ++k) {
        std::memcpy(&a0[k], db_acc + c0 + k * W, sizeof(VD));
        if constexpr (sizeof(T) == 4) std::memcpy(&a1[k], db_acc + c0 + k * W + WD, sizeof(VD));
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < kV; ++k) {
        const int64_t o = r * n + c0 + k * W;
        const VT gv = Vec<T>::load(g + o);
        const VT dv = Vec<T>::load(d + o);
        const VT v = grad_times_v<kSelect>(gv, vscale, dv);
        Vec<T>::store(dz + o, v);
        if constexpr (sizeof(T) == 4) {
          const VD gd0 = half_to_f64<VD, 0>(gv), gd1 = half_to_f64<VD, W / 2>(gv);
          rs0 += gd0 * gd0;
          rs1 += gd1 * gd1;
          if constexpr (kDb) {
            a0[k] += half_to_f64<VD, 0>(v);
            a1[k] += half_to_f64<VD, W / 2>(v);
          }
        } else {
          rs0 += gv * gv;
          if constexpr (kDb) a0[k] += v;
        }
        const VT ag = (VT)((VI)gv & absmask);
        vmin = ag < vmin ? ag : vmin;  // NaN left out
        const VT ad = (VT)((VI)dv & absmask);
        dm[k] = ad > dm[k] ? ad : dm[k];  // NaN left out
      }
    }
    for (int64_t k = 0; k < kV; ++k) {
      const int64_t ck = c0 + k * W;
      if constexpr (kDb) {
        std::memcpy(db_acc + ck, &a0[k], sizeof(VD));
        if constexpr (sizeof(T) == 4) std::memcpy(db_acc + ck + WD, &a1[k], sizeof(VD));
      }
      h->live[ck / 64] |= lane_bits(dm[k] > zero) << (ck % 64);
      h->unsat[ck / 64] |= lane_bits(dm[k] >= vthr) << (ck % 64);
    }
  };
  int64_t c = 0;
  for (; c + 4 * W <= n; c += 4 * W) chunk(c, std::integral_constant<int64_t, 4>{});
  for (; c + W <= n; c += W) chunk(c, std::integral_constant<int64_t, 1>{});
  for (; c < n; ++c) {
    double a = kDb ? db_acc[c] : 0.0;
    T m = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T gv = g[r * n + c];
      const T dv = d[r * n + c];
      const T v = grad_times<T, kSelect>(gv, scale, dv);
      dz[r * n + c] = v;
      if constexpr (kDb) a += double(v);
      ss += double(gv) * double(gv);
      const T ag = std::abs(gv), ad = std::abs(dv);
      mn = ag < mn ? ag : mn;
      m = ad > m ? ad : m;
    }
    if constexpr (kDb) db_acc[c] = a;
    h->live[c / 64] |= uint64_t(m > T(0)) << (c % 64);
    h->unsat[c / 64] |= uint64_t(m >= h->thr) << (c % 64);
  }
  const VD rs = rs0 + rs1;
  for (int64_t j = 0; j < WD; ++j) ss += rs[j];
  for (int64_t j = 0; j < W; ++j) mn = vmin[j] < mn ? vmin[j] : mn;
  if (mn < tiny) {  // an entry is 0 or subnormal: count them exactly
    GradHealth<T> gh;
    grad_health<T>(g, nullptr, nullptr, rows, n, &gh);
    h->zeros += gh.zeros;
    h->subnormals += gh.subnormals;
  }
  return ss;
}

template <class T>
static double bwd_step_health(const T* g, const T* d, T scale, bool select, T* dz,
                              double* db_acc, int64_t rows, int64_t n, StepHealth<T>* h) {
  if (db_acc)
    return select ? bwd_step_health_rows<T, true, true>(g, d, scale, dz, db_acc, rows, n, h)
                  : bwd_step_health_rows<T, true, false>(g, d, scale, dz, db_acc, rows, n, h);
  return select ? bwd_step_health_rows<T, false, true>(g, d, scale, dz, db_acc, rows, n, h)
                : bwd_step_health_rows<T, false, false>(g, d, scale, dz, db_acc, rows, n, h);
}

template <class T>
static void row_sumsq(const T* x, int64_t rows, int64_t n, double* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n; ++c) s += double(xr[c]) * double(xr[c]);
    out[r] = s;
  }
}

template <class T, bool kSelect>
static void ln_example_ss_rows(const T* g, const T* d, const T* xhat, const T scale,
                               int64_t rows, int64_t n, double* og, double* ob) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * n;
    const T* dr = d + r * n;
    const T* xr = xhat + r * n;
    double sg = 0.0, sb = 0.0;
#pragma omp simd reduction(+ : sg, sb)
    for (int64_t c = 0; c < n; ++c) {
      const double dn = double(grad_times<T, kSelect>(gr[c], scale, dr[c]));
      const double dg = dn * double(xr[c]);
      sg += dg * dg;
      sb += dn * dn;
    }
    og[r] = sg;
    ob[r] = sb;
  }
}

template <class T>
static void ln_example_ss(const T* g, const T* d, const T* xhat, T scale, bool select,
                          int64_t rows, int64_t n, double* og, double* ob) {
  if (select)
    ln_example_ss_rows<T, true>(g, d, xhat, scale, rows, n, og, ob);
  else
    ln_example_ss_rows<T, false>(g, d, xhat, scale, rows, n, og, ob);
}

}  // namespace GC_ISA_NS
}  // namespace gradchain
