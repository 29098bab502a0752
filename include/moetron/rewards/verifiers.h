// The rules behind the built-in verifiers as pure functions (the Verifier classes in
// src/rewards wrap them); docs/rewards.md states each rule with examples. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "moetron/rewards/reward.h"

namespace moetron::rewards {

// "format": exactly one think block, then a non-empty answer. The think_open tag may be absent
// (the prompt pre-filled it: the completion starts inside the block); when present it must be
// the first non-blank text. With context.answer_tags, what follows the block must be exactly
// <answer>non-blank</answer> (whitespace around it allowed). Trailing special-token text
// (`<|...|>`, `<｜...｜>`, `</s>`) is ignored. An empty reasoning span is accepted.
bool format_ok(const std::string& completion, const RewardContext& context);

// The reasoning span: the inside of the think block (from the start when think_open is
// absent), or the whole completion when there is no think_close.
std::string reasoning_text(const std::string& completion, const RewardContext& context);

// Languages "language" knows: "en" (words of ASCII letters) and "zh" (CJK ideographs).
bool language_supported(const std::string& language);

// "language": the fraction of words of `text` written in `language`'s script; 1 when the
// text has no words. A word is a maximal run of letters; each CJK / kana / Hangul character is
// a word of its own; digits, punctuation and symbols are not words. "en": a word is in the
// language when all its letters are ASCII; "zh": when it is a CJK ideograph.
double language_fraction(std::string_view text, const std::string& language);

// "overlong" (DAPO soft overlong punishment, SPEC 5.3) for a completion of `length` tokens:
// 0 up to L_max - L_cache, then linear down to -1 at L_max, -1 beyond; 0 when L_cache is 0.
double overlong_penalty(int64_t length, int64_t max_new_tokens, int64_t overlong_buffer);

}  // namespace moetron::rewards
