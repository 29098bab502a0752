// permute / unpermute: the ATen references (the specification; the grouping is the local
// dispatcher's stable sort), the dispatch to the CUDA kernels, and the autograd nodes whose
// backwards are the other op (permute <-> unweighted combine, combine <-> weighted gather).
#include "moetron/ops/permute.h"

#include <torch/torch.h>

#include "cuda_util.h"

#if MOETRON_HAVE_CUDA_KERNELS
#include "moetron/kernels/permute.h"
#endif

namespace moetron::ops {

// Legend: T tokens, K experts per token, N = T·K rows, D hidden, E experts.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kKey = "kernels.permute";

// fp32 sums (fp64 for fp64 rows: the reference's finite-difference tests).
torch::ScalarType acc_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// ---- references ---------------------------------------------------------------------------

PermuteIndex permute_index_reference(const torch::Tensor& idx_TK, int64_t E) {
  const int64_t K = idx_TK.size(1);
  auto idx_N = idx_TK.reshape(-1).to(torch::kInt64);
  // Stable: rows of one expert keep pair order (LocalTokenDispatcher's sort).
  auto order_N = std::get<1>(idx_N.sort(/*stable=*/true, 0, false));
  PermuteIndex out;
  out.token_idx_N = order_N.div(K, "floor");
  out.row_TK = torch::empty_like(idx_N)
                   .scatter_(0, order_N, torch::arange(idx_N.numel(), idx_N.options()))
                   .view(idx_TK.sizes());
  out.counts_E = torch::zeros({E}, idx_N.options()).index_add_(0, idx_N, torch::ones_like(idx_N));
  return out;
}

torch::Tensor combine_reference(const torch::Tensor& y_ND, const torch::Tensor& row_TK,
                                const torch::Tensor& w_TK) {
  const auto acc = acc_type(y_ND);
  auto out_TD = torch::zeros({row_TK.size(0), y_ND.size(1)}, y_ND.options().dtype(acc));
  for (int64_t k = 0; k < row_TK.size(1); ++k) {
    auto term_TD = y_ND.index_select(0, row_TK.select(1, k)).to(acc);
    if (w_TK.defined()) term_TD = term_TD * w_TK.select(1, k).to(acc).unsqueeze(1);
    out_TD = out_TD + term_TD;  // fixed k order, as the kernel
  }
  return out_TD.to(y_ND.scalar_type());
}

CombineGrads combine_backward_reference(const torch::Tensor& g_TD, const torch::Tensor& y_ND,
                                        const torch::Tensor& row_TK, const torch::Tensor& w_TK,
                                        bool need_grad_weight) {
  const auto acc = acc_type(y_ND);
  const int64_t K = row_TK.size(1);
  auto g = g_TD.to(acc);
  CombineGrads out;
  out.grad_y_ND = torch::zeros_like(y_ND);
  for (int64_t k = 0; k < K; ++k) {
    auto rows_T = row_TK.select(1, k);
    auto val_TD = w_TK.defined() ? g * w_TK.select(1, k).to(acc).unsqueeze(1) : g;
    out.grad_y_ND.index_copy_(0, rows_T, val_TD.to(y_ND.scalar_type()));
  }
  if (need_grad_weight) {
    auto y_TKD =
        y_ND.index_select(0, row_TK.reshape(-1)).view({row_TK.size(0), K, y_ND.size(1)}).to(acc);
    out.grad_weight_TK = (g.unsqueeze(1) * y_TKD).sum(-1);
    if (w_TK.defined()) out.grad_weight_TK = out.grad_weight_TK.to(w_TK.scalar_type());
  }
  return out;
}

// ---- CUDA ------------------------------------------------------------------------------------

#if MOETRON_HAVE_CUDA_KERNELS
kernels::DType kernel_dtype(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return kernels::DType::kFloat32;
    case torch::kBFloat16:
      return kernels::DType::kBFloat16;
    case torch::kFloat16:
      return kernels::DType::kFloat16;
    default:
      throw Error(ErrorKind::kConfig,
                  str_cat(kKey, ": cuda combines fp32, bf16 and fp16 rows, got ", t.dtype(),
                          "; use reference"));
  }
}

void check_cuda(const torch::Tensor& t, const char* what) {
  MOETRON_CHECK(t.is_cuda(), "permute(cuda): ", what, " must be a CUDA tensor, got ", t.device());
}
#endif

PermuteIndex permute_index_cuda(const torch::Tensor& idx_TK, int64_t E) {
#if MOETRON_HAVE_CUDA_KERNELS
  check_cuda(idx_TK, "topk_idx");
  MOETRON_CHECK_CONFIG(E <= kernels::kPermuteMaxExperts, kKey, ": cuda supports at most ",
                       kernels::kPermuteMaxExperts, " experts, got ", E, "; use reference");
  const int64_t T = idx_TK.size(0), K = idx_TK.size(1);
  MOETRON_CHECK(T * K < (int64_t(1) << 31), "permute(cuda): ", T * K,
                " (token, expert) pairs exceed 2^31 - 1");
  const c10::cuda::CUDAGuard guard(idx_TK.device());
  auto idx = idx_TK.to(torch::kInt64).contiguous();
  const auto opts = idx.options();
  PermuteIndex out;
  out.token_idx_N = torch::empty({T * K}, opts);
  out.row_TK = torch::empty({T, K}, opts);
  out.counts_E = torch::empty({E}, opts);
  const size_t ws_bytes =
      kernels::permute_index_workspace_bytes(T, static_cast<int>(K), static_cast<int>(E));
  auto ws = torch::empty({static_cast<int64_t>(ws_bytes)}, opts.dtype(torch::kUInt8));
  kernels::PermuteIndexParams p;
  p.topk_idx = idx.data_ptr<int64_t>();
  p.num_tokens = T;
  p.top_k = static_cast<int>(K);
  p.n_experts = static_cast<int>(E);
  p.token_idx = out.token_idx_N.data_ptr<int64_t>();
  p.row_of_pair = out.row_TK.data_ptr<int64_t>();
  p.counts = out.counts_E.data_ptr<int64_t>();
  p.workspace = ws_bytes > 0 ? ws.data_ptr() : nullptr;
  p.workspace_bytes = ws_bytes;
  detail::check_launch(kernels::launch_permute_index(p, detail::stream_of(idx)), "permute_index");
  return out;
#else
  (void)idx_TK, (void)E;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

torch::Tensor gather_cuda(const torch::Tensor& x_TD, const torch::Tensor& index_N) {
#if MOETRON_HAVE_CUDA_KERNELS
  check_cuda(x_TD, "x");
  check_cuda(index_N, "index");
  const c10::cuda::CUDAGuard guard(x_TD.device());
  auto x = x_TD.contiguous();
  auto index = index_N.to(torch::kInt64).contiguous();
  auto out = torch::empty({index.numel(), x.size(1)}, x.options());
  kernels::GatherRowsParams p;
  p.src = x.data_ptr();
  p.src_rows = x.size(0);
  p.index = index.data_ptr<int64_t>();
  p.num_rows = index.numel();
  p.row_bytes = x.size(1) * static_cast<int64_t>(x.element_size());
  p.dst = out.data_ptr();
  detail::check_launch(kernels::launch_gather_rows(p, detail::stream_of(x)), "gather_rows");
  return out;
#else
  (void)x_TD, (void)index_N;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

torch::Tensor combine_cuda(const torch::Tensor& y_ND, const torch::Tensor& row_TK,
                           const torch::Tensor& w_TK) {
#if MOETRON_HAVE_CUDA_KERNELS
  check_cuda(y_ND, "rows");
  check_cuda(row_TK, "row index");
  const c10::cuda::CUDAGuard guard(y_ND.device());
  const auto dtype = kernel_dtype(y_ND);
  auto y = y_ND.contiguous();
  auto rows = row_TK.to(torch::kInt64).contiguous();
  torch::Tensor w;
  if (w_TK.defined()) w = w_TK.to(torch::kFloat32).contiguous();
  auto out = torch::empty({rows.size(0), y.size(1)}, y.options());
  kernels::CombineRowsParams p;
  p.rows = y.data_ptr();
  p.num_rows = y.size(0);
  p.row_of_pair = rows.data_ptr<int64_t>();
  p.weights = w.defined() ? w.data_ptr<float>() : nullptr;
  p.num_tokens = rows.size(0);
  p.top_k = static_cast<int>(rows.size(1));
  p.dim = y.size(1);
  p.dtype = dtype;
  p.out = out.data_ptr();
  detail::check_launch(kernels::launch_combine_rows(p, detail::stream_of(y)), "combine_rows");
  return out;
#else
  (void)y_ND, (void)row_TK, (void)w_TK;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

CombineGrads combine_backward_cuda(const torch::Tensor& g_TD, const torch::Tensor& y_ND,
                                   const torch::Tensor& row_TK, const torch::Tensor& w_TK,
                                   bool need_grad_weight) {
#if MOETRON_HAVE_CUDA_KERNELS
  check_cuda(g_TD, "grad");
  check_cuda(y_ND, "rows");
  const c10::cuda::CUDAGuard guard(y_ND.device());
  const auto dtype = kernel_dtype(y_ND);
  auto g = g_TD.to(y_ND.scalar_type()).contiguous();
  auto y = y_ND.contiguous();
  auto rows = row_TK.to(torch::kInt64).contiguous();
  torch::Tensor w;
  if (w_TK.defined()) w = w_TK.to(torch::kFloat32).contiguous();
  CombineGrads out;
  out.grad_y_ND = torch::empty_like(y);
  if (need_grad_weight)
    out.grad_weight_TK = torch::empty(rows.sizes(), g.options().dtype(torch::kFloat32));
  kernels::CombineRowsBackwardParams p;
  p.grad_out = g.data_ptr();
  p.rows = y.data_ptr();
  p.num_rows = y.size(0);
  p.row_of_pair = rows.data_ptr<int64_t>();
  p.weights = w.defined() ? w.data_ptr<float>() : nullptr;
  p.num_tokens = rows.size(0);
  p.top_k = static_cast<int>(rows.size(1));
  p.dim = y.size(1);
  p.dtype = dtype;
  p.grad_rows = out.grad_y_ND.data_ptr();
  p.grad_weights = need_grad_weight ? out.grad_weight_TK.data_ptr<float>() : nullptr;
  detail::check_launch(kernels::launch_combine_rows_backward(p, detail::stream_of(y)),
                       "combine_rows_backward");
  return out;
#else
  (void)g_TD, (void)y_ND, (void)row_TK, (void)w_TK, (void)need_grad_weight;
  detail::throw_no_cuda_kernels(kKey);
#endif
}

// ---- autograd ---------------------------------------------------------------------------------

// x_N = x[token_idx]; dx[t] = Σ_k dx_N[row(t, k)].
struct PermuteFn : public torch::autograd::Function<PermuteFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_TD,
                               const torch::Tensor& token_idx_N, const torch::Tensor& row_TK,
                               Impl impl) {
    ctx->save_for_backward({row_TK});
    ctx->saved_data["impl"] = static_cast<int64_t>(impl);
    return gather_rows(x_TD, token_idx_N, impl);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto impl = static_cast<Impl>(ctx->saved_data["impl"].toInt());
    auto dx_TD = combine_rows(grads[0], ctx->get_saved_variables()[0], torch::Tensor(), impl);
    return {dx_TD, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// out[t] = Σ_k w[t, k]·y[row(t, k)]; dy[row(t, k)] = w[t, k]·dout[t], dw = <dout[t], y[row]>.
struct UnpermuteFn : public torch::autograd::Function<UnpermuteFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y_ND,
                               const torch::Tensor& weight_TK, const torch::Tensor& row_TK,
                               Impl impl) {
    ctx->save_for_backward({y_ND, weight_TK, row_TK});
    ctx->saved_data["impl"] = static_cast<int64_t>(impl);
    return combine_rows(y_ND, row_TK, weight_TK, impl);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto impl = static_cast<Impl>(ctx->saved_data["impl"].toInt());
    auto saved = ctx->get_saved_variables();
    const bool need_dw = ctx->needs_input_grad(1);
    auto g = combine_rows_backward(grads[0], saved[0], saved[2], saved[1], need_dw, impl);
    return {g.grad_y_ND, g.grad_weight_TK, torch::Tensor(), torch::Tensor()};
  }
};

// Without weights (custom functions take no undefined tensor inputs): dy[row(t, k)] = dout[t].
struct UnweightedUnpermuteFn : public torch::autograd::Function<UnweightedUnpermuteFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y_ND,
                               const torch::Tensor& row_TK, Impl impl) {
    ctx->save_for_backward({y_ND, row_TK});
    ctx->saved_data["impl"] = static_cast<int64_t>(impl);
    return combine_rows(y_ND, row_TK, torch::Tensor(), impl);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto impl = static_cast<Impl>(ctx->saved_data["impl"].toInt());
    auto saved = ctx->get_saved_variables();
    auto g = combine_rows_backward(grads[0], saved[0], saved[1], torch::Tensor(), false, impl);
    return {g.grad_y_ND, torch::Tensor(), torch::Tensor()};
  }
};

void check_row_index(const torch::Tensor& row_TK, int64_t rows, const char* op) {
  MOETRON_CHECK(row_TK.dim() == 2 && !row_TK.is_floating_point(), op,
                ": expected an integer row index [T, K], got ", row_TK.sizes(), " ",
                row_TK.dtype());
  MOETRON_CHECK(row_TK.numel() == rows, op, ": ", rows, " rows for a [", row_TK.size(0), ", ",
                row_TK.size(1), "] row index");
}

}  // namespace

PermuteIndex permute_index(const torch::Tensor& topk_idx_TK, int64_t n_experts, Impl impl) {
  MOETRON_CHECK(topk_idx_TK.dim() == 2 && !topk_idx_TK.is_floating_point(),
                "permute: expected integer topk_idx [T, K], got ", topk_idx_TK.sizes(), " ",
                topk_idx_TK.dtype());
  MOETRON_CHECK(topk_idx_TK.size(1) >= 1, "permute: K must be positive");
  MOETRON_CHECK(n_experts >= 1, "permute: n_experts must be positive, got ", n_experts);
  return impl == Impl::kCuda ? permute_index_cuda(topk_idx_TK, n_experts)
                             : permute_index_reference(topk_idx_TK, n_experts);
}

torch::Tensor gather_rows(const torch::Tensor& x_TD, const torch::Tensor& index_N, Impl impl) {
  MOETRON_CHECK(x_TD.dim() == 2, "permute: expected x [T, D], got ", x_TD.sizes());
  return impl == Impl::kCuda ? gather_cuda(x_TD, index_N) : x_TD.index_select(0, index_N);
}

torch::Tensor combine_rows(const torch::Tensor& y_ND, const torch::Tensor& row_TK,
                           const torch::Tensor& weight_TK, Impl impl) {
  MOETRON_CHECK(y_ND.dim() == 2, "unpermute: expected rows [N, D], got ", y_ND.sizes());
  check_row_index(row_TK, y_ND.size(0), "unpermute");
  if (weight_TK.defined()) {
    MOETRON_CHECK(weight_TK.sizes() == row_TK.sizes(), "unpermute: weights ", weight_TK.sizes(),
                  " do not match the row index ", row_TK.sizes());
  }
  return impl == Impl::kCuda ? combine_cuda(y_ND, row_TK, weight_TK)
                             : combine_reference(y_ND, row_TK, weight_TK);
}

CombineGrads combine_rows_backward(const torch::Tensor& grad_out_TD, const torch::Tensor& y_ND,
                                   const torch::Tensor& row_TK, const torch::Tensor& weight_TK,
                                   bool need_grad_weight, Impl impl) {
  check_row_index(row_TK, y_ND.size(0), "unpermute backward");
  MOETRON_CHECK(grad_out_TD.dim() == 2 && grad_out_TD.size(0) == row_TK.size(0) &&
                    grad_out_TD.size(1) == y_ND.size(1),
                "unpermute backward: grad ", grad_out_TD.sizes(), " for rows ", y_ND.sizes());
  return impl == Impl::kCuda
             ? combine_backward_cuda(grad_out_TD, y_ND, row_TK, weight_TK, need_grad_weight)
             : combine_backward_reference(grad_out_TD, y_ND, row_TK, weight_TK, need_grad_weight);
}

PermuteOutput permute(const torch::Tensor& x_TD, const torch::Tensor& topk_idx_TK,
                      int64_t n_experts, Impl impl) {
  MOETRON_CHECK(x_TD.dim() == 2 && topk_idx_TK.dim() == 2 && x_TD.size(0) == topk_idx_TK.size(0),
                "permute: x ", x_TD.sizes(), " and topk_idx ", topk_idx_TK.sizes(),
                " must be [T, D] and [T, K]");
  PermuteOutput out;
  out.index = permute_index(topk_idx_TK, n_experts, impl);
  out.x_ND = PermuteFn::apply(x_TD, out.index.token_idx_N, out.index.row_TK, impl);
  return out;
}

torch::Tensor unpermute(const torch::Tensor& y_ND, const torch::Tensor& row_TK,
                        const torch::Tensor& weight_TK, Impl impl) {
  MOETRON_CHECK(y_ND.dim() == 2, "unpermute: expected rows [N, D], got ", y_ND.sizes());
  check_row_index(row_TK, y_ND.size(0), "unpermute");
  if (!weight_TK.defined()) return UnweightedUnpermuteFn::apply(y_ND, row_TK, impl);
  MOETRON_CHECK(weight_TK.sizes() == row_TK.sizes(), "unpermute: weights ", weight_TK.sizes(),
                " do not match the row index ", row_TK.sizes());
  return UnpermuteFn::apply(y_ND, weight_TK, row_TK, impl);
}

}  // namespace moetron::ops
