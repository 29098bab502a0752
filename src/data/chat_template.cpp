// ChatTemplate: renders R1 / R1-Zero conversations piece by piece so each piece's loss flag maps
// onto its tokens exactly.
#include "moetron/data/chat_template.h"

#include "moetron/core/error.h"

namespace moetron::data {
namespace {

// Checks the turn structure: optional system first, then user / assistant alternating from a
// user turn.
void check_turns(const std::vector<ChatMessage>& messages, ChatFormat format) {
  if (messages.empty()) throw Error(ErrorKind::kUsage, "chat template: no messages");
  size_t i = messages[0].role == "system" ? 1 : 0;
  const char* expected = "user";
  for (; i < messages.size(); ++i) {
    if (messages[i].role != expected) {
      throw Error(
          ErrorKind::kUsage,
          str_cat("chat template: message ", i, " has role \"", messages[i].role, "\", expected \"",
                  expected, "\" (an optional system turn, then user and assistant alternating)"));
    }
    expected = std::string(expected) == "user" ? "assistant" : "user";
  }
  if (format == ChatFormat::kR1Zero) {
    size_t turns = messages.size() - (messages[0].role == "system" ? 1 : 0);
    if (turns > 2) {
      throw Error(ErrorKind::kUsage,
                  "chat template: the R1-Zero template takes one user turn and at most one "
                  "assistant turn");
    }
  }
}

}  // namespace

ChatTemplateOptions deepseek_chat_options() {
  ChatTemplateOptions o;
  o.bos =
      "<\xEF\xBD\x9C"
      "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  o.user = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>";
  o.assistant =
      "<\xEF\xBD\x9C"
      "Assistant\xEF\xBD\x9C>";
  o.eos =
      "<\xEF\xBD\x9C"
      "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  return o;
}

std::string format_reasoning_response(const std::string& reasoning, const std::string& answer,
                                      const std::string& think_open,
                                      const std::string& think_close) {
  return str_cat(think_open, "\n", reasoning, "\n", think_close, "\n", answer);
}

std::string r1_zero_prompt_text(const std::string& prompt) {
  return str_cat(
      "A User and an Assistant are talking. The User poses a problem and the Assistant solves "
      "it: the Assistant first reasons about the problem step by step and then gives the User "
      "the answer. The reasoning goes inside <think> </think> tags and the answer inside "
      "<answer> </answer> tags, that is, <think> reasoning here </think> <answer> answer here "
      "</answer>. User: ",
      prompt, ". Assistant:");
}

ChatTemplate::ChatTemplate(const Tokenizer& tokenizer, ChatTemplateOptions options)
    : tokenizer_(tokenizer), options_(std::move(options)) {
  auto check_single = [&](const std::string& s, const char* field) {
    auto ids = tokenizer_.encode(s, false);
    if (ids.size() != 1) {
      throw Error(ErrorKind::kConfig,
                  str_cat("chat template: ", field, " \"", s, "\" encodes to ", ids.size(),
                          " tokens with tokenizer ", tokenizer_.name(),
                          "; expected one special token (pass the tokenizer's own string)"));
    }
  };
  if (options_.add_bos) check_single(options_.bos, "bos");
  check_single(options_.eos, "eos");
}

std::vector<ChatTemplate::Piece> ChatTemplate::pieces(const std::vector<ChatMessage>& messages,
                                                      bool for_prompt, bool prefill_think) const {
  check_turns(messages, options_.format);
  if (for_prompt && messages.back().role != "user") {
    throw Error(ErrorKind::kUsage, "chat template: a generation prompt must end with a user turn");
  }
  const bool all = options_.loss_on_prompt;
  std::vector<Piece> out;
  if (options_.add_bos) out.push_back({options_.bos, all});
  size_t first = 0;
  if (messages[0].role == "system") {
    out.push_back({messages[0].content, all});
    first = 1;
  }
  if (options_.format == ChatFormat::kR1Zero) {
    out.push_back({r1_zero_prompt_text(messages[first].content), all});
    if (for_prompt) {
      if (prefill_think) out.push_back({" " + options_.think_open, all});
    } else if (first + 1 < messages.size()) {
      out.push_back({" " + messages[first + 1].content, true});
      out.push_back({options_.eos, true});
    }
    return out;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    if (messages[i].role == "user") {
      out.push_back({options_.user + messages[i].content, all});
    } else {
      out.push_back({options_.assistant, all});
      out.push_back({messages[i].content, true});
      out.push_back({options_.eos, true});
    }
  }
  if (for_prompt) {
    out.push_back({options_.assistant, all});
    if (prefill_think) out.push_back({options_.think_open + "\n", all});
  }
  return out;
}

RenderedChat ChatTemplate::encode(const std::vector<Piece>& pieces) const {
  RenderedChat r;
  for (const Piece& p : pieces) {
    // Pieces are encoded separately so loss flags land on whole tokens; a BPE merge across a
    // piece boundary is given up, as every chat-template masker does.
    std::vector<int32_t> ids = tokenizer_.encode(p.text, false);
    r.ids.insert(r.ids.end(), ids.begin(), ids.end());
    r.loss_mask.insert(r.loss_mask.end(), ids.size(), p.loss ? 1 : 0);
  }
  return r;
}

RenderedChat ChatTemplate::render(const std::vector<ChatMessage>& messages) const {
  return encode(pieces(messages, false, false));
}

std::string ChatTemplate::render_text(const std::vector<ChatMessage>& messages) const {
  std::string s;
  for (const Piece& p : pieces(messages, false, false)) s += p.text;
  return s;
}

std::vector<int32_t> ChatTemplate::render_prompt(const std::vector<ChatMessage>& messages,
                                                 bool prefill_think) const {
  return encode(pieces(messages, true, prefill_think)).ids;
}

std::string ChatTemplate::render_prompt_text(const std::vector<ChatMessage>& messages,
                                             bool prefill_think) const {
  std::string s;
  for (const Piece& p : pieces(messages, true, prefill_think)) s += p.text;
  return s;
}

}  // namespace moetron::data
