// gradchain/dispatch.h — runtime choice of the kernel table (scalar / avx2 / avx512),
// and the thread count used by every OpenMP region of the core.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gradchain/kernels.h"

namespace gradchain {

// The ISA variants compiled into this build, best first, that this CPU can run.
std::vector<std::string> available_isas();
// The active variant: the best available, unless GRADCHAIN_ISA names another
// (read once at start-up) or set_isa() was called. Throws std::invalid_argument
// for an unknown name or one this CPU (or build) cannot run.
std::string current_isa();
void set_isa(const std::string& name);

template <class T>
const KernelTable<T>& kernels();

// Threads: the core's own setting, the most any region uses (the governor, governor.h,
// picks each pass's count at or below it).
// Starts from omp_get_max_threads(), which honours OMP_NUM_THREADS (all processors when
// that is above max_threads()). In a process forked after a region had run on more than
// one thread, every region runs on one thread (libgomp's pool does not survive fork):
// get_num_threads() then reports 1 and set_num_threads() only records its value.
int get_num_threads();
void set_num_threads(int n);  // throws std::invalid_argument outside [1, max_threads()]
// Called with the thread count of every region about to run (governor.h picks it):
// remembers, when it is above 1, that libgomp's pool has started.
void note_region_threads(int nt);
// Whether this process was forked after the core had started threads (then single-threaded).
bool forked_single_threaded();
// The largest thread setting: kThreadsPerProcessor x the processors this process may run
// on, at least kMinThreadCap. More threads than processors never speeds up a pass (every
// region is compute-bound and a GEMM splits into at most 16 blocks), and each thread costs
// a stack and a packing slot, so a larger count is a mistake to report, not to attempt.
constexpr int kThreadsPerProcessor = 4;
constexpr int kMinThreadCap = 16;
int max_threads();

// Blocks a GEMM is split into: the machine's processor count, clamped to [2, 16].
int64_t gemm_blocks();

// Whether layer-sized products may run on gradchain's panel GEMM (default on; off sends
// every product except the RNN's per-step ones to OpenBLAS). For benchmarking the two
// side by side; results differ only by rounding.
bool panel_gemm();
void set_panel_gemm(bool on);
// Whether float64 layer products may take the panel GEMM too: only with the AVX-512
// kernels (its 12-row tile beats OpenBLAS's dgemm on the chains' blocks; with AVX2's
// 6-row tile it was 2-5% slower), and only while panel_gemm() allows it.
bool panel_gemm_f64();

}  // namespace gradchain
