// Data-parallel gradient reduction in flat buckets, the global gradient norm, reduced counts and
// metrics.
#include "moetron/dist/data_parallel.h"

#include <torch/torch.h>

#include <cmath>
#include <unordered_set>

#include "moetron/core/error.h"

namespace moetron::dist {

ParamSplit split_parameters(model::DeepseekV3ForCausalLM& model) {
  std::unordered_set<const void*> expert_params;
  ParamSplit split;
  for (auto& moe : model->moe_layers()) {
    for (auto& p : moe->experts->parameters()) {
      if (!p.requires_grad()) continue;
      expert_params.insert(p.unsafeGetTensorImpl());
      split.experts.push_back(p);
    }
  }
  for (auto& p : model->parameters()) {
    if (p.requires_grad() && !expert_params.count(p.unsafeGetTensorImpl())) {
      split.replicated.push_back(p);
    }
  }
  return split;
}

DataParallel::DataParallel(Comm& comm, model::DeepseekV3ForCausalLM& model, double bucket_mb)
    : comm_(comm),
      params_(split_parameters(model)),
      bucket_bytes_(std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024))) {}

void DataParallel::reduce_buckets(const std::vector<torch::Tensor>& all_params, Group& group,
                                  const std::string& what) {
  if (all_params.empty()) return;
  const double inv_world = 1.0 / static_cast<double>(comm_.world_size());
  torch::NoGradGuard no_grad;
  // A parameter no rank has a gradient for stays without one (as in one process, AdamW then
  // skips it); one that only some ranks have a gradient for counts as zero on the others.
  std::vector<int32_t> local(all_params.size());
  for (size_t k = 0; k < all_params.size(); ++k) local[k] = all_params[k].grad().defined();
  auto has_grad = torch::tensor(local, torch::kInt32);
  if (group.size() > 1) {
    has_grad = has_grad.to(group.comm_device());
    group.all_reduce(has_grad, ReduceOp::kMax, what + " (which have gradients)");
    has_grad = has_grad.cpu();
  }
  const int32_t* any_rank = has_grad.data_ptr<int32_t>();
  std::vector<torch::Tensor> params;
  for (size_t k = 0; k < all_params.size(); ++k) {
    if (any_rank[k] == 0) continue;
    if (!all_params[k].grad().defined()) {
      all_params[k].mutable_grad() = torch::zeros_like(all_params[k]);
    }
    params.push_back(all_params[k]);
  }
  // Buckets of consecutive parameters with one dtype and device, up to bucket_bytes_ each; the
  // order is the parameters' order, the same on every rank.
  size_t i = 0;
  int64_t bucket = 0;
  while (i < params.size()) {
    std::vector<torch::Tensor> grads;
    int64_t bytes = 0;
    const auto options = params[i].options();
    while (i < params.size() && params[i].dtype() == options.dtype() &&
           params[i].device() == options.device() && (grads.empty() || bytes < bucket_bytes_)) {
      auto& p = params[i];
      grads.push_back(p.grad());
      bytes += p.numel() * p.element_size();
      ++i;
    }
    std::vector<torch::Tensor> flat_parts;
    for (auto& g : grads) flat_parts.push_back(g.reshape(-1));
    auto flat = torch::cat(flat_parts);
    if (group.size() > 1) group.all_reduce(flat, ReduceOp::kSum, str_cat(what, " #", bucket));
    flat.mul_(inv_world);
    int64_t at = 0;
    for (auto& g : grads) {
      g.copy_(flat.narrow(0, at, g.numel()).view_as(g));
      at += g.numel();
    }
    ++bucket;
  }
}

void DataParallel::all_reduce_gradients() {
  if (!comm_.distributed()) return;
  reduce_buckets(params_.replicated, comm_.world(), "gradients");
  reduce_buckets(params_.experts, comm_.dp(), "expert gradients");
}

optim::ClipResult DataParallel::clip_grad_norm(double max_norm) {
  auto sq = [](const std::vector<torch::Tensor>& ps, const torch::Tensor& like) {
    auto acc = torch::zeros({}, like.options().dtype(torch::kDouble));
    for (const auto& p : ps) {
      if (p.grad().defined()) acc += p.grad().detach().to(torch::kDouble).pow(2).sum();
    }
    return acc;
  };
  std::vector<torch::Tensor> all = params_.replicated;
  all.insert(all.end(), params_.experts.begin(), params_.experts.end());
  if (all.empty()) return {};
  auto rep = sq(params_.replicated, all[0]);
  auto exp = sq(params_.experts, all[0]);
  // Replicated gradients are equal on every rank after the reduction; each expert shard is
  // counted once by summing over the expert-parallel group.
  comm_.ep().all_reduce(exp, ReduceOp::kSum, "gradient norm");
  const double total = std::sqrt((rep + exp).item<double>());
  return optim::clip_to_norm(all, total, max_norm);
}

torch::Tensor DataParallel::global_counts(const torch::Tensor& counts_ME) {
  if (!comm_.distributed() || !counts_ME.defined()) return counts_ME;
  auto c = counts_ME.contiguous().clone();
  comm_.world().all_reduce(c, ReduceOp::kSum, "expert counts");
  return c;
}

namespace {
std::vector<double> reduce(Comm& comm, const std::vector<double>& values, ReduceOp op,
                           const std::string& what) {
  if (!comm.distributed() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kDouble).to(comm.device());
  comm.world().all_reduce(t, op, what);
  t = t.cpu();
  return {t.data_ptr<double>(), t.data_ptr<double>() + t.numel()};
}
}  // namespace

std::vector<double> DataParallel::sum(const std::vector<double>& values, const std::string& what) {
  return reduce(comm_, values, ReduceOp::kSum, what);
}

std::vector<double> DataParallel::max(const std::vector<double>& values, const std::string& what) {
  return reduce(comm_, values, ReduceOp::kMax, what);
}

int64_t DataParallel::max(int64_t value, const std::string& what) {
  // Exact in a double for any count this is used for (< 2^53).
  return static_cast<int64_t>(max(std::vector<double>{static_cast<double>(value)}, what)[0]);
}

}  // namespace moetron::dist
