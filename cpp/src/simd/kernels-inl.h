// kernels-inl.h — gradchain's elementwise kernels, written once and compiled once
// per ISA. Include it after defining GC_ISA_NS (the namespace, e.g. avx2) and
// GC_ISA_NAME (a string). Each ISA's translation unit is compiled with its own
// -m flags (CMakeLists.txt), so every loop below auto-vectorises to that ISA.
//
// Rules that keep it vectorising and ODR-safe:
//  * everything lives in namespace gradchain::GC_ISA_NS, so no inline function
//    compiled for AVX-512 can be picked by the linker for the scalar table;
//  * no std::min/max (templates: out-of-line copies would be shared across ISAs;
//    and they block vectorisation under -ftrapping-math) — plain ternaries;
//  * reductions use `#pragma omp simd reduction`, which lets GCC reorder the sum
//    into vector lanes without -ffast-math. The order is fixed per ISA, so
//    results are reproducible run to run and across thread counts;
//  * float32 transcendental functions are our own branch-free versions (below);
//    float64 uses libm, exact as NumPy's.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "gradchain/kernels.h"

#ifndef GC_ISA_NS
#error "define GC_ISA_NS before including kernels-inl.h"
#endif

namespace gradchain {
namespace GC_ISA_NS {

// ---------------------------------------------------------------------------
// float32 math that vectorises. exp: x = n ln2 + r with |r| <= ln2/2, then a
// degree-7 Taylor polynomial (truncation error r^8/8! < 6e-9, about 0.1 ulp) and
// 2^n built in the exponent bits. Rounding to nearest integer by the 1.5*2^23
// trick (valid because |x*log2e| < 2^22 after the clamp).
// ---------------------------------------------------------------------------
// (e^r - 1) / r = sum_{i>=1} r^(i-1) / i!, up to r^7/8! (truncation < 0.35^8/9! ~ 6e-10
// relative for |r| <= 0.35): exp_f uses 1 + r P(r), expm1_f uses r P(r).
static inline float expm1_poly_f(float r) {
  float p = 1.0f / 40320.0f;
  p = p * r + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p;
}

static inline float exp_f(float x_in) {
  // NaN is carried through at the end; the arithmetic below runs on 0 instead,
  // so the float->int conversion never sees NaN.
  float x = (x_in == x_in) ? x_in : 0.0f;
  x = x > 88.7f ? 88.7f : x;
  x = x < -87.3f ? -87.3f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  float nf = (x * 1.44269504088896341f + shifter) - shifter;
  // ln2 split so that nf * kLn2Hi is exact (kLn2Hi has 9 zero low bits).
  float r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  const float p = 1.0f + r * expm1_poly_f(r);
  int32_t n = static_cast<int32_t>(nf);
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  float r_ok = x_in > 88.72283f ? std::numeric_limits<float>::infinity() : p * scale;
  r_ok = x_in < -87.33654f ? 0.0f : r_ok;  // below FLT_MIN: flushed to 0
  return (x_in == x_in) ? r_ok : x_in;
}

// expm1 with full relative accuracy near 0: x P(x) for |x| < 0.35, exp(x) - 1
// elsewhere (cancellation at most ~1.5 bits there).
static inline float expm1_f(float x) {
  float small = x * expm1_poly_f(x);
  float big = exp_f(x) - 1.0f;
  float ax = x < 0 ? -x : x;
  return ax < 0.35f ? small : big;
}

// ---------------------------------------------------------------------------
// float64 exp and expm1 that vectorise (libm's do not, without -ffast-math):
// x = k ln2 + r, |r| <= ln2/2, ln2 split in two so k * kLn2Hi is exact; a
// degree-13 Taylor polynomial (truncation r^14/14! < 4e-18, below half an ulp);
// 2^k built in the exponent bits. k comes out of the rounding shifter's bit
// pattern with 64-bit integer arithmetic (AVX2 has no double->int64 conversion).
// Tested against libm to 1e-14 (tests/test_activations.py).
// ---------------------------------------------------------------------------
static inline double exp_poly_d(double r) {  // sum_{i=1..13} r^(i-1) / i!
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  return p;  // (e^r - 1) / r: exp_d uses 1 + r P(r), expm1_d uses r P(r)
}

static inline double exp_d(double x_in) {
  double x = (x_in == x_in) ? x_in : 0.0;
  x = x > 709.0 ? 709.0 : x;
  x = x < -708.0 ? -708.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634074 + shifter;
  const double kf = t - shifter;
  int64_t tb, sb;
  std::memcpy(&tb, &t, sizeof tb);
  std::memcpy(&sb, &shifter, sizeof sb);
  const int64_t k = tb - sb;  // the rounded integer, from the mantissa bits
  double r = x - kf * 6.93147180369123816490e-01;
  r = r - kf * 1.90821492927058770002e-10;
  const double e = 1.0 + r * exp_poly_d(r);
  const int64_t bits = (k + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  double res = e * scale;
  res = x_in > 709.782712893384 ? std::numeric_limits<double>::infinity() : res;
  res = x_in < -708.39641853226408 ? 0.0 : res;  // below DBL_MIN: flushed to 0
  return (x_in == x_in) ? res : x_in;
}

// expm1: r * P(r) directly for |x| < ln2/2 (no cancellation), exp(x) - 1 elsewhere.
static inline double expm1_d(double x) {
  const double small = x * exp_poly_d(x);
  const double big = exp_d(x) - 1.0;
  const double ax = x < 0 ? -x : x;
  return ax < 0.34657359027997264 ? small : big;
}

// Per-dtype math: float32 uses the functions above, float64 uses libm.
template <class T> struct M;
template <> struct M<float> {
  static float exp(float x) { return exp_f(x); }
  static float expm1(float x) { return expm1_f(x); }
  // Phi(x) = P(N(0,1) <= x) and the normal density, evaluated in float64 (the
  // argument scaling would otherwise cost ~x^2 ulp); libm, so not vectorised.
  static float phi(float x) { return float(0.5 * std::erfc(-double(x) * 0.70710678118654752440)); }
  static float pdf(float x) {
    return float(0.39894228040143267794 * std::exp(-0.5 * double(x) * double(x)));
  }
  static float log1p(float x) { return std::log1p(x); }
};
template <> struct M<double> {
  static double exp(double x) { return exp_d(x); }
  static double expm1(double x) { return expm1_d(x); }
  static double phi(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }
  static double pdf(double x) { return 0.39894228040143267794 * std::exp(-0.5 * x * x); }
  static double log1p(double x) { return std::log1p(x); }
};

// ---------------------------------------------------------------------------
// Activations: eval(x, f, d) gives f = act(x) and d = act'(x) with PyTorch
// autograd's values at the kinks (relu'(0)=0, hardtanh'(+-1)=0,
// leaky_relu'(0)=slope, elu'(0)/selu'(0) left branch, softplus'=1 past threshold).
// ---------------------------------------------------------------------------
template <class T> struct ActIdentity {
  explicit ActIdentity(const ActParams&) {}
  void operator()(T x, T& f, T& d) const { f = x; d = T(1); }
};
// Derivatives are written without cancellation where the function saturates:
// sigmoid' = s (1 - s) = s * (e s) with e = exp(-x); tanh' = 4e / (1 + e)^2 with
// e = exp(-2|x|); exp-based branches use exp(x) itself rather than expm1(x) + 1.
template <class T> struct ActSigmoid {
  explicit ActSigmoid(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T e = M<T>::exp(-x);
    T s = T(1) / (T(1) + e);
    T one_minus_s = x >= T(0) ? e * s : T(1) - s;  // e may be inf for x << 0
    f = s;
    d = s * one_minus_s;
  }
};
// tanh from one exponential: with em = expm1(-2|x|) and e = em + 1,
// tanh|x| = -em / (2 + em) and tanh' = 4 e / (1 + e)^2 (no cancellation anywhere).
// float32 uses an odd polynomial x P(x^2) below 0.55 (least-squares fit to relative
// error 1.1e-9, made for gradchain with numpy; then tanh' = 1 - t^2 >= 0.7)
// and exp there, where 1 - e does not cancel.
template <class T> struct ActTanh {
  explicit ActTanh(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T ax = x < T(0) ? -x : x;
    if constexpr (std::is_same_v<T, float>) {
      float z = x * x;
      float p = -0.0062643244015684815f;
      p = p * z + 0.02106410793302981f;
      p = p * z - 0.053850289738423776f;
      p = p * z + 0.13332564390684656f;
      p = p * z - 0.33333316797341306f;
      p = p * z + 1.0f;
      float t_small = x * p;
      float e = exp_f(-2.0f * ax);
      float r = 1.0f / (1.0f + e);
      float t_big = (1.0f - e) * r;
      t_big = x < 0 ? -t_big : t_big;
      bool small = ax < 0.55f;
      f = small ? t_small : t_big;
      d = small ? 1.0f - t_small * t_small : 4.0f * e * r * r;
    } else {
      T em = M<T>::expm1(T(-2) * ax);
      T e = em + T(1);
      T r = T(1) / (T(1) + e);
      T t = -em / (T(2) + em);
      f = x < T(0) ? -t : t;
      d = T(4) * e * r * r;
    }
  }
};
template <class T> struct ActRelu {
  explicit ActRelu(const ActParams&) {}
  // NaN as PyTorch: relu(nan) = nan, and its gradient passes (threshold_backward: x <= 0 ? 0 : g)
  void operator()(T x, T& f, T& d) const { f = x < T(0) ? T(0) : x; d = x <= T(0) ? T(0) : T(1); }
};
template <class T> struct ActLeakyRelu {
  T slope;
  explicit ActLeakyRelu(const ActParams& p) : slope(T(p.p0)) {}
  void operator()(T x, T& f, T& d) const { f = x > T(0) ? x : x * slope; d = x > T(0) ? T(1) : slope; }
};
template <class T> struct ActElu {
  T alpha;
  explicit ActElu(const ActParams& p) : alpha(T(p.p0)) {}
  void operator()(T x, T& f, T& d) const {
    T neg = x > T(0) ? T(0) : x;  // keep exp's argument <= 0
    T em1 = M<T>::expm1(neg);
    f = x > T(0) ? x : alpha * em1;
    d = x > T(0) ? T(1) : alpha * M<T>::exp(neg);  // NaN -> NaN (PyTorch's vectorised kernel)
  }
};
template <class T> struct ActSelu {
  static constexpr T kAlpha = T(1.6732632423543772848170429916717);
  static constexpr T kScale = T(1.0507009873554804934193349852946);
  explicit ActSelu(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T neg = x > T(0) ? T(0) : x;
    T em1 = M<T>::expm1(neg);
    f = x > T(0) ? kScale * x : kScale * kAlpha * em1;
    d = x > T(0) ? kScale : kScale * kAlpha * M<T>::exp(neg);
  }
};
template <class T> struct ActGelu {  // exact: x * Phi(x)
  explicit ActGelu(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T cdf = M<T>::phi(x);  // as erfc: no 1 + erf(x) cancellation for x < 0
    T pdf = M<T>::pdf(x);
    f = x * cdf;
    d = cdf + x * pdf;
  }
};
// PyTorch approximate="tanh": 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// With 1 + tanh(u) = 2 s, s = sigmoid(2u), and 1 - tanh(u)^2 = 4 s (1 - s), 1 - s = e s
// (e = exp(-2u)): f = x s, f' = s + 2 x s (e s) u' — the same function and derivative
// as PyTorch's formula, without its cancellation for negative x.
template <class T> struct ActGeluTanh {
  explicit ActGeluTanh(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    const T kBeta = T(0.79788456080286535588);  // sqrt(2/pi)
    const T kKappa = T(0.044715);
    T u = kBeta * (x + kKappa * x * x * x);
    T e = M<T>::exp(T(-2) * u);
    T s = T(1) / (T(1) + e);
    T du = kBeta * (T(1) + T(3) * kKappa * x * x);
    T one_minus_s = u >= T(0) ? e * s : T(1) - s;
    f = x * s;
    d = s + T(2) * x * s * one_minus_s * du;
  }
};
template <class T> struct ActSoftplus {
  T beta, threshold;
  explicit ActSoftplus(const ActParams& p) : beta(T(p.p0)), threshold(T(p.p1)) {}
  void operator()(T x, T& f, T& d) const {
    T bx = beta * x;
    bool lin = bx > threshold;
    T bxc = lin ? T(0) : bx;  // keep exp finite on the linear branch
    T e = M<T>::exp(bxc);
    f = lin ? x : M<T>::log1p(e) / beta;
    d = lin ? T(1) : e / (e + T(1));
  }
};
template <class T> struct ActSilu {
  explicit ActSilu(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T e = M<T>::exp(-x);
    T s = T(1) / (T(1) + e);
    T one_minus_s = x >= T(0) ? e * s : T(1) - s;  // = e s without cancellation
    f = x * s;
    d = s * (T(1) + x * one_minus_s);
  }
};
template <class T> struct ActHardtanh {
  T lo, hi;
  explicit ActHardtanh(const ActParams& p) : lo(T(p.p0)), hi(T(p.p1)) {}
  void operator()(T x, T& f, T& d) const {
    T c = x < lo ? lo : x;
    f = c > hi ? hi : c;
    d = (x > lo && x < hi) ? T(1) : T(0);  // NaN -> 0 (PyTorch's vectorised kernel)
  }
};

// Calls body(act_functor) with the functor type matching p.kind; each
// instantiation is a separate, fully inlined and vectorised loop.
template <class T, class Body>
static inline auto with_act(const ActParams& p, Body&& body) {
  switch (p.kind) {
    case Act::Sigmoid: return body(ActSigmoid<T>(p));
    case Act::Tanh: return body(ActTanh<T>(p));
    case Act::Relu: return body(ActRelu<T>(p));
    case Act::LeakyRelu: return body(ActLeakyRelu<T>(p));
    case Act::Elu: return body(ActElu<T>(p));
    case Act::Selu: return body(ActSelu<T>(p));
    case Act::Gelu: return body(ActGelu<T>(p));
    case Act::GeluTanh: return body(ActGeluTanh<T>(p));
    case Act::Softplus: return body(ActSoftplus<T>(p));
    case Act::Silu: return body(ActSilu<T>(p));
    case Act::Hardtanh: return body(ActHardtanh<T>(p));
    case Act::Identity:
    case Act::Custom:  // the driver applies custom activations itself, after an identity pass
    default: return body(ActIdentity<T>(p));
  }
}

// ---------------------------------------------------------------------------
// Forward epilogues
//
// Each kernel's loops live in a template over the activation functor and
// compile-time flags (bias present, residual present, ...), with every pointer a
// plain argument: GCC vectorises a loop only when no pointer has to be reloaded
// from a struct inside it and no branch on a loop-invariant pointer remains.
// ---------------------------------------------------------------------------
template <class T, class Act, bool kBias, bool kResid>
static double fwd_plain_rows(const Act act, const T* z, T* a, T* d, const T* bias,
                             const T* resid, const T alpha, int64_t rows, int64_t n) {
  double chk = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
    T* ar = a + r * n;
    T* dr = d + r * n;
    const T* rr = resid + r * n;
    T rowchk = 0;
#pragma omp simd reduction(+ : rowchk)
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
    }
    chk += double(rowchk);
  }
  return chk;
}

// a = [resid + alpha *] act(z + b); d = act'(z + b). One pass; a may alias z.
template <class T>
static double fwd_plain(const FwdArgs<T>& A, const T* z, T* a, T* d, int64_t rows, int64_t n) {
  return with_act<T>(A.act, [&](auto act) {
    using F = decltype(act);
    if (A.bias)
      return A.resid ? fwd_plain_rows<T, F, true, true>(act, z, a, d, A.bias, A.resid, A.alpha, rows, n)
                     : fwd_plain_rows<T, F, true, false>(act, z, a, d, A.bias, A.resid, A.alpha, rows, n);
    return A.resid ? fwd_plain_rows<T, F, false, true>(act, z, a, d, A.bias, A.resid, A.alpha, rows, n)
                   : fwd_plain_rows<T, F, false, false>(act, z, a, d, A.bias, A.resid, A.alpha, rows, n);
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
                                 const T alpha, int64_t rows, int64_t n) {
  double chk = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
    T* xr = xhat + r * n;
    T* ar = a + r * n;
    T* dr = d + r * n;
    const T* rr = resid + r * n;
    T rowchk = 0;
#pragma omp simd reduction(+ : rowchk)
    for (int64_t c = 0; c < n; ++c) {
      const T xh = (zr[c] - sh[c]) * sc[c];
      rowchk += norm_act_element<T, Act, kResid>(act, xh, g[c], b[c], rr, c, alpha, xr, ar, dr) *
                T(0);
    }
    chk += double(rowchk);
  }
  return chk;
}

// xhat = (z - shift) * scale; a = [resid + alpha *] act(gamma * xhat + beta).
template <class T>
static double fwd_batchnorm(const FwdArgs<T>& A, const T* z, T* xhat, T* a, T* d, int64_t rows,
                            int64_t n) {
  return with_act<T>(A.act, [&](auto act) {
    using F = decltype(act);
    return A.resid ? fwd_batchnorm_rows<T, F, true>(act, z, xhat, a, d, A.col_shift, A.col_scale,
                                                   A.gamma, A.beta, A.resid, A.alpha, rows, n)
                   : fwd_batchnorm_rows<T, F, false>(act, z, xhat, a, d, A.col_shift, A.col_scale,
                                                    A.gamma, A.beta, A.resid, A.alpha, rows, n);
  });
}

template <class T, class Act, bool kBias, bool kResid>
static double fwd_layernorm_rows(const Act act, const T* z, T* xhat, T* a, T* d, T* row_mean,
                                 T* row_istd, const T* bias, const T* g, const T* b,
                                 const T* resid, const T alpha, const double eps, int64_t rows,
                                 int64_t n) {
  double chk = 0.0;
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
#pragma omp simd reduction(+ : rowchk)
    for (int64_t c = 0; c < n; ++c) {
      T v = zr[c];
      if constexpr (kBias) v += bias[c];
      const T xh = (v - m) * istd;
      rowchk += norm_act_element<T, Act, kResid>(act, xh, g[c], b[c], rr, c, alpha, xr, ar, dr) *
                T(0);
    }
    chk += double(rowchk);
  }
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
                                 A.beta, A.resid, A.alpha, eps, rows, n)
    if (A.bias) return A.resid ? GC_LN(true, true) : GC_LN(true, false);
    return A.resid ? GC_LN(false, true) : GC_LN(false, false);
#undef GC_LN
  });
}

template <class T>
static void col_sum(const T* z, int64_t rows, int64_t n, double* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) acc[c] += double(zr[c]);
  }
}

template <class T>
static void col_moments(const T* z, const T* shift, int64_t rows, int64_t n, double* s1,
                        double* s2) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * n;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      double t = double(zr[c]) - double(shift[c]);
      s1[c] += t;
      s2[c] += t * t;
    }
  }
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

template <class T, bool kSS>
static double bwd_plain_ss(const T* g, const T* d, T scale, bool select, T* dz, double* db_acc,
                           int64_t rows, int64_t n) {
  if (db_acc)
    return select ? bwd_plain_rows<T, true, true, kSS>(g, d, scale, dz, db_acc, rows, n)
                  : bwd_plain_rows<T, true, false, kSS>(g, d, scale, dz, db_acc, rows, n);
  return select ? bwd_plain_rows<T, false, true, kSS>(g, d, scale, dz, db_acc, rows, n)
                : bwd_plain_rows<T, false, false, kSS>(g, d, scale, dz, db_acc, rows, n);
}

template <class T>
static double bwd_plain(const T* g, const T* d, T scale, bool select, bool want_ss, T* dz,
                        double* db_acc, int64_t rows, int64_t n) {
  return want_ss ? bwd_plain_ss<T, true>(g, d, scale, select, dz, db_acc, rows, n)
                 : bwd_plain_ss<T, false>(g, d, scale, select, dz, db_acc, rows, n);
}

template <class T, bool kSelect>
static double bwd_bn1_rows(const T* g, const T* d, const T* xhat, const T scale, T* dn_out,
                           double* acc0, double* acc1, int64_t rows, int64_t n) {
  double ss = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * n;
    const T* dr = d + r * n;
    const T* xr = xhat + r * n;
    T* zr = dn_out + r * n;
    double rs = 0.0;
#pragma omp simd reduction(+ : rs)
    for (int64_t c = 0; c < n; ++c) {
      T gv = gr[c];
      T dn = grad_times<T, kSelect>(gv, scale, dr[c]);
      zr[c] = dn;
      acc0[c] += double(dn);
      acc1[c] += double(dn) * double(xr[c]);
      rs += double(gv) * double(gv);
    }
    ss += rs;
  }
  return ss;
}

template <class T>
static double bwd_bn1(const T* g, const T* d, const T* xhat, T scale, bool select, T* dn_out,
                      double* acc0, double* acc1, int64_t rows, int64_t n) {
  return select ? bwd_bn1_rows<T, true>(g, d, xhat, scale, dn_out, acc0, acc1, rows, n)
                : bwd_bn1_rows<T, false>(g, d, xhat, scale, dn_out, acc0, acc1, rows, n);
}

template <class T, bool kDb>
static void bwd_bn2_rows(T* dn_dz, const T* xhat, const T* k, const T* m1, const T* m2,
                         double* db_acc, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    T* zr = dn_dz + r * n;
    const T* xr = xhat + r * n;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      T v = k[c] * (zr[c] - m1[c] - xr[c] * m2[c]);
      zr[c] = v;
      if constexpr (kDb) db_acc[c] += double(v);
    }
  }
}

template <class T>
static void bwd_bn2(T* dn_dz, const T* xhat, const T* k, const T* m1, const T* m2, double* db_acc,
                    int64_t rows, int64_t n) {
  if (db_acc)
    bwd_bn2_rows<T, true>(dn_dz, xhat, k, m1, m2, db_acc, rows, n);
  else
    bwd_bn2_rows<T, false>(dn_dz, xhat, k, m1, m2, db_acc, rows, n);
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
// Panel GEMM, C (m x N) += A (m x K) op(B) (K x N), with op(B) packed into panels of
// NR = 2 vectors of columns (panel p: K rows of NR contiguous values, zero-padded past
// N), read contiguously (no cache-set conflicts from a row stride of a power of two).
// The RNN packs W_hh once per pass for all its steps (OpenBLAS would re-pack it on
// every call); float32 layer products pack op(B) per block (chain_util.h). Register tile: MR = 6 rows x
// 2 vectors (12 accumulators, 2 panel vectors, 1 broadcast: 15 of 16 registers
// on SSE2/AVX2), then 4-, 2- and 1-row tiles. Each element of C is
// C + sum_k A[i,k] op(B)[k,j] with the sum in k order, whatever m and the tile:
// the same numbers for any row blocking and thread count.
// ---------------------------------------------------------------------------
#ifndef GC_VBYTES
#define GC_VBYTES 16
#endif
template <class T>
struct Vec {
  typedef T V __attribute__((vector_size(GC_VBYTES)));
  static constexpr int64_t W = GC_VBYTES / int64_t(sizeof(T));
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  // A broadcast the compiler emits as one instruction (V{} + s would add 0.0 first).
  static V splat(T s) {
#if GC_VBYTES == 64 && defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) return (V)_mm512_set1_ps(s); else return (V)_mm512_set1_pd(s);
#elif GC_VBYTES == 32 && defined(__AVX__)
    if constexpr (sizeof(T) == 4) return (V)_mm256_set1_ps(s); else return (V)_mm256_set1_pd(s);
#elif GC_VBYTES == 16 && defined(__SSE2__)
    if constexpr (sizeof(T) == 4) return (V)_mm_set1_ps(s); else return (V)_mm_set1_pd(s);
#else
    V v;
    for (int64_t i = 0; i < W; ++i) v[i] = s;
    return v;
#endif
  }
};

// op(B) (K x N) into panels: trans = false reads B[k * ldb + j], trans = true B[j * ldb + k].
template <class T>
static void pack_panels(int64_t K, int64_t N, const T* B, int64_t ldb, bool trans, T* out) {
  using VT = Vec<T>;
  constexpr int64_t W = VT::W, NR = 2 * W;
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t nr = (N - j0 < NR) ? N - j0 : NR;
    T* o = out + j0 * K;
    if (!trans && nr == NR) {
      for (int64_t k = 0; k < K; ++k) {
        VT::store(o + k * NR, VT::load(B + k * ldb + j0));
        VT::store(o + k * NR + W, VT::load(B + k * ldb + j0 + W));
      }
      continue;
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t jj = nr; jj < NR; ++jj) o[k * NR + jj] = T(0);
    if (trans) {
      for (int64_t jj = 0; jj < nr; ++jj) {  // read rows of B contiguously
        const T* src = B + (j0 + jj) * ldb;
        for (int64_t k = 0; k < K; ++k) o[k * NR + jj] = src[k];
      }
    } else {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t jj = 0; jj < nr; ++jj) o[k * NR + jj] = B[k * ldb + j0 + jj];
    }
  }
}

template <class T, int MR>
static inline void panel_tile(int64_t K, const T* A, int64_t ars, int64_t acs, const T* bp,
                              T* C, int64_t ldc, int64_t nr, bool acc_c) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int64_t W = VT::W, NR = 2 * W;
  V acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V{};
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = VT::load(bp + k * NR), b1 = VT::load(bp + k * NR + W);
    const T* a = A + k * acs;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const V av = VT::splat(a[i * ars]);
      acc[i][0] += av * b0;
      acc[i][1] += av * b1;
    }
  }
  for (int i = 0; i < MR; ++i) {
    T* c = C + i * ldc;
    if (nr == NR) {
      VT::store(c, acc_c ? VT::load(c) + acc[i][0] : acc[i][0]);
      VT::store(c + W, acc_c ? VT::load(c + W) + acc[i][1] : acc[i][1]);
    } else {  // the last, partial panel
      T tmp[NR];
      VT::store(tmp, acc[i][0]);
      VT::store(tmp + W, acc[i][1]);
      for (int64_t j = 0; j < nr; ++j) c[j] = acc_c ? c[j] + tmp[j] : tmp[j];
    }
  }
}

// C (m x N) (+)= A op(B), A[i, k] at A[i * ars + k * acs] (row-major: ars = lda, acs = 1;
// transposed: ars = 1, acs = lda); accumulate adds to C, else C is overwritten.
template <class T>
static void gemm_panels(int64_t m, int64_t N, int64_t K, const T* A, int64_t ars, int64_t acs,
                        const T* Bp, T* C, int64_t ldc, bool accumulate) {
  constexpr int64_t NR = 2 * Vec<T>::W;
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t nr = (N - j0 < NR) ? N - j0 : NR;
    const T* bp = Bp + j0 * K;
    T* c = C + j0;
    int64_t i = 0;
    for (; i + 6 <= m; i += 6)
      panel_tile<T, 6>(K, A + i * ars, ars, acs, bp, c + i * ldc, ldc, nr, accumulate);
    if (i + 4 <= m) {
      panel_tile<T, 4>(K, A + i * ars, ars, acs, bp, c + i * ldc, ldc, nr, accumulate);
      i += 4;
    }
    if (i + 2 <= m) {
      panel_tile<T, 2>(K, A + i * ars, ars, acs, bp, c + i * ldc, ldc, nr, accumulate);
      i += 2;
    }
    if (i < m) panel_tile<T, 1>(K, A + i * ars, ars, acs, bp, c + i * ldc, ldc, nr, accumulate);
  }
}

// ---------------------------------------------------------------------------
// Reductions and gradient edits
// ---------------------------------------------------------------------------
// sum(x^2) in float64 with four independent vector accumulators: one accumulator
// would wait on the FMA latency every step (1 element per cycle); four keep both FMA
// ports busy, so the report's pass over each dW block costs little next to the GEMM.
// The order of the additions is fixed by n alone (same numbers for any thread count).
template <class T>
static double sumsq(const T* x, int64_t n) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  typedef T VT __attribute__((vector_size(GC_VBYTES * sizeof(T) / sizeof(double))));
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  auto ld = [](const T* p) {
    VT v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, VD);
  };
  VD a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 4 * WD <= n; i += 4 * WD) {
    const VD v0 = ld(x + i), v1 = ld(x + i + WD), v2 = ld(x + i + 2 * WD), v3 = ld(x + i + 3 * WD);
    a0 += v0 * v0;
    a1 += v1 * v1;
    a2 += v2 * v2;
    a3 += v3 * v3;
  }
  const VD a = (a0 + a1) + (a2 + a3);
  double s = 0.0;
  for (int64_t j = 0; j < WD; ++j) s += a[j];
  for (; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

template <class T>
static double maxabs(const T* x, int64_t n) {
  double m = 0.0;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    double v = std::fabs(double(x[i]));
    nan = nan || (v != v);
    m = v > m ? v : m;
  }
  return nan ? std::numeric_limits<double>::quiet_NaN() : m;
}

template <class T>
static void scale(T* x, int64_t n, T s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

template <class T>
static void clamp(T* x, int64_t n, T lo, T hi) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i];
    v = v < lo ? lo : v;  // NaN compares false: kept
    x[i] = v > hi ? hi : v;
  }
}

template <class T>
static void act_apply(const ActParams& p, const T* x, T* f, T* d, int64_t n) {
  with_act<T>(p, [&](auto act) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T fv, dv;
      act(x[i], fv, dv);
      f[i] = fv;
      d[i] = dv;
    }
    return 0;
  });
}

template <class T>
static const KernelTable<T>* make_table() {
  static const KernelTable<T> table = {
      GC_ISA_NAME,      &fwd_plain<T>,  &fwd_batchnorm<T>, &fwd_layernorm<T>,
      &col_sum<T>,      &col_moments<T>, &add_bias<T>, &bwd_plain<T>,
      &bwd_bn1<T>,      &bwd_bn2<T>,    &bwd_layernorm<T>, &pack_panels<T>, &gemm_panels<T>,
      &sumsq<T>,
      &maxabs<T>,       &scale<T>,      &clamp<T>,         &act_apply<T>,
  };
  return &table;
}

const KernelTable<float>* kernels_f32() { return make_table<float>(); }
const KernelTable<double>* kernels_f64() { return make_table<double>(); }

}  // namespace GC_ISA_NS
}  // namespace gradchain
