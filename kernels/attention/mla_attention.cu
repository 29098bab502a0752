// Flash-style causal attention for MLA training (q/k width K, value width V, K != V allowed),
// with packed-sample segments: a forward with online softmax that writes O and the log-sum-exp,
// and the FlashAttention-2 backward by recomputation (D = rowsum(dO ∘ O), dS = P ∘ (dP − D)).
// No T x T matrix exists anywhere: memory is linear in T.
//
// Block = 8 warps owning R rows (queries in the forward and the dQ kernel, keys in the dK/dV
// kernel) of one (batch, head); it streams tiles of Bn rows of the other side through shared
// memory. Products are block-cooperative 16x16-fragment matmuls on shared-memory tiles
// (tile.cuh: WMMA for bf16/fp16 with fp32 accumulators, FMA for fp32); softmax statistics and
// elementwise steps run on fp32 tiles. Accumulators (O, dQ, dK, dV) live in shared memory in
// fp32. Every output element is produced by exactly one warp in a fixed order, and the backward
// is split so that no two blocks write the same gradient row (dK/dV per key tile, dQ per query
// tile): no float atomics, results are bitwise reproducible.
#include <math.h>

#include "moetron/kernels/attention.h"
#include "tile.cuh"

namespace moetron::kernels {
namespace {

using attn::block_mm;
using attn::kAccPad;
using attn::kLn2;
using attn::kLog2e;
using attn::kThreads;
using attn::kWarps;
using attn::load_tile;
using attn::round16;
using attn::SmemCarve;
using attn::TileShape;
using attn::zero_tile;

// Shared-memory layout of one kernel (byte offsets, host-computed). "own" tiles hold the block's
// R rows, "str" tiles the streamed Bn rows; which tensors they hold depends on the kernel:
//   forward: own_x Q,       str_x K, str_y V,  s S,  p P,          acc_x O,         rows m,l,alpha
//   dQ:      own_x Q, own_y dO, str_x K, str_y V, s S, s2 dP, p dS, acc_x dQ,     rows lse,D (own)
//   dK/dV:   own_x K, own_y V,  str_x Q, str_y dO, s Sᵀ, s2 dPᵀ, p Pᵀ, p2 dSᵀ, acc_x dK, acc_y dV,
//            rows lse,D (streamed)
struct Layout {
  int R = 0, Bn = 0;                                           // own rows, streamed rows per step
  int Kp = 0, Vp = 0;                                          // K, V rounded up to 16
  int ldk = 0, ldv = 0, lds = 0, ldp = 0, ldk4 = 0, ldv4 = 0;  // row strides (elements)
  size_t own_x = 0, own_y = 0, str_x = 0, str_y = 0, s = 0, s2 = 0, p = 0, p2 = 0;
  size_t acc_x = 0, acc_y = 0, row_a = 0, row_b = 0, row_c = 0, seg_own = 0, seg_str = 0;
  size_t bytes = 0;
};

enum class Kind { kForward, kGradQ, kGradKV };

Layout make_layout(Kind kind, TileShape shape, int K, int V, int elem) {
  Layout L;
  L.R = shape.rows;
  L.Bn = shape.cols;
  L.Kp = round16(K);
  L.Vp = round16(V);
  const int pad = attn::row_pad(elem);
  L.ldk = L.Kp + pad;
  L.ldv = L.Vp + pad;
  L.lds = L.Bn + kAccPad;
  L.ldp = L.Bn + pad;
  L.ldk4 = L.Kp + kAccPad;
  L.ldv4 = L.Vp + kAccPad;
  const size_t R = L.R, Bn = L.Bn, e = elem, f = sizeof(float);
  SmemCarve c;
  switch (kind) {
    case Kind::kForward:
      L.own_x = c.take(R * L.ldk * e);
      L.str_x = c.take(Bn * L.ldk * e);
      L.str_y = c.take(Bn * L.ldv * e);
      L.s = c.take(R * L.lds * f);
      L.p = c.take(R * L.ldp * e);
      L.acc_x = c.take(R * L.ldv4 * f);
      L.row_a = c.take(R * f);
      L.row_b = c.take(R * f);
      L.row_c = c.take(R * f);
      break;
    case Kind::kGradQ:
      L.own_x = c.take(R * L.ldk * e);
      L.own_y = c.take(R * L.ldv * e);
      L.str_x = c.take(Bn * L.ldk * e);
      L.str_y = c.take(Bn * L.ldv * e);
      L.s = c.take(R * L.lds * f);
      L.s2 = c.take(R * L.lds * f);
      L.p = c.take(R * L.ldp * e);
      L.acc_x = c.take(R * L.ldk4 * f);
      L.row_a = c.take(R * f);
      L.row_b = c.take(R * f);
      break;
    case Kind::kGradKV:
      L.own_x = c.take(R * L.ldk * e);
      L.own_y = c.take(R * L.ldv * e);
      L.str_x = c.take(Bn * L.ldk * e);
      L.str_y = c.take(Bn * L.ldv * e);
      L.s = c.take(R * L.lds * f);
      L.s2 = c.take(R * L.lds * f);
      L.p = c.take(R * L.ldp * e);
      L.p2 = c.take(R * L.ldp * e);
      L.acc_x = c.take(R * L.ldk4 * f);
      L.acc_y = c.take(R * L.ldv4 * f);
      L.row_a = c.take(Bn * f);
      L.row_b = c.take(Bn * f);
      break;
  }
  L.seg_own = c.take(R * sizeof(int64_t));
  L.seg_str = c.take(Bn * sizeof(int64_t));
  L.bytes = c.bytes;
  return L;
}

template <typename T>
struct Args {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  AttnStrides qs, ks, vs;
  const int64_t* seg = nullptr;
  int64_t seg_b = 0, seg_t = 0;
  const T* o = nullptr;  // backward: the forward's output, contiguous [B, H, T, V]
  const T* dout = nullptr;
  AttnStrides dos;
  const float* lse = nullptr;  // backward input
  const float* D = nullptr;    // backward: rowsum(dO ∘ O)
  T* out = nullptr;            // forward output
  float* lse_out = nullptr;    // forward output
  T* dq = nullptr;
  T* dk = nullptr;
  T* dv = nullptr;
  int64_t H = 0, T_len = 0;
  int K = 0, V = 0;
  float scale = 1.0f, scale_log2 = kLog2e;
  bool wide_q = false, wide_k = false, wide_v = false, wide_do = false;
  Layout L;
};

template <typename T>
__device__ __forceinline__ const T* row_of(const T* base, const AttnStrides& s, int64_t b,
                                           int64_t h, int64_t t) {
  return base + b * s.batch + h * s.head + t * s.token;
}

// ---- forward --------------------------------------------------------------------------------

// Grid (query tiles, H, B); the last query tiles (most keys) are scheduled first.
template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Args<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout& L = a.L;
  const int R = L.R, Bn = L.Bn, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t Tn = a.T_len, h = blockIdx.y, b = blockIdx.z;
  const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * R;
  const int q_valid = static_cast<int>(Tn - q0 < R ? Tn - q0 : R);
  T* sQ = reinterpret_cast<T*>(smem + L.own_x);
  T* sK = reinterpret_cast<T*>(smem + L.str_x);
  T* sV = reinterpret_cast<T*>(smem + L.str_y);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  T* sP = reinterpret_cast<T*>(smem + L.p);
  float* sO = reinterpret_cast<float*>(smem + L.acc_x);
  float* sM = reinterpret_cast<float*>(smem + L.row_a);  // running max, log2 units
  float* sL = reinterpret_cast<float*>(smem + L.row_b);  // running sum
  float* sAlpha = reinterpret_cast<float*>(smem + L.row_c);
  int64_t* segQ = reinterpret_cast<int64_t*>(smem + L.seg_own);
  int64_t* segK = reinterpret_cast<int64_t*>(smem + L.seg_str);

  load_tile(sQ, L.ldk, R, q_valid, a.K, L.Kp, a.wide_q,
            [&](int r) { return row_of(a.q, a.qs, b, h, q0 + r); });
  zero_tile(sO, L.ldv4, R, L.Vp);
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    sM[r] = -INFINITY;
    sL[r] = 0.0f;
    segQ[r] = (a.seg != nullptr && r < q_valid) ? a.seg[b * a.seg_b + (q0 + r) * a.seg_t] : 0;
  }
  __syncthreads();

  const int64_t n_tiles = (q0 + q_valid - 1) / Bn + 1;  // keys up to the last query
  for (int64_t kt = 0; kt < n_tiles; ++kt) {
    const int64_t k0 = kt * Bn;
    const int k_valid = static_cast<int>(Tn - k0 < Bn ? Tn - k0 : Bn);
    auto allowed = [&](int r, int c) {
      return r < q_valid && c < k_valid && k0 + c <= q0 + r &&
             (a.seg == nullptr || segQ[r] == segK[c]);
    };
    __syncthreads();  // the previous step's readers of sK, sV, sP, segK are done
    if (a.seg != nullptr) {
      for (int c = threadIdx.x; c < Bn; c += blockDim.x) {
        segK[c] = c < k_valid ? a.seg[b * a.seg_b + (k0 + c) * a.seg_t] : 0;
      }
      __syncthreads();
      int any = 0;
      for (int i = threadIdx.x; i < R * Bn && !any; i += blockDim.x) any = allowed(i / Bn, i % Bn);
      if (!__syncthreads_or(any)) continue;  // no query of the block sees this tile
    }
    load_tile(sK, L.ldk, Bn, k_valid, a.K, L.Kp, a.wide_k,
              [&](int r) { return row_of(a.k, a.ks, b, h, k0 + r); });
    load_tile(sV, L.ldv, Bn, k_valid, a.V, L.Vp, a.wide_v,
              [&](int r) { return row_of(a.v, a.vs, b, h, k0 + r); });
    __syncthreads();
    block_mm<T, true>(sQ, L.ldk, sK, L.ldk, sS, L.lds, R, Bn, L.Kp, false, nullptr);  // S = Q Kᵀ
    __syncthreads();
    // Online softmax, one warp per row, lanes over the (at most 64) columns.
    for (int r = warp; r < R; r += kWarps) {
      float x[2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int c = lane + 32 * jj;
        x[jj] = (c < Bn && allowed(r, c)) ? sS[r * L.lds + c] * a.scale_log2 : -INFINITY;
      }
      attn::online_softmax_row(x, Bn, lane, sP + r * L.ldp, sM + r, sL + r, sAlpha + r);
    }
    __syncthreads();
    // O = diag(alpha) O + P V
    block_mm<T, false>(sP, L.ldp, sV, L.ldv, sO, L.ldv4, R, L.Vp, Bn, true, sAlpha);
  }
  __syncthreads();

  const int64_t row0 = (b * a.H + h) * Tn + q0;
  for (int i = threadIdx.x; i < q_valid * a.V; i += blockDim.x) {
    const int r = i / a.V, c = i - r * a.V;
    const float l = sL[r];
    a.out[(row0 + r) * a.V + c] = from_float<T>(l > 0.0f ? sO[r * L.ldv4 + c] / l : 0.0f);
  }
  for (int r = threadIdx.x; r < q_valid; r += blockDim.x) {
    const float l = sL[r];
    a.lse_out[row0 + r] = l > 0.0f ? (sM[r] + log2f(l)) * kLn2 : -INFINITY;
  }
}

// ---- backward ---------------------------------------------------------------------------------

// D[row] = Σ_c dO[row, c] · O[row, c] in fp32; one warp per row of [B·H·T].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_prep_kernel(const Args<T> a, float* D, int64_t rows) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t row = int64_t(blockIdx.x) * wpb + (threadIdx.x >> 5); row < rows;
       row += int64_t(gridDim.x) * wpb) {
    const int64_t t = row % a.T_len, bh = row / a.T_len;
    const T* dO = row_of(a.dout, a.dos, bh / a.H, bh % a.H, t);
    const T* O = a.o + row * a.V;
    float s = 0.0f;
    for (int c = lane; c < a.V; c += 32) s += to_float(dO[c]) * to_float(O[c]);
    s = attn::warp_sum(s);
    if (lane == 0) D[row] = s;
  }
}

// dQ per query tile: grid (query tiles, H, B), last tiles first. For each key tile:
// S = Q Kᵀ, dP = dO Vᵀ, P = exp(scale·S − lse), dS = P ∘ (dP − D), dQ += dS K; dQ ·= scale.
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_q_kernel(const Args<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout& L = a.L;
  const int R = L.R, Bn = L.Bn;
  const int64_t Tn = a.T_len, h = blockIdx.y, b = blockIdx.z;
  const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * R;
  const int q_valid = static_cast<int>(Tn - q0 < R ? Tn - q0 : R);
  T* sQ = reinterpret_cast<T*>(smem + L.own_x);
  T* sdO = reinterpret_cast<T*>(smem + L.own_y);
  T* sK = reinterpret_cast<T*>(smem + L.str_x);
  T* sV = reinterpret_cast<T*>(smem + L.str_y);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  float* sdP = reinterpret_cast<float*>(smem + L.s2);
  T* sdS = reinterpret_cast<T*>(smem + L.p);
  float* sdQ = reinterpret_cast<float*>(smem + L.acc_x);
  float* sLse = reinterpret_cast<float*>(smem + L.row_a);  // log2 units
  float* sD = reinterpret_cast<float*>(smem + L.row_b);
  int64_t* segQ = reinterpret_cast<int64_t*>(smem + L.seg_own);
  int64_t* segK = reinterpret_cast<int64_t*>(smem + L.seg_str);
  const int64_t row0 = (b * a.H + h) * Tn + q0;

  load_tile(sQ, L.ldk, R, q_valid, a.K, L.Kp, a.wide_q,
            [&](int r) { return row_of(a.q, a.qs, b, h, q0 + r); });
  load_tile(sdO, L.ldv, R, q_valid, a.V, L.Vp, a.wide_do,
            [&](int r) { return row_of(a.dout, a.dos, b, h, q0 + r); });
  zero_tile(sdQ, L.ldk4, R, L.Kp);
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    const bool ok = r < q_valid;
    sLse[r] = ok ? a.lse[row0 + r] * kLog2e : 0.0f;
    sD[r] = ok ? a.D[row0 + r] : 0.0f;
    segQ[r] = (a.seg != nullptr && ok) ? a.seg[b * a.seg_b + (q0 + r) * a.seg_t] : 0;
  }
  __syncthreads();

  const int64_t n_tiles = (q0 + q_valid - 1) / Bn + 1;
  for (int64_t kt = 0; kt < n_tiles; ++kt) {
    const int64_t k0 = kt * Bn;
    const int k_valid = static_cast<int>(Tn - k0 < Bn ? Tn - k0 : Bn);
    auto allowed = [&](int r, int c) {
      return r < q_valid && c < k_valid && k0 + c <= q0 + r &&
             (a.seg == nullptr || segQ[r] == segK[c]);
    };
    __syncthreads();
    if (a.seg != nullptr) {
      for (int c = threadIdx.x; c < Bn; c += blockDim.x) {
        segK[c] = c < k_valid ? a.seg[b * a.seg_b + (k0 + c) * a.seg_t] : 0;
      }
      __syncthreads();
      int any = 0;
      for (int i = threadIdx.x; i < R * Bn && !any; i += blockDim.x) any = allowed(i / Bn, i % Bn);
      if (!__syncthreads_or(any)) continue;
    }
    load_tile(sK, L.ldk, Bn, k_valid, a.K, L.Kp, a.wide_k,
              [&](int r) { return row_of(a.k, a.ks, b, h, k0 + r); });
    load_tile(sV, L.ldv, Bn, k_valid, a.V, L.Vp, a.wide_v,
              [&](int r) { return row_of(a.v, a.vs, b, h, k0 + r); });
    __syncthreads();
    block_mm<T, true>(sQ, L.ldk, sK, L.ldk, sS, L.lds, R, Bn, L.Kp, false, nullptr);
    block_mm<T, true>(sdO, L.ldv, sV, L.ldv, sdP, L.lds, R, Bn, L.Vp, false, nullptr);
    __syncthreads();
    for (int i = threadIdx.x; i < R * Bn; i += blockDim.x) {
      const int r = i / Bn, c = i - r * Bn;
      float ds = 0.0f;
      if (allowed(r, c)) {
        const float p = exp2f(sS[r * L.lds + c] * a.scale_log2 - sLse[r]);
        ds = p * (sdP[r * L.lds + c] - sD[r]);
      }
      sdS[r * L.ldp + c] = from_float<T>(ds);
    }
    __syncthreads();
    block_mm<T, false>(sdS, L.ldp, sK, L.ldk, sdQ, L.ldk4, R, L.Kp, Bn, true, nullptr);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < q_valid * a.K; i += blockDim.x) {
    const int r = i / a.K, c = i - r * a.K;
    a.dq[(row0 + r) * a.K + c] = from_float<T>(sdQ[r * L.ldk4 + c] * a.scale);
  }
}

// dK, dV per key tile: grid (key tiles, H, B). For each query tile at or after the key tile:
// Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, Pᵀ = exp(scale·Sᵀ − lse), dSᵀ = Pᵀ ∘ (dPᵀ − D), dV += Pᵀ dO,
// dK += dSᵀ Q; dK ·= scale.
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_kv_kernel(const Args<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout& L = a.L;
  const int R = L.R, Bn = L.Bn;
  const int64_t Tn = a.T_len, h = blockIdx.y, b = blockIdx.z;
  const int64_t k0 = int64_t(blockIdx.x) * R;
  const int k_valid = static_cast<int>(Tn - k0 < R ? Tn - k0 : R);
  T* sK = reinterpret_cast<T*>(smem + L.own_x);
  T* sV = reinterpret_cast<T*>(smem + L.own_y);
  T* sQ = reinterpret_cast<T*>(smem + L.str_x);
  T* sdO = reinterpret_cast<T*>(smem + L.str_y);
  float* sSt = reinterpret_cast<float*>(smem + L.s);
  float* sdPt = reinterpret_cast<float*>(smem + L.s2);
  T* sPt = reinterpret_cast<T*>(smem + L.p);
  T* sdSt = reinterpret_cast<T*>(smem + L.p2);
  float* sdK = reinterpret_cast<float*>(smem + L.acc_x);
  float* sdV = reinterpret_cast<float*>(smem + L.acc_y);
  float* sLse = reinterpret_cast<float*>(smem + L.row_a);  // of the streamed queries, log2 units
  float* sD = reinterpret_cast<float*>(smem + L.row_b);
  int64_t* segK = reinterpret_cast<int64_t*>(smem + L.seg_own);
  int64_t* segQ = reinterpret_cast<int64_t*>(smem + L.seg_str);
  const int64_t bh_row0 = (b * a.H + h) * Tn;

  load_tile(sK, L.ldk, R, k_valid, a.K, L.Kp, a.wide_k,
            [&](int r) { return row_of(a.k, a.ks, b, h, k0 + r); });
  load_tile(sV, L.ldv, R, k_valid, a.V, L.Vp, a.wide_v,
            [&](int r) { return row_of(a.v, a.vs, b, h, k0 + r); });
  zero_tile(sdK, L.ldk4, R, L.Kp);
  zero_tile(sdV, L.ldv4, R, L.Vp);
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    segK[r] = (a.seg != nullptr && r < k_valid) ? a.seg[b * a.seg_b + (k0 + r) * a.seg_t] : 0;
  }
  __syncthreads();

  const int64_t n_tiles = (Tn + Bn - 1) / Bn;
  for (int64_t qt = k0 / Bn; qt < n_tiles; ++qt) {
    const int64_t q0 = qt * Bn;
    const int q_valid = static_cast<int>(Tn - q0 < Bn ? Tn - q0 : Bn);
    auto allowed = [&](int r, int c) {  // r: key row, c: query column
      return r < k_valid && c < q_valid && k0 + r <= q0 + c &&
             (a.seg == nullptr || segK[r] == segQ[c]);
    };
    __syncthreads();
    for (int c = threadIdx.x; c < Bn; c += blockDim.x) {
      const bool ok = c < q_valid;
      sLse[c] = ok ? a.lse[bh_row0 + q0 + c] * kLog2e : 0.0f;
      sD[c] = ok ? a.D[bh_row0 + q0 + c] : 0.0f;
      segQ[c] = (a.seg != nullptr && ok) ? a.seg[b * a.seg_b + (q0 + c) * a.seg_t] : 0;
    }
    if (a.seg != nullptr) {
      __syncthreads();
      int any = 0;
      for (int i = threadIdx.x; i < R * Bn && !any; i += blockDim.x) any = allowed(i / Bn, i % Bn);
      if (!__syncthreads_or(any)) continue;
    }
    load_tile(sQ, L.ldk, Bn, q_valid, a.K, L.Kp, a.wide_q,
              [&](int r) { return row_of(a.q, a.qs, b, h, q0 + r); });
    load_tile(sdO, L.ldv, Bn, q_valid, a.V, L.Vp, a.wide_do,
              [&](int r) { return row_of(a.dout, a.dos, b, h, q0 + r); });
    __syncthreads();
    block_mm<T, true>(sK, L.ldk, sQ, L.ldk, sSt, L.lds, R, Bn, L.Kp, false, nullptr);
    block_mm<T, true>(sV, L.ldv, sdO, L.ldv, sdPt, L.lds, R, Bn, L.Vp, false, nullptr);
    __syncthreads();
    for (int i = threadIdx.x; i < R * Bn; i += blockDim.x) {
      const int r = i / Bn, c = i - r * Bn;
      float p = 0.0f, ds = 0.0f;
      if (allowed(r, c)) {
        p = exp2f(sSt[r * L.lds + c] * a.scale_log2 - sLse[c]);
        ds = p * (sdPt[r * L.lds + c] - sD[c]);
      }
      sPt[r * L.ldp + c] = from_float<T>(p);
      sdSt[r * L.ldp + c] = from_float<T>(ds);
    }
    __syncthreads();
    block_mm<T, false>(sPt, L.ldp, sdO, L.ldv, sdV, L.ldv4, R, L.Vp, Bn, true, nullptr);
    block_mm<T, false>(sdSt, L.ldp, sQ, L.ldk, sdK, L.ldk4, R, L.Kp, Bn, true, nullptr);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < k_valid * a.K; i += blockDim.x) {
    const int r = i / a.K, c = i - r * a.K;
    a.dk[(bh_row0 + k0 + r) * a.K + c] = from_float<T>(sdK[r * L.ldk4 + c] * a.scale);
  }
  for (int i = threadIdx.x; i < k_valid * a.V; i += blockDim.x) {
    const int r = i / a.V, c = i - r * a.V;
    a.dv[(bh_row0 + k0 + r) * a.V + c] = from_float<T>(sdV[r * L.ldv4 + c]);
  }
}

// ---- launchers --------------------------------------------------------------------------------

constexpr int64_t kMaxGridYZ = 65535;

bool valid_sizes(const MlaAttentionParams& p) {
  return p.batch >= 0 && p.heads >= 0 && p.tokens >= 0 && p.head_dim_qk >= 1 &&
         p.head_dim_qk <= kMlaAttentionMaxHeadDim && p.head_dim_v >= 1 &&
         p.head_dim_v <= kMlaAttentionMaxHeadDim && p.batch <= kMaxGridYZ &&
         p.heads <= kMaxGridYZ &&
         (p.dtype == AttnDType::kFloat32 || p.dtype == AttnDType::kBFloat16 ||
          p.dtype == AttnDType::kFloat16);
}

bool has_inputs(const MlaAttentionParams& p) {
  return p.q != nullptr && p.k != nullptr && p.v != nullptr;
}

template <typename T>
Args<T> make_args(const MlaAttentionParams& p) {
  Args<T> a;
  a.q = static_cast<const T*>(p.q);
  a.k = static_cast<const T*>(p.k);
  a.v = static_cast<const T*>(p.v);
  a.qs = p.q_strides;
  a.ks = p.k_strides;
  a.vs = p.v_strides;
  a.seg = p.segment_ids;
  a.seg_b = p.seg_batch;
  a.seg_t = p.seg_token;
  a.H = p.heads;
  a.T_len = p.tokens;
  a.K = p.head_dim_qk;
  a.V = p.head_dim_v;
  a.scale = p.scale;
  a.scale_log2 = p.scale * kLog2e;
  const auto& q = p.q_strides;
  const auto& k = p.k_strides;
  const auto& v = p.v_strides;
  a.wide_q = attn::wide_ok<T>(p.q, a.K, {q.batch, q.head, q.token});
  a.wide_k = attn::wide_ok<T>(p.k, a.K, {k.batch, k.head, k.token});
  a.wide_v = attn::wide_ok<T>(p.v, a.V, {v.batch, v.head, v.token});
  return a;
}

// Picks the tile shape for `kind` (two blocks per SM when some shape allows it) and launches.
template <typename T, typename Kernel>
int launch_tiled(Kernel kernel, Kind kind, Args<T> a, int64_t batch, int64_t own_rows_total,
                 TileShape forced, cudaStream_t stream) {
  const auto dev = attn::device_limits();
  TileShape shape;
  auto bytes = [&](TileShape s) {
    return make_layout(kind, s, a.K, a.V, static_cast<int>(sizeof(T))).bytes;
  };
  if (!attn::pick_tiles(own_rows_total, /*two_per_sm=*/true, dev, bytes, forced, &shape)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  a.L = make_layout(kind, shape, a.K, a.V, static_cast<int>(sizeof(T)));
  cudaError_t err = attn::allow_smem(kernel, a.L.bytes);
  if (err != cudaSuccess) return static_cast<int>(err);
  const dim3 grid(static_cast<unsigned>((a.T_len + a.L.R - 1) / a.L.R), static_cast<unsigned>(a.H),
                  static_cast<unsigned>(batch));
  kernel<<<grid, kThreads, a.L.bytes, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int run_forward(const MlaAttentionParams& p, cudaStream_t stream) {
  Args<T> a = make_args<T>(p);
  a.out = static_cast<T*>(p.out);
  a.lse_out = p.lse;
  return launch_tiled(forward_kernel<T>, Kind::kForward, a, p.batch, p.tokens,
                      TileShape{p.tile_rows, p.tile_cols}, stream);
}

template <typename T>
int run_backward(const MlaAttentionBackwardParams& p, cudaStream_t stream) {
  const MlaAttentionParams& f = p.fwd;
  Args<T> a = make_args<T>(f);
  a.o = static_cast<const T*>(f.out);
  a.dout = static_cast<const T*>(p.grad_out);
  a.dos = p.grad_out_strides;
  a.wide_do = attn::wide_ok<T>(p.grad_out, a.V, {a.dos.batch, a.dos.head, a.dos.token});
  a.lse = f.lse;
  float* D = static_cast<float*>(p.workspace);
  a.D = D;
  a.dq = static_cast<T*>(p.grad_q);
  a.dk = static_cast<T*>(p.grad_k);
  a.dv = static_cast<T*>(p.grad_v);

  const int64_t rows = f.batch * f.heads * f.tokens;
  const auto dev = attn::device_limits();
  int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > 32LL * dev.sms) blocks = 32LL * dev.sms;
  grad_prep_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, D, rows);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  const TileShape forced{f.tile_rows, f.tile_cols};
  const int e1 =
      launch_tiled(grad_kv_kernel<T>, Kind::kGradKV, a, f.batch, f.tokens, forced, stream);
  if (e1 != 0) return e1;
  return launch_tiled(grad_q_kernel<T>, Kind::kGradQ, a, f.batch, f.tokens, forced, stream);
}

}  // namespace

int launch_mla_attention_forward(const MlaAttentionParams& p, cudaStream_t stream) {
  if (!valid_sizes(p)) return static_cast<int>(cudaErrorInvalidValue);
  if (p.batch == 0 || p.heads == 0 || p.tokens == 0) return static_cast<int>(cudaSuccess);
  if (!has_inputs(p) || p.out == nullptr || p.lse == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  switch (p.dtype) {
    case AttnDType::kFloat32:
      return run_forward<float>(p, stream);
    case AttnDType::kBFloat16:
      return run_forward<__nv_bfloat16>(p, stream);
    case AttnDType::kFloat16:
      return run_forward<__half>(p, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

size_t mla_attention_backward_workspace_bytes(int64_t batch, int64_t heads, int64_t tokens) {
  if (batch <= 0 || heads <= 0 || tokens <= 0) return 0;
  return sizeof(float) * static_cast<size_t>(batch * heads * tokens);
}

int launch_mla_attention_backward(const MlaAttentionBackwardParams& p, cudaStream_t stream) {
  const MlaAttentionParams& f = p.fwd;
  if (!valid_sizes(f)) return static_cast<int>(cudaErrorInvalidValue);
  if (f.batch == 0 || f.heads == 0 || f.tokens == 0) return static_cast<int>(cudaSuccess);
  if (!has_inputs(f) || f.out == nullptr || f.lse == nullptr || p.grad_out == nullptr ||
      p.grad_q == nullptr || p.grad_k == nullptr || p.grad_v == nullptr || p.workspace == nullptr ||
      p.workspace_bytes < mla_attention_backward_workspace_bytes(f.batch, f.heads, f.tokens)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  switch (f.dtype) {
    case AttnDType::kFloat32:
      return run_backward<float>(p, stream);
    case AttnDType::kBFloat16:
      return run_backward<__nv_bfloat16>(p, stream);
    case AttnDType::kFloat16:
      return run_backward<__half>(p, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace moetron::kernels
