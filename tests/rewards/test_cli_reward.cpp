// `moetron reward` run as a process: default terms to stdout, a config's terms and context with
// --output, the --rewards shortcut, and input errors that name the file and line and leave no
// output file behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support/cli_runner.h"

namespace moetron::testing {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string row(const std::string& completion, const std::string& answer, const std::string& task,
                const Json& extra = Json::object()) {
  Json j = {{"completion", completion}, {"answer", answer}, {"task", task}};
  for (const auto& [k, v] : extra.items()) j[k] = v;
  return j.dump() + "\n";
}

TEST(CliReward, DefaultTermsToStdout) {
  const std::string dir = scratch_dir();
  write_text(dir + "/in.jsonl", row("<think>2+2</think> \\boxed{4}", "4", "arithmetic") +
                                    "\n" +  // a blank line stays a blank line
                                    row("<think>hm</think> 5", "4", "math") +
                                    row("no think block, 3/4", "0.75", ""));
  const CliResult r = run_moetron({"reward", "--input", "in.jsonl"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  const Json first = Json::parse(lines[0]);
  EXPECT_DOUBLE_EQ(first["reward"].get<double>(), 1.1);
  // Components in config order: the default rl.rewards is accuracy 1.0, format 0.1.
  EXPECT_EQ(first["components"].dump(), R"({"accuracy":1.0,"format":1.0})");
  EXPECT_EQ(lines[1], "");
  EXPECT_EQ(Json::parse(lines[2])["components"].dump(), R"({"accuracy":0.0,"format":1.0})");
  EXPECT_DOUBLE_EQ(Json::parse(lines[2])["reward"].get<double>(), 0.1);
  EXPECT_EQ(Json::parse(lines[3])["components"].dump(), R"({"accuracy":1.0,"format":0.0})");
  EXPECT_NE(r.err.find("scored 3 completions"), std::string::npos) << r.err;
}

TEST(CliReward, ConfigTermsAndContextWithOutput) {
  const std::string dir = scratch_dir();
  write_text(dir + "/c.yaml",
             "sft:\n  think_open: <reasoning>\n  think_close: </reasoning>\n"
             "rl:\n  r1_zero: true\n  max_new_tokens: 10\n  overlong_buffer: 4\n"
             "  rewards:\n    - {name: format, weight: 0.5}\n    - {name: accuracy, weight: 1.0}\n"
             "    - {name: overlong, weight: 1.0}\n");
  write_text(dir + "/in.jsonl",
             row("<reasoning>r</reasoning> <answer>42</answer>", "42", "math",
                 {{"num_tokens", 8}, {"truncated", false}, {"prompt", "q"}}) +
                 row("<reasoning>r</reasoning> 42", "42", "math", {{"num_tokens", 11}}));
  const CliResult r = run_moetron(
      {"reward", "--input", "in.jsonl", "--output", "out.jsonl", "c.yaml", "rl.overlong_buffer=2"},
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  const auto lines = lines_of(read_text(dir + "/out.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  // L_max 10, L_cache 2 (the override): 8 tokens is exactly the expected length.
  EXPECT_EQ(Json::parse(lines[0])["components"].dump(),
            R"({"format":1.0,"accuracy":1.0,"overlong":0.0})");
  EXPECT_DOUBLE_EQ(Json::parse(lines[0])["reward"].get<double>(), 1.5);
  // R1-Zero needs <answer> tags for both format and accuracy; 11 > L_max.
  EXPECT_EQ(Json::parse(lines[1])["components"].dump(),
            R"({"format":0.0,"accuracy":0.0,"overlong":-1.0})");
  EXPECT_DOUBLE_EQ(Json::parse(lines[1])["reward"].get<double>(), -1.0);
}

TEST(CliReward, RewardsShortcut) {
  const std::string dir = scratch_dir();
  write_text(dir + "/in.jsonl", row("<think>t</think> 3*(25-5)", "(25-5)*3", "countdown") +
                                    row("<think>t</think> 60", "(25-5)*3", "countdown"));
  const CliResult r =
      run_moetron({"reward", "--input", "in.jsonl", "--rewards", "countdown:2,format"}, dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(Json::parse(lines[0]).dump(),
            R"({"reward":3.0,"components":{"countdown":1.0,"format":1.0}})");
  EXPECT_EQ(Json::parse(lines[1]).dump(),
            R"({"reward":1.0,"components":{"countdown":0.0,"format":1.0}})");

  const CliResult bad =
      run_moetron({"reward", "--input", "in.jsonl", "--rewards", "accuracy,bogus"}, dir);
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("'bogus'"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("accuracy, countdown, format, language, overlong"), std::string::npos)
      << bad.err;
  const CliResult weight =
      run_moetron({"reward", "--input", "in.jsonl", "--rewards", "format:x"}, dir);
  EXPECT_EQ(weight.code, 2);
  EXPECT_NE(weight.err.find("weight 'x'"), std::string::npos) << weight.err;
}

TEST(CliReward, BadLinesNameFileAndLineAndLeaveNoOutput) {
  const std::string dir = scratch_dir();
  struct Bad {
    std::string line;
    std::string expect;
  };
  for (const Bad& b : std::vector<Bad>{
           {R"({"completion": "x", "task": "math"})", "missing key \"answer\""},
           {R"({"answer": "1"})", "missing key \"completion\""},
           {R"(not json at all)", "not valid JSON"},
           {R"([1, 2])", "expected a JSON object"},
           {R"({"completion": "x", "answer": "1", "num_tokens": "many"})", "\"num_tokens\""},
           {R"({"completion": "x", "answer": "1", "task": "poetry"})", "poetry"},
           {R"({"completion": "</think> 1", "answer": "7/2", "task": "countdown"})", "7/2"},
       }) {
    write_text(dir + "/in.jsonl", row("<think>t</think> 4", "4", "math") + "\n" + b.line + "\n");
    const CliResult r =
        run_moetron({"reward", "--input", "in.jsonl", "--output", "out.jsonl"}, dir);
    EXPECT_EQ(r.code, 2) << b.line;
    EXPECT_NE(r.err.find("in.jsonl:3"), std::string::npos) << b.line << "\n" << r.err;
    EXPECT_NE(r.err.find(b.expect), std::string::npos) << b.line << "\n" << r.err;
    // Neither the output nor its temporary file is left behind.
    for (const auto& entry : fs::directory_iterator(dir)) {
      EXPECT_EQ(entry.path().filename().string().rfind("out.jsonl", 0), std::string::npos)
          << entry.path();
    }
  }
  const CliResult missing = run_moetron({"reward", "--input", "nope.jsonl"}, dir);
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("nope.jsonl"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace moetron::testing
