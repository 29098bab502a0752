// validate(): every field's own range and choices (so a Config built in code is checked too),
// then the cross-field rules. Each message names the keys involved and their values.
#include "config/schema.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"

namespace moetron::config {
namespace detail {
namespace {

// Re-checks each field against its metadata, as the loader does while reading.
class CheckVisitor : public KeyPath {
 public:
  template <class F>
  void section(const char* name, const char*, F&& fn) {
    scoped(name, fn);
  }
  template <class T>
  void field(const char* name, const T& value, const Info& info) {
    const std::string problem = field_problem(prefix_ + name, value, info);
    if (!problem.empty()) throw Error(ErrorKind::kConfig, problem);
  }
  template <class T, class F>
  void optional_group(const char* name, const std::optional<T>& value, const char*, F&& fn) {
    if (value) scoped(name, [&] { fn(*value); });
  }
  template <class T, class F>
  void list(const char* name, const std::vector<T>& items, const Info&, F&& fn) {
    for (size_t i = 0; i < items.size(); ++i) {
      scoped(str_cat(name, "[", i, "]"), [&] { fn(items[i], *this); });
    }
  }
};

const char* name_of(TopkMethod m) {
  return EnumNames<TopkMethod>::all()[static_cast<int>(m)].second;
}

void check_model(const Config& c) {
  const ModelConfig& m = c.model;
  const MlaConfig& a = c.mla;
  MOETRON_CHECK_CONFIG(a.qk_rope_head_dim % 2 == 0, "mla.qk_rope_head_dim (", a.qk_rope_head_dim,
                       ") must be even: RoPE rotates pairs of dimensions");
  if (m.rope_scaling) {
    const RopeScaling& r = *m.rope_scaling;
    MOETRON_CHECK_CONFIG(r.beta_fast > r.beta_slow, "model.rope_scaling.beta_fast (",
                         format_double(r.beta_fast), ") must be greater than ",
                         "model.rope_scaling.beta_slow (", format_double(r.beta_slow), ")");
    MOETRON_CHECK_CONFIG(
        r.original_max_position_embeddings <= m.max_position_embeddings,
        "model.rope_scaling.original_max_position_embeddings (", r.original_max_position_embeddings,
        ") must be <= ", "model.max_position_embeddings (", m.max_position_embeddings, ")");
  }
  MOETRON_CHECK_CONFIG(m.bos_token_id < m.vocab_size, "model.bos_token_id (", m.bos_token_id,
                       ") must be < model.vocab_size (", m.vocab_size, ")");
  MOETRON_CHECK_CONFIG(m.eos_token_id < m.vocab_size, "model.eos_token_id (", m.eos_token_id,
                       ") must be < model.vocab_size (", m.vocab_size, ")");
  MOETRON_CHECK_CONFIG(c.data.seq_len <= m.max_position_embeddings, "data.seq_len (",
                       c.data.seq_len, ") must be <= model.max_position_embeddings (",
                       m.max_position_embeddings, ")");
}

void check_moe(const Config& c) {
  const MoeConfig& e = c.moe;
  MOETRON_CHECK_CONFIG(e.first_k_dense_replace <= c.model.num_hidden_layers,
                       "moe.first_k_dense_replace (", e.first_k_dense_replace,
                       ") must be <= model.num_hidden_layers (", c.model.num_hidden_layers, ")");
  if (!e.n_routed_experts) return;  // all layers dense: routing fields are unused
  const int64_t n = *e.n_routed_experts;
  MOETRON_CHECK_CONFIG(n % e.n_group == 0, "moe.n_routed_experts (", n,
                       ") must be divisible by moe.n_group (", e.n_group, ")");
  MOETRON_CHECK_CONFIG(e.topk_group <= e.n_group, "moe.topk_group (", e.topk_group,
                       ") must be <= moe.n_group (", e.n_group, ")");
  MOETRON_CHECK_CONFIG(e.num_experts_per_tok <= n, "moe.num_experts_per_tok (",
                       e.num_experts_per_tok, ") must be <= moe.n_routed_experts (", n, ")");
  if (e.topk_method != TopkMethod::kGreedy) {
    // Group-limited routing only sees topk_group groups of n / n_group experts each.
    const int64_t reachable = e.topk_group * (n / e.n_group);
    MOETRON_CHECK_CONFIG(e.num_experts_per_tok <= reachable, "moe.num_experts_per_tok (",
                         e.num_experts_per_tok, ") must be <= moe.topk_group (", e.topk_group,
                         ") * moe.n_routed_experts / moe.n_group (", n, " / ", e.n_group,
                         ") = ", reachable, " for moe.topk_method ", name_of(e.topk_method));
  }
  if (e.topk_method == TopkMethod::kNoauxTc) {
    // V3 ranks groups by the sum of their top-2 biased scores, so a group needs two experts.
    MOETRON_CHECK_CONFIG(n / e.n_group >= 2, "moe.n_routed_experts / moe.n_group (", n, " / ",
                         e.n_group, ") must be >= 2 for moe.topk_method noaux_tc");
  }
  MOETRON_CHECK_CONFIG(n % c.dist.ep == 0, "moe.n_routed_experts (", n,
                       ") must be divisible by dist.ep (", c.dist.ep, ")");
}

void check_training(const Config& c) {
  MOETRON_CHECK_CONFIG(c.optim.min_lr <= c.optim.lr, "optim.min_lr (",
                       format_double(c.optim.min_lr), ") must be <= optim.lr (",
                       format_double(c.optim.lr), ")");
  MOETRON_CHECK_CONFIG(c.optim.warmup_steps <= c.train.steps, "optim.warmup_steps (",
                       c.optim.warmup_steps, ") must be <= train.steps (", c.train.steps, ")");
  const SlmConfig& slm = c.sft.slm;
  MOETRON_CHECK_CONFIG(slm.ratio >= 1.0 || !slm.reference.empty(), "sft.slm.ratio (",
                       format_double(slm.ratio),
                       ") < 1 selects tokens against a reference model: set sft.slm.reference");
  MOETRON_CHECK_CONFIG(c.pipeline.sft_min_lr <= c.pipeline.sft_lr, "pipeline.sft_min_lr (",
                       format_double(c.pipeline.sft_min_lr), ") must be <= pipeline.sft_lr (",
                       format_double(c.pipeline.sft_lr), ")");
  MOETRON_CHECK_CONFIG(c.pipeline.sft_warmup_steps <= c.pipeline.sft_steps,
                       "pipeline.sft_warmup_steps (", c.pipeline.sft_warmup_steps,
                       ") must be <= pipeline.sft_steps (", c.pipeline.sft_steps, ")");
  MOETRON_CHECK_CONFIG(c.sft.think_open != c.sft.think_close, "sft.think_open and ",
                       "sft.think_close must differ (both '", c.sft.think_open, "')");
}

void check_rl(const Config& c) {
  const RlConfig& r = c.rl;
  const int64_t completions = r.prompts_per_step * r.num_generations;
  MOETRON_CHECK_CONFIG(completions % r.mini_batch_size == 0, "rl.mini_batch_size (",
                       r.mini_batch_size,
                       ") must divide rl.prompts_per_step * rl.num_generations (",
                       r.prompts_per_step, " * ", r.num_generations, " = ", completions, ")");
  MOETRON_CHECK_CONFIG(r.mini_batch_size % r.micro_batch_size == 0, "rl.micro_batch_size (",
                       r.micro_batch_size, ") must divide rl.mini_batch_size (", r.mini_batch_size,
                       ")");
  MOETRON_CHECK_CONFIG(r.overlong_buffer < r.max_new_tokens, "rl.overlong_buffer (",
                       r.overlong_buffer, ") must be < rl.max_new_tokens (", r.max_new_tokens, ")");
  if (c.train.stage == Stage::kGrpo) {
    MOETRON_CHECK_CONFIG(!r.rewards.empty(), "rl.rewards is empty but train.stage is grpo: ",
                         "list at least one reward term");
    MOETRON_CHECK_CONFIG(r.num_generations >= 2, "rl.num_generations (", r.num_generations,
                         ") must be >= 2 when train.stage is grpo: advantages compare a group");
  }
  for (size_t i = 0; i < r.rewards.size(); ++i) {
    // Names are checked against the verifier registry by the GRPO trainer (programs may
    // register their own); here only that there is one.
    MOETRON_CHECK_CONFIG(!r.rewards[i].name.empty(), "rl.rewards[", i,
                         "].name is empty: name a verifier (accuracy, format, countdown, "
                         "language, overlong)");
    for (size_t j = 0; j < i; ++j) {
      MOETRON_CHECK_CONFIG(r.rewards[i].name != r.rewards[j].name, "rl.rewards[", i,
                           "].name repeats rl.rewards[", j, "].name ('", r.rewards[i].name, "')");
    }
  }
}

void check_run(const Config& c) {
  MOETRON_CHECK_CONFIG(!c.log.name.empty(), "log.name must not be empty");
  MOETRON_CHECK_CONFIG(!c.log.run_dir.empty(), "log.run_dir must not be empty");
  MOETRON_CHECK_CONFIG(!c.ckpt.resume.empty(), "ckpt.resume must be auto, none or a path");
  MOETRON_CHECK_CONFIG(!c.data.tokenizer.empty(), "data.tokenizer must be byte or a path");
  const auto& ops = c.data.task_ops;
  bool distinct = !ops.empty() && ops.find_first_not_of("+-*") == std::string::npos;
  for (size_t i = 0; distinct && i < ops.size(); ++i) distinct = ops.find(ops[i]) == i;
  MOETRON_CHECK_CONFIG(distinct,
                       "data.task_ops: expected distinct characters of \"+-*\" (e.g. "
                       "\"+-\"), got \"",
                       ops, "\"");
  MOETRON_CHECK_CONFIG(c.data.task_terms == 2 || ops.find('*') == std::string::npos,
                       "data.task_terms: ", c.data.task_terms,
                       " operands make left-to-right chains, which need data.task_ops without "
                       "'*', got \"",
                       ops, "\"");
}

}  // namespace
}  // namespace detail

void validate(const Config& config) {
  detail::CheckVisitor checks;
  detail::visit_config(config, checks);
  detail::check_model(config);
  detail::check_moe(config);
  detail::check_training(config);
  detail::check_rl(config);
  detail::check_run(config);
}

}  // namespace moetron::config
