// `moetron bench kernels`: for each op and shape, the time of our CUDA kernel and of the
// LibTorch composite it replaces (route(); the dispatcher's sort + index_select + index_add),
// measured in the same run with CUDA events after warm-up, their ratio, and the kernel's
// achieved bandwidth against the device's peak. Timings live here, never in tests.
#include "bench_kernels.h"

#include <torch/torch.h>

#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>

// MLA attention rows (bench_mla_attention / bench_latent_decode below).
#include "moetron/model/attention.h"
#include "moetron/ops/latent_decode_attention.h"
#include "moetron/ops/mla_attention.h"
#include "moetron/train/metrics.h"

#include "moetron/core/error.h"
#include "moetron/model/moe.h"
#include "moetron/ops/fused_gate.h"
#include "moetron/ops/grouped_swiglu.h"
#include "moetron/ops/impl.h"
#include "moetron/ops/permute.h"
#include "moetron/train/metrics.h"

namespace moetron::cli {
namespace {

// Legend: T tokens, E experts, K experts per token, G groups, D hidden, N = T·K rows.

struct Shape {
  std::string name;
  int64_t T, E, K, G, topk_group, D;
  config::MoeConfig moe;
};

Shape make_shape(const std::string& name) {
  config::MoeConfig m;
  Shape s{name, 0, 0, 0, 0, 0, 0, m};
  if (name == "tiny") {
    s = {name, 64, 8, 2, 4, 2, 32, m};
  } else if (name == "v2-lite") {  // V2-Lite: softmax, plain top-6 of 64, no normalisation
    s = {name, 8192, 64, 6, 1, 1, 2048, m};
    s.moe.scoring_func = config::ScoringFunc::kSoftmax;
    s.moe.topk_method = config::TopkMethod::kGreedy;
    s.moe.norm_topk_prob = false;
    s.moe.routed_scaling_factor = 1.0;
  } else if (name == "v3") {  // V3 per GPU: 256 experts, 8 groups, 4 kept, top-8
    s = {name, 8192, 256, 8, 8, 4, 7168, m};
  } else {
    throw Error(ErrorKind::kUsage,
                str_cat("bench kernels: unknown shape '", name, "'; expected tiny, v2-lite or v3"));
  }
  s.moe.n_routed_experts = s.E;
  s.moe.num_experts_per_tok = s.K;
  s.moe.n_group = s.G;
  s.moe.topk_group = s.topk_group;
  return s;
}

ops::GateSpec gate_spec(const config::MoeConfig& m) {
  ops::GateSpec g;
  g.scoring = m.scoring_func == config::ScoringFunc::kSigmoid ? ops::GateScoring::kSigmoid
                                                              : ops::GateScoring::kSoftmax;
  g.method = m.topk_method == config::TopkMethod::kNoauxTc  ? ops::GateTopk::kNoauxTc
             : m.topk_method == config::TopkMethod::kGreedy ? ops::GateTopk::kGreedy
                                                            : ops::GateTopk::kGroupLimitedGreedy;
  g.top_k = m.num_experts_per_tok;
  g.n_group = m.n_group;
  g.topk_group = m.topk_group;
  g.norm_topk_prob = m.norm_topk_prob;
  g.routed_scaling_factor = m.routed_scaling_factor;
  return g;
}

// Mean milliseconds per call over `iters` calls after `warmup` calls, by CUDA events on the
// current stream (the ops launch there).
double time_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  const c10::Device dev(c10::DeviceType::CUDA, 0);
  const auto stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(dev);
  c10::Event start(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);
  c10::Event stop(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);
  start.record(stream);
  for (int i = 0; i < iters; ++i) fn();
  stop.record(stream);
  stop.synchronize();
  return start.elapsedTime(stop) / iters;
}

struct Row {
  std::string op;
  double ours_ms, composite_ms, bytes;
};

void print_rows(const Shape& s, const std::vector<Row>& rows, double peak_gbs) {
  std::printf("\nshape %s: T=%lld E=%lld K=%lld G=%lld topk_group=%lld D=%lld (rows bf16)\n",
              s.name.c_str(), static_cast<long long>(s.T), static_cast<long long>(s.E),
              static_cast<long long>(s.K), static_cast<long long>(s.G),
              static_cast<long long>(s.topk_group), static_cast<long long>(s.D));
  std::printf("  %-22s %12s %14s %9s %10s %8s\n", "op", "kernel us", "composite us", "speedup",
              "GB/s", "of peak");
  for (const auto& r : rows) {
    const double gbs = r.bytes / (r.ours_ms * 1e-3) / 1e9;
    std::printf("  %-22s %12.1f %14.1f %8.2fx %10.0f", r.op.c_str(), r.ours_ms * 1e3,
                r.composite_ms * 1e3, r.composite_ms / r.ours_ms, gbs);
    if (peak_gbs > 0) {
      std::printf(" %7.0f%%\n", 100 * gbs / peak_gbs);
    } else {
      std::printf(" %8s\n", "n/a");
    }
  }
}

// ---- grouped expert GEMM (kernels.grouped_gemm) ----------------------------------------------

// The routed experts' SwiGLU over N = T·K rows of random top-K routing, bf16 rows and weights:
// ops::grouped_swiglu's cuBLAS grouped GEMMs (one call per projection over all experts) against
// its reference (one matmul per expert and projection), forward and forward + backward, with
// the kernel's TFLOP/s (3 projections x 2·N·D·I, backward 2x forward) against the device's peak.
void bench_grouped_gemm(const BenchKernelsArgs& args) {
  using ops::Impl;
  torch::NoGradGuard no_grad;
  const double peak = train::device_peak_flops(torch::Device(torch::kCUDA, 0));
  std::printf(
      "\ngrouped expert GEMM (SwiGLU, bf16 in, fp32 accumulate); kernel = cuBLAS grouped, "
      "composite = one mm per expert\n");
  std::printf("  %-8s %5s %5s %5s %7s %-8s %11s %14s %9s %9s %8s\n", "shape", "E", "D", "I", "N",
              "op", "kernel ms", "composite ms", "speedup", "TFLOP/s", "of peak");
  for (const auto& name : args.shapes) {
    int64_t T = 64, K = 2, E = 8, D = 32, I = 16;
    if (name == "v2-lite") {
      T = 8192, K = 6, E = 64, D = 2048, I = 1408;
    } else if (name == "v3") {
      T = 8192, K = 8, E = 256, D = 7168, I = 2048;
    } else if (name != "tiny") {
      continue;  // make_shape has rejected unknown names already
    }
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    const int64_t N = T * K;
    auto idx = std::get<1>(torch::rand({T, E}, o.dtype(torch::kFloat32)).topk(K, -1));
    auto counts_t = torch::bincount(idx.reshape(-1), {}, E).cpu();
    const std::vector<int64_t> counts(counts_t.data_ptr<int64_t>(),
                                      counts_t.data_ptr<int64_t>() + E);
    auto gate = torch::randn({E, I, D}, o) * 0.02, up = torch::randn({E, I, D}, o) * 0.02;
    auto down = torch::randn({E, D, I}, o) * 0.02;
    auto x = torch::randn({N, D}, o), dy = torch::randn({N, D}, o);
    auto fwd = [&](Impl impl) {
      return ops::grouped_swiglu_forward(x, gate, up, down, counts, 0, impl);
    };
    auto fwd_bwd = [&](Impl impl) {
      auto f = fwd(impl);
      ops::grouped_swiglu_backward(dy, x, gate, up, down, f, counts, 0, impl);
    };
    const double flops = 3 * 2.0 * double(N) * double(D) * double(I);
    const struct {
      const char* op;
      std::function<void(Impl)> fn;
      double flops;
    } ops_[] = {{"fwd", [&](Impl i) { fwd(i); }, flops}, {"fwd+bwd", fwd_bwd, 3 * flops}};
    for (const auto& op : ops_) {
      const double ours = time_ms([&] { op.fn(Impl::kCuda); }, args.warmup, args.iters);
      const double comp = time_ms([&] { op.fn(Impl::kReference); }, args.warmup, args.iters);
      const double tflops = op.flops / (ours * 1e-3) / 1e12;
      std::printf("  %-8s %5lld %5lld %5lld %7lld %-8s %11.3f %14.3f %8.2fx %9.1f", name.c_str(),
                  static_cast<long long>(E), static_cast<long long>(D), static_cast<long long>(I),
                  static_cast<long long>(N), op.op, ours, comp, comp / ours, tflops);
      if (peak > 0) {
        std::printf(" %7.0f%%\n", 100 * tflops * 1e12 / peak);
      } else {
        std::printf(" %8s\n", "n/a");
      }
    }
  }
}

std::vector<Row> bench_shape(const Shape& s, const BenchKernelsArgs& args) {
  using ops::Impl;
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto f32 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat32);
  const auto bf16 = f32.dtype(torch::kBFloat16);
  const int64_t T = s.T, E = s.E, K = s.K, D = s.D, N = T * K;
  const auto spec = gate_spec(s.moe);
  auto logits = torch::randn({T, E}, f32) * 2;
  torch::Tensor bias;
  if (s.moe.topk_method == config::TopkMethod::kNoauxTc) bias = torch::randn({E}, f32) * 0.1;
  const int w = args.warmup, n = args.iters;
  std::vector<Row> rows;

  // ---- gate: route() + the MoE layer's index_add counts vs one fused launch.
  {
    const double ours =
        time_ms([&] { ops::fused_gate_forward(logits, bias, spec, Impl::kCuda); }, w, n);
    const double comp = time_ms(
        [&] {
          auto g = model::route(logits, bias, s.moe);
          auto idx = g.topk_idx_TK.reshape(-1);
          torch::zeros({E}, idx.options()).index_add_(0, idx, torch::ones_like(idx));
        },
        w, n);
    const double bytes = 2.0 * T * E * 4 + T * K * 12.0 + E * 8.0;
    rows.push_back({"gate fwd", ours, comp, bytes});
  }
  // ---- gate forward + backward through autograd (the training path): one fused node whose
  // backward is a few ATen ops vs route()'s graph.
  {
    auto dw = torch::randn({T, K}, f32), ds = torch::randn({T, E}, f32);
    auto step = [&](bool fused) {
      torch::AutoGradMode grad(true);
      auto l = logits.detach().requires_grad_(true);
      if (fused) {
        auto g = ops::fused_gate(l, bias, spec, Impl::kCuda);
        torch::autograd::backward({g.topk_weight_TK, g.scores_TE}, {dw, ds});
      } else {
        auto g = model::route(l, bias, s.moe);
        auto i = g.topk_idx_TK.reshape(-1);
        torch::zeros({E}, i.options()).index_add_(0, i, torch::ones_like(i));
        torch::autograd::backward({g.topk_weight_TK, g.scores_TE}, {dw, ds});
      }
    };
    const double ours = time_ms([&] { step(true); }, w, n);
    const double comp = time_ms([&] { step(false); }, w, n);
    // Forward as above, then read ds, s and dw, write d logits (plus the gathers, ignored).
    const double bytes = 2.0 * T * E * 4 + T * K * 12.0 + E * 8.0 + 3.0 * T * E * 4 + T * K * 4.0;
    rows.push_back({"gate fwd+bwd", ours, comp, bytes});
  }

  auto idx = std::get<1>(torch::rand({T, E}, f32).topk(K, -1));
  auto weight = torch::rand({T, K}, f32);
  auto x = torch::randn({T, D}, bf16);
  auto y = torch::randn({N, D}, bf16);
  auto index = ops::permute_index(idx, E, Impl::kCuda);
  const double row_bytes = static_cast<double>(D) * 2;

  // ---- permute: grouping + gather vs the dispatcher's stable sort + index_selects.
  {
    const double ours = time_ms(
        [&] {
          auto p = ops::permute_index(idx, E, Impl::kCuda);
          ops::gather_rows(x, p.token_idx_N, Impl::kCuda);
        },
        w, n);
    const double comp = time_ms(
        [&] {
          auto order = std::get<1>(idx.reshape(-1).sort(true, 0, false));
          auto tok = order.div(K, "floor");
          weight.reshape(-1).index_select(0, order);
          x.index_select(0, tok);
        },
        w, n);
    const double bytes = 3.0 * N * 8 + 2.0 * N * 8 + 2.0 * N * row_bytes;
    rows.push_back({"permute fwd", ours, comp, bytes});
  }
  auto order = std::get<1>(idx.reshape(-1).sort(true, 0, false));
  auto tok = order.div(K, "floor");
  auto weight_N = weight.reshape(-1).index_select(0, order);
  // ---- unpermute: k-ordered fp32 sum per token vs fp32 copy, scale, index_add, cast.
  {
    const double ours =
        time_ms([&] { ops::combine_rows(y, index.row_TK, weight, Impl::kCuda); }, w, n);
    const double comp = time_ms(
        [&] {
          auto weighted = y.to(torch::kFloat32) * weight_N.unsqueeze(1);
          torch::zeros({T, D}, f32).index_add(0, tok, weighted).to(torch::kBFloat16);
        },
        w, n);
    const double bytes = N * row_bytes + T * row_bytes + N * 12.0;
    rows.push_back({"unpermute fwd", ours, comp, bytes});
  }
  auto dout = torch::randn({T, D}, bf16);
  // ---- unpermute backward: d rows and d weights vs autograd's gather + scale + dot.
  {
    const double ours = time_ms(
        [&] { ops::combine_rows_backward(dout, y, index.row_TK, weight, true, Impl::kCuda); }, w,
        n);
    const double comp = time_ms(
        [&] {
          auto g = dout.to(torch::kFloat32).index_select(0, tok);
          (g * weight_N.unsqueeze(1)).to(torch::kBFloat16);
          (g * y.to(torch::kFloat32)).sum(-1);
        },
        w, n);
    const double bytes = T * row_bytes + 2.0 * N * row_bytes + N * 12.0;
    rows.push_back({"unpermute bwd", ours, comp, bytes});
  }
  // ---- permute backward: unweighted combine vs index_add of the row gradients.
  {
    const double ours = time_ms([&] { ops::combine_rows(y, index.row_TK, {}, Impl::kCuda); }, w, n);
    const double comp = time_ms([&] { torch::zeros({T, D}, bf16).index_add_(0, tok, y); }, w, n);
    const double bytes = N * row_bytes + T * row_bytes + N * 8.0;
    rows.push_back({"permute bwd", ours, comp, bytes});
  }
  return rows;
}

// ---- MLA attention (kernels.attention, kernels.decode_attention) ------------------------------

// Training attention per shape: our flash kernels against LibTorch's SDPA on the same shapes
// (model::causal_attention's GPU path: v zero-padded to the q/k width, is_causal) and against
// our ATen reference, forward and forward + backward, bf16. FLOPs of causal attention: the
// forward's two matmuls over the T(T+1)/2 allowed pairs, 2·(K + V) per pair; the backward's
// five (without the recomputation) are 2.5x that, the FlashAttention convention.
void bench_mla_attention(const BenchKernelsArgs& args) {
  using ops::Impl;
  const double peak = train::device_peak_flops(torch::Device(torch::kCUDA, 0));
  std::printf(
      "\nMLA training attention (causal, bf16 in, fp32 softmax); ours = flash kernels, "
      "SDPA = causal_attention's GPU path, ref = ATen reference\n");
  std::printf("  %-8s %3s %4s %5s %4s %4s %-8s %9s %9s %9s %8s %8s %8s\n", "shape", "B", "H", "T",
              "K", "V", "op", "ours ms", "SDPA ms", "ref ms", "vs SDPA", "TFLOP/s", "of peak");
  for (const auto& name : args.shapes) {
    int64_t B = 4, H = 4, T = 256, K = 24, V = 16;  // tiny
    if (name == "v2-lite") {
      B = 1, H = 16, T = 4096, K = 192, V = 128;
    } else if (name == "v3") {  // per GPU: all 128 heads of one 4K sequence
      B = 1, H = 128, T = 4096, K = 192, V = 128;
    } else if (name != "tiny") {
      continue;  // make_shape rejects unknown names
    }
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    auto q = torch::randn({B, H, T, K}, o), k = torch::randn({B, H, T, K}, o);
    auto v = torch::randn({B, H, T, V}, o), dout = torch::randn({B, H, T, V}, o);
    const double scale = 1.0 / std::sqrt(static_cast<double>(K));
    const double fwd_flops = 2.0 * B * H * (T * (T + 1) / 2.0) * (K + V);
    enum class Which { kOurs, kSdpa, kRef };
    auto forward = [&](Which w) {
      torch::NoGradGuard no_grad;
      if (w == Which::kSdpa) return model::causal_attention(q, k, v, scale);
      return ops::mla_attention_forward(q, k, v, scale, {},
                                        w == Which::kOurs ? Impl::kCuda : Impl::kReference)
          .o_BHTV;
    };
    auto step = [&](Which w) {
      torch::AutoGradMode grad(true);
      auto qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_();
      auto vg = v.detach().requires_grad_();
      auto out = w == Which::kSdpa
                     ? model::causal_attention(qg, kg, vg, scale)
                     : ops::mla_attention(qg, kg, vg, scale, {},
                                          w == Which::kOurs ? Impl::kCuda : Impl::kReference);
      torch::autograd::backward({out}, {dout});
    };
    const struct {
      const char* op;
      std::function<void(Which)> fn;
      double flops;
    } rows[] = {{"fwd", [&](Which w) { forward(w); }, fwd_flops},
                {"fwd+bwd", step, 3.5 * fwd_flops}};
    for (const auto& r : rows) {
      const double ours = time_ms([&] { r.fn(Which::kOurs); }, args.warmup, args.iters);
      const double sdpa = time_ms([&] { r.fn(Which::kSdpa); }, args.warmup, args.iters);
      const double ref = time_ms([&] { r.fn(Which::kRef); }, std::min(args.warmup, 2),
                                 std::max(1, std::min(args.iters, 5)));
      const double tflops = r.flops / (ours * 1e-3) / 1e12;
      std::printf("  %-8s %3lld %4lld %5lld %4lld %4lld %-8s %9.3f %9.3f %9.3f %7.2fx %8.1f",
                  name.c_str(), static_cast<long long>(B), static_cast<long long>(H),
                  static_cast<long long>(T), static_cast<long long>(K), static_cast<long long>(V),
                  r.op, ours, sdpa, ref, sdpa / ours, tflops);
      if (peak > 0) {
        std::printf(" %7.0f%%\n", 100 * tflops * 1e12 / peak);
      } else {
        std::printf(" %8s\n", "n/a");
      }
    }
  }
}

// Latent decode attention: one decode step (T = 1) of 64 sequences whose caches hold 512..4096
// tokens (left-padded to 4096 slots, as the engine's batch), V3 (128 heads) and V2-Lite (16
// heads) with C = 512, P = 64, bf16: our split-K kernel against forward_absorbed's einsum /
// softmax composite. Bytes the kernel must move: the valid slots' cache rows (C + P values),
// the mask, q and z; FLOPs: 2·(C + P) + 2·C per (head, valid slot).
void bench_latent_decode(const BenchKernelsArgs& args, double peak_gbs) {
  using ops::Impl;
  torch::NoGradGuard no_grad;
  const double peak = train::device_peak_flops(torch::Device(torch::kCUDA, 0));
  std::printf(
      "\nlatent decode attention (absorbed MLA, T = 1, bf16); ours = split-K kernel, "
      "composite = forward_absorbed's einsums + fp32 softmax\n");
  std::printf("  %-8s %3s %4s %4s %4s %11s %9s %14s %8s %8s %8s %8s\n", "shape", "B", "H", "C", "P",
              "slots", "ours us", "composite us", "speedup", "GB/s", "of peak", "TFLOP/s");
  for (const auto& name : args.shapes) {
    int64_t B = 4, H = 4, C = 16, P = 4, lo = 16, S = 64;  // tiny
    if (name == "v2-lite") {
      B = 64, H = 16, C = 512, P = 64, lo = 512, S = 4096;
    } else if (name == "v3") {
      B = 64, H = 128, C = 512, P = 64, lo = 512, S = 4096;
    } else if (name != "tiny") {
      continue;
    }
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    auto len = torch::randint(lo, S + 1, {B}, torch::kInt64);
    len[0] = S;
    auto valid_BS = torch::arange(S, torch::kInt64).view({1, S}) >= (S - len).view({B, 1});
    valid_BS.select(1, S - 1).fill_(true);
    auto allowed = valid_BS.unsqueeze(1).cuda();  // [B, 1, S]: the last slot is the query's
    auto q_lat = torch::randn({B, 1, H, C}, o) * 0.1, q_pe = torch::randn({B, 1, H, P}, o) * 0.1;
    auto c_kv = torch::randn({B, S, C}, o), k_pe = torch::randn({B, S, P}, o);
    const double ours = time_ms(
        [&] { ops::latent_decode_attention(q_lat, q_pe, c_kv, k_pe, allowed, 0.1, Impl::kCuda); },
        args.warmup, args.iters);
    const double comp = time_ms(
        [&] {
          ops::latent_decode_attention(q_lat, q_pe, c_kv, k_pe, allowed, 0.1, Impl::kReference);
        },
        args.warmup, args.iters);
    const double slots = static_cast<double>(len.sum().item<int64_t>());
    const double bytes = slots * (C + P) * 2.0 + B * S + 2.0 * B * H * (2 * C + P);
    const double flops = slots * H * (2.0 * (C + P) + 2.0 * C);
    const double gbs = bytes / (ours * 1e-3) / 1e9;
    std::printf("  %-8s %3lld %4lld %4lld %4lld %11.0f %9.1f %14.1f %7.2fx %8.0f", name.c_str(),
                static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(C),
                static_cast<long long>(P), slots, ours * 1e3, comp * 1e3, comp / ours, gbs);
    if (peak_gbs > 0) {
      std::printf(" %7.0f%%", 100 * gbs / peak_gbs);
    } else {
      std::printf(" %8s", "n/a");
    }
    std::printf(" %8.1f%s\n", flops / (ours * 1e-3) / 1e12,
                peak > 0 && flops / (ours * 1e-3) > 0.5 * peak ? " (compute-bound)" : "");
  }
}

}  // namespace

int run_bench_kernels(const BenchKernelsArgs& args) {
  const auto info = ops::cuda_device_info();
  if (!info) {
    std::cout << "bench kernels: no CUDA device"
              << (ops::cuda_kernels_built() ? "" : " (and this build has no CUDA kernels)")
              << "; nothing to measure\n";
    return 0;
  }
  MOETRON_CHECK_CONFIG(args.iters > 0 && args.warmup >= 0,
                       "bench kernels: --iters must be positive and --warmup non-negative");
  std::printf("device %s, %d SMs, peak memory bandwidth %.0f GB/s (%s)\n", info->name.c_str(),
              info->sm_count, info->peak_bandwidth_gbs, info->bandwidth_source.c_str());
  std::printf(
      "kernel vs LibTorch composite, mean of %d calls after %d warm-up calls (CUDA "
      "events); GB/s = bytes the kernel must move / its time\n",
      args.iters, args.warmup);
  for (const auto& name : args.shapes) make_shape(name);  // unknown names: a usage error first
  bench_mla_attention(args);
  bench_latent_decode(args, info->peak_bandwidth_gbs);

  for (const auto& name : args.shapes) {
    const auto shape = make_shape(name);
    print_rows(shape, bench_shape(shape, args), info->peak_bandwidth_gbs);
  }
  bench_grouped_gemm(args);
  return 0;
}

}  // namespace moetron::cli
