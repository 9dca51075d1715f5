#include "snapshots/renew.h"

#include <filesystem>
#include <system_error>

#include "log/file.h"

namespace tally::snap {

Status set_aside(const std::string& dir) {
  const std::string aside = dir + ".damaged";
  std::error_code error;
  std::filesystem::remove_all(aside, error);
  if (!error) std::filesystem::rename(dir, aside, error);
  if (error) {
    return Status(ErrorCode::io_error, "moving " + dir + " to " + aside + ": " + error.message());
  }
  // Durable before a new store is made in its place: otherwise a crash
  // could bring the damaged one back under the name.
  return log::posix_file_system().sync_dir(log::parent_dir(dir));
}

}  // namespace tally::snap
