// gemm-inl.h — the panel GEMM, compiled once per ISA (table-inl.h).
#pragma once

#include <type_traits>

#include "math-inl.h"
#include "reductions-inl.h"  // sumsq_rows (gemm_panels_ss)

namespace gradchain {
namespace GC_ISA_NS {

// ---------------------------------------------------------------------------
// Panel GEMM, C (m x N) += A (m x K) op(B) (K x N), with op(B) packed into panels of
// NR = 2 vectors of columns (panel p: K rows of NR contiguous values, zero-padded past
// N), read contiguously (no cache-set conflicts from a row stride of a power of two).
// The RNN packs W_hh once per pass for all its steps (OpenBLAS would re-pack it on
// every call); float32 layer products pack op(B) per block (gemm_block.h). Register tile: MR = 6 rows x
// 2 vectors (12 accumulators, 2 panel vectors, 1 broadcast: 15 of 16 registers
// on SSE2/AVX2), then 4-, 2- and 1-row tiles. Each element of C is
// C + sum_k A[i,k] op(B)[k,j] with the sum in k order, whatever m and the tile:
// the same numbers for any row blocking and thread count.
// ---------------------------------------------------------------------------

// A W x W block transpose in registers: r[i][l] <- r[l][i], in log2(W) stages that swap the
// off-diagonal D x D blocks (D = W/2, ..., 1), each a two-input shuffle with a constant
// mask (vpermt2ps/pd on AVX-512).
template <class T, int D>
static inline void transpose_stage(typename Vec<T>::V* r) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int W = int(VT::W);
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I VI __attribute__((vector_size(sizeof(V))));
  VI lo, hi;  // lanes of (a, b) concatenated: a is 0..W-1, b is W..2W-1
#pragma GCC unroll 16
  for (int l = 0; l < W; ++l) {
    lo[l] = I((l & D) ? W + l - D : l);
    hi[l] = I((l & D) ? W + l : l + D);
  }
#pragma GCC unroll 16
  for (int i = 0; i < W; ++i) {
    if (i & D) continue;
    const V a = r[i], b = r[i + D];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + D] = __builtin_shuffle(a, b, hi);
  }
  if constexpr (D > 1) transpose_stage<T, D / 2>(r);
}

template <class T>
static inline void transpose_block(typename Vec<T>::V* r) {
  if constexpr (Vec<T>::W > 1) transpose_stage<T, int(Vec<T>::W) / 2>(r);
}

// op(B) (K x N) into panels: trans = false reads B[k * ldb + j], trans = true B[j * ldb + k].
// The transposed case (the forward's W^T) moves W x W blocks through registers
// (transpose_block) instead of one value at a time.
template <class T>
static void pack_panels(int64_t K, int64_t N, const T* B, int64_t ldb, bool trans, T* out) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int64_t W = VT::W, NR = 2 * W;
  const int64_t nfull = trans ? 0 : N / NR * NR;
  if (nfull > 0) {
    // Not transposed: row by row, each row's full panels in one sequential sweep (a
    // panel-by-panel walk would stride through B once per panel: the operands come from L3,
    // and the prefetcher follows one stream better than many), next rows prefetched.
    for (int64_t k = 0; k < K; ++k) {
      const T* src = B + k * ldb;
      if (k + 4 < K)
        for (int64_t j = 0; j < nfull; j += 64 / int64_t(sizeof(T)))
          __builtin_prefetch(src + 4 * ldb + j, 0, 3);
      T* o = out + k * NR;
      for (int64_t j0 = 0; j0 < nfull; j0 += NR) {
        VT::store(o + j0 * K, VT::load(src + j0));
        VT::store(o + j0 * K + W, VT::load(src + j0 + W));
      }
    }
  }
  for (int64_t j0 = nfull; j0 < N; j0 += NR) {
    const int64_t nr = (N - j0 < NR) ? N - j0 : NR;
    T* o = out + j0 * K;
    int64_t k0 = 0;
    if (trans && nr == NR && W > 1) {
      V r[W];
      for (; k0 + W <= K; k0 += W)
        for (int64_t h = 0; h < 2; ++h) {  // the panel's two vectors of columns
          for (int64_t i = 0; i < W; ++i) r[i] = VT::load(B + (j0 + h * W + i) * ldb + k0);
          transpose_block<T>(r);
          for (int64_t i = 0; i < W; ++i) VT::store(o + (k0 + i) * NR + h * W, r[i]);
        }
    }
    for (int64_t k = k0; k < K; ++k)
      for (int64_t jj = nr; jj < NR; ++jj) o[k * NR + jj] = T(0);
    if (trans) {
      for (int64_t jj = 0; jj < nr; ++jj) {  // read rows of B contiguously
        const T* src = B + (j0 + jj) * ldb;
        for (int64_t k = k0; k < K; ++k) o[k * NR + jj] = src[k];
      }
    } else {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t jj = 0; jj < nr; ++jj) o[k * NR + jj] = B[k * ldb + j0 + jj];
    }
  }
}

// Rows of the main register tile: 6 (12 accumulators) where there are 16 vector registers,
// GC_PANEL_MR (default 12: 24 accumulators) with AVX-512's 32.
#ifndef GC_PANEL_MR
#define GC_PANEL_MR 12
#endif
constexpr int kPanelMR = GC_VBYTES >= 64 ? GC_PANEL_MR : 6;

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
#pragma GCC unroll 16
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
static void gemm_panels(int64_t m, int64_t N, int64_t K, const T* A, int64_t ars,
                        int64_t acs, const T* Bp, T* C, int64_t ldc, bool accumulate) {
  constexpr int64_t NR = 2 * Vec<T>::W;
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t nr = (N - j0 < NR) ? N - j0 : NR;
    const T* bp = Bp + j0 * K;
    T* c = C + j0;
    int64_t i = 0;
    if constexpr (kPanelMR > 6)
      for (; i + kPanelMR <= m; i += kPanelMR)
        panel_tile<T, kPanelMR>(K, A + i * ars, ars, acs, bp, c + i * ldc, ldc, nr, accumulate);
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
    if (i < m)
      panel_tile<T, 1>(K, A + i * ars, ars, acs, bp, c + i * ldc, ldc, nr, accumulate);
  }
}

// gemm_panels, returning the float64 sum of squares of C as stored (the report's ||dW||
// of the block): each panel's strip of C (m x NR) is summed right after its last tile was
// stored, while it is still in L1 / L2, instead of in a pass over the whole block after
// the product.
template <class T>
static double gemm_panels_ss(int64_t m, int64_t N, int64_t K, const T* A, int64_t ars,
                             int64_t acs, const T* Bp, T* C, int64_t ldc, bool accumulate) {
  constexpr int64_t NR = 2 * Vec<T>::W;
  double s = 0.0;
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t nr = (N - j0 < NR) ? N - j0 : NR;
    gemm_panels<T>(m, nr, K, A, ars, acs, Bp + j0 * K, C + j0, ldc, accumulate);
    s += sumsq_rows<T>(C + j0, ldc, m, nr);
  }
  return s;
}

}  // namespace GC_ISA_NS
}  // namespace gradchain
