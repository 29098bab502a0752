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

// What combine needs: the exchange's split sizes and the local grouping to undo.
struct ExchangeState {
  std::vector<int64_t> send_splits, recv_splits;  // rows to / from each member
  std::vector<std::vector<int64_t>> recv_counts;  // [member][local expert]
  model::DispatchState local;                     // this rank's tokens grouped by global expert
};

}  // namespace

torch::Tensor all_to_all_autograd(Group& group, const torch::Tensor& x,
                                  const std::vector<int64_t>& in_splits,
                                  const std::vector<int64_t>& out_splits, const std::string& what) {
  return AllToAllFn::apply(x, &group, in_splits, out_splits, what);
}

ExpertParallelDispatcher::ExpertParallelDispatcher(Group& group, int64_t n_experts,
                                                   ops::Impl permute_impl)
    : group_(group), n_experts_(n_experts), local_experts_(n_experts / group.size()) {
  MOETRON_CHECK_CONFIG(n_experts % group.size() == 0, "expert parallelism: ", n_experts,
                       " routed experts do not split over ", group.size(), " ranks (dist.ep)");
  local_.set_permute_impl(permute_impl);
}

model::DispatchState ExpertParallelDispatcher::dispatch(const torch::Tensor& x_TD,
                                                        const torch::Tensor& topk_idx_TK,
                                                        const torch::Tensor& topk_weight_TK,
                                                        const torch::Tensor& counts_E) {
  const int64_t P = group_.size(), L = local_experts_;
  auto ex = std::make_shared<ExchangeState>();
  // Grouped by global expert (stable: token order within an expert), hence also by owning
  // member, since each member owns a contiguous range of experts; its counts are on the host.
  ex->local = local_.dispatch(x_TD, topk_idx_TK, topk_weight_TK, counts_E);
  const auto& send_counts = ex->local.counts;

  // recv[q][l] = rows member q sends to my local expert l: one small all-to-all, and the
  // layer's second host sync (split sizes must be known on the host).
  auto recv_t = group_
                    .all_to_all(counts_E.to(torch::kInt64).contiguous(), std::vector<int64_t>(P, L),
                                std::vector<int64_t>(P, L), "moe expert counts")
                    .cpu();
  const int64_t* recv_flat = recv_t.data_ptr<int64_t>();
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
      all_to_all_autograd(group_, ex->local.x_ND, ex->send_splits, ex->recv_splits, "moe dispatch");
  model::DispatchState st;
  st.num_tokens = x_TD.size(0);
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
  // Expert-major back to member-major, then home, then the local weighted combine.
  auto y_member = transpose_blocks(y_ND, transposed(ex.recv_counts));
  auto y_sorted =
      all_to_all_autograd(group_, y_member, ex.recv_splits, ex.send_splits, "moe combine");
  return local_.combine(y_sorted, ex.local);
}

void shard_experts(model::DeepseekV3ForCausalLM& model, Comm& comm) {
  const Mesh& mesh = comm.mesh();
  if (mesh.ep == 1) return;
  for (auto& moe : model->moe_layers()) {
    const int64_t E = moe->experts->n_experts();
    const int64_t L = E / mesh.ep;
    moe->experts->shard(mesh.ep_rank() * L, L, E);
    // Keep the layer's permute implementation (kernels.permute) for the local grouping.
    auto* local = dynamic_cast<model::LocalTokenDispatcher*>(&moe->dispatcher());
    const auto permute = local ? local->permute_impl() : ops::Impl::kReference;
    moe->set_dispatcher(std::make_shared<ExpertParallelDispatcher>(comm.ep(), E, permute));
  }
}

}  // namespace moetron::dist
