// read_dist_env: torchrun / SLURM / single-process environments, every value checked and every
// error naming its variable; slurm_first_host: the first host of a SLURM hostlist expression.
#include "moetron/dist/env.h"

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <vector>

#include "moetron/core/error.h"

namespace moetron::dist {
namespace {

[[noreturn]] void bad_value(const std::string& name, const std::string& value,
                            const std::string& problem, const std::string& expected) {
  throw Error(ErrorKind::kConfig, str_cat("environment variable ", name, "='", value, "' ", problem,
                                          "; expected ", expected));
}

// Reads through the injected getenv (or the process environment); "" counts as unset.
class Env {
 public:
  explicit Env(const GetEnv& getenv) : getenv_(getenv) {}

  std::optional<std::string> get(const std::string& name) const {
    std::optional<std::string> v;
    if (getenv_) {
      v = getenv_(name);
    } else if (const char* raw = std::getenv(name.c_str())) {
      v = std::string(raw);
    }
    if (v && v->empty()) return std::nullopt;
    return v;
  }
  bool has(const std::string& name) const { return get(name).has_value(); }

  // A non-negative integer, or nullopt when unset.
  std::optional<int64_t> count(const std::string& name, const std::string& expected) const {
    auto v = get(name);
    if (!v) return std::nullopt;
    int64_t out = 0;
    const char* first = v->data();
    const char* last = v->data() + v->size();
    const auto [end, ec] = std::from_chars(first, last, out);
    if (ec == std::errc::result_out_of_range) bad_value(name, *v, "is out of range", expected);
    if (ec != std::errc() || end != last) bad_value(name, *v, "is not an integer", expected);
    if (out < 0) bad_value(name, *v, "is negative", expected);
    return out;
  }

 private:
  const GetEnv& getenv_;
};

std::string value_of(const Env& env, const std::string& name) {
  return env.get(name).value_or("");
}

void check_world(const Env& env, const std::string& world_var, int64_t world) {
  if (world < 1)
    bad_value(world_var, value_of(env, world_var), "is out of range", "a world size >= 1");
}

void check_below(const Env& env, const std::string& var, int64_t value,
                 const std::string& bound_var, int64_t bound) {
  if (value >= bound) {
    bad_value(var, value_of(env, var), "is out of range",
              str_cat("0 <= ", var, " < ", bound_var, " (", bound, ")"));
  }
}

int64_t port_from(const Env& env, const std::string& name) {
  const int64_t port = *env.count(name, "a TCP port in 1..65535");
  if (port < 1 || port > 65535) {
    bad_value(name, value_of(env, name), "is out of range", "a TCP port in 1..65535");
  }
  return port;
}

// MASTER_ADDR / MASTER_PORT / TORCHELASTIC_RESTART_COUNT, read the same way in every mode.
void read_common(const Env& env, DistEnv& out) {
  if (auto addr = env.get("MASTER_ADDR")) out.master_addr = *addr;
  if (env.has("MASTER_PORT")) out.master_port = port_from(env, "MASTER_PORT");
  out.restart_count =
      env.count("TORCHELASTIC_RESTART_COUNT", "the restart count, an integer >= 0").value_or(0);
}

DistEnv read_torchrun(const Env& env) {
  DistEnv out;
  out.source = "torchrun";
  out.world_size = *env.count("WORLD_SIZE", "the number of processes, an integer >= 1");
  check_world(env, "WORLD_SIZE", out.world_size);
  out.rank = *env.count("RANK", "the global rank, 0 <= RANK < WORLD_SIZE");
  check_below(env, "RANK", out.rank, "WORLD_SIZE", out.world_size);

  out.local_world_size =
      env.count("LOCAL_WORLD_SIZE",
                "the processes on this node, 1 <= LOCAL_WORLD_SIZE <= WORLD_SIZE")
          .value_or(out.world_size);
  if (out.local_world_size < 1 || out.local_world_size > out.world_size) {
    bad_value("LOCAL_WORLD_SIZE", value_of(env, "LOCAL_WORLD_SIZE"), "is out of range",
              str_cat("1 <= LOCAL_WORLD_SIZE <= WORLD_SIZE (", out.world_size, ")"));
  }
  out.local_rank =
      env.count("LOCAL_RANK", "the rank on this node, 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE")
          .value_or(out.rank % out.local_world_size);
  check_below(env, "LOCAL_RANK", out.local_rank, "LOCAL_WORLD_SIZE", out.local_world_size);

  // torchrun sets GROUP_RANK (the rendezvous may number nodes differently from --node-rank);
  // NODE_RANK is what other launchers export.
  const std::string node_var = env.has("GROUP_RANK") ? "GROUP_RANK" : "NODE_RANK";
  out.node_rank = env.count(node_var, str_cat("the node index, 0 <= ", node_var, " < WORLD_SIZE"))
                      .value_or(out.rank / out.local_world_size);
  check_below(env, node_var, out.node_rank, "WORLD_SIZE", out.world_size);
  read_common(env, out);
  return out;
}

// SLURM_TASKS_PER_NODE ("4(x2),3" = 4, 4, 3): the count of node `node`; the whole list is
// checked.
int64_t tasks_on_node(const std::string& var, const std::string& text, int64_t node) {
  const std::string expected = "per-node task counts like '4(x2),3'";
  size_t i = 0;
  auto number = [&]() -> int64_t {
    const size_t start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
    if (i == start || i - start > 9) bad_value(var, text, "is malformed", expected);
    return std::stoll(text.substr(start, i - start));
  };
  int64_t seen = 0;
  std::optional<int64_t> mine;
  while (true) {
    const int64_t count = number();
    int64_t repeat = 1;
    if (text.compare(i, 2, "(x") == 0) {
      i += 2;
      repeat = number();
      if (i >= text.size() || text[i] != ')') bad_value(var, text, "is malformed", expected);
      ++i;
    }
    if (count < 1 || repeat < 1) bad_value(var, text, "is malformed", expected);
    if (!mine && node < seen + repeat) mine = count;
    seen += repeat;
    if (i == text.size()) break;
    if (text[i] != ',') bad_value(var, text, "is malformed", expected);
    ++i;
  }
  if (!mine) {
    bad_value(var, text, str_cat("lists ", seen, " nodes"),
              str_cat("an entry for SLURM_NODEID=", node));
  }
  return *mine;
}

std::string first_host(const std::string& list, const std::string& what);

DistEnv read_slurm(const Env& env) {
  DistEnv out;
  out.source = "slurm";
  out.world_size = *env.count("SLURM_NTASKS", "the number of tasks, an integer >= 1");
  check_world(env, "SLURM_NTASKS", out.world_size);
  out.rank = *env.count("SLURM_PROCID", "the task rank, 0 <= SLURM_PROCID < SLURM_NTASKS");
  check_below(env, "SLURM_PROCID", out.rank, "SLURM_NTASKS", out.world_size);
  out.node_rank = env.count("SLURM_NODEID", "the node index, an integer >= 0").value_or(0);
  check_below(env, "SLURM_NODEID", out.node_rank, "SLURM_NTASKS", out.world_size);

  if (env.has("SLURM_NTASKS_PER_NODE")) {
    out.local_world_size =
        *env.count("SLURM_NTASKS_PER_NODE", "the tasks per node, an integer >= 1");
    if (out.local_world_size < 1 || out.local_world_size > out.world_size) {
      bad_value("SLURM_NTASKS_PER_NODE", value_of(env, "SLURM_NTASKS_PER_NODE"), "is out of range",
                str_cat("1 <= SLURM_NTASKS_PER_NODE <= SLURM_NTASKS (", out.world_size, ")"));
    }
  } else if (auto per_node = env.get("SLURM_TASKS_PER_NODE")) {
    out.local_world_size = tasks_on_node("SLURM_TASKS_PER_NODE", *per_node, out.node_rank);
  } else if (out.world_size > 1) {
    throw Error(ErrorKind::kConfig,
                str_cat("SLURM_PROCID and SLURM_NTASKS (", out.world_size,
                        ") are set but neither SLURM_NTASKS_PER_NODE nor SLURM_TASKS_PER_NODE "
                        "is; expected the environment of an srun task (start moetron with srun)"));
  }

  if (env.has("SLURM_LOCALID")) {
    out.local_rank = *env.count("SLURM_LOCALID", "the task's rank on its node, 0 <= SLURM_LOCALID");
    check_below(env, "SLURM_LOCALID", out.local_rank, "the tasks on this node",
                out.local_world_size);
  } else if (out.world_size > 1) {
    throw Error(ErrorKind::kConfig,
                str_cat("SLURM_PROCID and SLURM_NTASKS (", out.world_size,
                        ") are set but SLURM_LOCALID is not; expected the environment of an srun "
                        "task (start moetron with srun)"));
  }

  read_common(env, out);
  if (!env.has("MASTER_ADDR")) {
    for (const char* var : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"}) {
      if (auto list = env.get(var)) {
        out.master_addr = first_host(*list, str_cat("environment variable ", var));
        break;
      }
    }
  }
  if (!env.has("MASTER_PORT") && env.has("SLURM_JOB_ID")) {
    const int64_t job = *env.count("SLURM_JOB_ID", "the job id, an integer >= 0");
    out.master_port = 20000 + job % 20000;
  }
  return out;
}

// Parses a whole hostlist ("pre[01-03,7]mid[1-2],other") and returns its first host.
std::string first_host(const std::string& list, const std::string& what) {
  auto bad = [&](const std::string& why) -> std::string {
    throw Error(ErrorKind::kConfig,
                str_cat(what, "='", list, "' is malformed (", why,
                        "); expected a SLURM node list like 'node[01-04,07],gpu5'"));
  };
  if (list.empty()) bad("it is empty");
  std::string first;
  bool first_done = false;
  size_t i = 0;
  while (i <= list.size()) {
    // One host expression up to the next top-level comma.
    std::string host;
    bool any = false;
    while (i < list.size() && list[i] != ',') {
      const char c = list[i];
      if (c == ']') bad("']' without '['");
      if (c == '[') {
        const size_t close = list.find(']', i);
        if (close == std::string::npos) bad("'[' without ']'");
        const std::string body = list.substr(i + 1, close - i - 1);
        if (body.find('[') != std::string::npos) bad("nested '['");
        if (body.empty()) bad("empty '[]'");
        // Comma-separated numbers or lo-hi ranges; the first one names the first host.
        std::string first_number;
        size_t j = 0;
        while (j <= body.size()) {
          const size_t comma = std::min(body.find(',', j), body.size());
          const std::string item = body.substr(j, comma - j);
          const size_t dash = item.find('-');
          const std::string lo = item.substr(0, dash);
          const std::string hi = dash == std::string::npos ? lo : item.substr(dash + 1);
          auto digits = [](const std::string& s) {
            if (s.empty() || s.size() > 18) return false;
            for (char d : s) {
              if (!std::isdigit(static_cast<unsigned char>(d))) return false;
            }
            return true;
          };
          if (!digits(lo) || !digits(hi)) bad(str_cat("range '", item, "' is not N or N-M"));
          if (std::stoll(hi) < std::stoll(lo)) bad(str_cat("range '", item, "' runs backwards"));
          if (first_number.empty()) first_number = lo;
          j = comma + 1;
        }
        host += first_number;
        any = true;
        i = close + 1;
        continue;
      }
      host += c;
      any = true;
      ++i;
    }
    if (!any) bad("empty host name");
    if (!first_done) {
      first = host;
      first_done = true;
    }
    if (i == list.size()) break;
    ++i;  // the comma
    if (i == list.size()) bad("trailing ','");
  }
  return first;
}

}  // namespace

std::string slurm_first_host(const std::string& nodelist) {
  return first_host(nodelist, "SLURM node list");
}

DistEnv read_dist_env(const GetEnv& getenv) {
  const Env env(getenv);
  const bool rank = env.has("RANK"), world = env.has("WORLD_SIZE");
  if (rank != world) {
    const std::string set = rank ? "RANK" : "WORLD_SIZE";
    const std::string unset = rank ? "WORLD_SIZE" : "RANK";
    throw Error(ErrorKind::kConfig,
                str_cat("environment variable ", set, "='", value_of(env, set), "' is set but ",
                        unset, " is not; expected both (torchrun, moetron launch) or neither"));
  }
  if (rank) return read_torchrun(env);
  const bool procid = env.has("SLURM_PROCID"), ntasks = env.has("SLURM_NTASKS");
  if (procid && ntasks) return read_slurm(env);
  DistEnv out;
  out.source = "single";
  read_common(env, out);
  return out;
}

}  // namespace moetron::dist
