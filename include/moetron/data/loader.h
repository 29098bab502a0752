// BatchLoader: packs a JSONL dataset (or a built-in task) into micro-batches for pretraining
// (one concatenated token stream cut into rows, no cross-document masking) or SFT (whole samples
// packed greedily, one segment each), with per-epoch seeded shuffling and an exact resumable state.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moetron/config/config.h"
#include "moetron/data/batch.h"
#include "moetron/data/chat_template.h"
#include "moetron/data/dataset.h"
#include "moetron/data/tokenizer.h"

namespace moetron::data {

enum class Split { kTrain, kEval };

struct LoaderStats {
  int64_t num_records = 0;        // valid records in the dataset
  int64_t skipped_bad_lines = 0;  // with DataConfig::skip_bad_lines
  int64_t epoch = 0;              // epochs started so far minus one (0 in the first)
  int64_t batches = 0;            // batches returned (since the start, across resumes)
  int64_t tokens = 0;             // non-padding tokens returned
  int64_t truncated_samples = 0;  // SFT samples longer than seq_len, cut to seq_len
};

class BatchLoader {
 public:
  // Reads data.train_path (split kTrain) or data.eval_path (kEval); an empty path uses the
  // built-in task data.task generated in memory (TaskDataOptions defaults, seeded by `seed`).
  // stage: kPretrain or kSft (kGrpo reads prompts with read_rl_prompts instead; kUsage error).
  // `seed` drives the shuffle (pass DataConfig::shuffle_seed); the train split is reshuffled
  // every epoch, the eval split keeps file order. data.pack = false puts one document (its
  // chunks, the last one padded) or one sample per row. data.seq_len is ignored in favour of
  // `seq_len`. `chat` renders SFT samples (loss_on_prompt, token strings). Keeps a reference to
  // `tokenizer`, which must outlive the loader.
  BatchLoader(const config::DataConfig& data, config::Stage stage, const Tokenizer& tokenizer,
              int64_t micro_batch_size, int64_t seq_len, int64_t seed, Split split,
              ChatTemplateOptions chat = {});
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next micro-batch; epochs roll over without end.
  Batch next();

  // JSON with the position (epoch, cursor, offset into the current document), counters, and a
  // fingerprint (stage, split, seq_len, micro_batch_size, seed, num_records) that restore()
  // checks. Restoring into a fresh loader built with the same arguments continues exactly.
  std::string state() const;
  // Throws moetron::Error (kUsage) when the state is malformed or from a different setup.
  void restore(const std::string& state);

  LoaderStats stats() const;
  const JsonlFile& dataset() const { return *file_; }

 private:
  void fill_pretrain_row(Batch& b, int64_t row);
  void fill_sft_row(Batch& b, int64_t row);
  void start_epoch();
  void advance_record();
  int64_t record_index(int64_t cursor) const;
  const std::vector<int32_t>& current_doc();
  struct SftTokens;
  const SftTokens& current_sample();

  config::Stage stage_;
  Split split_;
  const Tokenizer& tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;  // SFT only (its token strings need not exist otherwise)
  int64_t micro_batch_size_, seq_len_, seed_;
  bool pack_;
  std::unique_ptr<JsonlFile> file_;
  int32_t pad_id_;
  std::optional<int32_t> bos_id_, eos_id_;

  // Position: record order of epoch_ (a permutation), the record at cursor_, and for
  // pretraining how many of its tokens are already emitted.
  int64_t epoch_ = 0;
  int64_t cursor_ = 0;
  int64_t doc_offset_ = 0;
  std::vector<int64_t> order_;
  // Cache of the tokenized record at cursor_ (not state: rebuilt from the position).
  int64_t cached_index_ = -1;
  std::vector<int32_t> doc_;
  std::unique_ptr<SftTokens> sample_;
  int64_t empty_run_ = 0;  // records in a row without a token (guards an endless loop)

  LoaderStats stats_;
};

// The shuffle: a Fisher-Yates permutation of [0, n) from a splitmix64 stream of (seed, epoch),
// the same on every platform (std::shuffle is not).
std::vector<int64_t> shuffled_order(int64_t n, int64_t seed, int64_t epoch);

}  // namespace moetron::data
