// Expert parallelism (SPEC 2 over several ranks): the MoE layer's TokenDispatcher that sends each
// routed token copy to the rank owning its expert with an uneven all-to-all, lets the local
// experts run grouped, and brings the outputs back with the reverse all-to-all before the
// weighted combine. Differentiable: the backward of each exchange is the exchange in reverse.
#pragma once

#include <memory>

#include "moetron/dist/comm.h"
#include "moetron/model/model.h"
#include "moetron/model/moe.h"

namespace moetron::dist {

// Group `group` splits E routed experts evenly: member p owns experts [p·E/P, (p+1)·E/P).
// The grouping by expert and the weighted combine are the local dispatcher's (with its permute
// implementation); this class adds the exchanges between them.
class ExpertParallelDispatcher : public model::TokenDispatcher {
 public:
  ExpertParallelDispatcher(Group& group, int64_t n_experts,
                           ops::Impl permute_impl = ops::Impl::kReference);
  model::DispatchState dispatch(const torch::Tensor& x_TD, const torch::Tensor& topk_idx_TK,
                                const torch::Tensor& topk_weight_TK,
                                const torch::Tensor& counts_E) override;
  torch::Tensor combine(const torch::Tensor& y_ND, const model::DispatchState& state) override;

 private:
  Group& group_;
  int64_t n_experts_, local_experts_;
  model::LocalTokenDispatcher local_;
};

// Differentiable uneven all-to-all along dim 0 (rows [Σin[<p], +in[p]) to member p).
torch::Tensor all_to_all_autograd(Group& group, const torch::Tensor& x,
                                  const std::vector<int64_t>& in_splits,
                                  const std::vector<int64_t>& out_splits, const std::string& what);

// Expert parallelism on a built model: every MoE layer keeps only this rank's experts
// (ep_rank·E/ep ..., sliced from the full initialisation, so all layouts start from the same
// weights) and dispatches through `comm.ep()`. No-op when ep == 1.
void shard_experts(model::DeepseekV3ForCausalLM& model, Comm& comm);

}  // namespace moetron::dist
