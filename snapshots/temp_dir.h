// A temporary directory for the snapshots/ unit tests, removed with
// everything in it. Test-only; included by *_test.cc files.
#pragma once

#include <doctest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace tally::snap {
namespace {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "tally-snap-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // A path inside the directory; nothing is created there.
  std::string path(const std::string& name) const { return (path_ / name).string(); }
  // Where the snapshot store's environment goes.
  std::string store_dir() const { return path("snapshots"); }

 private:
  std::filesystem::path path_;
};

}  // namespace
}  // namespace tally::snap
