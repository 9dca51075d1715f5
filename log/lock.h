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

// SharedDirLock: keeps writers out while it lives, for a reader that cannot
// tell a writer it is reading (one without write access to an LMDB store's
// lock.mdb, where LMDB keeps its table of readers). It takes a shared flock
// on DATA itself, which any number of such readers share and on which a
// writer's DirLock::acquire fails; `locked` when a writer holds DATA now.
class SharedDirLock {
 public:
  static Result<std::unique_ptr<SharedDirLock>> acquire(const std::string& data_dir);
  ~SharedDirLock();
  SharedDirLock(const SharedDirLock&) = delete;
  SharedDirLock& operator=(const SharedDirLock&) = delete;

 private:
  explicit SharedDirLock(int dir_fd) : dir_fd_(dir_fd) {}
  int dir_fd_;  // DATA
};

}  // namespace tally::log
