#include "snapshots/lmdb_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <span>
#include <thread>
#include <utility>

#include "log/file.h"
#include "log/lock.h"
#include "log/thread.h"
#include "snapshots/renew.h"

namespace tally::snap::lmdb {

namespace {

// A reader adopts the grown map and begins again; the writer would have to
// grow the map this many times while one reader begins for it to give up.
constexpr int kReadBeginAttemptsMax = 8;

}  // namespace

Status error(std::string_view component, std::string_view what, int rc) {
  std::string message(component);
  message += ": ";
  message += what;
  message += ": ";
  message += mdb_strerror(rc);
  // LMDB turns a short write (ENOSPC, EFBIG, EDQUOT) into EIO, which alone
  // points at a failing disk.
  if (rc == EIO) message += " (LMDB reports a full disk so too)";
  // The codes of a file that is not (or no longer) a sound LMDB file.
  // A cursor runs out of room (MDB_CURSOR_FULL) only in a tree deeper
  // than any LMDB builds. A transaction goes bad (MDB_BAD_TXN) where LMDB
  // met a damaged page without returning its code: opening a cursor on a
  // tree whose root is damaged fails the transaction, and the call after
  // it says MDB_BAD_TXN. The stores never use a transaction after a
  // failure they were told of, so that is the cause left (and a page read
  // that fails ends the process with SIGBUS instead).
  const bool damaged = rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND ||
                       rc == MDB_VERSION_MISMATCH || rc == MDB_CURSOR_FULL || rc == MDB_BAD_TXN;
  return Status(damaged ? ErrorCode::corrupt : ErrorCode::io_error, std::move(message));
}

namespace {

// Whether this process may write `dir`/lock.mdb, or make it where there is
// none: an EACCES from mdb_env_open otherwise came from data.mdb.
bool lock_file_writable(const std::string& dir) {
  const std::string path = dir + "/lock.mdb";
  if (::faccessat(AT_FDCWD, path.c_str(), W_OK, AT_EACCESS) == 0) return true;
  return errno == ENOENT && ::faccessat(AT_FDCWD, dir.c_str(), W_OK, AT_EACCESS) == 0;
}

// Makes `dir`/lock.mdb where there is none, its blocks allocated. LMDB
// makes it by ftruncate(), a file with no blocks, then writes it through a
// shared mapping: on a full disk that write finds no block and the kernel
// ends the process with SIGBUS. Made here, the full disk is an error
// instead. LMDB sizes its table of readers by the file (it makes the file
// no smaller than it needs), so the file appears at its full size, linked
// in once allocated: every process reads the same size. Where none can be
// made (a directory this process may not write), LMDB meets the same and
// says so. One already there keeps its size (another process may have it
// mapped) and gets its blocks allocated; on a full disk, one with none
// (left by a process that LMDB's SIGBUS ended, or a crash) is an error too.
Status make_lock_file(const std::string& dir, const std::string& component) {
  constexpr off_t kLockFileBytes = 16 << 10;  // LMDB's 126 readers take 8 KiB
  const std::string path = dir + "/lock.mdb";
  const auto no_room = [&](int error) {
    return Status(ErrorCode::io_error,
                  component + ": make " + path + ": " + std::strerror(error));
  };
  const int existing = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (existing >= 0) {
    struct stat file_stat {};
    int rc = ::fstat(existing, &file_stat) == 0 ? 0 : errno;
    if (rc == 0) {
      const off_t length = std::max<off_t>(file_stat.st_size, kLockFileBytes);
      rc = ::fallocate(existing, FALLOC_FL_KEEP_SIZE, 0, length) == 0 ? 0 : errno;
    }
    ::close(existing);
    const bool full = rc == ENOSPC || rc == EDQUOT;
    return full && file_stat.st_blocks == 0 ? no_room(rc) : Status();
  }
  if (errno != ENOENT) return Status();
  const std::string made = path + "." + std::to_string(::getpid()) + ".new";
  const int fd = ::open(made.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno == ENOSPC || errno == EDQUOT ? no_room(errno) : Status();
  const int rc = ::posix_fallocate(fd, 0, kLockFileBytes);
  ::close(fd);
  // A file system without hard links leaves the making to LMDB.
  if (rc == 0) (void)::link(made.c_str(), path.c_str());
  ::unlink(made.c_str());
  return rc == 0 ? Status() : no_room(rc);
}

}  // namespace

Result<std::unique_ptr<Environment>> Environment::open(const std::string& dir,
                                                       const EnvironmentOptions& options) {
  const std::string component(options.component);
  if (options.map_size_bytes == 0 || options.map_size_bytes > options.map_size_bytes_max) {
    return Status(ErrorCode::invalid,
                  component + ": map_size_bytes must be 1..map_size_bytes_max");
  }
  const bool read_only = (options.flags & MDB_RDONLY) != 0;
  // Something else in the store's place is no store, and no damage either
  // that a writer may set aside: the reader and the writer both fail.
  struct stat dir_stat {};
  if (::stat(dir.c_str(), &dir_stat) == 0 && !S_ISDIR(dir_stat.st_mode)) {
    return Status(ErrorCode::io_error, component + ": " + dir + " is not a directory");
  }
  // A directory made here is synced in its parent, and once LMDB has made
  // its files in it, itself: LMDB syncs its pages but no directory, and a
  // crash could otherwise drop a store it had synced.
  bool made = false;
  if (!read_only) {
    made = ::mkdir(dir.c_str(), 0755) == 0;
    if (made) {
      TALLY_TRY(log::posix_file_system().sync_dir(log::parent_dir(dir)));
    } else if (errno != EEXIST) {
      return Status(ErrorCode::io_error,
                    component + ": mkdir " + dir + ": " + std::strerror(errno));
    }
  }
  if (read_only) {
    // A reader makes nothing: LMDB would create data.mdb (and lock.mdb)
    // where there is none. No file, or an empty one (a writer stopped as it
    // made it; a writer's open starts it afresh), holds no store.
    struct stat file_stat {};
    const std::string data_path = dir + "/data.mdb";
    if (::stat(data_path.c_str(), &file_stat) != 0) {
      if (errno != ENOENT) {
        return Status(ErrorCode::io_error,
                      component + ": stat " + data_path + ": " + std::strerror(errno));
      }
      return Status(ErrorCode::not_found, component + ": no store in " + dir);
    }
    if (file_stat.st_size == 0) {
      return Status(ErrorCode::not_found, component + ": " + data_path + " is empty");
    }
  }
  std::unique_ptr<Environment> env(new Environment());
  env->component_ = component;
  env->dir_ = dir;
  env->options_ = options;
  env->options_.component = env->component_;
  TALLY_TRY(env->check_meta_pages());
  const Status lock_made = make_lock_file(dir, component);
  if (!lock_made.ok() && !read_only) return lock_made;
  // A reader with no lock.mdb it may write, or room to make one: LMDB
  // keeps its table of readers there, and a writer that could not see this
  // reader would reuse the pages it reads. Read without the table while no
  // writer can start (a file system mounted read-only LMDB handles itself,
  // with EROFS).
  bool without_table = !lock_made.ok();
  int rc = 0;
  if (!without_table) {
    rc = env->open_handle(options.flags);
    without_table = rc == EACCES && read_only && !lock_file_writable(dir);
  }
  if (without_table) {
    TALLY_TRY(env->keep_writers_out(lock_made));
    rc = env->open_handle(options.flags | MDB_NOLOCK);
  }
  if (rc != 0) return env->error("mdb_env_open " + dir, rc);
  if (made) TALLY_TRY(log::posix_file_system().sync_dir(dir));
  TALLY_TRY(env->check_trees(options.db_names_checked));
  TALLY_TRY(env->check_db_names());
  MDB_envinfo info{};
  rc = mdb_env_info(env->env_, &info);
  if (rc != 0) return env->error("mdb_env_info", rc);
  env->map_size_bytes_ = info.me_mapsize;  // an existing larger file keeps its size
  return env;
}

// LMDB checks its pages with assert()s (Debian builds it with them on), so
// some damaged pages end the process (SIGABRT) inside a read instead of
// failing it. Before that, say which store it is; a store open for writing
// moves aside first, so that the next open makes a new one instead of
// meeting the same page (a reader, such as verify, changes nothing).
void Environment::on_assert(MDB_env* env, const char* message) {
  const auto* self = static_cast<const Environment*>(mdb_env_get_userctx(env));
  if (self == nullptr) {
    std::fprintf(stderr, "tally: an LMDB store is damaged (LMDB: %s)\n", message);
    return;
  }
  const char* dir = self->dir_.c_str();
  if ((self->options_.flags & MDB_RDONLY) == 0) {
    const Status moved = set_aside(self->dir_);
    if (moved.ok()) {
      std::fprintf(stderr,
                   "tally: %s is damaged (LMDB: %s); it is made from the log: moved it to "
                   "%s.damaged, and the next open makes a new one\n",
                   dir, message, dir);
      return;
    }
    std::fprintf(stderr, "tally: %s\n", moved.to_string().c_str());
  }
  std::fprintf(stderr,
               "tally: %s is damaged (LMDB: %s); it is made from the log: move it aside "
               "(for the history, tally history --rebuild) and the ledger makes it again\n",
               dir, message);
}

Status Environment::keep_writers_out(const Status& lock_made) {
  const std::string data_dir = log::parent_dir(dir_);
  // The failure names the store too: said once.
  std::string why = lock_made.message();
  if (why.starts_with(component_ + ": ")) why.erase(0, component_.size() + 2);
  const std::string needs = lock_made.ok()
                                ? "needs write access to its lock.mdb"
                                : "needs its lock.mdb, which could not be made (" + why + ")";
  // DATA against a ledger, then the store against `tally snapshot`.
  for (const std::string& held : {data_dir, dir_}) {
    auto lock = log::DirFlock::acquire(held, log::DirFlock::Kind::shared);
    if (lock.code() == ErrorCode::locked) {
      return Status(ErrorCode::locked,
                    component_ + ": " +
                        (held == data_dir ? "data directory " + data_dir + " is open for writing"
                                          : dir_ + " is being written (tally snapshot)") +
                        "; reading " + dir_ + " beside a writer " + needs);
    }
    if (!lock.ok()) return lock.status();
    writers_out_.push_back(std::move(lock).value());
  }
  return Status();
}

int Environment::open_handle(unsigned flags) {
  if (env_ != nullptr) mdb_env_close(env_);  // a failed open leaves a handle only to close
  int rc = mdb_env_create(&env_);
  if (rc != 0) {
    env_ = nullptr;
    return rc;
  }
  mdb_env_set_userctx(env_, this);
  // Fails only for a null env; a no-op where LMDB is built without asserts.
  (void)mdb_env_set_assert(env_, on_assert);
  rc = mdb_env_set_maxdbs(env_, static_cast<MDB_dbi>(options_.db_names.size()));
  if (rc == 0) rc = mdb_env_set_mapsize(env_, options_.map_size_bytes);
  if (rc == 0) rc = mdb_env_open(env_, dir_.c_str(), flags, 0644);
  return rc;
}

Status Environment::check_db_names() {
  ReadTxn txn;
  TALLY_TRY(txn.begin(*this));
  MDB_dbi main_db = 0;
  int rc = mdb_dbi_open(txn.get(), nullptr, 0, &main_db);
  if (rc != 0) return error("mdb_dbi_open (main)", rc);
  Cursor cursor;
  TALLY_TRY(cursor.open(txn.txn(), main_db));
  MDB_val key{};
  MDB_val value{};
  for (rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    const std::string_view name = view_of(key);
    const bool known = std::any_of(options_.db_names.begin(), options_.db_names.end(),
                                   [&](const char* ours) { return name == ours; });
    if (known) continue;
    const bool printable = name.size() <= 32 && std::all_of(name.begin(), name.end(), [](char c) {
                             return c >= 0x20 && c < 0x7f;
                           });
    return Status(ErrorCode::corrupt,
                  component_ + ": the file holds " +
                      (printable ? "a database '" + std::string(name) + "'" : "a record") +
                      ", which is not this store's");
  }
  if (rc != MDB_NOTFOUND) return error("mdb_cursor_get (main)", rc);
  return Status();
}

Environment::~Environment() {
  if (env_ != nullptr) mdb_env_close(env_);
}

Status Environment::write_growing(const std::function<Status(int* rc)>& attempt) {
  // A full map aborts the transaction; grow it and write again. Each pass
  // doubles the map, so kMapGrowthsMax bounds the loop.
  int adoptions = 0;
  for (int growth = 0;;) {
    int rc = 0;
    Status status;
    {
      const std::shared_lock<std::shared_mutex> shared = share_map();
      status = attempt(&rc);
    }
    if (status.ok()) return status;
    // Another process grew the map: take its size (outside the shared lock,
    // which the adoption takes exclusive) and write again.
    if (rc == MDB_MAP_RESIZED && adoptions < kReadBeginAttemptsMax) {
      adoptions++;
      TALLY_TRY(adopt_map_size());
      continue;
    }
    if (rc != MDB_MAP_FULL) return status;
    const RemapLock remap(*this);
    if (growth++ == kMapGrowthsMax || map_size_bytes_ >= options_.map_size_bytes_max) {
      return Status(ErrorCode::io_error, std::string(component()) + ": map full at " +
                                             std::to_string(map_size_bytes_) +
                                             " bytes (map_size_bytes_max)");
    }
    const std::size_t grown = std::min(map_size_bytes_ * 2, options_.map_size_bytes_max);
    // No transaction is open here: attempt's has been aborted, and the
    // exclusive lock keeps every other thread's out.
    rc = mdb_env_set_mapsize(env_, grown);
    if (rc != 0) return error("mdb_env_set_mapsize (grow)", rc);
    map_size_bytes_ = grown;
  }
}

std::shared_lock<std::shared_mutex> Environment::share_map() const {
  const std::lock_guard<std::mutex> gate(map_gate_);
  return std::shared_lock<std::shared_mutex>(map_lock_);
}

Status Environment::adopt_map_size() {
  const RemapLock remap(*this);
  // Size 0 takes the size the file's current meta page records.
  int rc = mdb_env_set_mapsize(env_, 0);
  if (rc != 0) return error("mdb_env_set_mapsize (adopt)", rc);
  MDB_envinfo info{};
  rc = mdb_env_info(env_, &info);
  if (rc != 0) return error("mdb_env_info", rc);
  map_size_bytes_ = info.me_mapsize;
  return Status();
}

namespace {

// What LMDB writes of a copy goes through a chunk of this size at a time.
constexpr std::size_t kCopyChunkBytes = std::size_t{1} << 20;

// The two ends of a pipe(2), each closed once.
struct Pipe {
  int ends[2] = {-1, -1};
  ~Pipe() {
    close_end(0);
    close_end(1);
  }
  int read_end() const { return ends[0]; }
  int write_end() const { return ends[1]; }
  void close_end(int which) {
    if (ends[which] >= 0) ::close(ends[which]);
    ends[which] = -1;
  }
};

// Reads `pipe` until it ends or `chunk` is full: the bytes read, 0 at its end.
Result<std::size_t> fill(int pipe, std::span<std::byte> chunk) {
  std::size_t filled = 0;
  while (filled < chunk.size()) {
    const ssize_t got = ::read(pipe, chunk.data() + filled, chunk.size() - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return Status(ErrorCode::io_error, std::string("read: ") + std::strerror(errno));
    if (got == 0) break;
    filled += static_cast<std::size_t>(got);
  }
  return filled;
}

}  // namespace

Status Environment::copy_to(const std::string& dir, const CopyProgress& keep_going) {
  const std::string path = dir + "/data.mdb";
  log::FileSystem& fs = log::posix_file_system();
  if (fs.exists(path)) return Status(ErrorCode::invalid, path + " exists");
  auto out = fs.open(path, log::FileSystem::Mode::create);
  if (!out) return out.status();
  std::vector<std::byte> chunk(kCopyChunkBytes);
  // The copy begins a read transaction of its own: as ReadTxn::begin, a
  // map another process grew is adopted and the copy begun again (it wrote
  // nothing).
  for (int attempt = 0; attempt < kReadBeginAttemptsMax; attempt++) {
    Pipe pipe;
    if (::pipe2(pipe.ends, O_CLOEXEC) != 0) {
      return Status(ErrorCode::io_error, component_ + ": pipe: " + std::strerror(errno));
    }
    // LMDB writes from a thread it makes, which blocks SIGPIPE and takes
    // the one a write to a closed pipe raises: a stopped copy fails EPIPE.
    int rc = 0;
    auto started = start_thread("tally-copy", [&] {
      const std::shared_lock<std::shared_mutex> shared = share_map();
      rc = mdb_env_copyfd2(env_, pipe.write_end(), MDB_CP_COMPACT);
      pipe.close_end(1);  // the end of the copy, for the reader
    });
    if (!started) return started.status();
    std::thread copier = std::move(*started);
    Status written;
    bool stopped = false;
    std::uint64_t offset = 0;
    for (;;) {
      auto filled = fill(pipe.read_end(), chunk);
      if (!filled) written = filled.status();
      if (!filled || *filled == 0) break;
      written = (*out)->write_at(offset, std::span(chunk).first(*filled));
      if (!written.ok()) break;
      offset += *filled;
      if (keep_going && !keep_going(offset)) {
        stopped = true;
        break;
      }
    }
    pipe.close_end(0);  // a copy still writing fails (EPIPE) and returns
    copier.join();
    if (stopped) return Status(ErrorCode::closed, component_ + ": the copy was stopped");
    TALLY_TRY(written);
    if (rc == MDB_MAP_RESIZED) {
      TALLY_TRY(adopt_map_size());
      continue;
    }
    if (rc != 0) return error("mdb_env_copyfd2 " + path, rc);
    // LMDB does not promise the copy is on disk when it returns.
    return (*out)->sync();
  }
  return error("mdb_env_copyfd2 " + path, MDB_MAP_RESIZED);
}

int Txn::try_begin(const Environment& env, unsigned flags) {
  abort();
  env_ = &env;
  const int rc = mdb_txn_begin(env.get(), nullptr, flags, &txn_);
  if (rc != 0) txn_ = nullptr;
  return rc;
}

Status Txn::begin_adopting(Environment& env, unsigned flags) {
  for (int attempt = 0; attempt < kReadBeginAttemptsMax; attempt++) {
    const int rc = try_begin(env, flags);
    if (rc == 0) return Status();
    if (rc != MDB_MAP_RESIZED) return env.error("mdb_txn_begin", rc);
    TALLY_TRY(env.adopt_map_size());
  }
  return env.error("mdb_txn_begin", MDB_MAP_RESIZED);
}

Status ReadTxn::begin(Environment& env) {
  // Each pass begins once; a pass that meets a map grown by another process
  // adopts the new size first.
  for (int attempt = 0; attempt < kReadBeginAttemptsMax; attempt++) {
    lock_ = env.share_map();
    const int rc = txn_.try_begin(env, MDB_RDONLY);
    if (rc == 0) return Status();
    lock_ = {};
    if (rc != MDB_MAP_RESIZED) return env.error("mdb_txn_begin", rc);
    TALLY_TRY(env.adopt_map_size());
  }
  return env.error("mdb_txn_begin", MDB_MAP_RESIZED);
}

}  // namespace tally::snap::lmdb
