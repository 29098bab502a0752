// HF checkpoint directories: config.json mapping (SPEC 4.1), single-file or sharded tensors,
// FP8 block dequantisation on import (SPEC 1.10), and atomic directory writing.
#include "moetron/ckpt/hf_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/core/logging.h"
#include "strict_json.h"

namespace moetron::ckpt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kScaleSuffix = ".weight_scale_inv";

// ---- config.json reading ---------------------------------------------------------------------

// Walks the config object, remembering which keys were consumed so leftovers can be refused.
class ConfigReader {
 public:
  ConfigReader(const json& root, std::string source) : root_(root), source_(std::move(source)) {}

  bool has(const std::string& key) const { return root_.contains(key) && !root_.at(key).is_null(); }
  const json* take(const std::string& key) {
    used_.insert(key);
    return has(key) ? &root_.at(key) : nullptr;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(ErrorKind::kConfig, str_cat(source_, ": ", key, ": ", what));
  }

  int64_t integer(const json& v, const std::string& key) const {
    if (!v.is_number_integer()) fail(key, str_cat("expected an integer, got ", v.dump()));
    return v.get<int64_t>();
  }
  void read(const std::string& key, int64_t& out, bool required = false, int64_t min = 0) {
    const json* v = take(key);
    if (v == nullptr) {
      if (required) fail(key, "missing (required: it sets a tensor shape)");
      return;
    }
    out = integer(*v, key);
    if (out < min) fail(key, str_cat("expected >= ", min, ", got ", out));
  }
  void read(const std::string& key, double& out) {
    const json* v = take(key);
    if (v == nullptr) return;
    if (!v->is_number()) fail(key, str_cat("expected a number, got ", v->dump()));
    out = v->get<double>();
  }
  void read(const std::string& key, bool& out) {
    const json* v = take(key);
    if (v == nullptr) return;
    if (!v->is_boolean()) fail(key, str_cat("expected true or false, got ", v->dump()));
    out = v->get<bool>();
  }
  std::string string(const std::string& key) {
    const json* v = take(key);
    if (v == nullptr) return "";
    if (!v->is_string()) fail(key, str_cat("expected a string, got ", v->dump()));
    return v->get<std::string>();
  }
  // A value we do not implement alternatives for: absent, or equal to `want`.
  void require(const std::string& key, const json& want, const std::string& why) {
    const json* v = take(key);
    if (v != nullptr && *v != want) {
      fail(key, str_cat("expected ", want.dump(), ", got ", v->dump(), " (", why, ")"));
    }
  }
  void ignore(std::initializer_list<const char*> keys) {
    for (const char* k : keys) used_.insert(k);
  }
  void refuse_leftovers() const {
    for (const auto& [key, value] : root_.items()) {
      if (used_.count(key) == 0) {
        fail(key,
             "unknown config.json field; moetron cannot tell whether it changes the model "
             "(remove it, or teach src/ckpt/hf_checkpoint.cpp about it)");
      }
    }
  }
  const std::string& source() const { return source_; }

 private:
  const json& root_;
  std::string source_;
  std::set<std::string> used_;
};

// rope_scaling (legacy) or rope_parameters (transformers v5): yarn or nothing.
std::optional<config::RopeScaling> parse_rope_scaling(const json& v, const std::string& key,
                                                      const ConfigReader& r, double* rope_theta) {
  if (!v.is_object()) r.fail(key, str_cat("expected an object or null, got ", v.dump()));
  std::string type;
  for (const char* k : {"type", "rope_type"}) {
    if (v.contains(k)) {
      if (!v.at(k).is_string()) r.fail(str_cat(key, ".", k), "expected a string");
      const std::string t = v.at(k).get<std::string>();
      if (!type.empty() && t != type) {
        r.fail(key, str_cat("'type' and 'rope_type' disagree: '", type, "' vs '", t, "'"));
      }
      type = t;
    }
  }
  if (rope_theta != nullptr && v.contains("rope_theta")) {
    if (!v.at("rope_theta").is_number()) r.fail(key + ".rope_theta", "expected a number");
    *rope_theta = v.at("rope_theta").get<double>();
  }
  if (type == "default" || (type.empty() && rope_theta != nullptr)) {
    for (const auto& [k, x] : v.items()) {
      if (k != "type" && k != "rope_type" && k != "rope_theta") {
        r.fail(str_cat(key, ".", k), "unexpected for plain RoPE");
      }
    }
    return std::nullopt;
  }
  if (type != "yarn") {
    r.fail(key, str_cat("rope type '", type, "' is not supported; expected 'yarn' (SPEC 1.5)"));
  }
  config::RopeScaling s;
  std::set<std::string> known = {"type", "rope_type", "rope_theta"};
  auto num = [&](const char* k, double& out, bool required) {
    known.insert(k);
    if (!v.contains(k) || v.at(k).is_null()) {
      // HF derives a different attention factor when mscale / mscale_all_dim are absent, which
      // our struct cannot express, so those must be explicit.
      if (required) r.fail(str_cat(key, ".", k), "missing (required for yarn)");
      return;
    }
    if (!v.at(k).is_number()) r.fail(str_cat(key, ".", k), "expected a number");
    out = v.at(k).get<double>();
  };
  double orig = static_cast<double>(s.original_max_position_embeddings);
  num("factor", s.factor, true);
  num("original_max_position_embeddings", orig, true);
  num("beta_fast", s.beta_fast, false);
  num("beta_slow", s.beta_slow, false);
  num("mscale", s.mscale, true);
  num("mscale_all_dim", s.mscale_all_dim, true);
  if (orig != static_cast<double>(static_cast<int64_t>(orig)) || orig <= 0) {
    r.fail(key + ".original_max_position_embeddings", "expected a positive integer");
  }
  s.original_max_position_embeddings = static_cast<int64_t>(orig);
  for (const auto& [k, x] : v.items()) {
    if (known.count(k) == 0) {
      r.fail(str_cat(key, ".", k), "unknown yarn parameter (it would change the RoPE frequencies)");
    }
  }
  return s;
}

void parse_quantization(const json& q, const ConfigReader& r) {
  const std::string key = "quantization_config";
  if (!q.is_object()) r.fail(key, "expected an object");
  auto str = [&](const char* k) {
    return q.contains(k) && q.at(k).is_string() ? q.at(k).get<std::string>() : std::string();
  };
  if (str("quant_method") != "fp8") {
    r.fail(key + ".quant_method",
           str_cat("only 'fp8' is supported, got '", str("quant_method"), "'"));
  }
  if (q.contains("fmt") && str("fmt") != "e4m3") {
    r.fail(key + ".fmt", str_cat("only 'e4m3' is supported, got ", q.at("fmt").dump()));
  }
  if (q.contains("weight_block_size") && q.at("weight_block_size") != json::array({128, 128})) {
    r.fail(key + ".weight_block_size",
           str_cat("only [128, 128] is supported, got ", q.at("weight_block_size").dump()));
  }
}

}  // namespace

HfConfigInfo parse_hf_config(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = detail::parse_json_strict(json_text, source, 8);
  } catch (const Error& e) {
    throw Error(ErrorKind::kConfig, e.what());  // a user-fixable file, not a runtime fault
  }
  if (!root.is_object()) {
    throw Error(ErrorKind::kConfig, str_cat(source, ": expected a JSON object"));
  }
  ConfigReader r(root, source);
  HfConfigInfo info;
  auto& m = info.config.model;
  auto& a = info.config.mla;
  auto& e = info.config.moe;
  auto& t = info.config.mtp;

  info.model_type = r.string("model_type");
  if (info.model_type != "deepseek_v3" && info.model_type != "deepseek_v2") {
    r.fail("model_type",
           str_cat("expected 'deepseek_v3' or 'deepseek_v2', got '", info.model_type, "'"));
  }
  r.read("vocab_size", m.vocab_size, true, 1);
  r.read("hidden_size", m.hidden_size, true, 1);
  r.read("intermediate_size", m.intermediate_size, true, 1);
  r.read("num_hidden_layers", m.num_hidden_layers, true, 1);
  r.read("num_attention_heads", m.num_attention_heads, true, 1);
  r.read("max_position_embeddings", m.max_position_embeddings, false, 1);
  r.read("rms_norm_eps", m.rms_norm_eps);
  r.read("rope_theta", m.rope_theta);
  r.read("tie_word_embeddings", m.tie_word_embeddings);
  r.read("initializer_range", m.initializer_range);
  r.read("bos_token_id", m.bos_token_id);
  if (const json* v = r.take("eos_token_id")) {
    // Some chat checkpoints list several stop ids; the model config holds the first.
    if (v->is_array() && !v->empty()) {
      m.eos_token_id = r.integer(v->at(0), "eos_token_id[0]");
      if (v->size() > 1)
        log::warn(source, ": eos_token_id lists ", v->size(), " ids; using the first");
    } else {
      m.eos_token_id = r.integer(*v, "eos_token_id");
    }
  }
  m.rope_scaling.reset();
  if (const json* v = r.take("rope_scaling")) {
    m.rope_scaling = parse_rope_scaling(*v, "rope_scaling", r, nullptr);
  }
  if (const json* v = r.take("rope_parameters")) {
    if (m.rope_scaling) r.fail("rope_parameters", "given together with rope_scaling");
    m.rope_scaling = parse_rope_scaling(*v, "rope_parameters", r, &m.rope_theta);
  }

  a.q_lora_rank.reset();
  if (const json* v = r.take("q_lora_rank")) {
    const int64_t q = r.integer(*v, "q_lora_rank");
    if (q < 0) r.fail("q_lora_rank", str_cat("expected null or >= 0, got ", q));
    if (q > 0) a.q_lora_rank = q;  // 0 is the official ModelArgs spelling of "no compression"
  }
  r.read("kv_lora_rank", a.kv_lora_rank, true, 1);
  r.read("qk_nope_head_dim", a.qk_nope_head_dim, true, 1);
  r.read("qk_rope_head_dim", a.qk_rope_head_dim, true, 2);
  r.read("v_head_dim", a.v_head_dim, true, 1);
  if (a.qk_rope_head_dim % 2 != 0) {
    r.fail("qk_rope_head_dim",
           str_cat("RoPE rotates pairs: expected even, got ", a.qk_rope_head_dim));
  }
  int64_t kv_heads = m.num_attention_heads, head_dim = a.qk_rope_head_dim;
  r.read("num_key_value_heads", kv_heads, false, 1);
  if (kv_heads != m.num_attention_heads) {
    r.fail("num_key_value_heads",
           str_cat("MLA has one latent per head: expected ", m.num_attention_heads,
                   " (num_attention_heads), got ", kv_heads));
  }
  r.read("head_dim", head_dim, false, 1);
  if (head_dim != a.qk_rope_head_dim) {
    r.fail("head_dim", str_cat("HF sizes RoPE by head_dim: expected ", a.qk_rope_head_dim,
                               " (qk_rope_head_dim), got ", head_dim));
  }
  int64_t qk_head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
  r.read("qk_head_dim", qk_head_dim, false, 1);  // derived field transformers v5 writes
  if (qk_head_dim != a.qk_nope_head_dim + a.qk_rope_head_dim) {
    r.fail("qk_head_dim", str_cat("expected qk_nope_head_dim + qk_rope_head_dim = ",
                                  a.qk_nope_head_dim + a.qk_rope_head_dim, ", got ", qk_head_dim));
  }
  r.require("rope_interleave", true,
            "HF's half-split RoPE is a different model for DeepSeek weights, SPEC 1.4");

  e.n_routed_experts.reset();
  if (const json* v = r.take("n_routed_experts")) {
    e.n_routed_experts = r.integer(*v, "n_routed_experts");
    if (*e.n_routed_experts < 1) r.fail("n_routed_experts", "expected null or >= 1");
  }
  e.n_shared_experts = 0;
  r.read("n_shared_experts", e.n_shared_experts);
  r.read("num_experts_per_tok", e.num_experts_per_tok, false, 1);
  r.read("moe_intermediate_size", e.moe_intermediate_size, false, 1);
  r.read("n_group", e.n_group, false, 1);
  r.read("topk_group", e.topk_group, false, 1);
  r.read("norm_topk_prob", e.norm_topk_prob);
  r.read("routed_scaling_factor", e.routed_scaling_factor);
  r.read("first_k_dense_replace", e.first_k_dense_replace);
  r.read("moe_layer_freq", e.moe_layer_freq, false, 1);
  r.read("aux_loss_alpha", e.aux_loss_alpha);
  if (r.has("scoring_func")) {
    const std::string s = r.string("scoring_func");
    if (s == "sigmoid")
      e.scoring_func = config::ScoringFunc::kSigmoid;
    else if (s == "softmax")
      e.scoring_func = config::ScoringFunc::kSoftmax;
    else
      r.fail("scoring_func", str_cat("expected 'sigmoid' or 'softmax', got '", s, "'"));
  }
  if (r.has("topk_method")) {
    const std::string s = r.string("topk_method");
    if (s == "noaux_tc")
      e.topk_method = config::TopkMethod::kNoauxTc;
    else if (s == "greedy")
      e.topk_method = config::TopkMethod::kGreedy;
    else if (s == "group_limited_greedy")
      e.topk_method = config::TopkMethod::kGroupLimitedGreedy;
    else
      r.fail("topk_method",
             str_cat("expected noaux_tc, greedy or group_limited_greedy, got '", s, "'"));
  }
  r.require("seq_aux", true, "moetron implements the sequence-wise balance loss only");
  t.num_nextn_predict_layers = 0;
  r.read("num_nextn_predict_layers", t.num_nextn_predict_layers);

  r.require("hidden_act", "silu", "DeepSeek FFNs are SwiGLU");
  r.require("attention_bias", false, "MLA projections have no bias");
  r.require("mlp_bias", false, "DeepSeek FFNs have no bias");
  r.require("attention_dropout", 0.0, "moetron does not implement attention dropout");
  r.require("pretraining_tp", 1, "tensor-parallel slicing of the output layer is not implemented");
  info.torch_dtype = r.string("torch_dtype");
  const std::string dtype_v5 = r.string("dtype");  // transformers v5 renamed torch_dtype
  if (info.torch_dtype.empty()) info.torch_dtype = dtype_v5;
  if (const json* q = r.take("quantization_config")) {
    parse_quantization(*q, r);
    info.fp8 = true;
  }
  // Bookkeeping that never changes the forward pass.
  r.ignore({"architectures", "transformers_version", "_name_or_path", "auto_map", "use_cache",
            "pad_token_id", "ep_size", "output_router_logits", "router_aux_loss_coef",
            "return_dict", "output_hidden_states", "output_attentions", "id2label", "label2id",
            "tokenizer_class", "is_encoder_decoder", "_attn_implementation_autoset"});
  r.refuse_leftovers();
  return info;
}

HfConfigInfo read_hf_config(const std::string& config_json_path) {
  return parse_hf_config(read_text_file(config_json_path), config_json_path);
}

std::string hf_config_json(const HfModelConfig& c, torch::ScalarType dtype) {
  MOETRON_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16,
                "config.json torch_dtype: expected float32 or bfloat16, got ", dtype);
  const auto& m = c.model;
  const auto& a = c.mla;
  const auto& e = c.moe;
  // HF's DeepseekV3 model always routes with sigmoid + noaux_tc; V2-style routing is only
  // computed faithfully by the deepseek_v2 model class.
  const bool v3 = e.scoring_func == config::ScoringFunc::kSigmoid &&
                  e.topk_method == config::TopkMethod::kNoauxTc;
  nlohmann::ordered_json j;
  j["architectures"] = {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
  j["model_type"] = v3 ? "deepseek_v3" : "deepseek_v2";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  j["moe_intermediate_size"] = e.moe_intermediate_size;
  j["num_hidden_layers"] = m.num_hidden_layers;
  j["num_attention_heads"] = m.num_attention_heads;
  j["num_key_value_heads"] = m.num_attention_heads;
  j["n_shared_experts"] = e.n_shared_experts;
  j["n_routed_experts"] = e.n_routed_experts ? json(*e.n_routed_experts) : json(nullptr);
  j["routed_scaling_factor"] = e.routed_scaling_factor;
  j["kv_lora_rank"] = a.kv_lora_rank;
  j["q_lora_rank"] = a.q_lora_rank ? json(*a.q_lora_rank) : json(nullptr);
  j["qk_rope_head_dim"] = a.qk_rope_head_dim;
  j["v_head_dim"] = a.v_head_dim;
  j["qk_nope_head_dim"] = a.qk_nope_head_dim;
  j["head_dim"] = a.qk_rope_head_dim;
  j["n_group"] = e.n_group;
  j["topk_group"] = e.topk_group;
  j["num_experts_per_tok"] = e.num_experts_per_tok;
  j["first_k_dense_replace"] = e.first_k_dense_replace;
  j["moe_layer_freq"] = e.moe_layer_freq;
  j["norm_topk_prob"] = e.norm_topk_prob;
  j["scoring_func"] = e.scoring_func == config::ScoringFunc::kSigmoid ? "sigmoid" : "softmax";
  j["topk_method"] = e.topk_method == config::TopkMethod::kNoauxTc  ? "noaux_tc"
                     : e.topk_method == config::TopkMethod::kGreedy ? "greedy"
                                                                    : "group_limited_greedy";
  j["aux_loss_alpha"] = e.aux_loss_alpha;
  j["seq_aux"] = true;
  j["num_nextn_predict_layers"] = c.mtp.num_nextn_predict_layers;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.max_position_embeddings;
  j["initializer_range"] = m.initializer_range;
  j["rms_norm_eps"] = m.rms_norm_eps;
  j["use_cache"] = true;
  j["bos_token_id"] = m.bos_token_id;
  j["eos_token_id"] = m.eos_token_id;
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["rope_theta"] = m.rope_theta;
  if (m.rope_scaling) {
    const auto& s = *m.rope_scaling;
    j["rope_scaling"] = {{"type", "yarn"},
                         {"rope_type", "yarn"},
                         {"factor", s.factor},
                         {"original_max_position_embeddings", s.original_max_position_embeddings},
                         {"beta_fast", s.beta_fast},
                         {"beta_slow", s.beta_slow},
                         {"mscale", s.mscale},
                         {"mscale_all_dim", s.mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rope_interleave"] = true;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["torch_dtype"] = dtype == torch::kFloat32 ? "float32" : "bfloat16";
  return j.dump(2) + "\n";
}

// ---- tensors ---------------------------------------------------------------------------------

torch::Tensor dequantize_fp8_blocks(const torch::Tensor& weight, const torch::Tensor& scale_inv,
                                    torch::ScalarType dtype, int64_t block) {
  MOETRON_CHECK(block > 0, "fp8 block size must be positive, got ", block);
  MOETRON_CHECK(weight.dim() == 2, "fp8 weight: expected 2-D [out, in], got shape ",
                weight.sizes());
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t rows = (out + block - 1) / block, cols = (in + block - 1) / block;
  MOETRON_CHECK(scale_inv.dim() == 2 && scale_inv.size(0) == rows && scale_inv.size(1) == cols,
                "fp8 weight_scale_inv: expected shape [", rows, ", ", cols, "] for weight [", out,
                ", ", in, "] with ", block, "x", block, " blocks, got ", scale_inv.sizes());
  MOETRON_CHECK(at::isFloatingType(scale_inv.scalar_type()),
                "fp8 weight_scale_inv: expected a floating dtype, got ", scale_inv.scalar_type());
  // Expanding the scales and cropping them equals zero-padding the weight to whole blocks,
  // scaling, and cropping the result (SPEC 1.10).
  const auto scale = scale_inv.to(torch::kFloat32)
                         .repeat_interleave(block, 0)
                         .repeat_interleave(block, 1)
                         .narrow(0, 0, out)
                         .narrow(1, 0, in);
  return (weight.to(torch::kFloat32) * scale).to(dtype);
}

namespace {

bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

std::map<std::string, torch::Tensor> load_sharded(const std::string& dir) {
  const std::string index_path = (fs::path(dir) / kIndexFile).string();
  const json index = detail::parse_json_strict(read_text_file(index_path), index_path, 8);
  if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object()) {
    throw Error(str_cat(index_path, ": expected an object with a 'weight_map' object"));
  }
  std::map<std::string, std::vector<std::string>> by_file;
  std::map<std::string, std::string> file_of;
  for (const auto& [name, file] : index.at("weight_map").items()) {
    if (!file.is_string() || !plain_file_name(file.get<std::string>())) {
      throw Error(str_cat(index_path, ": weight_map['", name,
                          "']: expected a file name inside the directory, got ", file.dump()));
    }
    by_file[file.get<std::string>()].push_back(name);
    file_of[name] = file.get<std::string>();
  }
  std::map<std::string, torch::Tensor> out;
  for (const auto& [file, names] : by_file) {
    const std::string path = (fs::path(dir) / file).string();
    if (!fs::is_regular_file(path)) {
      throw Error(str_cat(index_path, ": shard '", file, "' (holding '", names.front(), "' and ",
                          names.size() - 1, " more) does not exist at ", path));
    }
    const auto shard = SafetensorsFile::open(path);
    for (const auto& name : names) {
      if (!shard.contains(name)) {
        throw Error(str_cat(index_path, ": weight_map puts '", name, "' in ", file,
                            " but that shard has no such tensor"));
      }
    }
    for (const auto& t : shard.header().tensors) {
      const auto it = file_of.find(t.name);
      if (it == file_of.end() || it->second != file) {
        throw Error(str_cat(
            path, ": holds tensor '", t.name, "' which weight_map ",
            it == file_of.end() ? std::string("does not list") : str_cat("puts in ", it->second)));
      }
      out.emplace(t.name, read_tensor(shard, t.name));
    }
  }
  return out;
}

}  // namespace

std::map<std::string, torch::Tensor> load_hf_tensors(const std::string& dir,
                                                     const HfLoadOptions& options) {
  const fs::path single = fs::path(dir) / kSingleFile;
  const fs::path index = fs::path(dir) / kIndexFile;
  std::map<std::string, torch::Tensor> tensors;
  if (fs::exists(single)) {
    if (fs::exists(index))
      log::warn(dir, ": both ", kSingleFile, " and ", kIndexFile, " exist; reading ", kSingleFile,
                " (as HF does)");
    tensors = load_safetensors(single.string());
  } else if (fs::exists(index)) {
    tensors = load_sharded(dir);
  } else {
    throw Error(str_cat(dir, ": no ", kSingleFile, " or ", kIndexFile, " found"));
  }

  // FP8 release: pair each `.weight_scale_inv` with its `.weight` and replace both by the
  // dequantised weight.
  const size_t suffix = std::strlen(kScaleSuffix);
  std::vector<std::string> scales;
  for (const auto& [name, t] : tensors) {
    if (name.size() > suffix && name.compare(name.size() - suffix, suffix, kScaleSuffix) == 0) {
      scales.push_back(name);
    }
  }
  for (const auto& scale_name : scales) {
    const std::string weight_name = scale_name.substr(0, scale_name.size() - suffix) + ".weight";
    const auto it = tensors.find(weight_name);
    if (it == tensors.end()) {
      throw Error(str_cat(dir, ": '", scale_name, "' has no weight '", weight_name, "'"));
    }
    if (it->second.scalar_type() != torch::kFloat8_e4m3fn) {
      throw Error(str_cat(dir, ": '", weight_name, "' has a weight_scale_inv but dtype ",
                          it->second.scalar_type(), "; expected F8_E4M3"));
    }
    try {
      it->second =
          dequantize_fp8_blocks(it->second, tensors.at(scale_name), options.fp8_dequant_dtype);
    } catch (const Error& e) {
      throw Error(str_cat(dir, ": '", weight_name, "': ", e.what()));
    }
    tensors.erase(scale_name);
  }
  for (const auto& [name, t] : tensors) {
    if (t.scalar_type() == torch::kFloat8_e4m3fn) {
      throw Error(str_cat(dir, ": F8_E4M3 tensor '", name,
                          "' has no sibling weight_scale_inv to dequantise it with"));
    }
  }
  return tensors;
}

HfCheckpoint load_hf_checkpoint(const std::string& dir, const HfLoadOptions& options) {
  HfCheckpoint ckpt;
  ckpt.config = read_hf_config((fs::path(dir) / kConfigFile).string());
  ckpt.tensors = load_hf_tensors(dir, options);
  return ckpt;
}

// ---- writing ---------------------------------------------------------------------------------

namespace {

// Replaces a non-empty `target` with `staged` in one step where the kernel can (renameat2
// RENAME_EXCHANGE), else in two renames; the old contents end up under `staged` and are removed.
void swap_into_place(const fs::path& staged, const fs::path& target) {
#ifdef RENAME_EXCHANGE
  if (::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree(staged.string());
    return;
  }
#endif
  const fs::path old = fs::path(str_cat(target.string(), ".old.", ::getpid()));
  fs::rename(target, old);
  fs::rename(staged, target);
  remove_tree(old.string());
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

}  // namespace

void save_hf_checkpoint(const std::string& dir, const HfModelConfig& config,
                        const NamedTensors& tensors, torch::ScalarType dtype,
                        uint64_t max_shard_bytes, bool overwrite) {
  MOETRON_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16, dir,
                ": checkpoint dtype must be float32 or bfloat16, got ", dtype);
  MOETRON_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive");
  fs::path target = fs::path(dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "out/" -> "out"
  if (fs::exists(target)) {
    if (!fs::is_directory(target)) throw Error(str_cat(dir, ": exists and is not a directory"));
    if (!fs::is_empty(target) && !overwrite) {
      throw Error(str_cat(dir,
                          ": exists and is not empty; refusing to replace it (pass "
                          "overwrite to replace it)"));
    }
  }

  // Cast, then plan shards in the caller's order (HF packs greedily the same way).
  std::set<std::string> seen;
  std::vector<NamedTensors> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& [name, tensor] : tensors) {
    MOETRON_CHECK(seen.insert(name).second, dir, ": tensor '", name, "' given twice");
    MOETRON_CHECK(tensor.defined(), dir, ": tensor '", name, "' is undefined");
    torch::Tensor t = tensor.detach();
    if (t.is_floating_point()) {
      const bool keep_fp32 =
          name.size() >= 23 && name.compare(name.size() - 23, 23, "e_score_correction_bias") == 0;
      t = t.to(keep_fp32 ? torch::kFloat32 : dtype);
    }
    const uint64_t nbytes = t.nbytes();
    if (!shards.back().empty() && shard_bytes + nbytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(name, t);
    shard_bytes += nbytes;
    total_bytes += nbytes;
  }

  const fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw Error(str_cat(dir, ": cannot create parent directory: ", ec.message()));
  const fs::path staged = fs::path(str_cat(target.string(), ".tmp.", ::getpid()));
  auto remove_staged = [&staged]() noexcept {
    try {
      remove_tree(staged.string());
    } catch (const Error& e) {
      log::warn("could not remove staging directory: ", e.what());
    }
  };
  remove_tree(staged.string());  // a stale staging dir of a crashed process with the same pid
  if (!fs::create_directory(staged, ec) || ec) {
    throw Error(str_cat(dir, ": cannot create staging directory ", staged.string(), ": ",
                        ec ? ec.message() : "already exists"));
  }
  try {
    const std::map<std::string, std::string> meta = {{"format", "pt"}};  // HF checks this key
    if (shards.size() == 1) {
      save_safetensors((staged / kSingleFile).string(), shards[0], meta);
    } else {
      nlohmann::ordered_json index;
      index["metadata"] = {{"total_size", total_bytes}};
      std::map<std::string, std::string> weight_map;
      for (size_t i = 0; i < shards.size(); ++i) {
        const std::string file = shard_name(i, shards.size());
        save_safetensors((staged / file).string(), shards[i], meta);
        for (const auto& [name, t] : shards[i]) weight_map[name] = file;
      }
      index["weight_map"] = weight_map;
      write_file_atomic((staged / kIndexFile).string(), index.dump(2) + "\n");
    }
    write_file_atomic((staged / kConfigFile).string(), hf_config_json(config, dtype));
    fsync_directory(staged.string());
    if (fs::exists(target) && !fs::is_empty(target)) {
      swap_into_place(staged, target);
    } else {
      fs::rename(staged, target);  // POSIX rename replaces an empty directory
    }
    fsync_directory(parent.string());
  } catch (const fs::filesystem_error& e) {
    remove_staged();
    throw Error(str_cat(dir, ": writing the checkpoint failed: ", e.what()));
  } catch (...) {
    remove_staged();
    throw;
  }
  log::info("saved HF checkpoint ", dir, " (", tensors.size(), " tensors, ", total_bytes,
            " bytes, ", shards.size(), shards.size() == 1 ? " file)" : " shards)");
}

}  // namespace moetron::ckpt
