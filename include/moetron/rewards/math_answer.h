// Math answer extraction and equivalence for the "accuracy" verifier (docs/rewards.md has the
// rules with examples). Torch-free; exposed for tests and for callers that grade a final answer
// outside the reward function (e.g. evaluation).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace moetron::rewards {

// Where the final answer of a completion is, in this order:
//   1. the inside of the last complete \boxed{...} / \fbox{...} (balanced braces);
//   2. the inside of the last <answer>...</answer>;
//   3. the text after the last `think_close`;
//   4. the whole completion.
// With `answer_tags` (R1-Zero) only 2. counts (a \boxed{} inside the tags is still preferred
// to the whole inside); no tags means no answer. `free_text` says the candidate is prose (3.,
// 4. and tag contents) rather than a boxed expression: math_answers_equivalent then falls
// back to the last inline math span ($...$, \(...\), \[...\]) and then to the last number.
struct AnswerCandidate {
  std::string text;
  bool free_text = false;
};
std::optional<AnswerCandidate> extract_answer_candidate(const std::string& completion,
                                                        const std::string& think_close,
                                                        bool answer_tags);

// The inside of the last complete \boxed{...} or \fbox{...} in `text`; nullopt if none.
std::optional<std::string> last_boxed(std::string_view text);

// Removes trailing whitespace and trailing special-token text (`<|...|>`, `<｜...｜>`, `</s>`),
// e.g. a decoded end-of-sentence token.
std::string strip_trailing_special(std::string_view text);

// Whether `candidate` states the same answer as `reference` (a number or LaTeX expression):
// exact rational comparison when both are exact and written without decimals, else numeric
// within 5e-7 absolute (math-verify rounds to 6 places) plus 1e-12 relative; percentages,
// lists/tuples/sets, "x = 5", units, LaTeX spacing and normalised-text equality as documented
// in docs/rewards.md.
bool math_answers_equivalent(const std::string& reference, const AnswerCandidate& candidate);

// Convenience: extraction plus equivalence.
bool math_answer_correct(const std::string& completion, const std::string& reference,
                         const std::string& think_close = "</think>", bool answer_tags = false);

}  // namespace moetron::rewards
