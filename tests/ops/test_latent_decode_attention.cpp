// ops::latent_decode_attention's reference on the CPU: equal to forward_absorbed's einsum/softmax
// composite (bitwise in fp32, fp64-tight with an fp64 softmax), masks as forward_with_cache
// builds them (left padding, causal by slot, T > 1), masked slots without influence, and the
// errors and config errors of the entry point.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <limits>
#include <string>

#include "moetron/core/error.h"
#include "moetron/ops/latent_decode_attention.h"

namespace moetron::ops {
namespace {

// Legend: B sequences, T query tokens, H heads, S slots, C latent width, P rope width.

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// forward_absorbed's composite as it stood before the op existed (softmax dtype a parameter:
// forward_absorbed used fp32 for every input dtype).
torch::Tensor composite(const torch::Tensor& q_lat, const torch::Tensor& q_pe,
                        const torch::Tensor& c_kv, const torch::Tensor& k_pe,
                        const torch::Tensor& allowed, double scale, torch::Dtype softmax_dtype) {
  auto scores_BHTS = torch::einsum("bthc,bsc->bhts", {q_lat, c_kv}) +
                     torch::einsum("bthp,bsp->bhts", {q_pe, k_pe});
  auto logits_BHTS = scores_BHTS.to(softmax_dtype) * scale;
  logits_BHTS =
      logits_BHTS.masked_fill(~allowed.unsqueeze(1), -std::numeric_limits<float>::infinity());
  auto p_BHTS = torch::softmax(logits_BHTS, -1).to(q_lat.scalar_type());
  return torch::einsum("bhts,bsc->bthc", {p_BHTS, c_kv});
}

// forward_with_cache's mask: query t sits at slot S - T + t and sees the valid slots up to it
// and itself. Row b has `pad[b]` invalid (left-padding) slots first.
torch::Tensor engine_mask(int64_t B, int64_t T, int64_t S, const std::vector<int64_t>& pad) {
  auto valid_BS = torch::zeros({B, S}, torch::kBool);
  for (int64_t b = 0; b < B; ++b) valid_BS[b].narrow(0, pad[b], S - pad[b]).fill_(true);
  auto slots_T = torch::arange(T, torch::kInt64) + (S - T);
  auto slot_S = torch::arange(S, torch::kInt64);
  auto allowed = (slot_S.view({1, 1, S}) <= slots_T.view({1, T, 1})) & valid_BS.unsqueeze(1);
  return allowed | (slot_S.view({1, 1, S}) == slots_T.view({1, T, 1}));
}

struct Case {
  torch::Tensor q_lat, q_pe, c_kv, k_pe, allowed;
};

Case random_case(int64_t B, int64_t T, int64_t H, int64_t S, int64_t C, int64_t P,
                 torch::Dtype dtype) {
  const auto o = torch::TensorOptions().dtype(dtype);
  std::vector<int64_t> pad(B);
  for (int64_t b = 0; b < B; ++b) pad[b] = (b * 7) % std::max<int64_t>(1, S - T + 1);
  return {torch::randn({B, T, H, C}, o) * 0.3, torch::randn({B, T, H, P}, o) * 0.3,
          torch::randn({B, S, C}, o), torch::randn({B, S, P}, o), engine_mask(B, T, S, pad)};
}

TEST(LatentDecodeAttention, ReferenceEqualsForwardAbsorbedComposite) {
  torch::manual_seed(0);
  for (const int64_t T : {1, 3}) {
    auto c = random_case(3, T, 4, 19, 16, 4, torch::kFloat32);
    auto got = latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, 0.3);
    auto want = composite(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, 0.3, torch::kFloat32);
    EXPECT_EQ(got.sizes(), (std::vector<int64_t>{3, T, 4, 16}));
    EXPECT_TRUE(torch::equal(got, want)) << "T=" << T;
  }
  // fp64 inputs keep an fp64 softmax: tight against the composite in fp64.
  auto c = random_case(2, 2, 3, 30, 32, 8, torch::kFloat64);
  auto got = latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, 0.2);
  EXPECT_LT(max_abs_diff(
                got, composite(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, 0.2, torch::kFloat64)),
            1e-13);
}

// Slots a row may not see have no influence: scrambling them changes nothing; the cache may be
// a view of the first S slots of a wider buffer (the engine's capacity).
TEST(LatentDecodeAttention, MaskedSlotsHaveNoInfluenceAndViewsWork) {
  torch::manual_seed(1);
  const int64_t B = 2, T = 1, H = 4, S = 12, C = 8, P = 4;
  auto c_buf = torch::randn({B, S + 5, C}, torch::kFloat64);
  auto k_buf = torch::randn({B, S + 5, P}, torch::kFloat64);
  auto q_lat = torch::randn({B, T, H, C}, torch::kFloat64);
  auto q_pe = torch::randn({B, T, H, P}, torch::kFloat64);
  auto allowed = engine_mask(B, T, S, {5, 0});
  auto a = latent_decode_attention(q_lat, q_pe, c_buf.narrow(1, 0, S), k_buf.narrow(1, 0, S),
                                   allowed, 0.5);
  c_buf[0].narrow(0, 0, 5).normal_();  // row 0's padding
  k_buf[0].narrow(0, 0, 5).normal_();
  auto b = latent_decode_attention(q_lat, q_pe, c_buf.narrow(1, 0, S), k_buf.narrow(1, 0, S),
                                   allowed, 0.5);
  EXPECT_TRUE(torch::equal(a, b));
  // Sanity: the unmasked row 1 moves when its slots do.
  c_buf[1].narrow(0, 0, 5).normal_();
  auto d = latent_decode_attention(q_lat, q_pe, c_buf.narrow(1, 0, S), k_buf.narrow(1, 0, S),
                                   allowed, 0.5);
  EXPECT_GT(max_abs_diff(d[1], a[1]), 1e-6);
}

TEST(LatentDecodeAttention, ErrorsNameTheProblem) {
  auto c = random_case(2, 1, 3, 6, 8, 4, torch::kFloat32);
  auto message = [](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] {
              latent_decode_attention(c.q_lat, c.q_pe, c.c_kv.narrow(1, 0, 5), c.k_pe, c.allowed,
                                      1.0);
            }).find("do not match"),
            std::string::npos);
  EXPECT_NE(message([&] {
              latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed.to(torch::kInt64),
                                      1.0);
            }).find("expected a bool allowed mask [2, 1, 6]"),
            std::string::npos);
  EXPECT_NE(message([&] {
              latent_decode_attention(c.q_lat, c.q_pe.narrow(2, 0, 2), c.c_kv, c.k_pe, c.allowed,
                                      1.0);
            }).find("expected q_lat [B, T, H, C] and q_pe [B, T, H, P]"),
            std::string::npos);
  try {
    check_cuda_latent_decode_supports(1024, 64);
    ADD_FAILURE() << "C = 1024 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("kernels.decode_attention: ", 0), 0u) << m;
    if (cuda_kernels_built()) {
      EXPECT_NE(m.find("mla.kv_lora_rank up to 512, got 1024"), std::string::npos) << m;
    } else {
      EXPECT_NE(m.find("no CUDA kernels"), std::string::npos) << m;
    }
  }
  if (cuda_kernels_built()) {
    EXPECT_NO_THROW(check_cuda_latent_decode_supports(512, 64));
    EXPECT_THROW(check_cuda_latent_decode_supports(512, 256), Error);
    EXPECT_NE(message([&] {
                latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, 1.0,
                                        Impl::kCuda);
              }).find("must be CUDA tensors"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace moetron::ops
