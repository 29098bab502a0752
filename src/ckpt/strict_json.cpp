// Strict JSON parsing shared by the safetensors header, the shard index and config.json.
#include "strict_json.h"

#include <set>
#include <string>
#include <vector>

#include "moetron/core/error.h"

namespace moetron::ckpt::detail {

size_t find_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong encodings, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

const char* json_type_name(const nlohmann::json& value) {
  if (value.is_number_float()) return "a non-integer number";
  if (value.is_number_integer() && !value.is_number_unsigned()) return "a negative integer";
  return value.type_name();
}

namespace {
// Thrown from inside the parser callback; turned into moetron::Error by the caller.
struct StrictViolation {
  std::string message;
};
}  // namespace

nlohmann::json parse_json_strict(std::string_view text, std::string_view what, int max_depth) {
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    throw Error(str_cat(what, ": not valid UTF-8 (bad byte 0x", std::hex,
                        static_cast<int>(static_cast<unsigned char>(text[bad])), std::dec,
                        " at offset ", bad, ")"));
  }
  // nlohmann stops at a NUL byte as if the input ended there; JSON never holds a raw NUL.
  const size_t nul = text.find('\0');
  if (nul != std::string_view::npos) {
    throw Error(str_cat(what, ": not valid JSON: NUL byte at offset ", nul));
  }
  // One set of seen keys per open object; the callback runs before nlohmann would overwrite.
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start || event == E::array_start) {
      if (depth + 1 > max_depth) {
        throw StrictViolation{
            str_cat("nested deeper than ", max_depth, " levels, which this format never needs")};
      }
      if (event == E::object_start) open_objects.emplace_back();
    } else if (event == E::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!open_objects.back().insert(key).second) {
        throw StrictViolation{str_cat("duplicate key '", key, "'")};
      }
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true);
  } catch (const StrictViolation& v) {
    throw Error(str_cat(what, ": ", v.message));
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(what, ": not valid JSON: ", e.what()));
  }
}

}  // namespace moetron::ckpt::detail
