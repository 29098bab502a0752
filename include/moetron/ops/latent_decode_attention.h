// Latent decode attention: the attention core of the absorbed MLA path (SPEC 1.8) over the
// latent KV cache, between the W^UK and W^UV absorptions (which stay einsums). Reference: the
// einsum/softmax composite of MlaAttentionImpl::forward_absorbed; CUDA:
// kernels/attention/latent_decode.cu (split-K over the cache slots, all heads of a sequence
// sharing each cache tile). Inference only (no autograd).
#pragma once

#include <torch/types.h>

#include "moetron/ops/impl.h"

namespace moetron::ops {

// Legend: B sequences, T query tokens per sequence, H heads, S cache slots, C kv_lora_rank,
// P qk_rope_head_dim.

// z[b, t, h] = Σ_s p_s c_kv[b, s] with p = softmax_s over the slots with allowed[b, t, s] of
// scale · (q_lat[b, t, h]·c_kv[b, s] + q_pe[b, t, h]·k_pe[b, s]), the softmax in fp32 (fp64 for
// fp64 inputs) and p rounded to the inputs' dtype before the sum (as forward_absorbed).
// q_lat_BTHC [B, T, H, C], q_pe_BTHP [B, T, H, P], c_kv_BSC [B, S, C], k_pe_BSP [B, S, P] (any
// strides: views of the cache's first S slots), allowed_BTS bool [B, T, S] (forward_with_cache
// builds it from the cache's valid slots: causal by slot, padding hidden, a token always sees
// itself). Returns z_BTHC [B, T, H, C] in the inputs' (common) dtype. A row with no allowed slot
// gives NaN in the reference and 0 from the kernel (forward_with_cache never builds one).
// Impl::kCuda needs CUDA tensors of fp32 / bf16 / fp16, a CUDA build and C, P within
// check_cuda_latent_decode_supports. num_splits: split-K over the slots for the kernel (0 =
// chosen for the device; tests force 1 or more); the reference ignores it.
torch::Tensor latent_decode_attention(const torch::Tensor& q_lat_BTHC,
                                      const torch::Tensor& q_pe_BTHP, const torch::Tensor& c_kv_BSC,
                                      const torch::Tensor& k_pe_BSP,
                                      const torch::Tensor& allowed_BTS, double scale,
                                      Impl impl = Impl::kReference, int num_splits = 0);

// The kernel's limits: kv_lora_rank C <= 512, qk_rope_head_dim P <= 128.
inline constexpr int64_t kLatentDecodeMaxRank = 512;
inline constexpr int64_t kLatentDecodeMaxRope = 128;

// Throws a config Error naming kernels.decode_attention when the CUDA kernel cannot serve this
// cache layout (limits above) or when this build has no CUDA kernels.
void check_cuda_latent_decode_supports(int64_t kv_lora_rank, int64_t qk_rope_head_dim);

}  // namespace moetron::ops
