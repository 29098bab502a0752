// Crash-safe file writing: data goes to `<path>.tmp.<pid>`, is fsynced, renamed over `path`,
// and the directory is fsynced, so `path` always holds either the old or the complete new file.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moetron {

class AtomicFileWriter {
 public:
  // Creates the temporary file next to `path`; throws moetron::Error (naming the path and
  // errno text) when the directory is missing or not writable.
  explicit AtomicFileWriter(std::string path);
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  // Without commit() the temporary file is removed and `path` is left untouched.
  ~AtomicFileWriter();

  void write(const void* data, size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // fsync the data, rename over `path`, fsync the directory. Throws on any failure (the
  // temporary file is then removed).
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void abandon() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Whole-file convenience over AtomicFileWriter.
void write_file_atomic(const std::string& path, std::string_view contents);

// fsync a directory so a rename inside it survives a crash.
void fsync_directory(const std::string& dir);

// Removes `path` and everything below it (symlinks are removed, not followed); a missing path
// is not an error. Use this instead of std::filesystem::remove_all in anything linked with
// LibTorch: the 2.11 wheel's libtorch.so exports its own broken copy of remove_all, which
// wins symbol resolution and jumps to a null pointer.
void remove_tree(const std::string& path);

// Reads a whole (small) file; throws naming the path.
std::string read_text_file(const std::string& path);

}  // namespace moetron
