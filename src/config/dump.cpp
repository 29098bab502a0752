// dump(): the resolved Config as YAML in schema order; reference_markdown(): docs/config.md.
// Both walk schema.h, so a new field appears in dumps and docs without further edits.
#include <sstream>

#include "config/schema.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"

namespace moetron::config {
namespace detail {
namespace {

// Block-style YAML, two-space indents; list items as "- key: value" maps.
class DumpVisitor {
 public:
  std::string text() const { return out_.str(); }

  template <class F>
  void section(const char* name, const char*, F&& fn) {
    line(std::string(name) + ":");
    nested(fn);
  }
  template <class T>
  void field(const char* name, const T& value, const Info&) {
    line(std::string(name) + ": " + Codec<T>::format(value));
  }
  template <class T, class F>
  void optional_group(const char* name, const std::optional<T>& value, const char*, F&& fn) {
    if (!value) {
      line(std::string(name) + ": null");
      return;
    }
    line(std::string(name) + ":");
    nested([&] { fn(*value); });
  }
  template <class T, class F>
  void list(const char* name, const std::vector<T>& items, const Info&, F&& fn) {
    if (items.empty()) {
      line(std::string(name) + ": []");
      return;
    }
    line(std::string(name) + ":");
    indent_ += 2;  // the "- " column
    for (const T& item : items) {
      dash_ = true;
      nested([&] { fn(item, *this); });
    }
    indent_ -= 2;
  }

 private:
  template <class F>
  void nested(F&& fn) {
    indent_ += 2;
    fn();
    indent_ -= 2;
  }
  void line(const std::string& content) {
    if (dash_) {
      out_ << std::string(indent_ - 2, ' ') << "- " << content << "\n";
      dash_ = false;
    } else {
      out_ << std::string(indent_, ' ') << content << "\n";
    }
  }
  std::ostringstream out_;
  int indent_ = 0;
  bool dash_ = false;
};

// "{name: accuracy, weight: 1.0}" for a list item's default in the reference.
class FlowVisitor {
 public:
  std::string text() const { return "{" + join(parts_, ", ") + "}"; }
  template <class T>
  void field(const char* name, const T& value, const Info&) {
    parts_.push_back(std::string(name) + ": " + Codec<T>::format(value));
  }

 private:
  std::vector<std::string> parts_;
};

// One markdown table per section: key, type, default, meaning.
class ReferenceVisitor : public KeyPath {
 public:
  std::string text() const { return out_.str(); }

  template <class F>
  void section(const char* name, const char* doc, F&& fn) {
    if (prefix_.empty()) {
      out_ << "\n## " << name << "\n\n" << doc << "\n\n";
      out_ << "| key | type | default | meaning |\n|---|---|---|---|\n";
    } else {
      row(prefix_ + name, "map", "", doc);
    }
    scoped(name, fn);
  }
  template <class T>
  void field(const char* name, const T& value, const Info& info) {
    std::string meaning = info.doc;
    std::vector<std::string> choices = info.choices;
    if constexpr (std::is_enum_v<T>) choices = enum_choices<T>();
    if (!choices.empty()) {
      meaning += " One of `" + join(choices, "`, `") + "`.";
    } else if (info.has_range()) {
      meaning += " Range: " + info.range_text() + ".";
    }
    row(prefix_ + name, Codec<T>::type_name(), "`" + Codec<T>::format(value) + "`", meaning);
  }
  template <class T, class F>
  void optional_group(const char* name, const std::optional<T>& value, const char* doc, F&& fn) {
    row(prefix_ + name, "map or null", value ? "(map)" : "`null`",
        std::string(doc) + " Setting any sub-key starts from the defaults below.");
    const T shown = value ? *value : T{};
    scoped(name, [&] { fn(shown); });
  }
  template <class T, class F>
  void list(const char* name, const std::vector<T>& items, const Info& info, F&& fn) {
    std::vector<std::string> flows;
    for (const T& item : items) {
      FlowVisitor flow;
      fn(item, flow);
      flows.push_back(flow.text());
    }
    row(prefix_ + name, "list", "`[" + join(flows, ", ") + "]`",
        info.doc + " A list replaces the base's list as a whole.");
    const T shown{};
    scoped(std::string(name) + "[]", [&] { fn(shown, *this); });
  }

 private:
  void row(const std::string& key, const std::string& type, const std::string& def,
           const std::string& meaning) {
    out_ << "| `" << key << "` | " << type << " | " << def << " | " << meaning << " |\n";
  }
  std::ostringstream out_;
};

const char* const kReferenceHeader = R"(# Configuration reference

<!-- Generated from src/config/schema.h by `moetron config --reference > docs/config.md`.
     Do not edit by hand: a test compares this file with the generated text. -->

A moetron config is one YAML file with the sections below. Every key is optional: a missing key
keeps its default. `moetron config CONFIG [key.sub=value ...]` prints the fully resolved config.

- **`base: other.yaml`** (top level) loads another config first, relative to the including file;
  bases may chain. Keys merge one by one: a file that sets only `moe.n_group` keeps everything
  else from its base.
- **Precedence:** defaults < base (recursively) < file < command-line overrides.
- **Overrides:** `key.sub=value` or `--key.sub=value`; the value is read as YAML, so
  `mla.q_lora_rank=null` and `rl.rewards=[{name: accuracy, weight: 1.0}]` work.
- **null** is accepted only where the type says "or null".
- Unknown keys, wrong types and out-of-range values are errors naming the file, line and column.
  Cross-field rules (e.g. `moe.n_routed_experts` divisible by `moe.n_group`) are checked after
  all layers are applied.
)";

}  // namespace
}  // namespace detail

std::string dump(const Config& config) {
  detail::DumpVisitor v;
  detail::visit_config(config, v);
  return v.text();
}

std::string reference_markdown() {
  detail::ReferenceVisitor v;
  const Config defaults;
  detail::visit_config(defaults, v);
  return std::string(detail::kReferenceHeader) + v.text();
}

}  // namespace moetron::config
