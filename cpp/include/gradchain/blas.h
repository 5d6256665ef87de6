// gradchain/blas.h — row-major GEMM over OpenBLAS (scipy-openblas32: every
// symbol carries the scipy_ prefix, 32-bit integers).
#pragma once

#include <cstdint>

namespace gradchain {

// C (M x N) = alpha * op(A) @ op(B) + beta * C, all row-major.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc);

// OpenBLAS runs single-threaded under gradchain: the core parallelises over
// fixed blocks of rows with OpenMP (no oversubscription, and results that do not
// depend on the thread count). Called once when the module loads.
void blas_init();
const char* blas_corename();

}  // namespace gradchain
