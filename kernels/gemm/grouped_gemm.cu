// Grouped GEMM launcher: row-major products mapped onto one cublasGemmGroupedBatchedEx call.
// Row-major C[m, n] = op(A) op(B) is column-major Cᵀ[n, m] = op(B)ᵀ op(A)ᵀ, so cuBLAS sees
// (m, n) swapped and A and B exchanged, each keeping its transpose flag (a row-major matrix
// read column-major is its transpose, so op(X)ᵀ needs the same op on X's storage).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <vector>

#include "moetron/kernels/grouped_gemm.h"

namespace moetron::kernels {
namespace {

bool fits_int(int64_t v) {
  return v >= 1 && v <= INT_MAX;
}

int64_t element_size(GemmDType t) {
  return t == GemmDType::kFloat32 ? 4 : 2;
}

cudaDataType_t cuda_type(GemmDType t) {
  switch (t) {
    case GemmDType::kFloat32:
      return CUDA_R_32F;
    case GemmDType::kBFloat16:
      return CUDA_R_16BF;
    case GemmDType::kFloat16:
      return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

bool valid_dtype(GemmDType t) {
  return t == GemmDType::kFloat32 || t == GemmDType::kBFloat16 || t == GemmDType::kFloat16;
}

// cuBLAS's alignment rule for 16-bit matrices (see the header).
bool aligned(const void* p, int64_t ld, int64_t elem) {
  const int64_t row_bytes = ld * elem;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (row_bytes % 16 == 0) return addr % 16 == 0;
  if (row_bytes % 4 == 0) return addr % 4 == 0;
  return addr % static_cast<uintptr_t>(elem) == 0;
}

bool valid_problem(const GemmProblem& p) {
  if (!fits_int(p.m) || !fits_int(p.n) || !fits_int(p.k)) return false;
  if (!fits_int(p.lda) || !fits_int(p.ldb) || !fits_int(p.ldc)) return false;
  if (p.a == nullptr || p.b == nullptr || p.c == nullptr) return false;
  // Row lengths of the stored matrices: A [m, k] or [k, m], B [k, n] or [n, k], C [m, n].
  if (p.lda < (p.trans_a ? p.m : p.k)) return false;
  if (p.ldb < (p.trans_b ? p.k : p.n)) return false;
  return p.ldc >= p.n;
}

bool same_shape(const GemmProblem& x, const GemmProblem& y) {
  return x.trans_a == y.trans_a && x.trans_b == y.trans_b && x.m == y.m && x.n == y.n &&
         x.k == y.k && x.lda == y.lda && x.ldb == y.ldb && x.ldc == y.ldc && x.beta == y.beta;
}

BlasStatus cuda_failure(cudaError_t err, const char* call) {
  BlasStatus s;
  s.cuda = static_cast<int>(err);
  s.call = call;
  return s;
}

BlasStatus blas_failure(cublasStatus_t st, const char* call) {
  BlasStatus s;
  s.cublas = static_cast<int>(st);
  s.call = call;
  return s;
}

}  // namespace

void grouped_gemm_pointers(const GemmProblem* problems, int64_t count, const void** out) {
  // cuBLAS's A array is our B (see the file comment), its B array our A, then C.
  for (int64_t i = 0; i < count; ++i) {
    out[i] = problems[i].b;
    out[count + i] = problems[i].a;
    out[2 * count + i] = problems[i].c;
  }
}

std::vector<int> grouped_gemm_group_sizes(const GemmProblem* problems, int64_t count) {
  std::vector<int> sizes;
  for (int64_t i = 0; i < count; ++i) {
    if (i > 0 && same_shape(problems[i], problems[i - 1])) {
      ++sizes.back();
    } else {
      sizes.push_back(1);
    }
  }
  return sizes;
}

GroupedGemmPlan plan_grouped_gemm(const GroupedGemmParams& params) {
  GroupedGemmPlan plan;
  if (params.count < 0 || params.count > INT_MAX / 3 || !valid_dtype(params.dtype) ||
      (params.count > 0 && params.problems == nullptr)) {
    plan.status = cudaErrorInvalidValue;
    return plan;
  }
  const int64_t elem = element_size(params.dtype);
  for (int64_t i = 0; i < params.count; ++i) {
    const GemmProblem& p = params.problems[i];
    if (!valid_problem(p)) {
      plan.status = cudaErrorInvalidValue;
      return plan;
    }
    if (params.dtype != GemmDType::kFloat32 &&
        (!aligned(p.a, p.lda, elem) || !aligned(p.b, p.ldb, elem) || !aligned(p.c, p.ldc, elem))) {
      plan.status = cudaErrorMisalignedAddress;
      return plan;
    }
  }
  // One cuBLAS group per run of equal-shape problems. Column-major: m and n swap, cuBLAS's A
  // is our B and its B our A, each with its own transpose flag.
  plan.group_size = grouped_gemm_group_sizes(params.problems, params.count);
  int64_t first = 0;
  for (const int size : plan.group_size) {
    const GemmProblem& p = params.problems[first];
    plan.transa.push_back(p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    plan.transb.push_back(p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    plan.m.push_back(static_cast<int>(p.n));
    plan.n.push_back(static_cast<int>(p.m));
    plan.k.push_back(static_cast<int>(p.k));
    plan.lda.push_back(static_cast<int>(p.ldb));
    plan.ldb.push_back(static_cast<int>(p.lda));
    plan.ldc.push_back(static_cast<int>(p.ldc));
    plan.alpha.push_back(1.0f);
    plan.beta.push_back(p.beta);
    first += size;
  }
  return plan;
}

BlasStatus launch_grouped_gemm(const GroupedGemmParams& params, cublasHandle_t handle,
                               cudaStream_t stream) {
  const char* const kCheck = "launch_grouped_gemm (parameters)";
  const GroupedGemmPlan plan = plan_grouped_gemm(params);
  if (plan.status != 0) return cuda_failure(static_cast<cudaError_t>(plan.status), kCheck);
  if (params.count == 0) return {};
  if (params.device_pointers == nullptr || handle == nullptr) {
    return cuda_failure(cudaErrorInvalidValue, kCheck);
  }
  const size_t G = plan.group_size.size();
  std::vector<cublasOperation_t> transa(G), transb(G);
  for (size_t g = 0; g < G; ++g) {
    transa[g] = static_cast<cublasOperation_t>(plan.transa[g]);
    transb[g] = static_cast<cublasOperation_t>(plan.transb[g]);
  }
  const int64_t P = params.count;
  const void* const* a_array = params.device_pointers;
  const void* const* b_array = params.device_pointers + P;
  void* const* c_array = const_cast<void* const*>(params.device_pointers + 2 * P);
  const cudaDataType_t type = cuda_type(params.dtype);

  cublasStatus_t st = cublasSetStream(handle, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return blas_failure(st, "cublasSetStream");
  // alpha / beta are host arrays: the grouped API supports host pointer mode only.
  cublasPointerMode_t mode = CUBLAS_POINTER_MODE_HOST;
  st = cublasGetPointerMode(handle, &mode);
  if (st != CUBLAS_STATUS_SUCCESS) return blas_failure(st, "cublasGetPointerMode");
  if (mode != CUBLAS_POINTER_MODE_HOST) {
    st = cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST);
    if (st != CUBLAS_STATUS_SUCCESS) return blas_failure(st, "cublasSetPointerMode");
  }
  st = cublasGemmGroupedBatchedEx(handle, transa.data(), transb.data(), plan.m.data(),
                                  plan.n.data(), plan.k.data(), plan.alpha.data(), a_array, type,
                                  plan.lda.data(), b_array, type, plan.ldb.data(), plan.beta.data(),
                                  c_array, type, plan.ldc.data(), static_cast<int>(G),
                                  plan.group_size.data(), CUBLAS_COMPUTE_32F);
  if (mode != CUBLAS_POINTER_MODE_HOST) {
    const cublasStatus_t restore = cublasSetPointerMode(handle, mode);
    if (st == CUBLAS_STATUS_SUCCESS && restore != CUBLAS_STATUS_SUCCESS) {
      return blas_failure(restore, "cublasSetPointerMode");
    }
  }
  if (st != CUBLAS_STATUS_SUCCESS) return blas_failure(st, "cublasGemmGroupedBatchedEx");
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_failure(err, "cublasGemmGroupedBatchedEx");
  return {};
}

const char* cublas_status_name(int status) {
  return cublasGetStatusName(static_cast<cublasStatus_t>(status));
}

}  // namespace moetron::kernels
