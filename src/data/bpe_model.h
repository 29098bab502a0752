// The BPE model of HF tokenizer.json: vocab, ranked merges and HF's exact merge order
// (a min-heap on (rank, position) over a linked list of symbols), with a shared word cache.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "json_view.h"

namespace moetron::data {

class BpeModel {
 public:
  // Parses model.{vocab, merges, ignore_merges, unk_token, fuse_unk, ...}; options that change
  // the result and are not implemented (dropout, byte_fallback, subword prefix/suffix) fail.
  // `byte_level`: words arrive as raw bytes and each byte starts as its GPT-2 character.
  BpeModel(const JsonView& model, bool byte_level);

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  // Number of vocab entries (HF numbers new added tokens from it).
  size_t size() const { return vocab_.size(); }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  bool byte_level_;
  bool ignore_merges_ = false;
  bool fuse_unk_ = false;
  int32_t unk_id_ = -1;
  std::unordered_map<std::string, int32_t> vocab_;
  // Byte-level mode: the same vocab keyed by raw bytes (for ignore_merges lookups).
  std::unordered_map<std::string, int32_t> raw_vocab_;
  std::array<int32_t, 256> byte_ids_{};
  // (left id << 32 | right id) -> (rank, merged id).
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;

  // Words seen before; results are deterministic so the cache only saves time.
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace moetron::data
