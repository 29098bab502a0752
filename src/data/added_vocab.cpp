// Added-token matching (see added_vocab.h).
#include "added_vocab.h"

#include <algorithm>
#include <cstring>

#include "unicode.h"

namespace moetron::data {
namespace {

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t start;
  return unicode::is_word_char(unicode::prev_code_point(s, s.size(), start));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t pos = 0;
  return unicode::is_word_char(unicode::next_code_point(s, pos));
}

// Start of the trailing whitespace run of s (s.size() when none).
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start;
    if (!unicode::is_white_space(unicode::prev_code_point(s, end, start))) break;
    end = start;
  }
  return end;
}

// Length of the leading whitespace run of s.
size_t leading_space_len(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!unicode::is_white_space(unicode::next_code_point(s, next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

void AddedVocab::build(const std::vector<AddedToken>& tokens,
                       const std::vector<std::string>& normalized_contents) {
  tokens_ = tokens;
  for (int n = 0; n < 2; ++n) {
    MatchSet& set = sets_[n];
    set.patterns.clear();
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i].normalized != static_cast<bool>(n)) continue;
      const std::string& text = n ? normalized_contents[i] : tokens[i].content;
      if (!text.empty()) set.patterns.emplace_back(text, i);
    }
    std::stable_sort(set.patterns.begin(), set.patterns.end(), [](const auto& a, const auto& b) {
      auto fa = static_cast<unsigned char>(a.first[0]), fb = static_cast<unsigned char>(b.first[0]);
      return fa != fb ? fa < fb : a.first.size() > b.first.size();
    });
    size_t k = 0;
    for (int b = 0; b <= 256; ++b) {
      while (k < set.patterns.size() && static_cast<unsigned char>(set.patterns[k].first[0]) < b) {
        ++k;
      }
      set.bucket[b] = static_cast<uint32_t>(k);
    }
  }
}

bool AddedVocab::MatchSet::find(std::string_view s, size_t from, size_t& start, size_t& len,
                                size_t& index) const {
  for (size_t pos = from; pos < s.size(); ++pos) {
    auto b = static_cast<unsigned char>(s[pos]);
    for (uint32_t k = bucket[b]; k < bucket[b + 1]; ++k) {
      const std::string& p = patterns[k].first;
      if (p.size() <= s.size() - pos && std::memcmp(p.data(), s.data() + pos, p.size()) == 0) {
        start = pos;
        len = p.size();
        index = patterns[k].second;
        return true;
      }
    }
  }
  return false;
}

void AddedVocab::split(std::string_view s, bool normalized_set, std::vector<Piece>& out) const {
  const MatchSet& set = sets_[normalized_set];
  size_t start_offset = 0;  // end of what has been emitted
  size_t search = 0;        // where the matcher resumes (after the raw match, like aho-corasick)
  size_t start, len, index;
  while (search < s.size() && set.find(s, search, start, len, index)) {
    size_t stop = start + len;
    search = stop;
    const AddedToken& tok = tokens_[index];
    if (tok.single_word) {
      bool start_ok = start == 0 || !ends_with_word(s.substr(0, start));
      bool stop_ok = stop == s.size() || !starts_with_word(s.substr(stop));
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(s.substr(0, start)), start_offset);
    if (tok.rstrip) stop += leading_space_len(s.substr(stop));
    start = std::max(start, start_offset);
    if (stop <= start_offset) continue;  // only inside a previous token's stripped spaces
    if (start_offset < start)
      out.push_back({std::string(s.substr(start_offset, start - start_offset)), -1});
    out.push_back({std::string(s.substr(start, stop - start)), tok.id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({std::string(s.substr(start_offset)), -1});
}

}  // namespace moetron::data
