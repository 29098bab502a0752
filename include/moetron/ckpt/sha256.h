// SHA-256 (FIPS 180-4), self-contained so checkpoint integrity checks need no OpenSSL:
// an incremental hasher, one-shot helpers for bytes and whole files, lowercase hex output.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moetron::ckpt {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(std::string_view text) { update(text.data(), text.size()); }
  // Pads and returns the 32-byte digest; the hasher must not be updated afterwards.
  std::array<uint8_t, 32> finish();
  std::string finish_hex();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

std::string sha256_hex(std::string_view bytes);
// Streams the file in 1 MiB chunks; throws moetron::Error naming the path on I/O errors.
std::string sha256_file(const std::string& path);

}  // namespace moetron::ckpt
