#include "snapshots/renew.h"

#include <filesystem>
#include <system_error>

namespace tally::snap {

Status set_aside(const std::string& dir) {
  const std::string aside = dir + ".damaged";
  std::error_code error;
  std::filesystem::remove_all(aside, error);
  if (!error) std::filesystem::rename(dir, aside, error);
  if (error) {
    return Status(ErrorCode::io_error, "moving " + dir + " to " + aside + ": " + error.message());
  }
  return Status();
}

}  // namespace tally::snap
