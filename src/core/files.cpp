// AtomicFileWriter: temp file + fsync + rename + directory fsync.
#include "moetron/core/files.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "moetron/core/error.h"

namespace moetron {

namespace {
std::string parent_dir(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}
}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), temp_path_(str_cat(path_, ".tmp.", ::getpid())) {
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw Error(
        str_cat(path_, ": cannot create temporary file ", temp_path_, ": ", std::strerror(errno)));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!committed_) abandon();
}

void AtomicFileWriter::abandon() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::write(const void* data, size_t size) {
  MOETRON_CHECK(fd_ >= 0, path_, ": write after commit or failure");
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most ~2 GiB per call; loop on short writes and EINTR.
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      abandon();
      throw Error(str_cat(path_, ": write to ", temp_path_, " failed: ", std::strerror(err)));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  MOETRON_CHECK(fd_ >= 0, path_, ": commit twice or after a failure");
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    const int err = errno;
    fd_ = -1;
    abandon();
    throw Error(str_cat(path_, ": flushing ", temp_path_, " failed: ", std::strerror(err)));
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    abandon();
    throw Error(str_cat(path_, ": rename from ", temp_path_, " failed: ", std::strerror(err)));
  }
  committed_ = true;
  fsync_directory(parent_dir(path_));
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFileWriter w(path);
  w.write(contents);
  w.commit();
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(dir, ": cannot open directory to fsync: ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some filesystems refuse fsync on directories (EINVAL); the rename itself already happened.
  if (rc != 0 && err != EINVAL) {
    throw Error(str_cat(dir, ": fsync of directory failed: ", std::strerror(err)));
  }
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw Error(str_cat(path, ": cannot stat for removal: ", std::strerror(errno)));
  }
  // Depth-first, without crossing symlinks, so children go before their directory.
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) -> int {
    return ::remove(p) == 0 || errno == ENOENT ? 0 : -1;
  };
  if (::nftw(path.c_str(), remove_one, 64, FTW_DEPTH | FTW_PHYS) != 0) {
    throw Error(str_cat(path, ": removing the directory tree failed: ", std::strerror(errno)));
  }
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(str_cat(path, ": read failed"));
  return ss.str();
}

}  // namespace moetron
