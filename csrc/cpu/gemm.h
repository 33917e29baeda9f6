// Row-major GEMM for the CPU kernels: C = alpha * op(A) op(B) + beta * C.
//
// Uses the BLAS that torch itself links (sgemm_/dgemm_, found at configure time: MKL in x86 wheels), and a
// portable multiversioned loop otherwise. Called from inside at::parallel_for tasks, where the BLAS runs on
// the calling thread.
#pragma once

#include <cstdint>

namespace pygpt::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);
bool gemm_uses_blas();

}  // namespace pygpt::cpu
