// Torch-free launchers for MLA attention: the flash-style causal attention of the training path
// (forward with log-sum-exp, FlashAttention-2 backward) and the latent-cache decode attention of
// the absorbed path (SPEC 1.8). Pointers are device pointers; every launch is asynchronous on
// `stream` and returns the CUDA error of the launch as an int (cudaSuccess = 0); parameters
// outside the limits below give cudaErrorInvalidValue without a launch.
#pragma once

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace moetron::kernels {

enum class AttnDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---- training attention ---------------------------------------------------------------------

// Largest q/k head width K and value head width V (shared-memory tiles; V3: K 192, V 128).
constexpr int kMlaAttentionMaxHeadDim = 256;

// Element (b, h, t, d) of a [B, H, T, D] tensor is at ptr[b * batch + h * head + t * token + d]:
// any strides for the first three dims, the last dim contiguous.
struct AttnStrides {
  int64_t batch = 0, head = 0, token = 0;
};

// O = softmax(scale · q kᵀ over the allowed keys) v per (b, h), the softmax in fp32. Query i
// may attend to key j iff j <= i and, with segment ids, seg[b, j] == seg[b, i] (packed samples).
// All of q, k, v, out share `dtype`; accumulation is fp32.
struct MlaAttentionParams {
  AttnDType dtype = AttnDType::kFloat32;
  int64_t batch = 0, heads = 0, tokens = 0;  // B, H, T (B, H <= 65535)
  int head_dim_qk = 0, head_dim_v = 0;       // K, V in [1, kMlaAttentionMaxHeadDim]
  float scale = 1.0f;
  const void* q = nullptr;  // [B, H, T, K]
  AttnStrides q_strides;
  const void* k = nullptr;  // [B, H, T, K]
  AttnStrides k_strides;
  const void* v = nullptr;  // [B, H, T, V]
  AttnStrides v_strides;
  const int64_t* segment_ids = nullptr;  // [B, T] element (b, t) at b * seg_batch + t * seg_token;
  int64_t seg_batch = 0, seg_token = 0;  // null: plain causal
  void* out = nullptr;                   // [B, H, T, V] contiguous, dtype
  float* lse = nullptr;  // [B, H, T] contiguous: natural log of Σ_j exp(scale · q_i·k_j)
  // Tile shape: rows a block owns and rows it streams per step, each 16, 32 or 64; 0 lets the
  // launcher choose by shared memory (tests force shapes; applies to all three kernels).
  int tile_rows = 0, tile_cols = 0;
};

int launch_mla_attention_forward(const MlaAttentionParams& params, cudaStream_t stream);

// FlashAttention-2 backward by recomputation, deterministic: one kernel forms dK and dV per key
// tile (each block owns its rows, loops over query tiles), a separate kernel forms dQ per query
// tile; no float atomics. The forward's fields describe q, k, v, the segments, out (O, now
// read) and lse (read).
struct MlaAttentionBackwardParams {
  MlaAttentionParams fwd;
  const void* grad_out = nullptr;  // dO [B, H, T, V], dtype
  AttnStrides grad_out_strides;
  void* grad_q = nullptr;     // [B, H, T, K] contiguous, dtype
  void* grad_k = nullptr;     // [B, H, T, K] contiguous, dtype
  void* grad_v = nullptr;     // [B, H, T, V] contiguous, dtype
  void* workspace = nullptr;  // mla_attention_backward_workspace_bytes(...) bytes
  size_t workspace_bytes = 0;
};

// D = rowsum(dO ∘ O) in fp32: 4 · B · H · T bytes.
size_t mla_attention_backward_workspace_bytes(int64_t batch, int64_t heads, int64_t tokens);
int launch_mla_attention_backward(const MlaAttentionBackwardParams& params, cudaStream_t stream);

// ---- latent decode attention ----------------------------------------------------------------

// Limits: kv_lora_rank C and qk_rope_head_dim P (V3: 512 and 64).
constexpr int kLatentDecodeMaxRank = 512;
constexpr int kLatentDecodeMaxRope = 128;

// Absorbed MLA over a latent cache: for sequence b, query row t, head h and cache slot s,
//   score = scale · (q_lat[b, t, h]·c_kv[b, s] + q_pe[b, t, h]·k_pe[b, s]),
//   p = softmax over the slots with allowed[b, t, s] (fp32), z[b, t, h] = Σ_s p_s c_kv[b, s].
// All heads of a sequence share its cache. Rows with no allowed slot get z = 0.
struct LatentDecodeParams {
  AttnDType dtype = AttnDType::kFloat32;
  int64_t batch = 0, q_len = 0, heads = 0, slots = 0;  // B, T, H, S (B <= 65535)
  int kv_rank = 0, rope_dim = 0;                       // C, P
  float scale = 1.0f;
  const void* q_lat = nullptr;  // [B, T, H, C]: element at b·q_lat_b + t·q_lat_t + h·q_lat_h + c
  int64_t q_lat_b = 0, q_lat_t = 0, q_lat_h = 0;
  const void* q_pe = nullptr;  // [B, T, H, P]
  int64_t q_pe_b = 0, q_pe_t = 0, q_pe_h = 0;
  const void* c_kv = nullptr;  // [B, S, C]: element at b·c_kv_b + s·c_kv_s + c
  int64_t c_kv_b = 0, c_kv_s = 0;
  const void* k_pe = nullptr;  // [B, S, P]
  int64_t k_pe_b = 0, k_pe_s = 0;
  const bool* allowed = nullptr;  // [B, T, S]: element at b·allowed_b + t·allowed_t + s·allowed_s
  int64_t allowed_b = 0, allowed_t = 0, allowed_s = 0;
  void* out = nullptr;  // z [B, T, H, C] contiguous, dtype
  // Split-K over the slots: 0 lets the launcher choose (enough blocks to fill the device);
  // > 0 forces that many splits (clamped to the number of slot tiles; tests use 1 and many).
  int num_splits = 0;
  int tile_rows = 0, tile_cols = 0;  // (t, h) rows per block, slots per step; 0: launcher's
  void* workspace = nullptr;  // latent_decode_workspace_bytes(params) bytes (0 for one split)
  size_t workspace_bytes = 0;
};

// Partial results of the splits (fp32 z, running max and sum per row and split); depends on the
// current device (its SM count and shared memory), so query it on the device that launches.
size_t latent_decode_workspace_bytes(const LatentDecodeParams& params);
int launch_latent_decode_attention(const LatentDecodeParams& params, cudaStream_t stream);

}  // namespace moetron::kernels
