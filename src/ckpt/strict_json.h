// Internal: JSON parsing for checkpoint files that refuses duplicate keys (nlohmann keeps the
// last one silently) and nesting deeper than the caller's format allows.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

namespace moetron::ckpt::detail {

// Parses `text` as one JSON value (surrounding whitespace allowed). Throws moetron::Error
// starting with `what` on invalid UTF-8, a syntax error, a duplicate key in any object, or
// containers nested more than `max_depth` levels (the top-level value is level 1).
nlohmann::json parse_json_strict(std::string_view text, std::string_view what, int max_depth);

// Index of the first byte that breaks UTF-8 (overlongs, surrogates, > U+10FFFF included), or
// npos when `text` is valid.
size_t find_invalid_utf8(std::string_view text);

// "object", "array", "string", "number", ... for messages.
const char* json_type_name(const nlohmann::json& value);

}  // namespace moetron::ckpt::detail
