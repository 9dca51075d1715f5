#include "log/lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "log/file.h"

namespace tally::log {

namespace {

constexpr const char* kLockFileName = "LOCK";
// A pid in decimal and a newline; more than the lock file ever holds.
constexpr std::size_t kPidTextBytesMax = 32;

Status lock_error(const std::string& what, const std::string& path, int error) {
  return Status(ErrorCode::io_error, what + " " + path + ": " + std::strerror(error));
}

// The pid the holder wrote, as text, or empty when it is not there or not
// readable.
std::string read_pid_text(int fd) {
  char text[kPidTextBytesMax] = {};
  ssize_t n = -1;
  do {
    n = ::pread(fd, text, sizeof text - 1, 0);
  } while (n < 0 && errno == EINTR);
  std::string pid;
  for (ssize_t index = 0; index < n && text[index] >= '0' && text[index] <= '9'; index++) {
    pid += text[index];
  }
  return pid;
}

// The holder's pid, or "unknown". A holder takes the lock before it writes
// its pid, so one that has just started is given a moment to write it.
std::string read_holder_pid(int fd) {
  constexpr int kTries = 50;
  constexpr auto kWait = std::chrono::milliseconds(2);
  for (int tries = 1;; tries++) {
    std::string pid = read_pid_text(fd);
    if (!pid.empty()) return pid;
    if (tries == kTries) return "unknown";
    std::this_thread::sleep_for(kWait);
  }
}

// An flock on fd without waiting, exclusive unless `shared`: 0, or the errno.
int lock_now(int fd, bool shared = false) {
  int result = -1;
  do {
    result = ::flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB);
  } while (result != 0 && errno == EINTR);
  return result == 0 ? 0 : errno;
}

// A directory itself, for its flock: 0 and *dir_fd, or the errno.
int open_dir(const std::string& data_dir, int* dir_fd) {
  do {
    *dir_fd = ::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (*dir_fd < 0 && errno == EINTR);
  return *dir_fd < 0 ? errno : 0;
}

// Best effort, as in ~DirLock: the pid is informative, and the lock holds
// without it. On a full disk the write fails, and a writer must still open
// to serve what its preallocated segment has room for (a reader of LOCK
// then says "pid unknown").
void write_own_pid(int fd) {
  const std::string text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0) return;
  std::size_t done_bytes = 0;
  while (done_bytes < text.size()) {
    const ssize_t n = ::pwrite(fd, text.data() + done_bytes, text.size() - done_bytes,
                               static_cast<off_t>(done_bytes));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Part of a pid would name another process: leave none at all.
      if (::ftruncate(fd, 0) != 0) {
      }
      return;
    }
    done_bytes += static_cast<std::size_t>(n);
  }
}

// The data directory as the Ledger names it, whichever tool asks: absolute.
std::string named_dir(const std::string& data_dir) {
  std::error_code error;
  const std::filesystem::path absolute = std::filesystem::absolute(data_dir, error);
  return error ? data_dir : absolute.lexically_normal().string();
}

}  // namespace

Result<std::unique_ptr<DirLock>> DirLock::acquire(const std::string& data_dir) {
  TALLY_TRY(posix_file_system().make_dirs(data_dir));
  const std::string path = join_path(data_dir, kLockFileName);
  int fd = -1;
  do {
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return lock_error("open", path, errno);
  // flock, not fcntl locks: an flock belongs to this open file description,
  // so it survives other code in the process opening and closing LOCK, and
  // the kernel drops it when the process dies, however it dies.
  if (const int error = lock_now(fd); error != 0) {
    const std::string pid = error == EWOULDBLOCK ? read_holder_pid(fd) : std::string();
    ::close(fd);
    if (error == EWOULDBLOCK) {
      // A second open in the same process (two Ledgers on one directory)
      // meets its own pid: say so rather than blame another process.
      const std::string holder = pid == std::to_string(::getpid())
                                     ? "this process (pid " + pid + ", opened it already)"
                                     : "another process (pid " + pid + ")";
      return Status(ErrorCode::locked,
                    "data directory " + named_dir(data_dir) + " is locked by " + holder);
    }
    return lock_error("lock", path, error);
  }
  int dir_fd = -1;
  if (const int error = open_dir(data_dir, &dir_fd); error != 0) {
    ::close(fd);
    return lock_error("open", data_dir, error);
  }
  if (const int error = lock_now(dir_fd); error != 0) {
    ::close(dir_fd);
    ::close(fd);
    if (error == EWOULDBLOCK) {
      return Status(ErrorCode::locked,
                    "data directory " + named_dir(data_dir) +
                        " is in use by another process: a reader without write access to its "
                        "stores, or a writer whose LOCK file was removed or replaced");
    }
    return lock_error("lock", data_dir, error);
  }
  write_own_pid(fd);
  // Private constructor: make_unique cannot reach it.
  return std::unique_ptr<DirLock>(new DirLock(fd, dir_fd));
}

bool DirLock::held_by_this_process(const std::string& data_dir) {
  int fd = -1;
  do {
    fd = ::open(join_path(data_dir, kLockFileName).c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return false;
  // The probe's shared lock, if it gets one, goes with its descriptor. No
  // wait for a pid: this process writes its own before acquire() returns.
  const bool held = read_pid_text(fd) == std::to_string(::getpid()) &&
                    lock_now(fd, /*shared=*/true) == EWOULDBLOCK;
  ::close(fd);
  return held;
}

DirLock::~DirLock() {
  // Clear the pid so that nobody blames a process that let go; closing the
  // descriptor releases the lock.
  // Best effort: the pid is informative, and a destructor has nobody to
  // report a failure to.
  if (::ftruncate(fd_, 0) != 0) {
  }
  ::close(dir_fd_);
  ::close(fd_);
}

Result<std::unique_ptr<DirFlock>> DirFlock::acquire(const std::string& dir, Kind kind) {
  int dir_fd = -1;
  if (const int error = open_dir(dir, &dir_fd); error != 0) return lock_error("open", dir, error);
  if (const int error = lock_now(dir_fd, kind == Kind::shared); error != 0) {
    ::close(dir_fd);
    if (error == EWOULDBLOCK) {
      return Status(ErrorCode::locked, dir + " is locked by another process");
    }
    return lock_error("lock", dir, error);
  }
  return std::unique_ptr<DirFlock>(new DirFlock(dir_fd));
}

DirFlock::~DirFlock() { ::close(dir_fd_); }

}  // namespace tally::log
