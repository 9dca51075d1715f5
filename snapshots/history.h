// HistoryStore: the point-in-time history projection (docs/snapshots.md), an
// LMDB index in DATA/history/ of every balance change keyed (subject, item,
// seq) within epochs of consecutive seqs, each opening with the non-zero
// balances at its start, so "the balance at seq N" or "at time T" is two
// seeks, not a replay. Format: snapshots/history_format.h.
//
// The writer — one thread: the engine's writer after it applies an event,
// or a rebuild reading the log — calls append() for every event in seq
// order, rejected ones included, and flush() to make what it appended
// visible. Readers see the index as of the last flush: whole at that
// position, never part of a flush.
//
// Where the index stands against the log: position() names the last
// indexed seq and the log's chain checksum after it. A user opening the
// index compares them with the log; if the log has that seq with that
// chain value, it appends from seq + 1, and otherwise (the index is ahead
// of the log, or of another log) it calls clear() and rebuilds from the
// start. The index is a projection: it can always be rebuilt.
//
// Durability: the environment is opened with MDB_NOMETASYNC, so a flush
// costs one fdatasync of the data pages and none of the meta page. A killed
// process loses nothing flushed; a system crash may undo the last flush,
// never leaves a torn B-tree (LMDB keeps its integrity with this flag), and
// the position check above then sees the index behind the log. MDB_NOSYNC,
// which would skip the fdatasync too, is not used: LMDB documents that a
// system crash can then corrupt the environment, and an audit index that
// answers wrongly is worse than a rebuild. A caller that wants fewer syncs
// flushes less often (the index lags the log by what is not flushed).
//
// Thread safety: the writer calls (append, flush, clear,
// appended_position) come from one thread at a time. The read calls are
// safe from any number of threads at once, with the writer running: each
// takes its own read transaction (the environment is opened with
// MDB_NOTLS). Other processes may read the directory too, through a store
// opened read_only; one process opens a directory once (LMDB's rule) and
// one writer writes it (the ledger's LOCK file; a second writer's flush,
// or append that reads the index, fails with `locked` instead of mixing two
// histories). A visit callback
// must not call back into the store, and runs inside its call's read
// transaction: while it lasts, LMDB reuses no page freed since, and a flush
// that has to grow the map waits for it.
//
// Untrusted bytes: every key and record read is checked (sizes, ids, op
// codes, non-negative balances, the entry check); a malformed one is a
// corrupt Status, never a crash.
//
// Chains: LMDB has no page checksums, and a damaged key moves a whole
// record out of the range a read seeks in, unread. So the readers also
// check what surrounds the answer (history_format.h, "Chains"): an entry's
// balance after, less its change, must be the pair's balance before it. A
// read of the balance at seq N looks one entry past N (or, past the pair's
// last entry in N's epoch, at its opening balance in the next epoch), and
// is corrupt rather than an older balance when a change between is lost.
//
// Ownership: the store owns the LMDB environment. Views handed to a visit
// callback (names, keys) point into the map and are valid during the call.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "log/event.h"
#include "log/status.h"
#include "snapshots/copy_progress.h"
#include "projections/state.h"

namespace tally::snap {

// How far the index reaches into the log.
struct HistoryPosition {
  std::uint64_t seq = 0;             // the last event indexed; 0 when empty
  std::uint64_t chain_checksum = 0;  // the log's chain value after seq
  std::int64_t time_ns = 0;          // the timestamp of the event at seq
  bool operator==(const HistoryPosition&) const = default;
};

// One change of one pair by one event.
struct HistoryEntry {
  std::uint64_t seq = 0;
  std::int64_t time_ns = 0;
  std::string_view key;  // the event's idempotency key; empty for an expire
  std::string_view op;   // proj::event_op_name: "acquire", ..., "expire", "batch"
  std::int64_t delta_available = 0;
  std::int64_t delta_held = 0;
  proj::Balance after;  // the pair's balance after the event
};

struct HistoryStoreOptions {
  // Readers only: append, flush and clear are invalid. Opening a directory
  // that holds no index is not_found, and creates nothing.
  bool read_only = false;
  // open() first reads every page of the index's trees from the file, and
  // says corrupt where they do not hold together, before LMDB follows them
  // (check_pages()); without it, only the trees open() itself reads are
  // (LMDB's free list and main database, the position's and the epochs'),
  // and the others must be checked (check_pages()) before anything reads
  // or writes them. The walk reads the whole file: 0.1 s for a 245 MB
  // index in the page cache, 0.9 s from the disk.
  bool check_all_pages = false;
  // The LMDB map's initial size; a flush that fills it doubles it (up to
  // map_size_bytes_max) and writes again. An existing larger file keeps its
  // size; a reader adopts a size another process grew the map to.
  std::size_t map_size_bytes = std::size_t{64} << 20;
  std::size_t map_size_bytes_max = std::size_t{1} << 40;
  // Memory for what is appended and not yet flushed (entries, new pairs,
  // times, keys). An append that would pass it is busy and changes
  // nothing; flush, then append again. An append to an empty buffer is
  // always taken, so any value makes progress.
  std::size_t pending_bytes_max = std::size_t{64} << 20;
  // Pairs whose id and last balance the writer keeps in memory, so an
  // append to a recently changed pair reads nothing from LMDB. A flush that
  // finds more cached empties the cache. Pairs changed since the last flush
  // are always cached (their balance is nowhere else), on top of this.
  std::size_t pair_cache_max = std::size_t{1} << 18;
  // A flush ends the newest epoch once it holds this many entries, or as
  // many as it has opening balances if that is more (history_format.h). A
  // flush rewrites the leaves of the newest epoch only, so this bounds the
  // pages one flush touches; each epoch costs the writing of every
  // non-zero balance as the next one's openings. At least 1.
  std::uint64_t epoch_entries_min = std::uint64_t{1} << 18;
};

class HistoryStore {
 public:
  // Opens or creates the index in `dir` (created if missing; its parent
  // must exist). invalid for bad options; not_found when read_only and
  // `dir` holds no index; corrupt when the position record does not verify
  // (remove the directory and rebuild: the index is a projection); io_error
  // when LMDB or the file system refuses.
  static Result<std::unique_ptr<HistoryStore>> open(const std::string& dir,
                                                    const HistoryStoreOptions& options);
  ~HistoryStore();
  HistoryStore(const HistoryStore&) = delete;
  HistoryStore& operator=(const HistoryStore&) = delete;

  // ---- writer

  // The last event appended, flushed or not: the next append takes
  // appended_position().seq + 1. Equal to position() after a flush.
  HistoryPosition appended_position() const;

  // Indexes one event (`chain_checksum`: the log's chain value after it),
  // buffered in memory until flush(). Each pair the event changes gets an
  // entry with its balance after: its last balance (zero if none) plus the
  // change (proj::event_deltas). invalid when event.seq is not
  // appended_position().seq + 1, its timestamp is before the previous
  // event's, it has no ops or more than log::kBatchOpsMax, its key is over
  // 255 bytes, or a subject or item is not 1..255 bytes without NUL; busy
  // when the buffer is full (pending_bytes_max); corrupt when a change would
  // take a balance below zero or past INT64_MAX (the event does not follow
  // the indexed history: clear and rebuild); locked when a lookup finds
  // that another writer flushed this index; io_error when a lookup fails.
  // Any error leaves the store as it was.
  Status append(const log::Event& event, std::uint64_t chain_checksum);

  // Writes everything appended since the last flush, with the new position,
  // in one transaction: all or nothing. On an error nothing is written and
  // the appends stay buffered, so flush may be called again; locked when
  // another writer flushed this index since it was opened. Nothing
  // appended: nothing written. `cancel` (borrowed; may be null) stops a
  // flush under way once set: closed, nothing written.
  Status flush(const std::atomic<bool>* cancel = nullptr);

  // Removes every pair, entry and time and puts the position back to 0,
  // dropping what is buffered, in one transaction (for a rebuild).
  Status clear();

  // ---- readers: the index as of the last flush

  // {0, 0, 0} when empty.
  Result<HistoryPosition> position() const;
  // position()'s status: whether the index's metadata reads (open_renewing).
  Status probe() const;
  // corrupt when a page of the index's trees does not hold together
  // (lmdb::Environment::check_trees): what open() does with
  // check_all_pages, for a store opened without it. LMDB trusts its pages,
  // so a damaged one would end the process in a read or a write that
  // reaches it. Safe beside appends and flushes from another thread.
  // Once `*cancelled` (when given) is true, it fails with closed.
  Status check_pages(const std::atomic<bool>* cancelled = nullptr) const;
  // A compacted copy of the index as of its last flush into `dir` (made by
  // the caller, empty): lmdb::Environment::copy_to. A backup's.
  Status copy_to(const std::string& dir, const CopyProgress& keep_going = {}) const;

  // The last indexed seq stamped at or before time_ns (events stamped
  // exactly time_ns included), 0 if none: "as of time T" is "after that
  // seq". Balances read there are stored balances: a hold due by T whose
  // expire event is stamped after T still shows as held. Given the log's
  // last seq, not_found where the index, as this read finds it, cannot
  // tell: it holds no event stamped after time_ns and ends before it.
  Result<std::uint64_t> seq_at_time(std::int64_t time_ns, std::uint64_t log_last_seq = 0) const;

  // The balance after `seq`: that of the pair's last entry at or before it,
  // zero if none. invalid when seq is past position().seq or a name is not
  // 1..255 bytes without NUL.
  Result<proj::Balance> balance_at(std::string_view subject, std::string_view item,
                                   std::uint64_t seq) const;

  // Every non-zero balance of a subject after `seq`, items in bytewise
  // order. Errors as balance_at.
  Status list_at(std::string_view subject, std::uint64_t seq,
                 const std::function<void(std::string_view item, proj::Balance)>& visit) const;

  // Every non-zero balance after `seq`, in bytewise order of subject, then
  // item. invalid when seq is past position().seq.
  Status for_each_at(std::uint64_t seq,
                     const std::function<void(std::string_view subject, std::string_view item,
                                              proj::Balance)>& visit) const;

  // Every entry of one pair with from_seq <= seq <= to_seq, in seq order,
  // until visit returns false. None for a pair never changed. corrupt, once
  // visit has had the entries before the problem, when one of them does not
  // continue the one before (Chains, below). The range ends at the index's
  // position as this read finds it, which *found (when given) gets: an
  // index that went back since a caller saw it further (cleared and
  // rebuilding) answers for less than was asked.
  Status entries(std::string_view subject, std::string_view item, std::uint64_t from_seq,
                 std::uint64_t to_seq, const std::function<bool(const HistoryEntry&)>& visit,
                 HistoryPosition* found = nullptr) const;

  // Walks the whole index once (for `tally verify`: it reads every record)
  // and checks that it hangs together: every pair key names an id in
  // 1..pair count, each id once; every epoch, opening and entry record
  // verifies; each pair's entries chain within each epoch, the first from
  // the pair's opening balance (or zero); each epoch's opening balances are
  // the balances the epoch before ended with; every time record verifies
  // and follows on from the one before; and the epochs hold every
  // entry and opening there is, the newest as many entries as the position
  // counts (which is what shows a lost last entry of a pair in the newest
  // epoch: no chain follows it). corrupt names the first problem.
  Status check_chains() const;

 private:
  struct Impl;
  explicit HistoryStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::snap
