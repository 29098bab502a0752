// One rank of a distributed test (tests/distributed/test_distributed.cpp starts `world` of them
// with RANK / WORLD_SIZE / MASTER_PORT set). `dist_worker SCENARIO EP` runs a scenario and exits
// 0 when its checks hold; failures print why and exit 1, distributed errors exit 3.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/dist/comm.h"
#include "moetron/dist/data_parallel.h"
#include "moetron/dist/ep_dispatcher.h"
#include "moetron/model/model.h"
#include "tiny.h"

using namespace moetron;

namespace {

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::stoll(v) : fallback;
}

int failures = 0;
void expect_close(const torch::Tensor& got, const torch::Tensor& want, double tol,
                  const std::string& what) {
  if (got.sizes() != want.sizes()) {
    std::cerr << "FAIL " << what << ": shape " << got.sizes() << " vs " << want.sizes() << "\n";
    ++failures;
    return;
  }
  if (want.numel() == 0) return;
  const double diff = (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (!(diff <= tol * std::max(1.0, scale))) {
    std::cerr << "FAIL " << what << ": max |diff| " << diff << " (scale " << scale << ")\n";
    ++failures;
  }
}

// Rank-encoded round trip: member r sends (r + p) % 3 rows to member p, each row saying
// (source, destination, index); the receiver checks every row's origin, then sends them back.
void scenario_all_to_all(dist::Comm& comm, const torch::Device& device) {
  auto& g = comm.world();
  const int64_t P = g.size(), r = g.rank();
  std::vector<int64_t> in(P), out(P);
  for (int64_t p = 0; p < P; ++p) {
    in[p] = (r + p) % 3 + (P == 1 ? 2 : 0);  // a group of one still moves rows
    out[p] = (p + r) % 3 + (P == 1 ? 2 : 0);
  }
  std::vector<torch::Tensor> rows;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < in[p]; ++i)
      rows.push_back(torch::tensor({double(r), double(p), double(i)}));
  auto x =
      rows.empty() ? torch::zeros({0, 3}, torch::kDouble) : torch::stack(rows).to(torch::kDouble);
  x = x.to(device).requires_grad_(true);
  auto y = dist::all_to_all_autograd(g, x, in, out, "test rows").cpu();
  int64_t at = 0;
  for (int64_t q = 0; q < P; ++q) {
    for (int64_t i = 0; i < out[q]; ++i, ++at) {
      auto row = y[at];
      if (row[0].item<double>() != q || row[1].item<double>() != r || row[2].item<double>() != i) {
        std::cerr << "FAIL row " << at << " from " << q << ": " << row << "\n";
        ++failures;
      }
    }
  }
  // Backward is the reverse exchange: d(sum(y * w))/dx = w routed back, w = row's source.
  auto w = y.detach().select(1, 0).unsqueeze(1).expand_as(y) + 1;
  (y * w).sum().backward();
  // Collectives on the group's device: a sum and a string from rank 0.
  auto ones = torch::ones({2}, torch::TensorOptions().device(device));
  g.all_reduce(ones, dist::ReduceOp::kSum, "test sum");
  expect_close(ones.cpu(), torch::full({2}, double(P), torch::kFloat), 0, "all_reduce");
  const std::string text = dist::broadcast_string(g, g.rank() == 0 ? "from rank 0" : "", "text");
  if (text != "from rank 0") {
    std::cerr << "FAIL broadcast_string gave '" << text << "'\n";
    ++failures;
  }
  // Row (r, p, i) went to p and came back weighted by its source r + 1.
  expect_close(x.grad().cpu(), torch::full_like(x, double(r + 1)).cpu(), 0, "all_to_all backward");
}

config::Config test_config(int64_t ep) {
  auto cfg = model::testing::tiny_config(/*q_lora=*/true, /*mtp_depth=*/1);
  cfg.dist.ep = ep;
  return cfg;
}

model::DeepseekV3ForCausalLM build(const config::Config& cfg) {
  torch::manual_seed(1234);
  return model::DeepseekV3ForCausalLM(cfg);
}

// The same global batch on every rank; rank r trains on rows [r·b, (r+1)·b).
torch::Tensor global_batch(int64_t world, int64_t rows_per_rank, int64_t T, int64_t vocab) {
  auto gen = at::detail::createCPUGenerator(99);
  return torch::randint(0, vocab, {world * rows_per_rank, T}, gen, torch::kLong);
}

// EP (and DP) forward + backward vs. one process on the whole batch: loss, every replicated
// gradient and this rank's slice of every expert gradient. `skew` biases routing so that all
// tokens pick experts 0..K-1 (rank 0's): the other ranks' experts receive zero tokens.
void scenario_equivalence(dist::Comm& comm, bool skew) {
  const auto cfg = test_config(comm.mesh().ep);
  const int64_t world = comm.world_size(), b = 2, T = 9;
  auto ids = global_batch(world, b, T, cfg.model.vocab_size);
  auto apply_skew = [&](model::DeepseekV3ForCausalLM& m) {
    if (!skew) return;
    torch::NoGradGuard no_grad;
    for (auto& moe : m->moe_layers()) {
      auto& bias = moe->gate->e_score_correction_bias;
      bias.zero_();
      bias.narrow(0, 0, cfg.moe.num_experts_per_tok).fill_(100.0);
    }
  };
  // Reference: one process, whole batch.
  auto ref = build(cfg);
  apply_skew(ref);
  auto ref_out = ref->forward(ids, ids);
  ref_out.loss.backward();

  auto m = build(cfg);
  apply_skew(m);
  dist::shard_experts(m, comm);
  dist::DataParallel dp(comm, m);
  auto mine = ids.narrow(0, comm.rank() * b, b);
  auto out = m->forward(mine, mine);
  out.loss.backward();
  dp.all_reduce_gradients();
  const auto mean_loss = dp.sum({out.loss.item<double>()}, "loss")[0] / double(world);
  expect_close(torch::tensor(mean_loss), ref_out.loss.detach(), 1e-5, "loss");

  auto ref_params = ref->named_parameters();
  for (const auto& item : m->named_parameters()) {
    auto want = ref_params[item.key()].grad();
    auto got = item.value().grad();
    if (item.key().find(".experts.") != std::string::npos && comm.mesh().ep > 1) {
      const int64_t L = got.size(0);
      want = want.narrow(0, comm.mesh().ep_rank() * L, L);
    }
    expect_close(got, want, 2e-5, "grad " + item.key());
  }
  // Global counts equal the single process's.
  expect_close(dp.global_counts(out.expert_counts_ME), ref_out.expert_counts_ME, 0,
               "expert counts");
  // The global gradient norm equals the single process's.
  std::vector<torch::Tensor> ref_grads;
  for (auto& p : ref->parameters()) ref_grads.push_back(p);
  const double ref_norm = optim::clip_grad_norm(ref_grads, 0).total_norm;
  const double norm = dp.clip_grad_norm(0).total_norm;
  expect_close(torch::tensor(norm), torch::tensor(ref_norm), 1e-5, "grad norm");
}

// Rank 1 dies (or hangs) before the second collective; the others must fail with an error
// naming the operation and rank 1, within the timeout.
void scenario_peer_failure(dist::Comm& comm, bool hang) {
  auto t = torch::ones({4});
  comm.world().all_reduce(t, dist::ReduceOp::kSum, "warm-up");
  if (comm.rank() == 1) {
    if (hang) {
      // Stuck (e.g. in a long computation) well past the others' timeout, then gone.
      std::this_thread::sleep_for(std::chrono::seconds(3 * env_int("MOETRON_TEST_TIMEOUT_S", 60)));
    }
    std::cerr << "rank 1: exiting abruptly\n";
    ::_exit(9);
  }
  comm.world().all_reduce(t, dist::ReduceOp::kSum, "after the failure");
  std::cerr << "FAIL: the collective after rank 1's failure succeeded\n";
  ++failures;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: dist_worker SCENARIO EP\n";
    return 2;
  }
  const std::string scenario = argv[1];
  const int64_t ep = std::stoll(argv[2]);
  torch::set_num_threads(1);
  try {
    dist::CommOptions o;
    o.rank = env_int("RANK", 0);
    o.world = env_int("WORLD_SIZE", 1);
    o.master_port = env_int("MASTER_PORT", 29500);
    o.timeout_s = env_int("MOETRON_TEST_TIMEOUT_S", 60);
    auto cfg = test_config(ep);
    // "single_rank_device": one rank with a real backend on the first device (NCCL on a GPU).
    const bool single_device = scenario == "single_rank_device";
    torch::Device device(torch::kCPU);
    if (single_device) {
      o.force_backend = true;
      if (torch::cuda::is_available()) device = torch::Device(torch::kCUDA, 0);
      o.device = device;
    }
    dist::Comm comm(o, dist::make_mesh(o.world, o.rank, cfg));
    if (scenario == "all_to_all" || single_device) {
      if (single_device) std::cerr << "backend " << comm.backend_name() << " on " << device << "\n";
      scenario_all_to_all(comm, device);
    } else if (scenario == "equivalence") {
      scenario_equivalence(comm, false);
    } else if (scenario == "zero_tokens") {
      scenario_equivalence(comm, true);
    } else if (scenario == "peer_dies") {
      scenario_peer_failure(comm, false);
    } else if (scenario == "peer_hangs") {
      scenario_peer_failure(comm, true);
    } else {
      std::cerr << "unknown scenario " << scenario << "\n";
      return 2;
    }
    comm.world().barrier("end");
  } catch (const moetron::Error& e) {
    std::cerr << "ERROR: " << e.what() << "\n";
    std::cerr.flush();
    ::_exit(3);  // skip destructors: a process group with a dead peer may block in them
  } catch (const std::exception& e) {
    std::cerr << "FAIL: unexpected exception: " << e.what() << "\n";
    std::cerr.flush();
    ::_exit(1);
  }
  if (failures) std::cerr << failures << " checks failed\n";
  return failures ? 1 : 0;
}
