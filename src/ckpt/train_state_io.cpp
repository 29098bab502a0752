// Model, AdamW and RNG state files of a training checkpoint: writers, and readers split into a
// validating prepare step and an apply step that cannot fail on content.
#include "train_state_io.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>

#include "moetron/ckpt/safetensors.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/model/moe.h"
#include "strict_json.h"

namespace moetron::ckpt::detail {

namespace {

constexpr const char* kOptimizerFormat = "moetron-adamw-state";
constexpr const char* kRngFormat = "moetron-rng-state";

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

// Up to `limit` items, one per line, then how many more: keeps messages readable for 1000s.
std::string bullet_list(const std::vector<std::string>& items, size_t limit = 200) {
  std::ostringstream os;
  for (size_t i = 0; i < items.size() && i < limit; ++i) os << "\n  " << items[i];
  if (items.size() > limit) os << "\n  ... and " << items.size() - limit << " more";
  return os.str();
}

// A CPU tensor viewing the mapped bytes (valid while `file` lives); bool goes through
// read_tensor, which refuses bytes other than 0/1.
torch::Tensor mapped_tensor(const SafetensorsFile& file, const std::string& name) {
  const TensorInfo& info = file.info(name);
  if (info.dtype == Dtype::kBool) return read_tensor(file, name);
  const ByteSpan span = file.bytes(name);
  auto options = torch::TensorOptions().dtype(to_torch_dtype(info.dtype));
  if (span.size == 0) return torch::empty(info.shape, options);
  return torch::from_blob(const_cast<uint8_t*>(span.data), info.shape, options);
}

// The full shape of `t` given its placement (rows of a larger tensor when sharded).
std::vector<int64_t> full_shape(const torch::Tensor& t, const ShardSpec* spec) {
  auto shape = t.sizes().vec();
  if (spec) shape[0] = spec->total;
  return shape;
}

const ShardSpec* find_spec(const std::map<std::string, ShardSpec>& placement,
                           const std::string& name) {
  auto it = placement.find(name);
  return it == placement.end() ? nullptr : &it->second;
}

// "" when `info` matches `like` (its full shape when sharded) and its dtype, else what differs.
std::string mismatch(const TensorInfo& info, const torch::Tensor& like,
                     const ShardSpec* spec = nullptr) {
  const auto want_shape = full_shape(like, spec);
  const Dtype want_dtype = from_torch_dtype(like.scalar_type());
  if (info.shape == want_shape && info.dtype == want_dtype) return "";
  return str_cat("checkpoint ", shape_text(info.shape), " ", dtype_name(info.dtype), ", expected ",
                 shape_text(want_shape), " ", dtype_name(want_dtype));
}

// Parameters and buffers together, under the names named_parameters/named_buffers give.
std::vector<std::pair<std::string, torch::Tensor>> model_tensors(torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (item.value().defined()) out.emplace_back(item.key(), item.value());
  }
  return out;
}

std::unordered_map<const void*, std::string> parameter_names(torch::nn::Module& model) {
  std::unordered_map<const void*, std::string> names;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    names.emplace(item.value().unsafeGetTensorImpl(), item.key());
  }
  return names;
}

// Names of each param group's parameters; throws when one is not a parameter of `model`
// (state could not be keyed by name).
std::vector<std::vector<std::string>> group_names(torch::nn::Module& model,
                                                  torch::optim::AdamW& optimizer) {
  const auto names = parameter_names(model);
  std::vector<std::vector<std::string>> out;
  std::vector<std::string> unnamed;
  const auto& groups = optimizer.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    out.emplace_back();
    for (size_t i = 0; i < groups[g].params().size(); ++i) {
      const auto& p = groups[g].params()[i];
      auto it = names.find(p.unsafeGetTensorImpl());
      if (it == names.end()) {
        unnamed.push_back(
            str_cat("group ", g, " parameter #", i, " ", shape_text(p.sizes().vec())));
      } else {
        out.back().push_back(it->second);
      }
    }
  }
  MOETRON_CHECK(unnamed.empty(),
                "optimizer parameters that are not parameters of the model (state is saved by "
                "parameter name, so the optimizer must be built over the model's parameters):",
                bullet_list(unnamed));
  return out;
}

const torch::optim::AdamWOptions& adamw_options(const torch::optim::OptimizerParamGroup& group) {
  return static_cast<const torch::optim::AdamWOptions&>(group.options());
}

nlohmann::json options_json(const torch::optim::AdamWOptions& o) {
  return {{"lr", o.lr()},
          {"betas", nlohmann::json::array({std::get<0>(o.betas()), std::get<1>(o.betas())})},
          {"eps", o.eps()},
          {"weight_decay", o.weight_decay()},
          {"amsgrad", o.amsgrad()}};
}

}  // namespace

torch::optim::AdamW& as_adamw(torch::optim::Optimizer& optimizer) {
  auto* adamw = dynamic_cast<torch::optim::AdamW*>(&optimizer);
  MOETRON_CHECK(adamw != nullptr,
                "training checkpoints support torch::optim::AdamW only (optim::make_adamw); got "
                "another optimizer type");
  for (const auto& group : adamw->param_groups()) {
    MOETRON_CHECK(group.has_options(), "AdamW param group without options");
  }
  return *adamw;
}

// ---- expert sharding --------------------------------------------------------------------

std::map<std::string, ShardSpec> expert_placement(torch::nn::Module& model) {
  std::map<std::string, ShardSpec> placement;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto experts = std::dynamic_pointer_cast<model::ExpertsImpl>(item.value());
    if (!experts || experts->n_experts() == experts->total_experts()) continue;
    const ShardSpec spec{experts->first_expert(), experts->n_experts(), experts->total_experts()};
    for (const auto& p : experts->named_parameters(/*recurse=*/false)) {
      placement[item.key() + "." + p.key()] = spec;
    }
  }
  return placement;
}

namespace {
bool in_subset(Subset subset, bool sharded) {
  return subset == Subset::kAll || (subset == Subset::kSharded) == sharded;
}
}  // namespace

TensorSource::TensorSource(const std::string& dir, const std::string& main_file,
                           const std::vector<Shard>& shards) {
  auto open = [&](const std::string& name) {
    files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir + "/" + name)));
    return files_.size() - 1;
  };
  const size_t main = open(main_file);
  for (const auto& name : files_[main]->names()) {
    const TensorInfo& info = files_[main]->info(name);
    index_[name] = Entry{info, {Piece{main, 0, info.shape.empty() ? 0 : info.shape[0]}}};
  }
  std::vector<Shard> ordered = shards;
  std::sort(ordered.begin(), ordered.end(),
            [](const Shard& a, const Shard& b) { return a.first < b.first; });
  std::set<std::string> sharded;
  for (const auto& shard : ordered) {
    const size_t f = open(shard.file);
    const SafetensorsFile& file = *files_[f];
    for (const auto& name : file.names()) {
      const TensorInfo& info = file.info(name);
      auto it = index_.find(name);
      MOETRON_CHECK(it == index_.end() || sharded.count(name), file.path(), ": tensor ", name,
                    " is also in ", files_[main]->path());
      if (info.shape.empty()) {  // a copy (e.g. an AdamW step count): the first one is used
        if (it == index_.end()) index_[name] = Entry{info, {Piece{f, 0, 0}}};
        sharded.insert(name);
        continue;
      }
      MOETRON_CHECK(info.shape[0] == shard.count, file.path(), ": tensor ", name, " has ",
                    info.shape[0], " rows, the manifest says this shard holds ", shard.count);
      if (it == index_.end()) {
        MOETRON_CHECK(shard.first == 0, file.path(), ": tensor ", name,
                      " is missing from the shards before row ", shard.first);
        index_[name] = Entry{info, {Piece{f, shard.first, shard.count}}};
      } else {
        Entry& e = it->second;
        MOETRON_CHECK(e.info.dtype == info.dtype &&
                          std::equal(e.info.shape.begin() + 1, e.info.shape.end(),
                                     info.shape.begin() + 1, info.shape.end()) &&
                          e.info.shape[0] == shard.first,
                      file.path(), ": shard of ", name, " (rows from ", shard.first,
                      ") does not continue the previous shards");
        e.info.shape[0] += shard.count;
        e.pieces.push_back(Piece{f, shard.first, shard.count});
      }
      sharded.insert(name);
    }
  }
}

std::vector<std::string> TensorSource::names() const {
  std::vector<std::string> out;
  for (const auto& item : index_) out.push_back(item.first);
  return out;
}

const TensorInfo& TensorSource::info(const std::string& name) const {
  auto it = index_.find(name);
  MOETRON_CHECK(it != index_.end(), path(), ": no tensor ", name);
  return it->second.info;
}

torch::Tensor TensorSource::read(const std::string& name, int64_t first, int64_t count) const {
  auto it = index_.find(name);
  MOETRON_CHECK(it != index_.end(), path(), ": no tensor ", name);
  const Entry& e = it->second;
  if (e.info.shape.empty()) return mapped_tensor(*files_[e.pieces[0].file], name);
  if (count < 0) count = e.info.shape[0] - first;
  MOETRON_CHECK(first >= 0 && first + count <= e.info.shape[0], path(), ": rows [", first, ", ",
                first + count, ") of ", name, " are outside its ", e.info.shape[0], " rows");
  std::vector<torch::Tensor> parts;
  for (const auto& piece : e.pieces) {
    const int64_t lo = std::max(first, piece.first);
    const int64_t hi = std::min(first + count, piece.first + piece.count);
    if (lo >= hi) continue;
    parts.push_back(mapped_tensor(*files_[piece.file], name).narrow(0, lo - piece.first, hi - lo));
  }
  if (parts.size() == 1) return parts[0];
  if (parts.empty()) {
    auto shape = e.info.shape;
    shape[0] = 0;
    return torch::empty(shape, torch::TensorOptions().dtype(to_torch_dtype(e.info.dtype)));
  }
  return torch::cat(parts, 0);
}

// ---- model ---------------------------------------------------------------------------------

void save_model_state(const std::string& path, torch::nn::Module& model, Subset subset) {
  const auto placement = expert_placement(model);
  NamedTensors tensors;
  for (auto& [name, t] : model_tensors(model)) {
    if (in_subset(subset, placement.count(name) > 0)) tensors.emplace_back(name, t.detach());
  }
  save_safetensors(path, tensors, {{"format", "moetron-model-state"}});
}

PreparedModel prepare_model_load(std::shared_ptr<TensorSource> source, torch::nn::Module& model) {
  PreparedModel prepared;
  prepared.source = std::move(source);
  const TensorSource& file = *prepared.source;
  const auto placement = expert_placement(model);
  std::vector<std::string> missing, mismatched, unexpected;
  std::set<std::string> known;
  for (auto& [name, t] : model_tensors(model)) {
    known.insert(name);
    if (!file.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const ShardSpec* spec = find_spec(placement, name);
    const std::string why = mismatch(file.info(name), t, spec);
    if (!why.empty()) {
      mismatched.push_back(str_cat(name, ": ", why));
      continue;
    }
    prepared.copies.push_back({t, name, spec ? spec->first : 0, spec ? spec->count : -1});
  }
  for (const auto& name : file.names()) {
    if (!known.count(name)) unexpected.push_back(name);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::string message =
        str_cat(file.path(),
                ": the model does not match the checkpoint (was it written with another model "
                "config? see config.yaml beside it)");
    auto add = [&](const char* what, const std::vector<std::string>& names) {
      if (!names.empty())
        message += str_cat("\n", what, " (", names.size(), "):", bullet_list(names));
    };
    add("missing in the checkpoint", missing);
    add("in the checkpoint but not in the model", unexpected);
    add("shape/dtype mismatch", mismatched);
    throw Error(ErrorKind::kConfig, message);
  }
  return prepared;
}

void apply_model_load(PreparedModel& prepared) {
  torch::NoGradGuard no_grad;
  for (auto& c : prepared.copies) c.dst.copy_(prepared.source->read(c.name, c.first, c.count));
  prepared.copies.clear();
  prepared.source.reset();
}

// ---- optimizer -----------------------------------------------------------------------------

void save_optimizer_state(const std::string& path, torch::nn::Module& model,
                          torch::optim::AdamW& optimizer, Subset subset) {
  const auto placement = expert_placement(model);
  const auto names = group_names(model, optimizer);
  const auto& groups = optimizer.param_groups();
  NamedTensors tensors;
  nlohmann::json groups_json = nlohmann::json::array();
  for (size_t g = 0; g < groups.size(); ++g) {
    nlohmann::json gj = options_json(adamw_options(groups[g]));
    gj["params"] = names[g];
    groups_json.push_back(std::move(gj));
    for (size_t i = 0; i < groups[g].params().size(); ++i) {
      const auto& p = groups[g].params()[i];
      auto it = optimizer.state().find(p.unsafeGetTensorImpl());
      if (it == optimizer.state().end()) continue;  // never stepped (no gradient yet)
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      const std::string& name = names[g][i];
      if (!in_subset(subset, placement.count(name) > 0)) continue;
      tensors.emplace_back(name + ".exp_avg", s.exp_avg());
      tensors.emplace_back(name + ".exp_avg_sq", s.exp_avg_sq());
      if (s.max_exp_avg_sq().defined()) {
        tensors.emplace_back(name + ".max_exp_avg_sq", s.max_exp_avg_sq());
      }
      tensors.emplace_back(name + ".step", torch::tensor(s.step(), torch::kInt64));
    }
  }
  save_safetensors(
      path, tensors,
      {{"format", kOptimizerFormat}, {"version", "1"}, {"param_groups", groups_json.dump()}});
}

PreparedOptimizer prepare_optimizer_load(std::shared_ptr<TensorSource> source,
                                         torch::nn::Module& model, torch::optim::AdamW& optimizer) {
  PreparedOptimizer prepared;
  prepared.source = std::move(source);
  const TensorSource& file = *prepared.source;
  const std::string& path = file.path();
  const auto placement = expert_placement(model);
  const auto& meta = file.metadata();
  auto format = meta.find("format");
  auto groups_text = meta.find("param_groups");
  MOETRON_CHECK(
      format != meta.end() && format->second == kOptimizerFormat && groups_text != meta.end(), path,
      ": not a moetron AdamW state file (expected metadata format=", kOptimizerFormat,
      " and param_groups)");
  const nlohmann::json saved = parse_json_strict(
      groups_text->second, str_cat(path, ": metadata param_groups"), /*max_depth=*/4);
  const auto names = group_names(model, optimizer);
  const auto& groups = optimizer.param_groups();
  MOETRON_CHECK(saved.is_array() && saved.size() == groups.size(), path, ": the checkpoint has ",
                saved.is_array() ? saved.size() : 0, " optimizer param groups, the optimizer has ",
                groups.size());

  std::vector<std::string> problems;
  std::set<std::string> consumed;
  for (size_t g = 0; g < groups.size(); ++g) {
    const nlohmann::json& sg = saved[g];
    torch::optim::AdamWOptions options;
    bool amsgrad = false;
    try {
      const auto betas = sg.at("betas").get<std::vector<double>>();
      MOETRON_CHECK(betas.size() == 2, "betas must have 2 values");
      amsgrad = sg.at("amsgrad").get<bool>();
      options.lr(sg.at("lr").get<double>())
          .betas({betas[0], betas[1]})
          .eps(sg.at("eps").get<double>())
          .weight_decay(sg.at("weight_decay").get<double>())
          .amsgrad(amsgrad);
    } catch (const nlohmann::json::exception& e) {
      throw Error(str_cat(path, ": param group ", g, " metadata is malformed: ", e.what()));
    }
    prepared.group_options.push_back(options);

    // Group membership decides weight decay: a parameter that moved group is a config change.
    const auto saved_names = sg.value("params", std::vector<std::string>{});
    const std::set<std::string> saved_set(saved_names.begin(), saved_names.end());
    const std::set<std::string> current_set(names[g].begin(), names[g].end());
    for (const auto& n : saved_set) {
      if (!current_set.count(n)) {
        problems.push_back(
            str_cat(n, ": in param group ", g, " of the checkpoint, not of the optimizer"));
      }
    }
    for (const auto& n : current_set) {
      if (!saved_set.count(n)) {
        problems.push_back(
            str_cat(n, ": in param group ", g, " of the optimizer, not of the checkpoint"));
      }
    }

    for (size_t i = 0; i < groups[g].params().size(); ++i) {
      const torch::Tensor& p = groups[g].params()[i];
      const std::string& name = names[g][i];
      const ShardSpec* spec = find_spec(placement, name);
      PreparedOptimizerParam entry{p, name};
      if (spec) {
        entry.first = spec->first;
        entry.count = spec->count;
      }
      const std::string keys[] = {name + ".exp_avg", name + ".exp_avg_sq", name + ".step",
                                  name + ".max_exp_avg_sq"};
      const bool has[] = {file.contains(keys[0]), file.contains(keys[1]), file.contains(keys[2]),
                          file.contains(keys[3])};
      for (const auto& k : keys) {
        if (file.contains(k)) consumed.insert(k);
      }
      if (!has[0] && !has[1] && !has[2] && !has[3]) {
        prepared.params.push_back(entry);  // no state: the optimizer had not stepped it
        continue;
      }
      if (!has[0] || !has[1] || !has[2] || (amsgrad && !has[3])) {
        problems.push_back(str_cat(name, ": incomplete state (needs exp_avg, exp_avg_sq, step",
                                   amsgrad ? ", max_exp_avg_sq" : "", ")"));
        continue;
      }
      bool ok = true;
      for (int k : {0, 1, 3}) {
        if (!has[k]) continue;
        const std::string why = mismatch(file.info(keys[k]), p, spec);
        if (!why.empty()) {
          problems.push_back(str_cat(keys[k], ": ", why));
          ok = false;
        }
      }
      const TensorInfo& step = file.info(keys[2]);
      if (step.dtype != Dtype::kI64 || step.numel() != 1) {
        problems.push_back(str_cat(keys[2], ": expected one I64, got ", shape_text(step.shape), " ",
                                   dtype_name(step.dtype)));
        ok = false;
      }
      entry.has_state = ok;
      entry.has_max = has[3];
      prepared.params.push_back(entry);
    }
  }
  for (const auto& name : file.names()) {
    if (!consumed.count(name)) {
      problems.push_back(str_cat(name, ": state for a parameter the optimizer does not have"));
    }
  }
  if (!problems.empty()) {
    throw Error(ErrorKind::kConfig,
                str_cat(path, ": the optimizer does not match the checkpoint's AdamW state:",
                        bullet_list(problems)));
  }
  return prepared;
}

void apply_optimizer_load(PreparedOptimizer& prepared, torch::optim::AdamW& optimizer) {
  auto& groups = optimizer.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    auto& current = static_cast<torch::optim::AdamWOptions&>(groups[g].options());
    const auto& saved = prepared.group_options[g];
    if (options_json(current) != options_json(saved)) {
      log::info("optimizer param group ", g, ": hyper-parameters restored from the checkpoint ",
                options_json(saved).dump(), " (were ", options_json(current).dump(), ")");
    }
    current.lr(saved.lr())
        .betas(saved.betas())
        .eps(saved.eps())
        .weight_decay(saved.weight_decay())
        .amsgrad(saved.amsgrad());
  }
  torch::NoGradGuard no_grad;
  const TensorSource& file = *prepared.source;
  // Fresh tensors shaped like the parameter (what AdamW itself would allocate) on its device.
  auto load_like = [&](const PreparedOptimizerParam& e, const std::string& key) {
    return torch::empty_like(e.param, e.param.options().requires_grad(false))
        .copy_(file.read(key, e.first, e.count));
  };
  optimizer.state().clear();
  for (const auto& e : prepared.params) {
    if (!e.has_state) continue;
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(file.read(e.name + ".step").item<int64_t>());
    s->exp_avg(load_like(e, e.name + ".exp_avg"));
    s->exp_avg_sq(load_like(e, e.name + ".exp_avg_sq"));
    if (e.has_max) s->max_exp_avg_sq(load_like(e, e.name + ".max_exp_avg_sq"));
    optimizer.state()[e.param.unsafeGetTensorImpl()] = std::move(s);
  }
  prepared.params.clear();
  prepared.source.reset();
}

// ---- RNG -----------------------------------------------------------------------------------

namespace {

at::Generator cuda_generator(int64_t device) {
  return at::globalContext().defaultGenerator(
      c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
}

int64_t cuda_devices() {
  return torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
}

torch::Tensor generator_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

}  // namespace

void save_rng_state(const std::string& path) {
  NamedTensors tensors;
  tensors.emplace_back("cpu", generator_state(at::detail::getDefaultCPUGenerator()));
  const int64_t n = cuda_devices();
  for (int64_t d = 0; d < n; ++d) {
    tensors.emplace_back(str_cat("cuda.", d), generator_state(cuda_generator(d)));
  }
  save_safetensors(path, tensors,
                   {{"format", kRngFormat}, {"version", "1"}, {"cuda_devices", std::to_string(n)}});
}

PreparedRng prepare_rng_load(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  auto format = file.metadata().find("format");
  MOETRON_CHECK(format != file.metadata().end() && format->second == kRngFormat, path,
                ": not a moetron RNG state file (expected metadata format=", kRngFormat, ")");
  MOETRON_CHECK(file.contains("cpu"), path, ": no 'cpu' generator state");
  PreparedRng prepared;
  // set_state validates the size too, but only while applying: check here so a bad file fails
  // before anything was loaded.
  auto check_like = [&](const std::string& name, const torch::Tensor& current) {
    torch::Tensor t = read_tensor(file, name);
    MOETRON_CHECK(t.scalar_type() == current.scalar_type() && t.numel() == current.numel(), path,
                  ": generator state '", name, "' has ", t.numel(), " ", t.scalar_type(),
                  " values, this build's generator has ", current.numel(), " ",
                  current.scalar_type());
    return t;
  };
  prepared.cpu = check_like("cpu", generator_state(at::detail::getDefaultCPUGenerator()));
  int64_t saved = 0;
  while (file.contains(str_cat("cuda.", saved))) ++saved;
  const int64_t now = cuda_devices();
  if (saved != now) {
    log::warn(path, ": the checkpoint holds ", saved, " CUDA generator states, this process sees ",
              now, " CUDA devices; restoring ", std::min(saved, now),
              " (random streams on the others are not resumed)");
  }
  for (int64_t d = 0; d < std::min(saved, now); ++d) {
    prepared.cuda.push_back(check_like(str_cat("cuda.", d), generator_state(cuda_generator(d))));
  }
  return prepared;
}

void apply_rng_load(const PreparedRng& prepared) {
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(prepared.cpu);
  }
  for (size_t d = 0; d < prepared.cuda.size(); ++d) {
    at::Generator gen = cuda_generator(static_cast<int64_t>(d));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(prepared.cuda[d]);
  }
}

}  // namespace moetron::ckpt::detail
