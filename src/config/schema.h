// The config schema: every section and key with its doc line, range and choices, written once.
// The loader, the range checks, the dumper and docs/config.md all walk these visit functions;
// a visitor V provides section(), field(), optional_group() and list(); list() gets a function
// (item, visitor) so a visitor may walk items with another visitor (see loader.cpp).
#pragma once

#include "config/field.h"

namespace moetron::config::detail {

// Config may be const (dump, docs) or mutable (loading); `auto&` keeps the constness.

template <class R, class V>
void visit_rope_scaling(R& r, V& v) {
  v.field("type", r.type, Info("RoPE scaling kind; only YaRN is implemented.").one_of({"yarn"}));
  v.field("factor", r.factor, Info("YaRN context extension factor s.").min(1));
  v.field("original_max_position_embeddings", r.original_max_position_embeddings,
          Info("Context length the model was pre-trained with (YaRN L0).").min(1));
  v.field("beta_fast", r.beta_fast, Info("YaRN high-frequency boundary (rotations).").gt(0));
  v.field("beta_slow", r.beta_slow, Info("YaRN low-frequency boundary (rotations).").gt(0));
  v.field("mscale", r.mscale, Info("YaRN attention-scale coefficient.").min(0));
  v.field("mscale_all_dim", r.mscale_all_dim,
          Info("YaRN coefficient of the softmax-scale correction.").min(0));
}

template <class M, class V>
void visit_model(M& m, V& v) {
  v.field("vocab_size", m.vocab_size, Info("Vocabulary size (embedding and output rows).").min(1));
  v.field("hidden_size", m.hidden_size, Info("Model width d.").min(1));
  v.field("intermediate_size", m.intermediate_size,
          Info("SwiGLU width of the dense FFN layers.").min(1));
  v.field("num_hidden_layers", m.num_hidden_layers, Info("Transformer layers L.").min(1));
  v.field("num_attention_heads", m.num_attention_heads, Info("Attention heads n_h.").min(1));
  v.field("max_position_embeddings", m.max_position_embeddings,
          Info("Longest sequence the RoPE tables cover.").min(1));
  v.field("rms_norm_eps", m.rms_norm_eps, Info("RMSNorm epsilon.").gt(0));
  v.field("rope_theta", m.rope_theta, Info("RoPE base frequency.").gt(0));
  v.optional_group("rope_scaling", m.rope_scaling, "YaRN context extension; null = plain RoPE.",
                   [&](auto& r) { visit_rope_scaling(r, v); });
  v.field("tie_word_embeddings", m.tie_word_embeddings,
          Info("Share the input embedding with the output head."));
  v.field("initializer_range", m.initializer_range,
          Info("Std of the normal init of all weights (V3 paper: 0.006).").min(0));
  v.field("bos_token_id", m.bos_token_id, Info("Beginning-of-sequence token id.").min(0));
  v.field("eos_token_id", m.eos_token_id, Info("End-of-sequence token id.").min(0));
}

template <class M, class V>
void visit_mla(M& m, V& v) {
  v.field("q_lora_rank", m.q_lora_rank,
          Info("Query latent rank d'_c; null = no query compression.").min(1));
  v.field("kv_lora_rank", m.kv_lora_rank, Info("KV latent rank d_c (the cached latent).").min(1));
  v.field("qk_nope_head_dim", m.qk_nope_head_dim,
          Info("Per-head query/key width without RoPE.").min(1));
  v.field("qk_rope_head_dim", m.qk_rope_head_dim,
          Info("Per-head decoupled RoPE width (even).").min(2));
  v.field("v_head_dim", m.v_head_dim, Info("Per-head value width.").min(1));
}

template <class M, class V>
void visit_moe(M& m, V& v) {
  v.field("n_routed_experts", m.n_routed_experts,
          Info("Routed experts per MoE layer; null = every layer dense.").min(1));
  v.field("n_shared_experts", m.n_shared_experts, Info("Always-on shared experts.").min(0));
  v.field("num_experts_per_tok", m.num_experts_per_tok,
          Info("Routed experts chosen per token (K).").min(1));
  v.field("moe_intermediate_size", m.moe_intermediate_size,
          Info("SwiGLU width of each expert.").min(1));
  v.field("n_group", m.n_group, Info("Expert groups for group-limited routing.").min(1));
  v.field("topk_group", m.topk_group, Info("Groups a token may route into.").min(1));
  v.field("norm_topk_prob", m.norm_topk_prob, Info("Renormalise the K gate weights to sum to 1."));
  v.field("routed_scaling_factor", m.routed_scaling_factor,
          Info("Multiplier on the routed experts' output.").gt(0));
  v.field("first_k_dense_replace", m.first_k_dense_replace,
          Info("The first k layers use a dense FFN instead of MoE.").min(0));
  v.field("moe_layer_freq", m.moe_layer_freq,
          Info("Every n-th layer after the dense ones is MoE.").min(1));
  v.field("scoring_func", m.scoring_func, Info("Gate affinity function."));
  v.field("topk_method", m.topk_method,
          Info("Routing: noaux_tc (V3, bias-corrected groups), greedy, group_limited_greedy."));
  v.field("aux_loss_alpha", m.aux_loss_alpha,
          Info("Weight of the sequence-wise balance loss; 0 disables.").min(0));
  v.field("bias_update_speed", m.bias_update_speed,
          Info("Aux-loss-free bias update speed gamma; 0 disables.").min(0));
}

template <class M, class V>
void visit_mtp(M& m, V& v) {
  v.field("num_nextn_predict_layers", m.num_nextn_predict_layers,
          Info("Multi-token prediction depth D; 0 disables MTP.").min(0));
  v.field("loss_weight", m.loss_weight, Info("MTP loss weight lambda.").min(0));
  v.field("hidden_source", m.hidden_source,
          Info("Which main-model hidden state feeds MTP module 1."));
}

template <class D, class V>
void visit_data(D& d, V& v) {
  v.field("tokenizer", d.tokenizer, Info("`byte` or the path of an HF tokenizer.json."));
  v.field("task", d.task, Info("Built-in synthetic task used when no paths are given."));
  v.field("train_path", d.train_path, Info("Training JSONL file; empty = built-in task."));
  v.field("eval_path", d.eval_path, Info("Evaluation JSONL file; empty = built-in task."));
  v.field("seq_len", d.seq_len, Info("Tokens per training sequence.").min(1));
  v.field("pack", d.pack, Info("Pack several documents into one sequence."));
  v.field("skip_bad_lines", d.skip_bad_lines,
          Info("Skip malformed JSONL lines instead of stopping."));
  v.field("shuffle_seed", d.shuffle_seed, Info("Seed of the data order.").min(0));
  v.field("task_max_digits", d.task_max_digits,
          Info("Built-in arithmetic: operands have 1..n digits.").min(1).max(9));
  v.field("task_ops", d.task_ops,
          Info("Built-in arithmetic: the operators problems draw from (distinct characters of "
               "`+-*`)."));
  v.field("task_terms", d.task_terms,
          Info("Built-in arithmetic: problems have 2..n operands; above 2, left-to-right `+-` "
               "chains with one running-total line per step.")
              .min(2)
              .max(8));
  v.field("task_max_numbers", d.task_max_numbers,
          Info("Built-in countdown: 3..n given numbers.").min(3).max(6));
  v.field("task_size", d.task_size,
          Info("Built-in task: pretraining documents, SFT samples and RL prompts each.").min(1));
  v.field("task_eval_size", d.task_eval_size, Info("Built-in task: held-out problems.").min(1));
}

template <class T, class V>
void visit_train(T& t, V& v) {
  v.field("stage", t.stage, Info("What `moetron train` runs."));
  v.field("steps", t.steps, Info("Optimizer steps.").min(1));
  v.field("micro_batch_size", t.micro_batch_size, Info("Sequences per forward pass.").min(1));
  v.field("grad_accum_steps", t.grad_accum_steps,
          Info("Micro-batches accumulated per optimizer step.").min(1));
  v.field("seed", t.seed, Info("Seed of the weight init and sampling.").min(0));
  v.field("device", t.device,
          Info("Where to run; auto = CUDA when available.").one_of({"auto", "cpu", "cuda"}));
  v.field(
      "dtype", t.dtype,
      Info("Compute dtype; bf16 = autocast with fp32 master weights.").one_of({"fp32", "bf16"}));
  v.field("eval_every", t.eval_every, Info("Evaluate every n steps; 0 disables.").min(0));
  v.field("eval_batches", t.eval_batches, Info("Batches per evaluation.").min(1));
  v.field("eval_samples", t.eval_samples,
          Info("Held-out pass@1 from k sampled completions per prompt at rl.temperature, "
               "rl.top_p and rl.top_k (DeepSeek-R1's evaluation), next to greedy accuracy; "
               "0 = greedy only.")
              .min(0));
  v.field("max_bad_steps", t.max_bad_steps,
          Info("Consecutive NaN/Inf steps skipped before the run stops.").min(1));
  v.field("init_from", t.init_from, Info("Checkpoint to take the initial weights from."));
}

template <class O, class V>
void visit_optim(O& o, V& v) {
  v.field("lr", o.lr, Info("Peak learning rate.").gt(0));
  v.field("min_lr", o.min_lr, Info("Final learning rate of the decay.").min(0));
  v.field("weight_decay", o.weight_decay, Info("AdamW decoupled weight decay.").min(0));
  v.field("beta1", o.beta1, Info("AdamW beta1.").min(0).lt(1));
  v.field("beta2", o.beta2, Info("AdamW beta2.").min(0).lt(1));
  v.field("eps", o.eps, Info("AdamW epsilon.").gt(0));
  v.field("schedule", o.schedule,
          Info("LR schedule after warmup (wsd = warmup-stable-decay).")
              .one_of({"cosine", "wsd", "constant"}));
  v.field("warmup_steps", o.warmup_steps, Info("Linear warmup steps from 0 to lr.").min(0));
  v.field("decay_fraction", o.decay_fraction,
          Info("wsd: final fraction of the steps spent decaying.").min(0).max(1));
  v.field("grad_clip", o.grad_clip, Info("Global gradient-norm clip; 0 disables.").min(0));
  v.field("decay_norms", o.decay_norms, Info("Apply weight decay to norm weights."));
  v.field("decay_biases", o.decay_biases, Info("Apply weight decay to biases."));
  v.field("decay_embeddings", o.decay_embeddings,
          Info("Apply weight decay to the embedding and head."));
}

template <class S, class V>
void visit_sft(S& s, V& v) {
  v.field("loss_on_prompt", s.loss_on_prompt, Info("Also train on prompt tokens."));
  v.field("think_open", s.think_open, Info("Tag that opens the reasoning span."));
  v.field("think_close", s.think_close, Info("Tag that closes the reasoning span."));
  v.section("slm", "Rho-1 selective language modelling.", [&] {
    v.field("ratio", s.slm.ratio,
            Info("Fraction of tokens kept (highest excess loss); 1 = plain SFT.").gt(0).max(1));
    v.field("reference", s.slm.reference,
            Info("Checkpoint of the frozen reference model (needed when ratio < 1)."));
  });
}

template <class R, class V>
void visit_reward(R& r, V& v) {
  // Not a closed set: programs may register their own verifiers (rewards/reward.h); the GRPO
  // trainer rejects unknown names, listing the registered ones.
  v.field("name", r.name,
          Info("Verifier name: accuracy | format | countdown | language | overlong, or one a "
               "program registered."));
  v.field("weight", r.weight, Info("Weight of this term in the summed reward."));
}

template <class R, class V>
void visit_rl(R& r, V& v) {
  v.field("prompts_per_step", r.prompts_per_step, Info("Prompts sampled per GRPO step.").min(1));
  v.field("num_generations", r.num_generations,
          Info("Completions per prompt (group size G).").min(1));
  v.field("mini_batch_size", r.mini_batch_size, Info("Completions per optimizer update.").min(1));
  v.field("micro_batch_size", r.micro_batch_size,
          Info("Completions per forward/backward pass.").min(1));
  v.field("ppo_epochs", r.ppo_epochs, Info("Passes over each batch of rollouts (mu).").min(1));
  v.field("epsilon_low", r.epsilon_low, Info("Lower clip range of the ratio.").min(0));
  v.field("epsilon_high", r.epsilon_high, Info("Upper clip range (DAPO clip-higher).").min(0));
  v.field("beta", r.beta, Info("KL (k3) weight; 0 loads no reference model.").min(0));
  v.field("loss_agg", r.loss_agg,
          Info("Loss aggregation over tokens and sequences.")
              .one_of({"seq_mean_token_mean", "token_mean", "seq_sum_norm"}));
  v.field("advantage_std", r.advantage_std,
          Info("Group std used to scale advantages; none = Dr. GRPO.")
              .one_of({"sample", "population", "none"}));
  v.field("advantage_eps", r.advantage_eps, Info("Added to the group std.").gt(0));
  v.field("dynamic_sampling", r.dynamic_sampling,
          Info("DAPO: drop groups whose rewards are all equal."));
  v.field("max_new_tokens", r.max_new_tokens, Info("Completion length limit.").min(1));
  v.field("temperature", r.temperature, Info("Sampling temperature.").gt(0));
  v.field("top_p", r.top_p, Info("Nucleus sampling mass; 1 disables.").gt(0).max(1));
  v.field("top_k", r.top_k, Info("Top-k sampling; 0 disables.").min(0));
  v.field("overlong_buffer", r.overlong_buffer,
          Info("DAPO soft overlong punishment length; 0 disables.").min(0));
  v.field("overlong_filter", r.overlong_filter,
          Info("DAPO overlong filtering: truncated completions are masked out of the loss."));
  v.field("max_sampling_rounds", r.max_sampling_rounds,
          Info("Dynamic sampling: generation rounds per step before training on what was kept.")
              .min(1));
  v.field("r1_zero", r.r1_zero, Info("Use the R1-Zero prompt template (no SFT)."));
  v.list("rewards", r.rewards, Info("Reward terms, summed with their weights."),
         [](auto& term, auto& visitor) { visit_reward(term, visitor); });
}

template <class C, class V>
void visit_ckpt(C& c, V& v) {
  v.field("save_every", c.save_every, Info("Save every n steps; 0 = only at the end.").min(0));
  v.field("keep_last", c.keep_last, Info("Checkpoints kept; 0 keeps all.").min(0));
  v.field("resume", c.resume,
          Info("`auto` (latest in the run dir), `none`, or the path of a checkpoint."));
}

template <class D, class V>
void visit_dist(D& d, V& v) {
  v.field("backend", d.backend,
          Info("Process-group backend; auto = NCCL on GPU, Gloo on CPU.")
              .one_of({"auto", "gloo", "nccl"}));
  v.field("ep", d.ep, Info("Expert-parallel size; data-parallel size = world / ep.").min(1));
  v.field("timeout_s", d.timeout_s, Info("Collective timeout in seconds.").min(1));
}

template <class L, class V>
void visit_log(L& l, V& v) {
  v.field("level", l.level,
          Info("Console log level.").one_of({"trace", "debug", "info", "warn", "error", "off"}));
  v.field("every", l.every, Info("Print the step line every n steps.").min(1));
  v.field("run_dir", l.run_dir, Info("Directory holding one folder per run."));
  v.field("name", l.name, Info("Run name (folder under run_dir)."));
}

template <class K, class V>
void visit_kernels(K& k, V& v) {
  const std::vector<std::string> impl = {"reference", "cuda"};
  v.field("gate", k.gate, Info("Router top-k implementation.").one_of(impl));
  v.field("permute", k.permute, Info("Token permute/unpermute implementation.").one_of(impl));
  v.field("grouped_gemm", k.grouped_gemm, Info("Expert grouped GEMM implementation.").one_of(impl));
  v.field("attention", k.attention, Info("MLA training attention implementation.").one_of(impl));
  v.field("decode_attention", k.decode_attention,
          Info("Latent-cache decode attention implementation.").one_of(impl));
}

template <class P, class V>
void visit_pipeline(P& p, V& v) {
  v.field("pretrain_steps", p.pretrain_steps,
          Info("Pretraining steps of `moetron run` (0 skips the stage).").min(0));
  v.field("sft_steps", p.sft_steps,
          Info("Cold-start SFT steps of `moetron run` (0 skips it).").min(0));
  v.field("sft_lr", p.sft_lr, Info("Peak learning rate of the SFT stage.").gt(0));
  v.field("sft_min_lr", p.sft_min_lr, Info("Final learning rate of the SFT stage.").min(0));
  v.field("sft_warmup_steps", p.sft_warmup_steps, Info("Warmup steps of the SFT stage.").min(0));
  v.field("grpo_steps", p.grpo_steps,
          Info("GRPO steps of `moetron run` after SFT (0 skips it; with sft_steps 0 it is "
               "R1-Zero from the base model).")
              .min(0));
  v.field("grpo_lr", p.grpo_lr, Info("Peak learning rate of the GRPO stage.").gt(0));
  v.field("grpo_min_lr", p.grpo_min_lr, Info("Final learning rate of the GRPO stage.").min(0));
  v.field("grpo_warmup_steps", p.grpo_warmup_steps,
          Info("Warmup (optimizer) steps of the GRPO stage.").min(0));
}

template <class C, class V>
void visit_config(C& c, V& v) {
  v.section("model", "Transformer shape (HF DeepseekV3Config names).",
            [&] { visit_model(c.model, v); });
  v.section("mla", "Multi-head latent attention.", [&] { visit_mla(c.mla, v); });
  v.section("moe", "DeepSeekMoE layers and routing.", [&] { visit_moe(c.moe, v); });
  v.section("mtp", "Multi-token prediction.", [&] { visit_mtp(c.mtp, v); });
  v.section("data", "Tokenizer and datasets.", [&] { visit_data(c.data, v); });
  v.section("train", "The training loop.", [&] { visit_train(c.train, v); });
  v.section("optim", "AdamW and the learning-rate schedule.", [&] { visit_optim(c.optim, v); });
  v.section("sft", "Supervised fine-tuning.", [&] { visit_sft(c.sft, v); });
  v.section("rl", "GRPO rollouts, loss and rewards.", [&] { visit_rl(c.rl, v); });
  v.section("ckpt", "Checkpoints and resuming.", [&] { visit_ckpt(c.ckpt, v); });
  v.section("dist", "Distributed training.", [&] { visit_dist(c.dist, v); });
  v.section("log", "Logging and the run directory.", [&] { visit_log(c.log, v); });
  v.section("kernels", "Which implementation each hot op uses.",
            [&] { visit_kernels(c.kernels, v); });
  v.section("pipeline", "Per-stage settings of `moetron run` (pretrain -> SFT).",
            [&] { visit_pipeline(c.pipeline, v); });
}

}  // namespace moetron::config::detail
