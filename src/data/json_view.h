// A read-only view of a nlohmann::json node that knows its file and JSON path, so every
// "missing", "wrong type" or "unsupported" error names where to look.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace moetron::data {

class JsonView {
 public:
  JsonView(const nlohmann::json& node, std::string path, const std::string& file)
      : node_(&node), path_(std::move(path)), file_(&file) {}

  // Required member; fails when absent.
  JsonView at(const std::string& key) const;
  // Member when present and not null.
  std::optional<JsonView> find(const std::string& key) const;
  JsonView at(size_t index) const;
  size_t size() const { return node_->size(); }

  bool is_null() const { return node_->is_null(); }
  bool is_string() const { return node_->is_string(); }
  bool is_array() const { return node_->is_array(); }
  bool is_object() const { return node_->is_object(); }
  std::string str() const;
  bool boolean() const;
  int64_t integer() const;
  // Optional boolean member with a default.
  bool flag(const std::string& key, bool fallback) const;

  const nlohmann::json& raw() const { return *node_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return *file_; }
  // "file: path" for messages.
  std::string where() const;
  [[noreturn]] void fail(const std::string& what) const;
  void expect_object() const;
  void expect_array() const;

 private:
  const nlohmann::json* node_;
  std::string path_;
  const std::string* file_;
};

}  // namespace moetron::data
