// PCRE2 wrapper: pattern translation from Oniguruma syntax, JIT compilation, find iteration.
#include "regex_pcre2.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdio>

#include "moetron/core/error.h"
#include "unicode.h"

namespace moetron::data {
namespace {

// Oniguruma's \s is Unicode White_Space; PCRE2's (with UCP) lacks U+0085, so spell it out.
constexpr const char* kSpaceBody =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
// In Ruby syntax \h is a hex digit, not horizontal space.
constexpr const char* kHexBody = "0-9a-fA-F";

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

struct JitStack {
  pcre2_jit_stack* stack = nullptr;
  ~JitStack() {
    if (stack) pcre2_jit_stack_free(stack);
  }
};

// Long whitespace runs and lookaheads can exceed PCRE2's 32 KiB default JIT stack; each thread
// gets its own larger one because a stack may not be shared by concurrent matches.
pcre2_jit_stack* thread_jit_stack(void*) {
  thread_local JitStack s;
  if (!s.stack) s.stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
  return s.stack;
}

struct MatchData {
  pcre2_match_data* data = nullptr;
  MatchData() { data = pcre2_match_data_create(32, nullptr); }
  ~MatchData() { pcre2_match_data_free(data); }
};

}  // namespace

struct Regex::Impl {
  pcre2_code* code = nullptr;
  pcre2_match_context* mctx = nullptr;
  bool jit = false;
  ~Impl() {
    if (mctx) pcre2_match_context_free(mctx);
    if (code) pcre2_code_free(code);
  }
};

std::string Regex::translate(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[++i];
      if (e == 's') {
        out += in_class ? std::string(kSpaceBody) : std::string("[") + kSpaceBody + "]";
      } else if (e == 'S' && !in_class) {
        out += std::string("[^") + kSpaceBody + "]";
      } else if (e == 'h') {
        out += in_class ? std::string(kHexBody) : std::string("[") + kHexBody + "]";
      } else if (e == 'H' && !in_class) {
        out += std::string("[^") + kHexBody + "]";
      } else if (e == 'u' && i + 4 < p.size() && is_hex(p[i + 1]) && is_hex(p[i + 2]) &&
                 is_hex(p[i + 3]) && is_hex(p[i + 4])) {
        out += "\\x{" + p.substr(i + 1, 4) + "}";
        i += 4;
      } else {
        // \S or \H inside a class keep PCRE2's meaning (differs only on U+0085).
        out += '\\';
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both dialects.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      size_t end = p.find(":]", i + 2);  // POSIX class [:alpha:]
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

std::string Regex::escape(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    auto u = static_cast<unsigned char>(c);
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (u < 0x80 && !alnum && c != '_') {
      if (u < 0x20 || u == 0x7F) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x{%02X}", u);
        out += buf;
        continue;
      }
      out += '\\';
    }
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& where) : impl_(new Impl) {
  std::string translated = translate(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  // MULTILINE: in Ruby syntax ^ and $ match at line boundaries.
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(ErrorKind::kConfig,
                str_cat(where, ": cannot compile regex '", pattern, "' (as PCRE2 '", translated,
                        "'): ", reinterpret_cast<const char*>(msg), " at offset ", err_off));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
  impl_->mctx = pcre2_match_context_create(nullptr);
  if (impl_->jit) pcre2_jit_stack_assign(impl_->mctx, thread_jit_stack, nullptr);
}

Regex::~Regex() = default;

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  thread_local MatchData md;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= s.size()) {
    int rc = pcre2_match(impl_->code, subject, s.size(), last_end, PCRE2_NO_UTF_CHECK, md.data,
                         impl_->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    MOETRON_CHECK(rc >= 0, "PCRE2 match failed with code ", rc, " on a ", s.size(), "-byte piece");
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
    size_t start = ov[0], end = ov[1];
    if (start == end && have_last && last_match_end == end) {
      last_end +=
          last_end < s.size() ? unicode::utf8_len(static_cast<unsigned char>(s[last_end])) : 1;
      continue;
    }
    last_end = end;
    have_last = true;
    last_match_end = end;
    out.emplace_back(start, end);
  }
}

}  // namespace moetron::data
