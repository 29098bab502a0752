// GPU: the flash-style MLA attention kernels equal the ATen reference on the same device —
// forward O and LSE, backward dQ/dK/dV — over a sweep of batch, heads, lengths (1 to 1000, not
// multiples of the tiles), head widths (K != V) and segments, in fp32 (tight) and bf16/fp16;
// autograd through the op, strided views, bitwise repeats, T = 0, the widest heads and a long
// sequence whose memory stays linear in T. Skipped without a device or kernels.
#include <c10/cuda/CUDACachingAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "moetron/core/error.h"
#include "moetron/model/attention.h"
#include "moetron/model/mla.h"
#include "moetron/ops/mla_attention.h"

namespace moetron::ops {
namespace {

// Legend: B batch, H heads, T tokens, K q/k width, V value width.

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build"

// |a - b| <= tol · (1 + |b|) elementwise, reported as the worst ratio.
double worst(const torch::Tensor& a, const torch::Tensor& b, double tol) {
  if (a.numel() == 0) return 0.0;
  auto ad = a.cpu().to(torch::kFloat64), bd = b.cpu().to(torch::kFloat64);
  return ((ad - bd).abs() / (tol * (1.0 + bd.abs()))).max().item<double>();
}

double tol_of(torch::Dtype d) {
  return d == torch::kFloat32 ? 1e-4 : 2e-2;
}

torch::Tensor segments(int64_t B, int64_t T, int64_t seed) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(seed);
  auto starts = torch::rand({B, T}, g) < 0.02;
  starts.select(1, 0).fill_(false);
  return starts.to(torch::kInt64).cumsum(1).cuda();
}

struct In {
  torch::Tensor q, k, v, dout;
};

In inputs(int64_t B, int64_t H, int64_t T, int64_t K, int64_t V, torch::Dtype dtype) {
  const auto o = torch::TensorOptions().device(torch::kCUDA).dtype(dtype);
  return {torch::randn({B, H, T, K}, o), torch::randn({B, H, T, K}, o),
          torch::randn({B, H, T, V}, o), torch::randn({B, H, T, V}, o)};
}

// The kernel (low precision: on the low-precision inputs) against the reference on the same
// inputs; the reference computes in fp32, so bf16/fp16 differ by the kernel's rounding of P
// and dS to the input dtype.
void expect_matches(int64_t B, int64_t H, int64_t T, int64_t K, int64_t V, bool with_seg,
                    torch::Dtype dtype, bool backward) {
  const std::string what = str_cat("B=", B, " H=", H, " T=", T, " K=", K, " V=", V,
                                   " seg=", with_seg, " dtype=", c10::toString(dtype));
  auto in = inputs(B, H, T, K, V, dtype);
  auto seg = with_seg ? segments(B, T, T + K) : torch::Tensor();
  const double scale = 1.0 / std::sqrt(static_cast<double>(K));
  auto ref = mla_attention_forward(in.q, in.k, in.v, scale, seg, Impl::kReference);
  auto ker = mla_attention_forward(in.q, in.k, in.v, scale, seg, Impl::kCuda);
  const double tol = tol_of(dtype);
  ASSERT_EQ(ker.o_BHTV.sizes(), ref.o_BHTV.sizes()) << what;
  ASSERT_EQ(ker.lse_BHT.scalar_type(), torch::kFloat32) << what;
  EXPECT_LE(worst(ker.o_BHTV, ref.o_BHTV, tol), 1.0) << "O " << what;
  EXPECT_LE(worst(ker.lse_BHT, ref.lse_BHT, dtype == torch::kFloat32 ? 1e-5 : 1e-3), 1.0)
      << "LSE " << what;
  if (!backward) return;
  // Both backwards from the reference's O and LSE, so only the backward differs.
  auto gr = mla_attention_backward(in.dout, in.q, in.k, in.v, ref.o_BHTV, ref.lse_BHT, scale, seg,
                                   Impl::kReference);
  auto gk = mla_attention_backward(in.dout, in.q, in.k, in.v, ref.o_BHTV, ref.lse_BHT, scale, seg,
                                   Impl::kCuda);
  // Gradients sum O(T) terms: relative to the gradient's own scale.
  auto rel = [&](const torch::Tensor& a, const torch::Tensor& b) {
    const double s = b.abs().max().item<double>() + 1e-30;
    return worst(a / s, b / s, dtype == torch::kFloat32 ? 1e-4 : 3e-2);
  };
  EXPECT_LE(rel(gk.dq_BHTK, gr.dq_BHTK), 1.0) << "dQ " << what;
  EXPECT_LE(rel(gk.dk_BHTK, gr.dk_BHTK), 1.0) << "dK " << what;
  EXPECT_LE(rel(gk.dv_BHTV, gr.dv_BHTV), 1.0) << "dV " << what;
}

struct BH {
  int64_t B, H;
};
constexpr BH kBH[] = {{1, 1}, {2, 3}, {3, 16}};

TEST(MlaAttentionGpu, ForwardAndBackwardEqualReferenceFp32) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(0);
  int i = 0;
  for (const int64_t T : {1, 17, 64, 200, 1000}) {
    for (const int64_t K : {24, 64, 192}) {
      for (const int64_t V : {16, 128}) {
        for (const bool seg : {false, true}) {
          const auto bh = kBH[i++ % 3];
          expect_matches(bh.B, bh.H, T, K, V, seg, torch::kFloat32, /*backward=*/true);
        }
      }
    }
  }
}

TEST(MlaAttentionGpu, ForwardAndBackwardEqualReferenceBf16Fp16) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(1);
  int i = 0;
  for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    for (const int64_t T : {1, 17, 64, 200, 1000}) {
      for (const int64_t K : {24, 64, 192}) {
        for (const int64_t V : {16, 128}) {
          for (const bool seg : {false, true}) {
            const auto bh = kBH[i++ % 3];
            expect_matches(bh.B, bh.H, T, K, V, seg, dtype, /*backward=*/true);
          }
        }
      }
    }
  }
}

// The widest heads the kernels take, odd widths (padding inside a 16-column fragment), V > K.
TEST(MlaAttentionGpu, HeadWidthLimitsAndOddWidths) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(2);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    expect_matches(2, 2, 150, 256, 256, true, dtype, true);
    expect_matches(1, 3, 77, 12, 8, false, dtype, true);
    expect_matches(2, 2, 90, 16, 40, true, dtype, true);
    expect_matches(1, 2, 65, 1, 1, false, dtype, true);
  }
}

// Autograd through the op on CUDA equals autograd through model::causal_attention (SDPA with the
// segment mask) on fp32 inputs; v is the model's strided view.
TEST(MlaAttentionGpu, AutogradEqualsCausalAttention) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(3);
  const int64_t B = 2, H = 4, T = 150, K = 24, V = 16;
  for (const bool with_seg : {false, true}) {
    auto in = inputs(B, H, T, K, V, torch::kFloat32);
    auto v_BTHV = torch::randn({B, T, H, V}, torch::kCUDA);
    auto seg = with_seg ? segments(B, T, 9) : torch::Tensor();
    auto mask = with_seg ? model::causal_segment_mask(T, seg, torch::kCUDA) : torch::Tensor();
    std::vector<torch::Tensor> a{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                 v_BTHV.clone().requires_grad_()};
    std::vector<torch::Tensor> b{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                 v_BTHV.clone().requires_grad_()};
    auto oa = mla_attention(a[0], a[1], a[2].transpose(1, 2), 0.2, seg, Impl::kCuda);
    auto ob = model::causal_attention(b[0], b[1], b[2].transpose(1, 2), 0.2, mask);
    EXPECT_LE(worst(oa, ob, 1e-4), 1.0);
    (oa * in.dout).sum().backward();
    (ob * in.dout).sum().backward();
    for (int i = 0; i < 3; ++i) {
      const double s = b[i].grad().abs().max().item<double>();
      EXPECT_LE(worst(a[i].grad() / s, b[i].grad() / s, 1e-4), 1.0) << i << " seg=" << with_seg;
    }
  }
}

// The same inputs give bitwise the same outputs and gradients (no atomics), and strided views
// give the results of their contiguous copies.
TEST(MlaAttentionGpu, RepeatsBitwiseAndStridesDoNotMatter) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(4);
  const int64_t B = 2, H = 8, T = 333, K = 192, V = 128;
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto in = inputs(B, H, T, K, V, dtype);
    auto seg = segments(B, T, 11);
    auto run = [&](const torch::Tensor& v) {
      auto f = mla_attention_forward(in.q, in.k, v, 0.1, seg, Impl::kCuda);
      auto g = mla_attention_backward(in.dout, in.q, in.k, v, f.o_BHTV, f.lse_BHT, 0.1, seg,
                                      Impl::kCuda);
      return std::vector<torch::Tensor>{f.o_BHTV, f.lse_BHT, g.dq_BHTK, g.dk_BHTK, g.dv_BHTV};
    };
    auto a = run(in.v);
    auto b = run(in.v);
    auto strided = run(in.v.transpose(1, 2).contiguous().transpose(1, 2));
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::equal(a[i], b[i])) << "output " << i << " differs between runs";
      EXPECT_TRUE(torch::equal(a[i], strided[i])) << "output " << i << " depends on v's strides";
    }
  }
}

TEST(MlaAttentionGpu, ZeroTokensAndEmptyBatch) {
  SKIP_WITHOUT_CUDA();
  for (const auto& [B, T] : std::vector<std::pair<int64_t, int64_t>>{{2, 0}, {0, 5}}) {
    auto in = inputs(B, 3, T, 24, 16, torch::kBFloat16);
    auto f = mla_attention_forward(in.q, in.k, in.v, 1.0, {}, Impl::kCuda);
    EXPECT_EQ(f.o_BHTV.sizes(), in.v.sizes());
    auto g = mla_attention_backward(in.dout, in.q, in.k, in.v, f.o_BHTV, f.lse_BHT, 1.0, {},
                                    Impl::kCuda);
    EXPECT_EQ(g.dk_BHTK.sizes(), in.k.sizes());
  }
}

// T = 16384 with V3's head widths: the kernels hold no T x T matrix, so the peak memory of a
// forward + backward is a small multiple of the inputs (a T x T fp32 score matrix per head
// would be 1 GiB).
TEST(MlaAttentionGpu, LongSequenceMemoryIsLinearInT) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(5);
  const int64_t B = 1, H = 2, T = 16384, K = 192, V = 128;
  auto in = inputs(B, H, T, K, V, torch::kBFloat16);
  torch::cuda::synchronize();
  const auto device = in.q.device().index();
  c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  const auto before =
      c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[0].current;
  auto f = mla_attention_forward(in.q, in.k, in.v, 0.1, {}, Impl::kCuda);
  auto g =
      mla_attention_backward(in.dout, in.q, in.k, in.v, f.o_BHTV, f.lse_BHT, 0.1, {}, Impl::kCuda);
  torch::cuda::synchronize();
  const auto peak = c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[0].peak;
  const int64_t input_bytes = (in.q.numel() + in.k.numel() + in.v.numel()) * 2;
  EXPECT_LT(peak - before, 3 * input_bytes) << "peak " << peak - before << " bytes";
  EXPECT_TRUE(torch::isfinite(g.dq_BHTK).all().item<bool>());
  // Spot check a few rows against the reference on a slice that fits (the first 1024 tokens
  // only see each other).
  const int64_t S = 1024;
  auto head = [&](const torch::Tensor& t) { return t.narrow(2, 0, S).contiguous(); };
  auto ref = mla_attention_forward(head(in.q), head(in.k), head(in.v), 0.1, {}, Impl::kReference);
  EXPECT_LE(worst(head(f.o_BHTV), ref.o_BHTV, 2e-2), 1.0);
}

}  // namespace
}  // namespace moetron::ops
