// c10d process groups: TCPStore rendezvous, Gloo / NCCL backends, the mesh's sub-groups, and
// failures turned into errors that say which rank stopped and where.
#include "moetron/dist/comm.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "backends.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"

namespace moetron::dist {

// ---- mesh -----------------------------------------------------------------------------------

std::vector<int64_t> Mesh::ep_group_ranks() const {
  std::vector<int64_t> ranks;
  for (int64_t i = 0; i < ep; ++i) ranks.push_back(dp_rank() * ep + i);
  return ranks;
}

std::vector<int64_t> Mesh::dp_group_ranks() const {
  std::vector<int64_t> ranks;
  for (int64_t d = 0; d < dp(); ++d) ranks.push_back(d * ep + ep_rank());
  return ranks;
}

Mesh make_mesh(int64_t world, int64_t rank, const config::Config& cfg) {
  const int64_t ep = cfg.dist.ep;
  MOETRON_CHECK_CONFIG(world >= 1 && rank >= 0 && rank < world, "rank ", rank,
                       " is not in a world of ", world);
  MOETRON_CHECK_CONFIG(ep >= 1, "dist.ep must be >= 1, got ", ep);
  MOETRON_CHECK_CONFIG(world % ep == 0, "dist.ep=", ep, " does not divide the world size ", world,
                       " (world = dp x ep; launch a multiple of ", ep, " ranks or change dist.ep)");
  if (ep > 1) {
    MOETRON_CHECK_CONFIG(cfg.moe.n_routed_experts && *cfg.moe.n_routed_experts > 0, "dist.ep=", ep,
                         " needs an MoE model, but moe.n_routed_experts is unset");
    const int64_t E = *cfg.moe.n_routed_experts;
    MOETRON_CHECK_CONFIG(E % ep == 0, "dist.ep=", ep, " must divide moe.n_routed_experts=", E,
                         " (each rank holds n_routed_experts / ep experts)");
  }
  Mesh mesh;
  mesh.world = world;
  mesh.rank = rank;
  mesh.ep = ep;
  return mesh;
}

// ---- comm state: the store and the progress reporter ----------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string progress_key(int64_t rank) {
  return str_cat("moetron/progress/", rank);
}

std::string ranks_text(const std::vector<int64_t>& ranks) {
  std::ostringstream os;
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? "," : "") << ranks[i];
  return os.str();
}

}  // namespace

struct Group::Backend {
  c10::intrusive_ptr<c10d::Backend> pg;
  torch::Device device{torch::kCPU};
};

// The progress reporter: a thread that publishes "<seq> <unix time> <what>" under
// moetron/progress/<rank> once a second through its own store connection, so that a rank whose
// collective fails can tell which peers stopped (no report for a while) or lag behind.
struct Comm::State {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Store> reporter_store;
  std::mutex mu;
  std::condition_variable cv;
  int64_t seq = 0, published = -1;
  std::string current = "started";
  bool stop = false;
  std::thread reporter;

  void publish() {
    std::string text;
    {
      std::lock_guard<std::mutex> lock(mu);
      text = str_cat(seq, " ", unix_ms(), " ", current);
      published = seq;
    }
    reporter_store->set(progress_key_self, std::vector<uint8_t>(text.begin(), text.end()));
  }
  std::string progress_key_self;

  ~State() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    if (reporter.joinable()) reporter.join();
  }
};

Comm::Comm(const CommOptions& options, const Mesh& mesh) : options_(options), mesh_(mesh) {
  MOETRON_CHECK(options.world == mesh.world && options.rank == mesh.rank,
                "Comm: options and mesh disagree about rank/world");
  if (mesh.world == 1 && !options.force_backend) {
    world_ = make_group("world", {0});
    ep_ = make_group("ep", {0});
    dp_ = make_group("dp", {0});
    return;
  }
  backend_name_ = options.backend;
  if (backend_name_ == "auto") backend_name_ = options.device.is_cuda() ? "nccl" : "gloo";
  MOETRON_CHECK_CONFIG(backend_name_ != "nccl" || options.device.is_cuda(),
                       "dist.backend=nccl needs train.device on CUDA (got ", options.device,
                       "); use gloo for CPU training");
  MOETRON_CHECK_CONFIG(backend_name_ != "gloo" || !options.device.is_cuda(),
                       "dist.backend=gloo with CUDA tensors is not supported; use nccl (or auto)");
  MOETRON_CHECK_CONFIG(options.master_port > 0 && options.master_port < 65536,
                       "MASTER_PORT must be in 1..65535, got ", options.master_port);

  state_ = std::make_unique<State>();
  const auto timeout = std::chrono::seconds(options.timeout_s);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(options.master_port);
  so.isServer = mesh.rank == 0;
  so.numWorkers = static_cast<size_t>(mesh.world);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    state_->store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, so);
    c10d::TCPStoreOptions client = so;
    client.isServer = false;
    client.numWorkers = std::nullopt;
    client.waitWorkers = false;
    state_->reporter_store = c10::make_intrusive<c10d::TCPStore>(options.master_addr, client);
  } catch (const std::exception& e) {
    throw Error(str_cat("rank ", mesh.rank, ": rendezvous with ", mesh.world, " ranks at ",
                        options.master_addr, ":", options.master_port, " failed within ",
                        options.timeout_s, " s (dist.timeout_s): ", e.what(),
                        "\nCheck MASTER_ADDR/MASTER_PORT and that every rank was started."));
  }
  state_->progress_key_self = progress_key(mesh.rank);
  state_->publish();
  // Publishes when progress changes (at most every 200 ms) and once a second regardless, so a
  // report older than a few seconds means the rank is gone or stuck.
  state_->reporter = std::thread([s = state_.get()] {
    std::unique_lock<std::mutex> lock(s->mu);
    while (!s->stop) {
      s->cv.wait_for(lock, std::chrono::seconds(1),
                     [s] { return s->stop || s->seq != s->published; });
      if (s->stop) break;
      lock.unlock();
      try {
        s->publish();
      } catch (const std::exception&) {
        // The store (on rank 0) is gone; the next collective reports it.
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      lock.lock();
    }
  });

  world_ = make_group("world", [&] {
    std::vector<int64_t> all;
    for (int64_t r = 0; r < mesh.world; ++r) all.push_back(r);
    return all;
  }());
  ep_ = make_group(str_cat("ep", mesh.dp_rank()), mesh.ep_group_ranks());
  dp_ = make_group(str_cat("dp", mesh.ep_rank()), mesh.dp_group_ranks());
  log::info("rank ", mesh.rank, "/", mesh.world, ": ", backend_name_, " process groups ready (ep ",
            mesh.ep, " x dp ", mesh.dp(), "; ep group ", ranks_text(ep_.ranks()),
            ", expert replicas ", ranks_text(dp_.ranks()), ")");
}

Comm::~Comm() = default;

Group Comm::make_group(const std::string& name, const std::vector<int64_t>& ranks) {
  Group g;
  g.comm_ = this;
  g.name_ = name;
  g.ranks_ = ranks;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] == mesh_.rank) g.rank_ = static_cast<int64_t>(i);
  }
  if (ranks.size() > 1 || (state_ && options_.force_backend)) {
    auto store =
        c10::make_intrusive<c10d::PrefixStore>(str_cat("moetron/pg/", name), state_->store);
    g.backend_ = std::make_shared<Group::Backend>();
    g.backend_->device = options_.device;
    const auto timeout = std::chrono::milliseconds(options_.timeout_s * 1000);
    try {
      g.backend_->pg =
          backend_name_ == "nccl"
              ? detail::make_nccl(store, g.rank_, g.size(), timeout, options_.device)
              : detail::make_gloo(store, g.rank_, g.size(), timeout, options_.master_addr);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(str_cat("rank ", mesh_.rank, ": creating the ", backend_name_, " group '", name,
                          "' (ranks ", ranks_text(ranks), ") failed: ", e.what()));
    }
  }
  return g;
}

void Comm::note_progress(const std::string& op, const std::string& what, const std::string& group) {
  if (!state_) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    ++state_->seq;
    state_->current = str_cat(op, " '", what, "' on ", group);
  }
  state_->cv.notify_all();
}

std::string Comm::peer_report(const Group& group) {
  if (!state_) return "";
  struct Report {
    bool present = false;
    int64_t seq = 0, at_ms = 0;
    std::string last;
  };
  auto read = [&](int64_t r) {
    Report rep;
    const std::string key = progress_key(r);
    if (!state_->reporter_store->check({key})) return rep;
    const auto bytes = state_->reporter_store->get(key);
    std::istringstream in(std::string(bytes.begin(), bytes.end()));
    in >> rep.seq >> rep.at_ms;
    std::getline(in, rep.last);
    rep.present = true;
    return rep;
  };
  int64_t my_seq = 0;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    my_seq = state_->seq;
  }
  std::ostringstream os;
  try {
    // Live ranks refresh their report every second: read twice, 2.5 s apart, and a report that
    // did not move belongs to a rank that exited, was killed or is stuck outside collectives.
    std::vector<int64_t> peers;
    std::vector<Report> before;
    for (const int64_t r : group.ranks()) {
      if (r == mesh_.rank) continue;
      peers.push_back(r);
      before.push_back(read(r));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    for (size_t i = 0; i < peers.size(); ++i) {
      const Report now = read(peers[i]);
      if (!now.present) {
        os << "\n  rank " << peers[i] << ": never reported progress (did it start?)";
      } else if (now.at_ms == before[i].at_ms) {
        os << "\n  rank " << peers[i] << ": no progress report for "
           << (unix_ms() - now.at_ms) / 1000.0
           << " s (exited, killed or stuck); last at collective #" << now.seq << ":" << now.last;
      } else if (now.seq < my_seq) {
        os << "\n  rank " << peers[i] << ": alive but behind, at collective #" << now.seq << ":"
           << now.last << " (this rank is at #" << my_seq << ")";
      }
    }
  } catch (const std::exception&) {
    os << "\n  the rendezvous store on rank 0 (" << options_.master_addr << ":"
       << options_.master_port << ") is unreachable, so rank 0 has most likely exited";
  }
  const std::string text = os.str();
  return text.empty() ? "" : str_cat("\nPeers:", text);
}

// ---- group operations ---------------------------------------------------------------------

namespace {

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return c10d::ReduceOp::SUM;
    case ReduceOp::kMax:
      return c10d::ReduceOp::MAX;
    case ReduceOp::kMin:
      return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (const int64_t x : v) s += x;
  return s;
}

}  // namespace

void Group::run(const std::string& op, const std::string& what, const std::function<void()>& body) {
  comm_->note_progress(op, what, name_);
  try {
    body();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    std::string message = e.what();
    if (message.size() > 600) message = message.substr(0, 600) + " ...";
    throw Error(str_cat("rank ", comm_->rank(), ": ", op, " '", what, "' on group ", name_,
                        " (ranks ", ranks_text(ranks_), ", ", comm_->backend_name(),
                        ", dist.timeout_s=", comm_->timeout_s(), ") failed: ", message,
                        comm_->peer_report(*this)));
  }
}

void Group::all_reduce(std::vector<torch::Tensor>& tensors, ReduceOp op, const std::string& what) {
  if (!backend_) return;
  run("all_reduce", what, [&] {
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_c10d(op);
    backend_->pg->allreduce(tensors, opts)->wait();
  });
}

void Group::all_reduce(torch::Tensor& tensor, ReduceOp op, const std::string& what) {
  std::vector<torch::Tensor> one{tensor};
  all_reduce(one, op, what);
}

torch::Tensor Group::all_to_all(const torch::Tensor& input, const std::vector<int64_t>& in_splits,
                                const std::vector<int64_t>& out_splits, const std::string& what) {
  MOETRON_CHECK(static_cast<int64_t>(in_splits.size()) == size() &&
                    static_cast<int64_t>(out_splits.size()) == size(),
                "all_to_all '", what, "': ", in_splits.size(), " input and ", out_splits.size(),
                " output splits for a group of ", size());
  MOETRON_CHECK(sum(in_splits) == input.size(0), "all_to_all '", what, "': input splits sum to ",
                sum(in_splits), " but the input has ", input.size(0), " rows");
  auto sizes = input.sizes().vec();
  sizes[0] = sum(out_splits);
  if (!backend_) return input.clone();
  auto in = input.contiguous();
  auto out = torch::empty(sizes, in.options());
  run("all_to_all", what, [&] {
    auto in_s = in_splits;
    auto out_s = out_splits;
    backend_->pg->alltoall_base(out, in, out_s, in_s)->wait();
  });
  return out;
}

void Group::broadcast(torch::Tensor& tensor, int64_t root, const std::string& what) {
  if (!backend_) return;
  run("broadcast", what, [&] {
    std::vector<torch::Tensor> one{tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    backend_->pg->broadcast(one, opts)->wait();
  });
}

torch::Device Group::comm_device() const {
  return backend_ ? backend_->device : torch::Device(torch::kCPU);
}

void Group::barrier(const std::string& what) {
  if (!backend_) return;
  auto t = torch::zeros({1}, torch::TensorOptions().device(backend_->device));
  all_reduce(t, ReduceOp::kSum, what);
}

std::string broadcast_string(Group& group, const std::string& value, const std::string& what) {
  if (group.size() == 1) return value;
  const torch::Device device = group.comm_device();
  auto length = torch::tensor({static_cast<int64_t>(value.size())}).to(device);
  group.broadcast(length, 0, what + " (length)");
  const int64_t n = length.cpu().item<int64_t>();
  auto bytes = torch::zeros({n}, torch::kUInt8);
  if (group.rank() == 0) std::memcpy(bytes.data_ptr<uint8_t>(), value.data(), value.size());
  bytes = bytes.to(device);
  if (n > 0) group.broadcast(bytes, 0, what);
  bytes = bytes.cpu();
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), n);
}

void on_rank0(Group& group, const std::function<void()>& fn, const std::string& what) {
  std::string failure;  // "<kind digit><message>", empty when rank 0 succeeded
  if (group.rank() == 0) {
    try {
      fn();
    } catch (const Error& e) {
      failure = str_cat(static_cast<int>(e.kind()), e.what());
    }
  }
  failure = broadcast_string(group, failure, what);
  if (!failure.empty()) {
    throw Error(static_cast<ErrorKind>(failure[0] - '0'), failure.substr(1));
  }
}

}  // namespace moetron::dist
