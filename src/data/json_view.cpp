// JsonView: typed access to tokenizer.json with file + JSON path in every error.
#include "json_view.h"

#include "moetron/core/error.h"

namespace moetron::data {

std::string JsonView::where() const {
  return str_cat(*file_, ": ", path_.empty() ? std::string("(root)") : path_);
}

void JsonView::fail(const std::string& what) const {
  throw Error(ErrorKind::kConfig, str_cat(where(), ": ", what));
}

void JsonView::expect_object() const {
  if (!node_->is_object()) fail(str_cat("expected an object, got ", node_->type_name()));
}

void JsonView::expect_array() const {
  if (!node_->is_array()) fail(str_cat("expected an array, got ", node_->type_name()));
}

JsonView JsonView::at(const std::string& key) const {
  expect_object();
  auto it = node_->find(key);
  std::string child = path_.empty() ? key : path_ + "." + key;
  if (it == node_->end()) {
    throw Error(ErrorKind::kConfig, str_cat(*file_, ": ", child, ": required field is missing"));
  }
  return JsonView(*it, child, *file_);
}

std::optional<JsonView> JsonView::find(const std::string& key) const {
  expect_object();
  auto it = node_->find(key);
  if (it == node_->end() || it->is_null()) return std::nullopt;
  return JsonView(*it, path_.empty() ? key : path_ + "." + key, *file_);
}

JsonView JsonView::at(size_t index) const {
  expect_array();
  return JsonView((*node_)[index], str_cat(path_, "[", index, "]"), *file_);
}

std::string JsonView::str() const {
  if (!node_->is_string()) fail(str_cat("expected a string, got ", node_->type_name()));
  return node_->get<std::string>();
}

bool JsonView::boolean() const {
  if (!node_->is_boolean()) fail(str_cat("expected true or false, got ", node_->type_name()));
  return node_->get<bool>();
}

int64_t JsonView::integer() const {
  if (!node_->is_number_integer()) fail(str_cat("expected an integer, got ", node_->dump()));
  return node_->get<int64_t>();
}

bool JsonView::flag(const std::string& key, bool fallback) const {
  auto v = find(key);
  return v ? v->boolean() : fallback;
}

}  // namespace moetron::data
