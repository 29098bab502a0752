// Fused CPU loops (see cpu_fused.h).
//
// Built with -fopenmp against LibTorch's own libgomp (src/ops/CMakeLists.txt), so that
// at::parallel_for here really runs on the intra-op threads: ATen's OpenMP backend is a header
// template, and a translation unit compiled without OpenMP runs it serially. The row loops are
// cloned for AVX-512, AVX2 and baseline x86-64 (GCC target_clones picks one at load time) and
// vectorised with `omp simd`.
#include "moetron/ops/cpu_fused.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_simd.h"
#include "moetron/core/error.h"

namespace moetron::ops::cpu {

using detail::exp_f32;

namespace {

// Rows per task: about 16k elements, so that small norms stay on one thread.
int64_t row_grain(int64_t D) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(D, 1));
}

// T is float or c10::BFloat16; static_cast converts both ways (bf16 rounds to nearest even).
// round_to: the value x takes after a round trip through T (HF casts x̂ back before the weight).
template <typename T>
inline float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}

template <typename T>
inline void rms_forward_rows(const T* x, const float* w, float* y, float* rstd, int64_t rows,
                             int64_t D, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * D;
    float* yr = y + r * D;
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += static_cast<float>(xr[d]) * static_cast<float>(xr[d]);
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
    rstd[r] = inv;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) yr[d] = w[d] * round_to<T>(static_cast<float>(xr[d]) * inv);
  }
}

// dx = r · (g ⊙ w) − x̂ · (r · mean(g ⊙ x̂ ⊙ w)) and dw += g ⊙ x̂, the ATen formula's order.
template <typename T>
inline void rms_backward_rows(const float* g, const T* x, const float* rstd, const float* w, T* dx,
                              float* dw, int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gr = g + r * D;
    const T* xr = x + r * D;
    T* dxr = dx + r * D;
    const float inv = rstd[r];
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += gr[d] * (static_cast<float>(xr[d]) * inv) * w[d];
    const float c = inv * (dot / static_cast<float>(D));
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      const float xhat = static_cast<float>(xr[d]) * inv;
      dxr[d] = static_cast<T>(gr[d] * w[d] * inv - xhat * c);
      dw[d] += gr[d] * xhat;
    }
  }
}

MOETRON_CPU_CLONES
void rms_forward_f32(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t D,
                     float eps) {
  rms_forward_rows(x, w, y, rstd, rows, D, eps);
}
MOETRON_CPU_CLONES
void rms_forward_bf16(const c10::BFloat16* x, const float* w, float* y, float* rstd, int64_t rows,
                      int64_t D, float eps) {
  rms_forward_rows(x, w, y, rstd, rows, D, eps);
}
MOETRON_CPU_CLONES
void rms_backward_f32(const float* g, const float* x, const float* rstd, const float* w, float* dx,
                      float* dw, int64_t rows, int64_t D) {
  rms_backward_rows(g, x, rstd, w, dx, dw, rows, D);
}
MOETRON_CPU_CLONES
void rms_backward_bf16(const float* g, const c10::BFloat16* x, const float* rstd, const float* w,
                       c10::BFloat16* dx, float* dw, int64_t rows, int64_t D) {
  rms_backward_rows(g, x, rstd, w, dx, dw, rows, D);
}

std::vector<int64_t> leading_shape(const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.pop_back();
  return sizes;
}

}  // namespace

bool rms_norm_supported(const torch::Tensor& x_ND, const torch::Tensor& weight_D) {
  return x_ND.device().is_cpu() && weight_D.device().is_cpu() && x_ND.dim() >= 1 &&
         (x_ND.scalar_type() == torch::kFloat32 || x_ND.scalar_type() == torch::kBFloat16) &&
         weight_D.scalar_type() == torch::kFloat32 && weight_D.dim() == 1 &&
         x_ND.size(-1) == weight_D.size(0);
}

RmsNormForward rms_norm_forward(const torch::Tensor& x_ND, const torch::Tensor& weight_D,
                                double eps) {
  MOETRON_CHECK(rms_norm_supported(x_ND, weight_D),
                "cpu::rms_norm_forward: expected CPU x (fp32 or bf16) [.., D] and fp32 weight [D], "
                "got ",
                x_ND.sizes(), " ", x_ND.dtype(), " and ", weight_D.sizes(), " ", weight_D.dtype());
  const auto x = x_ND.contiguous();
  const auto w = weight_D.contiguous();
  const int64_t D = w.size(0), N = D > 0 ? x.numel() / D : 0;
  RmsNormForward out;
  out.y_ND = torch::empty(x.sizes(), x.options().dtype(torch::kFloat32));
  out.rstd_N = torch::empty(leading_shape(x), x.options().dtype(torch::kFloat32));
  const float* wp = w.data_ptr<float>();
  float* yp = out.y_ND.data_ptr<float>();
  float* rp = out.rstd_N.data_ptr<float>();
  const auto feps = static_cast<float>(eps);
  const bool bf16 = x.scalar_type() == torch::kBFloat16;
  at::parallel_for(0, N, row_grain(D), [&](int64_t begin, int64_t end) {
    if (bf16) {
      rms_forward_bf16(x.data_ptr<c10::BFloat16>() + begin * D, wp, yp + begin * D, rp + begin,
                       end - begin, D, feps);
    } else {
      rms_forward_f32(x.data_ptr<float>() + begin * D, wp, yp + begin * D, rp + begin, end - begin,
                      D, feps);
    }
  });
  return out;
}

RmsNormGrads rms_norm_backward(const torch::Tensor& grad_y_ND, const torch::Tensor& x_ND,
                               const torch::Tensor& rstd_N, const torch::Tensor& weight_D) {
  MOETRON_CHECK(rms_norm_supported(x_ND, weight_D) && grad_y_ND.sizes() == x_ND.sizes() &&
                    rstd_N.scalar_type() == torch::kFloat32 &&
                    rstd_N.numel() * std::max<int64_t>(weight_D.size(0), 1) == x_ND.numel(),
                "cpu::rms_norm_backward: expected the forward's x, rstd and weight and a gradient "
                "of x's shape, got ",
                grad_y_ND.sizes(), ", ", x_ND.sizes(), ", ", rstd_N.sizes(), ", ",
                weight_D.sizes());
  const auto g = grad_y_ND.to(torch::kFloat32).contiguous();
  const auto x = x_ND.contiguous();
  const auto rstd = rstd_N.contiguous();
  const auto w = weight_D.contiguous();
  const int64_t D = w.size(0), N = D > 0 ? x.numel() / D : 0;
  RmsNormGrads out;
  out.x_ND = torch::empty_like(x);
  // One weight-gradient row per thread (summed after), so threads never share an accumulator.
  auto partial_PD = torch::zeros({at::get_num_threads(), D}, w.options());
  const bool bf16 = x.scalar_type() == torch::kBFloat16;
  at::parallel_for(0, N, row_grain(D), [&](int64_t begin, int64_t end) {
    float* dw = partial_PD.data_ptr<float>() + at::get_thread_num() * D;
    const float* gp = g.data_ptr<float>() + begin * D;
    const float* rp = rstd.data_ptr<float>() + begin;
    if (bf16) {
      rms_backward_bf16(gp, x.data_ptr<c10::BFloat16>() + begin * D, rp, w.data_ptr<float>(),
                        out.x_ND.data_ptr<c10::BFloat16>() + begin * D, dw, end - begin, D);
    } else {
      rms_backward_f32(gp, x.data_ptr<float>() + begin * D, rp, w.data_ptr<float>(),
                       out.x_ND.data_ptr<float>() + begin * D, dw, end - begin, D);
    }
  });
  out.weight_D = partial_PD.size(0) == 1 ? partial_PD[0] : partial_PD.sum(0);
  return out;
}

void parallel_tasks(int64_t n, const std::function<void(int64_t)>& task) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    torch::NoGradGuard no_grad;
    for (int64_t i = begin; i < end; ++i) task(i);
  });
}

MOETRON_CPU_CLONES
void swiglu_forward(const float* a, const float* b, float* h, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] / (1.0f + exp_f32(-a[i])) * b[i];
}

MOETRON_CPU_CLONES
void swiglu_backward(const float* dh, const float* a, const float* b, float* da, float* db,
                     int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + exp_f32(-a[i]));
    db[i] = dh[i] * (a[i] * s);
    da[i] = dh[i] * b[i] * (s * (1.0f + a[i] * (1.0f - s)));
  }
}

// ---- router ------------------------------------------------------------------------------------

namespace {

// Keeps the k largest of the values offered so far, in descending order; a value equal to a kept
// one goes after it, so among ties the first offered (the lower index) wins.
class TopK {
 public:
  TopK(int64_t k, float* values, int64_t* indices) : k_(k), values_(values), indices_(indices) {}
  void offer(float v, int64_t i) {
    if (size_ == k_ && !(v > values_[size_ - 1])) return;
    int64_t pos = size_ < k_ ? size_++ : k_ - 1;
    while (pos > 0 && v > values_[pos - 1]) {
      values_[pos] = values_[pos - 1];
      indices_[pos] = indices_[pos - 1];
      --pos;
    }
    values_[pos] = v;
    indices_[pos] = i;
  }
  int64_t size() const { return size_; }

 private:
  int64_t k_, size_ = 0;
  float* values_;
  int64_t* indices_;
};

// One token with scores s: biased choice c = s + b, the kept groups and the top-k of c within
// them. fscratch holds E + 2G + K floats, iscratch 2G indices.
void select_token(const float* scores, const float* bias, const GateSpec& spec, int64_t E,
                  int64_t* idx, float* fscratch, int64_t* iscratch) {
  const int64_t K = spec.top_k, G = is_grouped(spec) ? spec.n_group : 1, S = E / G;
  float* choice = fscratch;
  for (int64_t e = 0; e < E; ++e) choice[e] = bias != nullptr ? scores[e] + bias[e] : scores[e];
  // Groups: noaux_tc ranks them by the sum of their two best choices, group_limited_greedy by the
  // best one; topk_group of them stay.
  float* gval = fscratch + E;
  float* gtop = fscratch + E + G;
  int64_t* gidx = iscratch;
  if (G > 1) {
    for (int64_t g = 0; g < G; ++g) {
      float best[2];
      int64_t best_i[2];
      TopK top(std::min<int64_t>(spec.method == GateTopk::kNoauxTc ? 2 : 1, S), best, best_i);
      for (int64_t j = 0; j < S; ++j) top.offer(choice[g * S + j], j);
      gval[g] = top.size() == 2 ? best[0] + best[1] : best[0];
    }
    TopK groups(spec.topk_group, gtop, gidx);
    for (int64_t g = 0; g < G; ++g) groups.offer(gval[g], g);
  }
  float* kval = fscratch + E + 2 * G;
  TopK experts(K, kval, idx);
  if (G > 1) {
    // Offer the kept groups' experts in index order, so that ties keep the lower index.
    int64_t* kept = iscratch + G;
    const int64_t n_kept = spec.topk_group;
    std::copy(gidx, gidx + n_kept, kept);
    std::sort(kept, kept + n_kept);
    for (int64_t i = 0; i < n_kept; ++i) {
      for (int64_t j = 0; j < S; ++j) experts.offer(choice[kept[i] * S + j], kept[i] * S + j);
    }
  } else {
    for (int64_t e = 0; e < E; ++e) experts.offer(choice[e], e);
  }
}

}  // namespace

bool gate_select_supported(const torch::Tensor& scores_TE) {
  return scores_TE.device().is_cpu() && scores_TE.scalar_type() == torch::kFloat32 &&
         scores_TE.dim() == 2;
}

GateSelection gate_select(const torch::Tensor& scores_TE, const torch::Tensor& bias_E,
                          const GateSpec& spec) {
  MOETRON_CHECK(gate_select_supported(scores_TE),
                "cpu::gate_select: expected fp32 CPU scores [T, E], got ", scores_TE.sizes(), " ",
                scores_TE.dtype(), " on ", scores_TE.device());
  const int64_t T = scores_TE.size(0), E = scores_TE.size(1), K = spec.top_k;
  const int64_t G = is_grouped(spec) ? spec.n_group : 1;
  MOETRON_CHECK(K >= 1 && K <= E && E % G == 0 &&
                    (G == 1 || (spec.topk_group >= 1 && spec.topk_group <= G &&
                                K <= spec.topk_group * (E / G))),
                "cpu::gate_select: top_k ", K, ", n_group ", G, ", topk_group ", spec.topk_group,
                " do not fit ", E, " experts");
  const auto scores = scores_TE.contiguous();
  torch::Tensor bias;
  if (bias_E.defined()) {
    MOETRON_CHECK(bias_E.numel() == E, "cpu::gate_select: expected bias [", E, "], got ",
                  bias_E.sizes());
    bias = bias_E.to(torch::kCPU, torch::kFloat32).contiguous();
  }
  GateSelection out;
  out.topk_idx_TK = torch::empty({T, K}, scores.options().dtype(torch::kInt64));
  const float* sp = scores.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  int64_t* ip = out.topk_idx_TK.data_ptr<int64_t>();
  at::parallel_for(0, T, row_grain(E * K), [&](int64_t begin, int64_t end) {
    std::vector<float> fscratch(E + 2 * G + K);
    std::vector<int64_t> iscratch(2 * G);
    for (int64_t t = begin; t < end; ++t) {
      select_token(sp + t * E, bp, spec, E, ip + t * K, fscratch.data(), iscratch.data());
    }
  });
  out.counts_E = torch::zeros({E}, out.topk_idx_TK.options());
  int64_t* cp = out.counts_E.data_ptr<int64_t>();
  for (int64_t i = 0; i < T * K; ++i) ++cp[ip[i]];
  return out;
}

}  // namespace moetron::ops::cpu
