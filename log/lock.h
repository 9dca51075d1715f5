// DirLock: one writer process per data directory.
//
// acquire() takes an exclusive flock on DATA/LOCK and writes the holder's
// pid into it. A second process gets a `locked` Status naming the directory
// and the holder's pid. It also takes one on the directory itself, which
// no file operation inside it can take away: a LOCK file deleted (or
// replaced) while its holder runs does not let a second writer in. The
// locks are released when the DirLock is destroyed or the process exits,
// however it exits.
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
  DirLock(int fd, int dir_fd) : fd_(fd), dir_fd_(dir_fd) {}
  int fd_;      // DATA/LOCK
  int dir_fd_;  // DATA
};

}  // namespace tally::log
