// Rewards, golden: the "accuracy" verifier against HF math-verify on generated (gold, prediction)
// pairs (scripts/fixtures/math_verify_cases.py). On the cases math-verify can grade (it parsed
// both sides) we require >= 95% agreement, and print the agreement and every disagreement.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "moetron/rewards/reward.h"

namespace moetron::rewards {
namespace {

const std::string kCases = std::string(MOETRON_FIXTURE_DIR) + "/math_verify/cases.json";

TEST(MathVerifyParity, AccuracyAgreesOnGradableCases) {
  if (!std::filesystem::exists(kCases)) {
    GTEST_SKIP() << kCases << " is missing: run scripts/make_fixtures.sh (scripts/test.sh does)";
  }
  std::ifstream in(kCases);
  const nlohmann::json doc = nlohmann::json::parse(in);
  const auto& cases = doc.at("cases");
  auto accuracy = make_verifier("accuracy", RewardContext{});
  int64_t gradable = 0, agree = 0, positives = 0;
  std::ostringstream report;
  for (const auto& c : cases) {
    if (!c.at("gradable").get<bool>()) continue;
    ++gradable;
    Sample s;
    s.completion = c.at("prediction").get<std::string>();
    s.answer = c.at("gold").get<std::string>();
    s.task = "math";
    const bool ours = accuracy->score(s) == 1.0;
    const bool theirs = c.at("verdict").get<bool>();
    positives += theirs;
    if (ours == theirs) {
      ++agree;
    } else {
      report << "  [" << c.at("kind").get<std::string>() << "/"
             << c.at("variant").get<std::string>() << "] gold=" << s.answer
             << "  prediction=" << nlohmann::json(s.completion).dump() << "  math-verify=" << theirs
             << " moetron=" << ours << "\n";
    }
  }
  const double rate = gradable ? static_cast<double>(agree) / gradable : 0.0;
  std::cout << "math-verify " << doc.value("math_verify_version", "?") << " parity: " << agree
            << "/" << gradable << " gradable cases agree (" << 100.0 * rate << "%), " << positives
            << " of them equivalent per math-verify, " << cases.size() - gradable
            << " not gradable\n";
  if (agree != gradable) std::cout << "disagreements:\n" << report.str();
  ASSERT_GE(gradable, 200) << "too few gradable cases in " << kCases;
  EXPECT_GE(rate, 0.95) << report.str();
}

}  // namespace
}  // namespace moetron::rewards
