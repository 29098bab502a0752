// The expert-parallel dispatcher: counts exchange, all-to-all of the routed rows, regrouping by
// local expert, and the way back.
#include "moetron/dist/ep_dispatcher.h"

#include <torch/torch.h>

#include "moetron/core/error.h"

namespace moetron::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct AllToAllFn : public torch::autograd::Function<AllToAllFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Group* group,
                               const std::vector<int64_t>& in_splits,
                               const std::vector<int64_t>& out_splits, const std::string& what) {
    ctx->saved_data["in"] = in_splits;
    ctx->saved_data["out"] = out_splits;
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    ctx->saved_data["what"] = what;
    return group->all_to_all(x, in_splits, out_splits, what);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* group = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    const auto in_splits = ctx->saved_data["in"].toIntVector();
    const auto out_splits = ctx->saved_data["out"].toIntVector();
    const std::string what = ctx->saved_data["what"].toStringRef() + " (backward)";
    auto dx = group->all_to_all(grads[0], out_splits, in_splits, what);
    return {dx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Rows laid out in blocks [a][b] (block (a, b) has sizes[a][b] rows, a-major) reordered to
// b-major. One cat of views, so autograd gives the inverse reorder for free.
torch::Tensor transpose_blocks(const torch::Tensor& rows,
                               const std::vector<std::vector<int64_t>>& sizes) {
  const size_t A = sizes.size(), Bn = A ? sizes[0].size() : 0;
  std::vector<std::vector<int64_t>> start(A, std::vector<int64_t>(Bn));
  int64_t at = 0;
  for (size_t a = 0; a < A; ++a) {
    for (size_t b = 0; b < Bn; ++b) {
      start[a][b] = at;
      at += sizes[a][b];
    }
  }
  std::vector<torch::Tensor> parts;
  for (size_t b = 0; b < Bn; ++b) {
    for (size_t a = 0; a < A; ++a) {
      if (sizes[a][b] > 0) parts.push_back(rows.narrow(0, start[a][b], sizes[a][b]));
    }
  }
  if (parts.empty()) return rows.narrow(0, 0, 0);
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
}

std::vector<std::vector<int64_t>> transposed(const std::vector<std::vector<int64_t>>& m) {
  if (m.empty()) return {};
  std::vector<std::vector<int64_t>> t(m[0].size(), std::vector<int64_t>(m.size()));
  for (size_t a = 0; a < m.size(); ++a)
    for (size_t b = 0; b < m[a].size(); ++b) t[b][a] = m[a][b];
  return t;
}

// What combine needs beyond the local dispatcher's fields.
struct ExchangeState {
  std::vector<int64_t> send_splits, recv_splits;  // rows to / from each member
  std::vector<std::vector<int64_t>> recv_counts;  // [member][local expert]
};

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

torch::Tensor all_to_all_autograd(Group& group, const torch::Tensor& x,
                                  const std::vector<int64_t>& in_splits,
                                  const std::vector<int64_t>& out_splits, const std::string& what) {
  return AllToAllFn::apply(x, &group, in_splits, out_splits, what);
}

ExpertParallelDispatcher::ExpertParallelDispatcher(Group& group, int64_t n_experts)
    : group_(group), n_experts_(n_experts), local_experts_(n_experts / group.size()) {
  MOETRON_CHECK_CONFIG(n_experts % group.size() == 0, "expert parallelism: ", n_experts,
                       " routed experts do not split over ", group.size(), " ranks (dist.ep)");
}

model::DispatchState ExpertParallelDispatcher::dispatch(const torch::Tensor& x_TD,
                                                        const torch::Tensor& topk_idx_TK,
                                                        const torch::Tensor& topk_weight_TK,
                                                        const torch::Tensor& counts_E) {
  const int64_t K = topk_idx_TK.size(1), P = group_.size(), L = local_experts_;
  model::DispatchState st;
  st.num_tokens = x_TD.size(0);
  // Rows sorted by global expert (stable: token order within an expert) are also sorted by
  // owning member, since each member owns a contiguous range of experts.
  auto order_N = std::get<1>(topk_idx_TK.reshape(-1).sort(/*stable=*/true, 0, false));
  st.token_idx_N = order_N.div(K, "floor");
  st.weight_N = topk_weight_TK.reshape(-1).index_select(0, order_N);
  auto x_sorted = x_TD.index_select(0, st.token_idx_N);

  // Counts: recv[q][l] = rows member q sends to my local expert l (one small all-to-all).
  auto counts = counts_E.to(torch::kInt64).contiguous();
  auto recv_t = group_.all_to_all(counts, std::vector<int64_t>(P, L), std::vector<int64_t>(P, L),
                                  "moe expert counts");
  // The layer's host sync: split sizes must be known on the host.
  const auto send_counts = to_vector(counts);
  const auto recv_flat = to_vector(recv_t);
  auto ex = std::make_shared<ExchangeState>();
  ex->send_splits.assign(P, 0);
  ex->recv_splits.assign(P, 0);
  ex->recv_counts.assign(P, std::vector<int64_t>(L, 0));
  for (int64_t e = 0; e < n_experts_; ++e) ex->send_splits[e / L] += send_counts[e];
  for (int64_t q = 0; q < P; ++q) {
    for (int64_t l = 0; l < L; ++l) {
      ex->recv_counts[q][l] = recv_flat[q * L + l];
      ex->recv_splits[q] += recv_flat[q * L + l];
    }
  }
  auto received =
      all_to_all_autograd(group_, x_sorted, ex->send_splits, ex->recv_splits, "moe dispatch");
  // Received rows are member-major ([q][l] blocks); the experts want them expert-major.
  st.x_ND = transpose_blocks(received, ex->recv_counts);
  st.counts.assign(L, 0);
  for (int64_t q = 0; q < P; ++q)
    for (int64_t l = 0; l < L; ++l) st.counts[l] += ex->recv_counts[q][l];
  st.first_expert = 0;  // the model holds only the local experts
  st.extra = ex;
  return st;
}

torch::Tensor ExpertParallelDispatcher::combine(const torch::Tensor& y_ND,
                                                const model::DispatchState& st) {
  const auto& ex = *std::static_pointer_cast<ExchangeState>(st.extra);
  // Expert-major back to member-major, then home.
  auto y_member = transpose_blocks(y_ND, transposed(ex.recv_counts));
  auto y_sorted =
      all_to_all_autograd(group_, y_member, ex.recv_splits, ex.send_splits, "moe combine");
  auto weighted_ND = y_sorted.to(torch::kFloat32) * st.weight_N.unsqueeze(1);
  auto out_TD = torch::zeros({st.num_tokens, y_ND.size(1)}, weighted_ND.options());
  return out_TD.index_add(0, st.token_idx_N, weighted_ND).to(y_ND.scalar_type());
}

void shard_experts(model::DeepseekV3ForCausalLM& model, Comm& comm) {
  const Mesh& mesh = comm.mesh();
  if (mesh.ep == 1) return;
  for (auto& moe : model->moe_layers()) {
    const int64_t E = moe->experts->n_experts();
    const int64_t L = E / mesh.ep;
    moe->experts->shard(mesh.ep_rank() * L, L, E);
    moe->set_dispatcher(std::make_shared<ExpertParallelDispatcher>(comm.ep(), E));
  }
}

}  // namespace moetron::dist
