// `moetron convert --from DIR --to DIR [--dtype bf16|fp32]`: reads an HF DeepSeek checkpoint
// (single file, sharded, or official block-FP8) and checks every tensor against the model built
// from its config.json, or a moetron training checkpoint (a step-<N> directory, or a run /
// checkpoints directory for its latest; expert shards of any ep layout are assembled), and
// writes it in HF's layout (e.g. FP8 -> bf16, re-sharding, training -> HF export).
#include <torch/torch.h>

#include <filesystem>
#include "command.h"

#include "moetron/ckpt/hf_model.h"
#include "moetron/ckpt/train_checkpoint.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "moetron/core/logging.h"
#include "moetron/train/evaluate.h"

namespace moetron::cli {
namespace {

struct ConvertArgs {
  std::string from;
  std::string to;
  std::string dtype = "bf16";
  double max_shard_gb = 5.0;
  bool overwrite = false;
};

int run_convert(const ConvertArgs& args) {
  torch::ScalarType dtype = torch::kBFloat16;
  if (args.dtype == "fp32") {
    dtype = torch::kFloat32;
  } else if (args.dtype != "bf16") {
    throw Error(ErrorKind::kUsage,
                str_cat("--dtype: expected bf16 or fp32, got '", args.dtype, "'"));
  }
  torch::NoGradGuard no_grad;
  const auto shard = static_cast<uint64_t>(args.max_shard_gb * (1ull << 30));
  if (std::filesystem::exists(std::filesystem::path(args.from) / "config.json")) {
    auto loaded = ckpt::load_hf_model(args.from);
    ckpt::save_hf_model(args.to, loaded.model, dtype, shard, args.overwrite);
  } else {
    const std::string checkpoint = train::resolve_checkpoint(args.from);
    const std::string yaml_path = checkpoint + "/" + ckpt::kConfigFile;
    const auto cfg = config::load_string(read_text_file(yaml_path), yaml_path);
    model::DeepseekV3ForCausalLM model(cfg);
    ckpt::load_checkpoint_model(checkpoint, *model);
    ckpt::save_hf_model(args.to, model, dtype, shard, args.overwrite);
  }
  log::info("wrote ", args.to, " (", args.dtype, ")");
  return 0;
}

}  // namespace

Run setup_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  app.add_option("--from", args->from,
                 "HF checkpoint directory, or a moetron training checkpoint / run directory")
      ->required();
  app.add_option("--to", args->to, "Directory to write (must not exist or be empty)")->required();
  app.add_option("--dtype", args->dtype, "Stored dtype: bf16 or fp32")->capture_default_str();
  app.add_option("--max-shard-gb", args->max_shard_gb, "Shard size limit in GiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--overwrite", args->overwrite, "Replace a non-empty --to directory");
  return [args] { return run_convert(*args); };
}

}  // namespace moetron::cli
