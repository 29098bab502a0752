// GPU: the latent decode attention kernel equals forward_absorbed's composite on the same device
// over batches of sequences with mixed lengths (left padding as the generation engine makes),
// T = 1 and T > 1 query rows, V3 / V2-Lite / tiny cache widths, fp32 and bf16, one split and
// many; results repeat bitwise. Skipped without a device or kernels.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "moetron/core/error.h"
#include "moetron/ops/latent_decode_attention.h"

namespace moetron::ops {
namespace {

// Legend: B sequences, T query tokens, H heads, S slots, C latent width, P rope width.

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build"

double worst(const torch::Tensor& a, const torch::Tensor& b, double tol) {
  if (a.numel() == 0) return 0.0;
  auto ad = a.cpu().to(torch::kFloat64), bd = b.cpu().to(torch::kFloat64);
  return ((ad - bd).abs() / (tol * (1.0 + bd.abs()))).max().item<double>();
}

// forward_with_cache's mask for rows of `len[b]` real tokens, left-padded to S slots: query t
// (slot S - T + t) sees the real slots up to itself, and itself.
torch::Tensor engine_mask(int64_t T, int64_t S, const std::vector<int64_t>& len) {
  const int64_t B = static_cast<int64_t>(len.size());
  auto valid_BS = torch::zeros({B, S}, torch::kBool);
  for (int64_t b = 0; b < B; ++b) valid_BS[b].narrow(0, S - len[b], len[b]).fill_(true);
  auto slots_T = torch::arange(T, torch::kInt64) + (S - T);
  auto slot_S = torch::arange(S, torch::kInt64);
  auto allowed = (slot_S.view({1, 1, S}) <= slots_T.view({1, T, 1})) & valid_BS.unsqueeze(1);
  return (allowed | (slot_S.view({1, 1, S}) == slots_T.view({1, T, 1}))).cuda();
}

struct Case {
  torch::Tensor q_lat, q_pe, c_kv, k_pe, allowed;
};

// The cache is a view of the first S slots of a buffer with room for more (as the engine's).
Case make_case(int64_t T, int64_t H, int64_t S, int64_t C, int64_t P, torch::Dtype dtype,
               const std::vector<int64_t>& len) {
  const int64_t B = static_cast<int64_t>(len.size());
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
  auto c_buf = torch::randn({B, S + 8, C}, o), k_buf = torch::randn({B, S + 8, P}, o);
  return {torch::randn({B, T, H, C}, o) * 0.2, torch::randn({B, T, H, P}, o) * 0.2,
          c_buf.narrow(1, 0, S), k_buf.narrow(1, 0, S), engine_mask(T, S, len)};
}

std::vector<int64_t> mixed_lengths(int64_t B, int64_t lo, int64_t hi, int64_t seed) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(seed);
  auto l = torch::randint(lo, hi + 1, {B}, g);
  std::vector<int64_t> out(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + B);
  out[0] = hi;  // the longest row fills the cache
  return out;
}

void expect_matches(const Case& c, double scale, torch::Dtype dtype, int splits,
                    const std::string& what) {
  auto ref =
      latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, scale, Impl::kReference);
  auto ker = latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, scale, Impl::kCuda,
                                     splits);
  ASSERT_EQ(ker.sizes(), ref.sizes()) << what;
  // bf16: the reference rounds the scores to bf16 (einsum outputs) before its fp32 softmax, the
  // kernel keeps them in fp32; both round p to bf16.
  EXPECT_LE(worst(ker, ref, dtype == torch::kFloat32 ? 1e-4 : 3e-2), 1.0) << what;
}

TEST(LatentDecodeGpu, KernelEqualsReferenceSweep) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(0);
  struct Widths {
    int64_t C, P;
  };
  for (const auto w : {Widths{16, 4}, Widths{512, 64}, Widths{24, 8}}) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      for (const int64_t H : {1, 16, 128}) {
        for (const int64_t T : {1, 3}) {
          for (const int64_t S : {3, 17, 100, 1000}) {
            for (const int splits : {0, 1, 4}) {
              const int64_t B = H == 128 ? 2 : 3;
              auto len = mixed_lengths(B, T, S, S + H);
              auto c = make_case(T, H, S, w.C, w.P, dtype, len);
              expect_matches(c, 0.13, dtype, splits,
                             str_cat("C=", w.C, " P=", w.P, " H=", H, " T=", T, " S=", S,
                                     " splits=", splits, " dtype=", c10::toString(dtype)));
            }
          }
        }
      }
    }
  }
}

// The generation engine's batch: 64 sequences of 512..4096 cached tokens in one launch, V3's
// widths and heads, bf16; also with the V2-Lite head count.
TEST(LatentDecodeGpu, MixedLengthsInOneLaunch) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(1);
  for (const int64_t H : {128, 16}) {
    auto len = mixed_lengths(64, 512, 4096, H);
    auto c = make_case(1, H, 4096, 512, 64, torch::kBFloat16, len);
    expect_matches(c, 0.1352338, torch::kBFloat16, 0, str_cat("H=", H));
  }
}

TEST(LatentDecodeGpu, RepeatsBitwiseAndSplitsAgree) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(2);
  auto len = mixed_lengths(8, 100, 3000, 3);
  auto c = make_case(1, 16, 3000, 512, 64, torch::kFloat32, len);
  auto run = [&](int splits) {
    return latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, c.allowed, 0.1, Impl::kCuda,
                                   splits);
  };
  EXPECT_TRUE(torch::equal(run(0), run(0)));
  EXPECT_TRUE(torch::equal(run(5), run(5)));
  EXPECT_LE(worst(run(1), run(13), 1e-5), 1.0);
}

TEST(LatentDecodeGpu, EmptyBatchAndNoSlots) {
  SKIP_WITHOUT_CUDA();
  auto c = make_case(1, 4, 5, 16, 4, torch::kFloat32, {5, 2});
  auto z = latent_decode_attention(c.q_lat.narrow(0, 0, 0), c.q_pe.narrow(0, 0, 0),
                                   c.c_kv.narrow(0, 0, 0), c.k_pe.narrow(0, 0, 0),
                                   c.allowed.narrow(0, 0, 0), 1.0, Impl::kCuda);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{0, 1, 4, 16}));
  // A row with no allowed slot gives 0 from the kernel (the reference gives NaN).
  auto none = torch::zeros_like(c.allowed);
  auto z0 = latent_decode_attention(c.q_lat, c.q_pe, c.c_kv, c.k_pe, none, 1.0, Impl::kCuda);
  EXPECT_EQ(z0.abs().max().item<float>(), 0.0f);
}

}  // namespace
}  // namespace moetron::ops
