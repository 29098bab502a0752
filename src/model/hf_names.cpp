// HF name mapping: our module tree -> HF DeepseekV3 checkpoint names and back (SPEC 1.10).
#include "moetron/model/hf_names.h"

#include <algorithm>
#include <map>
#include <regex>
#include <sstream>

#include <torch/torch.h>

#include "moetron/core/error.h"
#include "moetron/core/logging.h"

namespace moetron::model {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "mtp.{k}.rest" -> "model.layers.{L+k}.rest"; anything else unchanged.
std::string hf_prefix_name(const std::string& name, int64_t L) {
  static const std::regex kMtp(R"(^mtp\.(\d+)\.(.*)$)");
  std::smatch m;
  if (std::regex_match(name, m, kMtp)) {
    return str_cat("model.layers.", L + std::stoll(m[1].str()), ".", m[2].str());
  }
  return name;
}

// The HF-named targets: name -> tensor (a view into our parameter or buffer).
std::vector<std::pair<std::string, torch::Tensor>> hf_targets(DeepseekV3ForCausalLM& model) {
  const int64_t L = model->config().model.num_hidden_layers;
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    const std::string hf = hf_prefix_name(name, L);
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      const std::string stacked = std::string("mlp.experts.") + proj;
      if (ends_with(hf, stacked)) {
        const std::string base = hf.substr(0, hf.size() - std::string(proj).size());
        for (int64_t e = 0; e < t.size(0); ++e) {
          out.emplace_back(str_cat(base, e, ".", proj, ".weight"), t[e]);
        }
        return;
      }
    }
    out.emplace_back(hf, t);
  };
  for (const auto& item : model->named_parameters(true)) add(item.key(), item.value());
  for (const auto& item : model->named_buffers(true)) add(item.key(), item.value());
  return out;
}

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> to_hf_tensors(DeepseekV3ForCausalLM& model) {
  auto out = hf_targets(model);
  const int64_t L = model->config().model.num_hidden_layers;
  // The release stores copies of the shared embedding and head inside each MTP layer.
  for (int64_t k = 0; k < model->num_mtp(); ++k) {
    out.emplace_back(str_cat("model.layers.", L + k, ".embed_tokens.weight"),
                     model->model->embed_tokens->weight);
    out.emplace_back(str_cat("model.layers.", L + k, ".shared_head.head.weight"),
                     model->lm_head_weight());
  }
  for (auto& item : out) item.second = item.second.detach();
  return out;
}

void load_hf_tensors(DeepseekV3ForCausalLM& model,
                     const std::unordered_map<std::string, torch::Tensor>& tensors,
                     const HfLoadOptions& options) {
  const int64_t L = model->config().model.num_hidden_layers;
  const int64_t D_mtp = model->num_mtp();
  std::map<std::string, torch::Tensor> targets;
  for (auto& item : hf_targets(model)) targets.emplace(item.first, item.second);

  // MTP copies of the shared tensors: accepted, not loaded.
  std::map<std::string, torch::Tensor> shared_copies;
  for (int64_t k = 0; k < D_mtp; ++k) {
    shared_copies.emplace(str_cat("model.layers.", L + k, ".embed_tokens.weight"),
                          model->model->embed_tokens->weight);
    shared_copies.emplace(str_cat("model.layers.", L + k, ".shared_head.head.weight"),
                          model->lm_head_weight());
  }
  static const std::regex kLayer(R"(^model\.layers\.(\d+)\..*$)");

  std::vector<std::string> missing, unexpected, mismatched;
  int64_t skipped_mtp = 0;
  for (const auto& [name, src] : tensors) {
    auto it = targets.find(name);
    if (it != targets.end()) {
      if (src.sizes() != it->second.sizes()) {
        mismatched.push_back(
            str_cat(name, ": expected ", shape_str(it->second), ", got ", shape_str(src)));
      }
      continue;
    }
    auto sc = shared_copies.find(name);
    if (sc != shared_copies.end()) {
      if (src.sizes() != sc->second.sizes()) {
        mismatched.push_back(
            str_cat(name, ": expected ", shape_str(sc->second), ", got ", shape_str(src)));
      }
      continue;
    }
    std::smatch m;
    if (options.skip_extra_mtp_layers && std::regex_match(name, m, kLayer) &&
        std::stoll(m[1].str()) >= L + D_mtp) {
      ++skipped_mtp;
      continue;
    }
    unexpected.push_back(name);
  }
  for (const auto& item : targets) {
    if (!tensors.count(item.first)) missing.push_back(item.first);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::sort(missing.begin(), missing.end());
    std::sort(unexpected.begin(), unexpected.end());
    std::sort(mismatched.begin(), mismatched.end());
    std::ostringstream os;
    os << "load_hf_tensors: checkpoint does not match the model config (check model.*, mla.*, "
          "moe.*, mtp.* against the checkpoint's config.json)";
    auto list = [&](const char* title, const std::vector<std::string>& names) {
      if (names.empty()) return;
      os << "\n  " << title << " (" << names.size() << "):";
      for (const auto& n : names) os << "\n    " << n;
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("shape mismatch", mismatched);
    throw Error(ErrorKind::kConfig, os.str());
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, dst] : targets) dst.copy_(tensors.at(name));
  for (const auto& [name, shared] : shared_copies) {
    auto it = tensors.find(name);
    if (it == tensors.end()) continue;
    if (!torch::equal(it->second.to(shared.device(), shared.scalar_type()), shared)) {
      log::warn("load_hf_tensors: ", name, " differs from the shared tensor; ignored (the ",
                "main embed_tokens / lm_head are used)");
    }
  }
  if (skipped_mtp > 0) {
    log::info("load_hf_tensors: skipped ", skipped_mtp, " tensors of MTP layers beyond the ", D_mtp,
              " configured (mtp.num_nextn_predict_layers)");
  }
}

}  // namespace moetron::model
