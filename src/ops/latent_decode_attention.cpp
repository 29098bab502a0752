// latent_decode_attention: the reference (forward_absorbed's einsum/softmax composite, the
// specification) and the dispatch to the split-K CUDA kernel.
#include "moetron/ops/latent_decode_attention.h"

#include <torch/torch.h>

#include <limits>

#include "cuda_util.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include "moetron/kernels/attention.h"
#endif

namespace moetron::ops {

// Legend: B sequences, T query tokens, H heads, S cache slots, C kv_lora_rank, P rope width.

namespace {

constexpr const char* kKey = "kernels.decode_attention";

torch::Tensor reference(const torch::Tensor& q_lat_BTHC, const torch::Tensor& q_pe_BTHP,
                        const torch::Tensor& c_kv_BSC, const torch::Tensor& k_pe_BSP,
                        const torch::Tensor& allowed_BTS, double scale) {
  auto scores_BHTS = torch::einsum("bthc,bsc->bhts", {q_lat_BTHC, c_kv_BSC}) +
                     torch::einsum("bthp,bsp->bhts", {q_pe_BTHP, k_pe_BSP});
  const auto soft = q_lat_BTHC.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto logits_BHTS = scores_BHTS.to(soft) * scale;
  logits_BHTS = logits_BHTS.masked_fill(allowed_BTS.unsqueeze(1).logical_not(),
                                        -std::numeric_limits<double>::infinity());
  auto p_BHTS = torch::softmax(logits_BHTS, -1).to(q_lat_BTHC.scalar_type());
  return torch::einsum("bhts,bsc->bthc", {p_BHTS, c_kv_BSC});
}

torch::Tensor cuda(const torch::Tensor& q_lat_in, const torch::Tensor& q_pe_in,
                   const torch::Tensor& c_kv_in, const torch::Tensor& k_pe_in,
                   const torch::Tensor& allowed_in, double scale, int num_splits) {
#if MOETRON_HAVE_CUDA_KERNELS
  for (const auto* t : {&q_lat_in, &q_pe_in, &c_kv_in, &k_pe_in, &allowed_in}) {
    MOETRON_CHECK(t->is_cuda(), "latent_decode_attention(cuda): inputs must be CUDA tensors, got ",
                  t->device());
  }
  const int64_t C = q_lat_in.size(3), P = q_pe_in.size(3);
  check_cuda_latent_decode_supports(C, P);
  const c10::cuda::CUDAGuard guard(q_lat_in.device());
  auto q_lat = detail::unit_last(q_lat_in), q_pe = detail::unit_last(q_pe_in);
  auto c_kv = detail::unit_last(c_kv_in), k_pe = detail::unit_last(k_pe_in);
  auto allowed =
      allowed_in.scalar_type() == torch::kBool ? allowed_in : allowed_in.to(torch::kBool);
  const int64_t B = q_lat.size(0), T = q_lat.size(1), H = q_lat.size(2), S = c_kv.size(1);
  auto z = torch::empty({B, T, H, C}, q_lat.options());
  kernels::LatentDecodeParams p;
  p.dtype = detail::attn_dtype(q_lat, kKey);
  p.batch = B;
  p.q_len = T;
  p.heads = H;
  p.slots = S;
  p.kv_rank = static_cast<int>(C);
  p.rope_dim = static_cast<int>(P);
  p.scale = static_cast<float>(scale);
  p.q_lat = q_lat.data_ptr();
  p.q_lat_b = q_lat.stride(0), p.q_lat_t = q_lat.stride(1), p.q_lat_h = q_lat.stride(2);
  p.q_pe = q_pe.data_ptr();
  p.q_pe_b = q_pe.stride(0), p.q_pe_t = q_pe.stride(1), p.q_pe_h = q_pe.stride(2);
  p.c_kv = c_kv.data_ptr();
  p.c_kv_b = c_kv.stride(0), p.c_kv_s = c_kv.stride(1);
  p.k_pe = k_pe.data_ptr();
  p.k_pe_b = k_pe.stride(0), p.k_pe_s = k_pe.stride(1);
  p.allowed = allowed.data_ptr<bool>();
  p.allowed_b = allowed.stride(0), p.allowed_t = allowed.stride(1), p.allowed_s = allowed.stride(2);
  p.out = z.data_ptr();
  p.num_splits = num_splits;
  const size_t ws_bytes = kernels::latent_decode_workspace_bytes(p);
  torch::Tensor ws;
  if (ws_bytes > 0) {
    ws = torch::empty({static_cast<int64_t>(ws_bytes / sizeof(float))},
                      q_lat.options().dtype(torch::kFloat32));
    p.workspace = ws.data_ptr();
    p.workspace_bytes = ws_bytes;
  }
  detail::check_launch(kernels::launch_latent_decode_attention(p, detail::stream_of(q_lat)),
                       "latent_decode_attention");
  return z;
#else
  (void)q_lat_in, (void)q_pe_in, (void)c_kv_in, (void)k_pe_in, (void)allowed_in, (void)scale,
      (void)num_splits;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

}  // namespace

void check_cuda_latent_decode_supports(int64_t kv_lora_rank, int64_t qk_rope_head_dim) {
  if (!cuda_kernels_built()) detail::throw_no_cuda_kernels(kKey);
#if MOETRON_HAVE_CUDA_KERNELS
  static_assert(kLatentDecodeMaxRank == kernels::kLatentDecodeMaxRank &&
                kLatentDecodeMaxRope == kernels::kLatentDecodeMaxRope);
#endif
  MOETRON_CHECK_CONFIG(kv_lora_rank <= kLatentDecodeMaxRank, kKey,
                       ": cuda supports mla.kv_lora_rank up to ", kLatentDecodeMaxRank, ", got ",
                       kv_lora_rank, "; use kernels.decode_attention: reference");
  MOETRON_CHECK_CONFIG(qk_rope_head_dim <= kLatentDecodeMaxRope, kKey,
                       ": cuda supports mla.qk_rope_head_dim up to ", kLatentDecodeMaxRope,
                       ", got ", qk_rope_head_dim, "; use kernels.decode_attention: reference");
}

torch::Tensor latent_decode_attention(const torch::Tensor& q_lat_BTHC,
                                      const torch::Tensor& q_pe_BTHP, const torch::Tensor& c_kv_BSC,
                                      const torch::Tensor& k_pe_BSP,
                                      const torch::Tensor& allowed_BTS, double scale, Impl impl,
                                      int num_splits) {
  MOETRON_CHECK(q_lat_BTHC.dim() == 4 && q_pe_BTHP.dim() == 4 &&
                    q_pe_BTHP.sizes().slice(0, 3) == q_lat_BTHC.sizes().slice(0, 3),
                "latent_decode_attention: expected q_lat [B, T, H, C] and q_pe [B, T, H, P], got ",
                q_lat_BTHC.sizes(), ", ", q_pe_BTHP.sizes());
  const int64_t B = q_lat_BTHC.size(0), T = q_lat_BTHC.size(1);
  MOETRON_CHECK(c_kv_BSC.dim() == 3 && k_pe_BSP.dim() == 3 && c_kv_BSC.size(0) == B &&
                    k_pe_BSP.size(0) == B && k_pe_BSP.size(1) == c_kv_BSC.size(1) &&
                    c_kv_BSC.size(2) == q_lat_BTHC.size(3) && k_pe_BSP.size(2) == q_pe_BTHP.size(3),
                "latent_decode_attention: cache c_kv ", c_kv_BSC.sizes(), " and k_pe ",
                k_pe_BSP.sizes(), " do not match q_lat ", q_lat_BTHC.sizes(), " and q_pe ",
                q_pe_BTHP.sizes());
  const int64_t S = c_kv_BSC.size(1);
  MOETRON_CHECK(allowed_BTS.dim() == 3 && allowed_BTS.size(0) == B && allowed_BTS.size(1) == T &&
                    allowed_BTS.size(2) == S && allowed_BTS.scalar_type() == torch::kBool,
                "latent_decode_attention: expected a bool allowed mask [", B, ", ", T, ", ", S,
                "], got ", allowed_BTS.sizes(), " ", allowed_BTS.dtype());
  MOETRON_CHECK(num_splits >= 0, "latent_decode_attention: num_splits must be >= 0, got ",
                num_splits);
  // One dtype for all four (the promoted one), as the einsums would compute in.
  auto dtype =
      c10::promoteTypes(c10::promoteTypes(q_lat_BTHC.scalar_type(), q_pe_BTHP.scalar_type()),
                        c10::promoteTypes(c_kv_BSC.scalar_type(), k_pe_BSP.scalar_type()));
  auto q_lat = q_lat_BTHC.to(dtype), q_pe = q_pe_BTHP.to(dtype);
  auto c_kv = c_kv_BSC.to(dtype), k_pe = k_pe_BSP.to(dtype);
  return impl == Impl::kCuda ? cuda(q_lat, q_pe, c_kv, k_pe, allowed_BTS, scale, num_splits)
                             : reference(q_lat, q_pe, c_kv, k_pe, allowed_BTS, scale);
}

}  // namespace moetron::ops
