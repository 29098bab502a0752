// BPE model: parsing of vocab/merges and HF's merge loop (see bpe_model.h).
#include "bpe_model.h"

#include <queue>

#include "byte_level.h"
#include "moetron/core/error.h"
#include "unicode.h"

namespace moetron::data {
namespace {

constexpr size_t kCacheCapacity = 1 << 18;
constexpr size_t kMaxCachedWordBytes = 256;

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  bool alive;
};

struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
  // std::priority_queue is a max-heap: "less" means a larger (rank, pos).
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

BpeModel::BpeModel(const JsonView& model, bool byte_level) : byte_level_(byte_level) {
  std::string type = model.find("type") ? model.at("type").str() : "BPE";
  if (type != "BPE") {
    model.at("type").fail(str_cat("unsupported model type '", type, "' (supported: BPE)"));
  }
  if (auto d = model.find("dropout")) {
    if (!d->raw().is_number() || d->raw().get<double>() != 0.0) {
      d->fail("BPE dropout is not supported (set it to null)");
    }
  }
  if (model.flag("byte_fallback", false)) {
    model.at("byte_fallback").fail("byte_fallback is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (auto v = model.find(key)) {
      if (!v->str().empty()) v->fail("is not supported (only null or \"\")");
    }
  }
  ignore_merges_ = model.flag("ignore_merges", false);
  fuse_unk_ = model.flag("fuse_unk", false);

  JsonView vocab = model.at("vocab");
  vocab.expect_object();
  vocab_.reserve(vocab.size());
  for (auto it = vocab.raw().begin(); it != vocab.raw().end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX) {
      JsonView(it.value(), vocab.path() + "." + it.key(), vocab.file())
          .fail("expected a non-negative 32-bit token id");
    }
    vocab_.emplace(it.key(), static_cast<int32_t>(it.value().get<int64_t>()));
  }
  if (auto unk = model.find("unk_token")) {
    auto it = vocab_.find(unk->str());
    if (it == vocab_.end()) unk->fail(str_cat("unk_token '", unk->str(), "' is not in the vocab"));
    unk_id_ = it->second;
  }
  if (byte_level_) {
    std::string raw;
    for (const auto& [tok, id] : vocab_) {
      if (byte_level::decode(tok, raw)) raw_vocab_.emplace(raw, id);
    }
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      unicode::append_utf8(ch, byte_level::byte_to_char(static_cast<unsigned char>(b)));
      auto it = vocab_.find(ch);
      byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    }
  }

  JsonView merges = model.at("merges");
  merges.expect_array();
  merges_.reserve(merges.size() * 2);
  for (size_t i = 0; i < merges.size(); ++i) {
    JsonView m = merges.at(i);
    std::string left, right;
    if (m.is_string()) {
      // Legacy "a b" form: exactly one space separates the two parts.
      std::string s = m.str();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        m.fail(str_cat("expected \"left right\" with one space, got '", s, "'"));
      }
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m.at(size_t{0}).str();
      right = m.at(size_t{1}).str();
    } else {
      m.fail("expected a merge as \"a b\" or [\"a\", \"b\"]");
    }
    auto a = vocab_.find(left), b = vocab_.find(right), ab = vocab_.find(left + right);
    if (a == vocab_.end() || b == vocab_.end() || ab == vocab_.end()) {
      m.fail(str_cat("merge '", left, "' + '", right, "' uses a token missing from the vocab"));
    }
    // Later duplicates win, as in HF's map built from the list.
    merges_[pair_key(a->second, b->second)] = {static_cast<int32_t>(i), ab->second};
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto& table = byte_level_ ? raw_vocab_ : vocab_;
    auto it = table.find(std::string(word));
    if (it != table.end()) {
      out.push_back(it->second);
      return;
    }
  }
  bool cacheable = word.size() <= kMaxCachedWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::shared_lock<std::shared_mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t before = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock<std::shared_mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.emplace(std::move(key), std::vector<int32_t>(out.begin() + before, out.end()));
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  // Initial symbols: one per byte (byte-level) or per character; unknown ones become unk
  // (fused when fuse_unk) or vanish when the model has no unk token, as in HF.
  int32_t pending_unk = -1;
  auto push = [&](int32_t id) {
    auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  };
  auto add = [&](int32_t id) {
    if (id >= 0) {
      if (pending_unk >= 0) push(pending_unk);
      pending_unk = -1;
      push(id);
    } else if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) push(pending_unk);
      pending_unk = unk_id_;
    }
  };
  if (byte_level_) {
    for (unsigned char b : word) add(byte_ids_[b]);
  } else {
    size_t pos = 0;
    while (pos < word.size()) {
      size_t start = pos;
      pos += unicode::utf8_len(static_cast<unsigned char>(word[pos]));
      auto it = vocab_.find(std::string(word.substr(start, pos - start)));
      add(it == vocab_.end() ? -1 : it->second);
    }
  }
  if (pending_unk >= 0) push(pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::priority_queue<Candidate> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    auto it = merges_.find(pair_key(symbols[i].id, symbols[i + 1].id));
    if (it != merges_.end()) {
      queue.push({it->second.first, static_cast<int32_t>(i), it->second.second});
    }
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    int32_t next_pos = cur.next;
    Symbol right = symbols[next_pos];
    // Stale entries: the pair at this position changed since it was queued. HF compares only
    // the merged id, so do the same.
    auto it = merges_.find(pair_key(cur.id, right.id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;
    cur.id = top.new_id;
    cur.next = right.next;
    symbols[next_pos].alive = false;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      auto p = merges_.find(pair_key(symbols[cur.prev].id, cur.id));
      if (p != merges_.end()) queue.push({p->second.first, cur.prev, p->second.second});
    }
    if (cur.next >= 0) {
      auto n = merges_.find(pair_key(cur.id, symbols[cur.next].id));
      if (n != merges_.end()) queue.push({n->second.first, top.pos, n->second.second});
    }
  }
  for (const auto& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

}  // namespace moetron::data
