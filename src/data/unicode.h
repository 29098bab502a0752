// UTF-8 helpers and the few Unicode properties the tokenizers need (through ICU): decoding,
// validation, Rust's lossy decoding, normalization forms and character classes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moetron::data::unicode {

// Length in bytes of the UTF-8 sequence starting with `lead` (1 for invalid leads).
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at s[pos] (s must be valid UTF-8) and advances pos.
char32_t next_code_point(std::string_view s, size_t& pos);
// Decodes the code point that ends at s[end] (exclusive); returns its start in `start`.
char32_t prev_code_point(std::string_view s, size_t end, size_t& start);
void append_utf8(std::string& out, char32_t cp);

// Byte offset of the first invalid UTF-8 sequence, or npos when `s` is valid.
size_t find_invalid_utf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
// Normalizes valid UTF-8 with ICU; ASCII-only input is returned unchanged without ICU.
std::string normalize(std::string_view s, NormalForm form);

// Rust's char::is_whitespace (the White_Space property).
bool is_white_space(char32_t cp);
// Rust regex's Unicode \w: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool is_word_char(char32_t cp);
// Rust's char::is_numeric: general categories Nd, Nl and No.
bool is_numeric(char32_t cp);

}  // namespace moetron::data::unicode
