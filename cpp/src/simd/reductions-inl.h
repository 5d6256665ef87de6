// reductions-inl.h — column sums, sums of squares, max-abs and the gradient edits
// (scale, clamp), compiled once per ISA (table-inl.h).
#pragma once

#include "math-inl.h"

namespace gradchain {
namespace GC_ISA_NS {

// ---------------------------------------------------------------------------
// Column reductions (bias gradients, batch statistics): acc[c] += over a block of rows.
// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// Reductions and gradient edits
// ---------------------------------------------------------------------------
// W/2 values of T from p as a float64 vector (VD, the ISA's width of doubles): float is
// widened with one conversion. GCC 12 compiles __builtin_convertvector of 8 floats to 8
// doubles for AVX-512 as two 4-wide conversions, an extract and an insert (three times
// the shuffle-port work): the report's sums over each dW block ran at about 20 GB/s from
// L2 (mlp-tanh, 2 threads: 2.5 % of the pass). Exact either way: the same numbers.
template <class T, class VD>
static inline VD load_f64(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
#if GC_VBYTES == 64 && defined(__AVX512F__)
    return (VD)_mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(p));
#elif GC_VBYTES == 32 && defined(__AVX__)
    return (VD)_mm256_cvtps_pd(_mm_loadu_ps(p));
#endif
  }
  typedef T VT __attribute__((vector_size(sizeof(VD) * sizeof(T) / sizeof(double))));
  VT v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, VD);
}

// sum(x^2) in float64 with four independent vector accumulators: one accumulator
// would wait on the FMA latency every step (1 element per cycle); four keep both FMA
// ports busy, so the report's pass over each dW block costs little next to the GEMM.
// The order of the additions is fixed by n alone (same numbers for any thread count).
template <class T>
static double sumsq(const T* x, int64_t n) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  auto ld = [](const T* p) { return load_f64<T, VD>(p); };
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

// sum(x^2) in float64 over `rows` rows of n values, ld apart (a column block of a GEMM's
// C: the report's ||dW|| when the product is split along columns). The four vector
// accumulators run across the rows, so a narrow block pays one horizontal sum in all, not
// one per row (sumsq called per row of a 64-wide block spent more time in its tails and
// horizontal sums than in the squares). The order is fixed by (rows, n) alone.
template <class T>
static double sumsq_rows(const T* x, int64_t ld, int64_t rows, int64_t n) {
  typedef double VD __attribute__((vector_size(GC_VBYTES)));
  constexpr int64_t WD = GC_VBYTES / int64_t(sizeof(double));
  auto ld1 = [](const T* p) { return load_f64<T, VD>(p); };
  // Eight accumulators: rows alternate between two sets of four, so a strip of 32 float32
  // columns (one chunk per row: gemm_panels_ss) keeps two FMA chains per accumulator in
  // flight instead of waiting on one.
  double s = 0.0;
  auto row = [&](const T* xr, VD& b0, VD& b1, VD& b2, VD& b3) {
    int64_t i = 0;
    for (; i + 4 * WD <= n; i += 4 * WD) {
      const VD v0 = ld1(xr + i), v1 = ld1(xr + i + WD), v2 = ld1(xr + i + 2 * WD),
               v3 = ld1(xr + i + 3 * WD);
      b0 += v0 * v0;
      b1 += v1 * v1;
      b2 += v2 * v2;
      b3 += v3 * v3;
    }
    for (; i + WD <= n; i += WD) {
      const VD v = ld1(xr + i);
      b0 += v * v;
    }
    for (; i < n; ++i) s += double(xr[i]) * double(xr[i]);
  };
  VD a0 = {}, a1 = {}, a2 = {}, a3 = {}, c0 = {}, c1 = {}, c2 = {}, c3 = {};
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    row(x + r * ld, a0, a1, a2, a3);
    row(x + (r + 1) * ld, c0, c1, c2, c3);
  }
  if (r < rows) row(x + r * ld, a0, a1, a2, a3);
  const VD t = ((a0 + c0) + (a1 + c1)) + ((a2 + c2) + (a3 + c3));
  for (int64_t j = 0; j < WD; ++j) s += t[j];
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

}  // namespace GC_ISA_NS
}  // namespace gradchain
