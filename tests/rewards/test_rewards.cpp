// Rewards, unit: table-driven cases for every built-in verifier (math equivalence and answer
// extraction, the R1 / R1-Zero format, countdown, language consistency, DAPO overlong), the
// registry and the weighted reward function.
#include <gtest/gtest.h>

#include <algorithm>

#include "moetron/config/config.h"
#include "moetron/core/error.h"
#include "moetron/rewards/math_answer.h"
#include "moetron/rewards/reward.h"
#include "moetron/rewards/verifiers.h"

namespace moetron::rewards {
namespace {

struct Case {
  const char* completion;
  const char* answer;
  double want;
};

Sample sample(const std::string& completion, const std::string& answer,
              const std::string& task = "math") {
  Sample s;
  s.completion = completion;
  s.answer = answer;
  s.task = task;
  return s;
}

double run(const std::string& verifier, const Sample& s, const RewardContext& c = {}) {
  return make_verifier(verifier, c)->score(s);
}

void expect_table(const std::string& verifier, const std::vector<Case>& cases,
                  const RewardContext& context = {}, const std::string& task = "math") {
  auto v = make_verifier(verifier, context);
  for (const Case& c : cases) {
    EXPECT_EQ(v->score(sample(c.completion, c.answer, task)), c.want)
        << verifier << " task=" << task << " answer=[" << c.answer << "] completion=["
        << c.completion << "]";
  }
}

// ---- accuracy: math ----------------------------------------------------------------------

TEST(Accuracy, NumbersAndNormalisation) {
  expect_table("accuracy",
               {
                   {"\\boxed{42}", "42", 1},
                   {"\\boxed{42}", "43", 0},
                   {"\\boxed{-7}", "-7", 1},
                   {"\\boxed{7}", "-7", 0},
                   {"\\boxed{\u22127}", "-7", 1},  // unicode minus
                   {"\\boxed{- 7}", "-7", 1},
                   {"\\boxed{+7}", "7", 1},
                   {"\\boxed{007}", "7", 1},
                   {"\\boxed{1,234}", "1234", 1},
                   {"\\boxed{1234}", "1,234", 1},
                   {"\\boxed{1,234,567.5}", "1234567.5", 1},
                   {"\\boxed{1,2}", "12", 0},  // not a thousands separator: the list (1, 2)
                   {"\\boxed{0.75}", "\\frac{3}{4}", 1},
                   {"\\boxed{\\frac{3}{4}}", "0.75", 1},
                   {"\\boxed{3/4}", "\\frac{3}{4}", 1},
                   {"\\boxed{\\dfrac{6}{8}}", "\\frac{3}{4}", 1},
                   {"\\boxed{\\tfrac34}", "0.75", 1},
                   {"\\boxed{\\frac12}", "0.5", 1},
                   {"\\boxed{.5}", "1/2", 1},
                   {"\\boxed{0.7}", "\\frac{3}{4}", 0},
                   {"\\boxed{\\frac{4}{3}}", "\\frac{3}{4}", 0},
                   {"\\boxed{-\\frac{1}{2}}", "\\frac{-1}{2}", 1},
                   {"\\boxed{-0.5}", "-\\frac{1}{2}", 1},
                   {"\\boxed{2\\frac{1}{2}}", "2.5", 1},  // mixed number
                   {"\\boxed{-2\\frac{1}{2}}", "-2.5", 1},
                   {"\\boxed{5.0}", "5", 1},
                   {"\\boxed{5.}", "5", 1},
                   {"\\boxed{5}.", "5", 1},
                   {"\\boxed{\\left( \\frac{1}{2} \\right)}", "0.5", 1},
                   {"\\boxed{1\\!000}", "1000", 1},
                   {"$\\boxed{12}$", "12", 1},
                   {"\\boxed{x = 5}", "5", 1},
                   {"\\boxed{5}", "x=5", 1},
                   {"\\boxed{5\\text{ cm}}", "5", 1},
                   {"\\boxed{5 \\mbox{dollars}}", "5", 1},
                   {"\\boxed{5 cm}", "5", 1},
                   {"\\boxed{30^\\circ}", "30", 1},
                   {"\\boxed{30^{\\circ}}", "30", 1},
                   {"\\boxed{\\$12}", "12", 1},
               });
}

TEST(Accuracy, ExpressionsAndTolerance) {
  expect_table("accuracy",
               {
                   {"\\boxed{\\sqrt{4}}", "2", 1},
                   {"\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1},
                   {"\\boxed{\\sqrt[3]{27}}", "3", 1},
                   {"\\boxed{2^{3}}", "8", 1},
                   {"\\boxed{2^3}", "8", 1},
                   {"\\boxed{10^{6}}", "1000000", 1},
                   {"\\boxed{2^{-1}}", "0.5", 1},
                   {"\\boxed{2 \\cdot 5}", "10", 1},
                   {"\\boxed{2\\times 5}", "10", 1},
                   {"\\boxed{2\\pi}", "6.283185", 1},
                   {"\\boxed{6.283185}", "2\\pi", 1},
                   {"\\boxed{6.28}", "2\\pi", 0},
                   {"\\boxed{\\frac{\\pi}{2}}", "1.5707963", 1},
                   {"\\boxed{1.41421356}", "\\sqrt{2}", 1},
                   {"\\boxed{1.414}", "\\sqrt{2}", 0},
                   {"\\boxed{0.333333}", "\\frac{1}{3}", 1},  // 5e-7: 6 places, like math-verify
                   {"\\boxed{0.333334}", "\\frac{1}{3}", 0},
                   {"\\boxed{2.90909}", "\\frac{32}{11}", 0},
                   {"\\boxed{0.3333}", "\\frac{1}{3}", 0},
                   {"\\boxed{0.1000001}", "0.1", 1},
                   {"\\boxed{0.10001}", "0.1", 0},
                   {"\\boxed{1000001}", "1000000", 0},  // integers compare exactly
                   {"\\boxed{744711.5}", "744711", 0},
                   {"\\boxed{7.0000001}", "7", 0},     // ... also against decimals
                   {"\\boxed{7.0000001}", "7.0", 1},   // two decimals: tolerance
                   {"\\boxed{56\\,854}", "56854", 1},  // a thin space groups digits
                   {"\\boxed{56 854}", "56854", 0},    // a plain space does not
                   {"\\boxed{9223372036854775807}", "9223372036854775807", 1},
                   {"\\boxed{1/0}", "1", 0},
               });
}

TEST(Accuracy, PercentFollowsMathVerify) {
  // X% is X/100; when both sides are integers X% also equals X (math-verify 0.9.0).
  expect_table("accuracy", {
                               {"\\boxed{50\\%}", "0.5", 1},
                               {"\\boxed{50\\%}", "\\frac{1}{2}", 1},
                               {"\\boxed{50\\%}", "50", 1},
                               {"\\boxed{50}", "50\\%", 1},
                               {"\\boxed{0.5}", "50\\%", 1},
                               {"\\boxed{50%}", "50\\%", 1},
                               {"\\boxed{12.5\\%}", "0.125", 1},
                               {"\\boxed{12.5}", "12.5\\%", 0},
                               {"\\boxed{500\\%}", "5", 1},
                               {"\\boxed{40\\%}", "0.5", 0},
                               {"\\boxed{51}", "50\\%", 0},
                           });
}

TEST(Accuracy, ListsSetsAndText) {
  expect_table("accuracy", {
                               {"\\boxed{1, 2}", "1,2", 1},
                               {"\\boxed{2, 1}", "1,2", 1},  // a bare list is a set
                               {"\\boxed{\\{2,1\\}}", "\\{1, 2\\}", 1},
                               {"\\boxed{(1, 2)}", "(1,2)", 1},
                               {"\\boxed{(2, 1)}", "(1,2)", 0},  // tuples are ordered
                               {"\\boxed{1, 2}", "(1,2)", 1},
                               {"\\boxed{[1, 2)}", "(1,2)", 0},
                               {"\\boxed{\\{1,2\\}}", "(1,2)", 0},
                               {"\\boxed{1, 2, 3}", "1,2", 0},
                               {"\\boxed{\\frac{1}{2}, 0.25}", "0.5, \\frac14", 1},
                               {"\\boxed{\\text{yes}}", "yes", 1},
                               {"\\boxed{yes}", "\\text{yes}", 1},
                               {"\\boxed{no}", "yes", 0},
                               {"\\boxed{\\text{Yes}}", "\\text{yes}", 1},  // case-blind text
                               {"\\boxed{y = 2x + 1}", "y=2x+1", 1},
                           });
}

TEST(Accuracy, ExtractionOrder) {
  expect_table("accuracy",
               {
                   {"", "5", 0},
                   {"I have no idea.", "5", 0},
                   {"<think>hmm</think>", "5", 0},             // nothing after the block
                   {"\\boxed{3} no wait \\boxed{5}", "5", 1},  // the last box
                   {"\\boxed{5} no wait \\boxed{3}", "5", 0},
                   {"\\boxed{\\frac{1}{\\sqrt{4}}}", "0.5", 1},  // nested braces
                   {"\\boxed{{5}}", "5", 1},
                   {"\\boxed{5} and then \\boxed{3", "5", 1},  // an unclosed box is skipped
                   {"\\fbox{5}", "5", 1},
                   {"\\boxed 5", "5", 1},
                   {"<think>\\boxed{3}</think> The answer is 5.", "5", 0},  // boxes come first
                   {"<think>2+2</think><answer>4</answer>", "4", 1},
                   {"<answer>3</answer> and <answer>4</answer>", "4", 1},
                   {"<think>2+2=5? no</think> 4", "4", 1},
                   {"<think>2+2=5? no</think> The answer is 4.", "4", 1},
                   {"<think>2+2=4</think> The answer is $\\frac{8}{2}$.", "4", 1},
                   {"<think>x</think> so \\(x = 4\\) is it", "4", 1},
                   {"<think>x</think> 4<\uff5cend\u2581of\u2581sentence\uff5c>", "4", 1},
                   {"<think>x</think> 4<|endoftext|>", "4", 1},
                   {"<think>x</think> 3/4", "0.75", 1},
                   {"<think>x</think> We get 50% of it.", "0.5", 1},
                   {"<think>x</think> The total is 1,234 apples.", "1234", 1},
                   {"<think>x</think> Adding 3, we get 5", "5", 1},
                   {"<think>x</think> -3", "-3", 1},
                   {"<think>x</think> it is 10-3", "-3", 0},
                   {"no think tags, the last number is 12", "12", 1},
                   {"first 12 then 13", "12", 0},
               });
}

TEST(Accuracy, AnswerTagsRequiredInR1Zero) {
  RewardContext c;
  c.answer_tags = true;
  expect_table("accuracy",
               {
                   {"<think>x</think> <answer>4</answer>", "4", 1},
                   {"<think>x</think> <answer> \\boxed{4} </answer>", "4", 1},
                   {"<think>x</think> <answer>it is 4</answer>", "4", 1},
                   {"<think>x</think> 4", "4", 0},
                   {"<think>x</think> \\boxed{4}", "4", 0},
                   {"<think>x</think> <answer></answer>", "4", 0},
                   {"<think>x</think> <answer>4", "4", 0},
               },
               c);
}

TEST(Accuracy, CustomThinkTagsAndTasks) {
  RewardContext c;
  c.think_open = "<reasoning>";
  c.think_close = "</reasoning>";
  EXPECT_EQ(run("accuracy", sample("<reasoning>2+2</reasoning> 4", "4"), c), 1);
  EXPECT_EQ(run("accuracy", sample("<reasoning>2+2</reasoning> 4", "4", "arithmetic"), c), 1);
  EXPECT_EQ(run("accuracy", sample("<reasoning>2+2</reasoning> 4", "4", ""), c), 1);
  EXPECT_EQ(run("accuracy", sample("<reasoning>x</reasoning> 2*3+4", "3*2+4", "countdown"), c), 1);
  try {
    run("accuracy", sample("4", "4", "poetry"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("poetry"), std::string::npos) << e.what();
  }
}

TEST(MathAnswer, Helpers) {
  EXPECT_EQ(last_boxed("a \\boxed{x{y}z} b \\boxed{\\{1\\}}"), "\\{1\\}");
  EXPECT_EQ(last_boxed("no box"), std::nullopt);
  EXPECT_EQ(strip_trailing_special("5 <|im_end|></s> \n"), "5");
  EXPECT_EQ(strip_trailing_special("a <| b |>"), "a <| b |>");
  auto c = extract_answer_candidate("<think>a</think> b", "</think>", false);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->text, "b");
  EXPECT_TRUE(c->free_text);
  EXPECT_FALSE(extract_answer_candidate("<think>a</think> b", "</think>", true));
  EXPECT_TRUE(math_answer_correct("\\boxed{4}", "4"));
}

TEST(Accuracy, HostileInputsStayCheap) {
  // Deep nesting, long prose, many commas, dots and boxes: no stack overflow, no quadratic blowup.
  const std::string deep =
      "\\boxed{" + std::string(20000, '(') + "1" + std::string(20000, ')') + "}";
  const std::string nested_lists =
      "\\boxed{" + std::string(5000, '(') + "1,2" + std::string(5000, ')') + "}";
  std::string prose, commas, braces, texts, minus;
  for (int i = 0; i < 30000; ++i) texts += "\\text{";
  texts = "\\boxed{" + texts + "42" + std::string(30000, '}') + "}";
  for (int i = 0; i < 30000; ++i) minus += "\u2212 ";
  std::string specials = "</think> 42";
  for (int i = 0; i < 30000; ++i) specials += "<|pad|>";
  for (int i = 0; i < 20000; ++i) prose += "word ";
  for (int i = 0; i < 20000; ++i) commas += "1, ";
  for (int i = 0; i < 5000; ++i) braces += "\\boxed{";
  for (const std::string& completion :
       {deep, nested_lists, prose + "42", prose, commas, braces, std::string(50000, '.'),
        "</think>" + prose + std::string(50000, '.'), std::string(50000, '-') + "1",
        "\\boxed{" + std::string(50000, '{') + "}", std::string(20000, '$') + "5", texts,
        minus + "42", specials}) {
    EXPECT_NO_THROW(make_verifier("accuracy", {})->score(sample(completion, "42")))
        << completion.substr(0, 40);
  }
  EXPECT_EQ(run("accuracy", sample(prose + "42", "42")), 1);
  EXPECT_EQ(run("accuracy", sample(texts, "42")), 1);
  EXPECT_EQ(run("accuracy", sample(specials, "42")), 1);
}

// ---- format ------------------------------------------------------------------------------

TEST(Format, R1Template) {
  expect_table("format", {
                             {"<think>reason</think> 42", "", 1},
                             {"  <think>\nreason\n</think>\n\n42\n", "", 1},
                             {"reason</think> 42", "", 1},   // prompt pre-filled <think>
                             {"<think></think> 42", "", 1},  // empty reasoning is accepted
                             {"<think>reason</think>", "", 0},
                             {"<think>reason</think>   \n", "", 0},
                             {"<think>reason</think><|endoftext|>", "", 0},
                             {"<think>reason</think> 42<|endoftext|>", "", 1},
                             {"<think>reason 42", "", 0},  // never closed
                             {"42", "", 0},
                             {"<think>a</think><think>b</think> 42", "", 0},
                             {"<think>a</think> b</think> 42", "", 0},
                             {"<think><think>a</think> 42", "", 0},
                             {"x <think>a</think> 42", "", 0},  // text before the block
                             {"</think> <think> 42", "", 0},
                         });
}

TEST(Format, R1ZeroAnswerTags) {
  RewardContext c;
  c.answer_tags = true;
  expect_table(
      "format",
      {
          {"<think>r</think> <answer>42</answer>", "", 1},
          {"<think>r</think>\n<answer>\n42\n</answer>\n", "", 1},
          {"<think>r</think><answer>42</answer><\uff5cend\u2581of\u2581sentence\uff5c>", "", 1},
          {"<think>r</think> 42", "", 0},
          {"<think>r</think> <answer>42</answer> more", "", 0},
          {"<think>r</think> so <answer>42</answer>", "", 0},
          {"<think>r</think> <answer> </answer>", "", 0},
          {"<think>r</think> <answer>4</answer><answer>2</answer>", "", 0},
          {"<think>r</think> <answer>42", "", 0},
          {"<answer>42</answer>", "", 0},
      },
      c);
}

// ---- countdown ---------------------------------------------------------------------------

TEST(Countdown, Rules) {
  // Reference "(25-5)*3" gives the numbers 25, 5, 3 and the target 60.
  expect_table("countdown",
               {
                   {"<think>t</think> (25-5)*3", "(25-5)*3", 1},
                   {"<think>t</think> 3*(25-5)", "(25-5)*3", 1},
                   {"<think>t</think> 3 * (25 - 5) = 60", "(25-5)*3", 1},
                   {"<think>t</think> <answer>3*(25-5)</answer>", "(25-5)*3", 1},
                   {"<think>t</think> \\boxed{3*(25-5)}", "(25-5)*3", 1},
                   {"<think>t</think> 3*(25-5)<|endoftext|>", "(25-5)*3", 1},
                   {"<think>t</think> 60", "(25-5)*3", 0},            // 60 is not given
                   {"<think>t</think> (25-5)*3*3/3", "(25-5)*3", 0},  // 3 reused
                   {"<think>t</think> (25-5)*4-20", "(25-5)*3", 0},   // 4, 20 not given
                   {"<think>t</think> (25+5)*3", "(25-5)*3", 0},      // wrong value
                   {"<think>t</think> 25-5*3", "(25-5)*3", 0},
                   {"<think>t</think> (25-5)/(1/3)", "(25-5)*3", 0},  // 1 not given
                   {"<think>t</think>", "(25-5)*3", 0},
                   {"(25-5)*3", "(25-5)*3", 0},  // no final answer
                   {"<think>t</think> 25*3-5*3", "25*3-5*3", 1},
                   {"<think>t</think> 3*25-3*5", "25*3-5*3", 1},          // each used twice
                   {"<think>t</think> 8/(3-8/3)", "8*3*(8/8)/(3/3)", 1},  // spare numbers
                   {"<think>t</think> 8/(3-8/3)", "8/(3-8/3)", 1},        // division, exact
                   {"<think>t</think> 7/2*2", "7*2/2", 1},
               },
               {}, "countdown");
  RewardContext zero;
  zero.answer_tags = true;
  EXPECT_EQ(run("countdown", sample("<think>t</think> 3*(25-5)", "(25-5)*3", "countdown"), zero),
            0);
  EXPECT_EQ(
      run("countdown",
          sample("<think>t</think> <answer>3*(25-5)</answer>", "(25-5)*3", "countdown"), zero),
      1);
  EXPECT_THROW(run("countdown", sample("</think> 1", "7/2", "countdown")), Error);
}

// ---- language ----------------------------------------------------------------------------

TEST(Language, Fractions) {
  struct L {
    const char* text;
    double en;
  };
  for (const L& c : std::vector<L>{
           {"", 1.0},
           {"12 + 34 = 46 !!", 1.0},  // no words
           {"Let us add the numbers", 1.0},
           {"Let us \u8ba1\u7b97 it", 3.0 / 5.0},  // two ideographs are two words
           {"na\u00efve plan", 0.5},               // a non-ASCII letter makes it foreign
           {"\u043f\u0440\u0438\u0432\u0435\u0442 world", 0.5},
           {"x=\\frac{1}{2}, so 50\u00b0 \u2014 done \U0001F600", 1.0},
           {"\xff\xfe bad bytes", 1.0},
       }) {
    EXPECT_DOUBLE_EQ(language_fraction(c.text, "en"), c.en) << c.text;
  }
  EXPECT_DOUBLE_EQ(language_fraction("\u6211\u4eec \u8ba1\u7b97 ok", "zh"), 4.0 / 5.0);
  EXPECT_THROW(language_fraction("x", "fr"), Error);
}

TEST(Language, ScoresTheReasoningOnly) {
  expect_table("language", {
                               {"<think>add them up</think> \u7b54\u6848 42", "", 1.0},
                               {"<think>add \u52a0 them</think> 42", "", 2.0 / 3.0},
                               {"add \u52a0 them</think> 42", "", 2.0 / 3.0},  // pre-filled <think>
                               {"add \u52a0 \u52a0 them", "", 0.5},  // no block: everything
                           });
  RewardContext c;
  c.language = "xx";
  try {
    make_verifier("language", c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("'xx'"), std::string::npos) << e.what();
  }
}

// ---- overlong ----------------------------------------------------------------------------

TEST(Overlong, Spec75Values) {
  // SPEC 7.5: L_max 20480, L_cache 4096.
  EXPECT_DOUBLE_EQ(overlong_penalty(16384, 20480, 4096), 0.0);
  EXPECT_DOUBLE_EQ(overlong_penalty(18432, 20480, 4096), -0.5);
  EXPECT_DOUBLE_EQ(overlong_penalty(20480, 20480, 4096), -1.0);
  EXPECT_DOUBLE_EQ(overlong_penalty(20481, 20480, 4096), -1.0);
  EXPECT_DOUBLE_EQ(overlong_penalty(100, 20480, 4096), 0.0);
  EXPECT_DOUBLE_EQ(overlong_penalty(16385, 20480, 4096), -1.0 / 4096);
  EXPECT_DOUBLE_EQ(overlong_penalty(99999, 20480, 0), 0.0);  // disabled

  RewardContext c;
  c.max_new_tokens = 20480;
  c.overlong_buffer = 4096;
  auto v = make_verifier("overlong", c);
  Sample s = sample("whatever", "");
  for (auto [tokens, want] : std::vector<std::pair<int64_t, double>>{
           {16384, 0.0}, {18432, -0.5}, {20480, -1.0}, {30000, -1.0}}) {
    s.num_tokens = tokens;
    EXPECT_DOUBLE_EQ(v->score(s), want) << tokens;
  }
  // Unknown token count: the completion's bytes stand in.
  RewardContext small;
  small.max_new_tokens = 10;
  small.overlong_buffer = 4;
  EXPECT_DOUBLE_EQ(make_verifier("overlong", small)->score(sample("12345678", "")), -0.5);
  EXPECT_DOUBLE_EQ(make_verifier("overlong", {})->score(sample(std::string(9999, 'x'), "")), 0);

  RewardContext bad;
  bad.max_new_tokens = 10;
  bad.overlong_buffer = 10;
  EXPECT_THROW(make_verifier("overlong", bad), Error);
}

// ---- registry and the weighted sum -------------------------------------------------------

TEST(Registry, BuiltinsAndErrors) {
  auto names = verifier_names();
  for (const char* n : {"accuracy", "countdown", "format", "language", "overlong"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  try {
    make_verifier("acuracy", {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(msg.find("'acuracy'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("accuracy, countdown, format, language, overlong"), std::string::npos)
        << msg;
  }
  EXPECT_THROW(RewardFunction({{"accuracy", 1.0}, {"nope", 1.0}}, {}), Error);
}

class Constant : public Verifier {
 public:
  Constant(std::string name, double value) : name_(std::move(name)), value_(value) {}
  const std::string& name() const override { return name_; }
  double score(const Sample&) const override { return value_; }

 private:
  std::string name_;
  double value_;
};

TEST(Registry, RegisterAndReplace) {
  register_verifier("test_constant", [](const RewardContext&) {
    return std::make_unique<Constant>("test_constant", 0.25);
  });
  EXPECT_EQ(run("test_constant", sample("", "")), 0.25);
  register_verifier("test_constant", [](const RewardContext&) {
    return std::make_unique<Constant>("test_constant", 0.5);
  });
  EXPECT_EQ(run("test_constant", sample("", "")), 0.5);
}

TEST(RewardFunction, WeightedSumInConfigOrder) {
  RewardContext c;
  c.max_new_tokens = 10;
  c.overlong_buffer = 4;
  RewardFunction f({{"format", 0.1}, {"accuracy", 1.0}, {"overlong", 2.0}}, c);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"format", "accuracy", "overlong"}));
  Sample s = sample("<think>r</think> 4", "4");
  s.num_tokens = 8;
  const Score score = f.score(s);
  ASSERT_EQ(score.components.size(), 3u);
  EXPECT_EQ(score.components[0], (std::pair<std::string, double>{"format", 1.0}));
  EXPECT_EQ(score.components[1], (std::pair<std::string, double>{"accuracy", 1.0}));
  EXPECT_EQ(score.components[2], (std::pair<std::string, double>{"overlong", -0.5}));
  EXPECT_DOUBLE_EQ(score.total, 0.1 + 1.0 - 1.0);

  // No format, wrong answer, 9 bytes standing in for the unknown token count.
  const Score wrong = f.score(sample("no tags 5", "4"));
  EXPECT_DOUBLE_EQ(wrong.total, 2.0 * (6.0 - 9.0) / 4.0);
  EXPECT_TRUE(RewardFunction({}, {}).score(s).components.empty());
}

TEST(RewardFunction, DefaultsAndContextFromConfig) {
  config::Config cfg;
  cfg.sft.think_open = "<r>";
  cfg.sft.think_close = "</r>";
  cfg.rl.r1_zero = true;
  cfg.rl.max_new_tokens = 64;
  cfg.rl.overlong_buffer = 16;
  const RewardContext c = context_from_config(cfg);
  EXPECT_EQ(c.think_open, "<r>");
  EXPECT_EQ(c.think_close, "</r>");
  EXPECT_TRUE(c.answer_tags);
  EXPECT_EQ(c.max_new_tokens, 64);
  EXPECT_EQ(c.overlong_buffer, 16);
  EXPECT_EQ(c.language, "en");
  RewardFunction f(config::Config{}.rl.rewards, RewardContext{});
  EXPECT_EQ(f.names(), (std::vector<std::string>{"accuracy", "format"}));
  EXPECT_DOUBLE_EQ(f.score(sample("<think>r</think> \\boxed{4}", "4")).total, 1.1);
}

}  // namespace
}  // namespace moetron::rewards
