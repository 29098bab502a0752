// `moetron bench train` as a user runs it on a CPU (the CI smoke): real training steps of
// configs/tiny.yaml, the printed fields (step time, tokens/s, model FLOP/s, MFU "-" with the
// reason, loss) and the final JSON line; --compare kernels measures both kernel settings in
// the same run; bad arguments and CUDA kernels on a CPU exit 2.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>

#include "support/cli_runner.h"

namespace moetron {
namespace {

using moetron::testing::CliResult;
using moetron::testing::run_moetron;

const std::string kTiny = MOETRON_SOURCE_DIR "/configs/tiny.yaml";

nlohmann::json last_json_line(const std::string& out) {
  const auto end = out.find_last_not_of('\n');
  const auto begin = out.rfind('\n', end);
  return nlohmann::json::parse(out.substr(begin == std::string::npos ? 0 : begin + 1));
}

class BenchTrainCli : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("OMP_NUM_THREADS", "1", 1); }
};

TEST_F(BenchTrainCli, TwoStepsOnTinyPrintTheFields) {
  const CliResult r = run_moetron({"bench", "train", kTiny, "--steps", "2", "--warmup", "0",
                                   "train.device=cpu", "log.level=warn"},
                                  MOETRON_SOURCE_DIR);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* field :
       {"step time", "tokens/s", "model FLOP/s", "mfu           -", "no published peak for a CPU",
        "loss", "8 x 128 tokens", "[config] kernels: gate=reference", "grouped_gemm=reference",
        "2 timed steps after 0 warm-up"}) {
    EXPECT_NE(r.out.find(field), std::string::npos) << field << "\n" << r.out;
  }
  const auto j = last_json_line(r.out);
  EXPECT_EQ(j["bench"], "train");
  EXPECT_TRUE(j["peak_flops"].is_null());
  ASSERT_EQ(j["runs"].size(), 1u);
  const auto& run = j["runs"][0];
  EXPECT_TRUE(run["mfu"].is_null());
  EXPECT_GT(run["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(run["step_time_s"].get<double>(), 0.0);
  EXPECT_GT(run["model_tflops"].get<double>(), 0.0);
  EXPECT_TRUE(std::isfinite(run["last_loss"].get<double>()));
  EXPECT_EQ(j["tokens_per_step"].get<int64_t>(), 8 * 128);
}

TEST_F(BenchTrainCli, CompareKernelsRunsBothInOneProcess) {
  const CliResult r =
      run_moetron({"bench", "train", kTiny, "--steps", "1", "--warmup", "0", "--compare", "kernels",
                   "train.device=cpu", "data.seq_len=32", "log.level=warn"},
                  MOETRON_SOURCE_DIR);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("[reference] kernels:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[config] kernels:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("speed-up"), std::string::npos) << r.out;
  const auto j = last_json_line(r.out);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_GT(j["speedup"].get<double>(), 0.0);
  // Same seed, same random batches, same (reference) kernels on a CPU: the same losses.
  EXPECT_EQ(j["runs"][0]["first_loss"], j["runs"][1]["first_loss"]);
}

TEST_F(BenchTrainCli, BadArgumentsAreUsageErrors) {
  CliResult r = run_moetron({"bench", "train", kTiny, "--steps", "0"}, MOETRON_SOURCE_DIR);
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  r = run_moetron({"bench", "train", kTiny, "--compare", "attention"}, MOETRON_SOURCE_DIR);
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  // A CUDA kernel on a CPU run is refused before any step, naming the key.
  r = run_moetron({"bench", "train", kTiny, "train.device=cpu", "kernels.grouped_gemm=cuda"},
                  MOETRON_SOURCE_DIR);
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("kernels.grouped_gemm"), std::string::npos) << r.err;
  r = run_moetron({"bench", "train", "--help"}, MOETRON_SOURCE_DIR);
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("MFU ="), std::string::npos) << r.out;
}

}  // namespace
}  // namespace moetron
