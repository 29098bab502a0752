// YAML -> Config: applies a document (and its `base:` chain) or a command-line override key by
// key onto a Config, so precedence is simply the order of application. Errors name the file,
// line and column, the key path, what was expected and, for unknown keys, the nearest key.
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include "config/schema.h"
#include "config/suggest.h"
#include "moetron/config/loader.h"
#include "moetron/core/error.h"

namespace moetron::config {
namespace detail {
namespace {

namespace fs = std::filesystem;

// Collects every key path ("moe.n_group", "model.rope_scaling.factor") for suggestions.
class KeysVisitor : public KeyPath {
 public:
  std::vector<std::string> keys;

  template <class F>
  void section(const char* name, const char*, F&& fn) {
    keys.push_back(prefix_ + name);
    scoped(name, fn);
  }
  template <class T>
  void field(const char* name, const T&, const Info&) {
    keys.push_back(prefix_ + name);
  }
  template <class T, class F>
  void optional_group(const char* name, const std::optional<T>&, const char*, F&& fn) {
    keys.push_back(prefix_ + name);
    const T defaults{};
    scoped(name, [&] { fn(defaults); });
  }
  template <class T, class F>
  void list(const char* name, const std::vector<T>&, const Info&, F&&) {
    keys.push_back(prefix_ + name);
  }
};

const std::vector<std::string>& all_keys() {
  static const std::vector<std::string> keys = [] {
    KeysVisitor v;
    const Config defaults;
    visit_config(defaults, v);
    return v.keys;
  }();
  return keys;
}

// Where a document came from: a file (messages carry line:column) or an override.
struct Source {
  std::string name;
  bool has_marks = true;
};

// Walks the schema over a mutable Config, taking values from a YAML tree.
class ApplyVisitor {
 public:
  explicit ApplyVisitor(Source source) : source_(std::move(source)) {}

  // Applies the top-level map `root`; `extra_keys` are accepted and ignored (e.g. "base").
  void apply(Config& config, const YAML::Node& root, const std::vector<std::string>& extra_keys) {
    push("", root);
    for (const std::string& key : extra_keys) take(key.c_str());
    visit_config(config, *this);
    pop();
  }

  template <class F>
  void section(const char* name, const char*, F&& fn) {
    Entry* e = take(name);
    if (!e || e->value.IsNull()) return;  // "model:" with everything commented out is fine
    const std::string path = child_path(name);
    if (!e->value.IsMap()) fail(*e, path + ": expected a map of keys, got " + describe(e->value));
    push(path, e->value);
    fn();
    pop();
  }

  template <class T>
  void field(const char* name, T& ref, const Info& info) {
    Entry* e = take(name);
    if (!e) return;
    const std::string path = child_path(name);
    T value = ref;
    if (!Codec<T>::parse(e->value, &value)) {
      std::string hint;
      if constexpr (std::is_enum_v<T>) {
        if (e->value.IsScalar()) hint = choice_hint(e->value.Scalar(), enum_choices<T>());
      }
      fail(*e,
           path + ": expected " + expected_text<T>(info) + ", got " + describe(e->value) + hint);
    }
    const std::string problem = field_problem(path, value, info);
    if (!problem.empty()) fail(*e, problem);
    ref = value;
  }

  template <class T, class F>
  void optional_group(const char* name, std::optional<T>& ref, const char*, F&& fn) {
    Entry* e = take(name);
    if (!e) return;
    const std::string path = child_path(name);
    if (e->value.IsNull()) {
      ref.reset();
      return;
    }
    if (!e->value.IsMap()) {
      fail(*e, path + ": expected a map of keys or null, got " + describe(e->value));
    }
    // Keys merge into what the base set, or into the defaults when it was null.
    if (!ref) ref.emplace();
    push(path, e->value);
    fn(*ref);
    pop();
  }

  template <class T, class F>
  void list(const char* name, std::vector<T>& ref, const Info&, F&& fn) {
    Entry* e = take(name);
    if (!e) return;
    const std::string path = child_path(name);
    if (!e->value.IsSequence()) fail(*e, path + ": expected a list, got " + describe(e->value));
    // A list replaces the base's list as a whole: merging items by position would surprise.
    std::vector<T> items;
    for (size_t i = 0; i < e->value.size(); ++i) {
      const YAML::Node item = e->value[i];
      const std::string item_path = str_cat(path, "[", i, "]");
      if (!item.IsMap()) {
        fail_at(item, *e, item_path + ": expected a map of keys, got " + describe(item));
      }
      T value{};
      push(item_path, item);
      fn(value, *this);
      pop();
      items.push_back(std::move(value));
    }
    ref = std::move(items);
  }

 private:
  struct Entry {
    std::string key;
    YAML::Node key_node;
    YAML::Node value;
    bool used = false;
  };
  struct Frame {
    std::string path;
    std::vector<Entry> entries;
    std::vector<std::string> known;  // names the schema asked for at this level
  };

  static std::string describe(const YAML::Node& n) { return describe_node(n); }

  std::string child_path(const char* name) const {
    const std::string& parent = stack_.back().path;
    return parent.empty() ? std::string(name) : parent + "." + name;
  }

  void push(const std::string& path, const YAML::Node& map) {
    Frame frame;
    frame.path = path;
    std::unordered_set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      Entry e;
      e.key_node = it->first;
      e.value = it->second;
      if (!e.key_node.IsScalar()) {
        fail_at(e.key_node, e, "keys must be plain names, got " + describe(e.key_node));
      }
      e.key = e.key_node.Scalar();
      const std::string full = path.empty() ? e.key : path + "." + e.key;
      if (!seen.insert(e.key).second) fail_at(e.key_node, e, "duplicate key '" + full + "'");
      frame.entries.push_back(std::move(e));
    }
    stack_.push_back(std::move(frame));
  }

  // Every key the schema did not ask for is a mistake; name the nearest valid one.
  void pop() {
    Frame& frame = stack_.back();
    for (const Entry& e : frame.entries) {
      if (e.used) continue;
      const std::string full = frame.path.empty() ? e.key : frame.path + "." + e.key;
      std::string hint = nearest(e.key, frame.known);
      if (!hint.empty()) {
        hint = frame.path.empty() ? hint : frame.path + "." + hint;
      } else {
        hint = nearest_anywhere(e.key);
      }
      fail_at(
          e.key_node, e,
          "unknown key '" + full + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?"));
    }
    stack_.pop_back();
  }

  // A key put in the wrong section ("model.kv_lora_rank") is found by its last component.
  static std::string nearest_anywhere(const std::string& key) {
    std::vector<std::string> leaves;
    for (const std::string& path : all_keys()) leaves.push_back(path.substr(path.rfind('.') + 1));
    const std::string leaf = nearest(key, leaves);
    if (leaf.empty()) return "";
    for (const std::string& path : all_keys()) {
      if (path.substr(path.rfind('.') + 1) == leaf) return path;
    }
    return "";
  }

  Entry* take(const char* name) {
    Frame& frame = stack_.back();
    frame.known.emplace_back(name);
    for (Entry& e : frame.entries) {
      if (e.key == name) {
        e.used = true;
        return &e;
      }
    }
    return nullptr;
  }

  [[noreturn]] void fail(const Entry& e, const std::string& message) const {
    fail_at(e.value, e, message);
  }

  // Prefers the position of `at`; falls back to the key's (a null value may have no mark).
  [[noreturn]] void fail_at(const YAML::Node& at, const Entry& e,
                            const std::string& message) const {
    std::string where = source_.name;
    if (source_.has_marks) {
      // An empty value ("key:") is null and yaml-cpp marks it at the next token; point at the key.
      YAML::Mark mark = at.IsNull() ? YAML::Mark::null_mark() : at.Mark();
      if (mark.is_null() && e.key_node.IsDefined()) mark = e.key_node.Mark();
      if (!mark.is_null()) where = str_cat(where, ":", mark.line + 1, ":", mark.column + 1);
    }
    throw Error(ErrorKind::kConfig, where + ": " + message);
  }

  Source source_;
  std::vector<Frame> stack_;
};

// ---- files and base chains -------------------------------------------------------------------

YAML::Node parse_yaml(const std::string& text, const std::string& name) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(ErrorKind::kConfig, str_cat(name, ":", e.mark.line + 1, ":", e.mark.column + 1,
                                            ": YAML syntax error: ", e.msg));
  }
}

// The files being loaded, outermost first; used to spot and report `base:` cycles.
struct Chain {
  std::vector<std::string> names;
  std::vector<fs::path> canonical;

  std::string text(const std::string& last) const {
    std::string out;
    for (const std::string& n : names) out += n + " -> ";
    return out + last;
  }
};

fs::path canonical_or_absolute(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(p, ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

void apply_document(Config& config, const YAML::Node& root, const std::string& name,
                    const fs::path& dir, Chain& chain);

// Reads `path` and applies it (after its base). `referrer` is "file:line:col" of the `base:`
// that named it, empty for the file given on the command line.
void apply_file(Config& config, const std::string& path, const std::string& referrer,
                Chain& chain) {
  const fs::path canonical = canonical_or_absolute(path);
  for (const fs::path& seen : chain.canonical) {
    if (seen == canonical) {
      throw Error(ErrorKind::kConfig, referrer + ": base cycle: " + chain.text(path));
    }
  }
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (!in || fs::is_directory(path, ec)) {
    if (referrer.empty()) {
      throw Error(ErrorKind::kConfig, "cannot read config file '" + path + "'" +
                                          (fs::exists(path, ec) ? "" : ": no such file"));
    }
    throw Error(ErrorKind::kConfig, referrer + ": base file '" + path +
                                        "' not found (chain: " + chain.text(path) + ")");
  }
  std::ostringstream text;
  text << in.rdbuf();
  chain.names.push_back(path);
  chain.canonical.push_back(canonical);
  apply_document(config, parse_yaml(text.str(), path), path, fs::path(path).parent_path(), chain);
  chain.names.pop_back();
  chain.canonical.pop_back();
}

void apply_document(Config& config, const YAML::Node& root, const std::string& name,
                    const fs::path& dir, Chain& chain) {
  if (root.IsNull()) return;  // an empty file changes nothing
  if (!root.IsMap()) {
    throw Error(
        ErrorKind::kConfig,
        str_cat(name, ":", root.Mark().line + 1, ":", root.Mark().column + 1,
                ": expected a map of sections at the top level, got ", describe_node(root)));
  }
  if (const YAML::Node base = root["base"]) {
    const std::string where = str_cat(name, ":", base.Mark().line + 1, ":", base.Mark().column + 1);
    if (!base.IsScalar() || base.Scalar().empty()) {
      throw Error(ErrorKind::kConfig,
                  where + ": base: expected a file name, got " + describe_node(base));
    }
    const fs::path base_path = (dir / base.Scalar()).lexically_normal();
    apply_file(config, base_path.string(), where, chain);
  }
  ApplyVisitor(Source{name, true}).apply(config, root, {"base"});
}

// ---- overrides ---------------------------------------------------------------------------------

bool valid_key(const std::string& key) {
  if (key.empty() || key.front() == '.' || key.back() == '.') return false;
  for (size_t i = 0; i < key.size(); ++i) {
    const char c = key[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || (c == '.' && key[i - 1] != '.');
    if (!ok) return false;
  }
  return true;
}

YAML::Node nest(const std::vector<std::string>& parts, size_t i, const YAML::Node& value) {
  if (i == parts.size()) return value;
  YAML::Node map(YAML::NodeType::Map);
  map[parts[i]] = nest(parts, i + 1, value);
  return map;
}

void apply_override(Config& config, const std::string& raw) {
  const std::string where = "command line override '" + raw + "'";
  std::string text = raw.rfind("--", 0) == 0 ? raw.substr(2) : raw;
  const size_t eq = text.find('=');
  if (eq == std::string::npos) {
    throw Error(ErrorKind::kConfig, where + ": expected key=value, e.g. optim.lr=3e-4");
  }
  const std::string key = text.substr(0, eq);
  const std::string value_text = text.substr(eq + 1);
  if (!valid_key(key)) {
    throw Error(ErrorKind::kConfig,
                where + ": '" + key + "' is not a key (expected section.name, e.g. optim.lr)");
  }
  YAML::Node value;
  if (value_text.empty()) {
    value = YAML::Node(std::string());  // "data.eval_path=" means the empty string, not null
  } else {
    try {
      value = YAML::Load(value_text);
    } catch (const YAML::ParserException& e) {
      throw Error(ErrorKind::kConfig,
                  where + ": value '" + value_text + "' is not valid YAML: " + e.msg);
    }
  }
  std::vector<std::string> parts;
  std::stringstream split(key);
  for (std::string part; std::getline(split, part, '.');) parts.push_back(part);
  ApplyVisitor(Source{where, false}).apply(config, nest(parts, 0, value), {});
}

void apply_overrides(Config& config, const std::vector<std::string>& overrides) {
  for (const std::string& o : overrides) apply_override(config, o);
}

// validate() knows keys, not files: say which file (and overrides) produced the values.
void validate_as(const Config& config, const std::string& name, size_t n_overrides) {
  try {
    validate(config);
  } catch (const Error& e) {
    const std::string suffix = n_overrides
                                   ? str_cat(" (with ", n_overrides, " command line override",
                                             n_overrides == 1 ? "" : "s", ")")
                                   : "";
    throw Error(ErrorKind::kConfig, name + suffix + ": " + e.what());
  }
}

}  // namespace
}  // namespace detail

Config load_file(const std::string& path, const std::vector<std::string>& overrides) {
  Config config;
  detail::Chain chain;
  detail::apply_file(config, path, "", chain);
  detail::apply_overrides(config, overrides);
  detail::validate_as(config, path, overrides.size());
  return config;
}

Config load_string(const std::string& yaml, const std::string& name,
                   const std::vector<std::string>& overrides) {
  Config config;
  detail::Chain chain;
  chain.names.push_back(name);
  detail::apply_document(config, detail::parse_yaml(yaml, name), name, "", chain);
  detail::apply_overrides(config, overrides);
  detail::validate_as(config, name, overrides.size());
  return config;
}

}  // namespace moetron::config
