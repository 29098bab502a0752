// GPT-2's byte-level alphabet: every byte maps to one printable code point so that BPE
// vocabularies of arbitrary bytes are valid JSON strings. The table is generated, not typed.
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace moetron::data::byte_level {

// Code point standing for byte b.
char32_t byte_to_char(unsigned char b);
// Byte that code point cp stands for, or -1 when cp is outside the alphabet.
int char_to_byte(char32_t cp);
// Maps every byte of `raw` to its code point (UTF-8 encoded).
std::string encode(std::string_view raw);
// Inverse of encode: false when some character of `mapped` is outside the alphabet.
bool decode(std::string_view mapped, std::string& raw);

}  // namespace moetron::data::byte_level
