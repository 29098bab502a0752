// Data pipeline, unit: JSONL records and bad lines, the chat template's masks, SFT packing,
// pretraining streams, deterministic shuffling and exact loader resume.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data_test_util.h"
#include "moetron/core/error.h"
#include "moetron/data/byte_tokenizer.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/data/loader.h"
#include "moetron/data/tasks.h"

namespace moetron::data {
namespace {

using testing::ScratchDir;
using Json = nlohmann::json;
constexpr int64_t I = kIgnoreLabel;

std::string sft_line(const std::string& p, const std::string& r) {
  return Json{{"prompt", p}, {"response", r}}.dump();
}
std::string text_line(const std::string& t) {
  return Json{{"text", t}}.dump();
}

// Runs f and returns the moetron::Error it throws (fails the test if none).
template <typename F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected moetron::Error";
  return Error("none");
}

config::DataConfig data_config(const std::string& train, const std::string& eval = "") {
  config::DataConfig d;
  d.train_path = train;
  d.eval_path = eval;
  return d;
}

// ---- records ----------------------------------------------------------------------------

TEST(Records, ParseEachKind) {
  EXPECT_EQ(parse_pretrain_record(R"({"text": "abc", "id": 3})", "f:1"), "abc");
  SftSample s = parse_sft_record(R"({"prompt": "p", "response": "r"})", "f:1");
  ASSERT_EQ(s.messages.size(), 2u);
  EXPECT_EQ(s.messages[0].role, "user");
  EXPECT_EQ(s.messages[1].content, "r");
  s = parse_sft_record(
      R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"}]})",
      "f:1");
  ASSERT_EQ(s.messages.size(), 3u);
  EXPECT_EQ(s.messages[0].role, "system");
  RlPrompt r = parse_rl_record(
      R"({"prompt": "p", "answer": "7", "task": "arithmetic", "target": 54, "tag": "x"})", "f:1");
  EXPECT_EQ(r.answer, "7");
  EXPECT_EQ(r.extra.at("target"), "54");
  EXPECT_EQ(r.extra.at("tag"), "x");
  EXPECT_EQ(r.extra.count("prompt"), 0u);
}

TEST(Records, BadRecordsNameFileAndLine) {
  struct Case {
    RecordKind kind;
    std::string line, needle;
  };
  std::vector<Case> cases = {
      {RecordKind::kPretrain, "{not json", "invalid JSON"},
      {RecordKind::kPretrain, R"({"text": 5})", "\"text\" must be a string"},
      {RecordKind::kPretrain, R"(["text"])", "expected a JSON object"},
      {RecordKind::kSft, R"({"prompt": "p"})", "missing string field \"response\""},
      {RecordKind::kSft, R"({"messages": [{"role": "bot", "content": "x"}]})", "role must be"},
      {RecordKind::kSft, R"({"messages": [{"role": "user", "content": "x"}]})", "no assistant"},
      {RecordKind::kSft,
       R"({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "x"}]})",
       "system message may only come first"},
      {RecordKind::kRl, R"({"prompt": "p", "answer": 3, "task": "t"})", "\"answer\" must be"},
  };
  for (const auto& c : cases) {
    ScratchDir dir;
    // A record valid for every kind, a blank line, the same again, then the bad line (4).
    std::string good =
        Json{{"text", "x"}, {"prompt", "p"}, {"response", "r"}, {"answer", "1"}, {"task", "t"}}
            .dump();
    std::string path = dir.write_lines("d.jsonl", {good, "", good, c.line});
    Error e = error_of([&] { JsonlFile f(path, c.kind, false); });
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_NE(std::string(e.what()).find(path + ":4: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(c.needle), std::string::npos) << e.what();
  }
}

TEST(Records, SkipModeCountsBadLines) {
  ScratchDir dir;
  std::string path = dir.write_lines("d.jsonl", {text_line("a"), "{oops", text_line("b"),
                                                 R"({"text": null})", "", text_line("c")});
  JsonlFile f(path, RecordKind::kPretrain, true);
  EXPECT_EQ(f.size(), 3);
  EXPECT_EQ(f.skipped_bad_lines(), 2);
  EXPECT_EQ(f.line(2), text_line("c"));
  EXPECT_EQ(f.where(2), path + ":6");

  ByteTokenizer tok;
  auto cfg = data_config(path);
  cfg.skip_bad_lines = true;
  BatchLoader loader(cfg, config::Stage::kPretrain, tok, 1, 8, 1, Split::kTrain);
  EXPECT_EQ(loader.stats().skipped_bad_lines, 2);
  EXPECT_EQ(loader.stats().num_records, 3);
}

TEST(Records, EmptyOrAllBadFilesAreErrors) {
  ScratchDir dir;
  for (const std::string& text : {std::string(), std::string("\n  \n")}) {
    std::string path = dir.write("e.jsonl", text);
    Error e = error_of([&] { JsonlFile f(path, RecordKind::kSft, false); });
    EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos) << e.what();
  }
  std::string bad = dir.write_lines("b.jsonl", {"{x", "[1]"});
  Error e = error_of([&] { JsonlFile f(bad, RecordKind::kSft, true); });
  EXPECT_NE(std::string(e.what()).find("2 bad lines skipped"), std::string::npos) << e.what();
  Error missing = error_of([&] { JsonlFile f(dir.file("nope.jsonl"), RecordKind::kSft, false); });
  EXPECT_EQ(missing.kind(), ErrorKind::kUsage);
}

TEST(Records, ReadsBackByOffsetWithCrlf) {
  ScratchDir dir;
  std::string path = dir.write("c.jsonl", text_line("one") + "\r\n\r\n" + text_line("tw\xC3\xA9") +
                                              "\r\n" + text_line("three"));
  JsonlFile f(path, RecordKind::kPretrain, false);
  ASSERT_EQ(f.size(), 3);
  EXPECT_EQ(parse_pretrain_record(f.line(1), f.where(1)), "tw\xC3\xA9");
  EXPECT_EQ(parse_pretrain_record(f.line(2), f.where(2)), "three");
  EXPECT_EQ(f.where(1), path + ":3");
}

// ---- chat template ----------------------------------------------------------------------

std::vector<ChatMessage> qa(const std::string& q, const std::string& a) {
  return {{"user", q}, {"assistant", a}};
}

TEST(ChatTemplate, R1MasksPromptAndLearnsResponseAndEos) {
  ByteTokenizer tok;
  ChatTemplate tpl(tok);
  std::string response = format_reasoning_response("1+1 is 2", "2");
  EXPECT_EQ(response, "<think>\n1+1 is 2\n</think>\n2");
  RenderedChat r = tpl.render(qa("1+1?", response));
  EXPECT_EQ(tpl.render_text(qa("1+1?", response)),
            "<bos><user>1+1?<assistant>" + response + "<eos>");
  std::vector<int32_t> want = {ByteTokenizer::kBos,      ByteTokenizer::kUser, '1', '+', '1', '?',
                               ByteTokenizer::kAssistant};
  const size_t prompt_len = want.size();
  auto body = tok.encode(response, false);
  EXPECT_EQ(body[0], ByteTokenizer::kThink);
  want.insert(want.end(), body.begin(), body.end());
  want.push_back(ByteTokenizer::kEos);
  EXPECT_EQ(r.ids, want);
  ASSERT_EQ(r.loss_mask.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(r.loss_mask[i], i >= prompt_len) << i;

  ChatTemplateOptions all;
  all.loss_on_prompt = true;
  RenderedChat r2 = ChatTemplate(tok, all).render(qa("1+1?", response));
  EXPECT_EQ(r2.ids, want);
  for (uint8_t m : r2.loss_mask) EXPECT_EQ(m, 1);
}

TEST(ChatTemplate, MultiTurnAndSystem) {
  ByteTokenizer tok;
  ChatTemplate tpl(tok);
  std::vector<ChatMessage> m = {
      {"system", "S"}, {"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}};
  EXPECT_EQ(tpl.render_text(m), "<bos>S<user>a<assistant>b<eos><user>c<assistant>d<eos>");
  RenderedChat r = tpl.render(m);
  std::vector<uint8_t> mask = {0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1};
  EXPECT_EQ(r.loss_mask, mask);
  Error e = error_of([&] { tpl.render({{"assistant", "x"}}); });
  EXPECT_NE(std::string(e.what()).find("expected \"user\""), std::string::npos);
}

TEST(ChatTemplate, PromptForGeneration) {
  ByteTokenizer tok;
  ChatTemplate tpl(tok);
  std::vector<ChatMessage> m = {{"user", "hi"}};
  auto ids = tpl.render_prompt(m);
  EXPECT_EQ(ids.back(), ByteTokenizer::kAssistant);
  EXPECT_EQ(tpl.render_prompt_text(m, true), "<bos><user>hi<assistant><think>\n");
  auto pre = tpl.render_prompt(m, true);
  EXPECT_EQ(pre[pre.size() - 2], ByteTokenizer::kThink);
  EXPECT_EQ(pre.back(), '\n');
  EXPECT_THROW(tpl.render_prompt(qa("a", "b")), Error);
}

TEST(ChatTemplate, R1ZeroPlainText) {
  ByteTokenizer tok;
  ChatTemplateOptions o;
  o.format = ChatFormat::kR1Zero;
  ChatTemplate tpl(tok, o);
  std::string p = tpl.render_prompt_text({{"user", "2+2"}});
  EXPECT_EQ(p.rfind("<bos>A User and an Assistant", 0), 0u) << p;
  EXPECT_NE(p.find("<think> </think>"), std::string::npos);
  EXPECT_NE(p.find("<answer> </answer>"), std::string::npos);
  EXPECT_EQ(p.substr(p.size() - 21), "User: 2+2. Assistant:") << p;
  std::string full = tpl.render_text(qa("2+2", "<think> 4 </think> <answer> 4 </answer>"));
  EXPECT_EQ(full, p + " <think> 4 </think> <answer> 4 </answer><eos>");
  RenderedChat r = tpl.render(qa("2+2", "x"));
  EXPECT_EQ(r.loss_mask.back(), 1);
  EXPECT_EQ(r.loss_mask[r.loss_mask.size() - 3], 1);  // " x<eos>" learned
  EXPECT_EQ(r.loss_mask[r.loss_mask.size() - 4], 0);  // the "Assistant:" colon
}

TEST(ChatTemplate, ForeignTokenStringsAreAConfigError) {
  ByteTokenizer tok;
  Error e = error_of([&] { ChatTemplate tpl(tok, deepseek_chat_options()); });
  EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  EXPECT_NE(std::string(e.what()).find("bos"), std::string::npos) << e.what();
}

// ---- SFT packing ------------------------------------------------------------------------

// Byte-tokenized length of a prompt/response sample: bos user prompt assistant response eos.
int64_t sample_len(const std::string& p, const std::string& r) {
  return 4 + static_cast<int64_t>(p.size() + r.size());
}

TEST(SftLoader, PacksWholeSamplesWithSegmentsPositionsAndPadding) {
  ScratchDir dir;
  // Lengths 10, 12, 15, 8 in a row of 32: [10 12 | pad 10], [15 8 | pad 9], then epoch 2.
  std::vector<std::pair<std::string, std::string>> s = {
      {"ab", "cdef"}, {"abc", "defgh"}, {"abcd", "efghijk"}, {"a", "bcd"}};
  std::vector<std::string> lines;
  for (auto& [p, r] : s) lines.push_back(sft_line(p, r));
  ASSERT_EQ(sample_len(s[0].first, s[0].second), 10);
  ASSERT_EQ(sample_len(s[2].first, s[2].second), 15);
  std::string path = dir.write_lines("sft.jsonl", lines);
  ByteTokenizer tok;
  BatchLoader loader(data_config("", path), config::Stage::kSft, tok, 2, 32, 7, Split::kEval);
  Batch b = loader.next();
  ASSERT_EQ(b.input_ids.size(), 64u);
  auto at = [&](int64_t row, int64_t t) { return static_cast<size_t>(row * 32 + t); };
  // Row 0: sample 0 at 0..9, sample 1 at 10..21, padding at 22..31.
  std::vector<int64_t> seg0, pos0;
  for (int t = 0; t < 32; ++t) {
    seg0.push_back(b.segment_ids[at(0, t)]);
    pos0.push_back(b.position_ids[at(0, t)]);
  }
  for (int t = 0; t < 10; ++t) EXPECT_EQ(seg0[t], 0);
  for (int t = 10; t < 22; ++t) EXPECT_EQ(seg0[t], 1);
  for (int t = 22; t < 32; ++t) EXPECT_EQ(seg0[t], 2);
  EXPECT_EQ(pos0[0], 0);
  EXPECT_EQ(pos0[9], 9);
  EXPECT_EQ(pos0[10], 0);
  EXPECT_EQ(pos0[21], 11);
  EXPECT_EQ(pos0[22], 0);
  for (int t = 22; t < 32; ++t) {
    EXPECT_EQ(b.input_ids[at(0, t)], ByteTokenizer::kPad);
    EXPECT_EQ(b.labels[at(0, t)], I);
  }
  // Every segment is a whole sample: bos first, eos last.
  EXPECT_EQ(b.input_ids[at(0, 0)], ByteTokenizer::kBos);
  EXPECT_EQ(b.input_ids[at(0, 9)], ByteTokenizer::kEos);
  EXPECT_EQ(b.input_ids[at(0, 10)], ByteTokenizer::kBos);
  EXPECT_EQ(b.input_ids[at(0, 21)], ByteTokenizer::kEos);
  EXPECT_EQ(b.input_ids[at(1, 0)], ByteTokenizer::kBos);
  EXPECT_EQ(b.input_ids[at(1, 14)], ByteTokenizer::kEos);
  EXPECT_EQ(b.segment_ids[at(1, 15)], 1);
  EXPECT_EQ(b.input_ids[at(1, 22)], ByteTokenizer::kEos);
  EXPECT_EQ(b.segment_ids[at(1, 23)], 2);
  // Labels of sample 0: bos user a b assistant masked, c d e f eos learned.
  std::vector<int64_t> want = {I, I, I, I, I, 'c', 'd', 'e', 'f', ByteTokenizer::kEos};
  for (int t = 0; t < 10; ++t) EXPECT_EQ(b.labels[at(0, t)], want[t]) << t;
  // Targets: response + eos of the 4 samples = 5 + 6 + 8 + 4.
  EXPECT_EQ(b.num_target_tokens, 23);
  EXPECT_EQ(loader.stats().tokens, 45);
  // All four samples are used: the second epoch has begun, at sample 0 again (eval keeps file
  // order).
  EXPECT_EQ(loader.stats().epoch, 1);
  Batch c = loader.next();
  EXPECT_EQ(std::vector<int64_t>(c.input_ids.begin(), c.input_ids.begin() + 10),
            std::vector<int64_t>(b.input_ids.begin(), b.input_ids.begin() + 10));
}

TEST(SftLoader, LossOnPromptStillSkipsSegmentStarts) {
  ScratchDir dir;
  std::string path = dir.write_lines("sft.jsonl", {sft_line("ab", "cd"), sft_line("ef", "gh")});
  ByteTokenizer tok;
  ChatTemplateOptions chat;
  chat.loss_on_prompt = true;
  BatchLoader loader(data_config("", path), config::Stage::kSft, tok, 1, 16, 1, Split::kEval, chat);
  Batch b = loader.next();
  // Two samples of 8: every token a target except each segment's first (no cross-sample
  // prediction) and padding (none here).
  for (int t = 0; t < 16; ++t) {
    EXPECT_EQ(b.labels[t], t % 8 == 0 ? I : b.input_ids[t]) << t;
  }
  EXPECT_EQ(b.num_target_tokens, 14);
}

TEST(SftLoader, OverlongSamplesAreTruncatedAndCounted) {
  ScratchDir dir;
  std::string path =
      dir.write_lines("sft.jsonl", {sft_line("a", std::string(40, 'x')), sft_line("a", "b")});
  ByteTokenizer tok;
  BatchLoader loader(data_config("", path), config::Stage::kSft, tok, 2, 16, 1, Split::kEval);
  Batch b = loader.next();
  EXPECT_EQ(loader.stats().truncated_samples, 1);
  for (int t = 0; t < 16; ++t) EXPECT_EQ(b.segment_ids[t], 0);
  EXPECT_EQ(b.input_ids[15], 'x');
  EXPECT_EQ(b.input_ids[16], ByteTokenizer::kBos);  // the next sample opens row 1
}

TEST(SftLoader, NoPackingPutsOneSamplePerRow) {
  ScratchDir dir;
  std::string path = dir.write_lines("sft.jsonl", {sft_line("a", "b"), sft_line("c", "d")});
  ByteTokenizer tok;
  auto cfg = data_config("", path);
  cfg.pack = false;
  BatchLoader loader(cfg, config::Stage::kSft, tok, 2, 16, 1, Split::kEval);
  Batch b = loader.next();
  EXPECT_EQ(b.input_ids[6], ByteTokenizer::kPad);
  EXPECT_EQ(b.segment_ids[6], 1);
  EXPECT_EQ(b.input_ids[16], ByteTokenizer::kBos);
  EXPECT_EQ(b.input_ids[18], 'c');
}

// ---- pretraining ------------------------------------------------------------------------

std::vector<std::string> docs(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("doc" + std::to_string(i) + std::string(i % 7, '.'));
  return out;
}

TEST(PretrainLoader, RowsAreTheExactConcatenatedShuffledStream) {
  ScratchDir dir;
  auto texts = docs(9);
  std::vector<std::string> lines;
  for (const auto& t : texts) lines.push_back(text_line(t));
  std::string path = dir.write_lines("pt.jsonl", lines);
  ByteTokenizer tok;
  const int64_t B = 3, T = 11, seed = 5;
  BatchLoader loader(data_config(path), config::Stage::kPretrain, tok, B, T, seed, Split::kTrain);
  std::vector<int64_t> stream;
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    for (int64_t i : shuffled_order(9, seed, epoch)) {
      stream.push_back(ByteTokenizer::kBos);
      for (char c : texts[static_cast<size_t>(i)]) stream.push_back(static_cast<unsigned char>(c));
      stream.push_back(ByteTokenizer::kEos);
    }
  }
  size_t pos = 0;
  for (int k = 0; k < 8; ++k) {  // ~264 tokens: crosses at least two epochs
    Batch b = loader.next();
    ASSERT_LE(pos + static_cast<size_t>(B * T), stream.size());
    EXPECT_EQ(b.input_ids,
              std::vector<int64_t>(stream.begin() + pos, stream.begin() + pos + B * T));
    EXPECT_EQ(b.labels, b.input_ids);
    for (int64_t i = 0; i < B * T; ++i) {
      EXPECT_EQ(b.position_ids[static_cast<size_t>(i)], i % T);
      EXPECT_EQ(b.segment_ids[static_cast<size_t>(i)], 0);
    }
    EXPECT_EQ(b.num_target_tokens, B * (T - 1));
    pos += static_cast<size_t>(B * T);
  }
  EXPECT_GE(loader.stats().epoch, 2);
}

TEST(PretrainLoader, NoPackingPadsEachDocument) {
  ScratchDir dir;
  std::string path = dir.write_lines("pt.jsonl", {text_line("abcdefghij"), text_line("xy")});
  ByteTokenizer tok;
  auto cfg = data_config("", path);
  cfg.pack = false;
  BatchLoader loader(cfg, config::Stage::kPretrain, tok, 3, 8, 1, Split::kEval);
  Batch b = loader.next();
  // Doc 0 (12 tokens) -> a full row and a row of 4 + padding; doc 1 (4 tokens) + padding.
  EXPECT_EQ(b.input_ids[7], 'g');
  EXPECT_EQ(b.input_ids[8], 'h');
  EXPECT_EQ(b.input_ids[11], ByteTokenizer::kEos);
  EXPECT_EQ(b.input_ids[12], ByteTokenizer::kPad);
  EXPECT_EQ(b.labels[12], I);
  EXPECT_EQ(b.segment_ids[12], 1);
  EXPECT_EQ(b.position_ids[12], 0);
  EXPECT_EQ(b.input_ids[16], ByteTokenizer::kBos);
  EXPECT_EQ(b.input_ids[17], 'x');
}

// ---- shuffling and resume ---------------------------------------------------------------

TEST(Shuffle, DeterministicBySeedAndEpoch) {
  EXPECT_EQ(shuffled_order(50, 1, 0), shuffled_order(50, 1, 0));
  EXPECT_NE(shuffled_order(50, 1, 0), shuffled_order(50, 2, 0));
  EXPECT_NE(shuffled_order(50, 1, 0), shuffled_order(50, 1, 1));
  auto o = shuffled_order(50, 3, 4);
  std::sort(o.begin(), o.end());
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(o[static_cast<size_t>(i)], i);

  ScratchDir dir;
  std::vector<std::string> lines;
  for (int i = 0; i < 30; ++i) lines.push_back(sft_line("q" + std::to_string(i), "r"));
  std::string path = dir.write_lines("sft.jsonl", lines);
  ByteTokenizer tok;
  auto first = [&](int64_t seed) {
    BatchLoader l(data_config(path), config::Stage::kSft, tok, 2, 64, seed, Split::kTrain);
    return l.next().input_ids;
  };
  EXPECT_EQ(first(11), first(11));
  EXPECT_NE(first(11), first(12));
}

void expect_same(const Batch& a, const Batch& b, int k) {
  EXPECT_EQ(a.input_ids, b.input_ids) << "batch " << k;
  EXPECT_EQ(a.labels, b.labels) << "batch " << k;
  EXPECT_EQ(a.position_ids, b.position_ids) << "batch " << k;
  EXPECT_EQ(a.segment_ids, b.segment_ids) << "batch " << k;
  EXPECT_EQ(a.num_target_tokens, b.num_target_tokens) << "batch " << k;
}

// k batches + state + a fresh loader + the rest == the uninterrupted sequence, for every k.
void check_resume(const config::DataConfig& cfg, config::Stage stage, int64_t B, int64_t T, int n) {
  ByteTokenizer tok;
  BatchLoader straight(cfg, stage, tok, B, T, 3, Split::kTrain);
  std::vector<Batch> want;
  for (int i = 0; i < n; ++i) want.push_back(straight.next());
  ASSERT_GE(straight.stats().epoch, 1) << "the test must cross an epoch boundary";
  for (int k = 0; k < n; ++k) {
    BatchLoader first(cfg, stage, tok, B, T, 3, Split::kTrain);
    for (int i = 0; i < k; ++i) first.next();
    std::string state = first.state();
    BatchLoader second(cfg, stage, tok, B, T, 3, Split::kTrain);
    second.restore(state);
    for (int i = k; i < n; ++i) expect_same(second.next(), want[static_cast<size_t>(i)], i);
    EXPECT_EQ(second.stats().batches, straight.stats().batches);
    EXPECT_EQ(second.stats().tokens, straight.stats().tokens);
    EXPECT_EQ(second.stats().truncated_samples, straight.stats().truncated_samples);
  }
}

TEST(Resume, PretrainExactAcrossEpochs) {
  ScratchDir dir;
  std::vector<std::string> lines;
  for (const auto& t : docs(7)) lines.push_back(text_line(t + t));  // docs of 8..22 tokens
  check_resume(data_config(dir.write_lines("pt.jsonl", lines)), config::Stage::kPretrain, 2, 9, 10);
}

TEST(Resume, SftExactAcrossEpochs) {
  ScratchDir dir;
  std::vector<std::string> lines;
  for (int i = 0; i < 9; ++i) {
    lines.push_back(sft_line(std::string(static_cast<size_t>(i % 4 + 1), 'p'),
                             std::string(static_cast<size_t>(3 * i + 1), 'r')));
  }
  check_resume(data_config(dir.write_lines("sft.jsonl", lines)), config::Stage::kSft, 2, 24, 8);
}

TEST(Resume, RejectsMismatchedState) {
  ScratchDir dir;
  std::string path = dir.write_lines("pt.jsonl", {text_line("abc"), text_line("def")});
  ByteTokenizer tok;
  BatchLoader a(data_config(path), config::Stage::kPretrain, tok, 1, 4, 1, Split::kTrain);
  a.next();
  BatchLoader b(data_config(path), config::Stage::kPretrain, tok, 1, 5, 1, Split::kTrain);
  Error e = error_of([&] { b.restore(a.state()); });
  EXPECT_NE(std::string(e.what()).find("seq_len"), std::string::npos) << e.what();
  EXPECT_THROW(b.restore("{"), Error);
  auto j = Json::parse(a.state());
  j["cursor"] = 99;
  BatchLoader c(data_config(path), config::Stage::kPretrain, tok, 1, 4, 1, Split::kTrain);
  EXPECT_THROW(c.restore(j.dump()), Error);
}

// Bytes plus one eos (256); no bos, no pad, no chat strings: an HF-like tokenizer whose
// specials differ from the byte tokenizer's.
class EosOnlyTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text, bool) const override {
    return std::vector<int32_t>(text.begin(), text.end());
  }
  std::string decode(const std::vector<int32_t>&, bool) const override { return ""; }
  int32_t vocab_size() const override { return 257; }
  std::optional<int32_t> token_to_id(std::string_view) const override { return std::nullopt; }
  std::optional<std::string> id_to_token(int32_t) const override { return std::nullopt; }
  bool is_special(int32_t id) const override { return id == 256; }
  std::optional<int32_t> bos_id() const override { return std::nullopt; }
  std::optional<int32_t> eos_id() const override { return 256; }
  std::optional<int32_t> pad_id() const override { return std::nullopt; }
  std::string name() const override { return "eos-only"; }
};

TEST(Loader, TokenizerWithoutBosOrPad) {
  ScratchDir dir;
  std::string path = dir.write_lines("pt.jsonl", {text_line("abc")});
  EosOnlyTokenizer tok;
  auto cfg = data_config("", path);
  cfg.pack = false;
  // Pretraining needs no chat strings; documents are text + eos and padding falls back to eos.
  BatchLoader loader(cfg, config::Stage::kPretrain, tok, 1, 6, 1, Split::kEval);
  Batch b = loader.next();
  EXPECT_EQ(b.input_ids, (std::vector<int64_t>{'a', 'b', 'c', 256, 256, 256}));
  EXPECT_EQ(b.labels, (std::vector<int64_t>{'a', 'b', 'c', 256, I, I}));
  EXPECT_EQ(b.segment_ids, (std::vector<int64_t>{0, 0, 0, 0, 1, 1}));
  // SFT needs the template's bos / eos strings to be single tokens of this tokenizer.
  std::string sft = dir.write_lines("sft.jsonl", {sft_line("a", "b")});
  Error e = error_of([&] {
    BatchLoader l(data_config("", sft), config::Stage::kSft, tok, 1, 8, 1, Split::kEval);
  });
  EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  EXPECT_NE(std::string(e.what()).find("eos-only"), std::string::npos) << e.what();
}

TEST(Loader, BuiltinTaskWithoutPaths) {
  ByteTokenizer tok;
  config::DataConfig cfg;  // no paths: the built-in arithmetic task
  BatchLoader pt(cfg, config::Stage::kPretrain, tok, 2, 64, 1, Split::kTrain);
  EXPECT_EQ(pt.stats().num_records, TaskDataOptions().num_pretrain_docs);
  EXPECT_EQ(pt.next().input_ids[0], ByteTokenizer::kBos);
  BatchLoader sft(cfg, config::Stage::kSft, tok, 2, 256, 1, Split::kEval);
  EXPECT_EQ(sft.stats().num_records, TaskDataOptions().num_eval);
  EXPECT_GT(sft.next().num_target_tokens, 0);
  EXPECT_THROW(BatchLoader(cfg, config::Stage::kGrpo, tok, 2, 64, 1, Split::kTrain), Error);
}

}  // namespace
}  // namespace moetron::data
