// chain_util.h — helpers shared by the chain drivers (mlp.cpp, rnn.cpp); internal.
#pragma once

#include <cmath>
#include <cstdint>

#include "gradchain/blas.h"
#include "gradchain/kernels.h"
#include "gradchain/parallel.h"

namespace gradchain {
namespace detail {

// C (M x N) = op(A) op(B) + beta C, for block `blk` of the split `s`.
template <class T>
inline void gemm_block(const GemmSplit& s, int64_t blk, bool ta, bool tb, int64_t M, int64_t N,
                       int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
                       int64_t ldc) {
  const int64_t o = blk * s.block;
  if (s.along_m) {
    const int64_t m = (o + s.block <= M) ? s.block : M - o;
    gemm(ta, tb, m, N, K, T(1), ta ? A + o : A + o * lda, lda, B, ldb, beta, C + o * ldc, ldc);
  } else {
    const int64_t n = (o + s.block <= N) ? s.block : N - o;
    gemm(ta, tb, M, n, K, T(1), A, lda, tb ? B + o * ldb : B + o, ldb, beta, C + o, ldc);
  }
}

// Sum of squares (float64) of block `blk` of C (M x N, leading dimension ldc) under split `s`.
template <class T>
inline double gemm_block_sumsq(const KernelTable<T>& K, const GemmSplit& s, int64_t blk,
                               int64_t M, int64_t N, const T* C, int64_t ldc) {
  const int64_t o = blk * s.block;
  if (s.along_m) {
    const int64_t m = (o + s.block <= M) ? s.block : M - o;
    if (ldc == N) return K.sumsq(C + o * ldc, m * N);
    double ss = 0.0;
    for (int64_t r = 0; r < m; ++r) ss += K.sumsq(C + (o + r) * ldc, N);
    return ss;
  }
  const int64_t n = (o + s.block <= N) ? s.block : N - o;
  double ss = 0.0;
  for (int64_t r = 0; r < M; ++r) ss += K.sumsq(C + r * ldc + o, n);
  return ss;
}

// Rows in block `rb` of `B` rows cut into blocks of `block` rows.
inline int64_t rows_in_block(int64_t rb, int64_t B, int64_t block = kRowBlock) {
  const int64_t r0 = rb * block;
  return (r0 + block <= B) ? block : B - r0;
}

// Sum the row-block partials of `n` columns in block order; store into dst
// (assign or add) and return the sum of squares of what was stored.
template <class T>
inline double reduce_store(const double* part, int64_t nblocks, int64_t n, T* dst,
                           bool accumulate) {
  double ss = 0.0;
  for (int64_t c = 0; c < n; ++c) {
    double s = 0.0;
    for (int64_t b = 0; b < nblocks; ++b) s += part[b * n + c];
    const T v = accumulate ? T(dst[c] + T(s)) : T(s);
    dst[c] = v;
    ss += double(v) * double(v);
  }
  return ss;
}

// The epilogue arguments for the row block starting at row r0 (the residual input moves with it).
template <class T>
inline FwdArgs<T> block_args(const FwdArgs<T>& args, int64_t r0, int64_t n) {
  FwdArgs<T> a = args;
  if (a.resid) a.resid += r0 * n;
  return a;
}

// A tensor holds NaN/Inf iff its float64 sum of squares and its (rescaled) norm are not finite.
inline bool has_nonfinite(double ss, double norm) { return !std::isfinite(ss) && !std::isfinite(norm); }

}  // namespace detail
}  // namespace gradchain
