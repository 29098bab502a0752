// Typed configuration: one struct per YAML section. Model fields keep the HF DeepseekV3Config
// names so a config.json maps one to one (SPEC 4.1). Loading, overrides, validation and
// dumping live in loader.h; each field's doc, range and choices are in src/config/schema.h
// (add a new member there too, or it is neither loaded, dumped nor documented).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moetron::config {

// ---- model ------------------------------------------------------------------------------

// YaRN context extension (SPEC 1.5). Absent (null) means plain RoPE.
struct RopeScaling {
  std::string type = "yarn";  // only "yarn" is supported
  double factor = 40.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
};

struct ModelConfig {
  int64_t vocab_size = 129280;
  int64_t hidden_size = 7168;
  int64_t intermediate_size = 18432;  // dense-layer SwiGLU width
  int64_t num_hidden_layers = 61;
  int64_t num_attention_heads = 128;
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;  // null = no YaRN
  bool tie_word_embeddings = false;
  double initializer_range = 0.006;  // V3 paper's std (HF configs say 0.02)
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
};

// Multi-head Latent Attention (SPEC 1.1-1.2).
struct MlaConfig {
  std::optional<int64_t> q_lora_rank = 1536;  // null = no query compression (q_proj)
  int64_t kv_lora_rank = 512;
  int64_t qk_nope_head_dim = 128;
  int64_t qk_rope_head_dim = 64;
  int64_t v_head_dim = 128;
};

enum class ScoringFunc { kSigmoid, kSoftmax };
enum class TopkMethod { kNoauxTc, kGreedy, kGroupLimitedGreedy };

// DeepSeekMoE (SPEC 2).
struct MoeConfig {
  std::optional<int64_t> n_routed_experts = 256;  // null = every layer dense
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 8;
  int64_t moe_intermediate_size = 2048;
  int64_t n_group = 8;
  int64_t topk_group = 4;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 2.5;
  int64_t first_k_dense_replace = 3;
  int64_t moe_layer_freq = 1;
  ScoringFunc scoring_func = ScoringFunc::kSigmoid;
  TopkMethod topk_method = TopkMethod::kNoauxTc;
  double aux_loss_alpha = 1e-4;     // complementary sequence-wise balance loss (SPEC 2.4)
  double bias_update_speed = 1e-3;  // aux-loss-free gamma (SPEC 2.3); 0 disables
};

enum class MtpHiddenSource { kPostNorm, kPreNorm };  // SPEC 3.1: vLLM post-norm by default

// Multi-token prediction (SPEC 3).
struct MtpConfig {
  int64_t num_nextn_predict_layers = 0;
  double loss_weight = 0.3;  // lambda
  MtpHiddenSource hidden_source = MtpHiddenSource::kPostNorm;
};

// ---- training -----------------------------------------------------------------------------

struct DataConfig {
  std::string tokenizer = "byte";   // "byte" or a path to an HF tokenizer.json
  std::string task = "arithmetic";  // built-in task when no paths are given
  std::string train_path;           // JSONL; empty = built-in task
  std::string eval_path;
  int64_t seq_len = 256;
  bool pack = true;
  bool skip_bad_lines = false;
  int64_t shuffle_seed = 1234;
  // Built-in task generator (data.task): difficulty and sizes.
  int64_t task_max_digits = 3;   // arithmetic: operands have 1..n digits
  std::string task_ops = "+-*";  // arithmetic: the operators drawn from
  int64_t task_terms = 2;        // arithmetic: 2..n operands (> 2: + - chains)
  int64_t task_max_numbers = 4;  // countdown: 3..n given numbers
  int64_t task_size = 2000;      // pretraining documents, SFT samples and RL prompts each
  int64_t task_eval_size = 200;  // held-out problems
};

enum class Stage { kPretrain, kSft, kGrpo };

struct TrainConfig {
  Stage stage = Stage::kPretrain;
  int64_t steps = 100;
  int64_t micro_batch_size = 8;
  int64_t grad_accum_steps = 1;
  int64_t seed = 42;
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "fp32";   // fp32 | bf16 (bf16 = autocast with fp32 master weights)
  int64_t eval_every = 50;
  int64_t eval_batches = 4;
  int64_t eval_samples = 0;   // > 0: also held-out pass@1 over this many samples per prompt
  int64_t max_bad_steps = 5;  // consecutive NaN/Inf steps before stopping
  std::string init_from;      // checkpoint to start the weights from (SFT from pretrain, ...)
};

struct OptimConfig {
  double lr = 3e-4;
  double min_lr = 3e-5;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  std::string schedule = "cosine";  // cosine | wsd | constant
  int64_t warmup_steps = 10;
  double decay_fraction = 0.1;  // wsd: final fraction of steps spent decaying
  double grad_clip = 1.0;       // 0 disables
  bool decay_norms = false;
  bool decay_biases = false;
  bool decay_embeddings = true;
};

struct SlmConfig {
  double ratio = 1.0;     // fraction of tokens kept (1.0 = plain SFT)
  std::string reference;  // checkpoint of the frozen reference model
};

struct SftConfig {
  bool loss_on_prompt = false;
  std::string think_open = "<think>";
  std::string think_close = "</think>";
  SlmConfig slm;
};

struct RewardTerm {
  std::string name;  // accuracy | format | countdown | language | overlong
  double weight = 1.0;
};

struct RlConfig {
  int64_t prompts_per_step = 8;
  int64_t num_generations = 8;  // G
  int64_t mini_batch_size = 64;
  int64_t micro_batch_size = 16;
  int64_t ppo_epochs = 1;  // mu
  double epsilon_low = 0.2;
  double epsilon_high = 0.2;
  double beta = 0.0;                     // KL weight (k3); 0 loads no reference model
  std::string loss_agg = "token_mean";   // seq_mean_token_mean | token_mean | seq_sum_norm
  std::string advantage_std = "sample";  // sample | population | none (Dr.GRPO)
  double advantage_eps = 1e-4;
  bool dynamic_sampling = false;
  int64_t max_new_tokens = 128;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t overlong_buffer = 0;      // DAPO L_cache; 0 disables shaping
  bool overlong_filter = false;     // DAPO overlong filtering: truncated completions get no loss
  int64_t max_sampling_rounds = 4;  // dynamic sampling: generation rounds per step at most
  bool r1_zero = false;
  std::vector<RewardTerm> rewards = {{"accuracy", 1.0}, {"format", 0.1}};
};

struct CkptConfig {
  int64_t save_every = 100;
  int64_t keep_last = 3;
  std::string resume = "auto";  // auto | none | path to a checkpoint
};

struct DistConfig {
  std::string backend = "auto";  // auto | gloo | nccl
  int64_t ep = 1;                // expert-parallel size; dp = world / ep
  int64_t timeout_s = 300;
};

struct LogConfig {
  std::string level = "info";
  int64_t every = 10;
  std::string run_dir = "runs";
  std::string name = "default";
};

struct KernelsConfig {
  std::string gate = "reference";  // reference | cuda
  std::string permute = "reference";
  std::string grouped_gemm = "reference";
  std::string attention = "reference";
  std::string decode_attention = "reference";
};

// `moetron run`: the stages of the R1 recipe in one command, each in runs/<log.name>/<stage>.
// The other sections configure every stage; these keys set what differs between them.
struct PipelineConfig {
  int64_t pretrain_steps = 200;  // 0 skips pretraining (SFT from train.init_from or scratch)
  int64_t sft_steps = 100;       // 0 skips SFT (R1-Zero: GRPO straight from the base model)
  double sft_lr = 3e-4;
  double sft_min_lr = 3e-5;
  int64_t sft_warmup_steps = 10;
  int64_t grpo_steps = 0;  // 0 skips GRPO
  double grpo_lr = 1e-5;
  double grpo_min_lr = 1e-5;
  int64_t grpo_warmup_steps = 0;
};

struct Config {
  ModelConfig model;
  MlaConfig mla;
  MoeConfig moe;
  MtpConfig mtp;
  DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  SftConfig sft;
  RlConfig rl;
  CkptConfig ckpt;
  DistConfig dist;
  LogConfig log;
  KernelsConfig kernels;
  PipelineConfig pipeline;
};

}  // namespace moetron::config
