// Shared-memory tile building blocks of the attention kernels (private to kernels/attention):
// element conversions, zero-padded tile loads, the block-cooperative 16x16-fragment matmul on
// shared-memory tiles (WMMA for bf16/fp16, FMA for fp32), warp reductions and the shared-memory
// layout of a kernel computed once on the host.
//
// Conventions. Every tile is row-major in shared memory with a row stride `ld` (elements) that
// pads the row: 16-bit tiles by 8 elements (rows stay 16-byte multiples: WMMA needs ldm % 8 == 0
// and 32-byte aligned fragment pointers; the 8-element shift also spreads rows over the banks),
// fp32 input tiles by 1 (odd strides: the FMA path reads 16 rows of one column across lanes
// without bank conflicts), fp32 accumulator tiles by 4 (WMMA stores need ldm % 4 == 0). Widths
// are padded to multiples of 16 with zeros, and rows past the end of the data are zero as well,
// so the padding contributes exact zeros to every product (never uninitialised memory, which
// could hold NaNs that 0 · x would keep).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mma.h>
#include "../common/convert.cuh"

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace moetron::kernels::attn {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Element conversions (to_float / from_float) come from ../common/convert.cuh.

// ---- host-side layout helpers -----------------------------------------------------------------

__host__ __device__ constexpr int round16(int n) {
  return (n + 15) / 16 * 16;
}
// Row padding of an input-typed tile (elements of `elem_bytes` bytes); see the file comment.
__host__ __device__ constexpr int row_pad(int elem_bytes) {
  return elem_bytes == 2 ? 8 : 1;
}
constexpr int kAccPad = 4;

// Byte offsets of the arrays of one kernel's dynamic shared memory, each 128-byte aligned.
struct SmemCarve {
  size_t bytes = 0;
  size_t take(size_t n) {
    const size_t at = bytes;
    bytes = (bytes + n + 127) / 128 * 128;
    return at;
  }
};

// ---- warp reductions (butterflies: every lane ends with the same value, fixed order) ----------

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// One row of an online (streaming) softmax over a key tile of at most 64 columns, by one warp:
// x holds the row's scores, already scaled to log2 units, for columns lane and lane + 32 (-inf
// where masked or past the tile). Writes P = exp2(x - m_new) for the first `cols` columns to
// p_row and, in lane 0, updates the row's running max m and sum l, and alpha = exp2(m_old -
// m_new), the factor the caller rescales the row's accumulator by.
template <typename T>
__device__ __forceinline__ void online_softmax_row(const float (&x)[2], int cols, int lane,
                                                   T* p_row, float* m, float* l, float* alpha) {
  const float m_old = *m;
  const float m_new = fmaxf(m_old, warp_max(fmaxf(x[0], x[1])));
  const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: exps of -inf are 0
  float sum = 0.0f;
#pragma unroll
  for (int jj = 0; jj < 2; ++jj) {
    const int c = lane + 32 * jj;
    if (c < cols) {
      const float p = exp2f(x[jj] - m_use);
      p_row[c] = from_float<T>(p);
      sum += p;
    }
  }
  sum = warp_sum(sum);
  const float a = exp2f(m_old - m_use);
  __syncwarp();
  if (lane == 0) {
    *l = *l * a + sum;
    *m = m_new;
    *alpha = a;
  }
}

// ---- tile loads -----------------------------------------------------------------------------

// dst[r][c] (row stride ld) for r < rows, c < cols_pad: element c of source row r when
// r < valid_rows and c < cols, else zero. row_ptr(r) gives source row r (called only for
// r < valid_rows). wide: 16-byte loads (the caller checked that cols and every row pointer
// allow them: cols a multiple of 16 / sizeof(T), rows 16-byte aligned). Block-cooperative;
// the caller synchronises before the tile is read.
template <typename T, typename RowPtr>
__device__ __forceinline__ void load_tile(T* dst, int ld, int rows, int valid_rows, int cols,
                                          int cols_pad, bool wide, RowPtr row_ptr) {
  if (wide) {
    constexpr int kVec = 16 / sizeof(T);
    const int chunks = cols_pad / kVec;  // cols_pad is a multiple of 16
    for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
      const int r = i / chunks, c = (i - r * chunks) * kVec;
      T* d = dst + r * ld + c;
      if constexpr (sizeof(T) == 4) {
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < valid_rows && c < cols) v = *reinterpret_cast<const float4*>(row_ptr(r) + c);
        d[0] = v.x;  // fp32 tiles have odd row strides: scalar stores
        d[1] = v.y;
        d[2] = v.z;
        d[3] = v.w;
      } else {
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < valid_rows && c < cols) v = *reinterpret_cast<const uint4*>(row_ptr(r) + c);
        *reinterpret_cast<uint4*>(d) = v;  // 16-bit tiles: ld % 8 == 0, 16-byte aligned
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows * cols_pad; i += blockDim.x) {
      const int r = i / cols_pad, c = i - r * cols_pad;
      dst[r * ld + c] = (r < valid_rows && c < cols) ? row_ptr(r)[c] : from_float<T>(0.0f);
    }
  }
}

// Zeroes an fp32 tile [rows][cols] (row stride ld).
__device__ __forceinline__ void zero_tile(float* dst, int ld, int rows, int cols) {
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int r = i / cols;
    dst[r * ld + (i - r * cols)] = 0.0f;
  }
}

// Whether 16-byte loads serve rows of `cols` elements at `base` + multiples of the strides.
template <typename T>
inline bool wide_ok(const void* base, int cols, std::initializer_list<int64_t> strides) {
  constexpr int64_t kVec = 16 / sizeof(T);
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0 || cols % kVec != 0) return false;
  for (int64_t s : strides) {
    if (s % kVec != 0) return false;
  }
  return true;
}

// ---- block-cooperative matmul on shared-memory tiles ------------------------------------------

// C[M][N] = (accumulate ? diag(row_scale) · C : 0) + A[M][Kd] · op(B), fp32 C, where op(B)[k][n]
// is B[n][k] when kBT (B stored [N][Kd]) and B[k][n] otherwise (B stored [Kd][N]). M, N, Kd are
// multiples of 16. The 16x16 output fragments go round-robin to the block's warps and each warp
// sums its fragment over all of Kd itself: no cross-warp reduction, so the result does not
// depend on scheduling. row_scale (nullable) is read only when accumulating. The caller
// synchronises before (A, B, C written) and after (C read by other warps).
//
// bf16/fp16: WMMA m16n16k16 with fp32 accumulators. fp32: FMA, lane (c = lane % 16,
// rows 8 · (lane / 16) + 0..7) of the fragment, k in order.
template <typename T, bool kBT>
__device__ __forceinline__ void block_mm(const T* A, int lda, const T* B, int ldb, float* C,
                                         int ldc, int M, int N, int Kd, bool accumulate,
                                         const float* row_scale) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int frag_n = N / 16, frags = (M / 16) * frag_n;
  for (int f = warp; f < frags; f += warps) {
    const int m0 = (f / frag_n) * 16, n0 = (f % frag_n) * 16;
    float* Cf = C + m0 * ldc + n0;
    if constexpr (std::is_same_v<T, float>) {
      const int c = lane & 15, rb = (lane >> 4) * 8;
      float acc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = rb + i;
        acc[i] =
            accumulate ? Cf[r * ldc + c] * (row_scale != nullptr ? row_scale[m0 + r] : 1.0f) : 0.0f;
      }
      const float* Arow = A + (m0 + rb) * lda;
      for (int k = 0; k < Kd; ++k) {
        const float b = kBT ? B[(n0 + c) * ldb + k] : B[k * ldb + n0 + c];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = fmaf(Arow[i * lda + k], b, acc[i]);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) Cf[(rb + i) * ldc + c] = acc[i];
    } else {
      namespace wmma = nvcuda::wmma;
      using BLayout = std::conditional_t<kBT, wmma::col_major, wmma::row_major>;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if (accumulate) {
        if (row_scale != nullptr) {
          for (int e = lane; e < 256; e += 32) {
            const int r = e >> 4;
            Cf[r * ldc + (e & 15)] *= row_scale[m0 + r];
          }
          __syncwarp();
        }
        wmma::load_matrix_sync(acc, Cf, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(acc, 0.0f);
      }
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> b;
      for (int k = 0; k < Kd; k += 16) {
        wmma::load_matrix_sync(a, A + m0 * lda + k, lda);
        wmma::load_matrix_sync(b, kBT ? B + n0 * ldb + k : B + k * ldb + n0, ldb);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Cf, acc, ldc, wmma::mem_row_major);
    }
  }
}

// Sets the kernel's dynamic shared memory limit when above the default 48 KB and launches
// nothing; returns the CUDA error.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// The current device's shared memory (opt-in per block, per SM) and SM count.
struct DeviceLimits {
  size_t smem_optin = 48 * 1024;
  size_t smem_per_sm = 48 * 1024;
  int sms = 1;
};

inline DeviceLimits device_limits() {
  DeviceLimits d;
  int device = 0, v = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return d;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
      v > 0) {
    d.smem_optin = static_cast<size_t>(v);
  }
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) ==
          cudaSuccess &&
      v > 0) {
    d.smem_per_sm = static_cast<size_t>(v);
  }
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && v > 0) {
    d.sms = v;
  }
  return d;
}

// Blocks of `bytes` dynamic shared memory that fit on one SM (the runtime reserves 1 KB each).
inline int blocks_per_sm(const DeviceLimits& d, size_t bytes) {
  const size_t per = bytes + 1024;
  const int n = static_cast<int>(d.smem_per_sm / per);
  return n < 1 ? 1 : n;
}

// Tile shapes: `rows` owned by a block (multiple of 16, one 16-row fragment row per 16), `cols`
// rows of the streamed tile per step. Preference order: large tiles first.
struct TileShape {
  int rows = 0, cols = 0;
};

// The first shape whose rows do not exceed what `n_rows` rows need (16, 32 or 64) and whose
// bytes(shape) fits: with two_per_sm, first one that lets two blocks share an SM, then any that
// fits the opt-in limit. False when none fits.
// forced (rows and cols > 0): that shape when both are 16, 32 or 64 and it fits, else false.
template <class Bytes>
bool pick_tiles(int64_t n_rows, bool two_per_sm, const DeviceLimits& d, Bytes bytes,
                TileShape forced, TileShape* out) {
  static constexpr TileShape kShapes[] = {{64, 64}, {64, 32}, {32, 64}, {32, 32},
                                          {32, 16}, {16, 64}, {16, 32}, {16, 16}};
  if (forced.rows != 0 || forced.cols != 0) {
    auto ok = [](int n) { return n == 16 || n == 32 || n == 64; };
    if (!ok(forced.rows) || !ok(forced.cols) || bytes(forced) > d.smem_optin) return false;
    *out = forced;
    return true;
  }
  const int want = n_rows <= 16 ? 16 : n_rows <= 32 ? 32 : 64;
  for (int pass = two_per_sm ? 0 : 1; pass < 2; ++pass) {
    for (const TileShape& s : kShapes) {
      if (s.rows > want) continue;
      const size_t b = bytes(s);
      if (b > d.smem_optin) continue;
      if (pass == 0 && 2 * (b + 1024) > d.smem_per_sm) continue;
      *out = s;
      return true;
    }
  }
  return false;
}

}  // namespace moetron::kernels::attn
