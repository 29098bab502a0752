// grouped_swiglu: the routed experts' SwiGLU over rows grouped by expert. The reference runs one
// ATen matmul per non-empty expert and projection straight into that expert's rows of a shared
// buffer (or its slice of a weight gradient); the CUDA implementation issues each projection for
// all experts as one cuBLAS grouped GEMM. The elementwise SwiGLU and its backward are the same
// ATen ops in both, so the two differ only in the matmuls' rounding.
#include "moetron/ops/grouped_swiglu.h"

#include <torch/torch.h>

#include <climits>
#include <optional>

#include "cuda_util.h"
#include "grouped_swiglu_testing.h"
#include "moetron/ops/cpu_fused.h"
#include "moetron/ops/cpu_gemm.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include <atomic>

#include "moetron/kernels/grouped_gemm.h"
#endif

namespace moetron::ops {

// Legend: N rows grouped by expert, D hidden, I expert width, E stacked experts.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kKey = "kernels.grouped_gemm";

// fn(stacked expert, first row, rows) for every expert that received rows, in row order.
template <typename Fn>
void for_each_expert(const std::vector<int64_t>& counts, int64_t first, Fn&& fn) {
  int64_t start = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const int64_t n = counts[i];
    if (n > 0) fn(first + static_cast<int64_t>(i), start, n);
    start += n;
  }
}

void check_inputs(const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                  const torch::Tensor& up_EID, const torch::Tensor& down_EDI,
                  const std::vector<int64_t>& counts, int64_t first) {
  MOETRON_CHECK(x_ND.dim() == 2, "grouped_swiglu: expected rows [N, D], got ", x_ND.sizes());
  MOETRON_CHECK(gate_EID.dim() == 3 && up_EID.sizes() == gate_EID.sizes() && down_EDI.dim() == 3 &&
                    down_EDI.size(0) == gate_EID.size(0) && down_EDI.size(1) == gate_EID.size(2) &&
                    down_EDI.size(2) == gate_EID.size(1),
                "grouped_swiglu: expected gate and up [E, I, D] and down [E, D, I], got ",
                gate_EID.sizes(), ", ", up_EID.sizes(), " and ", down_EDI.sizes());
  MOETRON_CHECK(x_ND.size(1) == gate_EID.size(2), "grouped_swiglu: rows of width ", x_ND.size(1),
                " for experts of hidden size ", gate_EID.size(2));
  for (const auto* w : {&gate_EID, &up_EID, &down_EDI}) {
    MOETRON_CHECK(w->scalar_type() == x_ND.scalar_type() && w->device() == x_ND.device(),
                  "grouped_swiglu: weights must have the rows' dtype and device (", x_ND.dtype(),
                  " on ", x_ND.device(), "), got ", w->dtype(), " on ", w->device());
  }
  const int64_t E = gate_EID.size(0);
  MOETRON_CHECK(first >= 0 && first + static_cast<int64_t>(counts.size()) <= E,
                "grouped_swiglu: ", counts.size(), " counts from expert ", first, " exceed the ", E,
                " stacked experts");
  int64_t total = 0;
  for (const int64_t n : counts) {
    MOETRON_CHECK(n >= 0, "grouped_swiglu: negative row count ", n);
    total += n;
  }
  MOETRON_CHECK(total == x_ND.size(0), "grouped_swiglu: counts sum to ", total, " but got ",
                x_ND.size(0), " rows");
}

// Weight gradients of experts that received no rows are zero (runs of them zeroed at once).
void zero_experts_without_rows(const std::vector<int64_t>& counts, int64_t first,
                               std::initializer_list<torch::Tensor> grads_E) {
  const int64_t E = grads_E.begin()->size(0);
  std::vector<bool> has_rows(E, false);
  for_each_expert(counts, first, [&](int64_t e, int64_t, int64_t) { has_rows[e] = true; });
  for (int64_t e = 0; e < E;) {
    if (has_rows[e]) {
      ++e;
      continue;
    }
    int64_t end = e;
    while (end < E && !has_rows[end]) ++end;
    for (const auto& g : grads_E) g.narrow(0, e, end - e).zero_();
    e = end;
  }
}

// ---- reference: one matmul per expert and projection ------------------------------------------

// out = a · b, written into `out` (a view into a larger buffer). fp32 CPU products large enough
// go through oneDNN (ops/cpu_gemm.h).
void mm_into(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b) {
  cpu::gemm_out(out, a, b);
}

void gate_up_reference(const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                       const torch::Tensor& up_EID, const std::vector<int64_t>& counts,
                       int64_t first, torch::Tensor& a_NI, torch::Tensor& b_NI) {
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    auto x_nD = x_ND.narrow(0, start, n);
    mm_into(a_NI.narrow(0, start, n), x_nD, gate_EID[e].t());
    mm_into(b_NI.narrow(0, start, n), x_nD, up_EID[e].t());
  });
}

void down_reference(const torch::Tensor& h_NI, const torch::Tensor& down_EDI,
                    const std::vector<int64_t>& counts, int64_t first, torch::Tensor& y_ND) {
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    mm_into(y_ND.narrow(0, start, n), h_NI.narrow(0, start, n), down_EDI[e].t());
  });
}

// dh = dy D_e and dD_e = dyᵀ h.
void down_backward_reference(const torch::Tensor& dy_ND, const torch::Tensor& h_NI,
                             const torch::Tensor& down_EDI, const std::vector<int64_t>& counts,
                             int64_t first, torch::Tensor& dh_NI, torch::Tensor& ddown_EDI) {
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    auto dy_nD = dy_ND.narrow(0, start, n);
    mm_into(dh_NI.narrow(0, start, n), dy_nD, down_EDI[e]);
    mm_into(ddown_EDI[e], dy_nD.t(), h_NI.narrow(0, start, n));
  });
}

// dx = da G_e + db U_e, dG_e = daᵀ x, dU_e = dbᵀ x.
void gate_up_backward_reference(const torch::Tensor& da_NI, const torch::Tensor& db_NI,
                                const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                                const torch::Tensor& up_EID, const std::vector<int64_t>& counts,
                                int64_t first, torch::Tensor& dx_ND, torch::Tensor& dgate_EID,
                                torch::Tensor& dup_EID) {
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    auto x_nD = x_ND.narrow(0, start, n);
    auto dx_nD = dx_ND.narrow(0, start, n);
    auto da_nI = da_NI.narrow(0, start, n), db_nI = db_NI.narrow(0, start, n);
    mm_into(dx_nD, da_nI, gate_EID[e]);
    dx_nD.addmm_(db_nI, up_EID[e]);
    mm_into(dgate_EID[e], da_nI.t(), x_nD);
    mm_into(dup_EID[e], db_nI.t(), x_nD);
  });
}

// ---- CPU fp32: the reference's matmuls with the experts in parallel ---------------------------

// The experts are independent (their own rows, their own weights and weight gradients), so on CPU
// each expert is one task on the intra-op threads: the same per-expert matmuls, single-threaded,
// with the SwiGLU step fused in (ops/cpu_fused.h). For a small model this replaces a thread-pool
// fork/join per matmul and ~10 dispatched views and elementwise ops per expert with one parallel
// region per direction.
bool cpu_parallel(const torch::Tensor& x_ND) {
  return x_ND.device().is_cpu() && x_ND.scalar_type() == torch::kFloat32;
}

struct ExpertRows {
  int64_t expert, start, rows;
};
std::vector<ExpertRows> experts_with_rows(const std::vector<int64_t>& counts, int64_t first) {
  std::vector<ExpertRows> out;
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    out.push_back({e, start, n});
  });
  return out;
}

void forward_cpu_parallel(const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                          const torch::Tensor& up_EID, const torch::Tensor& down_EDI,
                          const std::vector<int64_t>& counts, int64_t first,
                          GroupedSwiGluForward& f) {
  f.h_NI = torch::empty_like(f.a_NI);
  const auto experts = experts_with_rows(counts, first);
  cpu::parallel_tasks(static_cast<int64_t>(experts.size()), [&](int64_t i) {
    const auto [e, start, n] = experts[i];
    auto x_nD = x_ND.narrow(0, start, n);
    auto a_nI = f.a_NI.narrow(0, start, n), b_nI = f.b_NI.narrow(0, start, n);
    auto h_nI = f.h_NI.narrow(0, start, n);
    mm_into(a_nI, x_nD, gate_EID[e].t());
    mm_into(b_nI, x_nD, up_EID[e].t());
    cpu::swiglu_forward(a_nI.data_ptr<float>(), b_nI.data_ptr<float>(), h_nI.data_ptr<float>(),
                        h_nI.numel());
    mm_into(f.y_ND.narrow(0, start, n), h_nI, down_EDI[e].t());
  });
}

void backward_cpu_parallel(const torch::Tensor& dy_ND, const torch::Tensor& x_ND,
                           const torch::Tensor& gate_EID, const torch::Tensor& up_EID,
                           const torch::Tensor& down_EDI, const GroupedSwiGluForward& f,
                           const std::vector<int64_t>& counts, int64_t first,
                           GroupedSwiGluGrads& g) {
  const auto a_NI = f.a_NI.contiguous(), b_NI = f.b_NI.contiguous(), h_NI = f.h_NI.contiguous();
  auto dh_NI = torch::empty_like(h_NI), da_NI = torch::empty_like(h_NI);
  auto db_NI = torch::empty_like(h_NI);
  const auto experts = experts_with_rows(counts, first);
  cpu::parallel_tasks(static_cast<int64_t>(experts.size()), [&](int64_t i) {
    const auto [e, start, n] = experts[i];
    auto dy_nD = dy_ND.narrow(0, start, n), x_nD = x_ND.narrow(0, start, n);
    auto dh_nI = dh_NI.narrow(0, start, n), da_nI = da_NI.narrow(0, start, n);
    auto db_nI = db_NI.narrow(0, start, n);
    mm_into(dh_nI, dy_nD, down_EDI[e]);                           // dh = dy D_e
    mm_into(g.down_EDI[e], dy_nD.t(), h_NI.narrow(0, start, n));  // dD_e = dyᵀ h
    cpu::swiglu_backward(dh_nI.data_ptr<float>(), a_NI.narrow(0, start, n).data_ptr<float>(),
                         b_NI.narrow(0, start, n).data_ptr<float>(), da_nI.data_ptr<float>(),
                         db_nI.data_ptr<float>(), dh_nI.numel());
    auto dx_nD = g.x_ND.narrow(0, start, n);
    mm_into(dx_nD, da_nI, gate_EID[e]);  // dx = da G_e + db U_e
    cpu::gemm_out(dx_nD, db_nI, up_EID[e], /*accumulate=*/true);
    mm_into(g.gate_EID[e], da_nI.t(), x_nD);  // dG_e = daᵀ x, dU_e = dbᵀ x
    mm_into(g.up_EID[e], db_nI.t(), x_nD);
  });
}

// ---- CUDA: one cuBLAS grouped GEMM per projection ----------------------------------------------

#if MOETRON_HAVE_CUDA_KERNELS
std::atomic<detail::GroupedGemmHostExecutor> g_host_executor{nullptr};  // tests only

kernels::GemmDType gemm_dtype(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return kernels::GemmDType::kFloat32;
    case torch::kBFloat16:
      return kernels::GemmDType::kBFloat16;
    case torch::kFloat16:
      return kernels::GemmDType::kFloat16;
    default:
      throw Error(ErrorKind::kConfig, str_cat(kKey, ": cuda runs fp32, bf16 and fp16 experts, got ",
                                              t.dtype(), "; use reference"));
  }
}

// Row r of a contiguous row-major matrix with `ld` elements per row.
const void* row_ptr(const torch::Tensor& t, int64_t r, int64_t ld) {
  return static_cast<const char*>(t.data_ptr()) + r * ld * static_cast<int64_t>(t.element_size());
}
void* row_ptr(torch::Tensor& t, int64_t r, int64_t ld) {
  return static_cast<char*>(t.data_ptr()) + r * ld * static_cast<int64_t>(t.element_size());
}

// The products of one cuBLAS grouped call. Problems of equal shape should be added one after
// the other: each run becomes one cuBLAS group.
class GroupedCall {
 public:
  explicit GroupedCall(const torch::Tensor& like)
      : device_(like.device()), dtype_(gemm_dtype(like)) {}

  // Row-major C[m, n] (+)= op(A)[m, k] · op(B)[k, n] (see kernels::GemmProblem).
  void add(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
           const void* b, int64_t ldb, void* c, int64_t ldc, float beta = 0) {
    kernels::GemmProblem p;
    p.trans_a = trans_a;
    p.trans_b = trans_b;
    p.m = m;
    p.n = n;
    p.k = k;
    p.a = a;
    p.lda = lda;
    p.b = b;
    p.ldb = ldb;
    p.c = c;
    p.ldc = ldc;
    p.beta = beta;
    problems_.push_back(p);
  }

  // The pointer table goes to the device in one copy from pinned memory (the caching host
  // allocator keeps it until the copy has run); then one cuBLAS call on the current stream.
  void run(const char* what) {
    if (problems_.empty()) return;
    const auto count = static_cast<int64_t>(problems_.size());
    if (const auto executor = g_host_executor.load()) {
      executor(problems_.data(), count, dtype_);
      return;
    }
    auto table = torch::empty({kernels::grouped_gemm_pointer_count(count)},
                              torch::TensorOptions().dtype(torch::kInt64).pinned_memory(true));
    kernels::grouped_gemm_pointers(problems_.data(), count,
                                   reinterpret_cast<const void**>(table.data_ptr<int64_t>()));
    auto device_table = table.to(torch::TensorOptions().device(device_), /*non_blocking=*/true);
    kernels::GroupedGemmParams p;
    p.problems = problems_.data();
    p.count = count;
    p.dtype = dtype_;
    p.device_pointers = reinterpret_cast<const void* const*>(device_table.data_ptr<int64_t>());
    const auto st =
        kernels::launch_grouped_gemm(p, at::cuda::getCurrentCUDABlasHandle(),
                                     c10::cuda::getCurrentCUDAStream(device_.index()).stream());
    if (st.cublas != 0) {
      MOETRON_CHECK(false, "grouped_swiglu(cuda) ", what, ": ", st.call,
                    " failed: ", kernels::cublas_status_name(st.cublas), " (", st.cublas, ")");
    }
    MOETRON_CHECK(st.cuda == 0, "grouped_swiglu(cuda) ", what, ": ", st.call,
                  " failed: ", cudaGetErrorString(static_cast<cudaError_t>(st.cuda)), " (", st.cuda,
                  ")");
  }

 private:
  torch::Device device_;
  kernels::GemmDType dtype_;
  std::vector<kernels::GemmProblem> problems_;
};

void check_cuda_inputs(const torch::Tensor& x_ND, const torch::Tensor& gate_EID) {
  MOETRON_CHECK(x_ND.is_cuda() || g_host_executor.load() != nullptr,
                "grouped_swiglu(cuda): rows must be a CUDA tensor, got ", x_ND.device(), " (", kKey,
                ": cuda)");
  (void)gemm_dtype(x_ND);
  const int64_t I = gate_EID.size(1), D = gate_EID.size(2);
  MOETRON_CHECK(I >= 1 && D >= 1, "grouped_swiglu(cuda): empty experts (I ", I, ", D ", D, ")");
  MOETRON_CHECK(x_ND.size(0) <= INT_MAX && I <= INT_MAX && D <= INT_MAX,
                "grouped_swiglu(cuda): ", x_ND.size(0), " rows, I ", I, ", D ", D,
                " exceed cuBLAS's 32-bit sizes");
}
#endif

void gate_up_cuda(const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                  const torch::Tensor& up_EID, const std::vector<int64_t>& counts, int64_t first,
                  torch::Tensor& a_NI, torch::Tensor& b_NI) {
#if MOETRON_HAVE_CUDA_KERNELS
  const int64_t I = gate_EID.size(1), D = gate_EID.size(2);
  // a_n = x_n G_eᵀ and b_n = x_n U_eᵀ: two problems of one shape per expert, one call.
  GroupedCall call(x_ND);
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    call.add(false, true, n, I, D, row_ptr(x_ND, start, D), D, row_ptr(gate_EID, e * I, D), D,
             row_ptr(a_NI, start, I), I);
    call.add(false, true, n, I, D, row_ptr(x_ND, start, D), D, row_ptr(up_EID, e * I, D), D,
             row_ptr(b_NI, start, I), I);
  });
  call.run("gate/up projection");
#else
  (void)x_ND, (void)gate_EID, (void)up_EID, (void)counts, (void)first, (void)a_NI, (void)b_NI;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

void down_cuda(const torch::Tensor& h_NI, const torch::Tensor& down_EDI,
               const std::vector<int64_t>& counts, int64_t first, torch::Tensor& y_ND) {
#if MOETRON_HAVE_CUDA_KERNELS
  const int64_t D = down_EDI.size(1), I = down_EDI.size(2);
  GroupedCall call(h_NI);  // y_n = h_n D_eᵀ
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    call.add(false, true, n, D, I, row_ptr(h_NI, start, I), I, row_ptr(down_EDI, e * D, I), I,
             row_ptr(y_ND, start, D), D);
  });
  call.run("down projection");
#else
  (void)h_NI, (void)down_EDI, (void)counts, (void)first, (void)y_ND;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

void down_backward_cuda(const torch::Tensor& dy_ND, const torch::Tensor& h_NI,
                        const torch::Tensor& down_EDI, const std::vector<int64_t>& counts,
                        int64_t first, torch::Tensor& dh_NI, torch::Tensor& ddown_EDI) {
#if MOETRON_HAVE_CUDA_KERNELS
  const int64_t D = down_EDI.size(1), I = down_EDI.size(2);
  GroupedCall call(dy_ND);
  // dh_n = dy_n D_e (all experts first, so equal row counts share a group) ...
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    call.add(false, false, n, I, D, row_ptr(dy_ND, start, D), D, row_ptr(down_EDI, e * D, I), I,
             row_ptr(dh_NI, start, I), I);
  });
  // ... then dD_e = dy_nᵀ h_n ([D, n] x [n, I]).
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    call.add(true, false, D, I, n, row_ptr(dy_ND, start, D), D, row_ptr(h_NI, start, I), I,
             row_ptr(ddown_EDI, e * D, I), I);
  });
  call.run("down projection backward");
#else
  (void)dy_ND, (void)h_NI, (void)down_EDI, (void)counts, (void)first, (void)dh_NI, (void)ddown_EDI;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

void gate_up_backward_cuda(const torch::Tensor& da_NI, const torch::Tensor& db_NI,
                           const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                           const torch::Tensor& up_EID, const std::vector<int64_t>& counts,
                           int64_t first, torch::Tensor& dx_ND, torch::Tensor& dgate_EID,
                           torch::Tensor& dup_EID) {
#if MOETRON_HAVE_CUDA_KERNELS
  const int64_t I = gate_EID.size(1), D = gate_EID.size(2);
  GroupedCall call(x_ND);
  // dx_n = da_n G_e ...
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    call.add(false, false, n, D, I, row_ptr(da_NI, start, I), I, row_ptr(gate_EID, e * I, D), D,
             row_ptr(dx_ND, start, D), D);
  });
  // ... dG_e = da_nᵀ x_n and dU_e = db_nᵀ x_n, one shape per expert ...
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    call.add(true, false, I, D, n, row_ptr(da_NI, start, I), I, row_ptr(x_ND, start, D), D,
             row_ptr(dgate_EID, e * I, D), D);
    call.add(true, false, I, D, n, row_ptr(db_NI, start, I), I, row_ptr(x_ND, start, D), D,
             row_ptr(dup_EID, e * I, D), D);
  });
  call.run("gate/up projection backward");
  // ... then dx_n += db_n U_e: the same C as above, so a second call (stream-ordered).
  GroupedCall accumulate(x_ND);
  for_each_expert(counts, first, [&](int64_t e, int64_t start, int64_t n) {
    accumulate.add(false, false, n, D, I, row_ptr(db_NI, start, I), I, row_ptr(up_EID, e * I, D), D,
                   row_ptr(dx_ND, start, D), D, /*beta=*/1.0f);
  });
  accumulate.run("up projection input gradient");
#else
  (void)da_NI, (void)db_NI, (void)x_ND, (void)gate_EID, (void)up_EID, (void)counts, (void)first,
      (void)dx_ND, (void)dgate_EID, (void)dup_EID;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

// ---- autograd ---------------------------------------------------------------------------------

// One node for the whole expert FFN: the autograd version of the per-expert loop was ~10 nodes
// per expert plus an unbind / stack of the weight gradients and a split / cat of the rows.
struct GroupedSwiGluFn : public torch::autograd::Function<GroupedSwiGluFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_ND,
                               const torch::Tensor& gate_EID, const torch::Tensor& up_EID,
                               const torch::Tensor& down_EDI, const std::vector<int64_t>& counts,
                               int64_t first, Impl impl) {
    auto x = x_ND.contiguous();
    auto g = gate_EID.contiguous(), u = up_EID.contiguous(), d = down_EDI.contiguous();
    auto f = grouped_swiglu_forward(x, g, u, d, counts, first, impl);
    ctx->save_for_backward({x, g, u, d, f.a_NI, f.b_NI, f.h_NI});
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["first"] = first;
    ctx->saved_data["impl"] = static_cast<int64_t>(impl);
    return f.y_ND;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto s = ctx->get_saved_variables();
    GroupedSwiGluForward f;
    f.a_NI = s[4];
    f.b_NI = s[5];
    f.h_NI = s[6];
    const auto counts = ctx->saved_data["counts"].toIntVector();
    const auto g = grouped_swiglu_backward(grad_outputs[0], s[0], s[1], s[2], s[3], f, counts,
                                           ctx->saved_data["first"].toInt(),
                                           static_cast<Impl>(ctx->saved_data["impl"].toInt()));
    return {g.x_ND,          g.gate_EID,      g.up_EID,       g.down_EDI,
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

GroupedSwiGluForward grouped_swiglu_forward(const torch::Tensor& x_ND,
                                            const torch::Tensor& gate_EID,
                                            const torch::Tensor& up_EID,
                                            const torch::Tensor& down_EDI,
                                            const std::vector<int64_t>& counts,
                                            int64_t first_expert, Impl impl) {
  check_inputs(x_ND, gate_EID, up_EID, down_EDI, counts, first_expert);
  const int64_t N = x_ND.size(0), D = x_ND.size(1), I = gate_EID.size(1);
  const auto x = x_ND.contiguous();
  GroupedSwiGluForward f;
  f.a_NI = torch::empty({N, I}, x.options());
  f.b_NI = torch::empty({N, I}, x.options());
  f.y_ND = torch::empty({N, D}, x.options());
  if (impl == Impl::kCuda) {
#if MOETRON_HAVE_CUDA_KERNELS
    check_cuda_inputs(x, gate_EID);
    std::optional<c10::cuda::CUDAGuard> guard;
    if (x.is_cuda()) guard.emplace(x.device());
#endif
    gate_up_cuda(x, gate_EID.contiguous(), up_EID.contiguous(), counts, first_expert, f.a_NI,
                 f.b_NI);
    f.h_NI = torch::silu(f.a_NI).mul_(f.b_NI);
    down_cuda(f.h_NI, down_EDI.contiguous(), counts, first_expert, f.y_ND);
  } else if (cpu_parallel(x)) {
    forward_cpu_parallel(x, gate_EID, up_EID, down_EDI, counts, first_expert, f);
  } else {
    gate_up_reference(x, gate_EID, up_EID, counts, first_expert, f.a_NI, f.b_NI);
    f.h_NI = torch::silu(f.a_NI).mul_(f.b_NI);
    down_reference(f.h_NI, down_EDI, counts, first_expert, f.y_ND);
  }
  return f;
}

GroupedSwiGluGrads grouped_swiglu_backward(
    const torch::Tensor& grad_y_ND, const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
    const torch::Tensor& up_EID, const torch::Tensor& down_EDI, const GroupedSwiGluForward& forward,
    const std::vector<int64_t>& counts, int64_t first_expert, Impl impl) {
  check_inputs(x_ND, gate_EID, up_EID, down_EDI, counts, first_expert);
  MOETRON_CHECK(grad_y_ND.sizes() == x_ND.sizes(), "grouped_swiglu backward: gradient ",
                grad_y_ND.sizes(), " for rows ", x_ND.sizes());
  const auto& a_NI = forward.a_NI;
  const auto& b_NI = forward.b_NI;
  const auto& h_NI = forward.h_NI;
  MOETRON_CHECK(a_NI.defined() && b_NI.defined() && h_NI.defined() &&
                    a_NI.sizes() == h_NI.sizes() && b_NI.sizes() == h_NI.sizes() &&
                    h_NI.dim() == 2 && h_NI.size(0) == x_ND.size(0) &&
                    h_NI.size(1) == gate_EID.size(1),
                "grouped_swiglu backward: the forward's a, b, h must be [N, I]");
  const auto x = x_ND.contiguous();
  const auto dy_ND = grad_y_ND.to(x.scalar_type()).contiguous();
  GroupedSwiGluGrads g;
  g.gate_EID = torch::empty_like(gate_EID, at::MemoryFormat::Contiguous);
  g.up_EID = torch::empty_like(up_EID, at::MemoryFormat::Contiguous);
  g.down_EDI = torch::empty_like(down_EDI, at::MemoryFormat::Contiguous);
  g.x_ND = torch::empty_like(x);
  const bool cuda = impl == Impl::kCuda;
  if (!cuda && cpu_parallel(x)) {
    backward_cpu_parallel(dy_ND, x, gate_EID, up_EID, down_EDI, forward, counts, first_expert, g);
    zero_experts_without_rows(counts, first_expert, {g.gate_EID, g.up_EID, g.down_EDI});
    return g;
  }
  auto dh_NI = torch::empty_like(h_NI);
#if MOETRON_HAVE_CUDA_KERNELS
  std::optional<c10::cuda::CUDAGuard> guard;
  if (cuda) {
    check_cuda_inputs(x, gate_EID);
    if (x.is_cuda()) guard.emplace(x.device());
  }
#endif
  if (cuda) {
    down_backward_cuda(dy_ND, h_NI.contiguous(), down_EDI.contiguous(), counts, first_expert, dh_NI,
                       g.down_EDI);
  } else {
    down_backward_reference(dy_ND, h_NI, down_EDI, counts, first_expert, dh_NI, g.down_EDI);
  }
  // db = dh ⊙ silu(a), da = silu'(a) ⊙ dh ⊙ b.
  auto db_NI = dh_NI * torch::silu(a_NI);
  auto da_NI = at::silu_backward(dh_NI.mul_(b_NI), a_NI);
  if (cuda) {
    gate_up_backward_cuda(da_NI.contiguous(), db_NI.contiguous(), x, gate_EID.contiguous(),
                          up_EID.contiguous(), counts, first_expert, g.x_ND, g.gate_EID, g.up_EID);
  } else {
    gate_up_backward_reference(da_NI, db_NI, x, gate_EID, up_EID, counts, first_expert, g.x_ND,
                               g.gate_EID, g.up_EID);
  }
  zero_experts_without_rows(counts, first_expert, {g.gate_EID, g.up_EID, g.down_EDI});
  return g;
}

torch::Tensor grouped_swiglu(const torch::Tensor& x_ND, const torch::Tensor& gate_EID,
                             const torch::Tensor& up_EID, const torch::Tensor& down_EDI,
                             const std::vector<int64_t>& counts, int64_t first_expert, Impl impl) {
  check_inputs(x_ND, gate_EID, up_EID, down_EDI, counts, first_expert);
  return GroupedSwiGluFn::apply(x_ND, gate_EID, up_EID, down_EDI, counts, first_expert, impl);
}

#if MOETRON_HAVE_CUDA_KERNELS
void detail::set_grouped_gemm_host_executor(GroupedGemmHostExecutor executor) {
  g_host_executor.store(executor);
}
#endif

void check_cuda_grouped_gemm_supported() {
  if (!cuda_kernels_built()) detail::throw_no_cuda_kernels(kKey);
}

}  // namespace moetron::ops
