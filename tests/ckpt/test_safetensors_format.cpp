// Torch-free safetensors format tests, built with ASan+UBSan: the documented byte layout,
// every class of malformed header (each refused with its key facts), the mmap reader, atomic
// file writing, and a seeded mini-fuzz that must only ever parse or throw moetron::Error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "moetron/ckpt/safetensors_format.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"

namespace moetron::ckpt {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// A file image: LE length + header JSON (as given, no padding) + data.
Bytes make_file(const std::string& json, const Bytes& data = {}, uint64_t claimed_n = ~0ull) {
  const uint64_t n = claimed_n == ~0ull ? json.size() : claimed_n;
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), json.begin(), json.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

SafetensorsHeader parse(const Bytes& file) {
  // Copy into an exact-size heap buffer so any read past the end is an ASan report.
  std::unique_ptr<uint8_t[]> exact(new uint8_t[file.size() + 0]);
  if (!file.empty()) std::memcpy(exact.get(), file.data(), file.size());
  return parse_safetensors_header(exact.get(), file.size(), file.size(), "f.safetensors");
}

// Asserts parsing throws moetron::Error whose message holds every fragment.
void expect_refused(const Bytes& file, const std::vector<std::string>& fragments) {
  try {
    parse(file);
    ADD_FAILURE() << "accepted a malformed file; expected: " << fragments.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("f.safetensors"), std::string::npos) << msg;
    for (const auto& f : fragments)
      EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t b, uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
}

TEST(SafetensorsFormat, ParsesValidHeader) {
  const std::string json =
      "{\"__metadata__\":{\"format\":\"pt\"}," + entry("w", "F32", "[2,2]", 0, 16) + "," +
      entry("b", "BF16", "[3]", 16, 22) + "," + entry("e", "U8", "[0]", 22, 22) + "}";
  const auto h = parse(make_file(json, Bytes(22, 7)));
  EXPECT_EQ(h.header_bytes, json.size());
  EXPECT_EQ(h.data_offset, 8 + json.size());
  EXPECT_EQ(h.data_bytes, 22u);
  ASSERT_EQ(h.tensors.size(), 3u);
  ASSERT_NE(h.find("b"), nullptr);
  EXPECT_EQ(h.find("b")->dtype, Dtype::kBF16);
  EXPECT_EQ(h.find("b")->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(h.find("b")->begin, 16u);
  EXPECT_EQ(h.find("w")->numel(), 4u);
  EXPECT_EQ(h.find("e")->nbytes(), 0u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.find("missing"), nullptr);
}

TEST(SafetensorsFormat, DtypeTableRoundTrips) {
  const std::vector<std::pair<std::string, size_t>> want = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U8", 1},      {"BOOL", 1}};
  for (const auto& [name, size] : want) {
    const auto d = parse_dtype(name);
    ASSERT_TRUE(d.has_value()) << name;
    EXPECT_EQ(dtype_name(*d), name);
    EXPECT_EQ(dtype_size(*d), size) << name;
  }
  EXPECT_FALSE(parse_dtype("F4").has_value());
  EXPECT_FALSE(parse_dtype("f32").has_value());
}

// The reference writer's layout: data sorted by dtype rank (8-byte types first) then name,
// compact JSON with __metadata__ first, spaces so that 8 + N is a multiple of 8.
TEST(SafetensorsFormat, EncodeMatchesDocumentedLayout) {
  const std::vector<TensorEntry> entries = {{"b", Dtype::kF32, {2}},  {"a", Dtype::kU8, {3}},
                                            {"c", Dtype::kI64, {}},   {"s", Dtype::kF32, {}},
                                            {"z", Dtype::kBF16, {2}}, {"q", Dtype::kBool, {0}}};
  const auto enc = encode_safetensors_header(entries, {{"format", "pt"}}, "x");
  std::string json = "{\"__metadata__\":{\"format\":\"pt\"}," + entry("c", "I64", "[]", 0, 8) +
                     "," + entry("b", "F32", "[2]", 8, 16) + "," + entry("s", "F32", "[]", 16, 20) +
                     "," + entry("z", "BF16", "[2]", 20, 24) + "," +
                     entry("a", "U8", "[3]", 24, 27) + "," + entry("q", "BOOL", "[0]", 27, 27) +
                     "}";
  json.append((8 - json.size() % 8) % 8, ' ');
  const Bytes want = make_file(json);
  EXPECT_EQ(enc.bytes, std::string(want.begin(), want.end()));
  EXPECT_EQ(enc.bytes.size() % 8, 0u);
  EXPECT_EQ(enc.data_bytes, 27u);
  EXPECT_EQ(enc.order, (std::vector<size_t>{2, 0, 3, 4, 1, 5}));
  // What we write, we read.
  Bytes file(enc.bytes.begin(), enc.bytes.end());
  file.resize(file.size() + enc.data_bytes);
  const auto h = parse(file);
  EXPECT_EQ(h.tensors.size(), 6u);
  EXPECT_EQ(h.find("a")->begin, 24u);
}

TEST(SafetensorsFormat, EncodeEmptyAndRefusesDuplicates) {
  const auto enc = encode_safetensors_header({}, {}, "x");
  EXPECT_EQ(enc.bytes, std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  EXPECT_THROW(
      encode_safetensors_header({{"a", Dtype::kF32, {1}}, {"a", Dtype::kI8, {1}}}, {}, "x"), Error);
  EXPECT_THROW(encode_safetensors_header({{"__metadata__", Dtype::kF32, {1}}}, {}, "x"), Error);
  EXPECT_THROW(encode_safetensors_header({{"", Dtype::kF32, {1}}}, {}, "x"), Error);
  EXPECT_THROW(encode_safetensors_header({{"a", Dtype::kF32, {-1}}}, {}, "x"), Error);
  EXPECT_THROW(encode_safetensors_header({{"a", Dtype::kF64, {1ll << 40, 1ll << 40}}}, {}, "x"),
               Error);
  EXPECT_THROW(encode_safetensors_header({{"bad\xff", Dtype::kF32, {1}}}, {}, "x"), Error);
}

// ---- malformed files -------------------------------------------------------------------

const std::string kOne = "{" + entry("t", "F32", "[2]", 0, 8) + "}";

TEST(SafetensorsMalformed, TooSmallForLength) {
  expect_refused(Bytes{1, 2, 3}, {"expected at least 8 bytes", "got 3"});
  expect_refused(Bytes{}, {"got 0"});
}

TEST(SafetensorsMalformed, TruncatedData) {
  Bytes f = make_file(kOne, Bytes(8, 0));
  f.pop_back();
  expect_refused(f, {"tensor 't'", "[0, 8]", "exceed the data region of 7 bytes"});
}

TEST(SafetensorsMalformed, TruncatedHeader) {
  Bytes f = make_file(kOne);
  f.resize(8 + kOne.size() / 2);
  expect_refused(f, {"header length N=" + std::to_string(kOne.size()), "exceeds the file"});
}

TEST(SafetensorsMalformed, HeaderLengthLies) {
  const Bytes data(8, 0);
  const Bytes ok = make_file(kOne, data);
  // Too big by one, 2^63, far larger than the file.
  expect_refused(make_file(kOne, data, ok.size() - 7),
                 {"exceeds the file", "expected at most " + std::to_string(ok.size() - 8)});
  expect_refused(make_file(kOne, data, 1ull << 63), {"N=9223372036854775808", "exceeds the file"});
  expect_refused(make_file(kOne, data, ~0ull - 1), {"exceeds the file"});
  // Smaller than the real header: the JSON is cut short.
  expect_refused(make_file(kOne, data, kOne.size() - 3), {"not valid JSON"});
}

TEST(SafetensorsMalformed, HeaderOverLimitAndPrefixTooShort) {
  // A 200 MB file of which only the first bytes are given: N is within the file but over the
  // 100 MB limit; no large buffer is needed because the parser must not look further.
  Bytes f = make_file(kOne, {}, 150'000'000);
  EXPECT_THROW(
      {
        try {
          parse_safetensors_header(f.data(), f.size(), 200'000'000, "f.safetensors");
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("exceeds the limit of 100000000"), std::string::npos)
              << e.what();
          throw;
        }
      },
      Error);
  Bytes g = make_file(kOne, {}, 1000);
  try {
    parse_safetensors_header(g.data(), g.size(), 5000, "f.safetensors");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated header: need 1008 bytes"), std::string::npos)
        << e.what();
  }
}

TEST(SafetensorsMalformed, Overlap) {
  const std::string j =
      "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}";
  expect_refused(make_file(j, Bytes(12, 0)), {"'a' [0, 8]", "'b' [4, 12]", "overlap"});
}

TEST(SafetensorsMalformed, Hole) {
  const std::string j =
      "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}";
  expect_refused(make_file(j, Bytes(12, 0)), {"[4, 8)", "hole before 'b'"});
  const std::string k = "{" + entry("a", "F32", "[1]", 4, 8) + "}";
  expect_refused(make_file(k, Bytes(8, 0)), {"[0, 4)", "hole before 'a'"});
  expect_refused(make_file(kOne, Bytes(12, 0)), {"12 bytes", "cover only 8", "4 trailing bytes"});
}

TEST(SafetensorsMalformed, OutOfBoundsAndReversedOffsets) {
  const std::string j = "{" + entry("a", "F32", "[4]", 0, 16) + "}";
  expect_refused(make_file(j, Bytes(8, 0)), {"tensor 'a'", "[0, 16]", "data region of 8 bytes"});
  const std::string r = "{" + entry("a", "F32", "[0]", 8, 4) + "}";
  expect_refused(make_file(r, Bytes(8, 0)), {"tensor 'a'", "[8, 4]", "end before begin"});
  const std::string huge =
      "{" + entry("a", "U8", "[1]", 18446744073709551615ull, 18446744073709551615ull) + "}";
  expect_refused(make_file(huge, Bytes(1, 0)), {"exceed the data region"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  const std::string j = "{" + entry("a", "F4", "[2]", 0, 1) + "}";
  expect_refused(make_file(j, Bytes(1, 0)),
                 {"tensor 'a'", "unknown dtype 'F4'", "F8_E4M3", "BOOL"});
  const std::string k = "{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,1]}}";
  expect_refused(make_file(k, Bytes(1, 0)), {"dtype must be a string", "number"});
}

TEST(SafetensorsMalformed, ShapeSizeMismatch) {
  const std::string j = "{" + entry("w", "F32", "[2,3]", 0, 20) + "}";
  expect_refused(make_file(j, Bytes(20, 0)),
                 {"tensor 'w'", "F32 shape [2, 3] needs 24 bytes", "span 20"});
}

TEST(SafetensorsMalformed, SizeOverflow) {
  const std::string j = "{" + entry("w", "F64", "[4294967296,4294967296]", 0, 8) + "}";
  expect_refused(make_file(j, Bytes(8, 0)), {"tensor 'w'", "overflows a 64-bit byte count"});
  const std::string k = "{" + entry("w", "F32", "[4611686018427387904]", 0, 8) + "}";
  expect_refused(make_file(k, Bytes(8, 0)), {"overflows"});
  // A zero dimension makes the product 0 even when the others would overflow.
  const std::string z =
      "{" + entry("w", "F64", "[9223372036854775807,9223372036854775807,0]", 0, 0) + "}";
  EXPECT_NO_THROW(parse(make_file(z)));
}

TEST(SafetensorsMalformed, BadShapes) {
  expect_refused(make_file("{" + entry("w", "F32", "[-2]", 0, 0) + "}"),
                 {"shape dimension 0", "non-negative", "-2"});
  expect_refused(make_file("{" + entry("w", "F32", "[1,2.5]", 0, 0) + "}"),
                 {"shape dimension 1", "2.5"});
  expect_refused(make_file("{" + entry("w", "F32", "[9223372036854775808]", 0, 0) + "}"),
                 {"shape dimension 0"});
  expect_refused(make_file("{" + entry("w", "F32", "[\"2\"]", 0, 0) + "}"), {"shape dimension 0"});
  expect_refused(
      make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,4]}}", Bytes(4, 0)),
      {"shape must be an array"});
}

TEST(SafetensorsMalformed, BadOffsetsAndMissingFields) {
  expect_refused(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}"),
                 {"data_offsets must be [begin, end]", "[0]"});
  expect_refused(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}"),
                 {"data_offsets must be"});
  expect_refused(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}"),
                 {"tensor 'w'", "missing 'data_offsets'"});
  expect_refused(make_file("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", Bytes(4, 0)),
                 {"missing 'dtype'"});
  expect_refused(make_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", Bytes(4, 0)),
                 {"missing 'shape'"});
  expect_refused(make_file("{\"w\":[1,2]}"), {"tensor 'w'", "expected an object", "array"});
}

TEST(SafetensorsMalformed, BadJson) {
  expect_refused(make_file("{\"w\":"), {"header", "not valid JSON"});
  expect_refused(make_file("{'w':1}"), {"not valid JSON"});
  expect_refused(make_file(""), {"not valid JSON"});
  expect_refused(make_file(std::string("{}\0\0", 4)), {"not valid JSON"});
  expect_refused(make_file("{\"w\xff\":1}"), {"not valid UTF-8", "0xff", "offset 3"});
  expect_refused(make_file("{\"\xc0\xaf\":1}"), {"not valid UTF-8"});  // overlong '/'
  expect_refused(make_file("{\"a\":{\"b\":{\"c\":{}}}}"), {"nested deeper than 3"});
}

TEST(SafetensorsMalformed, NonObject) {
  expect_refused(make_file("[]"), {"must be a JSON object", "array"});
  expect_refused(make_file("42"), {"must be a JSON object"});
  expect_refused(make_file("\"x\""), {"must be a JSON object", "string"});
}

TEST(SafetensorsMalformed, DuplicateKey) {
  const std::string j =
      "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}";
  expect_refused(make_file(j, Bytes(8, 0)), {"duplicate key 'a'"});
  const std::string k =
      "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  expect_refused(make_file(k, Bytes(4, 0)), {"duplicate key 'dtype'"});
  expect_refused(make_file("{\"__metadata__\":{\"x\":\"1\",\"x\":\"2\"}}"), {"duplicate key 'x'"});
}

TEST(SafetensorsMalformed, BadMetadata) {
  expect_refused(make_file("{\"__metadata__\":{\"step\":3}}"),
                 {"__metadata__ must map strings to strings", "key 'step'", "number"});
  expect_refused(make_file("{\"__metadata__\":[\"a\"]}"),
                 {"__metadata__ must be an object", "array"});
  expect_refused(make_file("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}"), {"key 'a'", "object"});
  EXPECT_NO_THROW(parse(make_file("{\"__metadata__\":{}}")));
}

// ---- mini-fuzz -------------------------------------------------------------------------

TEST(SafetensorsFuzz, MutatedFilesParseOrThrowError) {
  std::vector<TensorEntry> entries = {{"model.w", Dtype::kF32, {3, 5}},
                                      {"model.b", Dtype::kBF16, {7}},
                                      {"model.m", Dtype::kBool, {2, 2}},
                                      {"model.s", Dtype::kI64, {}},
                                      {"model.f8", Dtype::kF8E4M3, {4, 4}}};
  const auto enc = encode_safetensors_header(entries, {{"format", "pt"}, {"step", "12"}}, "fuzz");
  Bytes valid(enc.bytes.begin(), enc.bytes.end());
  for (uint64_t i = 0; i < enc.data_bytes; ++i) valid.push_back(static_cast<uint8_t>(i * 37));
  ASSERT_NO_THROW(parse(valid));

  std::mt19937_64 rng(20260101);
  int parsed = 0, refused = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    Bytes f = valid;
    const int kind = static_cast<int>(rng() % 5);
    if (kind == 0) {  // flip 1-4 random bits anywhere
      for (int k = 0, n = 1 + rng() % 4; k < n; ++k) f[rng() % f.size()] ^= 1u << (rng() % 8);
    } else if (kind == 1) {  // truncate
      f.resize(rng() % f.size());
    } else if (kind == 2) {  // random byte values inside the header
      for (int k = 0, n = 1 + rng() % 6; k < n; ++k)
        f[8 + rng() % (enc.bytes.size() - 8)] = rng() & 0xFF;
    } else if (kind == 3) {  // lie about the length
      const uint64_t n = rng() % 3 == 0 ? rng() : (enc.bytes.size() - 8) + (rng() % 64) - 32;
      for (int i = 0; i < 8; ++i) f[i] = static_cast<uint8_t>(n >> (8 * i));
    } else {  // swap a digit in the header for another (offsets / shapes / lengths)
      for (size_t p = 8; p < enc.bytes.size(); ++p) {
        if (f[p] >= '0' && f[p] <= '9' && rng() % 8 == 0) f[p] = '0' + rng() % 10;
      }
    }
    try {
      const auto h = parse(f);
      // Whatever parses must describe bytes inside the buffer.
      for (const auto& t : h.tensors) {
        ASSERT_LE(h.data_offset + t.end, f.size());
        uint64_t sum = 0;
        for (uint64_t b = t.begin; b < t.end; ++b) sum += f[h.data_offset + b];
        (void)sum;
      }
      ++parsed;
    } catch (const Error&) {
      ++refused;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": non-moetron exception: " << e.what();
    }
  }
  EXPECT_GT(parsed, 0);
  EXPECT_GT(refused, 1000);
}

// ---- mmap reader + atomic writes -------------------------------------------------------

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moetron_st_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(dir_.string());
    fs::create_directories(dir_);
  }
  void TearDown() override { remove_tree(dir_.string()); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static void write(const std::string& p, const Bytes& b) {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
  }
  static std::string slurp(const std::string& p) { return read_text_file(p); }
  fs::path dir_;
};

using SafetensorsFileTest = TempDir;

TEST_F(SafetensorsFileTest, MapsAndServesBytes) {
  const std::string j =
      "{" + entry("w", "I16", "[2]", 0, 4) + "," + entry("a", "U8", "[3]", 4, 7) + "}";
  write(path("m.safetensors"), make_file(j, Bytes{1, 0, 2, 0, 9, 8, 7}));
  auto f = SafetensorsFile::open(path("m.safetensors"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "w"}));
  EXPECT_TRUE(f.contains("w"));
  EXPECT_EQ(f.info("a").shape, (std::vector<int64_t>{3}));
  const ByteSpan s = f.bytes("a");
  ASSERT_EQ(s.size, 3u);
  EXPECT_EQ(s.data[0], 9);
  EXPECT_EQ(s.data[2], 7);
  SafetensorsFile moved = std::move(f);
  EXPECT_EQ(moved.bytes("w").data[2], 2);
  try {
    moved.info("nope");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'nope'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("m.safetensors"), std::string::npos);
  }
}

TEST_F(SafetensorsFileTest, OpenRefusesMissingEmptyAndDirectories) {
  EXPECT_THROW(SafetensorsFile::open(path("absent.safetensors")), Error);
  write(path("empty.safetensors"), {});
  try {
    SafetensorsFile::open(path("empty.safetensors"));
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("empty.safetensors: file too small"), std::string::npos);
  }
  EXPECT_THROW(SafetensorsFile::open(dir_.string()), Error);
  Bytes bad = make_file(kOne, Bytes(4, 0));
  write(path("bad.safetensors"), bad);
  EXPECT_THROW(SafetensorsFile::open(path("bad.safetensors")), Error);
}

using AtomicFileTest = TempDir;

TEST_F(AtomicFileTest, CommitReplacesAndAbandonKeepsOld) {
  const std::string p = path("f.txt");
  write_file_atomic(p, "old");
  {
    AtomicFileWriter w(p);
    w.write("half-written");
    EXPECT_TRUE(fs::exists(w.temp_path()));
  }  // no commit: dropped
  EXPECT_EQ(slurp(p), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
  write_file_atomic(p, "new");
  EXPECT_EQ(slurp(p), "new");
}

TEST_F(AtomicFileTest, FailureLeavesPreviousFileIntact) {
  const std::string p = path("f.txt");
  write_file_atomic(p, "old");
  // The temporary name is taken by a directory: creating it fails even for root.
  fs::create_directory(p + ".tmp." + std::to_string(::getpid()));
  try {
    write_file_atomic(p, "new");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create temporary file"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(slurp(p), "old");
  EXPECT_THROW(write_file_atomic(path("no/such/dir/f.txt"), "x"), Error);
}

}  // namespace
}  // namespace moetron::ckpt
