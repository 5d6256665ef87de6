// gemm_block.h — one block of a split GEMM, on gradchain's panel kernel or OpenBLAS, and
// the per-thread packing scratch the panel kernel needs; internal to the chain drivers.
#pragma once

#include <cstdint>

#include "gradchain/blas.h"
#include "gradchain/chain_base.h"
#include "gradchain/dispatch.h"
#include "gradchain/kernels.h"
#include "gradchain/parallel.h"

namespace gradchain {
namespace detail {

// The panel GEMM takes a block when its packed op(B) fits a slot and its inner dimension is
// short enough to stream from cache: float32 always, float64 with AVX-512 (panel_gemm_f64).
// Measured on one model, alternating with OpenBLAS (2 threads; gradchain bench --panel-ab):
// mlp-tanh 1.04-1.14x, mlp-deep-narrow 1.06-1.07x, rnn-long-narrow 1.04-1.07x faster (no
// per-call packing of A, no locks, no beta pass). float64 with AVX2's 6-row tile was 2-5%
// slower than OpenBLAS on mlp-tanh-f64; AVX-512's 12-row tile is faster (issue 13,
// benchmarks/README.md). The slot is sized for both dtypes; gemm_block decides per call.
constexpr int64_t kPanelMaxK = 1024;
constexpr int64_t kPanelSlot = int64_t(1) << 16;  // values per thread, at most
template <class T>
constexpr int64_t panel_round(int64_t n) {  // n rounded up to the widest ISA's panel
  return (n + 128 / int64_t(sizeof(T)) - 1) / (128 / int64_t(sizeof(T))) * (128 / int64_t(sizeof(T)));
}
// Values per thread for GEMMs with inner dimension up to maxk and packed widths up to maxn
// (0 when none of them would take the panel path).
template <class T>
inline int64_t pack_slot(int64_t maxk, int64_t maxn) {
  const int64_t k = maxk < kPanelMaxK ? maxk : kPanelMaxK;
  const int64_t need = k * panel_round<T>(maxn);
  return need < kPanelSlot ? need : kPanelSlot;
}
// Grow `buf` to `nt` slots (outside the chain loop: at the start of a pass); the base
// of the slots, or null when no product takes the panel path.
template <class T>
inline T* pack_scratch(Buffer<T>& buf, int64_t slot, int nt) {
  if (slot <= 0) return nullptr;
  if (buf.size() < slot * nt) {
    buf = Buffer<T>();  // released first: the peak is the new size, not old + new
    buf = Buffer<T>(slot * nt, "the panel GEMM's per-thread packing scratch");
  }
  return buf.data();
}
// Bytes pack_scratch(buf, slot, nt) would allocate (0 when buf is large enough).
template <class T>
inline int64_t pack_scratch_bytes(const Buffer<T>& buf, int64_t slot, int nt) {
  return (slot > 0 && buf.size() < slot * nt) ? slot * nt * int64_t(sizeof(T)) : 0;
}

// Sum of squares (float64) of block `blk` of C (M x N, leading dimension ldc) under split `s`.
template <class T>
inline double gemm_block_sumsq(const KernelTable<T>& K, const GemmSplit& s, int64_t blk,
                               int64_t M, int64_t N, const T* C, int64_t ldc) {
  const int64_t o = blk * s.block;
  if (s.along_m) {
    const int64_t m = (o + s.block <= M) ? s.block : M - o;
    if (ldc == N) return K.sumsq(C + o * ldc, m * N);
    return K.sumsq_rows(C + o * ldc, ldc, m, N);
  }
  const int64_t n = (o + s.block <= N) ? s.block : N - o;
  return K.sumsq_rows(C + o, ldc, M, n);
}

// Whether a layer product with inner dimension K and N columns, split along its columns,
// would take the panel GEMM now (its split then prefers columns: gemm_split's prefer_n;
// products left to OpenBLAS keep their split).
template <class T>
inline bool takes_panel(int64_t K, int64_t N) {
  return K <= kPanelMaxK && K * panel_round<T>(ceil_div(N, gemm_blocks())) <= kPanelSlot &&
         (sizeof(T) == 4 ? panel_gemm() : panel_gemm_f64());
}

// C (M x N) = op(A) op(B) + beta C (beta 0 or 1), for block `blk` of the split `s`: on
// gradchain's panel kernel when the block qualifies and `ps` has room, else OpenBLAS.
// With ss, *ss = the float64 sum of squares of the block of C as stored (the report's
// ||dW||): on the panel kernel strip by strip (gemm_panels_ss: each m x NR strip right
// after its last tile, mostly from L1; mlp-tanh at 2 threads, the report's cost went from
// +5 % to +2 %), on OpenBLAS in a pass over the block right after it. Taking it in the
// tile's store instead was measured 10% slower in mlp-tanh's backward (1 thread, 8
// alternating rounds): the tile's own loop got slower.
template <class T>
inline void gemm_block(const GemmSplit& s, int64_t blk, bool ta, bool tb, int64_t M, int64_t N,
                       int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
                       int64_t ldc, const PackScratch<T>& ps = {}, double* ss = nullptr) {
  const int64_t o = blk * s.block;
  const auto& Kt = kernels<T>();
  if (ps.base && K <= kPanelMaxK && (sizeof(T) == 4 ? panel_gemm() : panel_gemm_f64())) {
    const int64_t m = s.along_m ? ((o + s.block <= M) ? s.block : M - o) : M;
    const int64_t n = s.along_m ? N : ((o + s.block <= N) ? s.block : N - o);
    if (K * panel_round<T>(n) <= ps.slot) {
      const T* Ab = s.along_m ? (ta ? A + o : A + o * lda) : A;
      const T* Bb = s.along_m ? B : (tb ? B + o * ldb : B + o);
      T* Cb = s.along_m ? C + o * ldc : C + o;
      T* pk = ps.base + int64_t(thread_num()) * ps.slot;
      Kt.pack_panels(K, n, Bb, ldb, tb, pk);
      if (ss)
        *ss = Kt.gemm_panels_ss(m, n, K, Ab, ta ? 1 : lda, ta ? lda : 1, pk, Cb, ldc,
                                beta != T(0));
      else
        Kt.gemm_panels(m, n, K, Ab, ta ? 1 : lda, ta ? lda : 1, pk, Cb, ldc, beta != T(0));
      return;
    }
  }
  if (s.along_m) {
    const int64_t m = (o + s.block <= M) ? s.block : M - o;
    gemm(ta, tb, m, N, K, T(1), ta ? A + o : A + o * lda, lda, B, ldb, beta, C + o * ldc, ldc);
  } else {
    const int64_t n = (o + s.block <= N) ? s.block : N - o;
    gemm(ta, tb, M, n, K, T(1), A, lda, tb ? B + o * ldb : B + o, ldb, beta, C + o, ldc);
  }
  if (ss) *ss = gemm_block_sumsq(Kt, s, blk, M, N, C, ldc);
}

}  // namespace detail
}  // namespace gradchain
