// Causal attention for the MLA training path (see attention.h).
//
// On CPU, fp32 (and bf16 / fp16, upcast) runs the fused kernel of ops/cpu_fused.h: exact causal
// rows, one head per task, register-tiled products. The block-causal path below remains for fp64
// and is what the kernel replaced; its notes follow.
//
// Why a second path next to SDPA: MLA heads are narrow on the q/k side (qk_nope + qk_rope, 24
// in the tiny config, 48 in moe-100m) and ATen's CPU flash kernel runs one small GEMM per
// (batch, head, block) and recomputes the scores in backward. The block-causal path makes each
// step one batched matmul over all B·H heads at once and keeps the softmax probabilities for
// backward (no recomputation); that is where its 2-3x over the flash kernel comes from. Cutting
// the queries into blocks of kAttentionBlock rows, where block i only needs keys [0, end of
// block i), skips most of the masked upper triangle and bounds the scores held at a time. The
// kept probabilities cost memory quadratic in T; above kBlockedAttentionMaxSavedBytes (long
// sequences) and on GPUs SDPA's flash kernels remain the right tool.
//
// bf16 / fp16 inputs (CPU autocast) run the matmuls in that dtype with fp32 accumulation inside
// the GEMM; the softmax, dS = P ⊙ (dP − rowsum(dP ⊙ P)) and the dK / dV sums over query blocks
// are fp32, and the probabilities are kept in the input dtype for P·V and backward, as HF's
// eager attention does (softmax in fp32, cast back before the value matmul).
#include "moetron/model/attention.h"

#include <limits>
#include <vector>

#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/ops/cpu_fused.h"

namespace moetron::model {

// Legend: B batch, H heads, T tokens, K q/k head width, V value head width, G = B·H heads
// flattened, n rows of one query block, e = keys it sees (end of the block).

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The optional mask travels wrapped: autograd::Function treats a bare (possibly undefined)
// tensor argument as a differentiable input and cannot describe an undefined one.
struct AttentionMask {
  torch::Tensor allowed_BTT;  // bool [B, T, T] or undefined (plain causal)
};

bool is_low_precision(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kHalf;
}

// Bytes of probabilities the block-causal path keeps: Σ_blocks G · n · e elements.
int64_t saved_probability_bytes(int64_t G, int64_t T, int64_t block, int64_t element_size) {
  int64_t elements = 0;
  for (int64_t s = 0; s < T; s += block) {
    const int64_t n = std::min(block, T - s);
    elements += n * (s + n);
  }
  return G * elements * element_size;
}

struct BlockedCausalAttention : public torch::autograd::Function<BlockedCausalAttention> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_BHTK,
                               const torch::Tensor& k_BHTK, const torch::Tensor& v_BHTV,
                               double scale, const AttentionMask& mask, int64_t block) {
    const int64_t B = q_BHTK.size(0), H = q_BHTK.size(1), T = q_BHTK.size(2);
    const int64_t K = q_BHTK.size(3), V = v_BHTV.size(3), G = B * H;
    auto q_GTK = q_BHTK.contiguous().view({G, T, K});
    auto k_GTK = k_BHTK.contiguous().view({G, T, K});
    auto v_GTV = v_BHTV.contiguous().view({G, T, V});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["block"] = block;
    // CPU fp32, and bf16 / fp16 upcast to fp32: the fused kernel (ops/cpu_fused.h), exact causal
    // rows instead of blocks. For low precision it computes in fp32 and rounds the output (and
    // in backward the gradients) once, which is more accurate than bf16 products and, at MLA's
    // head widths, faster than them plus their casts.
    // (The callers checked the shapes and that q, k and v share a dtype.)
    const bool upcast = is_low_precision(q_GTK);
    const auto f32 = [&](const torch::Tensor& t) { return upcast ? t.to(torch::kFloat32) : t; };
    const bool fused =
        q_GTK.device().is_cpu() && T > 0 && (upcast || q_GTK.scalar_type() == torch::kFloat32);
    ctx->saved_data["fused"] = fused;
    if (fused) {
      auto q = f32(q_GTK), k = f32(k_GTK), v = f32(v_GTV);
      auto f = ops::cpu::causal_attention_forward(q, k, v, scale, mask.allowed_BTT);
      ctx->save_for_backward({q, k, v, f.o_GTV, f.probs});
      return f.o_GTV.view({B, H, T, V}).to(q_BHTK.scalar_type());
    }
    auto o_BHTV = torch::empty({B, H, T, V}, v_BHTV.options());
    auto o_GTV = o_BHTV.view({G, T, V});
    // Column j > row i inside the block's diagonal square (its top-left n x n for short blocks).
    auto above_diag = torch::ones({block, block}, q_BHTK.options().dtype(torch::kBool)).triu(1);

    const bool low = is_low_precision(q_BHTK);
    variable_list saved{q_GTK, k_GTK, v_GTV, o_BHTV};
    for (int64_t s = 0; s < T; s += block) {
      const int64_t n = std::min(block, T - s), e = s + n;
      auto q_GnK = q_GTK.narrow(1, s, n);
      auto kt_GKe = k_GTK.narrow(1, 0, e).transpose(1, 2);
      auto scores_Gne = torch::empty({G, n, e}, q_GTK.options());
      if (mask.allowed_BTT.defined()) {
        // scores = scale · q kᵀ (beta = 0 ignores the uninitialised addend), then the mask.
        at::baddbmm_out(scores_Gne, scores_Gne, q_GnK, kt_GKe, /*beta=*/0, /*alpha=*/scale);
        auto allowed_B1ne = mask.allowed_BTT.narrow(1, s, n).narrow(2, 0, e).unsqueeze(1);
        scores_Gne.view({B, H, n, e}).masked_fill_(allowed_B1ne.logical_not(), kNegInf);
      } else {
        // The causal mask as an additive -inf bias that the matmul adds on the way (one pass
        // less than masking its output): scores = bias + scale · q kᵀ.
        auto bias_ne = torch::zeros({n, e}, q_GTK.options());
        bias_ne.narrow(1, s, n).masked_fill_(above_diag.narrow(0, 0, n).narrow(1, 0, n), kNegInf);
        at::baddbmm_out(scores_Gne, bias_ne, q_GnK, kt_GKe, /*beta=*/1, /*alpha=*/scale);
      }
      // Low precision: the softmax in fp32, its probabilities back in the input dtype.
      // (ATen's CPU softmax has no half-to-float mode, hence the explicit upcast.)
      auto probs_Gne =
          low ? at::_softmax(scores_Gne.to(torch::kFloat32), -1, false).to(q_GTK.scalar_type())
              : at::_softmax(scores_Gne, -1, /*half_to_float=*/false);
      o_GTV.narrow(1, s, n).copy_(at::bmm(probs_Gne, v_GTV.narrow(1, 0, e)));
      saved.push_back(probs_Gne);
    }
    ctx->save_for_backward(saved);
    return o_BHTV;
  }

  // With P the probabilities and dO the output gradient of one block (FlashAttention-2's
  // backward without the recomputation): dV += Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)),
  // dQ = scale · dS K, dK += scale · dSᵀ Q.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& q_GTK = saved[0];
    const auto& k_GTK = saved[1];
    const auto& v_GTV = saved[2];
    const auto& o_BHTV = saved[3];
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t block = ctx->saved_data["block"].toInt();
    const int64_t G = q_GTK.size(0), T = q_GTK.size(1), V = v_GTV.size(2);
    if (ctx->saved_data["fused"].toBool()) {
      const auto& q_shape = grad_outputs[0].sizes();
      const int64_t B = q_shape[0], H = q_shape[1], K = q_GTK.size(2);
      auto g = ops::cpu::causal_attention_backward(grad_outputs[0].reshape({G, T, V}), q_GTK, k_GTK,
                                                   v_GTV, saved[3], saved[4], scale);
      const auto dtype = grad_outputs[0].scalar_type();  // the inputs' dtype
      return {g.q_GTK.view({B, H, T, K}).to(dtype),
              g.k_GTK.view({B, H, T, K}).to(dtype),
              g.v_GTV.view({B, H, T, V}).to(dtype),
              torch::Tensor(),
              torch::Tensor(),
              torch::Tensor()};
    }

    const auto dtype = q_GTK.scalar_type();
    const bool low = is_low_precision(q_GTK);
    const auto acc = low ? torch::kFloat32 : dtype;  // dS and the dK / dV sums
    auto dout_GTV = grad_outputs[0].to(dtype).contiguous().view({G, T, V});
    torch::Tensor rowdot_GT1;
    if (!low) rowdot_GT1 = (dout_GTV * o_BHTV.view({G, T, V})).sum(-1, /*keepdim=*/true);
    auto dq_GTK = torch::empty_like(q_GTK);
    auto dk_GTK = torch::zeros(q_GTK.sizes(), q_GTK.options().dtype(acc));
    auto dv_GTV = torch::zeros(v_GTV.sizes(), v_GTV.options().dtype(acc));
    // Every product below lands in a fresh contiguous tensor first: ATen's CPU batched matmul
    // falls back to one GEMM per head when its output is a strided slice.
    auto bmm_scaled = [](const torch::Tensor& a, const torch::Tensor& b, double alpha) {
      auto out = torch::empty({a.size(0), a.size(1), b.size(2)}, a.options());
      return at::baddbmm_out(out, out, a, b, /*beta=*/0, alpha);
    };
    size_t i = 4;
    for (int64_t s = 0; s < T; s += block, ++i) {
      const int64_t n = std::min(block, T - s), e = s + n;
      const auto& probs_Gne = saved[i];
      auto dout_GnV = dout_GTV.narrow(1, s, n);
      dv_GTV.narrow(1, 0, e).add_(at::bmm(probs_Gne.transpose(1, 2), dout_GnV));
      auto dscores_Gne = at::bmm(dout_GnV, v_GTV.narrow(1, 0, e).transpose(1, 2)).to(acc);
      if (low) {
        // rowsum(dO ⊙ O) equals rowsum(dP ⊙ P) only in exact arithmetic; with O rounded to
        // bf16 it is the larger error, so the low-precision path takes the softmax's own form.
        auto probs = probs_Gne.to(acc);
        auto rowdot_Gn1 = (dscores_Gne * probs).sum(-1, /*keepdim=*/true);
        dscores_Gne = dscores_Gne.sub_(rowdot_Gn1).mul_(probs).to(dtype);  // dS (before scale)
      } else {
        dscores_Gne.sub_(rowdot_GT1.narrow(1, s, n)).mul_(probs_Gne);  // dS (before scale)
      }
      dq_GTK.narrow(1, s, n).copy_(bmm_scaled(dscores_Gne, k_GTK.narrow(1, 0, e), scale));
      dk_GTK.narrow(1, 0, e).add_(
          bmm_scaled(dscores_Gne.transpose(1, 2), q_GTK.narrow(1, s, n), scale));
    }
    if (low) {
      dk_GTK = dk_GTK.to(dtype);
      dv_GTV = dv_GTV.to(dtype);
    }
    const auto& q_shape = grad_outputs[0].sizes();
    const int64_t B = q_shape[0], H = q_shape[1], K = q_GTK.size(2);
    return {dq_GTK.view({B, H, T, K}), dk_GTK.view({B, H, T, K}), dv_GTV.view({B, H, T, V}),
            torch::Tensor(),           torch::Tensor(),           torch::Tensor()};
  }
};

void check_shapes(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                  const torch::Tensor& v_BHTV, const torch::Tensor& allowed_BTT) {
  MOETRON_CHECK(q_BHTK.dim() == 4 && k_BHTK.sizes() == q_BHTK.sizes() && v_BHTV.dim() == 4 &&
                    v_BHTV.sizes().slice(0, 3) == q_BHTK.sizes().slice(0, 3),
                "causal_attention: expected q, k [B, H, T, K] and v [B, H, T, V], got ",
                q_BHTK.sizes(), ", ", k_BHTK.sizes(), ", ", v_BHTV.sizes());
  if (allowed_BTT.defined()) {
    const int64_t B = q_BHTK.size(0), T = q_BHTK.size(2);
    MOETRON_CHECK(allowed_BTT.scalar_type() == torch::kBool && allowed_BTT.dim() == 3 &&
                      allowed_BTT.size(0) == B && allowed_BTT.size(1) == T &&
                      allowed_BTT.size(2) == T,
                  "causal_attention: expected a bool mask [", B, ", ", T, ", ", T, "], got ",
                  allowed_BTT.sizes(), " ", allowed_BTT.dtype());
  }
}

}  // namespace

bool use_blocked_attention(const torch::Tensor& q_BHTK) {
  const auto dtype = q_BHTK.scalar_type();
  if (!q_BHTK.device().is_cpu() ||
      (dtype != torch::kFloat32 && dtype != torch::kFloat64 && !is_low_precision(q_BHTK))) {
    return false;
  }
  const int64_t G = q_BHTK.size(0) * q_BHTK.size(1), T = q_BHTK.size(2);
  return saved_probability_bytes(G, T, kAttentionBlock, q_BHTK.element_size()) <=
         kBlockedAttentionMaxSavedBytes;
}

torch::Tensor blocked_causal_attention(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                                       const torch::Tensor& v_BHTV, double scale,
                                       const torch::Tensor& allowed_BTT, int64_t block) {
  check_shapes(q_BHTK, k_BHTK, v_BHTV, allowed_BTT);
  MOETRON_CHECK(block > 0, "blocked_causal_attention: block must be > 0, got ", block);
  MOETRON_CHECK(q_BHTK.scalar_type() == torch::kFloat32 ||
                    q_BHTK.scalar_type() == torch::kFloat64 || is_low_precision(q_BHTK),
                "blocked_causal_attention: expected fp32, fp64, bf16 or fp16, got ",
                q_BHTK.dtype());
  MOETRON_CHECK(
      k_BHTK.scalar_type() == q_BHTK.scalar_type() && v_BHTV.scalar_type() == q_BHTK.scalar_type(),
      "blocked_causal_attention: q, k and v must share a dtype, got ", q_BHTK.dtype(), ", ",
      k_BHTK.dtype(), ", ", v_BHTV.dtype());
  return BlockedCausalAttention::apply(q_BHTK, k_BHTK, v_BHTV, scale, AttentionMask{allowed_BTT},
                                       block);
}

torch::Tensor causal_attention(const torch::Tensor& q_BHTK, const torch::Tensor& k_BHTK,
                               const torch::Tensor& v_BHTV, double scale,
                               const torch::Tensor& allowed_BTT) {
  check_shapes(q_BHTK, k_BHTK, v_BHTV, allowed_BTT);
  if (use_blocked_attention(q_BHTK) && k_BHTK.scalar_type() == q_BHTK.scalar_type() &&
      v_BHTV.scalar_type() == q_BHTK.scalar_type()) {
    return BlockedCausalAttention::apply(q_BHTK, k_BHTK, v_BHTV, scale, AttentionMask{allowed_BTT},
                                         kAttentionBlock);
  }
  // ATen's fused (flash) attention needs one head width for q, k and v; MLA's value heads are
  // narrower (128 vs 192 in V3). Zero-padding v to the q/k width and slicing the output back is
  // exact (the padded columns of the output are zero) and lets SDPA take the fused kernel
  // instead of the math path that materialises B x H x T x T scores.
  const int64_t K = q_BHTK.size(3), V = v_BHTV.size(3);
  auto v = V < K ? torch::constant_pad_nd(v_BHTV, {0, K - V}) : v_BHTV;
  torch::Tensor o_BHTK;
  if (allowed_BTT.defined()) {
    o_BHTK = at::scaled_dot_product_attention(q_BHTK, k_BHTK, v, allowed_BTT.unsqueeze(1), 0.0,
                                              /*is_causal=*/false, scale);
  } else {
    o_BHTK = at::scaled_dot_product_attention(q_BHTK, k_BHTK, v, std::nullopt, 0.0,
                                              /*is_causal=*/true, scale);
  }
  return V < K ? o_BHTK.narrow(-1, 0, V) : o_BHTK;
}

}  // namespace moetron::model
