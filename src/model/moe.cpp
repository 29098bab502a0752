// DeepSeekMoE (SPEC 2): router, local dispatcher, stacked experts, MoE layer, balance loss.
#include "moetron/model/moe.h"

#include <limits>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/ops/cpu_fused.h"
#include "moetron/ops/cpu_gemm.h"
#include "moetron/ops/expert_counts.h"
#include "moetron/ops/fused_gate.h"
#include "moetron/ops/grouped_swiglu.h"
#include "moetron/ops/permute.h"

namespace moetron::model {

// Legend: B batch, T tokens (T = B·T_seq once flattened), D hidden, I expert width, E routed
// experts, K experts per token, G groups, N routed rows (token copies sent to experts).

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

// ---- MLP ------------------------------------------------------------------------------------

MlpImpl::MlpImpl(int64_t hidden, int64_t intermediate) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate));
  up_proj = register_module("up_proj", Linear(hidden, intermediate));
  down_proj = register_module("down_proj", Linear(intermediate, hidden));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x_ND) {
  return down_proj(torch::silu(gate_proj(x_ND)) * up_proj(x_ND));
}

void MlpImpl::reset_parameters(double std) {
  torch::NoGradGuard no_grad;
  for (auto* lin : {&gate_proj, &up_proj, &down_proj}) (*lin)->weight.normal_(0.0, std);
}

// ---- router -----------------------------------------------------------------------------------

GateOutput route(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                 const config::MoeConfig& moe) {
  MOETRON_CHECK(logits_TE.dim() == 2, "route: expected logits [T, E], got ", logits_TE.sizes());
  const int64_t T = logits_TE.size(0), E = logits_TE.size(1);
  const int64_t K = moe.num_experts_per_tok;
  const int64_t G = moe.n_group;
  auto logits = logits_TE.to(torch::kFloat32);
  auto scores_TE = moe.scoring_func == config::ScoringFunc::kSigmoid ? torch::sigmoid(logits)
                                                                     : torch::softmax(logits, -1);
  torch::Tensor topk_idx_TK;
  {
    // Selection carries no gradient; weights are gathered from scores_TE below.
    torch::NoGradGuard no_grad;
    auto choice_TE = scores_TE.detach();
    if (bias_E.defined()) choice_TE = choice_TE + bias_E.to(torch::kFloat32);
    const bool grouped = moe.topk_method != config::TopkMethod::kGreedy && G > 1;
    if (grouped) {
      auto choice_TGS = choice_TE.view({T, G, E / G});
      torch::Tensor group_TG;
      if (moe.topk_method == config::TopkMethod::kNoauxTc) {
        // Sum of the two best experts per group (= K_r / M in V3, SPEC 2.2 step 4).
        group_TG = std::get<0>(choice_TGS.topk(std::min<int64_t>(2, E / G), -1)).sum(-1);
      } else {
        group_TG = std::get<0>(choice_TGS.max(-1));
      }
      auto keep_TG = std::get<1>(group_TG.topk(moe.topk_group, -1));
      auto group_mask_TG =
          torch::zeros({T, G}, choice_TE.options().dtype(torch::kBool)).scatter(1, keep_TG, true);
      // -inf, not 0.0: a dropped group must never win even when biased scores are negative.
      choice_TE = choice_TGS.masked_fill(~group_mask_TG.unsqueeze(-1), kNegInf).view({T, E});
    }
    topk_idx_TK = std::get<1>(choice_TE.topk(K, -1));
  }
  auto topk_weight_TK = scores_TE.gather(1, topk_idx_TK);
  if (moe.topk_method == config::TopkMethod::kNoauxTc) {
    if (moe.norm_topk_prob)
      topk_weight_TK = topk_weight_TK / (topk_weight_TK.sum(-1, true) + 1e-20);
    topk_weight_TK = topk_weight_TK * moe.routed_scaling_factor;
  } else if (K > 1 && moe.norm_topk_prob) {
    topk_weight_TK = topk_weight_TK / (topk_weight_TK.sum(-1, true) + 1e-20);
  } else {
    topk_weight_TK = topk_weight_TK * moe.routed_scaling_factor;
  }
  return {topk_idx_TK, topk_weight_TK, scores_TE, torch::Tensor()};
}

GateImpl::GateImpl(int64_t hidden, const config::MoeConfig& moe) : moe_(moe) {
  const int64_t E = moe.n_routed_experts.value_or(0);
  weight = register_parameter("weight", torch::empty({E, hidden}));
  if (moe.topk_method == config::TopkMethod::kNoauxTc) {
    // fp32 buffer: selection only, updated outside autograd (SPEC 2.3).
    e_score_correction_bias =
        register_buffer("e_score_correction_bias", torch::zeros({E}, torch::kFloat32));
  }
}

void GateImpl::reset_parameters(double std) {
  torch::NoGradGuard no_grad;
  weight.normal_(0.0, std);
  if (e_score_correction_bias.defined()) e_score_correction_bias.zero_();
}

void GateImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  if (e_score_correction_bias.defined()) {
    e_score_correction_bias.set_data(e_score_correction_bias.to(torch::kFloat32));
  }
}

void GateImpl::to(torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(dtype, non_blocking);
  if (e_score_correction_bias.defined()) {
    e_score_correction_bias.set_data(e_score_correction_bias.to(torch::kFloat32));
  }
}

namespace {
ops::GateSpec gate_spec(const config::MoeConfig& moe) {
  ops::GateSpec spec;
  spec.scoring = moe.scoring_func == config::ScoringFunc::kSigmoid ? ops::GateScoring::kSigmoid
                                                                   : ops::GateScoring::kSoftmax;
  spec.method = moe.topk_method == config::TopkMethod::kNoauxTc ? ops::GateTopk::kNoauxTc
                : moe.topk_method == config::TopkMethod::kGreedy
                    ? ops::GateTopk::kGreedy
                    : ops::GateTopk::kGroupLimitedGreedy;
  spec.top_k = moe.num_experts_per_tok;
  spec.n_group = moe.n_group;
  spec.topk_group = moe.topk_group;
  spec.norm_topk_prob = moe.norm_topk_prob;
  spec.routed_scaling_factor = moe.routed_scaling_factor;
  return spec;
}
}  // namespace

void GateImpl::set_impl(ops::Impl impl) {
  // Fail at construction, not at the first step, when the kernel cannot serve this router.
  if (impl == ops::Impl::kCuda) ops::check_cuda_gate_supports(weight.size(0), gate_spec(moe_));
  impl_ = impl;
}

GateOutput GateImpl::forward(const torch::Tensor& x_TD) {
  auto logits_TE = ops::cpu::linear(x_TD.to(torch::kFloat32), weight.to(torch::kFloat32));
  // The CUDA kernel, or on CPU (fp32) the fused node, whose selection runs one token per
  // iteration: route()'s outputs, bit for bit, in a few ops instead of ~15.
  const auto spec = gate_spec(moe_);
  if (impl_ == ops::Impl::kCuda || ops::cpu::gate_select_supported(logits_TE)) {
    auto g = ops::fused_gate(logits_TE, e_score_correction_bias, spec, impl_);
    return {g.topk_idx_TK, g.topk_weight_TK, g.scores_TE, g.counts_E};
  }
  return route(logits_TE, e_score_correction_bias, moe_);
}

// ---- local dispatcher -------------------------------------------------------------------------

DispatchState LocalTokenDispatcher::dispatch(const torch::Tensor& x_TD,
                                             const torch::Tensor& topk_idx_TK,
                                             const torch::Tensor& topk_weight_TK,
                                             const torch::Tensor& counts_E) {
  const int64_t K = topk_idx_TK.size(1);
  DispatchState st;
  st.num_tokens = x_TD.size(0);
  if (permute_impl_ == ops::Impl::kCuda) {
    auto p = ops::permute(x_TD, topk_idx_TK, counts_E.size(0), permute_impl_);
    st.x_ND = p.x_ND;
    st.token_idx_N = p.index.token_idx_N;
    st.row_TK = p.index.row_TK;
    st.weight_TK = topk_weight_TK;
    // The one host sync: the permute's own counts, which also prove every index was in range.
    auto counts_cpu = p.index.counts_E.to(torch::kCPU).contiguous();
    st.counts.assign(counts_cpu.data_ptr<int64_t>(),
                     counts_cpu.data_ptr<int64_t>() + counts_cpu.numel());
    int64_t rows = 0;
    for (const int64_t n : st.counts) rows += n;
    MOETRON_CHECK(rows == topk_idx_TK.numel(), "dispatch: ", topk_idx_TK.numel() - rows,
                  " expert indices outside [0, ", counts_E.size(0), ")");
    return st;
  }
  // Stable: rows of one expert keep token order, so results are deterministic.
  auto order_N = std::get<1>(topk_idx_TK.reshape(-1).sort(/*stable=*/true, 0, false));
  st.token_idx_N = order_N.div(K, "floor");
  st.weight_N = topk_weight_TK.reshape(-1).index_select(0, order_N);
  st.x_ND = x_TD.index_select(0, st.token_idx_N);
  // The one host sync of the layer: expert slice sizes must be known on the host.
  auto counts_cpu = counts_E.to(torch::kCPU, torch::kInt64).contiguous();
  st.counts.assign(counts_cpu.data_ptr<int64_t>(),
                   counts_cpu.data_ptr<int64_t>() + counts_cpu.numel());
  return st;
}

torch::Tensor LocalTokenDispatcher::combine(const torch::Tensor& y_ND, const DispatchState& st) {
  if (st.row_TK.defined()) return ops::unpermute(y_ND, st.row_TK, st.weight_TK, permute_impl_);
  // Weighted sum in fp32 (the gate weights' dtype, as HF), cast back once.
  auto weighted_ND = y_ND.to(torch::kFloat32) * st.weight_N.unsqueeze(1);
  auto out_TD = torch::zeros({st.num_tokens, y_ND.size(1)}, weighted_ND.options());
  return out_TD.index_add(0, st.token_idx_N, weighted_ND).to(y_ND.scalar_type());
}

// ---- experts ------------------------------------------------------------------------------------

ExpertsImpl::ExpertsImpl(int64_t n_experts, int64_t hidden, int64_t intermediate) {
  gate_proj = register_parameter("gate_proj", torch::empty({n_experts, intermediate, hidden}));
  up_proj = register_parameter("up_proj", torch::empty({n_experts, intermediate, hidden}));
  down_proj = register_parameter("down_proj", torch::empty({n_experts, hidden, intermediate}));
}

void ExpertsImpl::reset_parameters(double std) {
  torch::NoGradGuard no_grad;
  gate_proj.normal_(0.0, std);
  up_proj.normal_(0.0, std);
  down_proj.normal_(0.0, std);
}

void ExpertsImpl::shard(int64_t first, int64_t count, int64_t total) {
  MOETRON_CHECK(first_ == 0 && total_ < 0, "experts: already sharded");
  MOETRON_CHECK(total == n_experts() && first >= 0 && count > 0 && first + count <= total,
                "experts: cannot keep experts [", first, ", ", first + count, ") of ", n_experts());
  torch::NoGradGuard no_grad;
  for (auto* p : {&gate_proj, &up_proj, &down_proj}) {
    p->set_data(p->narrow(0, first, count).clone());
  }
  first_ = first;
  total_ = total;
}

void ExpertsImpl::set_impl(ops::Impl impl) {
  if (impl == ops::Impl::kCuda) ops::check_cuda_grouped_gemm_supported();
  impl_ = impl;
}

torch::Tensor ExpertsImpl::forward(const torch::Tensor& x_ND, const std::vector<int64_t>& counts,
                                   int64_t first_expert) {
  // Under autocast the matmuls run in the autocast dtype, as autocast would run them one by
  // one: cast once here (differentiably, so fp32 master weights get their gradients) and keep
  // autocast out of the grouped op, whose out= matmuls it would not handle.
  auto dtype = x_ND.scalar_type();
  const auto device_type = x_ND.device().type();
  if (at::autocast::is_autocast_enabled(device_type)) {
    dtype = at::autocast::get_autocast_dtype(device_type);
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return ops::grouped_swiglu(x_ND.contiguous().to(dtype), gate_proj.to(dtype), up_proj.to(dtype),
                             down_proj.to(dtype), counts, first_expert, impl_);
}

// ---- MoE layer ----------------------------------------------------------------------------------

torch::Tensor sequence_balance_loss(const torch::Tensor& scores_BTE,
                                    const torch::Tensor& indicator_idx_BTK, double alpha) {
  const int64_t T = scores_BTE.size(1), E = scores_BTE.size(2);
  const int64_t K = indicator_idx_BTK.size(2);
  torch::Tensor f_BE;
  {
    torch::NoGradGuard no_grad;  // f is a count: a constant for the gradient (SPEC 2.4)
    auto hits_BTE = torch::zeros_like(scores_BTE, scores_BTE.options().dtype(torch::kFloat32))
                        .scatter_(2, indicator_idx_BTK, 1.0);
    f_BE = hits_BTE.sum(1) * (static_cast<double>(E) / static_cast<double>(K * T));
  }
  auto s = scores_BTE.to(torch::kFloat32);
  auto p_BE = (s / s.sum(-1, true)).mean(1);  // renormalised affinities s' (SPEC 8.8)
  return alpha * (f_BE * p_BE).sum(-1).mean();
}

MoeImpl::MoeImpl(int64_t hidden, const config::MoeConfig& moe)
    : moe_(moe), dispatcher_(std::make_shared<LocalTokenDispatcher>()) {
  MOETRON_CHECK_CONFIG(moe.n_routed_experts && *moe.n_routed_experts > 0,
                       "moe.n_routed_experts must be set for an MoE layer");
  const int64_t E = *moe.n_routed_experts;
  gate = register_module("gate", Gate(hidden, moe));
  experts = register_module("experts", Experts(E, hidden, moe.moe_intermediate_size));
  if (moe.n_shared_experts > 0) {
    shared_experts = register_module("shared_experts",
                                     Mlp(hidden, moe.moe_intermediate_size * moe.n_shared_experts));
  }
}

void MoeImpl::reset_parameters(double std) {
  gate->reset_parameters(std);
  experts->reset_parameters(std);
  if (!shared_experts.is_empty()) shared_experts->reset_parameters(std);
}

void MoeImpl::set_dispatcher(std::shared_ptr<TokenDispatcher> dispatcher) {
  MOETRON_CHECK(dispatcher != nullptr, "set_dispatcher: null dispatcher");
  dispatcher_ = std::move(dispatcher);
}

MoeOutput MoeImpl::forward(const torch::Tensor& x_BTD, bool balance) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1), D = x_BTD.size(2);
  const int64_t E = *moe_.n_routed_experts;
  auto x_TD = x_BTD.reshape({B * T, D});
  auto g = gate(x_TD);

  MoeOutput out;
  if (g.counts_E.defined()) {
    out.counts_E = g.counts_E;  // the fused gate counted while routing
  } else if (counts_impl_ == ops::Impl::kReference) {
    // Sync-free histogram: top-k indices are in range by construction, so the op's bounds
    // check (two host syncs) is skipped and the dispatcher's copy stays the layer's only sync.
    auto idx_N = g.topk_idx_TK.reshape(-1);
    out.counts_E = torch::zeros({E}, idx_N.options()).index_add_(0, idx_N, torch::ones_like(idx_N));
  } else {
    out.counts_E = ops::expert_counts(g.topk_idx_TK, E, counts_impl_);
  }
  auto st = dispatcher_->dispatch(x_TD, g.topk_idx_TK, g.topk_weight_TK, out.counts_E);
  auto y_ND = experts(st.x_ND, st.counts, st.first_expert);
  auto y_TD = dispatcher_->combine(y_ND, st);
  if (!shared_experts.is_empty()) y_TD = y_TD + shared_experts(x_TD);
  out.y_BTD = y_TD.view({B, T, D});

  if (balance && moe_.aux_loss_alpha > 0 && is_training()) {
    const int64_t K = moe_.num_experts_per_tok;
    auto scores_BTE = g.scores_TE.view({B, T, E});
    // V3 counts the indicator on plain top-K of raw s (no bias, no groups; SPEC 2.4); the V2
    // family uses the experts actually selected (its L_ExpBal).
    torch::Tensor idx_BTK;
    if (moe_.topk_method == config::TopkMethod::kNoauxTc) {
      idx_BTK = std::get<1>(scores_BTE.detach().topk(K, -1));
    } else {
      idx_BTK = g.topk_idx_TK.view({B, T, K});
    }
    out.balance_loss = sequence_balance_loss(scores_BTE, idx_BTK, moe_.aux_loss_alpha);
  }
  return out;
}

}  // namespace moetron::model
