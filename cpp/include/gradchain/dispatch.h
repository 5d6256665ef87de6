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

// Threads: the core's own setting (OpenMP regions use num_threads(get_num_threads())).
// Starts from omp_get_max_threads(), which honours OMP_NUM_THREADS.
int get_num_threads();
void set_num_threads(int n);

// Blocks a GEMM is split into: the machine's processor count, clamped to [2, 16].
int64_t gemm_blocks();

// Whether layer-sized products may run on gradchain's panel GEMM (default on; off sends
// every product except the RNN's per-step ones to OpenBLAS). For benchmarking the two
// side by side; results differ only by rounding.
bool panel_gemm();
void set_panel_gemm(bool on);

}  // namespace gradchain
