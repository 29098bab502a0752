// Built-in tasks, unit: deterministic generation, every answer and SFT trace verified by the
// checker, eval/train disjointness across seeds, the written files, and checker edge cases.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "data_test_util.h"
#include "moetron/core/error.h"
#include "moetron/data/dataset.h"
#include "moetron/data/tasks.h"

namespace moetron::data {
namespace {

using Json = nlohmann::json;

TaskDataOptions small(uint64_t seed) {
  TaskDataOptions o;
  o.seed = seed;
  o.num_pretrain_docs = 40;
  o.num_sft = 150;
  o.num_rl = 150;
  o.num_eval = 60;
  return o;
}

// The value an arithmetic prompt asks for, computed independently of the generator.
int64_t arithmetic_truth(const std::string& prompt) {
  std::smatch m;
  static const std::regex re(R"(What is (\d+) ([-+*]) (\d+)\?)");
  EXPECT_TRUE(std::regex_match(prompt, m, re)) << prompt;
  int64_t a = std::stoll(m[1]), b = std::stoll(m[3]);
  char op = m[2].str()[0];
  return op == '+' ? a + b : op == '-' ? a - b : a * b;
}

// Numbers and target of a countdown prompt.
std::pair<std::multiset<int64_t>, int64_t> countdown_truth(const std::string& prompt) {
  std::smatch m;
  static const std::regex re(R"(Using the numbers ([\d, ]+), make (\d+)\..*)");
  EXPECT_TRUE(std::regex_match(prompt, m, re)) << prompt;
  std::multiset<int64_t> nums;
  std::string list = m[1];
  static const std::regex num(R"(\d+)");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), num); it != std::sregex_iterator();
       ++it) {
    nums.insert(std::stoll(it->str()));
  }
  return {nums, std::stoll(m[2])};
}

// The final answer of `completion` solves the prompt (checked without the generator's answer).
void expect_solves(const std::string& task, const std::string& prompt,
                   const std::string& completion) {
  auto got = extract_final_answer(completion);
  ASSERT_TRUE(got) << completion;
  if (task == "arithmetic") {
    EXPECT_EQ(*got, std::to_string(arithmetic_truth(prompt))) << completion;
    return;
  }
  auto [nums, target] = countdown_truth(prompt);
  auto v = evaluate_expression(*got);
  ASSERT_TRUE(v) << *got;
  EXPECT_EQ(v->num, target) << *got;
  EXPECT_EQ(v->den, 1);
  for (int64_t n : v->literals) {
    auto it = nums.find(n);
    ASSERT_NE(it, nums.end()) << *got << " uses " << n;
    nums.erase(it);
  }
}

class TaskTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TaskTest, DeterministicBySeed) {
  const std::string task = GetParam();
  TaskData a = generate_task_data(task, small(1)), b = generate_task_data(task, small(1));
  TaskData c = generate_task_data(task, small(2));
  EXPECT_EQ(a.pretrain, b.pretrain);
  EXPECT_EQ(a.sft, b.sft);
  EXPECT_EQ(a.rl, b.rl);
  EXPECT_EQ(a.eval, b.eval);
  EXPECT_NE(a.sft, c.sft);
  EXPECT_NE(a.eval, c.eval);
  EXPECT_EQ(a.pretrain.size(), 40u);
  EXPECT_EQ(a.eval.size(), 60u);
  // Changing one count leaves the other files alone.
  TaskDataOptions more = small(1);
  more.num_sft = 10;
  EXPECT_EQ(generate_task_data(task, more).eval, a.eval);
}

TEST_P(TaskTest, AnswersAndTracesVerify) {
  const std::string task = GetParam();
  TaskData d = generate_task_data(task, small(3));
  for (const auto& line : d.sft) {
    SftSample s = parse_sft_record(line, "sft");
    const std::string& response = s.messages[1].content;
    EXPECT_EQ(response.rfind("<think>\n", 0), 0u) << response;
    EXPECT_NE(response.find("\n</think>\n"), std::string::npos);
    expect_solves(task, s.messages[0].content, response);
  }
  for (const auto& line : d.rl) {
    RlPrompt p = parse_rl_record(line, "rl");
    EXPECT_EQ(p.task, task);
    expect_solves(task, p.prompt, "</think>" + p.answer);
    EXPECT_TRUE(check_answer(task, "<answer>" + p.answer + "</answer>", p.answer));
    if (task == "countdown") {
      EXPECT_EQ(p.extra.at("target"), std::to_string(countdown_truth(p.prompt).second));
    }
  }
  for (const auto& line : d.eval) {
    RlPrompt p = parse_rl_record(line, "eval");
    // The eval record's trace ends in an answer the checker accepts against the reference.
    EXPECT_TRUE(check_answer(task, p.extra.at("response"), p.answer)) << p.extra.at("response");
    expect_solves(task, p.prompt, p.extra.at("response"));
    EXPECT_FALSE(check_answer(task, "<think>x</think>", p.answer));
  }
  // The pretraining corpus shows worked problems, not bare prompts.
  EXPECT_NE(d.pretrain[0].find("="), std::string::npos);
}

// Canonical problem keys in free text: "What is a op b?" / "Using the numbers ..., make T."
// prompts and the one-line forms "a op b=c" / "n1 n2 n3 -> T: ...".
std::set<std::string> keys_in(const std::string& task, const std::string& text) {
  std::set<std::string> keys;
  if (task == "arithmetic") {
    static const std::regex q(R"(What is (\d+) ([-+*]) (\d+)\?)");
    static const std::regex eq(R"((^|\n)(\d+)([-+*])(\d+)=)");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), q); it != std::sregex_iterator();
         ++it) {
      keys.insert((*it)[1].str() + (*it)[2].str() + (*it)[3].str());
    }
    for (auto it = std::sregex_iterator(text.begin(), text.end(), eq); it != std::sregex_iterator();
         ++it) {
      keys.insert((*it)[2].str() + (*it)[3].str() + (*it)[4].str());
    }
    return keys;
  }
  static const std::regex q(R"(Using the numbers ([\d, ]+), make (\d+)\.)");
  static const std::regex eq(R"((^|\n)([\d ]+) -> (\d+):)");
  auto add = [&](std::string list, const std::string& target) {
    std::vector<int64_t> nums;
    static const std::regex num(R"(\d+)");
    for (auto it = std::sregex_iterator(list.begin(), list.end(), num);
         it != std::sregex_iterator(); ++it) {
      nums.push_back(std::stoll(it->str()));
    }
    std::sort(nums.begin(), nums.end());
    std::string k;
    for (size_t i = 0; i < nums.size(); ++i) k += (i ? "," : "") + std::to_string(nums[i]);
    keys.insert(k + "->" + target);
  };
  for (auto it = std::sregex_iterator(text.begin(), text.end(), q); it != std::sregex_iterator();
       ++it) {
    add((*it)[1].str(), (*it)[2].str());
  }
  for (auto it = std::sregex_iterator(text.begin(), text.end(), eq); it != std::sregex_iterator();
       ++it) {
    add((*it)[2].str(), (*it)[3].str());
  }
  return keys;
}

TEST_P(TaskTest, EvalNeverOverlapsTrainAcrossSeeds) {
  const std::string task = GetParam();
  testing::ScratchDir dir;
  TaskDataOptions o = small(4);
  o.max_digits = 2;  // a small problem space makes accidental overlap likely if it were allowed
  make_task_data(task, dir.path(), o);
  std::set<std::string> eval;
  for (const auto& line : testing::read_lines(dir.file("eval.jsonl"))) {
    RlPrompt p = parse_rl_record(line, "eval");
    auto k = keys_in(task, p.prompt);
    ASSERT_EQ(k.size(), 1u) << p.prompt;
    EXPECT_TRUE(eval.insert(*k.begin()).second) << "duplicate eval problem " << *k.begin();
  }
  ASSERT_EQ(eval.size(), 60u);
  size_t train_keys = 0;
  auto check_file = [&](const std::string& path) {
    for (const auto& line : testing::read_lines(path)) {
      for (const auto& k : keys_in(task, line)) {
        ++train_keys;
        EXPECT_EQ(eval.count(k), 0u) << "eval problem " << k << " in " << path;
      }
    }
  };
  for (const char* f : {"pretrain.jsonl", "sft.jsonl", "rl.jsonl"}) check_file(dir.file(f));
  // Other seeds' train data stay off this eval set too (the partition ignores the seed).
  for (uint64_t seed : {5u, 6u}) {
    TaskDataOptions other = o;
    other.seed = seed;
    TaskData d = generate_task_data(task, other);
    for (const auto* set : {&d.pretrain, &d.sft, &d.rl}) {
      for (const auto& line : *set) {
        for (const auto& k : keys_in(task, line)) {
          ++train_keys;
          EXPECT_EQ(eval.count(k), 0u) << "seed " << seed << " trains on eval problem " << k;
        }
      }
    }
  }
  EXPECT_GT(train_keys, 1000u);  // the scan really found the train problems
  Json meta = Json::parse(read_text_file(dir.file("meta.json")));
  EXPECT_EQ(meta["task"], task);
  EXPECT_EQ(meta["seed"], 4);
  EXPECT_EQ(meta["counts"]["sft"], 150);
  EXPECT_EQ(meta["counts"]["eval"], 60);
}

INSTANTIATE_TEST_SUITE_P(Builtin, TaskTest, ::testing::Values("arithmetic", "countdown"));

TEST(Tasks, ErrorsForUnknownTaskAndTooSmallSpace) {
  EXPECT_THROW(generate_task_data("sudoku", small(1)), Error);
  EXPECT_THROW(check_answer("sudoku", "</think>1", "1"), Error);
  TaskDataOptions o = small(1);
  o.max_digits = 1;  // 300 problems, ~30 held out: 60 distinct eval problems cannot exist
  Error e("none");
  try {
    generate_task_data("arithmetic", o);
  } catch (const Error& err) {
    e = err;
  }
  EXPECT_NE(std::string(e.what()).find("distinct held-out"), std::string::npos) << e.what();
  o.max_digits = 0;
  EXPECT_THROW(generate_task_data("arithmetic", o), Error);
}

// Left-to-right chains: every step line is right and follows the prompt, and the steps held-out
// problems need appear in training traces (held-out problems are compositions of trained steps,
// so a model can solve them without having seen them).
TEST(Tasks, ChainsAreCompositionsOfTrainedSteps) {
  TaskDataOptions o = small(7);
  o.max_digits = 1;
  o.ops = "+-";
  o.max_terms = 4;
  o.num_sft = 2000;
  o.num_pretrain_docs = 2000;  // the quickstart's sizes
  static const std::regex step(R"((-?\d+) ([-+]) (\d+) = (-?\d+)\n)");
  static const std::regex operand(R"(([-+]) (\d+))");
  // The steps of one SFT response, checked against its prompt; returns "a+b" step keys.
  auto steps_of = [&](const std::string& prompt, const std::string& response) {
    std::vector<std::pair<char, int64_t>> terms;
    std::smatch first;
    EXPECT_TRUE(std::regex_search(prompt, first, std::regex(R"(What is (\d+))"))) << prompt;
    for (auto it = std::sregex_iterator(prompt.begin(), prompt.end(), operand);
         it != std::sregex_iterator(); ++it) {
      terms.emplace_back((*it)[1].str()[0], std::stoll((*it)[2].str()));
    }
    EXPECT_GE(terms.size(), 1u);
    EXPECT_LE(terms.size(), 3u);
    int64_t total = std::stoll(first[1].str());
    std::vector<std::string> keys;
    size_t i = 0;
    for (auto it = std::sregex_iterator(response.begin(), response.end(), step);
         it != std::sregex_iterator(); ++it, ++i) {
      const auto& m = *it;
      EXPECT_LT(i, terms.size()) << response;
      if (i >= terms.size()) break;
      EXPECT_EQ(std::stoll(m[1].str()), total) << response;
      EXPECT_EQ(m[2].str()[0], terms[i].first) << response;
      EXPECT_EQ(std::stoll(m[3].str()), terms[i].second) << response;
      total = terms[i].first == '+' ? total + terms[i].second : total - terms[i].second;
      EXPECT_EQ(std::stoll(m[4].str()), total) << response;
      keys.push_back(m[1].str() + m[2].str() + m[3].str());
    }
    EXPECT_EQ(i, terms.size()) << response;
    EXPECT_EQ(extract_final_answer(response), std::to_string(total)) << response;
    return keys;
  };
  // + - chains: the steps check out.
  for (const auto& line : generate_task_data("arithmetic", o).eval) {
    RlPrompt p = parse_rl_record(line, "eval");
    steps_of(p.prompt, p.extra.at("response"));
  }
  // + chains (the quickstart's task): 280 possible steps, all of them in the 2000 traces.
  o.ops = "+";
  TaskData d = generate_task_data("arithmetic", o);
  std::set<std::string> trained;
  std::set<size_t> lengths;
  for (const auto& line : d.sft) {
    SftSample s = parse_sft_record(line, "sft");
    auto keys = steps_of(s.messages[0].content, s.messages[1].content);
    lengths.insert(keys.size());
    trained.insert(keys.begin(), keys.end());
  }
  EXPECT_EQ(lengths, (std::set<size_t>{1, 2, 3}));  // 2..4 operands
  // The pretraining corpus's worked problems show steps too.
  for (const auto& line : d.pretrain) {
    const std::string text = Json::parse(line).at("text").get<std::string>();
    for (auto it = std::sregex_iterator(text.begin(), text.end(), step);
         it != std::sregex_iterator(); ++it) {
      trained.insert((*it)[1].str() + (*it)[2].str() + (*it)[3].str());
    }
  }
  size_t held_out_steps = 0, seen = 0;
  for (const auto& line : d.eval) {
    RlPrompt p = parse_rl_record(line, "eval");
    for (const auto& k : steps_of(p.prompt, p.extra.at("response"))) {
      ++held_out_steps;
      seen += trained.count(k);
    }
  }
  EXPECT_GT(held_out_steps, 100u);
  // Only the rarest running totals (e.g. 25 + 3, which needs 9 + 9 + 7 first) can be missing.
  EXPECT_GE(static_cast<double>(seen), 0.97 * static_cast<double>(held_out_steps))
      << seen << " of " << held_out_steps << " held-out steps are in training traces";
  EXPECT_LE(trained.size(), 280u);
  o.ops = "+*";
  EXPECT_THROW(generate_task_data("arithmetic", o), Error);  // chains are worked left to right
  o.ops = "+";
  o.max_terms = 9;
  EXPECT_THROW(generate_task_data("arithmetic", o), Error);
}

TEST(Checker, ExtractFinalAnswer) {
  EXPECT_EQ(extract_final_answer("<think>a</think>\n 42 \n"), "42");
  EXPECT_EQ(extract_final_answer("<think>1</think> <answer> 7 </answer>"), "7");
  EXPECT_EQ(extract_final_answer("<answer>1</answer> then <answer>2</answer>"), "2");
  EXPECT_EQ(extract_final_answer("</think>x</think> y"), "y");
  EXPECT_FALSE(extract_final_answer("42"));
  EXPECT_FALSE(extract_final_answer("<think>still thinking"));
  EXPECT_FALSE(extract_final_answer("<think>a</think>  \n"));
  EXPECT_FALSE(extract_final_answer("</think><answer> </answer>"));
}

TEST(Checker, Arithmetic) {
  EXPECT_TRUE(check_answer("arithmetic", "<think>...</think>\n-12", "-12"));
  EXPECT_TRUE(check_answer("arithmetic", "</think> 357.", "357"));
  EXPECT_TRUE(check_answer("arithmetic", "</think>+0357", "357"));
  EXPECT_FALSE(check_answer("arithmetic", "</think>356", "357"));
  EXPECT_FALSE(check_answer("arithmetic", "</think>357 apples", "357"));
  EXPECT_FALSE(check_answer("arithmetic", "357", "357"));  // no </think>: no final answer
  EXPECT_FALSE(check_answer("arithmetic", "</think>99999999999999999999", "357"));
  EXPECT_THROW(check_answer("arithmetic", "</think>1", "one"), Error);
}

TEST(Checker, CountdownRules) {
  const std::string ref = "(3+5)*7-2";  // numbers 3 5 7 2, target 54
  auto ok = [&](const std::string& expr) {
    return check_answer("countdown", "</think>" + expr, ref);
  };
  EXPECT_TRUE(ok("7*(5+3)-2"));
  EXPECT_TRUE(ok("(3+5)*7-2 = 54"));
  EXPECT_TRUE(ok("  7 \xC3\x97 (5 + 3) - 2 "));  // × accepted
  EXPECT_FALSE(ok("7*7+5"));                     // 7 used twice
  EXPECT_FALSE(ok("50+4"));                      // numbers not given
  EXPECT_FALSE(ok("(3+5)*7"));                   // wrong value
  EXPECT_FALSE(ok("(3+5)*7-2-0"));               // 0 not given
  EXPECT_FALSE(ok("(3+5*7-2"));                  // malformed
  EXPECT_FALSE(ok("3++5"));
  EXPECT_FALSE(ok("-2+56"));
  EXPECT_FALSE(ok("3 5"));
  EXPECT_FALSE(ok(""));
  // A subset of the numbers is fine: 7*2*3+... here 3*(7+2)*2 = 54 uses 3,7,2 and 2 (2 twice: no).
  EXPECT_FALSE(ok("3*(7+2)*2"));
  EXPECT_TRUE(check_answer("countdown", "</think>3*7+5", "3*7+5+(2-2)*0+0*0"));
}

TEST(Checker, CountdownExactRationals) {
  // 8 / (3 - 8/3) = 24 needs the non-integer 1/3 on the way.
  EXPECT_TRUE(check_answer("countdown", "</think>8/(3-8/3)", "8*3*(8/8)/(3/3)"));
  auto v = evaluate_expression("8/(3-8/3)");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->num, 24);
  EXPECT_EQ(v->den, 1);
  EXPECT_EQ(v->literals, (std::vector<int64_t>{8, 3, 8, 3}));
  v = evaluate_expression("7/2");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->num, 7);
  EXPECT_EQ(v->den, 2);
  // 7/2 is 3.5, not the target 3 (no truncating division); 7/2*2 is exactly 7.
  EXPECT_FALSE(check_answer("countdown", "</think>7/2", "7-2-2"));
  EXPECT_TRUE(check_answer("countdown", "</think>7/2*2", "7*2/2"));
  EXPECT_FALSE(evaluate_expression("5/(3-3)"));
  EXPECT_FALSE(check_answer("countdown", "</think>5/(3-3)", "5+3-3"));
  EXPECT_FALSE(evaluate_expression("99999999999*99999999999"));        // overflow is rejected
  EXPECT_THROW(check_answer("countdown", "</think>1", "7/2"), Error);  // reference not integral
}

}  // namespace
}  // namespace moetron::data
