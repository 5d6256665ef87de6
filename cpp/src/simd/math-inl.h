// math-inl.h — the maths the kernels are made of, compiled once per ISA (table-inl.h):
// float32 and float64 exp / expm1 that vectorise, the per-dtype math M<T>, and Vec<T>,
// the fixed-width vector type of the panel GEMM.
//
// Rules that keep every simd/*-inl.h file vectorising and ODR-safe:
//  * everything lives in namespace gradchain::GC_ISA_NS, so no inline function
//    compiled for AVX-512 can be picked by the linker for the scalar table;
//  * no std::min/max (templates: out-of-line copies would be shared across ISAs;
//    and they block vectorisation under -ftrapping-math) — plain ternaries;
//  * reductions use `#pragma omp simd reduction`, which lets GCC reorder the sum
//    into vector lanes without -ffast-math. The order is fixed per ISA, so
//    results are reproducible run to run and across thread counts;
//  * float32 transcendental functions are our own branch-free versions (below);
//    float64 uses libm, exact as NumPy's.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef GC_ISA_NS
#error "define GC_ISA_NS before including the simd/*-inl.h files (see table-inl.h)"
#endif

#ifndef GC_VBYTES
#define GC_VBYTES 16
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
// Vec<T>: GC_VBYTES bytes of T (the ISA's vector width; 16 for the scalar build, whose
// baseline x86-64 has SSE2), loaded and stored without alignment assumptions.
// ---------------------------------------------------------------------------
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

}  // namespace GC_ISA_NS
}  // namespace gradchain
