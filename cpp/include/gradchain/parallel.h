// gradchain/parallel.h — the fixed work partitions. Every parallel loop in the
// core runs over blocks whose boundaries depend only on the shape (never on the
// thread count), and every reduction sums block partials in block order: so the
// numbers are bitwise identical for any number of threads.
#pragma once

#include <atomic>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gradchain/cancel.h"
#include "gradchain/dispatch.h"
#include "gradchain/governor.h"

namespace gradchain {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr int64_t kRowBlock = 32;       // rows per block of the elementwise passes
constexpr int64_t kNormChunk = 16384;   // elements per chunk of a flat norm

// The most threads a job of `work` elements can feed: 1 below a size where a fork costs
// more than it saves.
inline int work_threads(int64_t work) {
  return work < 8192 ? 1 : max_threads();
}

// The most threads an MLP pass can feed, from the forward FLOPs of one of its layers
// (2 x batch x in x out, the mean over the layers): every layer costs each thread of the
// region a few barriers (one per GEMM loop and per norm pass), so a thread more pays only
// above a floor of work per thread and layer. Measured on 2 cores (AVX-512, 2 threads
// against 1, passes back to back): without a norm two threads win from below 0.5 MFLOP per
// layer (width 64, batch 64: 0.83-0.88 of one thread's time), and lose at 0.26 MFLOP with
// batch norm (width 32, batch 128: 1.11). Width 64, batch 64 with batch norm (the
// mlp-deep-narrow workload) is the edge: 0.98-1.08 back to back, but 0.88 in the benchmark,
// whose passes start from an idle process; it keeps its two threads.
constexpr double kLayerFlopsPerThread = 2.56e5;
inline int mlp_work_threads(double layer_flops) {
  const double n = layer_flops / kLayerFlopsPerThread;
  if (!(n >= 2.0)) return 1;
  return n >= double(max_threads()) ? max_threads() : int(n);
}

// Threads for a short job of `work` elements that does not teach the governor (report.cpp's
// loops): the setting, the governor's allowance and the work's cap (governor.h).
inline int threads_for(int64_t work) { return pass_threads(work_threads(work)); }

// The most threads a pass of `work` elements may run on (the memory estimates): the setting
// and the work's cap, whatever the governor allows now.
inline int max_threads_for(int64_t work) {
  const int s = get_num_threads(), w = work_threads(work);
  return s < w ? s : w;
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
// prefer_n: split along N whenever N has at least 64 columns per block (gradchain's panel
// GEMM packs only op(B), so a split along M would pack all of op(B) in every block).
inline GemmSplit gemm_split(int64_t M, int64_t N, int64_t K, bool prefer_n = false) {
  // Splitting along M re-packs op(B) (K x N) once per block; along N re-packs op(A) (M x K).
  (void)K;
  const bool along_m = (prefer_n && N >= 64 * gemm_blocks()) ? false : M >= N;
  const int64_t dim = along_m ? M : N;
  int64_t block = ceil_div(ceil_div(dim, gemm_blocks()), 16) * 16;
  if (block < 16) block = 16;
  return {along_m, block, ceil_div(dim, block)};
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

// The calling thread's number in its OpenMP region (0 outside one).
inline int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// A stop decision every thread of a region takes alike (cancel.h): at the start of step s
// the master samples the flag into at[s + 1], and every thread acts on at[s], which the
// master wrote before a barrier all threads have crossed since (every step has one). So all
// threads leave a loop of steps at the same step, and none is left waiting at a barrier.
// at[0] is sampled before the region.
inline bool stop_at(unsigned char* at, int64_t s, const std::atomic<bool>* flag) {
  if (thread_num() == 0) at[s + 1] = is_set(flag) ? 1 : 0;
  return at[s] != 0;
}

// stop_at with the governor's bail-out (governor.h): the master's decision for step s + 1
// may also be kBail, "leave here, the pass finishes on one thread", when the region's
// threads are starved. Returns the decision for step s (0: run it).
constexpr unsigned char kBail = 2;
inline unsigned char step_at(unsigned char* at, int64_t s, const std::atomic<bool>* flag,
                             GovernedRegion* region) {
  if (thread_num() == 0)
    at[s + 1] = is_set(flag) ? 1 : (region && region->starving()) ? kBail : 0;
  return at[s];
}

// The step a region's threads left at by a bail-out (the first decision that stopped them
// is kBail), or -1. `n` decisions.
inline int64_t bailed_at(const unsigned char* at, int64_t n) {
  for (int64_t s = 0; s < n; ++s)
    if (at[s] != 0) return at[s] == kBail ? s : -1;
  return -1;
}

}  // namespace gradchain
