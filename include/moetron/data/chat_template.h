// Chat templates for SFT and generation: the R1 format (user / assistant tags, reasoning in
// <think>...</think> then the answer, SPEC 5.4) and the R1-Zero plain-text template, rendering
// token ids plus a per-token loss mask.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moetron/data/dataset.h"
#include "moetron/data/tokenizer.h"

namespace moetron::data {

enum class ChatFormat {
  kR1,      // bos [system] <user>prompt<assistant><think>\n...\n</think>\nanswer<eos>
  kR1Zero,  // bos preamble "User: prompt. Assistant:" then " <think> ... </think> <answer> ...
            // </answer>"
};

// The special-token strings (encoded through the tokenizer, so each must be a token the
// tokenizer maps to one id where it is a control token). Defaults are the byte tokenizer's.
struct ChatTemplateOptions {
  ChatFormat format = ChatFormat::kR1;
  std::string bos = "<bos>";
  std::string user = "<user>";
  std::string assistant = "<assistant>";
  std::string think_open = "<think>";    // SftConfig::think_open
  std::string think_close = "</think>";  // SftConfig::think_close
  std::string eos = "<eos>";
  bool add_bos = true;
  bool loss_on_prompt = false;  // SftConfig::loss_on_prompt: loss on every token
};

// DeepSeek-V3 / R1 tokenizer strings (<｜begin▁of▁sentence｜>, <｜User｜>, <｜Assistant｜>,
// <｜end▁of▁sentence｜>), for HF tokenizers of that family.
ChatTemplateOptions deepseek_chat_options();

struct RenderedChat {
  std::vector<int32_t> ids;
  // 1 where the token carries loss: assistant content (its think block and answer) and the eos
  // closing each assistant turn; everything when loss_on_prompt.
  std::vector<uint8_t> loss_mask;
};

// "<think>\n" + reasoning + "\n</think>\n" + answer: the assistant content of the R1 format.
std::string format_reasoning_response(const std::string& reasoning, const std::string& answer,
                                      const std::string& think_open = "<think>",
                                      const std::string& think_close = "</think>");

// The R1-Zero preamble (our own wording of R1 Table 1's structure) followed by
// "User: {prompt}. Assistant:" — plain text, no special tokens.
std::string r1_zero_prompt_text(const std::string& prompt);

class ChatTemplate {
 public:
  // Keeps a reference to `tokenizer`. Throws (kConfig) when bos / eos do not encode to exactly
  // one token.
  ChatTemplate(const Tokenizer& tokenizer, ChatTemplateOptions options = {});

  // A full conversation (system? then alternating user / assistant turns, as parse_sft_record
  // checks). Assistant content is rendered verbatim (it already holds its think block) and
  // followed by eos. In kR1Zero only a single user turn then assistant turn is accepted.
  RenderedChat render(const std::vector<ChatMessage>& messages) const;
  // Text of render() (special-token strings inline), for logs and debugging.
  std::string render_text(const std::vector<ChatMessage>& messages) const;

  // Prompt for generation: the conversation (ending with a user turn) then the assistant tag;
  // with prefill_think also "<think>\n" so the model starts inside its reasoning.
  std::vector<int32_t> render_prompt(const std::vector<ChatMessage>& messages,
                                     bool prefill_think = false) const;
  std::string render_prompt_text(const std::vector<ChatMessage>& messages,
                                 bool prefill_think = false) const;

  const ChatTemplateOptions& options() const { return options_; }

 private:
  struct Piece {
    std::string text;
    bool loss;
  };
  std::vector<Piece> pieces(const std::vector<ChatMessage>& messages, bool for_prompt,
                            bool prefill_think) const;
  RenderedChat encode(const std::vector<Piece>& pieces) const;

  const Tokenizer& tokenizer_;
  ChatTemplateOptions options_;
};

}  // namespace moetron::data
