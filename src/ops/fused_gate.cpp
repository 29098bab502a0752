// fused_gate: the ATen reference (SPEC 2.2, the same steps as model::route()), the dispatch to
// the CUDA kernel, and the autograd node whose backward is fused_gate_backward.
#include "moetron/ops/fused_gate.h"

#include <limits>

#include <torch/torch.h>

#include "cuda_util.h"
#include "moetron/ops/cpu_fused.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include "moetron/kernels/routing.h"
#endif

namespace moetron::ops {

// Legend: T tokens, E experts, K experts per token, G groups.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// route()'s weight rule: noaux_tc normalises when norm_topk_prob, then scales; the V2 family
// normalises when norm_topk_prob and K > 1, otherwise scales (hub V2 code, SPEC 2.2).
bool normalizes(const GateSpec& spec) {
  return spec.method == GateTopk::kNoauxTc ? spec.norm_topk_prob
                                           : spec.top_k > 1 && spec.norm_topk_prob;
}
bool scales(const GateSpec& spec) {
  return spec.method == GateTopk::kNoauxTc || !normalizes(spec);
}

void check_inputs(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                  const GateSpec& spec) {
  MOETRON_CHECK(logits_TE.dim() == 2, "fused_gate: expected logits [T, E], got ",
                logits_TE.sizes());
  MOETRON_CHECK(logits_TE.is_floating_point(), "fused_gate: logits must be floating, got ",
                logits_TE.dtype());
  const int64_t E = logits_TE.size(1);
  MOETRON_CHECK(E >= 1, "fused_gate: no experts");
  MOETRON_CHECK(spec.top_k >= 1 && spec.top_k <= E, "fused_gate: top_k must be in [1, ", E,
                "], got ", spec.top_k);
  if (is_grouped(spec)) {
    MOETRON_CHECK(E % spec.n_group == 0, "fused_gate: n_group ", spec.n_group, " must divide the ",
                  E, " experts");
    MOETRON_CHECK(spec.topk_group >= 1 && spec.topk_group <= spec.n_group,
                  "fused_gate: topk_group must be in [1, n_group=", spec.n_group, "], got ",
                  spec.topk_group);
    MOETRON_CHECK(spec.top_k <= spec.topk_group * (E / spec.n_group), "fused_gate: top_k ",
                  spec.top_k, " exceeds the ", spec.topk_group * (E / spec.n_group),
                  " experts of the kept groups");
  }
  if (bias_E.defined()) {
    MOETRON_CHECK(bias_E.dim() == 1 && bias_E.size(0) == E, "fused_gate: expected bias [", E,
                  "], got ", bias_E.sizes());
    MOETRON_CHECK(bias_E.device() == logits_TE.device(), "fused_gate: bias on ", bias_E.device(),
                  " but logits on ", logits_TE.device());
  }
}

torch::Tensor score(const torch::Tensor& logits_TE, const GateSpec& spec) {
  return spec.scoring == GateScoring::kSigmoid ? torch::sigmoid(logits_TE)
                                               : torch::softmax(logits_TE, -1);
}

// The combine weights of the chosen experts: gathered from the unbiased scores, normalised and /
// or scaled by the rule (SPEC 2.2 steps 6-7).
torch::Tensor combine_weights(const torch::Tensor& scores_TE, const torch::Tensor& topk_idx_TK,
                              const GateSpec& spec) {
  auto w_TK = scores_TE.gather(1, topk_idx_TK);
  if (normalizes(spec)) w_TK = w_TK / (w_TK.sum(-1, true) + 1e-20);
  if (scales(spec)) w_TK = w_TK * spec.routed_scaling_factor;
  return w_TK;
}

// The specification: ATen ops in the order of SPEC 2.2 (and of model::route()).
FusedGateOutput gate_reference(const torch::Tensor& logits, const torch::Tensor& bias_E,
                               const GateSpec& spec) {
  torch::NoGradGuard no_grad;
  const int64_t T = logits.size(0), E = logits.size(1), K = spec.top_k, G = spec.n_group;
  // fp32 as route(); fp64 stays fp64 so finite differences can check the backward.
  const auto dtype = logits.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto logits_TE = logits.to(dtype);
  auto scores_TE = score(logits_TE, spec);
  auto choice_TE = bias_E.defined() ? scores_TE + bias_E.to(dtype) : scores_TE;
  if (is_grouped(spec)) {
    auto choice_TGS = choice_TE.view({T, G, E / G});
    torch::Tensor group_TG;
    if (spec.method == GateTopk::kNoauxTc) {
      group_TG = std::get<0>(choice_TGS.topk(std::min<int64_t>(2, E / G), -1)).sum(-1);
    } else {
      group_TG = std::get<0>(choice_TGS.max(-1));
    }
    auto keep_TG = std::get<1>(group_TG.topk(spec.topk_group, -1));
    auto mask_TG =
        torch::zeros({T, G}, choice_TE.options().dtype(torch::kBool)).scatter(1, keep_TG, true);
    choice_TE =
        choice_TGS.masked_fill(~mask_TG.unsqueeze(-1), -std::numeric_limits<double>::infinity())
            .view({T, E});
  }
  auto topk_idx_TK = std::get<1>(choice_TE.topk(K, -1));
  // index_add, not bincount: no host sync on CUDA.
  auto idx_N = topk_idx_TK.reshape(-1);
  auto counts_E = torch::zeros({E}, idx_N.options()).index_add_(0, idx_N, torch::ones_like(idx_N));
  return {topk_idx_TK, combine_weights(scores_TE, topk_idx_TK, spec), scores_TE, counts_E};
}

// fp32 CPU: the reference's scores and weights, the selection one token per iteration
// (cpu::gate_select, which equals the top-k chain above without its ~10 ops).
FusedGateOutput gate_cpu(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                         const GateSpec& spec) {
  torch::NoGradGuard no_grad;
  auto scores_TE = score(logits_TE, spec);
  auto sel = cpu::gate_select(scores_TE, bias_E, spec);
  return {sel.topk_idx_TK, combine_weights(scores_TE, sel.topk_idx_TK, spec), scores_TE,
          sel.counts_E};
}

FusedGateOutput gate_cuda(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                          const GateSpec& spec) {
  const int64_t T = logits_TE.size(0), E = logits_TE.size(1), K = spec.top_k;
  check_cuda_gate_supports(E, spec);
#if MOETRON_HAVE_CUDA_KERNELS
  MOETRON_CHECK(logits_TE.is_cuda(), "fused_gate(cuda): logits must be a CUDA tensor, got ",
                logits_TE.device());
  MOETRON_CHECK(logits_TE.scalar_type() == torch::kFloat32,
                "fused_gate(cuda): logits must be fp32 (the router computes in fp32), got ",
                logits_TE.dtype());
  const c10::cuda::CUDAGuard guard(logits_TE.device());
  auto logits = logits_TE.contiguous();
  torch::Tensor bias;
  if (bias_E.defined()) bias = bias_E.to(torch::kFloat32).contiguous();
  const auto f32 = logits.options();
  FusedGateOutput out;
  out.topk_idx_TK = torch::empty({T, K}, f32.dtype(torch::kInt64));
  out.topk_weight_TK = torch::empty({T, K}, f32);
  out.scores_TE = torch::empty({T, E}, f32);
  out.counts_E = torch::empty({E}, f32.dtype(torch::kInt64));
  kernels::FusedGateParams p;
  p.logits = logits.data_ptr<float>();
  p.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  p.num_tokens = T;
  p.n_experts = static_cast<int>(E);
  p.top_k = static_cast<int>(K);
  p.n_group = is_grouped(spec) ? static_cast<int>(spec.n_group) : 1;
  p.topk_group = is_grouped(spec) ? static_cast<int>(spec.topk_group) : 1;
  p.scoring = spec.scoring == GateScoring::kSigmoid ? kernels::GateScoring::kSigmoid
                                                    : kernels::GateScoring::kSoftmax;
  p.group_score =
      spec.method == GateTopk::kNoauxTc ? kernels::GroupScore::kTop2Sum : kernels::GroupScore::kMax;
  p.normalize = normalizes(spec);
  // Multiplying by 1 is exact, so "no scaling" is scale 1.
  p.scale = scales(spec) ? static_cast<float>(spec.routed_scaling_factor) : 1.0f;
  p.topk_idx = out.topk_idx_TK.data_ptr<int64_t>();
  p.topk_weight = out.topk_weight_TK.data_ptr<float>();
  p.scores = out.scores_TE.data_ptr<float>();
  p.counts = out.counts_E.data_ptr<int64_t>();
  detail::check_launch(kernels::launch_fused_gate(p, detail::stream_of(logits)), "fused_gate");
  return out;
#else
  (void)T, (void)K, (void)bias_E;
  detail::throw_no_cuda_kernels("kernels.gate");
#endif
}

// The bias reaches the node as a plain argument: it takes no gradient, and custom autograd
// functions do not accept undefined tensor inputs (no bias).
struct SelectionBias {
  torch::Tensor bias_E;
};

// One autograd node: d logits from d weights and d scores; indices and counts carry none.
struct FusedGateFn : public torch::autograd::Function<FusedGateFn> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& logits_TE,
                               const SelectionBias& bias, const GateSpec& spec, Impl impl) {
    // fp32 CPU: the selection one token per iteration (gate_cpu), the same outputs.
    const bool cpu_loops = impl == Impl::kReference && cpu::gate_select_supported(logits_TE);
    auto out = cpu_loops ? gate_cpu(logits_TE, bias.bias_E, spec)
                         : fused_gate_forward(logits_TE, bias.bias_E, spec, impl);
    ctx->mark_non_differentiable({out.topk_idx_TK, out.counts_E});
    ctx->save_for_backward({out.scores_TE, out.topk_idx_TK});
    ctx->saved_data["scoring"] = static_cast<int64_t>(spec.scoring);
    ctx->saved_data["method"] = static_cast<int64_t>(spec.method);
    ctx->saved_data["top_k"] = spec.top_k;
    ctx->saved_data["n_group"] = spec.n_group;
    ctx->saved_data["topk_group"] = spec.topk_group;
    ctx->saved_data["norm"] = spec.norm_topk_prob;
    ctx->saved_data["rsf"] = spec.routed_scaling_factor;
    return {out.topk_idx_TK, out.topk_weight_TK, out.scores_TE, out.counts_E};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    GateSpec spec;
    spec.scoring = static_cast<GateScoring>(ctx->saved_data["scoring"].toInt());
    spec.method = static_cast<GateTopk>(ctx->saved_data["method"].toInt());
    spec.top_k = ctx->saved_data["top_k"].toInt();
    spec.n_group = ctx->saved_data["n_group"].toInt();
    spec.topk_group = ctx->saved_data["topk_group"].toInt();
    spec.norm_topk_prob = ctx->saved_data["norm"].toBool();
    spec.routed_scaling_factor = ctx->saved_data["rsf"].toDouble();
    auto d_logits = fused_gate_backward(grads[1], grads[2], saved[0], saved[1], spec);
    return {d_logits, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool is_grouped(const GateSpec& spec) {
  return spec.method != GateTopk::kGreedy && spec.n_group > 1;
}

void check_cuda_gate_supports(int64_t n_experts, const GateSpec& spec) {
  if (!cuda_kernels_built()) detail::throw_no_cuda_kernels("kernels.gate");
#if MOETRON_HAVE_CUDA_KERNELS
  const char* use_ref = "; use kernels.gate: reference";
  MOETRON_CHECK_CONFIG(n_experts <= kernels::kFusedGateMaxExperts,
                       "kernels.gate: cuda supports at most ", kernels::kFusedGateMaxExperts,
                       " experts, got n_routed_experts = ", n_experts, use_ref);
  MOETRON_CHECK_CONFIG(spec.top_k <= kernels::kFusedGateMaxTopK,
                       "kernels.gate: cuda supports num_experts_per_tok <= ",
                       kernels::kFusedGateMaxTopK, ", got ", spec.top_k, use_ref);
  if (is_grouped(spec)) {
    MOETRON_CHECK_CONFIG(spec.n_group <= kernels::kFusedGateMaxGroups,
                         "kernels.gate: cuda supports n_group <= ", kernels::kFusedGateMaxGroups,
                         ", got ", spec.n_group, use_ref);
  }
#else
  (void)n_experts, (void)spec;
#endif
}

FusedGateOutput fused_gate_forward(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                                   const GateSpec& spec, Impl impl) {
  check_inputs(logits_TE, bias_E, spec);
  return impl == Impl::kCuda ? gate_cuda(logits_TE, bias_E, spec)
                             : gate_reference(logits_TE, bias_E, spec);
}

FusedGateOutput fused_gate(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                           const GateSpec& spec, Impl impl) {
  // fp32 logits (fp64 kept for tests) outside the node: a differentiable cast, as route().
  const auto dtype = logits_TE.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto out = FusedGateFn::apply(logits_TE.to(dtype), SelectionBias{bias_E}, spec, impl);
  return {out[0], out[1], out[2], out[3]};
}

// The chain rule of route() written out, operation for operation as autograd runs it through
// route() (mul by the scale, div by sum + 1e-20, gather, sigmoid/softmax), so it matches it to
// the last bit on the same device.
torch::Tensor fused_gate_backward(const torch::Tensor& grad_weight_TK,
                                  const torch::Tensor& grad_scores_TE,
                                  const torch::Tensor& scores_TE, const torch::Tensor& topk_idx_TK,
                                  const GateSpec& spec) {
  if (!grad_weight_TK.defined() && !grad_scores_TE.defined()) return torch::Tensor();
  auto ds_TE = grad_scores_TE.defined() ? grad_scores_TE.to(scores_TE.scalar_type()).clone()
                                        : torch::zeros_like(scores_TE);
  if (grad_weight_TK.defined()) {
    auto dw_TK = grad_weight_TK.to(scores_TE.scalar_type());
    if (scales(spec)) dw_TK = dw_TK * spec.routed_scaling_factor;
    torch::Tensor dg_TK = dw_TK;
    if (normalizes(spec)) {
      // w = g / den, den = Σ_k g + 1e-20: dg = dw / den + Σ_k (-dw · ((g / den) / den)).
      auto g_TK = scores_TE.gather(1, topk_idx_TK);
      auto den_T1 = g_TK.sum(-1, true) + 1e-20;
      dg_TK = dw_TK / den_T1 + (-dw_TK * ((g_TK / den_T1) / den_T1)).sum(-1, true);
    }
    ds_TE.scatter_add_(1, topk_idx_TK, dg_TK);
  }
  if (spec.scoring == GateScoring::kSigmoid) return at::sigmoid_backward(ds_TE, scores_TE);
  return at::_softmax_backward_data(ds_TE, scores_TE, -1, scores_TE.scalar_type());
}

}  // namespace moetron::ops
