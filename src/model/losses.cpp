// Chunked log-probabilities / cross-entropy with a recomputing backward (see losses.h).
#include "moetron/model/losses.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/model/model.h"
#include "moetron/ops/cpu_gemm.h"

namespace moetron::model {

// Legend: N rows (tokens), n rows of one chunk, D hidden, V vocab.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// logits / temperature of one chunk in fp32 (matmul in the operands' dtype, which the caller
// made equal).
torch::Tensor chunk_logits(const torch::Tensor& h_nD, const torch::Tensor& w_VD, double inv_temp) {
  auto logits = ops::cpu::gemm(h_nD, w_VD.t()).to(torch::kFloat32);
  return inv_temp == 1.0 ? logits : logits * inv_temp;
}

// Below this many bytes of fp32 probabilities ([N, V] in total) forward keeps them for backward
// instead of recomputing each chunk's logits there: a byte-level vocabulary (V = 320) stays far
// below it, a real one (V ~ 1e5) only for a few hundred rows.
constexpr int64_t kKeepProbsMaxBytes = int64_t{64} << 20;

struct ChunkedLogprob : public torch::autograd::Function<ChunkedLogprob> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h_ND,
                               const torch::Tensor& w_VD, const torch::Tensor& targets_N,
                               int64_t chunk, double inv_temp) {
    // The caller already cast to the compute dtype; autocast must not re-cast here, so that
    // forward and the (autocast-free) backward recomputation see the same numerics.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t N = h_ND.size(0), V = w_VD.size(0);
    const bool keep_probs = N * V * int64_t{4} <= kKeepProbsMaxBytes;
    variable_list saved{h_ND, w_VD, targets_N};
    auto out_N = torch::empty({N}, h_ND.options().dtype(torch::kFloat32));
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      auto logp_nV = torch::log_softmax(chunk_logits(h_ND.narrow(0, s, n), w_VD, inv_temp), 1);
      auto t_n = targets_N.narrow(0, s, n);
      auto lp_n = logp_nV.gather(1, t_n.clamp_min(0).unsqueeze(1)).squeeze(1);
      out_N.narrow(0, s, n).copy_(lp_n.masked_fill(t_n == kIgnoreIndex, 0.0));
      if (keep_probs) saved.push_back(logp_nV.exp_());  // softmax, for backward
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["inv_temp"] = inv_temp;
    return out_N;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& h_ND = saved[0];
    const auto& w_VD = saved[1];
    const auto& targets_N = saved[2];
    const bool kept_probs = saved.size() > 3;
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const double inv_temp = ctx->saved_data["inv_temp"].toDouble();
    auto g_N = grad_outputs[0].to(torch::kFloat32);
    const int64_t N = h_ND.size(0);
    auto grad_h = torch::empty_like(h_ND);
    auto grad_w = torch::zeros(w_VD.sizes(), w_VD.options().dtype(torch::kFloat32));
    for (int64_t s = 0, c = 0; s < N; s += chunk, ++c) {
      const int64_t n = std::min(chunk, N - s);
      auto h_nD = h_ND.narrow(0, s, n);
      auto t_n = targets_N.narrow(0, s, n);
      auto g_n = g_N.narrow(0, s, n) * (t_n != kIgnoreIndex).to(torch::kFloat32);
      // d log p_t / d z = onehot(t) - softmax(z) with z = logits / T, and dz/dlogits = 1/T.
      auto probs_nV =
          kept_probs ? saved[3 + c] : torch::softmax(chunk_logits(h_nD, w_VD, inv_temp), 1);
      auto d_nV = probs_nV * (-g_n).unsqueeze(1);
      d_nV.scatter_add_(1, t_n.clamp_min(0).unsqueeze(1), g_n.unsqueeze(1));
      if (inv_temp != 1.0) d_nV.mul_(inv_temp);
      auto d = d_nV.to(h_ND.scalar_type());
      ops::cpu::gemm_out(grad_h.narrow(0, s, n), d, w_VD);
      if (d.scalar_type() == torch::kFloat32) {
        ops::cpu::gemm_out(grad_w, d.t(), h_nD, /*accumulate=*/true);
      } else {
        grad_w.add_(d.t().mm(h_nD).to(torch::kFloat32));
      }
    }
    return {grad_h, grad_w.to(w_VD.scalar_type()), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_token_logprobs(const torch::Tensor& hidden_ND, const torch::Tensor& weight_VD,
                                     const torch::Tensor& targets_N, int64_t chunk_rows,
                                     double temperature) {
  MOETRON_CHECK(
      hidden_ND.dim() == 2 && weight_VD.dim() == 2 && hidden_ND.size(1) == weight_VD.size(1),
      "chunked_token_logprobs: expected hidden [N, D] and weight [V, D], got ", hidden_ND.sizes(),
      " and ", weight_VD.sizes());
  MOETRON_CHECK(targets_N.dim() == 1 && targets_N.size(0) == hidden_ND.size(0),
                "chunked_token_logprobs: expected targets [", hidden_ND.size(0), "], got ",
                targets_N.sizes());
  MOETRON_CHECK(chunk_rows > 0, "chunked_token_logprobs: chunk_rows must be > 0, got ", chunk_rows);
  MOETRON_CHECK(temperature > 0, "chunked_token_logprobs: temperature must be > 0, got ",
                temperature);
  const auto device_type = hidden_ND.device().type();
  auto dtype = hidden_ND.scalar_type();
  if (at::autocast::is_autocast_enabled(device_type)) {
    dtype = at::autocast::get_autocast_dtype(device_type);
  }
  return ChunkedLogprob::apply(hidden_ND.to(dtype), weight_VD.to(dtype),
                               targets_N.to(torch::kInt64), chunk_rows, 1.0 / temperature);
}

torch::Tensor chunked_cross_entropy(const torch::Tensor& hidden_ND, const torch::Tensor& weight_VD,
                                    const torch::Tensor& targets_N, int64_t chunk_rows) {
  auto lp_N = chunked_token_logprobs(hidden_ND, weight_VD, targets_N, chunk_rows);
  auto n_valid = (targets_N != kIgnoreIndex).sum().clamp_min(1).to(torch::kFloat32);
  return -lp_N.sum() / n_valid;
}

}  // namespace moetron::model
