// Torch-free launcher for grouped GEMMs: many independent row-major matrix products of
// different shapes in one cuBLAS call (cublasGemmGroupedBatchedEx, CUDA 12.5+). The routed
// experts' SwiGLU (ops/grouped_swiglu.h) runs each projection over all experts as one call.
// Pointers are device pointers unless said otherwise; the launch is asynchronous on `stream`.
#pragma once

#include <cstdint>
#include <vector>

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace moetron::kernels {

enum class GemmDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// One row-major product C[m, n] = op(A)[m, k] · op(B)[k, n] + beta · C (alpha = 1).
// A is stored [m, k] (or [k, m] when trans_a) with row stride lda elements; B [k, n] (or [n, k]
// when trans_b) with row stride ldb; C [m, n] with row stride ldc. C must not overlap the C of
// any other problem of the same call. m, n, k >= 1 and every size and stride < 2^31.
struct GemmProblem {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* c = nullptr;
  int64_t ldc = 0;
  float beta = 0;  // 0: C is overwritten (never read); 1: accumulated into
};

// All products of one call, A, B and C of one dtype, accumulated in fp32 (CUBLAS_COMPUTE_32F;
// fp32 inputs use TF32 only when the handle's math mode allows it, as at::mm does).
// Consecutive problems of equal shape (transposes, m, n, k, strides, beta) form one cuBLAS group.
struct GroupedGemmParams {
  const GemmProblem* problems = nullptr;  // host array of `count` problems
  int64_t count = 0;
  GemmDType dtype = GemmDType::kFloat32;
  // Device array of grouped_gemm_pointer_count(count) pointers, holding what
  // grouped_gemm_pointers() writes for the same problems (cuBLAS reads the matrix pointers from
  // device memory; the caller copies them there once per call, e.g. from pinned memory).
  const void* const* device_pointers = nullptr;
};

inline int64_t grouped_gemm_pointer_count(int64_t count) {
  return 3 * count;
}

// Writes the pointer table of `problems` to the host array `out` (pointer_count entries).
void grouped_gemm_pointers(const GemmProblem* problems, int64_t count, const void** out);

// The cuBLAS group sizes the launcher will use (runs of equal-shape consecutive problems).
std::vector<int> grouped_gemm_group_sizes(const GemmProblem* problems, int64_t count);

// The cuBLAS arguments of one launch, one entry per group (host arrays): what
// launch_grouped_gemm passes to cublasGemmGroupedBatchedEx, column-major. transa / transb hold
// cublasOperation_t values (0 = N, 1 = T). status is the cudaError_t of the parameter checks
// (0 = the plan is valid); the pointer table (grouped_gemm_pointers) supplies the matrices.
struct GroupedGemmPlan {
  int status = 0;
  std::vector<int> transa, transb, m, n, k, lda, ldb, ldc, group_size;
  std::vector<float> alpha, beta;
};
GroupedGemmPlan plan_grouped_gemm(const GroupedGemmParams& params);

// Result of a launch: the CUDA error and the cuBLAS status (0 = success) and the failing call.
struct BlasStatus {
  int cuda = 0;    // cudaError_t
  int cublas = 0;  // cublasStatus_t
  const char* call = "";
  bool ok() const { return cuda == 0 && cublas == 0; }
};

// Checks the parameters and plans (plan_grouped_gemm: cudaErrorInvalidValue for a bad shape,
// stride or null pointer,
// cudaErrorMisalignedAddress for a 16-bit matrix whose pointer breaks cuBLAS's rule: 16-byte
// aligned when its row size in bytes is a multiple of 16, else 4-byte aligned when that is a
// multiple of 4), binds `stream` to `handle`, runs one
// cublasGemmGroupedBatchedEx call in host pointer mode (restored afterwards) and returns the
// first failure. count == 0 launches nothing.
BlasStatus launch_grouped_gemm(const GroupedGemmParams& params, cublasHandle_t handle,
                               cudaStream_t stream);

// "CUBLAS_STATUS_NOT_SUPPORTED" etc. for a cublasStatus_t (cublasGetStatusName).
const char* cublas_status_name(int status);

}  // namespace moetron::kernels
