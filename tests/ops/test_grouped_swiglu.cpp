// grouped_swiglu reference: equal to the Experts module (bitwise: it is what the module runs)
// and to autograd through a per-expert loop (fp64 to 1e-12, fp32 to round-off), with experts
// without rows, an expert offset (sharded experts), no rows at all; the forward / backward
// primitives equal the autograd node; errors; the torch-free launcher's parameter checks and
// grouping (no device needed: it rejects before touching CUDA); the launcher's cuBLAS arguments
// and the CUDA implementation's problem lists, run on the host through cuBLAS's documented
// column-major semantics, against torch and the reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <string>

#include "model/tiny.h"
#include "moetron/build_config.h"
#include "moetron/core/error.h"
#include "moetron/model/model.h"
#include "moetron/model/moe.h"
#include "moetron/ops/grouped_swiglu.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <cuda_runtime_api.h>

#include <atomic>
#include <stdexcept>

#include "moetron/kernels/grouped_gemm.h"
#include "ops/grouped_swiglu_testing.h"  // src/ops: the host-executor seam
#endif

namespace moetron::ops {
namespace {

// Legend: N rows, D hidden, I expert width, E stacked experts.

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (const int64_t n : v) s += n;
  return s;
}

struct Weights {
  torch::Tensor gate, up, down;
};

Weights random_weights(int64_t E, int64_t D, int64_t I, torch::Dtype dtype) {
  const auto o = torch::TensorOptions().dtype(dtype);
  return {torch::randn({E, I, D}, o) / std::sqrt(double(D)),
          torch::randn({E, I, D}, o) / std::sqrt(double(D)),
          torch::randn({E, D, I}, o) / std::sqrt(double(I))};
}

// y and the gradients of (y · g).sum() w.r.t. x and the three weights.
struct Result {
  torch::Tensor y, dx, dgate, dup, ddown;
};

// Autograd through a plain per-expert loop: the independent statement of the math.
Result autograd_loop(const torch::Tensor& x, const Weights& w, const std::vector<int64_t>& counts,
                     int64_t first, const torch::Tensor& g) {
  auto xi = x.clone().requires_grad_(true);
  auto G = w.gate.clone().requires_grad_(true), U = w.up.clone().requires_grad_(true);
  auto Dn = w.down.clone().requires_grad_(true);
  std::vector<torch::Tensor> outs{torch::zeros({0, x.size(1)}, x.options())};
  int64_t start = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const int64_t e = first + static_cast<int64_t>(i), n = counts[i];
    auto x_n = xi.narrow(0, start, n);
    auto h = torch::silu(x_n.mm(G[e].t())) * x_n.mm(U[e].t());
    outs.push_back(h.mm(Dn[e].t()));
    start += n;
  }
  auto y = torch::cat(outs);
  (y * g).sum().backward();
  auto grad = [](const torch::Tensor& t) {
    return t.grad().defined() ? t.grad() : torch::zeros_like(t);
  };
  return {y.detach(), grad(xi), grad(G), grad(U), grad(Dn)};
}

Result run_op(const torch::Tensor& x, const Weights& w, const std::vector<int64_t>& counts,
              int64_t first, const torch::Tensor& g, Impl impl = Impl::kReference) {
  auto xi = x.clone().requires_grad_(true);
  auto G = w.gate.clone().requires_grad_(true), U = w.up.clone().requires_grad_(true);
  auto Dn = w.down.clone().requires_grad_(true);
  auto y = grouped_swiglu(xi, G, U, Dn, counts, first, impl);
  (y * g).sum().backward();
  return {y.detach(), xi.grad(), G.grad(), U.grad(), Dn.grad()};
}

void expect_bitwise(const Result& a, const Result& b, const std::string& what) {
  EXPECT_TRUE(torch::equal(a.y, b.y)) << what << " y";
  EXPECT_TRUE(torch::equal(a.dx, b.dx)) << what << " dx";
  EXPECT_TRUE(torch::equal(a.dgate, b.dgate)) << what << " dgate";
  EXPECT_TRUE(torch::equal(a.dup, b.dup)) << what << " dup";
  EXPECT_TRUE(torch::equal(a.ddown, b.ddown)) << what << " ddown";
}

void expect_close(const Result& a, const Result& b, double tol, const std::string& what) {
  EXPECT_LT(max_abs_diff(a.y, b.y), tol) << what << " y";
  EXPECT_LT(max_abs_diff(a.dx, b.dx), tol) << what << " dx";
  EXPECT_LT(max_abs_diff(a.dgate, b.dgate), tol) << what << " dgate";
  EXPECT_LT(max_abs_diff(a.dup, b.dup), tol) << what << " dup";
  EXPECT_LT(max_abs_diff(a.ddown, b.ddown), tol) << what << " ddown";
}

// Counts with empty experts first, in the middle and last, and one heavy expert.
const std::vector<int64_t> kSkewed{0, 5, 0, 17, 1, 0, 3, 0};

TEST(GroupedSwiGlu, ReferenceIsWhatTheExpertsModuleRuns) {
  torch::manual_seed(0);
  const int64_t E = 8, D = 12, I = 6;
  model::Experts ex(E, D, I);
  ex->reset_parameters(0.4);
  const int64_t N = sum(kSkewed);
  auto x = torch::randn({N, D});
  auto g = torch::randn({N, D});
  ex->zero_grad();
  auto xi = x.clone().requires_grad_(true);
  auto y = ex(xi, kSkewed);
  (y * g).sum().backward();
  const Result module{y.detach(), xi.grad(), ex->gate_proj.grad(), ex->up_proj.grad(),
                      ex->down_proj.grad()};
  const Weights w{ex->gate_proj.detach(), ex->up_proj.detach(), ex->down_proj.detach()};
  expect_bitwise(run_op(x, w, kSkewed, 0, g), module, "module");
  // And both are the per-expert math (fp32 round-off).
  expect_close(module, autograd_loop(x, w, kSkewed, 0, g), 1e-5, "loop fp32");
}

TEST(GroupedSwiGlu, ReferenceEqualsAutogradLoopInDouble) {
  torch::manual_seed(1);
  for (const auto& counts : std::vector<std::vector<int64_t>>{
           kSkewed, {7, 7, 7, 7, 7, 7, 7, 7}, {0, 0, 0, 0, 0, 0, 0, 9}, {1, 0, 0, 0, 0, 0, 0, 0}}) {
    const int64_t E = 8, D = 10, I = 4, N = sum(counts);
    const auto w = random_weights(E, D, I, torch::kFloat64);
    auto x = torch::randn({N, D}, torch::kFloat64);
    auto g = torch::randn({N, D}, torch::kFloat64);
    const auto got = run_op(x, w, counts, 0, g);
    expect_close(got, autograd_loop(x, w, counts, 0, g), 1e-12, "N " + std::to_string(N));
    for (int64_t e = 0; e < E; ++e) {
      if (counts[e] > 0) continue;  // experts without rows: exactly zero weight gradients
      EXPECT_EQ(got.dgate[e].abs().sum().item<double>(), 0.0) << e;
      EXPECT_EQ(got.dup[e].abs().sum().item<double>(), 0.0) << e;
      EXPECT_EQ(got.ddown[e].abs().sum().item<double>(), 0.0) << e;
    }
  }
}

// fp32 on CPU runs the experts as parallel tasks with the SwiGLU step fused (cpu_fused.h):
// against the fp64 loop at fp32 round-off, two threads, skewed and empty experts.
TEST(GroupedSwiGlu, CpuParallelFp32EqualsTheLoopInDouble) {
  const int saved = at::get_num_threads();
  at::set_num_threads(2);
  torch::manual_seed(11);
  const std::vector<int64_t> counts{90, 0, 300, 17, 0, 64, 1, 200};
  const int64_t E = 8, D = 32, I = 24, N = sum(counts);
  const auto w = random_weights(E, D, I, torch::kFloat64);
  auto x = torch::randn({N, D}, torch::kFloat64), g = torch::randn({N, D}, torch::kFloat64);
  const Weights w32{w.gate.to(torch::kFloat32), w.up.to(torch::kFloat32),
                    w.down.to(torch::kFloat32)};
  const auto got = run_op(x.to(torch::kFloat32), w32, counts, 0, g.to(torch::kFloat32));
  expect_close(got, autograd_loop(x, w, counts, 0, g), 2e-4, "fp32 parallel");
  for (const int64_t e : {1, 4}) EXPECT_EQ(got.dgate[e].abs().sum().item<double>(), 0.0) << e;
  at::set_num_threads(saved);
}

// Expert parallelism: a rank holds a slice of the experts and passes counts for its own
// (first_expert 0 of the local stack); the same rows through the full stack with the slice's
// offset give the same result, and the slice's gradients are the full gradients' slice.
TEST(GroupedSwiGlu, FirstExpertOffsetAndShardedExperts) {
  torch::manual_seed(2);
  const int64_t E = 8, D = 9, I = 5, first = 4;
  model::Experts full(E, D, I);
  full->reset_parameters(0.5);
  model::Experts shard(E, D, I);
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : full->named_parameters())
      shard->named_parameters()[p.key()].copy_(p.value());
  }
  shard->shard(first, 4, E);
  ASSERT_EQ(shard->n_experts(), 4);
  const std::vector<int64_t> counts{3, 0, 6, 2};
  const int64_t N = sum(counts);
  auto x = torch::randn({N, D});
  auto g = torch::randn({N, D});
  auto run = [&](model::Experts& ex, int64_t offset) {
    ex->zero_grad();
    auto xi = x.clone().requires_grad_(true);
    auto y = ex(xi, counts, offset);
    (y * g).sum().backward();
    return Result{y.detach(), xi.grad(), ex->gate_proj.grad(), ex->up_proj.grad(),
                  ex->down_proj.grad()};
  };
  const auto a = run(full, first);
  const auto b = run(shard, 0);
  EXPECT_TRUE(torch::equal(a.y, b.y));
  EXPECT_TRUE(torch::equal(a.dx, b.dx));
  EXPECT_TRUE(torch::equal(a.dgate.narrow(0, first, 4), b.dgate));
  EXPECT_TRUE(torch::equal(a.dup.narrow(0, first, 4), b.dup));
  EXPECT_TRUE(torch::equal(a.ddown.narrow(0, first, 4), b.ddown));
  // Experts before the offset received nothing.
  EXPECT_EQ(a.dgate.narrow(0, 0, first).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(b.ddown[1].abs().sum().item<double>(), 0.0);
  // The offset form against the per-expert math in double.
  const auto w = random_weights(E, D, I, torch::kFloat64);
  auto xd = x.to(torch::kFloat64), gd = g.to(torch::kFloat64);
  expect_close(run_op(xd, w, counts, first, gd), autograd_loop(xd, w, counts, first, gd), 1e-12,
               "offset fp64");
}

TEST(GroupedSwiGlu, PrimitivesEqualTheAutogradNode) {
  torch::manual_seed(3);
  const int64_t E = 8, D = 11, I = 7, N = sum(kSkewed);
  const auto w = random_weights(E, D, I, torch::kFloat32);
  auto x = torch::randn({N, D});
  auto g = torch::randn({N, D});
  const auto node = run_op(x, w, kSkewed, 0, g);
  const auto f = grouped_swiglu_forward(x, w.gate, w.up, w.down, kSkewed, 0, Impl::kReference);
  const auto b =
      grouped_swiglu_backward(g, x, w.gate, w.up, w.down, f, kSkewed, 0, Impl::kReference);
  expect_bitwise({f.y_ND, b.x_ND, b.gate_EID, b.up_EID, b.down_EDI}, node, "primitives");
  EXPECT_TRUE(torch::equal(f.h_NI, torch::silu(f.a_NI) * f.b_NI));
}

TEST(GroupedSwiGlu, NoRowsAtAll) {
  torch::manual_seed(4);
  const int64_t E = 4, D = 6, I = 3;
  const auto w = random_weights(E, D, I, torch::kFloat32);
  for (const auto& counts : std::vector<std::vector<int64_t>>{{}, {0, 0, 0, 0}, {0}}) {
    auto x = torch::randn({0, D});
    const auto r = run_op(x, w, counts, 0, torch::randn({0, D}));
    EXPECT_TRUE(r.y.size(0) == 0 && r.y.size(1) == D) << r.y.sizes();
    EXPECT_TRUE(r.dx.size(0) == 0 && r.dx.size(1) == D) << r.dx.sizes();
    EXPECT_EQ(r.dgate.abs().sum().item<double>(), 0.0);
    EXPECT_EQ(r.dup.abs().sum().item<double>(), 0.0);
    EXPECT_EQ(r.ddown.abs().sum().item<double>(), 0.0);
  }
}

TEST(GroupedSwiGlu, ErrorsAreClear) {
  torch::manual_seed(5);
  const int64_t E = 4, D = 6, I = 3;
  const auto w = random_weights(E, D, I, torch::kFloat32);
  auto x = torch::randn({5, D});
  // Counts that do not cover the rows, reach past the stack, or are negative.
  EXPECT_THROW(grouped_swiglu(x, w.gate, w.up, w.down, {2, 2}, 0), Error);
  EXPECT_THROW(grouped_swiglu(x, w.gate, w.up, w.down, {1, 1, 1, 1, 1}, 0), Error);
  EXPECT_THROW(grouped_swiglu(x, w.gate, w.up, w.down, {5}, 4), Error);
  EXPECT_THROW(grouped_swiglu(x, w.gate, w.up, w.down, {6, -1}, 0), Error);
  EXPECT_THROW(grouped_swiglu(x, w.gate, w.up, w.down, {5}, -1), Error);
  // Shapes and dtypes.
  EXPECT_THROW(grouped_swiglu(torch::randn({5, D + 1}), w.gate, w.up, w.down, {5}, 0), Error);
  EXPECT_THROW(grouped_swiglu(x, w.gate, w.up, w.gate, {5}, 0), Error);
  EXPECT_THROW(grouped_swiglu(x.to(torch::kFloat64), w.gate, w.up, w.down, {5}, 0), Error);
  try {
    grouped_swiglu(x, w.gate, w.up, w.down, {5}, 0);
  } catch (const Error& e) {
    FAIL() << e.what();
  }
  // The CUDA implementation on CPU tensors (or in a build without kernels).
  try {
    grouped_swiglu(x, w.gate, w.up, w.down, {5}, 0, Impl::kCuda);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("CUDA tensor") != std::string::npos ||
                msg.find("no CUDA kernels") != std::string::npos)
        << msg;
  }
}

// kernels.grouped_gemm reaches every MoE layer's experts; 'cuda' is refused at construction
// only by a build without kernels; an unknown value names the key.
TEST(GroupedSwiGlu, ConfigKeyIsWiredAndCheckedAtConstruction) {
  auto cfg = model::testing::tiny_config();
  EXPECT_EQ(model::DeepseekV3ForCausalLM(cfg)->moe_layers()[0]->experts->impl(), Impl::kReference);
  cfg.kernels.grouped_gemm = "cuda";
  if (cuda_kernels_built()) {
    EXPECT_NO_THROW(check_cuda_grouped_gemm_supported());
    model::DeepseekV3ForCausalLM m(cfg);
    for (auto& moe : m->moe_layers()) EXPECT_EQ(moe->experts->impl(), Impl::kCuda);
  } else {
    try {
      model::DeepseekV3ForCausalLM m(cfg);
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_NE(std::string(e.what()).find("kernels.grouped_gemm"), std::string::npos);
    }
  }
  cfg.kernels.grouped_gemm = "cutlass";
  try {
    model::DeepseekV3ForCausalLM m(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("kernels.grouped_gemm"), std::string::npos);
  }
}

#if MOETRON_HAVE_CUDA_KERNELS
// The launcher checks everything before touching the handle or the device.
TEST(GroupedGemmLauncher, RejectsBadParametersWithoutADevice) {
  using kernels::GemmProblem;
  alignas(16) static float buf[64];
  GemmProblem p;
  p.m = 2;
  p.n = 3;
  p.k = 4;
  p.a = buf;
  p.lda = 4;
  p.b = buf;
  p.ldb = 3;
  p.c = buf;
  p.ldc = 3;
  const void* table[3] = {buf, buf, buf};
  kernels::GroupedGemmParams params;
  params.problems = &p;
  params.count = 1;
  params.device_pointers = table;
  // Never dereferenced: every case below is rejected before the handle is used.
  int not_a_handle = 0;
  auto expect_invalid = [&](const GemmProblem& bad, int code, const char* what,
                            cublasHandle_t handle) {
    GemmProblem copy = bad;
    params.problems = &copy;
    const auto st = kernels::launch_grouped_gemm(params, handle, nullptr);
    EXPECT_FALSE(st.ok()) << what;
    EXPECT_EQ(st.cuda, code) << what;
    EXPECT_EQ(st.cublas, 0) << what;
    EXPECT_NE(std::string(st.call).find("launch_grouped_gemm"), std::string::npos) << what;
  };
  // A valid problem still needs a handle.
  expect_invalid(p, cudaErrorInvalidValue, "null handle", nullptr);
  const auto fake = reinterpret_cast<cublasHandle_t>(&not_a_handle);
  GemmProblem bad = p;
  bad.k = 0;
  expect_invalid(bad, cudaErrorInvalidValue, "k = 0", fake);
  bad = p;
  bad.lda = 3;  // A is [m, k] = [2, 4]: rows of 4
  expect_invalid(bad, cudaErrorInvalidValue, "lda < k", fake);
  bad = p;
  bad.trans_b = true;  // B stored [n, k] = [3, 4]: ldb 3 < 4
  expect_invalid(bad, cudaErrorInvalidValue, "ldb < k", fake);
  bad = p;
  bad.ldc = 2;
  expect_invalid(bad, cudaErrorInvalidValue, "ldc < n", fake);
  bad = p;
  bad.c = nullptr;
  expect_invalid(bad, cudaErrorInvalidValue, "null C", fake);
  bad = p;
  bad.m = int64_t(1) << 31;
  expect_invalid(bad, cudaErrorInvalidValue, "m >= 2^31", fake);
  // 16-bit rows of 8 elements (16 bytes) must start 16-byte aligned.
  params.dtype = kernels::GemmDType::kBFloat16;
  bad = p;
  bad.lda = 8;
  bad.a = reinterpret_cast<const char*>(buf) + 4;
  expect_invalid(bad, cudaErrorMisalignedAddress, "misaligned bf16", fake);
  // Nothing to do is success, with or without a handle.
  params.count = 0;
  EXPECT_TRUE(kernels::launch_grouped_gemm(params, nullptr, nullptr).ok());
}

TEST(GroupedGemmLauncher, GroupsRunsOfEqualShapesAndLaysOutThePointerTable) {
  using kernels::GemmProblem;
  std::vector<GemmProblem> ps(5);
  for (auto& p : ps) {
    p.m = 4;
    p.n = 8;
    p.k = 16;
    p.lda = 16;
    p.ldb = 16;
    p.ldc = 8;
    p.trans_b = true;
  }
  ps[2].m = 5;     // another expert's row count
  ps[3].m = 5;     // equal to the previous: same group
  ps[4].beta = 1;  // accumulating: its own group
  int tag[15];
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].a = &tag[i];
    ps[i].b = &tag[5 + i];
    ps[i].c = &tag[10 + i];
  }
  EXPECT_EQ(kernels::grouped_gemm_group_sizes(ps.data(), 5), (std::vector<int>{2, 2, 1}));
  EXPECT_TRUE(kernels::grouped_gemm_group_sizes(ps.data(), 0).empty());
  ASSERT_EQ(kernels::grouped_gemm_pointer_count(5), 15);
  const void* table[15];
  kernels::grouped_gemm_pointers(ps.data(), 5, table);
  // cuBLAS's A array is our B (column-major view of row-major products), then our A, then C.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(table[i], &tag[5 + i]);
    EXPECT_EQ(table[5 + i], &tag[i]);
    EXPECT_EQ(table[10 + i], &tag[10 + i]);
  }
}

// cublasGemmGroupedBatchedEx as documented (column-major; per group alpha, beta, op(A) m x k,
// op(B) k x n; the problems of group g take the next group_size[g] entries of the A, B and C
// pointer arrays; beta = 0 does not read C), on the host for fp32: the independent statement of
// what the launcher's plan asks cuBLAS to compute.
void emulate_cublas(const kernels::GroupedGemmPlan& plan, const void* const* table, int64_t P) {
  int64_t idx = 0;
  for (size_t g = 0; g < plan.group_size.size(); ++g) {
    const int m = plan.m[g], n = plan.n[g], k = plan.k[g];
    const int lda = plan.lda[g], ldb = plan.ldb[g], ldc = plan.ldc[g];
    for (int j = 0; j < plan.group_size[g]; ++j, ++idx) {
      const auto* A = static_cast<const float*>(table[idx]);
      const auto* B = static_cast<const float*>(table[P + idx]);
      auto* C = static_cast<float*>(const_cast<void*>(table[2 * P + idx]));
      for (int c = 0; c < n; ++c) {
        for (int r = 0; r < m; ++r) {
          double acc = 0;
          for (int l = 0; l < k; ++l) {
            const float a = plan.transa[g] == 0 ? A[r + int64_t(l) * lda] : A[l + int64_t(r) * lda];
            const float b = plan.transb[g] == 0 ? B[l + int64_t(c) * ldb] : B[c + int64_t(l) * ldb];
            acc += double(a) * double(b);
          }
          float& out = C[r + int64_t(c) * ldc];
          const double prior = plan.beta[g] == 0.0f ? 0.0 : double(plan.beta[g]) * out;
          out = static_cast<float>(plan.alpha[g] * acc + prior);
        }
      }
    }
  }
}

std::atomic<int> g_host_calls{0};

// Plans like launch_grouped_gemm, lays out the pointer table like the device copy, emulates.
void host_executor(const kernels::GemmProblem* problems, int64_t count, kernels::GemmDType dtype) {
  if (dtype != kernels::GemmDType::kFloat32) throw std::runtime_error("host executor: fp32 only");
  kernels::GroupedGemmParams p;
  p.problems = problems;
  p.count = count;
  p.dtype = dtype;
  const auto plan = kernels::plan_grouped_gemm(p);
  if (plan.status != 0) throw std::runtime_error("host executor: the launcher rejected the call");
  std::vector<const void*> table(kernels::grouped_gemm_pointer_count(count));
  kernels::grouped_gemm_pointers(problems, count, table.data());
  emulate_cublas(plan, table.data(), count);
  ++g_host_calls;
}

struct HostExecutorScope {
  HostExecutorScope() {
    g_host_calls = 0;
    detail::set_grouped_gemm_host_executor(host_executor);
  }
  ~HostExecutorScope() { detail::set_grouped_gemm_host_executor(nullptr); }
};

// Row-major products with every transpose combination, row strides wider than the rows, beta 0
// and 1, equal shapes grouped: the plan's column-major cuBLAS arguments compute them.
TEST(GroupedGemmLauncher, PlanComputesTheRowMajorProducts) {
  torch::manual_seed(7);
  struct Case {
    bool ta, tb;
    int64_t m, n, k;
    float beta;
  };
  const std::vector<Case> cases = {{false, false, 3, 5, 4, 0}, {false, true, 3, 5, 4, 0},
                                   {false, true, 3, 5, 4, 0},  {true, false, 6, 2, 7, 0},
                                   {true, true, 1, 9, 3, 0},   {false, false, 4, 4, 4, 1}};
  std::vector<torch::Tensor> keep, want;
  std::vector<kernels::GemmProblem> ps;
  auto padded = [&](int64_t rows, int64_t cols) {  // [rows, cols] view of [rows, cols + 3]
    auto t = torch::randn({rows, cols + 3}).narrow(1, 0, cols);
    keep.push_back(t);
    return t;
  };
  for (const auto& c : cases) {
    auto A = c.ta ? padded(c.k, c.m) : padded(c.m, c.k);
    auto B = c.tb ? padded(c.n, c.k) : padded(c.k, c.n);
    auto C = padded(c.m, c.n);
    auto expect = (c.ta ? A.t() : A).mm(c.tb ? B.t() : B);
    if (c.beta != 0) expect = expect + C;
    want.push_back(expect);
    kernels::GemmProblem p;
    p.trans_a = c.ta;
    p.trans_b = c.tb;
    p.m = c.m;
    p.n = c.n;
    p.k = c.k;
    p.a = A.data_ptr();
    p.lda = A.stride(0);
    p.b = B.data_ptr();
    p.ldb = B.stride(0);
    p.c = C.data_ptr();
    p.ldc = C.stride(0);
    p.beta = c.beta;
    ps.push_back(p);
  }
  EXPECT_EQ(kernels::grouped_gemm_group_sizes(ps.data(), 6), (std::vector<int>{1, 2, 1, 1, 1}));
  host_executor(ps.data(), static_cast<int64_t>(ps.size()), kernels::GemmDType::kFloat32);
  for (size_t i = 0; i < cases.size(); ++i) {
    auto C = keep[3 * i + 2];
    EXPECT_LT(max_abs_diff(C, want[i]), 1e-5) << "case " << i;
  }
}

// The CUDA implementation's grouped calls (problem lists, strides, transposes, the accumulating
// dx call, empty experts, offsets) run on the host through the launcher's plan: equal to the
// reference forward, backward and through autograd.
TEST(GroupedSwiGlu, CudaPathRunOnTheHostEqualsTheReference) {
  torch::manual_seed(8);
  const int64_t E = 8, D = 12, I = 6, N = sum(kSkewed);
  const auto w = random_weights(E, D, I, torch::kFloat32);
  auto x = torch::randn({N, D});
  auto g = torch::randn({N, D});
  const auto ref = run_op(x, w, kSkewed, 0, g, Impl::kReference);
  HostExecutorScope scope;
  const auto got = run_op(x, w, kSkewed, 0, g, Impl::kCuda);
  EXPECT_EQ(g_host_calls.load(), 5);  // forward 2 (gate+up, down), backward 3
  expect_close(got, ref, 1e-5, "host-run cuda path");
  // An offset slice with equal counts (one group per call kind) and experts before it.
  const std::vector<int64_t> counts{4, 4, 0, 4};
  auto xs = torch::randn({12, D}), gs = torch::randn({12, D});
  expect_close(run_op(xs, w, counts, 3, gs, Impl::kCuda),
               run_op(xs, w, counts, 3, gs, Impl::kReference), 1e-5, "offset, equal counts");
  // No rows: nothing to launch.
  g_host_calls = 0;
  const auto none = run_op(torch::randn({0, D}), w, {0, 0}, 0, torch::randn({0, D}), Impl::kCuda);
  EXPECT_EQ(g_host_calls.load(), 0);
  EXPECT_EQ(none.dgate.abs().sum().item<double>(), 0.0);
}
#endif

}  // namespace
}  // namespace moetron::ops
