// JSONL record parsers (pretraining, SFT, RL) and JsonlFile's offset index.
#include "moetron/data/dataset.h"

#include <nlohmann/json.hpp>

#include "moetron/core/error.h"

namespace moetron::data {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw Error(ErrorKind::kUsage, str_cat(where, ": ", what));
}

nlohmann::json parse_object(std::string_view line, const std::string& where) {
  nlohmann::json rec;
  try {
    rec = nlohmann::json::parse(line.begin(), line.end());
  } catch (const nlohmann::json::parse_error& e) {
    fail(where, str_cat("invalid JSON: ", e.what()));
  }
  if (!rec.is_object()) fail(where, str_cat("expected a JSON object, got ", rec.type_name()));
  return rec;
}

std::string string_field(const nlohmann::json& rec, const char* key, const std::string& where) {
  auto it = rec.find(key);
  if (it == rec.end()) fail(where, str_cat("missing string field \"", key, "\""));
  if (!it->is_string()) {
    fail(where, str_cat("field \"", key, "\" must be a string, got ", it->type_name()));
  }
  return it->get<std::string>();
}

bool is_blank(std::string_view s) {
  return s.find_first_not_of(" \t\r") == std::string_view::npos;
}

}  // namespace

std::string parse_pretrain_record(std::string_view line, const std::string& where) {
  return string_field(parse_object(line, where), "text", where);
}

SftSample parse_sft_record(std::string_view line, const std::string& where) {
  nlohmann::json rec = parse_object(line, where);
  SftSample sample;
  auto msgs = rec.find("messages");
  if (msgs == rec.end()) {
    if (!rec.contains("prompt") && !rec.contains("response")) {
      fail(where, "expected {\"prompt\", \"response\"} or {\"messages\": [...]}");
    }
    sample.messages.push_back({"user", string_field(rec, "prompt", where)});
    sample.messages.push_back({"assistant", string_field(rec, "response", where)});
    return sample;
  }
  if (!msgs->is_array() || msgs->empty()) fail(where, "\"messages\" must be a non-empty array");
  bool has_assistant = false;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const auto& m = (*msgs)[i];
    std::string at = str_cat(where, ": messages[", i, "]");
    if (!m.is_object()) fail(at, "expected an object with \"role\" and \"content\"");
    ChatMessage msg{string_field(m, "role", at), string_field(m, "content", at)};
    if (msg.role == "system") {
      if (i != 0) fail(at, "a system message may only come first");
    } else if (msg.role == "assistant") {
      has_assistant = true;
    } else if (msg.role != "user") {
      fail(at, str_cat("role must be system, user or assistant, got \"", msg.role, "\""));
    }
    sample.messages.push_back(std::move(msg));
  }
  if (!has_assistant) fail(where, "\"messages\" has no assistant turn (nothing to learn)");
  return sample;
}

RlPrompt parse_rl_record(std::string_view line, const std::string& where) {
  nlohmann::json rec = parse_object(line, where);
  RlPrompt p;
  p.prompt = string_field(rec, "prompt", where);
  p.answer = string_field(rec, "answer", where);
  p.task = string_field(rec, "task", where);
  for (const auto& [key, value] : rec.items()) {
    if (key == "prompt" || key == "answer" || key == "task") continue;
    p.extra[key] = value.is_string() ? value.get<std::string>() : value.dump();
  }
  return p;
}

void validate_record(std::string_view line, RecordKind kind, const std::string& where) {
  switch (kind) {
    case RecordKind::kPretrain:
      parse_pretrain_record(line, where);
      break;
    case RecordKind::kSft:
      parse_sft_record(line, where);
      break;
    case RecordKind::kRl:
      parse_rl_record(line, where);
      break;
  }
}

JsonlFile::JsonlFile(std::string path, RecordKind kind, bool skip_bad_lines)
    : name_(std::move(path)), kind_(kind) {
  stream_ = std::make_unique<std::ifstream>(name_, std::ios::binary);
  if (!*stream_) {
    throw Error(ErrorKind::kUsage, str_cat(name_,
                                           ": cannot open the dataset file (check "
                                           "data.train_path / data.eval_path)"));
  }
  std::string text;
  int64_t offset = 0, line_no = 0;
  while (std::getline(*stream_, text)) {
    ++line_no;
    int64_t next = offset + static_cast<int64_t>(text.size()) + 1;
    add_line(text, offset, line_no, skip_bad_lines);
    offset = next;
  }
  if (stream_->bad()) throw Error(ErrorKind::kUsage, str_cat(name_, ": read error"));
  stream_->clear();
  finish();
}

JsonlFile::JsonlFile(std::string name, std::vector<std::string> lines, RecordKind kind,
                     bool skip_bad_lines)
    : name_(std::move(name)), kind_(kind), lines_(std::move(lines)), in_memory_(true) {
  for (size_t i = 0; i < lines_.size(); ++i) {
    add_line(lines_[i], static_cast<int64_t>(i), static_cast<int64_t>(i) + 1, skip_bad_lines);
  }
  finish();
}

void JsonlFile::add_line(std::string_view text, int64_t offset, int64_t line_no,
                         bool skip_bad_lines) {
  if (is_blank(text)) return;
  try {
    validate_record(text, kind_, str_cat(name_, ":", line_no));
  } catch (const Error&) {
    if (!skip_bad_lines) throw;
    ++skipped_;
    return;
  }
  entries_.push_back({offset, static_cast<int64_t>(text.size()), line_no});
}

void JsonlFile::finish() {
  if (!entries_.empty()) return;
  throw Error(ErrorKind::kUsage,
              skipped_ > 0 ? str_cat(name_, ": no valid record (", skipped_, " bad lines skipped)")
                           : str_cat(name_, ": the dataset is empty (no JSONL records)"));
}

std::string JsonlFile::line(int64_t i) const {
  MOETRON_CHECK(i >= 0 && i < size(), "record index ", i, " out of range [0, ", size(), ")");
  const Entry& e = entries_[static_cast<size_t>(i)];
  if (in_memory_) return lines_[static_cast<size_t>(e.offset)];
  std::string text(static_cast<size_t>(e.length), '\0');
  stream_->clear();
  stream_->seekg(e.offset);
  stream_->read(text.data(), e.length);
  if (stream_->gcount() != e.length) {
    throw Error(ErrorKind::kRuntime,
                str_cat(where(i), ": the file changed since it was opened (short read)"));
  }
  return text;
}

std::string JsonlFile::where(int64_t i) const {
  return str_cat(name_, ":", entries_.at(static_cast<size_t>(i)).line_no);
}

std::vector<RlPrompt> read_rl_prompts(const std::string& path, bool skip_bad_lines,
                                      int64_t* skipped) {
  JsonlFile file(path, RecordKind::kRl, skip_bad_lines);
  std::vector<RlPrompt> out;
  out.reserve(static_cast<size_t>(file.size()));
  for (int64_t i = 0; i < file.size(); ++i)
    out.push_back(parse_rl_record(file.line(i), file.where(i)));
  if (skipped) *skipped = file.skipped_bad_lines();
  return out;
}

std::vector<SftSample> read_sft_samples(const std::string& path, bool skip_bad_lines,
                                        int64_t* skipped) {
  JsonlFile file(path, RecordKind::kSft, skip_bad_lines);
  std::vector<SftSample> out;
  out.reserve(static_cast<size_t>(file.size()));
  for (int64_t i = 0; i < file.size(); ++i)
    out.push_back(parse_sft_record(file.line(i), file.where(i)));
  if (skipped) *skipped = file.skipped_bad_lines();
  return out;
}

}  // namespace moetron::data
