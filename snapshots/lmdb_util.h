// The LMDB pieces that the snapshot store and the history projection share:
// fixed-width integers in keys and values, the error Status, transactions
// and cursors that close themselves, and an environment in a directory whose
// map grows when a write fills it. Internal to snapshots/, the one folder
// that includes lmdb.h (docs/architecture.md, "Layers").
//
// Thread safety: an Environment may be used from several threads when they
// follow its map lock (below); Txn and Cursor belong to one thread at a time.
// Ownership: an Environment owns its MDB_env; Txn and Cursor own their LMDB
// handles and borrow the Environment, which must outlive them.
#pragma once

#include <lmdb.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "log/status.h"
#include "snapshots/copy_progress.h"

namespace tally::log {
class DirFlock;
}  // namespace tally::log

namespace tally::snap::lmdb {

// Doublings of the map in one write: from 4 KiB, 48 reach past any address
// space, so the bound is never what stops a write.
inline constexpr int kMapGrowthsMax = 48;

// Big-endian in keys (so LMDB's bytewise order is numeric order),
// little-endian in values.
inline void put_le(std::uint8_t* out, std::uint64_t value, std::size_t width) {
  for (std::size_t index = 0; index < width; index++) {
    out[index] = static_cast<std::uint8_t>(value >> (8 * index));
  }
}
inline std::uint64_t get_le(const std::uint8_t* in, std::size_t width) {
  std::uint64_t value = 0;
  for (std::size_t index = 0; index < width; index++) {
    value |= std::uint64_t{in[index]} << (8 * index);
  }
  return value;
}
inline void put_be(std::uint8_t* out, std::uint64_t value, std::size_t width) {
  for (std::size_t index = 0; index < width; index++) {
    out[index] = static_cast<std::uint8_t>(value >> (8 * (width - 1 - index)));
  }
}
inline std::uint64_t get_be(const std::uint8_t* in, std::size_t width) {
  std::uint64_t value = 0;
  for (std::size_t index = 0; index < width; index++) value = (value << 8) | in[index];
  return value;
}
// A key of N big-endian u64 fields: bytewise order is the fields' order.
template <std::size_t N>
std::array<std::uint8_t, 8 * N> be_key(const std::array<std::uint64_t, N>& fields) {
  std::array<std::uint8_t, 8 * N> key{};
  for (std::size_t index = 0; index < N; index++) put_be(key.data() + 8 * index, fields[index], 8);
  return key;
}

inline const std::uint8_t* bytes_of(const MDB_val& val) {
  return static_cast<const std::uint8_t*>(val.mv_data);
}
inline std::string_view view_of(const MDB_val& val) {
  return std::string_view(static_cast<const char*>(val.mv_data), val.mv_size);
}
template <std::size_t N>
MDB_val val_of(std::array<std::uint8_t, N>& bytes) {
  return MDB_val{bytes.size(), bytes.data()};
}
inline MDB_val val_of(std::string_view bytes) {
  // LMDB takes a non-const pointer, but only reads the keys and values it
  // is given to store or look up.
  return MDB_val{bytes.size(), const_cast<char*>(bytes.data())};
}

// io_error "<component>: <what>: <mdb_strerror(rc)>" (for EIO, a remark that
// LMDB reports a full disk so too); corrupt for the codes
// of a damaged file (MDB_INVALID, MDB_CORRUPTED, MDB_PAGE_NOTFOUND,
// MDB_VERSION_MISMATCH, MDB_CURSOR_FULL, and MDB_BAD_TXN, which a damaged
// page LMDB met without saying so leaves).
Status error(std::string_view component, std::string_view what, int rc);

struct EnvironmentOptions {
  std::string_view component;  // names the user in messages: "snapshots", "history"
  // The named databases the store keeps. A file that holds any other is
  // another store's (a data.mdb copied into the wrong directory): open()
  // says corrupt rather than take its records for this store's.
  std::span<const char* const> db_names;
  // The named databases whose trees open() walks page by page besides the
  // free list's and the main database's (check_trees()): those read at
  // every open, and all of a store small enough to read whole each time.
  std::span<const char* const> db_names_checked;
  unsigned flags = 0;          // MDB_* environment flags; MDB_RDONLY opens read-only
  // The map's initial size; write_growing() doubles it up to the maximum.
  // An existing larger file keeps its size.
  std::size_t map_size_bytes = 0;
  std::size_t map_size_bytes_max = 0;
};

// An LMDB environment in a directory.
//
// The map lock: LMDB remaps the file when the map grows, which moves every
// page under any transaction open in this process. So every transaction of
// a store used by several threads holds the map shared (share_map(): ReadTxn
// does, and write_growing() for its attempt), and a remap holds it
// exclusive. A remap first closes a gate that new sharers pass through, so
// a steady stream of readers cannot starve it: it waits only for the
// transactions already open. A store used by one thread only may ignore the
// lock: a remap happens only between its own transactions.
class Environment {
 public:
  // Creates `dir` if missing (its parent must exist) unless MDB_RDONLY is
  // among the flags, then opens the environment in it. corrupt when the
  // file is damaged or shorter than its pages in use; io_error when LMDB or
  // the file system refuses otherwise. With MDB_RDONLY, not_found when
  // there is no data.mdb or it is empty (nothing is created then; on a
  // read-only file system LMDB reads without its lock file; so does a
  // reader without write access to lock.mdb, keeping writers out of the
  // data directory, `dir`'s parent, and `tally snapshot` out of `dir`
  // meanwhile: `locked` when one is in it).
  static Result<std::unique_ptr<Environment>> open(const std::string& dir,
                                                   const EnvironmentOptions& options);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  MDB_env* get() const { return env_; }
  std::string_view component() const { return component_; }
  // Holds the map in place while it lives (see the map lock above).
  std::shared_lock<std::shared_mutex> share_map() const;

  // io_error naming this environment's component.
  Status error(std::string_view what, int rc) const { return lmdb::error(component(), what, rc); }

  // corrupt when a meta page of data.mdb (pages 0 and 1, where LMDB's magic
  // marks one) names a page size that is not a power of two in 512..65536,
  // or not the other's, or a last page in use past the file's end. LMDB
  // trusts both: a damaged page size makes mdb_env_open read and map at
  // the wrong offsets and die (SIGBUS; SIGFPE for 0), and a damaged last
  // page makes it map that much (ENOMEM, an io_error on every open). So
  // open() runs this before LMDB opens the file (tree_check.cc). A page
  // without the magic is LMDB's to refuse (MDB_INVALID) or, in an empty
  // file, to make.
  Status check_meta_pages() const;

  // corrupt when LMDB's trees do not hold together: a page of a tree or an
  // overflow page that is not what its parent says, a page reached twice,
  // bounds that run off a page, a record count other than the tree's, a
  // free-list record whose count does not match its size or that names a
  // page outside the pages in use. LMDB trusts its pages: a damaged one
  // ends the process in LMDB's own walk of it (SIGABRT, SIGBUS, SIGSEGV, a
  // double free) instead of failing it. So this reads the free list, the
  // main database and the trees of the named databases in `db_names` from
  // the file (tree_check.cc) before LMDB does; open() runs it with
  // options.db_names_checked. Safe beside a writer, in this process or
  // another: it walks the pages of one read transaction. Once `*cancelled`
  // (when given) is true, it reads no more and fails with closed.
  Status check_trees(std::span<const char* const> db_names,
                     const std::atomic<bool>* cancelled = nullptr);

  // corrupt when the file holds a named database, or a record in LMDB's
  // main database, that is not among options.db_names. open() runs it.
  Status check_db_names();

  // Runs `attempt`, one write transaction that stores in *rc the LMDB code
  // it failed with (0 otherwise). While that is MDB_MAP_FULL — LMDB has
  // aborted the transaction, so nothing of it is written — doubles the map
  // (at most to map_size_bytes_max) and runs it again; MDB_MAP_RESIZED (its
  // begin met a map another process grew: Txn::begin's `rc`) adopts that
  // size and runs it again. attempt runs under
  // the map lock, shared; the growth takes it exclusive, so the caller must
  // not share the map. io_error when the map is at its maximum.
  Status write_growing(const std::function<Status(int* rc)>& attempt);

  // Adopts the map size another process grew the file to (a transaction
  // began with MDB_MAP_RESIZED). Takes the map lock exclusive.
  Status adopt_map_size();

  // Writes a compacted copy of the environment as one read transaction
  // sees it (mdb_env_copyfd2, MDB_CP_COMPACT) to `dir`/data.mdb, made here
  // (`dir` must exist and hold no data.mdb), and syncs it. Safe while
  // another process writes the environment. LMDB writes the copy into a
  // pipe from a thread of its own; this thread writes the file, so the
  // copy can stop between chunks (CopyProgress).
  Status copy_to(const std::string& dir, const CopyProgress& keep_going = {});

 private:
  Environment() = default;
  // Makes env_ afresh (closing any before) and opens it in dir_ with
  // options_ and `flags`: LMDB's code.
  int open_handle(unsigned flags);
  // LMDB's assert callback (its user context is the Environment).
  static void on_assert(MDB_env* env, const char* message);
  // For a reader without lock.mdb: shared flocks on the data directory and
  // on dir_ (log::DirFlock), held in writers_out_; locked beside a writer,
  // saying why the reader has no lock.mdb: `lock_made`, the failure to make
  // one (a full disk), or none when it may not write it.
  Status keep_writers_out(const Status& lock_made);

  MDB_env* env_ = nullptr;
  EnvironmentOptions options_;  // its component views component_
  std::string component_;
  std::string dir_;
  std::size_t map_size_bytes_ = 0;
  // Held by a reader that opened without lock.mdb (open()); released after
  // env_ closes.
  std::vector<std::unique_ptr<log::DirFlock>> writers_out_;
  // Lock order: gate, then map lock.
  mutable std::mutex map_gate_;
  mutable std::shared_mutex map_lock_;

  // Closes the gate and takes the map lock exclusive.
  struct RemapLock {
    explicit RemapLock(const Environment& env) : gate(env.map_gate_), map(env.map_lock_) {}
    std::lock_guard<std::mutex> gate;
    std::unique_lock<std::shared_mutex> map;
  };
};

// A transaction that aborts unless it was committed.
class Txn {
 public:
  Txn() = default;
  ~Txn() { abort(); }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  // flags: 0 for a write transaction, MDB_RDONLY for a read transaction.
  // try_begin returns LMDB's code (a caller that handles MDB_MAP_RESIZED
  // needs it); begin turns a failure into io_error.
  int try_begin(const Environment& env, unsigned flags);
  Status begin(const Environment& env, unsigned flags) {
    int rc = 0;
    return begin(env, flags, &rc);
  }
  // The same, storing LMDB's code in *rc: a write_growing attempt's.
  Status begin(const Environment& env, unsigned flags, int* rc) {
    *rc = try_begin(env, flags);
    return *rc == 0 ? Status() : env.error("mdb_txn_begin", *rc);
  }
  // begin, adopting a map another process grew first (MDB_MAP_RESIZED), as
  // ReadTxn does: for a caller that does not share the map.
  Status begin_adopting(Environment& env, unsigned flags);
  // The LMDB code; the transaction is gone either way.
  int commit() {
    const int rc = mdb_txn_commit(txn_);
    txn_ = nullptr;  // freed by commit even when it fails
    return rc;
  }
  void abort() {
    if (txn_ != nullptr) mdb_txn_abort(txn_);
    txn_ = nullptr;
  }
  MDB_txn* get() const { return txn_; }
  const Environment& env() const { return *env_; }

 private:
  MDB_txn* txn_ = nullptr;
  const Environment* env_ = nullptr;
};

// A read transaction that holds the environment's map lock shared while it
// lives, and adopts a map another process grew before it begins.
class ReadTxn {
 public:
  ReadTxn() = default;
  Status begin(Environment& env);
  MDB_txn* get() const { return txn_.get(); }
  const Txn& txn() const { return txn_; }

 private:
  std::shared_lock<std::shared_mutex> lock_;
  Txn txn_;  // declared after lock_: aborted before the lock is released
};

class Cursor {
 public:
  Cursor() = default;
  ~Cursor() {
    if (cursor_ != nullptr) mdb_cursor_close(cursor_);
  }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  Status open(const Txn& txn, MDB_dbi dbi) {
    const int rc = mdb_cursor_open(txn.get(), dbi, &cursor_);
    if (rc != 0) {
      cursor_ = nullptr;
      return txn.env().error("mdb_cursor_open", rc);
    }
    return Status();
  }
  MDB_cursor* get() const { return cursor_; }

 private:
  MDB_cursor* cursor_ = nullptr;
};

}  // namespace tally::snap::lmdb
