// load_tokenizer (spec -> tokenizer) and tokenize_jsonl (the CLI's encode/decode over JSONL).
#include "moetron/data/tokenizer.h"

#include <istream>
#include <ostream>

#include <nlohmann/json.hpp>

#include "moetron/core/error.h"
#include "moetron/data/byte_tokenizer.h"
#include "moetron/data/hf_tokenizer.h"
#include "unicode.h"

namespace moetron::data {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "byte") return std::make_unique<ByteTokenizer>();
  if (spec.empty()) {
    throw Error(ErrorKind::kConfig,
                "tokenizer spec is empty: expected \"byte\" or the path of a tokenizer.json");
  }
  return HfTokenizer::from_file(spec);
}

std::string utf8_lossy(std::string_view bytes) {
  return unicode::utf8_lossy(bytes);
}

void tokenize_jsonl(const Tokenizer& tokenizer, std::istream& in, std::ostream& out, bool decode,
                    const std::string& input_name) {
  std::string line;
  size_t line_no = 0;
  auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::kUsage, str_cat(input_name, ":", line_no, ": ", what));
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      out << '\n';
      continue;
    }
    nlohmann::json rec;
    try {
      rec = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail(str_cat("invalid JSON: ", e.what()));
    }
    if (!rec.is_object()) fail("expected a JSON object");
    nlohmann::json result;
    if (!decode) {
      auto it = rec.find("text");
      if (it == rec.end() || !it->is_string()) fail("expected a string field \"text\"");
      result["ids"] = tokenizer.encode(it->get<std::string>(), true);
    } else {
      auto it = rec.find("ids");
      if (it == rec.end() || !it->is_array()) fail("expected an array field \"ids\"");
      std::vector<int32_t> ids;
      ids.reserve(it->size());
      for (const auto& v : *it) {
        if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN ||
            v.get<int64_t>() > INT32_MAX) {
          fail(str_cat("\"ids\" must hold 32-bit integers, got ", v.dump()));
        }
        ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
      }
      result["text"] = tokenizer.decode(ids, false);
    }
    out << result.dump() << '\n';
  }
  if (in.bad()) fail("read error");
}

}  // namespace moetron::data
