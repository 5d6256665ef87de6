// blas.cpp — the only file that includes OpenBLAS's header.
#include "gradchain/blas.h"

#include <cblas.h>

namespace gradchain {

namespace {
inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), blasint(M), blasint(N), blasint(K), alpha, A,
                    blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), blasint(M), blasint(N), blasint(K), alpha, A,
                    blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}

void blas_init() { scipy_openblas_set_num_threads(1); }

const char* blas_corename() { return scipy_openblas_get_corename(); }

}  // namespace gradchain
