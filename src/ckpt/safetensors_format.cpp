// safetensors header parsing/validation, the reference writer's header layout, and the mmap
// reader. Torch-free so the same code runs under AddressSanitizer in test_safetensors_asan.
#include "moetron/ckpt/safetensors_format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>

#include "moetron/core/error.h"
#include "strict_json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; moetron reads it in place on little-endian hosts only"
#endif

namespace moetron::ckpt {

namespace {

struct DtypeRow {
  Dtype dtype;
  const char* name;
  size_t size;
  int rank;  // the reference writer lays out data by this rank, highest first
};

// Ranks follow the declaration order of the reference implementation's Dtype enum
// (BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < U16 < F16 < BF16 < I32 < U32 < F32 < F64 < I64),
// which is what its writer sorts on (descending), so our files come out byte-identical.
constexpr DtypeRow kDtypes[] = {
    {Dtype::kBool, "BOOL", 1, 0},      {Dtype::kU8, "U8", 1, 1},
    {Dtype::kI8, "I8", 1, 2},          {Dtype::kF8E5M2, "F8_E5M2", 1, 3},
    {Dtype::kF8E4M3, "F8_E4M3", 1, 4}, {Dtype::kI16, "I16", 2, 5},
    {Dtype::kF16, "F16", 2, 7},        {Dtype::kBF16, "BF16", 2, 8},
    {Dtype::kI32, "I32", 4, 9},        {Dtype::kF32, "F32", 4, 11},
    {Dtype::kF64, "F64", 8, 12},       {Dtype::kI64, "I64", 8, 13},
};

const DtypeRow& row(Dtype dtype) {
  for (const auto& r : kDtypes) {
    if (r.dtype == dtype) return r;
  }
  throw Error(str_cat("internal: dtype ", static_cast<int>(dtype), " has no table row"));
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += str_cat(i ? ", " : "", shape[i]);
  return s + "]";
}

// numel * element size, or nullopt on 64-bit overflow. A zero dimension makes the product 0
// whatever the other dimensions are, independent of their order.
std::optional<uint64_t> checked_nbytes(const std::vector<int64_t>& shape, size_t elem) {
  for (int64_t d : shape) {
    if (d == 0) return 0;
  }
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(elem), &n)) return std::nullopt;
  return n;
}

TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry, std::string_view file,
                       uint64_t data_bytes) {
  const std::string where = str_cat(file, ": tensor '", name, "'");
  if (!entry.is_object()) {
    throw Error(str_cat(where, ": expected an object with dtype, shape and data_offsets, got ",
                        detail::json_type_name(entry)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) throw Error(str_cat(where, ": missing '", key, "'"));
  }
  TensorInfo info;
  info.name = name;

  const auto& dtype = entry.at("dtype");
  if (!dtype.is_string()) {
    throw Error(str_cat(where, ": dtype must be a string, got ", detail::json_type_name(dtype)));
  }
  const auto parsed = parse_dtype(dtype.get_ref<const std::string&>());
  if (!parsed) {
    throw Error(str_cat(where, ": unknown dtype '", dtype.get_ref<const std::string&>(),
                        "'; expected one of ", supported_dtype_names()));
  }
  info.dtype = *parsed;

  const auto& shape = entry.at("shape");
  if (!shape.is_array()) {
    throw Error(str_cat(where, ": shape must be an array, got ", detail::json_type_name(shape)));
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    const auto& d = shape[i];
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw Error(str_cat(where, ": shape dimension ", i,
                          " must be a non-negative 64-bit integer, got ", d.dump()));
    }
    info.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }

  const auto& offsets = entry.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    throw Error(str_cat(where,
                        ": data_offsets must be [begin, end] with non-negative integers, got ",
                        offsets.dump()));
  }
  info.begin = offsets[0].get<uint64_t>();
  info.end = offsets[1].get<uint64_t>();
  if (info.end < info.begin) {
    throw Error(
        str_cat(where, ": data_offsets [", info.begin, ", ", info.end, "] end before begin"));
  }
  if (info.end > data_bytes) {
    throw Error(str_cat(where, ": data_offsets [", info.begin, ", ", info.end,
                        "] exceed the data region of ", data_bytes, " bytes"));
  }
  const auto want = checked_nbytes(info.shape, dtype_size(info.dtype));
  if (!want) {
    throw Error(str_cat(where, ": ", dtype_name(info.dtype), " shape ", shape_str(info.shape),
                        " overflows a 64-bit byte count"));
  }
  if (*want != info.nbytes()) {
    throw Error(str_cat(where, ": ", dtype_name(info.dtype), " shape ", shape_str(info.shape),
                        " needs ", *want, " bytes but data_offsets [", info.begin, ", ", info.end,
                        "] span ", info.nbytes()));
  }
  return info;
}

std::map<std::string, std::string> parse_metadata(const nlohmann::json& meta,
                                                  std::string_view file) {
  if (!meta.is_object()) {
    throw Error(str_cat(file, ": __metadata__ must be an object mapping strings to strings, got ",
                        detail::json_type_name(meta)));
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : meta.items()) {
    if (!value.is_string()) {
      throw Error(str_cat(file, ": __metadata__ must map strings to strings; key '", key,
                          "' holds ", detail::json_type_name(value)));
    }
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

}  // namespace

std::string_view dtype_name(Dtype dtype) {
  return row(dtype).name;
}

std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const auto& r : kDtypes) {
    if (name == r.name) return r.dtype;
  }
  return std::nullopt;
}

size_t dtype_size(Dtype dtype) {
  return row(dtype).size;
}

std::string supported_dtype_names() {
  std::string s;
  for (const auto& r : kDtypes) s += str_cat(s.empty() ? "" : ", ", r.name);
  return s;
}

uint64_t TensorInfo::numel() const {
  const auto n = checked_nbytes(shape, 1);
  if (!n) throw Error(str_cat("tensor '", name, "': shape ", shape_str(shape), " overflows"));
  return *n;
}

const TensorInfo* SafetensorsHeader::find(std::string_view name) const {
  const auto it = index.find(std::string(name));
  return it == index.end() ? nullptr : &tensors[it->second];
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                                           std::string_view file) {
  if (size > file_size) {
    throw Error(str_cat(file, ": internal: ", size, " bytes given for a file of ", file_size));
  }
  if (file_size < 8) {
    throw Error(str_cat(file,
                        ": file too small for a safetensors header: expected at least 8 "
                        "bytes, got ",
                        file_size));
  }
  if (size < 8) {
    throw Error(str_cat(file, ": truncated header: need 8 bytes for the length, only ", size,
                        " available"));
  }
  SafetensorsHeader h;
  h.header_bytes = read_le_u64(bytes);
  if (h.header_bytes > file_size - 8) {
    throw Error(str_cat(file, ": header length N=", h.header_bytes,
                        " exceeds the file: expected at most ", file_size - 8,
                        " bytes after the 8-byte length (file has ", file_size, " bytes)"));
  }
  if (h.header_bytes > kMaxHeaderBytes) {
    throw Error(str_cat(file, ": header length N=", h.header_bytes, " exceeds the limit of ",
                        kMaxHeaderBytes, " bytes"));
  }
  h.data_offset = 8 + h.header_bytes;
  h.data_bytes = file_size - h.data_offset;
  if (size < h.data_offset) {
    throw Error(str_cat(file, ": truncated header: need ", h.data_offset, " bytes, only ", size,
                        " available"));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), h.header_bytes);
  // Levels: header object, tensor entry / __metadata__, shape / offsets arrays.
  const nlohmann::json root = detail::parse_json_strict(text, str_cat(file, ": header"), 3);
  if (!root.is_object()) {
    throw Error(
        str_cat(file, ": header must be a JSON object, got ", detail::json_type_name(root)));
  }
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      h.metadata = parse_metadata(entry, file);
      continue;
    }
    h.tensors.push_back(parse_entry(name, entry, file, h.data_bytes));
  }

  // The data region must be tiled exactly: sorted by offsets, each range starts where the
  // previous one ended (zero-size tensors may sit at any boundary).
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < cursor) {
      throw Error(str_cat(file, ": tensors '", prev->name, "' [", prev->begin, ", ", prev->end,
                          "] and '", t.name, "' [", t.begin, ", ", t.end, "] overlap"));
    }
    if (t.begin > cursor) {
      throw Error(str_cat(file, ": data bytes [", cursor, ", ", t.begin,
                          ") belong to no tensor (hole before '", t.name,
                          "'); the data region must be fully covered"));
    }
    cursor = t.end;
    prev = &t;
  }
  if (cursor != h.data_bytes) {
    throw Error(str_cat(file, ": data region has ", h.data_bytes, " bytes but tensors cover only ",
                        cursor, " (", h.data_bytes - cursor,
                        " trailing bytes belong to no tensor)"));
  }
  for (size_t i = 0; i < h.tensors.size(); ++i) h.index.emplace(h.tensors[i].name, i);
  return h;
}

EncodedHeader encode_safetensors_header(const std::vector<TensorEntry>& entries,
                                        const std::map<std::string, std::string>& metadata,
                                        std::string_view file) {
  EncodedHeader out;
  out.order.resize(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) out.order[i] = i;
  std::sort(out.order.begin(), out.order.end(), [&](size_t a, size_t b) {
    const int ra = row(entries[a].dtype).rank, rb = row(entries[b].dtype).rank;
    return ra != rb ? ra > rb : entries[a].name < entries[b].name;
  });

  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata.empty()) root["__metadata__"] = metadata;
  std::unordered_set<std::string> seen;
  uint64_t offset = 0;
  for (size_t k = 0; k < out.order.size(); ++k) {
    const TensorEntry& e = entries[out.order[k]];
    if (e.name.empty() || e.name == "__metadata__") {
      throw Error(str_cat(file, ": invalid tensor name '", e.name, "'"));
    }
    if (!seen.insert(e.name).second) {
      throw Error(str_cat(file, ": tensor '", e.name, "' given twice"));
    }
    for (int64_t d : e.shape) {
      if (d < 0) {
        throw Error(str_cat(file, ": tensor '", e.name, "': negative dimension in shape ",
                            shape_str(e.shape)));
      }
    }
    const auto nbytes = checked_nbytes(e.shape, dtype_size(e.dtype));
    if (!nbytes || *nbytes > std::numeric_limits<uint64_t>::max() - offset) {
      throw Error(str_cat(file, ": tensor '", e.name, "': byte size overflows"));
    }
    TensorInfo info{e.name, e.dtype, e.shape, offset, offset + *nbytes};
    root[e.name] = {{"dtype", dtype_name(e.dtype)},
                    {"shape", e.shape},
                    {"data_offsets", {info.begin, info.end}}};
    offset = info.end;
    out.layout.push_back(std::move(info));
  }
  out.data_bytes = offset;

  std::string json;
  try {
    json = root.dump();  // compact, raw UTF-8, like the reference's serde_json::to_string
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(file, ": tensor names and metadata must be valid UTF-8: ", e.what()));
  }
  json.append((8 - json.size() % 8) % 8, ' ');
  out.bytes.resize(8);
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.bytes[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.bytes += json;
  return out;
}

// ---- SafetensorsFile ---------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(str_cat(path, ": cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str_cat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    parse_safetensors_header(nullptr, 0, size, path);  // throws "file too small"
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file referenced
  if (map == MAP_FAILED) throw Error(str_cat(path, ": mmap failed: ", std::strerror(err)));
  f.map_ = map;
  f.map_size_ = size;
  f.header_ = parse_safetensors_header(static_cast<const uint8_t*>(map), size, size, path);
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_size_(std::exchange(other.map_size_, 0)),
      header_(std::move(other.header_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    header_ = std::move(other.header_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  close();
}

void SafetensorsFile::close() noexcept {
  if (map_ != nullptr) ::munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(header_.tensors.size());
  for (const auto& t : header_.tensors) out.push_back(t.name);
  std::sort(out.begin(), out.end());
  return out;
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const TensorInfo* t = header_.find(name);
  if (t == nullptr) {
    throw Error(str_cat(path_, ": no tensor named '", name, "' (file holds ",
                        header_.tensors.size(), " tensors)"));
  }
  return *t;
}

ByteSpan SafetensorsFile::bytes(std::string_view name) const {
  const TensorInfo& t = info(name);
  const auto* base = static_cast<const uint8_t*>(map_);
  return ByteSpan{base + header_.data_offset + t.begin, static_cast<size_t>(t.nbytes())};
}

}  // namespace moetron::ckpt
