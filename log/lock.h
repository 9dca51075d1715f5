// DirLock: one writer process per data directory.
//
// acquire() takes an exclusive flock on DATA/LOCK and writes the holder's
// pid into it. A second process gets a `locked` Status naming the directory
// and the holder's pid. The lock is released when the DirLock is destroyed
// or the process exits, however it exits.
#pragma once

#include <memory>
#include <string>

#include "log/status.h"

namespace tally::log {

class DirLock {
 public:
  static Result<std::unique_ptr<DirLock>> acquire(const std::string& data_dir);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace tally::log
