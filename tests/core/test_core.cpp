// Core: error kinds and messages, env parsing, log levels, the interrupt flag.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>

#include "moetron/core/env.h"
#include "moetron/core/error.h"
#include "moetron/core/logging.h"
#include "moetron/core/signals.h"

namespace moetron {
namespace {

TEST(Error, CheckCarriesKindMessageAndLocation) {
  try {
    MOETRON_CHECK(1 + 1 == 3, "expected ", 3, " got ", 2);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(e.what()).find("expected 3 got 2"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("test_core.cpp:"), std::string::npos);
  }
}

TEST(Error, ConfigCheckHasNoSourceLocation) {
  try {
    MOETRON_CHECK_CONFIG(false, "train.steps must be positive, got ", -1);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_STREQ(e.what(), "train.steps must be positive, got -1");
  }
}

TEST(Env, IntegerParsingAndRank) {
  ::setenv("MOETRON_TEST_INT", "17", 1);
  EXPECT_EQ(env::get_int("MOETRON_TEST_INT"), 17);
  ::setenv("MOETRON_TEST_INT", "17x", 1);
  EXPECT_THROW(env::get_int("MOETRON_TEST_INT"), Error);
  ::unsetenv("MOETRON_TEST_INT");
  EXPECT_FALSE(env::get_int("MOETRON_TEST_INT").has_value());
  ::setenv("RANK", "3", 1);
  EXPECT_EQ(env::rank(), 3);
  ::unsetenv("RANK");
  ::setenv("SLURM_PROCID", "5", 1);
  EXPECT_EQ(env::rank(), 5);
  ::unsetenv("SLURM_PROCID");
  EXPECT_EQ(env::rank(), 0);
}

TEST(Logging, LevelsParseAndFilter) {
  EXPECT_EQ(log::parse_level("debug"), log::Level::kDebug);
  EXPECT_EQ(log::level_name(log::Level::kWarn), "warn");
  try {
    log::parse_level("verbose", "log.level");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("log.level: unknown log level 'verbose'"),
              std::string::npos);
  }
  log::set_level(log::Level::kWarn);
  EXPECT_FALSE(log::enabled(log::Level::kInfo));
  EXPECT_TRUE(log::enabled(log::Level::kError));
  log::set_level(log::Level::kInfo);
}

TEST(Logging, FileSinkReceivesLinesWithRank) {
  const std::string path = ::testing::TempDir() + "moetron_log_test.txt";
  std::remove(path.c_str());
  log::set_rank(2);
  log::add_file(path);
  log::info("hello ", 42);
  log::flush();
  log::remove_files();
  log::set_rank(0);
  FILE* f = std::fopen(path.c_str(), "r");
  ASSERT_NE(f, nullptr);
  char buf[512] = {0};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  std::string text(buf, n);
  EXPECT_NE(text.find("[info] [rank 2] hello 42"), std::string::npos) << text;
}

TEST(Signals, InterruptSetsFlag) {
  signals::reset();
  signals::install_interrupt_handlers();
  EXPECT_FALSE(signals::interrupt_requested());
  std::raise(SIGTERM);
  EXPECT_TRUE(signals::interrupt_requested());
  EXPECT_EQ(signals::interrupt_signal(), SIGTERM);
  signals::reset();
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
}

// SLURM and a launcher both deliver the same SIGTERM: the echo within 2 s is one request, not
// the "stop now" of a second signal (which would kill this test process).
TEST(Signals, AnEchoOfTheSameSignalIsOneRequest) {
  signals::reset();
  signals::install_interrupt_handlers();
  std::raise(SIGTERM);
  std::raise(SIGTERM);
  EXPECT_TRUE(signals::interrupt_requested());
  EXPECT_EQ(signals::interrupt_signal(), SIGTERM);
  signals::reset();
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
}

// A second, different signal still stops the process the default way.
TEST(SignalsDeathTest, ADifferentSecondSignalKills) {
  EXPECT_EXIT(
      {
        signals::reset();
        signals::install_interrupt_handlers();
        std::raise(SIGTERM);
        std::raise(SIGINT);
        std::_Exit(0);
      },
      ::testing::KilledBySignal(SIGINT), "");
}

}  // namespace
}  // namespace moetron

#include <filesystem>

#include "moetron/core/files.h"
#include "moetron/core/run_dir.h"

namespace moetron {
namespace {

std::string fresh_dir(const std::string& tag) {
  auto p = std::filesystem::path(::testing::TempDir()) / ("moetron_rundir_" + tag);
  std::filesystem::remove_all(p);
  return p.string();
}

TEST(RunDir, CreatesLayoutAndWritesConfig) {
  const auto parent = fresh_dir("create");
  RunDir run = open_run_dir(parent, "exp1", "a: 1\n", false);
  EXPECT_FALSE(run.existed);
  EXPECT_TRUE(std::filesystem::is_directory(run.checkpoints));
  EXPECT_EQ(read_text_file(run.config_path), "a: 1\n");
  RunDir again = open_run_dir(parent, "exp1", "a: 1\n", false);
  EXPECT_TRUE(again.existed);
}

TEST(RunDir, DifferentConfigIsRefusedUnlessResuming) {
  const auto parent = fresh_dir("conflict");
  open_run_dir(parent, "exp", "a: 1\n", false);
  try {
    open_run_dir(parent, "exp", "a: 2\n", false);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("belongs to a different config"), std::string::npos);
  }
  EXPECT_EQ(read_text_file(parent + "/exp/config.yaml"), "a: 1\n");  // untouched by the failure
  RunDir run = open_run_dir(parent, "exp", "a: 2\n", true);
  EXPECT_EQ(read_text_file(run.config_path), "a: 2\n");
  EXPECT_EQ(read_text_file(parent + "/exp/config.1.yaml"), "a: 1\n");  // nothing lost
}

TEST(RunDir, RejectsPathLikeNames) {
  EXPECT_THROW(open_run_dir(fresh_dir("bad"), "../x", "", false), Error);
  EXPECT_THROW(open_run_dir(fresh_dir("bad"), "", "", false), Error);
}

TEST(WriteFileAtomic, ReplacesContentAndLeavesNoTemporary) {
  const auto dir = fresh_dir("atomic");
  std::filesystem::create_directories(dir);
  const auto path = dir + "/f.txt";
  write_file_atomic(path, "one");
  write_file_atomic(path, "two");
  EXPECT_EQ(read_text_file(path), "two");
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  EXPECT_THROW(write_file_atomic(dir + "/missing/f.txt", "x"), Error);
}

}  // namespace
}  // namespace moetron
