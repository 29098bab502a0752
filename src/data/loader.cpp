// BatchLoader: pretraining stream packing, SFT greedy sample packing, per-epoch shuffling and
// the JSON state that makes a resumed loader continue exactly where the saved one stopped.
#include "moetron/data/loader.h"

#include <algorithm>
#include <numeric>

#include <nlohmann/json.hpp>

#include "moetron/core/error.h"
#include "moetron/data/tasks.h"

namespace moetron::data {
namespace {

constexpr int kStateVersion = 1;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

const char* stage_name(config::Stage s) {
  return s == config::Stage::kPretrain ? "pretrain" : s == config::Stage::kSft ? "sft" : "grpo";
}

std::unique_ptr<JsonlFile> open_dataset(const config::DataConfig& data, config::Stage stage,
                                        Split split, int64_t seed,
                                        const ChatTemplateOptions& chat) {
  const std::string& path = split == Split::kTrain ? data.train_path : data.eval_path;
  RecordKind kind = stage == config::Stage::kPretrain ? RecordKind::kPretrain : RecordKind::kSft;
  if (!path.empty()) return std::make_unique<JsonlFile>(path, kind, data.skip_bad_lines);
  TaskData td = generate_task_data(data.task, task_options(data, static_cast<uint64_t>(seed),
                                                           chat.think_open, chat.think_close));
  std::vector<std::string>* lines = split == Split::kEval               ? &td.eval
                                    : stage == config::Stage::kPretrain ? &td.pretrain
                                                                        : &td.sft;
  std::string name =
      str_cat("builtin:", data.task, "/", split == Split::kEval ? "eval" : stage_name(stage));
  return std::make_unique<JsonlFile>(name, std::move(*lines), kind, data.skip_bad_lines);
}

}  // namespace

std::vector<int64_t> shuffled_order(int64_t n, int64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  uint64_t state = static_cast<uint64_t>(seed) * 0xD1B54A32D192ED03ull ^
                   (static_cast<uint64_t>(epoch) + 0x632BE59BD9B4E019ull);
  for (int64_t i = n - 1; i > 0; --i) {
    // Lemire's multiply-shift maps 64 random bits onto [0, i] without a modulo.
    auto j = static_cast<int64_t>(
        (static_cast<unsigned __int128>(splitmix64(state)) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

struct BatchLoader::SftTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;
};

BatchLoader::BatchLoader(const config::DataConfig& data, config::Stage stage,
                         const Tokenizer& tokenizer, int64_t micro_batch_size, int64_t seq_len,
                         int64_t seed, Split split, ChatTemplateOptions chat)
    : stage_(stage),
      split_(split),
      tokenizer_(tokenizer),
      micro_batch_size_(micro_batch_size),
      seq_len_(seq_len),
      seed_(seed),
      pack_(data.pack) {
  if (stage == config::Stage::kGrpo) {
    throw Error(ErrorKind::kUsage,
                "BatchLoader serves the pretrain and sft stages; GRPO reads its prompts with "
                "read_rl_prompts");
  }
  MOETRON_CHECK_CONFIG(micro_batch_size > 0, "train.micro_batch_size must be > 0, got ",
                       micro_batch_size);
  MOETRON_CHECK_CONFIG(seq_len > 1, "data.seq_len must be > 1, got ", seq_len);
  bos_id_ = tokenizer.bos_id();
  eos_id_ = tokenizer.eos_id();
  std::optional<int32_t> pad = tokenizer.pad_id();
  if (!pad) pad = eos_id_;
  if (!pad) {
    throw Error(ErrorKind::kConfig, str_cat("tokenizer ", tokenizer.name(),
                                            " has neither a pad nor an eos token to pad with"));
  }
  pad_id_ = *pad;
  file_ = open_dataset(data, stage, split, seed, chat);
  if (stage == config::Stage::kSft)
    chat_ = std::make_unique<ChatTemplate>(tokenizer, std::move(chat));
  stats_.num_records = file_->size();
  stats_.skipped_bad_lines = file_->skipped_bad_lines();
  start_epoch();
}

BatchLoader::~BatchLoader() = default;

void BatchLoader::start_epoch() {
  if (split_ == Split::kTrain) {
    order_ = shuffled_order(file_->size(), seed_, epoch_);
  } else {
    order_.resize(static_cast<size_t>(file_->size()));
    std::iota(order_.begin(), order_.end(), int64_t{0});
  }
  stats_.epoch = epoch_;
}

int64_t BatchLoader::record_index(int64_t cursor) const {
  return order_[static_cast<size_t>(cursor)];
}

void BatchLoader::advance_record() {
  doc_offset_ = 0;
  if (++cursor_ == file_->size()) {
    cursor_ = 0;
    ++epoch_;
    start_epoch();
  }
}

const std::vector<int32_t>& BatchLoader::current_doc() {
  int64_t idx = record_index(cursor_);
  if (cached_index_ != idx) {
    std::string text = parse_pretrain_record(file_->line(idx), file_->where(idx));
    doc_ = tokenizer_.encode(text, false);
    if (bos_id_) doc_.insert(doc_.begin(), *bos_id_);
    if (eos_id_) doc_.push_back(*eos_id_);
    cached_index_ = idx;
  }
  if (doc_offset_ > static_cast<int64_t>(doc_.size())) {
    throw Error(ErrorKind::kUsage, str_cat("loader state: offset ", doc_offset_, " is past the ",
                                           doc_.size(), " tokens of ", file_->where(idx),
                                           " (the dataset changed since the state was saved?)"));
  }
  return doc_;
}

const BatchLoader::SftTokens& BatchLoader::current_sample() {
  int64_t idx = record_index(cursor_);
  if (cached_index_ != idx || !sample_) {
    SftSample s = parse_sft_record(file_->line(idx), file_->where(idx));
    RenderedChat r = chat_->render(s.messages);
    sample_ = std::make_unique<SftTokens>(SftTokens{std::move(r.ids), std::move(r.loss_mask)});
    cached_index_ = idx;
  }
  return *sample_;
}

void BatchLoader::fill_pretrain_row(Batch& b, int64_t row) {
  const int64_t T = seq_len_;
  const size_t base = static_cast<size_t>(row * T);
  int64_t filled = 0;
  while (filled < T) {
    const std::vector<int32_t>& doc = current_doc();
    int64_t take = std::min(T - filled, static_cast<int64_t>(doc.size()) - doc_offset_);
    for (int64_t k = 0; k < take; ++k) {
      const size_t at = base + static_cast<size_t>(filled + k);
      b.input_ids[at] = b.labels[at] = doc[static_cast<size_t>(doc_offset_ + k)];
      b.position_ids[at] = filled + k;
      b.segment_ids[at] = 0;
    }
    filled += take;
    doc_offset_ += take;
    if (take > 0) {
      empty_run_ = 0;
    } else if (++empty_run_ > file_->size()) {
      throw Error(ErrorKind::kUsage, str_cat(file_->name(),
                                             ": every document tokenizes to "
                                             "nothing; no batch can be made"));
    }
    if (doc_offset_ == static_cast<int64_t>(doc.size())) {
      advance_record();
      if (!pack_ && filled > 0) break;  // one document per row: pad the rest
    }
  }
  stats_.tokens += filled;
  for (int64_t t = filled; t < T; ++t) {
    const size_t at = base + static_cast<size_t>(t);
    b.input_ids[at] = pad_id_;
    b.labels[at] = kIgnoreLabel;
    b.position_ids[at] = t - filled;
    b.segment_ids[at] = 1;
  }
}

void BatchLoader::fill_sft_row(Batch& b, int64_t row) {
  const int64_t T = seq_len_;
  const size_t base = static_cast<size_t>(row * T);
  int64_t filled = 0, segment = 0;
  while (filled < T) {
    const SftTokens& s = current_sample();
    const int64_t full = static_cast<int64_t>(s.ids.size());
    // Over-long samples are cut to one row (counted in stats().truncated_samples) rather than
    // split across rows, so no sample ever spans two rows.
    const int64_t len = std::min(full, T);
    if (filled + len > T) break;  // does not fit: it opens the next row
    for (int64_t k = 0; k < len; ++k) {
      const size_t at = base + static_cast<size_t>(filled + k);
      const auto tok = s.ids[static_cast<size_t>(k)];
      b.input_ids[at] = tok;
      // The first token of a segment is never a target: predicting it would read the previous
      // sample, which sample masking hides.
      b.labels[at] = (k > 0 && s.loss_mask[static_cast<size_t>(k)]) ? tok : kIgnoreLabel;
      b.position_ids[at] = k;
      b.segment_ids[at] = segment;
    }
    if (full > T) ++stats_.truncated_samples;
    filled += len;
    ++segment;
    advance_record();
    if (!pack_) break;
  }
  stats_.tokens += filled;
  for (int64_t t = filled; t < T; ++t) {
    const size_t at = base + static_cast<size_t>(t);
    b.input_ids[at] = pad_id_;
    b.labels[at] = kIgnoreLabel;
    b.position_ids[at] = t - filled;
    b.segment_ids[at] = segment;
  }
}

Batch BatchLoader::next() {
  Batch b;
  b.batch_size = micro_batch_size_;
  b.seq_len = seq_len_;
  const size_t n = static_cast<size_t>(micro_batch_size_ * seq_len_);
  b.input_ids.resize(n);
  b.labels.resize(n);
  b.position_ids.resize(n);
  b.segment_ids.resize(n);
  for (int64_t r = 0; r < micro_batch_size_; ++r) {
    if (stage_ == config::Stage::kPretrain) {
      fill_pretrain_row(b, r);
    } else {
      fill_sft_row(b, r);
    }
  }
  for (int64_t r = 0; r < micro_batch_size_; ++r) {
    for (int64_t t = 1; t < seq_len_; ++t) {
      if (b.labels[static_cast<size_t>(r * seq_len_ + t)] != kIgnoreLabel) ++b.num_target_tokens;
    }
  }
  ++stats_.batches;
  return b;
}

std::string BatchLoader::state() const {
  nlohmann::json j = {{"version", kStateVersion},
                      {"stage", stage_name(stage_)},
                      {"split", split_ == Split::kTrain ? "train" : "eval"},
                      {"seq_len", seq_len_},
                      {"micro_batch_size", micro_batch_size_},
                      {"seed", seed_},
                      {"pack", pack_},
                      {"num_records", file_->size()},
                      {"epoch", epoch_},
                      {"cursor", cursor_},
                      {"doc_offset", doc_offset_},
                      {"batches", stats_.batches},
                      {"tokens", stats_.tokens},
                      {"truncated_samples", stats_.truncated_samples}};
  return j.dump();
}

void BatchLoader::restore(const std::string& state) {
  auto bad = [](const std::string& what) {
    throw Error(ErrorKind::kUsage, str_cat("loader state: ", what));
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(state);
  } catch (const nlohmann::json::parse_error& e) {
    bad(str_cat("invalid JSON: ", e.what()));
  }
  if (!j.is_object()) bad("expected a JSON object");
  auto get_int = [&](const char* key) -> int64_t {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) bad(str_cat("missing integer \"", key, "\""));
    return it->get<int64_t>();
  };
  auto expect = [&](const char* key, const nlohmann::json& want) {
    auto it = j.find(key);
    if (it == j.end() || *it != want) {
      bad(str_cat("\"", key, "\" is ", it == j.end() ? "missing" : it->dump(),
                  " but this loader has ", want.dump(),
                  " (resume with the same data and batch settings)"));
    }
  };
  if (get_int("version") != kStateVersion)
    bad(str_cat("unsupported version ", j["version"].dump()));
  expect("stage", stage_name(stage_));
  expect("split", split_ == Split::kTrain ? "train" : "eval");
  expect("seq_len", seq_len_);
  expect("micro_batch_size", micro_batch_size_);
  expect("seed", seed_);
  expect("pack", pack_);
  expect("num_records", file_->size());
  int64_t epoch = get_int("epoch"), cursor = get_int("cursor"), offset = get_int("doc_offset");
  if (epoch < 0 || cursor < 0 || cursor >= file_->size() || offset < 0) {
    bad(str_cat("position out of range: epoch ", epoch, ", cursor ", cursor, ", doc_offset ",
                offset, " for ", file_->size(), " records"));
  }
  epoch_ = epoch;
  cursor_ = cursor;
  doc_offset_ = offset;
  stats_.batches = get_int("batches");
  stats_.tokens = get_int("tokens");
  stats_.truncated_samples = get_int("truncated_samples");
  cached_index_ = -1;
  sample_.reset();
  empty_run_ = 0;
  start_epoch();
}

LoaderStats BatchLoader::stats() const {
  return stats_;
}

}  // namespace moetron::data
