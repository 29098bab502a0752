// GPT-2's bytes <-> unicode table, built from its rule: printable Latin-1 bytes map to
// themselves, the remaining 68 bytes map to U+0100.. in byte order.
#include "byte_level.h"

#include "unicode.h"

namespace moetron::data::byte_level {
namespace {

struct Tables {
  std::array<char32_t, 256> to_char{};
  std::array<int, 324> to_byte{};  // code points stay below 256 + 68
  Tables() {
    to_byte.fill(-1);
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      char32_t cp = printable(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(next++);
      to_char[b] = cp;
      to_byte[cp] = b;
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t byte_to_char(unsigned char b) {
  return tables().to_char[b];
}

int char_to_byte(char32_t cp) {
  const auto& t = tables();
  return cp < t.to_byte.size() ? t.to_byte[cp] : -1;
}

std::string encode(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char b : raw) unicode::append_utf8(out, byte_to_char(b));
  return out;
}

bool decode(std::string_view mapped, std::string& raw) {
  raw.clear();
  size_t pos = 0;
  while (pos < mapped.size()) {
    int b = char_to_byte(unicode::next_code_point(mapped, pos));
    if (b < 0) return false;
    raw.push_back(static_cast<char>(b));
  }
  return true;
}

}  // namespace moetron::data::byte_level
