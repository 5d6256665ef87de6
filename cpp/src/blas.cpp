// blas.cpp — the only file that includes OpenBLAS's header.
#include "gradchain/blas.h"

#include <cblas.h>

#include <cstdio>
#include <cstdlib>

#include "gradchain/memory.h"

namespace gradchain {

namespace {
inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

// scipy-openblas32 takes 32-bit integers. The chains refuse larger sizes when they are
// built and when a pass is planned, so this never fires; it stops a silent truncation
// should a new caller forget (a GEMM runs inside OpenMP regions, where an exception
// cannot propagate, hence abort with a message).
inline blasint bi(int64_t v) {
  if (v < 0 || v > kBlasIntMax) {
    std::fprintf(stderr, "gradchain: internal error: GEMM dimension %lld outside the BLAS's "
                 "32-bit range\n", static_cast<long long>(v));
    std::abort();
  }
  return blasint(v);
}
}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), bi(M), bi(N), bi(K), alpha, A, bi(lda), B,
                    bi(ldb), beta, C, bi(ldc));
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), bi(M), bi(N), bi(K), alpha, A, bi(lda), B,
                    bi(ldb), beta, C, bi(ldc));
}

void blas_init() { scipy_openblas_set_num_threads(1); }

const char* blas_corename() { return scipy_openblas_get_corename(); }

}  // namespace gradchain
