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

#include <cstdint>
#include <memory>
#include <string>

#include "log/status.h"

namespace tally::log {

class DirLock {
 public:
  static Result<std::unique_ptr<DirLock>> acquire(const std::string& data_dir);
  // Whether a DirLock of this process holds data_dir: its LOCK names this
  // process and is locked. (A holder killed with SIGKILL leaves its pid in
  // LOCK, which a later process may have.)
  static bool held_by_this_process(const std::string& data_dir);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  DirLock(int fd, int dir_fd) : fd_(fd), dir_fd_(dir_fd) {}
  int fd_;      // DATA/LOCK
  int dir_fd_;  // DATA
};

// DirFlock: an flock on a directory itself, held while it lives, taken
// without waiting: `locked` when a conflicting one is held. Shared by a
// reader that cannot tell a writer it is reading (one without write access
// to an LMDB store's lock.mdb, where LMDB keeps its table of readers): on
// DATA, where a writer's DirLock::acquire then fails, and on the store's
// own directory, which `tally snapshot` (a writer of DATA/snapshots that
// takes no DirLock) holds exclusive while it writes. Any number of such
// readers share them.
class DirFlock {
 public:
  enum class Kind : std::uint8_t { shared, exclusive };
  static Result<std::unique_ptr<DirFlock>> acquire(const std::string& dir, Kind kind);
  ~DirFlock();
  DirFlock(const DirFlock&) = delete;
  DirFlock& operator=(const DirFlock&) = delete;

 private:
  explicit DirFlock(int dir_fd) : dir_fd_(dir_fd) {}
  int dir_fd_;
};

}  // namespace tally::log
