// Shared test fixtures.
#pragma once

#include <stdlib.h>

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>

namespace tally::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents when
// the TempDir is destroyed.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/tally-test-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A whole file's bytes ("" when it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Replaces the file's bytes with `bytes`.
inline void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Flips bits `mask` of the byte at `offset` of the file, in place.
inline bool flip_byte(const std::string& path, std::uint64_t offset, unsigned char mask = 0x10) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(offset);
  file.seekg(at);
  const int byte = file.get();
  file.seekp(at);
  file.put(static_cast<char>(byte ^ mask));
  return byte != std::char_traits<char>::eof() && file.good();
}

// The damage the LMDB store tests do to a data.mdb of 4 KiB pages whose
// bytes are `bytes`: for every page after the two meta pages, a bit
// flipped in each of its first 48 bytes (the page header, the node
// offsets, the first node), then the page zeroed. `visit` gets each
// damaged copy, with the page it damaged.
inline void for_each_page_damage(
    const std::string& bytes, const std::function<void(std::size_t, const std::string&)>& visit) {
  constexpr std::size_t kPage = 4096;
  for (std::size_t page = 2; page < bytes.size() / kPage; page++) {
    for (std::size_t at = 0; at <= 48; at++) {
      std::string damaged = bytes;
      if (at == 48) {
        std::fill_n(damaged.begin() + static_cast<std::ptrdiff_t>(page * kPage), kPage, '\0');
      } else {
        char& byte = damaged[page * kPage + at];
        byte = static_cast<char>(byte ^ (1 << (at % 8)));
      }
      visit(page, damaged);
    }
  }
}

// `prefix` followed by n in decimal ("k17"). Built by appending: "s" +
// std::to_string(n) trips GCC 12's false -Wrestrict (PR 105651).
inline std::string name(std::string_view prefix, long long n) {
  std::string out(prefix);
  out += std::to_string(n);
  return out;
}

}  // namespace tally::testing
