// The safetensors file format without LibTorch: dtypes, a validating header parser that never
// reads outside the bytes it is given, the reference writer's header layout, and an mmap reader.
// Layout: u64 little-endian N | N bytes of UTF-8 JSON (space-padded) | data region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moetron::ckpt {

// The dtypes moetron reads and writes (names as in the reference implementation).
enum class Dtype { kF64, kF32, kF16, kBF16, kF8E4M3, kF8E5M2, kI64, kI32, kI16, kI8, kU8, kBool };

std::string_view dtype_name(Dtype dtype);  // "F32", "F8_E4M3", ...
std::optional<Dtype> parse_dtype(std::string_view name);
size_t dtype_size(Dtype dtype);  // bytes per element
// Comma-separated list of every supported dtype name, for error messages.
std::string supported_dtype_names();

// Headers larger than this are refused (the reference implementation's limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data region
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const;  // product of shape (1 for a scalar); validated not to overflow
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;                      // N
  uint64_t data_offset = 0;                       // 8 + N: where the data region starts in the file
  uint64_t data_bytes = 0;                        // size of the data region
  std::vector<TensorInfo> tensors;                // in data-offset order
  std::map<std::string, std::string> metadata;    // __metadata__ (empty when absent)
  std::unordered_map<std::string, size_t> index;  // name -> position in `tensors`

  const TensorInfo* find(std::string_view name) const;
};

// Parses and validates the header of a file of `file_size` bytes whose first `size` bytes are
// `bytes` (size <= file_size; the whole file, or at least 8 + N bytes). Refuses, naming `file`,
// the tensor and what was expected: lengths that lie, N > kMaxHeaderBytes, non-UTF-8 or invalid
// JSON, duplicate keys, a non-object, missing/ill-typed fields, unknown dtypes, bad shapes,
// byte sizes != numel * element size (overflow-checked), offsets out of the data region,
// overlapping ranges or holes (the data region must be covered exactly), bad __metadata__.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                                           std::string_view file);

// One tensor to be written: its header entry and the size of its data.
struct TensorEntry {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
};

// What the reference writer produces for `entries`: the order the data is laid out in (dtype
// rank descending - 8-byte types first - then name, as the reference sorts), each entry's
// offsets, and the 8 + N header bytes (compact JSON, __metadata__ first, padded with spaces so
// the data region starts at a multiple of 8). Throws on duplicate/empty names or overflow.
struct EncodedHeader {
  std::string bytes;               // length prefix + padded JSON
  std::vector<size_t> order;       // indices into `entries` in data order
  std::vector<TensorInfo> layout;  // same order as `order`, with offsets
  uint64_t data_bytes = 0;
};
EncodedHeader encode_safetensors_header(const std::vector<TensorEntry>& entries,
                                        const std::map<std::string, std::string>& metadata,
                                        std::string_view file);

struct ByteSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// A read-only memory mapping of a validated safetensors file. The mapping is closed in the
// destructor; spans from bytes() are valid while the object lives. Note: like any mmap, a file
// truncated by another process while mapped makes later reads fault (SIGBUS).
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return map_size_; }
  std::vector<std::string> names() const;  // sorted by name
  bool contains(std::string_view name) const { return header_.find(name) != nullptr; }
  const TensorInfo& info(std::string_view name) const;  // throws naming the file and tensor
  ByteSpan bytes(std::string_view name) const;          // raw little-endian data
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorsHeader& header() const { return header_; }

 private:
  SafetensorsFile() = default;
  void close() noexcept;

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  SafetensorsHeader header_;
};

}  // namespace moetron::ckpt
