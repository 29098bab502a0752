// JSONL datasets: record types (pretraining text, SFT prompt/response or messages, RL prompts),
// one-line parsers whose errors name file:line, and JsonlFile, an offset index over a file.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moetron::data {

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

struct SftSample {
  std::vector<ChatMessage> messages;  // {"prompt","response"} becomes [user, assistant]
};

struct RlPrompt {
  std::string prompt;
  std::string answer;
  std::string task;
  // Every other field of the record; non-string values as their JSON text.
  std::map<std::string, std::string> extra;
};

enum class RecordKind { kPretrain, kSft, kRl };

// One JSONL line each. `where` ("file:line") prefixes the message of the moetron::Error
// (ErrorKind::kUsage) thrown for bad JSON or a missing / ill-typed field. Unknown fields are
// ignored (pretraining, SFT) or kept in RlPrompt::extra.
std::string parse_pretrain_record(std::string_view line, const std::string& where);
SftSample parse_sft_record(std::string_view line, const std::string& where);
RlPrompt parse_rl_record(std::string_view line, const std::string& where);
// Parses `line` as `kind` only to validate it (throws like the parsers above).
void validate_record(std::string_view line, RecordKind kind, const std::string& where);

// The valid records of a JSONL file, validated once when opened, then read back by index from
// byte offsets, so memory stays at 16 bytes a record however large the file. Blank lines are
// ignored. A bad line throws (file:line) unless skip_bad_lines, which skips and counts it. A file
// with no valid record is an error. Not thread-safe (one stream per instance).
class JsonlFile {
 public:
  JsonlFile(std::string path, RecordKind kind, bool skip_bad_lines);
  // In-memory records (the built-in tasks), validated the same way; `name` stands for the path.
  JsonlFile(std::string name, std::vector<std::string> lines, RecordKind kind, bool skip_bad_lines);

  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  // Raw text of record i (0-based among valid records).
  std::string line(int64_t i) const;
  // "path:line" of record i (1-based file line), for error messages.
  std::string where(int64_t i) const;
  int64_t skipped_bad_lines() const { return skipped_; }
  const std::string& name() const { return name_; }
  RecordKind kind() const { return kind_; }

 private:
  struct Entry {
    int64_t offset;  // byte offset in the file, or index into lines_
    int64_t length;
    int64_t line_no;
  };
  void add_line(std::string_view text, int64_t offset, int64_t line_no, bool skip_bad_lines);
  void finish();

  std::string name_;
  RecordKind kind_;
  std::vector<Entry> entries_;
  std::vector<std::string> lines_;  // in-memory mode only
  bool in_memory_ = false;
  int64_t skipped_ = 0;
  mutable std::unique_ptr<std::ifstream> stream_;
};

// Whole-file readers for small sets (RL prompts, eval). `skipped` receives the bad-line count.
std::vector<RlPrompt> read_rl_prompts(const std::string& path, bool skip_bad_lines,
                                      int64_t* skipped = nullptr);
std::vector<SftSample> read_sft_samples(const std::string& path, bool skip_bad_lines,
                                        int64_t* skipped = nullptr);

}  // namespace moetron::data
