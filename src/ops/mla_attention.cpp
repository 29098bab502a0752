// mla_attention: the ATen reference (the specification: chunked over queries so the scores held
// at a time are [B, H, 512, T]), the dispatch to the flash-style CUDA kernels, and the autograd
// node whose backward is mla_attention_backward.
#include "moetron/ops/mla_attention.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>

#include <limits>

#include "cuda_util.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include "moetron/kernels/attention.h"
#endif

namespace moetron::ops {

// Legend: B batch, H heads, T tokens, K q/k head width, V value head width, n query rows of a
// reference chunk, e keys they may see (the chunk's end).

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kKey = "kernels.attention";
constexpr int64_t kReferenceChunk = 512;

// fp32 softmax and sums (fp64 for fp64 inputs: the reference's tight tests).
torch::ScalarType acc_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// Keys 0..e-1 allowed for queries s..s+n-1: bool [1 or B, n, e].
torch::Tensor chunk_mask(int64_t s, int64_t n, int64_t e, const torch::Tensor& seg_BT,
                         const torch::Device& device) {
  const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto causal_ne =
      torch::arange(e, opts).view({1, e}) <= torch::arange(s, s + n, opts).view({n, 1});
  if (!seg_BT.defined()) return causal_ne.unsqueeze(0);
  auto same_Bne = seg_BT.narrow(1, s, n).unsqueeze(2) == seg_BT.narrow(1, 0, e).unsqueeze(1);
  return same_Bne & causal_ne.unsqueeze(0);
}

// Masked, scaled scores of queries s..s+n-1 against keys 0..e-1 in the accumulation dtype.
torch::Tensor chunk_scores(const torch::Tensor& qf, const torch::Tensor& kf, double scale,
                           const torch::Tensor& seg_BT, int64_t s, int64_t n) {
  const int64_t e = s + n;
  auto scores_BHne =
      torch::matmul(qf.narrow(2, s, n), kf.narrow(2, 0, e).transpose(-1, -2)).mul_(scale);
  auto allowed = chunk_mask(s, n, e, seg_BT, qf.device());
  return scores_BHne.masked_fill_(allowed.unsqueeze(1).logical_not(),
                                  -std::numeric_limits<double>::infinity());
}

MlaAttentionForward forward_reference(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, double scale,
                                      const torch::Tensor& seg_BT) {
  const auto acc = acc_type(q);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), V = v.size(3);
  auto qf = q.to(acc), kf = k.to(acc), vf = v.to(acc);
  auto o_BHTV = torch::empty({B, H, T, V}, qf.options());
  auto lse_BHT = torch::empty({B, H, T}, qf.options());
  for (int64_t s = 0; s < T; s += kReferenceChunk) {
    const int64_t n = std::min(kReferenceChunk, T - s);
    auto scores_BHne = chunk_scores(qf, kf, scale, seg_BT, s, n);
    auto lse_BHn = scores_BHne.logsumexp(-1);
    auto p_BHne = (scores_BHne - lse_BHn.unsqueeze(-1)).exp_();
    o_BHTV.narrow(2, s, n).copy_(torch::matmul(p_BHne, vf.narrow(2, 0, s + n)));
    lse_BHT.narrow(2, s, n).copy_(lse_BHn);
  }
  return {o_BHTV.to(q.scalar_type()), lse_BHT};
}

MlaAttentionGrads backward_reference(const torch::Tensor& dout, const torch::Tensor& q,
                                     const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& o, const torch::Tensor& lse, double scale,
                                     const torch::Tensor& seg_BT) {
  const auto acc = acc_type(q);
  const int64_t T = q.size(2);
  auto qf = q.to(acc), kf = k.to(acc), vf = v.to(acc), dof = dout.to(acc);
  auto lse_BHT = lse.to(acc);
  auto D_BHT = (dof * o.to(acc)).sum(-1);
  auto dq = torch::empty_like(qf), dk = torch::zeros_like(kf), dv = torch::zeros_like(vf);
  for (int64_t s = 0; s < T; s += kReferenceChunk) {
    const int64_t n = std::min(kReferenceChunk, T - s), e = s + n;
    auto p_BHne =
        (chunk_scores(qf, kf, scale, seg_BT, s, n) - lse_BHT.narrow(2, s, n).unsqueeze(-1)).exp_();
    auto do_BHnV = dof.narrow(2, s, n);
    dv.narrow(2, 0, e).add_(torch::matmul(p_BHne.transpose(-1, -2), do_BHnV));
    auto dp_BHne = torch::matmul(do_BHnV, vf.narrow(2, 0, e).transpose(-1, -2));
    auto ds_BHne = p_BHne.mul_(dp_BHne.sub_(D_BHT.narrow(2, s, n).unsqueeze(-1)));
    dq.narrow(2, s, n).copy_(torch::matmul(ds_BHne, kf.narrow(2, 0, e)).mul_(scale));
    dk.narrow(2, 0, e).add_(
        torch::matmul(ds_BHne.transpose(-1, -2), qf.narrow(2, s, n)).mul_(scale));
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

// ---- CUDA ------------------------------------------------------------------------------------

#if MOETRON_HAVE_CUDA_KERNELS
void check_cuda(const torch::Tensor& t, const char* what) {
  MOETRON_CHECK(t.is_cuda(), "mla_attention(cuda): ", what, " must be a CUDA tensor, got ",
                t.device());
}

kernels::AttnStrides strides_of(const torch::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}

kernels::MlaAttentionParams params_for(const torch::Tensor& q, const torch::Tensor& k,
                                       const torch::Tensor& v, double scale,
                                       const torch::Tensor& seg) {
  kernels::MlaAttentionParams p;
  p.dtype = detail::attn_dtype(q, kKey);
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.tokens = q.size(2);
  p.head_dim_qk = static_cast<int>(q.size(3));
  p.head_dim_v = static_cast<int>(v.size(3));
  p.scale = static_cast<float>(scale);
  p.q = q.data_ptr();
  p.q_strides = strides_of(q);
  p.k = k.data_ptr();
  p.k_strides = strides_of(k);
  p.v = v.data_ptr();
  p.v_strides = strides_of(v);
  if (seg.defined()) {
    p.segment_ids = seg.data_ptr<int64_t>();
    p.seg_batch = seg.stride(0);
    p.seg_token = seg.stride(1);
  }
  return p;
}
#endif

MlaAttentionForward forward_cuda(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                 const torch::Tensor& v_in, double scale,
                                 const torch::Tensor& seg_BT) {
#if MOETRON_HAVE_CUDA_KERNELS
  check_cuda(q_in, "q");
  check_cuda(k_in, "k");
  check_cuda(v_in, "v");
  check_cuda_mla_attention_supports(q_in.size(3), v_in.size(3));
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto q = detail::unit_last(q_in), k = detail::unit_last(k_in), v = detail::unit_last(v_in);
  auto seg = seg_BT.defined() ? seg_BT.to(q.device(), torch::kInt64) : torch::Tensor();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), V = v.size(3);
  MlaAttentionForward out;
  out.o_BHTV = torch::empty({B, H, T, V}, q.options());
  out.lse_BHT = torch::empty({B, H, T}, q.options().dtype(torch::kFloat32));
  auto p = params_for(q, k, v, scale, seg);
  p.out = out.o_BHTV.data_ptr();
  p.lse = out.lse_BHT.data_ptr<float>();
  detail::check_launch(kernels::launch_mla_attention_forward(p, detail::stream_of(q)),
                       "mla_attention");
  return out;
#else
  (void)q_in, (void)k_in, (void)v_in, (void)scale, (void)seg_BT;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

MlaAttentionGrads backward_cuda(const torch::Tensor& dout_in, const torch::Tensor& q_in,
                                const torch::Tensor& k_in, const torch::Tensor& v_in,
                                const torch::Tensor& o_in, const torch::Tensor& lse_in,
                                double scale, const torch::Tensor& seg_BT) {
#if MOETRON_HAVE_CUDA_KERNELS
  check_cuda(dout_in, "grad");
  check_cuda(q_in, "q");
  check_cuda(k_in, "k");
  check_cuda(v_in, "v");
  check_cuda_mla_attention_supports(q_in.size(3), v_in.size(3));
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto q = detail::unit_last(q_in), k = detail::unit_last(k_in), v = detail::unit_last(v_in);
  auto dout = detail::unit_last(dout_in.to(q.scalar_type()));
  auto o = o_in.to(q.scalar_type()).contiguous();
  auto lse = lse_in.to(torch::kFloat32).contiguous();
  auto seg = seg_BT.defined() ? seg_BT.to(q.device(), torch::kInt64) : torch::Tensor();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), K = q.size(3), V = v.size(3);
  MlaAttentionGrads g;
  g.dq_BHTK = torch::empty({B, H, T, K}, q.options());
  g.dk_BHTK = torch::empty({B, H, T, K}, q.options());
  g.dv_BHTV = torch::empty({B, H, T, V}, q.options());
  const size_t ws_bytes = kernels::mla_attention_backward_workspace_bytes(B, H, T);
  auto ws = torch::empty({static_cast<int64_t>(ws_bytes / sizeof(float))},
                         q.options().dtype(torch::kFloat32));
  kernels::MlaAttentionBackwardParams p;
  p.fwd = params_for(q, k, v, scale, seg);
  p.fwd.out = o.data_ptr();
  p.fwd.lse = lse.data_ptr<float>();
  p.grad_out = dout.data_ptr();
  p.grad_out_strides = strides_of(dout);
  p.grad_q = g.dq_BHTK.data_ptr();
  p.grad_k = g.dk_BHTK.data_ptr();
  p.grad_v = g.dv_BHTV.data_ptr();
  p.workspace = ws_bytes > 0 ? ws.data_ptr() : nullptr;
  p.workspace_bytes = ws_bytes;
  detail::check_launch(kernels::launch_mla_attention_backward(p, detail::stream_of(q)),
                       "mla_attention_backward");
  return g;
#else
  (void)dout_in, (void)q_in, (void)k_in, (void)v_in, (void)o_in, (void)lse_in, (void)scale,
      (void)seg_BT;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& seg_BT) {
  MOETRON_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 &&
                    v.sizes().slice(0, 3) == q.sizes().slice(0, 3),
                "mla_attention: expected q, k [B, H, T, K] and v [B, H, T, V], got ", q.sizes(),
                ", ", k.sizes(), ", ", v.sizes());
  MOETRON_CHECK(q.is_floating_point() && k.is_floating_point() && v.is_floating_point(),
                "mla_attention: expected floating q, k, v, got ", q.dtype(), ", ", k.dtype(), ", ",
                v.dtype());
  MOETRON_CHECK(q.size(3) >= 1 && v.size(3) >= 1, "mla_attention: empty heads (K = ", q.size(3),
                ", V = ", v.size(3), ")");
  if (seg_BT.defined()) {
    MOETRON_CHECK(seg_BT.dim() == 2 && seg_BT.size(0) == q.size(0) && seg_BT.size(1) == q.size(2) &&
                      !seg_BT.is_floating_point(),
                  "mla_attention: expected integer segment_ids [", q.size(0), ", ", q.size(2),
                  "], got ", seg_BT.sizes(), " ", seg_BT.dtype());
  }
}

// The optional segment ids travel wrapped: autograd::Function treats a bare (possibly undefined)
// tensor argument as a differentiable input and cannot describe an undefined one.
struct Segments {
  torch::Tensor ids_BT;
};

struct MlaAttentionFn : public torch::autograd::Function<MlaAttentionFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_BHTK,
                               const torch::Tensor& k_BHTK, const torch::Tensor& v_BHTV,
                               double scale, const Segments& seg, Impl impl) {
    auto f = mla_attention_forward(q_BHTK, k_BHTK, v_BHTV, scale, seg.ids_BT, impl);
    ctx->save_for_backward({q_BHTK, k_BHTK, v_BHTV, f.o_BHTV, f.lse_BHT});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["impl"] = static_cast<int64_t>(impl);
    if (seg.ids_BT.defined()) ctx->saved_data["seg"] = seg.ids_BT;
    return f.o_BHTV;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto impl = static_cast<Impl>(ctx->saved_data["impl"].toInt());
    const double scale = ctx->saved_data["scale"].toDouble();
    const auto it = ctx->saved_data.find("seg");
    const torch::Tensor seg = it != ctx->saved_data.end() ? it->second.toTensor() : torch::Tensor();
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto g = mla_attention_backward(grads[0], s[0], s[1], s[2], s[3], s[4], scale, seg, impl);
    return {g.dq_BHTK, g.dk_BHTK, g.dv_BHTV, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

void check_cuda_mla_attention_supports(int64_t qk_head_dim, int64_t v_head_dim) {
  if (!cuda_kernels_built()) detail::throw_no_cuda_kernels(kKey);
#if MOETRON_HAVE_CUDA_KERNELS
  static_assert(kMlaAttentionMaxHeadDim == kernels::kMlaAttentionMaxHeadDim);
#endif
  MOETRON_CHECK_CONFIG(
      qk_head_dim <= kMlaAttentionMaxHeadDim && v_head_dim <= kMlaAttentionMaxHeadDim, kKey,
      ": cuda supports head widths up to ", kMlaAttentionMaxHeadDim, ", got q/k ", qk_head_dim,
      " (qk_nope_head_dim + qk_rope_head_dim) and v ", v_head_dim,
      " (v_head_dim); use kernels.attention: reference");
}

MlaAttentionForward mla_attention_forward(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                                          const torch::Tensor& v_BHTV, double scale,
                                          const torch::Tensor& segment_ids_BT, Impl impl) {
  check_inputs(q_BHTK, k_BHTK, v_BHTV, segment_ids_BT);
  MOETRON_CHECK(
      k_BHTK.scalar_type() == q_BHTK.scalar_type() && v_BHTV.scalar_type() == q_BHTK.scalar_type(),
      "mla_attention: q, k, v must share a dtype, got ", q_BHTK.dtype(), ", ", k_BHTK.dtype(), ", ",
      v_BHTV.dtype());
  return impl == Impl::kCuda ? forward_cuda(q_BHTK, k_BHTK, v_BHTV, scale, segment_ids_BT)
                             : forward_reference(q_BHTK, k_BHTK, v_BHTV, scale, segment_ids_BT);
}

MlaAttentionGrads mla_attention_backward(const torch::Tensor& grad_o_BHTV,
                                         const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                                         const torch::Tensor& v_BHTV, const torch::Tensor& o_BHTV,
                                         const torch::Tensor& lse_BHT, double scale,
                                         const torch::Tensor& segment_ids_BT, Impl impl) {
  check_inputs(q_BHTK, k_BHTK, v_BHTV, segment_ids_BT);
  MOETRON_CHECK(grad_o_BHTV.sizes() == v_BHTV.sizes() && o_BHTV.sizes() == v_BHTV.sizes() &&
                    lse_BHT.sizes() == q_BHTK.sizes().slice(0, 3),
                "mla_attention backward: grad ", grad_o_BHTV.sizes(), ", O ", o_BHTV.sizes(),
                " and lse ", lse_BHT.sizes(), " do not match v ", v_BHTV.sizes());
  return impl == Impl::kCuda ? backward_cuda(grad_o_BHTV, q_BHTK, k_BHTK, v_BHTV, o_BHTV, lse_BHT,
                                             scale, segment_ids_BT)
                             : backward_reference(grad_o_BHTV, q_BHTK, k_BHTK, v_BHTV, o_BHTV,
                                                  lse_BHT, scale, segment_ids_BT);
}

torch::Tensor mla_attention(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                            const torch::Tensor& v_BHTV, double scale,
                            const torch::Tensor& segment_ids_BT, Impl impl) {
  check_inputs(q_BHTK, k_BHTK, v_BHTV, segment_ids_BT);
  // One dtype for the node: the autocast dtype when autocast is on for the device (as SDPA),
  // else the promoted type of the three (a differentiable cast outside the node).
  const auto device_type = q_BHTK.device().type();
  const auto dtype =
      at::autocast::is_autocast_enabled(device_type)
          ? at::autocast::get_autocast_dtype(device_type)
          : c10::promoteTypes(c10::promoteTypes(q_BHTK.scalar_type(), k_BHTK.scalar_type()),
                              v_BHTV.scalar_type());
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return MlaAttentionFn::apply(q_BHTK.to(dtype), k_BHTK.to(dtype), v_BHTV.to(dtype), scale,
                               Segments{segment_ids_BT}, impl);
}

}  // namespace moetron::ops
