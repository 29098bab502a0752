// ops::mla_attention's reference on the CPU: equal to model::causal_attention with the mask
// causal_segment_mask builds from segment ids (values and gradients, fp64), LSE by its
// definition, sequences that are not a multiple of 64, K != V, the backward op == autograd,
// T = 0, and the errors and config errors of the entry points.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>

#include "model/tiny.h"
#include "moetron/core/error.h"
#include "moetron/model/attention.h"
#include "moetron/model/mla.h"
#include "moetron/model/model.h"
#include "moetron/ops/mla_attention.h"

namespace moetron::ops {
namespace {

// Legend: B batch, H heads, T tokens, K q/k width, V value width.

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Packed-sample ids: runs of random lengths, increasing along T.
torch::Tensor random_segments(int64_t B, int64_t T, int64_t seed) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(seed);
  auto starts = torch::rand({B, T}, g) < 0.08;
  starts.select(1, 0).fill_(false);
  return starts.to(torch::kInt64).cumsum(1);
}

struct Inputs {
  torch::Tensor q, k, v;
};

Inputs random_inputs(int64_t B, int64_t H, int64_t T, int64_t K, int64_t V, torch::Dtype dtype) {
  const auto o = torch::TensorOptions().dtype(dtype);
  return {torch::randn({B, H, T, K}, o), torch::randn({B, H, T, K}, o),
          torch::randn({B, H, T, V}, o)};
}

torch::Tensor mask_of(int64_t T, const torch::Tensor& seg) {
  return seg.defined() ? model::causal_segment_mask(T, seg, torch::kCPU) : torch::Tensor();
}

TEST(MlaAttention, ReferenceEqualsCausalAttention) {
  torch::manual_seed(0);
  for (const int64_t T : {1, 17, 64, 130, 600}) {  // 600: more than one reference chunk
    for (const auto& [K, V] : std::vector<std::pair<int64_t, int64_t>>{{24, 16}, {12, 20}}) {
      for (const bool with_seg : {false, true}) {
        const int64_t B = 2, H = 3;
        auto in = random_inputs(B, H, T, K, V, torch::kFloat64);
        auto seg = with_seg ? random_segments(B, T, T) : torch::Tensor();
        const double scale = 1.0 / std::sqrt(static_cast<double>(K));
        auto want = model::causal_attention(in.q, in.k, in.v, scale, mask_of(T, seg));
        auto got = mla_attention(in.q, in.k, in.v, scale, seg);
        EXPECT_EQ(got.sizes(), want.sizes());
        EXPECT_EQ(got.scalar_type(), torch::kFloat64);
        EXPECT_LT(max_abs_diff(got, want), 1e-12)
            << "T=" << T << " K=" << K << " V=" << V << " seg=" << with_seg;
      }
    }
  }
}

TEST(MlaAttention, LseIsTheLogSumExpOfTheAllowedScores) {
  torch::manual_seed(1);
  const int64_t B = 2, H = 2, T = 70, K = 16, V = 8;
  auto in = random_inputs(B, H, T, K, V, torch::kFloat64);
  auto seg = random_segments(B, T, 3);
  const double scale = 0.3;
  auto f = mla_attention_forward(in.q, in.k, in.v, scale, seg, Impl::kReference);
  auto scores = torch::matmul(in.q, in.k.transpose(-1, -2)) * scale;
  scores.masked_fill_(mask_of(T, seg).unsqueeze(1).logical_not(), -INFINITY);
  EXPECT_LT(max_abs_diff(f.lse_BHT, scores.logsumexp(-1)), 1e-12);
  EXPECT_LT(max_abs_diff(f.o_BHTV, torch::matmul(torch::softmax(scores, -1), in.v)), 1e-12);
}

// The op's gradients (backward = mla_attention_backward) against autograd through
// causal_attention, with segments, T not a multiple of 64 and K != V.
TEST(MlaAttention, GradientsEqualAutogradOfCausalAttention) {
  torch::manual_seed(2);
  for (const bool with_seg : {false, true}) {
    const int64_t B = 2, H = 3, T = 70, K = 24, V = 16;
    auto in = random_inputs(B, H, T, K, V, torch::kFloat64);
    auto seg = with_seg ? random_segments(B, T, 5) : torch::Tensor();
    auto w = torch::randn({B, H, T, V}, torch::kFloat64);
    const double scale = 0.25;
    std::vector<torch::Tensor> a{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                 in.v.clone().requires_grad_()};
    std::vector<torch::Tensor> b{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                 in.v.clone().requires_grad_()};
    (mla_attention(a[0], a[1], a[2], scale, seg) * w).sum().backward();
    (model::causal_attention(b[0], b[1], b[2], scale, mask_of(T, seg)) * w).sum().backward();
    for (int i = 0; i < 3; ++i) {
      EXPECT_LT(max_abs_diff(a[i].grad(), b[i].grad()), 1e-11)
          << "input " << i << " seg=" << with_seg;
    }
  }
}

// The op also takes non-contiguous views (the model's transposed v) and a segment-id dtype
// other than int64.
TEST(MlaAttention, StridedInputsAndInt32Segments) {
  torch::manual_seed(3);
  const int64_t B = 2, H = 4, T = 33, K = 12, V = 8;
  auto v_BTHV = torch::randn({B, T, H, V}, torch::kFloat64);
  auto in = random_inputs(B, H, T, K, V, torch::kFloat64);
  auto seg = random_segments(B, T, 7);
  auto a = mla_attention(in.q, in.k, v_BTHV.transpose(1, 2), 0.5, seg.to(torch::kInt32));
  auto b = mla_attention(in.q, in.k, v_BTHV.transpose(1, 2).contiguous(), 0.5, seg);
  EXPECT_TRUE(torch::equal(a, b));
}

// fp32 and bf16 inputs: the softmax runs in fp32, so the result is the fp64 one on the same
// (rounded) inputs up to fp32 round-off, then rounded once to the input dtype.
TEST(MlaAttention, SoftmaxInFp32ForLowPrecisionInputs) {
  torch::manual_seed(4);
  const int64_t B = 1, H = 2, T = 65, K = 16, V = 16;
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto in = random_inputs(B, H, T, K, V, dtype);
    auto got = mla_attention_forward(in.q, in.k, in.v, 0.25, {}, Impl::kReference);
    auto want = mla_attention_forward(in.q.to(torch::kFloat64), in.k.to(torch::kFloat64),
                                      in.v.to(torch::kFloat64), 0.25, {}, Impl::kReference);
    EXPECT_EQ(got.o_BHTV.scalar_type(), dtype);
    EXPECT_EQ(got.lse_BHT.scalar_type(), torch::kFloat32);
    EXPECT_LT(max_abs_diff(got.o_BHTV, want.o_BHTV.to(dtype)),
              dtype == torch::kFloat32 ? 1e-5 : 1e-2);
    EXPECT_LT(max_abs_diff(got.lse_BHT, want.lse_BHT), 1e-5);
  }
}

TEST(MlaAttention, ZeroTokens) {
  auto in = random_inputs(2, 3, 0, 8, 4, torch::kFloat32);
  auto f = mla_attention_forward(in.q, in.k, in.v, 1.0, {}, Impl::kReference);
  EXPECT_EQ(f.o_BHTV.sizes(), (std::vector<int64_t>{2, 3, 0, 4}));
  EXPECT_EQ(f.lse_BHT.sizes(), (std::vector<int64_t>{2, 3, 0}));
  auto g = mla_attention_backward(f.o_BHTV, in.q, in.k, in.v, f.o_BHTV, f.lse_BHT, 1.0, {},
                                  Impl::kReference);
  EXPECT_EQ(g.dq_BHTK.sizes(), in.q.sizes());
  EXPECT_EQ(g.dv_BHTV.sizes(), in.v.sizes());
}

TEST(MlaAttention, ErrorsNameTheProblem) {
  auto in = random_inputs(1, 2, 5, 8, 4, torch::kFloat32);
  auto message = [](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] {
              mla_attention(in.q, in.k.narrow(2, 0, 4), in.v, 1.0);
            }).find("expected q, k [B, H, T, K] and v [B, H, T, V]"),
            std::string::npos);
  EXPECT_NE(message([&] {
              mla_attention(in.q, in.k, in.v, 1.0, torch::zeros({1, 4}, torch::kInt64));
            }).find("expected integer segment_ids [1, 5]"),
            std::string::npos);
  EXPECT_NE(message([&] {
              mla_attention(in.q, in.k, in.v, 1.0, torch::zeros({1, 5}));
            }).find("expected integer segment_ids"),
            std::string::npos);
  EXPECT_NE(message([&] {
              mla_attention_forward(in.q, in.k.to(torch::kFloat64), in.v, 1.0, {},
                                    Impl::kReference);
            }).find("must share a dtype"),
            std::string::npos);
  // The CUDA path: limits are config errors naming kernels.attention (or, without kernels in
  // this build, the no-kernels config error); CPU tensors are a runtime error.
  try {
    check_cuda_mla_attention_supports(300, 128);
    ADD_FAILURE() << "K = 300 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("kernels.attention: ", 0), 0u) << m;
    if (cuda_kernels_built()) {
      EXPECT_NE(m.find("up to 256, got q/k 300"), std::string::npos) << m;
      EXPECT_NE(m.find("use kernels.attention: reference"), std::string::npos) << m;
    } else {
      EXPECT_NE(m.find("no CUDA kernels"), std::string::npos) << m;
    }
  }
  if (cuda_kernels_built()) {
    EXPECT_NO_THROW(check_cuda_mla_attention_supports(192, 128));
    EXPECT_NO_THROW(check_cuda_mla_attention_supports(256, 256));
    EXPECT_THROW(check_cuda_mla_attention_supports(192, 257), Error);
    EXPECT_NE(message([&] {
                mla_attention(in.q, in.k, in.v, 1.0, {}, Impl::kCuda);
              }).find("must be a CUDA tensor"),
              std::string::npos);
  }
}

// kernels.attention / kernels.decode_attention: cuda are checked when the model is built: head
// widths beyond the kernels' limits (or a build without kernels) are config errors then.
TEST(MlaAttention, ModelConstructionChecksTheKernelLimits) {
  auto expect_config_error = [](const config::Config& cfg, const std::string& key,
                                const std::string& limit) {
    try {
      model::DeepseekV3ForCausalLM m(cfg);
      ADD_FAILURE() << "no error for " << key;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(key + ": ", 0), 0u) << msg;
      if (cuda_kernels_built()) {
        EXPECT_NE(msg.find(limit), std::string::npos) << msg;
      }
    }
  };
  auto cfg = model::testing::tiny_config();
  cfg.kernels.attention = "cuda";
  cfg.mla.qk_nope_head_dim = 300;
  expect_config_error(cfg, "kernels.attention", "got q/k 304");
  cfg = model::testing::tiny_config();
  cfg.kernels.decode_attention = "cuda";
  cfg.mla.kv_lora_rank = 1024;
  expect_config_error(cfg, "kernels.decode_attention", "got 1024");
  cfg = model::testing::tiny_config();
  cfg.kernels.attention = "cuda";
  cfg.kernels.decode_attention = "cuda";
  if (cuda_kernels_built()) {
    model::DeepseekV3ForCausalLM m(cfg);
    EXPECT_EQ(m->model->layer(0)->self_attn->attention_impl(), Impl::kCuda);
    EXPECT_EQ(m->model->layer(2)->self_attn->decode_attention_impl(), Impl::kCuda);
  } else {
    expect_config_error(cfg, "kernels.attention", "");
  }
}

}  // namespace
}  // namespace moetron::ops
