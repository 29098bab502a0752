// Fused causal attention for fp32 CPU tensors (see cpu_fused.h).
//
// One head per task. Forward: its keys are transposed once ([K][T], zero-padded to whole vectors),
// then blocks of kRows query rows get their scores against exactly their causal keys [0, t], a
// softmax with a vectorised e^x, and P · v; the probabilities are kept, packed, for backward
// (FlashAttention-2's backward without the recomputation). Backward: query blocks give dP = dO vᵀ,
// dS and dQ = dS k, keeping P and dS as [T][T] squares; key blocks then give dV = Pᵀ dO and
// dK = dSᵀ q, so every gradient row is one register tile (no read-modify-write of dK and dV per
// query block). All products are block_product: kRows x 16 accumulators in registers, cloned per
// ISA (cpu_simd.h).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_simd.h"
#include "moetron/core/error.h"
#include "moetron/ops/cpu_fused.h"

namespace moetron::ops::cpu {

namespace {

using detail::exp_f32;

constexpr int64_t kLanes = 16;  // floats per accumulator (one AVX-512 register)
constexpr int64_t kRows = 8;    // query rows per block

int64_t round_up(int64_t n) {
  return (n + kLanes - 1) / kLanes * kLanes;
}
int64_t triangle(int64_t t) {
  return t * (t + 1) / 2;
}  // entries of rows 0..t-1

// out[r][j] = Σ_{c<C} a[r·ar + c·ac] · b[c][j] for r < kRows, j < n (a multiple of kLanes): a
// block of rows (or, with ar = 1, of columns) times a matrix, kRows x kLanes accumulators in
// registers. The scores (q · kᵀ with b = kᵀ), the output (P · v) and in backward dP (dO · vᵀ),
// dQ (dS · k), dV (Pᵀ · dO) and dK (dSᵀ · q) are all this product.
MOETRON_CPU_CLONES
void block_product(const float* a, int64_t ar, int64_t ac, int64_t C, const float* b, int64_t ldb,
                   int64_t n, float* out, int64_t ldo) {
  for (int64_t jb = 0; jb < n; jb += kLanes) {
    float acc[kRows][kLanes] = {};
    for (int64_t c = 0; c < C; ++c) {
      const float* bc = b + c * ldb + jb;
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
        const float av = a[r * ar + c * ac];
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[r][l] += av * bc[l];
      }
    }
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) out[r * ldo + jb + l] = acc[r][l];
    }
  }
}

// Softmax of s[0..t] in place (entries the mask forbids become 0), zeros up to n (a multiple of
// kLanes), and the row's t + 1 probabilities copied to `keep`. The future keys (t, n) become -inf
// first, so that the vector loops run whole registers over [0, n) with no scalar tail: with
// e^x in the loop, a tail of up to 15 scalar iterations per row cost as much as the rest.
MOETRON_CPU_CLONES
void softmax_row(float* s, int64_t t, int64_t n, const bool* allowed, float* keep) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  if (allowed != nullptr) {
    for (int64_t j = 0; j <= t; ++j) s[j] = allowed[j] ? s[j] : kNegInf;
  }
  for (int64_t j = t + 1; j < n; ++j) s[j] = kNegInf;
  float mx = kNegInf;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = mx > s[j] ? mx : s[j];  // (std::max does not vectorise)
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_f32(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  std::copy(s, s + t + 1, keep);
}

// dS = P ⊙ (dP − D) over [0, t] (dP in ds on entry), P copied to p_out; both zero on (t, n).
MOETRON_CPU_CLONES
void softmax_grad_row(float* ds, float* p_out, const float* p, int64_t t, int64_t n, float d) {
#pragma omp simd
  for (int64_t j = 0; j <= t; ++j) {
    ds[j] = p[j] * (ds[j] - d);
    p_out[j] = p[j];
  }
  for (int64_t j = t + 1; j < n; ++j) ds[j] = p_out[j] = 0;
}

struct Shapes {
  int64_t G, T, K, V, Tp, Kp, Vp, B;
};

Shapes shapes_of(const torch::Tensor& q, const torch::Tensor& v, const torch::Tensor& allowed) {
  Shapes s;
  s.G = q.size(0);
  s.T = q.size(1);
  s.K = q.size(2);
  s.V = v.size(2);
  s.Tp = round_up(s.T);
  s.Kp = round_up(s.K);
  s.Vp = round_up(s.V);
  s.B = allowed.defined() ? allowed.size(0) : 1;
  return s;
}

// Rows [i0, i0 + rows) of a [T][width] matrix into a zero-padded [kRows][ld] block (times alpha).
void load_rows(const float* src, int64_t width, int64_t i0, int64_t rows, float alpha, float* dst,
               int64_t ld) {
  std::fill(dst, dst + kRows * ld, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < width; ++c) dst[r * ld + c] = alpha * src[(i0 + r) * width + c];
  }
}

// [T][width] rows into [T][ld] (zero-padded columns) or transposed into [width][ld].
void pad_rows(const float* src, int64_t T, int64_t width, float* dst, int64_t ld) {
  std::fill(dst, dst + T * ld, 0.0f);
  for (int64_t t = 0; t < T; ++t) std::copy(src + t * width, src + (t + 1) * width, dst + t * ld);
}
void transpose_rows(const float* src, int64_t T, int64_t width, float* dst, int64_t ld) {
  std::fill(dst, dst + width * ld, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < width; ++c) dst[c * ld + t] = src[t * width + c];
  }
}

}  // namespace

bool causal_attention_supported(const torch::Tensor& q_GTK, const torch::Tensor& k_GTK,
                                const torch::Tensor& v_GTV) {
  for (const auto* t : {&q_GTK, &k_GTK, &v_GTV}) {
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32 || t->dim() != 3) {
      return false;
    }
  }
  return k_GTK.sizes() == q_GTK.sizes() && v_GTV.size(0) == q_GTK.size(0) &&
         v_GTV.size(1) == q_GTK.size(1) && q_GTK.size(1) > 0;
}

CausalAttentionForward causal_attention_forward(const torch::Tensor& q_GTK,
                                                const torch::Tensor& k_GTK,
                                                const torch::Tensor& v_GTV, double scale,
                                                const torch::Tensor& allowed_BTT) {
  MOETRON_CHECK(causal_attention_supported(q_GTK, k_GTK, v_GTV),
                "cpu::causal_attention_forward: expected fp32 CPU q, k [G, T, K] and v [G, T, V], "
                "got ",
                q_GTK.sizes(), ", ", k_GTK.sizes(), ", ", v_GTV.sizes(), " ", q_GTK.dtype());
  const auto q = q_GTK.contiguous(), k = k_GTK.contiguous(), v = v_GTV.contiguous();
  torch::Tensor allowed;
  if (allowed_BTT.defined()) {
    allowed = allowed_BTT.to(torch::kBool).contiguous();
    MOETRON_CHECK(allowed.dim() == 3 && allowed.size(1) == q.size(1) &&
                      allowed.size(2) == q.size(1) && q.size(0) % allowed.size(0) == 0,
                  "cpu::causal_attention_forward: expected a bool mask [B, T, T] with B dividing ",
                  q.size(0), " heads, got ", allowed.sizes());
  }
  const Shapes s = shapes_of(q, v, allowed);
  CausalAttentionForward out;
  out.o_GTV = torch::empty({s.G, s.T, s.V}, q.options());
  out.probs = torch::empty({s.G * triangle(s.T)}, q.options());
  const float fscale = static_cast<float>(scale);
  const int64_t heads_per_seq = s.G / s.B;
  at::parallel_for(0, s.G, 1, [&](int64_t g_begin, int64_t g_end) {
    std::vector<float> kt(s.K * s.Tp), vp(s.T * s.Vp), qb(kRows * s.Kp), sc(kRows * s.Tp),
        ob(kRows * s.Vp);
    for (int64_t g = g_begin; g < g_end; ++g) {
      const float* qg = q.data_ptr<float>() + g * s.T * s.K;
      transpose_rows(k.data_ptr<float>() + g * s.T * s.K, s.T, s.K, kt.data(), s.Tp);
      pad_rows(v.data_ptr<float>() + g * s.T * s.V, s.T, s.V, vp.data(), s.Vp);
      float* og = out.o_GTV.data_ptr<float>() + g * s.T * s.V;
      float* pg = out.probs.data_ptr<float>() + g * triangle(s.T);
      const bool* mask =
          allowed.defined() ? allowed.data_ptr<bool>() + (g / heads_per_seq) * s.T * s.T : nullptr;
      for (int64_t i0 = 0; i0 < s.T; i0 += kRows) {
        const int64_t rows = std::min(kRows, s.T - i0), keys = i0 + rows, n = round_up(keys);
        load_rows(qg, s.K, i0, rows, fscale, qb.data(), s.Kp);
        block_product(qb.data(), s.Kp, 1, s.K, kt.data(), s.Tp, n, sc.data(), s.Tp);
        // Rows past T (a short last block) hold scores of zero queries; their outputs are
        // dropped below.
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t t = i0 + r;
          softmax_row(sc.data() + r * s.Tp, t, n, mask != nullptr ? mask + t * s.T : nullptr,
                      pg + triangle(t));
        }
        block_product(sc.data(), s.Tp, 1, keys, vp.data(), s.Vp, s.Vp, ob.data(), s.Vp);
        for (int64_t r = 0; r < rows; ++r) {
          std::copy(ob.data() + r * s.Vp, ob.data() + r * s.Vp + s.V, og + (i0 + r) * s.V);
        }
      }
    }
  });
  return out;
}

CausalAttentionGrads causal_attention_backward(const torch::Tensor& grad_o_GTV,
                                               const torch::Tensor& q_GTK,
                                               const torch::Tensor& k_GTK,
                                               const torch::Tensor& v_GTV,
                                               const torch::Tensor& o_GTV,
                                               const torch::Tensor& probs, double scale) {
  MOETRON_CHECK(causal_attention_supported(q_GTK, k_GTK, v_GTV) &&
                    grad_o_GTV.sizes() == v_GTV.sizes() && o_GTV.sizes() == v_GTV.sizes() &&
                    probs.numel() == q_GTK.size(0) * triangle(q_GTK.size(1)),
                "cpu::causal_attention_backward: expected the forward's fp32 q, k, v, o and "
                "probabilities and an output gradient shaped like v, got ",
                grad_o_GTV.sizes(), " for v ", v_GTV.sizes());
  const auto q = q_GTK.contiguous(), k = k_GTK.contiguous(), v = v_GTV.contiguous();
  const auto o = o_GTV.contiguous(), p = probs.contiguous();
  const auto dout = grad_o_GTV.to(torch::kFloat32).contiguous();
  const Shapes s = shapes_of(q, v, torch::Tensor());
  CausalAttentionGrads out;
  out.q_GTK = torch::empty_like(q);
  out.k_GTK = torch::empty_like(k);
  out.v_GTV = torch::empty_like(v);
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, s.G, 1, [&](int64_t g_begin, int64_t g_end) {
    // Per head: v transposed, k, q and dO as zero-padded rows, and P and dS as [T][Tp] squares
    // (rows written up to their block's vector edge, which covers every entry read below).
    // dO and the squares get kRows spare rows: the last query block reads and writes whole blocks
    // (dO's spare rows stay zero, the squares' are scratch that the key pass never reads).
    std::vector<float> vt(s.V * s.Tp), kp(s.T * s.Kp), qp(s.T * s.Kp), dop((s.T + kRows) * s.Vp);
    std::vector<float> psq((s.T + kRows) * s.Tp), dssq((s.T + kRows) * s.Tp);
    std::vector<float> tile(kRows * std::max(s.Kp, s.Vp));
    std::vector<float> rowdot(s.T);
    for (int64_t g = g_begin; g < g_end; ++g) {
      const float* dog = dout.data_ptr<float>() + g * s.T * s.V;
      const float* og = o.data_ptr<float>() + g * s.T * s.V;
      const float* pg = p.data_ptr<float>() + g * triangle(s.T);
      transpose_rows(v.data_ptr<float>() + g * s.T * s.V, s.T, s.V, vt.data(), s.Tp);
      pad_rows(k.data_ptr<float>() + g * s.T * s.K, s.T, s.K, kp.data(), s.Kp);
      pad_rows(q.data_ptr<float>() + g * s.T * s.K, s.T, s.K, qp.data(), s.Kp);
      pad_rows(dog, s.T, s.V, dop.data(), s.Vp);
      // D_t = rowsum(dO ⊙ O) = rowsum(dP ⊙ P) in exact arithmetic.
      for (int64_t t = 0; t < s.T; ++t) {
        float d = 0;
        for (int64_t c = 0; c < s.V; ++c) d += dog[t * s.V + c] * og[t * s.V + c];
        rowdot[t] = d;
      }
      // Query blocks: dP = dO vᵀ, dS = P ⊙ (dP − D), dQ = scale · dS k.
      float* dqg = out.q_GTK.data_ptr<float>() + g * s.T * s.K;
      for (int64_t i0 = 0; i0 < s.T; i0 += kRows) {
        const int64_t rows = std::min(kRows, s.T - i0), keys = i0 + rows, n = round_up(keys);
        float* ds = dssq.data() + i0 * s.Tp;
        block_product(dop.data() + i0 * s.Vp, s.Vp, 1, s.V, vt.data(), s.Tp, n, ds, s.Tp);  // dP
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t t = i0 + r;
          softmax_grad_row(ds + r * s.Tp, psq.data() + t * s.Tp, pg + triangle(t), t, n, rowdot[t]);
        }
        block_product(ds, s.Tp, 1, keys, kp.data(), s.Kp, s.Kp, tile.data(), s.Kp);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < s.K; ++c) {
            dqg[(i0 + r) * s.K + c] = fscale * tile[r * s.Kp + c];
          }
        }
      }
      // Key blocks: dV = Pᵀ dO and dK = scale · dSᵀ q over the queries t >= j0 that saw them.
      float* dkg = out.k_GTK.data_ptr<float>() + g * s.T * s.K;
      float* dvg = out.v_GTV.data_ptr<float>() + g * s.T * s.V;
      for (int64_t j0 = 0; j0 < s.T; j0 += kRows) {
        const int64_t cols = std::min(kRows, s.T - j0), queries = s.T - j0;
        block_product(psq.data() + j0 * s.Tp + j0, 1, s.Tp, queries, dop.data() + j0 * s.Vp, s.Vp,
                      s.Vp, tile.data(), s.Vp);
        for (int64_t r = 0; r < cols; ++r) {
          std::copy(tile.data() + r * s.Vp, tile.data() + r * s.Vp + s.V, dvg + (j0 + r) * s.V);
        }
        block_product(dssq.data() + j0 * s.Tp + j0, 1, s.Tp, queries, qp.data() + j0 * s.Kp, s.Kp,
                      s.Kp, tile.data(), s.Kp);
        for (int64_t r = 0; r < cols; ++r) {
          for (int64_t c = 0; c < s.K; ++c) dkg[(j0 + r) * s.K + c] = fscale * tile[r * s.Kp + c];
        }
      }
    }
  });
  return out;
}

}  // namespace moetron::ops::cpu
