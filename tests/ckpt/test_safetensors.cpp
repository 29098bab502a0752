// safetensors torch layer: every dtype round trips bit-exactly, files match the reference
// layout byte for byte (hand-built, and the Python `safetensors` package when the venv has it),
// atomic saves leave the previous file intact on failure.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "moetron/ckpt/safetensors.h"
#include "moetron/core/error.h"
#include "moetron/core/files.h"
#include "support/venv_python.h"

namespace moetron::ckpt {
namespace {

namespace fs = std::filesystem;

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto ca = a.contiguous(), cb = b.contiguous();
  return ca.nbytes() == cb.nbytes() &&
         (ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0);
}

class SafetensorsTorch : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moetron_stt_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(dir_.string());
    fs::create_directories(dir_);
  }
  void TearDown() override { remove_tree(dir_.string()); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

NamedTensors every_dtype() {
  torch::manual_seed(7);
  const auto x = torch::randn({3, 5}) * 4;
  return {
      {"f64", torch::randn({2, 3}, torch::kFloat64)},
      {"f32", torch::randn({4})},
      {"f16", x.to(torch::kFloat16)},
      {"bf16", x.to(torch::kBFloat16)},
      {"f8_e4m3", x.to(torch::kFloat8_e4m3fn)},
      {"f8_e5m2", x.to(torch::kFloat8_e5m2)},
      {"i64", torch::randint(-(1ll << 40), 1ll << 40, {5}, torch::kInt64)},
      {"i32", torch::randint(-100000, 100000, {2, 2}, torch::kInt32)},
      {"i16", torch::randint(-30000, 30000, {3}, torch::kInt16)},
      {"i8", torch::randint(-128, 127, {7}, torch::kInt8)},
      {"u8", torch::randint(0, 255, {2, 1, 3}, torch::kUInt8)},
      {"bool", torch::randint(0, 2, {6}, torch::kInt64).to(torch::kBool)},
      {"scalar", torch::tensor(3.5)},
      {"empty", torch::zeros({0, 4})},
  };
}

TEST_F(SafetensorsTorch, EveryDtypeRoundTripsBitExactly) {
  const auto tensors = every_dtype();
  save_safetensors(path("all.safetensors"), tensors, {{"format", "pt"}});
  const auto loaded = load_safetensors(path("all.safetensors"));
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(loaded.count(name)) << name;
    EXPECT_TRUE(same_bytes(loaded.at(name), t)) << name;
  }
  // Non-trivial inputs.
  EXPECT_GT(tensors[4].second.to(torch::kFloat32).abs().sum().item<float>(), 1.0f);
  const auto f = SafetensorsFile::open(path("all.safetensors"));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.info("f8_e4m3").dtype, Dtype::kF8E4M3);
  EXPECT_EQ(read_tensor(f, "f8_e5m2").scalar_type(), torch::kFloat8_e5m2);
  EXPECT_EQ(read_tensor(f, "scalar").dim(), 0);
}

TEST_F(SafetensorsTorch, ByteExactAgainstDocumentedLayout) {
  // F32 [2] = {1, 2}; I64 [] = 5; U8 [3] = {1, 2, 3}.
  save_safetensors(path("k.safetensors"),
                   {{"b", torch::tensor({1.0f, 2.0f})},
                    {"a", torch::tensor({1, 2, 3}, torch::kUInt8)},
                    {"c", torch::tensor(int64_t{5})}},
                   {{"format", "pt"}});
  std::string json =
      R"({"__metadata__":{"format":"pt"},"c":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("a":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}})";
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string want(8, '\0');
  for (int i = 0; i < 8; ++i) want[i] = static_cast<char>((json.size() >> (8 * i)) & 0xFF);
  want += json;
  const unsigned char data[] = {5, 0, 0,    0,    0, 0, 0, 0,     // I64 5
                                0, 0, 0x80, 0x3F, 0, 0, 0, 0x40,  // F32 1.0, 2.0
                                1, 2, 3};
  want.append(reinterpret_cast<const char*>(data), sizeof(data));
  EXPECT_EQ(read_text_file(path("k.safetensors")), want);
}

TEST_F(SafetensorsTorch, NonContiguousAndBoolBytesAreNormalised) {
  const auto t = torch::arange(12, torch::kFloat32).reshape({3, 4}).t();
  save_safetensors(path("nc.safetensors"), {{"t", t}});
  EXPECT_TRUE(torch::equal(load_safetensors(path("nc.safetensors")).at("t"), t));

  // A BOOL byte other than 0/1 (possible in a foreign file) reads as true, never as UB.
  save_safetensors(path("b.safetensors"), {{"m", torch::tensor({true, false, true})}});
  std::string bytes = read_text_file(path("b.safetensors"));
  bytes[bytes.size() - 1] = 7;
  write_file_atomic(path("b.safetensors"), bytes);
  const auto m = load_safetensors(path("b.safetensors")).at("m");
  EXPECT_TRUE(torch::equal(m, torch::tensor({true, false, true})));
}

TEST_F(SafetensorsTorch, RefusesBadInputs) {
  EXPECT_THROW(save_safetensors(path("x"), {{"a", torch::zeros({1})}, {"a", torch::zeros({1})}}),
               Error);
  try {
    save_safetensors(path("x"), {{"c", torch::zeros({2}, torch::kComplexFloat)}});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'c'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cannot be stored"), std::string::npos) << e.what();
  }
  EXPECT_THROW(save_safetensors(path("x"), {{"u", torch::Tensor()}}), Error);
  EXPECT_FALSE(fs::exists(path("x")));
  EXPECT_THROW(load_safetensors(path("absent")), Error);
}

TEST_F(SafetensorsTorch, FailedSaveLeavesPreviousFileIntact) {
  const std::string p = path("model.safetensors");
  save_safetensors(p, {{"w", torch::ones({4})}});
  const std::string before = read_text_file(p);
  // Failure before any byte is written (unsupported dtype).
  EXPECT_THROW(save_safetensors(p, {{"w", torch::zeros({4}, torch::kComplexDouble)}}), Error);
  EXPECT_EQ(read_text_file(p), before);
  // Failure creating the temporary file (its name is taken by a directory; works as root).
  fs::create_directory(p + ".tmp." + std::to_string(::getpid()));
  EXPECT_THROW(save_safetensors(p, {{"w", torch::zeros({4})}}), Error);
  EXPECT_EQ(read_text_file(p), before);
  fs::remove(p + ".tmp." + std::to_string(::getpid()));
  // Target directory not writable (meaningless as root, who may write anywhere).
  if (::geteuid() != 0) {
    fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_THROW(save_safetensors(p, {{"w", torch::zeros({4})}}), Error);
    fs::permissions(dir_, fs::perms::owner_all);
    EXPECT_EQ(read_text_file(p), before);
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

// The Python reference (safetensors package in the torch venv) reads our file and re-saves the
// same tensors; its bytes must equal ours, and we must read its file back exactly.
TEST_F(SafetensorsTorch, ByteExactAgainstPythonReference) {
  const std::string python = testing::venv_python();
  if (!testing::python_has(python, "safetensors.torch")) {
    GTEST_SKIP() << "Python safetensors not importable from the venv";
  }
  const std::string script = path("resave.py");
  write_file_atomic(script,
                    "import sys\n"
                    "from safetensors import safe_open\n"
                    "from safetensors.torch import load_file, save_file\n"
                    "with safe_open(sys.argv[1], 'pt') as f:\n"
                    "    meta = f.metadata()\n"
                    "save_file(load_file(sys.argv[1]), sys.argv[2], metadata=meta)\n");
  const auto tensors = every_dtype();
  const std::string ours = path("ours.safetensors"), theirs = path("theirs.safetensors");
  save_safetensors(ours, tensors, {{"format", "pt"}});
  const std::string cmd = python + " " + script + " " + ours + " " + theirs;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_EQ(read_text_file(ours), read_text_file(theirs));
  const auto back = load_safetensors(theirs);
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bytes(back.at(name), t)) << name;
}

}  // namespace
}  // namespace moetron::ckpt
