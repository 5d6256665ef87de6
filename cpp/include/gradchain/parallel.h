// gradchain/parallel.h — the fixed work partitions. Every parallel loop in the
// core runs over blocks whose boundaries depend only on the shape (never on the
// thread count), and every reduction sums block partials in block order: so the
// numbers are bitwise identical for any number of threads.
#pragma once

#include <cstdint>

#include "gradchain/dispatch.h"

namespace gradchain {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr int64_t kRowBlock = 32;       // rows per block of the elementwise passes
constexpr int64_t kNormChunk = 16384;   // elements per chunk of a flat norm

// Threads for a job of `work` elements: 1 below a size where a fork costs more than it saves.
inline int threads_for(int64_t work) {
  return work < 8192 ? 1 : region_threads();
}

// How a GEMM C (M x N) is split into independent blocks: along M (rows of C)
// or along N (columns of C), whichever re-packs the smaller operand, into at
// most gemm_blocks() blocks of a multiple of 16. The count follows the machine's
// cores (never the thread setting), so results stay identical for any thread count:
// fewer, larger blocks run OpenBLAS more efficiently than many small ones.
struct GemmSplit {
  bool along_m;
  int64_t block;   // size of a block along the split dimension
  int64_t count;   // number of blocks
};
constexpr int64_t kGemmBlocks = 16;  // upper bound of gemm_blocks()
inline GemmSplit gemm_split(int64_t M, int64_t N, int64_t K) {
  // Splitting along M re-packs op(B) (K x N) once per block; along N re-packs op(A) (M x K).
  (void)K;
  const bool along_m = M >= N;
  const int64_t dim = along_m ? M : N;
  int64_t block = ceil_div(ceil_div(dim, gemm_blocks()), 16) * 16;
  if (block < 16) block = 16;
  return {along_m, block, ceil_div(dim, block)};
}

}  // namespace gradchain
