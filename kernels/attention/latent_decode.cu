// Latent decode attention (absorbed MLA, SPEC 1.8) over the KV cache of the generation engine:
// per sequence, every (query row t, head h) scores the cached slots with the 576-wide key
// [c_kv | k_pe] (C + P in general), softmax in fp32 over the allowed slots, and sums the
// C-wide latents c_kv. All heads of a sequence share its cache (MQA in latent space), so a block
// owns R rows (t, h) of one sequence and streams the cache through shared memory once for all
// of them: scores S = [q_lat | q_pe] · [c_kv | k_pe]ᵀ and Z = diag(alpha) Z + P · c_kv are
// block-cooperative fragment matmuls (tile.cuh), the online softmax as in the training forward.
//
// Split-K over the slots: grid (row groups, splits, B); each split handles a contiguous range
// of slot tiles and, when there is more than one split, writes its unnormalised fp32 Z and its
// (max, sum) per row to a workspace; a second kernel combines the splits of each row in split
// order (deterministic). Sequences of different lengths share one launch: slots a sequence may
// not see are masked (their tile loads are skipped when no row of the block sees any slot of
// the tile), so padding costs reading the mask, not the cache.
#include <math.h>

#include "moetron/kernels/attention.h"
#include "tile.cuh"

namespace moetron::kernels {
namespace {

using attn::block_mm;
using attn::kAccPad;
using attn::kThreads;
using attn::kWarps;
using attn::load_tile;
using attn::round16;
using attn::SmemCarve;
using attn::TileShape;
using attn::zero_tile;

struct Layout {
  int R = 0, Bn = 0;                       // rows per block, slots per step
  int Cp = 0, Pp = 0;                      // C, P rounded up to 16
  int ldq = 0, lds = 0, ldp = 0, ldz = 0;  // row strides (elements)
  size_t q = 0, kv = 0, s = 0, p = 0, z = 0, m = 0, l = 0, alpha = 0, mask = 0, bytes = 0;
};

Layout make_layout(TileShape shape, int C, int P, int elem) {
  Layout L;
  L.R = shape.rows;
  L.Bn = shape.cols;
  L.Cp = round16(C);
  L.Pp = round16(P);
  const int pad = attn::row_pad(elem);
  L.ldq = L.Cp + L.Pp + pad;  // [q_lat | q_pe] and [c_kv | k_pe] rows
  L.lds = L.Bn + kAccPad;
  L.ldp = L.Bn + pad;
  L.ldz = L.Cp + kAccPad;
  const size_t R = L.R, Bn = L.Bn, e = elem, f = sizeof(float);
  SmemCarve c;
  L.q = c.take(R * L.ldq * e);
  L.kv = c.take(Bn * L.ldq * e);
  L.s = c.take(R * L.lds * f);
  L.p = c.take(R * L.ldp * e);
  L.z = c.take(R * L.ldz * f);
  L.m = c.take(R * f);
  L.l = c.take(R * f);
  L.alpha = c.take(R * f);
  L.mask = c.take(R * Bn);  // [distinct t of the block's rows][slot]
  L.bytes = c.bytes;
  return L;
}

struct Plan {
  Layout L;
  int64_t row_groups = 0, splits = 1, split_len = 0;
};

template <typename T>
struct Args {
  const T* q_lat = nullptr;
  const T* q_pe = nullptr;
  const T* c_kv = nullptr;
  const T* k_pe = nullptr;
  const unsigned char* allowed = nullptr;
  int64_t qlb = 0, qlt = 0, qlh = 0, qpb = 0, qpt = 0, qph = 0;
  int64_t cb = 0, cs = 0, kb = 0, ks = 0, ab = 0, at = 0, as = 0;
  int64_t Tq = 0, H = 0, S = 0, M = 0;  // M = T·H rows per sequence
  int C = 0, P = 0;
  float scale_log2 = 1.0f;
  bool wide_ql = false, wide_qp = false, wide_c = false, wide_k = false;
  T* out = nullptr;
  float* ws_z = nullptr;  // [B][splits][M][C]
  float* ws_m = nullptr;  // [B][splits][M], log2 units
  float* ws_l = nullptr;  // [B][splits][M]
  int64_t splits = 1, split_len = 0;
  Layout L;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) decode_kernel(const Args<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout& L = a.L;
  const int R = L.R, Bn = L.Bn, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.z, sp = blockIdx.y, m0 = int64_t(blockIdx.x) * R;
  const int m_valid = static_cast<int>(a.M - m0 < R ? a.M - m0 : R);
  const int64_t t_lo = m0 / a.H, t_hi = (m0 + m_valid - 1) / a.H;
  const int nt = static_cast<int>(t_hi - t_lo + 1);  // distinct query rows t in the block (<= R)
  const int64_t s_begin = sp * a.split_len;
  const int64_t s_end = s_begin + a.split_len < a.S ? s_begin + a.split_len : a.S;
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  T* sKV = reinterpret_cast<T*>(smem + L.kv);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  T* sP = reinterpret_cast<T*>(smem + L.p);
  float* sZ = reinterpret_cast<float*>(smem + L.z);
  float* sM = reinterpret_cast<float*>(smem + L.m);
  float* sL = reinterpret_cast<float*>(smem + L.l);
  float* sAlpha = reinterpret_cast<float*>(smem + L.alpha);
  unsigned char* sMask = smem + L.mask;

  auto q_row = [&](const T* base, int64_t sb, int64_t st, int64_t sh, int r) {
    const int64_t m = m0 + r;
    return base + b * sb + (m / a.H) * st + (m % a.H) * sh;
  };
  load_tile(sQ, L.ldq, R, m_valid, a.C, L.Cp, a.wide_ql,
            [&](int r) { return q_row(a.q_lat, a.qlb, a.qlt, a.qlh, r); });
  load_tile(sQ + L.Cp, L.ldq, R, m_valid, a.P, L.Pp, a.wide_qp,
            [&](int r) { return q_row(a.q_pe, a.qpb, a.qpt, a.qph, r); });
  zero_tile(sZ, L.ldz, R, L.Cp);
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    sM[r] = -INFINITY;
    sL[r] = 0.0f;
  }
  __syncthreads();

  for (int64_t s0 = s_begin; s0 < s_end; s0 += Bn) {
    const int s_valid = static_cast<int>(s_end - s0 < Bn ? s_end - s0 : Bn);
    // No barrier needed before the mask: sMask is read only in the softmax step, which a
    // barrier separates from this point, and the cache tile is overwritten only after the vote
    // below, itself a barrier that every reader of the previous tile has passed.
    int any = 0;
    for (int i = threadIdx.x; i < nt * Bn; i += blockDim.x) {
      const int tt = i / Bn, c = i - tt * Bn;
      const unsigned char v =
          c < s_valid ? a.allowed[b * a.ab + (t_lo + tt) * a.at + (s0 + c) * a.as] != 0 : 0;
      sMask[i] = v;
      any |= v;
    }
    if (!__syncthreads_or(any)) continue;  // no row of the block sees a slot of this tile
    load_tile(sKV, L.ldq, Bn, s_valid, a.C, L.Cp, a.wide_c,
              [&](int r) { return a.c_kv + b * a.cb + (s0 + r) * a.cs; });
    load_tile(sKV + L.Cp, L.ldq, Bn, s_valid, a.P, L.Pp, a.wide_k,
              [&](int r) { return a.k_pe + b * a.kb + (s0 + r) * a.ks; });
    __syncthreads();
    block_mm<T, true>(sQ, L.ldq, sKV, L.ldq, sS, L.lds, R, Bn, L.Cp + L.Pp, false, nullptr);
    __syncthreads();
    for (int r = warp; r < R; r += kWarps) {
      const unsigned char* mrow =
          r < m_valid ? sMask + static_cast<int>((m0 + r) / a.H - t_lo) * Bn : nullptr;
      float x[2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int c = lane + 32 * jj;
        x[jj] = (mrow != nullptr && c < s_valid && mrow[c]) ? sS[r * L.lds + c] * a.scale_log2
                                                            : -INFINITY;
      }
      attn::online_softmax_row(x, Bn, lane, sP + r * L.ldp, sM + r, sL + r, sAlpha + r);
    }
    __syncthreads();
    // Z = diag(alpha) Z + P c_kv (the first Cp columns of the cache tile)
    block_mm<T, false>(sP, L.ldp, sKV, L.ldq, sZ, L.ldz, R, L.Cp, Bn, true, sAlpha);
  }
  __syncthreads();

  const int64_t row0 = b * a.M + m0;
  if (a.splits == 1) {
    for (int i = threadIdx.x; i < m_valid * a.C; i += blockDim.x) {
      const int r = i / a.C, c = i - r * a.C;
      const float l = sL[r];
      a.out[(row0 + r) * a.C + c] = from_float<T>(l > 0.0f ? sZ[r * L.ldz + c] / l : 0.0f);
    }
  } else {
    const int64_t prow0 = (b * a.splits + sp) * a.M + m0;
    for (int i = threadIdx.x; i < m_valid * a.C; i += blockDim.x) {
      const int r = i / a.C, c = i - r * a.C;
      a.ws_z[(prow0 + r) * a.C + c] = sZ[r * L.ldz + c];
    }
    for (int r = threadIdx.x; r < m_valid; r += blockDim.x) {
      a.ws_m[prow0 + r] = sM[r];
      a.ws_l[prow0 + r] = sL[r];
    }
  }
}

// z[b, m] = Σ_s 2^(m_s − max) Z_s / Σ_s 2^(m_s − max) l_s over the splits in order; one warp per
// row (b, m). A row no split saw anything for gets 0.
template <typename T>
__global__ void __launch_bounds__(kThreads) combine_kernel(const Args<T> a, int64_t rows) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t row = int64_t(blockIdx.x) * wpb + (threadIdx.x >> 5); row < rows;
       row += int64_t(gridDim.x) * wpb) {
    const int64_t b = row / a.M, m = row - b * a.M;
    const int64_t base = b * a.splits * a.M + m;  // split s at base + s · M
    float mx = -INFINITY;
    for (int64_t s = 0; s < a.splits; ++s) mx = fmaxf(mx, a.ws_m[base + s * a.M]);
    float total = 0.0f;
    if (mx != -INFINITY) {
      for (int64_t s = 0; s < a.splits; ++s) {
        total += exp2f(a.ws_m[base + s * a.M] - mx) * a.ws_l[base + s * a.M];
      }
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (int c = lane; c < a.C; c += 32) {
      float z = 0.0f;
      if (total > 0.0f) {
        for (int64_t s = 0; s < a.splits; ++s) {
          const float w = exp2f(a.ws_m[base + s * a.M] - mx);
          z += w * a.ws_z[(base + s * a.M) * a.C + c];
        }
      }
      a.out[row * a.C + c] = from_float<T>(z * inv);
    }
  }
}

// ---- launchers --------------------------------------------------------------------------------

constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxSplits = 256;

bool valid(const LatentDecodeParams& p) {
  return p.batch >= 0 && p.q_len >= 0 && p.heads >= 0 && p.slots >= 0 && p.kv_rank >= 1 &&
         p.kv_rank <= kLatentDecodeMaxRank && p.rope_dim >= 1 &&
         p.rope_dim <= kLatentDecodeMaxRope && p.batch <= kMaxGridYZ && p.num_splits >= 0 &&
         (p.dtype == AttnDType::kFloat32 || p.dtype == AttnDType::kBFloat16 ||
          p.dtype == AttnDType::kFloat16);
}

int elem_bytes(AttnDType d) {
  return d == AttnDType::kFloat32 ? 4 : 2;
}

// Tile shape (rows as many as one sequence needs, up to 64; one block per SM is fine: the rows
// sharing a cache tile matter more here), then the splits: enough blocks for about two waves.
bool make_plan(const LatentDecodeParams& p, const attn::DeviceLimits& dev, Plan* plan) {
  const int64_t M = p.q_len * p.heads;
  const int e = elem_bytes(p.dtype);
  auto bytes = [&](TileShape s) { return make_layout(s, p.kv_rank, p.rope_dim, e).bytes; };
  TileShape shape;
  if (!attn::pick_tiles(M, /*two_per_sm=*/false, dev, bytes, TileShape{p.tile_rows, p.tile_cols},
                        &shape)) {
    return false;
  }
  plan->L = make_layout(shape, p.kv_rank, p.rope_dim, e);
  plan->row_groups = (M + shape.rows - 1) / shape.rows;
  const int64_t tiles = (p.slots + shape.cols - 1) / shape.cols;
  int64_t want = p.num_splits;
  if (want == 0) {
    const int64_t units = p.batch * plan->row_groups;
    const int64_t target = 2LL * dev.sms * attn::blocks_per_sm(dev, plan->L.bytes);
    want = units > 0 ? (target + units - 1) / units : 1;
  }
  if (want > kMaxSplits) want = kMaxSplits;
  if (want > tiles) want = tiles;
  if (want < 1) want = 1;
  const int64_t per = tiles > 0 ? (tiles + want - 1) / want : 0;  // slot tiles per split
  plan->splits = per > 0 ? (tiles + per - 1) / per : 1;
  plan->split_len = per * shape.cols;
  return true;
}

size_t workspace_for(const LatentDecodeParams& p, const Plan& plan) {
  if (plan.splits <= 1) return 0;
  const size_t rows = static_cast<size_t>(p.batch * plan.splits * p.q_len * p.heads);
  return sizeof(float) * rows * (static_cast<size_t>(p.kv_rank) + 2);
}

template <typename T>
int run(const LatentDecodeParams& p, const Plan& plan, const attn::DeviceLimits& dev,
        cudaStream_t stream) {
  Args<T> a;
  a.q_lat = static_cast<const T*>(p.q_lat);
  a.q_pe = static_cast<const T*>(p.q_pe);
  a.c_kv = static_cast<const T*>(p.c_kv);
  a.k_pe = static_cast<const T*>(p.k_pe);
  a.allowed = reinterpret_cast<const unsigned char*>(p.allowed);
  a.qlb = p.q_lat_b, a.qlt = p.q_lat_t, a.qlh = p.q_lat_h;
  a.qpb = p.q_pe_b, a.qpt = p.q_pe_t, a.qph = p.q_pe_h;
  a.cb = p.c_kv_b, a.cs = p.c_kv_s, a.kb = p.k_pe_b, a.ks = p.k_pe_s;
  a.ab = p.allowed_b, a.at = p.allowed_t, a.as = p.allowed_s;
  a.Tq = p.q_len;
  a.H = p.heads;
  a.S = p.slots;
  a.M = p.q_len * p.heads;
  a.C = p.kv_rank;
  a.P = p.rope_dim;
  a.scale_log2 = p.scale * attn::kLog2e;
  a.wide_ql = attn::wide_ok<T>(p.q_lat, a.C, {a.qlb, a.qlt, a.qlh});
  a.wide_qp = attn::wide_ok<T>(p.q_pe, a.P, {a.qpb, a.qpt, a.qph});
  a.wide_c = attn::wide_ok<T>(p.c_kv, a.C, {a.cb, a.cs});
  a.wide_k = attn::wide_ok<T>(p.k_pe, a.P, {a.kb, a.ks});
  a.out = static_cast<T*>(p.out);
  a.splits = plan.splits;
  a.split_len = plan.split_len;
  a.L = plan.L;
  if (plan.splits > 1) {
    const int64_t rows = p.batch * plan.splits * a.M;
    a.ws_z = static_cast<float*>(p.workspace);
    a.ws_m = a.ws_z + rows * a.C;
    a.ws_l = a.ws_m + rows;
  }
  cudaError_t err = attn::allow_smem(decode_kernel<T>, plan.L.bytes);
  if (err != cudaSuccess) return static_cast<int>(err);
  const dim3 grid(static_cast<unsigned>(plan.row_groups), static_cast<unsigned>(plan.splits),
                  static_cast<unsigned>(p.batch));
  decode_kernel<T><<<grid, kThreads, plan.L.bytes, stream>>>(a);
  if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
  if (plan.splits > 1) {
    const int64_t rows = p.batch * a.M;
    int64_t blocks = (rows + kWarps - 1) / kWarps;
    if (blocks > 32LL * dev.sms) blocks = 32LL * dev.sms;
    combine_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, rows);
    err = cudaGetLastError();
  }
  return static_cast<int>(err);
}

}  // namespace

size_t latent_decode_workspace_bytes(const LatentDecodeParams& p) {
  if (!valid(p) || p.batch == 0 || p.q_len == 0 || p.heads == 0) return 0;
  Plan plan;
  if (!make_plan(p, attn::device_limits(), &plan)) return 0;
  return workspace_for(p, plan);
}

int launch_latent_decode_attention(const LatentDecodeParams& p, cudaStream_t stream) {
  if (!valid(p)) return static_cast<int>(cudaErrorInvalidValue);
  if (p.batch == 0 || p.q_len == 0 || p.heads == 0) return static_cast<int>(cudaSuccess);
  if (p.q_lat == nullptr || p.q_pe == nullptr || p.out == nullptr ||
      (p.slots > 0 && (p.c_kv == nullptr || p.k_pe == nullptr || p.allowed == nullptr))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const auto dev = attn::device_limits();
  Plan plan;
  if (!make_plan(p, dev, &plan)) return static_cast<int>(cudaErrorInvalidValue);
  const size_t ws = workspace_for(p, plan);
  if (ws > 0 && (p.workspace == nullptr || p.workspace_bytes < ws)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  switch (p.dtype) {
    case AttnDType::kFloat32:
      return run<float>(p, plan, dev, stream);
    case AttnDType::kBFloat16:
      return run<__nv_bfloat16>(p, plan, dev, stream);
    case AttnDType::kFloat16:
      return run<__half>(p, plan, dev, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace moetron::kernels
