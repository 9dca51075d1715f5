// Ledger: the embedded ledger engine. "Subject owns N of item type X."
//
//   auto ledger = tally::Ledger::open({.data_dir = "data"});
//   if (!ledger) { ... ledger.status() ... }
//   auto receipt = (*ledger)->acquire("order-1", "alice", "gold", 100);
//
// Every mutation carries an idempotency key and is decided by one writer
// thread, appended to the log, made durable (per Durability) together with
// whatever else arrived meanwhile, applied to the projection, and only then
// acknowledged. Opening replays the log.
//
// Errors and outcomes: a call returns Result<Receipt>. An error (invalid,
// idempotency_conflict, read_only, closed) means nothing was decided, except
// io_error: the write of its group failed, and the outcome is unknown (the
// bytes may be on disk; retry with the same key once reopened). A Receipt
// carries the durable outcome, ok or a state rejection.
//
// Thread safety: every method may be called from any thread. Completions of
// submit() run on a ledger thread, in submission order, and must not block:
// close() from one is invalid, and destroying the Ledger in one is not
// allowed. An empty completion is allowed: a command still runs, a read
// does not.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/api.h"
#include "engine/backup.h"
#include "engine/clock.h"
#include "engine/types.h"
#include "log/file.h"
#include "log/format.h"
#include "log/histogram.h"
#include "log/status.h"

namespace tally {

// The largest LedgerOptions::queue_depth_max.
inline constexpr std::size_t kQueueDepthMaxLimit = std::size_t{1} << 24;

struct LedgerOptions {
  std::string data_dir;
  Durability durability = Durability::sync;
  // async durability: the longest a written event waits for an fdatasync
  // to begin (it is durable once that one ends).
  std::int64_t sync_interval_ms = 10;
  // Keys (and finalized holds) are remembered this long, in log time. 0: forever.
  std::int64_t idempotency_window_ns = 24ll * 3600 * 1'000'000'000;
  std::int64_t hold_ttl_ns_max = kHoldTtlNsMaxDefault;
  std::uint64_t segment_size_bytes = log::kSegmentSizeBytesDefault;
  // Commands waiting for the writer; submit() waits for room beyond it,
  // except in a completion (it queues past it, up to kQueueDepthMaxLimit,
  // and is answered busy beyond that).
  // 1..kQueueDepthMaxLimit: the queues are sized for at most the default
  // at open and grow as they fill.
  std::size_t queue_depth_max = 1u << 16;
  // Snapshots (docs/snapshots.md): a follower thread applies the committed
  // log to its own copy of the state and writes it to DATA/snapshots every
  // snapshot_every_events events or snapshot_every_seconds seconds (0 turns
  // a trigger off; both 0: no snapshots, and no second copy of the state in
  // memory), keeping the newest snapshot_retain. Opening starts from the
  // newest valid snapshot and replays only the log after it.
  std::uint64_t snapshot_every_events = 1'000'000;
  std::int64_t snapshot_every_seconds = 3600;
  std::size_t snapshot_retain = 2;
  // A batch job's choice: close() also writes the snapshot the count
  // trigger calls for when the archivist has not (it runs at idle priority
  // and lags a writer at full speed), so that the next open replays at most
  // snapshot_every_events events. It writes the ledger's own state, final
  // once the writer stopped, without waiting for the archivist's copy; the
  // write takes about as long as one of the archivist's (seconds for
  // millions of balances). Off, close() ends within about two seconds and the
  // next open replays what was missed.
  bool snapshot_due_at_close = false;
  // Scrub: every log_scrub_seconds, the thread of LedgerStats::log_checked
  // reads every durable record again, verifying checksums and chain, so
  // that damage that comes after the open (a flipped bit in an old segment)
  // is found while backups still hold the events. 0: only the check at open.
  std::int64_t log_scrub_seconds = 7ll * 24 * 3600;
  // The history projection in DATA/history, for point-in-time reads; kept
  // by the same follower. Off: point-in-time reads replay from a snapshot.
  bool history = true;
  // Borrowed; must outlive the Ledger. nullptr: the system clock / POSIX files.
  Clock* clock = nullptr;
  log::FileSystem* fs = nullptr;
  // Borrowed, read during open() only: once it is true, the replay of the
  // log stops and open() returns closed (a server told to stop while it
  // starts). nullptr: the open runs to its end.
  const std::atomic<bool>* cancel_open = nullptr;
  // Borrowed; when set, open() keeps it at the snapshot it loads and the
  // events its replay of the log applied so far (a server says so while it
  // starts).
  OpenProgress* open_progress = nullptr;
};

struct LedgerStats {
  std::uint64_t next_seq = 0;
  std::uint64_t events_replayed = 0;   // at open, after the snapshot
  std::uint64_t snapshot_seq = 0;      // the snapshot open started from; 0: none
  double replay_seconds = 0;
  std::uint64_t syncs = 0;
  std::uint64_t log_bytes_written = 0;
  std::uint64_t groups = 0;            // group commits written
  log::HistogramSnapshot sync_ns;       // how long each fdatasync of the log took
  log::HistogramSnapshot group_events;  // events per group commit
  std::uint64_t balances = 0;
  std::uint64_t open_holds = 0;
  std::uint64_t keys = 0;
  bool read_only = false;              // read_only(): a write failed
  // The follower of docs/snapshots.md (zero when it is off).
  std::uint64_t history_seq = 0;       // the history projection reaches here
  std::uint64_t snapshots_written = 0; // since open
  std::uint64_t last_snapshot_seq = 0;
  double last_snapshot_seconds = 0;    // to write it
  // The follower stopped on an error (logged on stderr): snapshots and the
  // history no longer advance until the ledger is reopened, while the
  // ledger itself goes on. A log that no longer reads back (media
  // corruption) is one cause: the next open would refuse it, or drop the
  // damaged record as a torn write when it is the last.
  bool archivist_failed = false;
  // The history index was found damaged: it stopped (and was set aside for
  // the next open to rebuild) while snapshots go on; point-in-time reads
  // replay from the nearest snapshot.
  bool history_failed = false;
  // The snapshot store was found damaged as a snapshot was written: the
  // snapshots stopped (the store set aside; the next open begins a new one
  // and replays the log) while the history goes on.
  bool snapshots_failed = false;
  // A write of the history or of a snapshot failed with an I/O error (a
  // full disk, say; logged) and is tried again every 10 s: the history
  // falls behind, or due snapshots wait, until one succeeds. Or the
  // archivist's read of the log failed so (out of file descriptors, say),
  // and both wait the same way.
  bool archivist_retrying = false;
  // An open that starts from a snapshot reads none of the log's records
  // before it in earlier segments (those in the snapshot's own segment it
  // reads to find its seq, and damage there fails the open); a thread at
  // the lowest priority (nice 19) then reads them all, verifying their
  // checksums and chain. log_checked: done (or nothing to check);
  // log_damaged: it found them damaged (logged on stderr, with segment and
  // offset). The ledger goes on either way: its state does not depend on them.
  // A scrub (LedgerOptions::log_scrub_seconds) that finds damage sets
  // log_damaged too; log_scrubs counts the scrubs done since open. Either
  // check that fails to read the log (an I/O error) tries twice more, 10 s
  // apart (or a scrub period, when shorter), before it counts as damage.
  bool log_checked = false;
  bool log_damaged = false;
  std::uint64_t log_scrubs = 0;
};

class Ledger final : public LedgerApi {
 public:
  // Takes the data directory's lock, replays the log, resumes appending.
  // Errors: locked (another process has it, or a closed Ledger of this
  // process still does), corrupt (with segment and offset), io_error (its
  // files cannot be read or written; the directory cannot be made: a
  // parent is a file, or not writable; missing ones are made), not_found
  // (it holds what no ledger makes), invalid (options), closed
  // (cancel_open was set).
  static Result<std::unique_ptr<Ledger>> open(const LedgerOptions& options);
  // close(), ignoring its Status.
  ~Ledger() override;
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // ---- LedgerApi: mutations return once the outcome is durable ----
  Result<Receipt> execute(Command command) override;
  // Queues a command; `done` runs once its outcome is durable per the
  // durability mode (or it failed).
  // Waits only when the queue is full, and never in a completion.
  void submit(Command command, Completion done) override;

  // ---- reads: consistent with every acknowledged mutation ----
  Result<Balance> balance(std::string_view subject, std::string_view item) override;
  Result<std::vector<ItemBalance>> list(std::string_view subject) override;
  Result<HoldView> hold_info(HoldId hold) override;

  // The same reads without blocking the caller, for event loops and
  // servers: `done` gets the answer on a ledger thread (or at once, on this
  // one, for invalid arguments and a closed ledger) and must not block.
  // Waits only when the queue is full, as submit() does.
  void submit_balance(std::string subject, std::string item,
                      std::function<void(Result<Balance>)> done) override;
  void submit_list(std::string subject,
                   std::function<void(Result<std::vector<ItemBalance>>)> done) override;
  void submit_hold_info(HoldId hold, std::function<void(Result<HoldView>)> done) override;

  // ---- point-in-time reads (engine/point_in_time.h) ----
  // As of a committed seq or a time; invalid for a seq not committed yet.
  // As of a time T, a hold due by T counts as released (engine/api.h).
  // From the history projection, or a snapshot plus a replay where it lags;
  // a time at or past the last committed event, from the State read then.
  Result<Balance> balance(std::string_view subject, std::string_view item, AsOf at) override;
  Result<std::vector<ItemBalance>> list(std::string_view subject, AsOf at) override;
  Status for_each_balance(AsOf at, const std::function<void(std::string_view subject,
                                                            std::string_view item, Balance balance)>& visit);
  // A hold as of `at`, always from a replay: as of a time T, expired once
  // due by T; as of a seq, open until its commit, release or expire event.
  Result<HoldView> hold_info(HoldId hold, AsOf at) override;

  // Takes a snapshot of the state at the durable seq now (the committed
  // one under sync; under async, the last one synced, since snapshots never
  // hold events a crash could take back), without stopping the writer;
  // returns its seq once it is written. invalid when snapshots are off, or
  // while no event is durable.
  Result<std::uint64_t> snapshot_now();

  // Copies the data directory to `out_dir` while the ledger goes on, as
  // backup_data (engine/backup.h) does from another process, but through
  // this ledger's own snapshot store and history index: LMDB allows one
  // open of a store per process. Blocks the writer at no point; snapshot
  // writes wait for the copy of their store. `progress` as for
  // backup_data. close() cancels it (closed) and waits for it to return.
  Result<BackupReport> backup(const std::string& out_dir, const BackupProgress& progress = {});
  // Appends expire events for every hold due at the clock's now. The writer
  // does this by itself before each command and when idle; tests with a
  // manual clock call it to make time pass.
  Status expire_due();

  // Cheap: counters, and the state's sizes. Fit for monitoring.
  LedgerStats stats();
  // True once a write has failed: every mutation and every read of the
  // current state (and expire_due, digest) then answers read_only, as do
  // reads decided after the failed group, until the ledger is closed and
  // opened again (which finds what reached the disk). Point-in-time reads,
  // snapshot_now and backups go on: they read only durable events. What a
  // health check should watch.
  bool read_only() const;
  // proj::State::digest() of the state after the last applied event: what
  // `tally verify` prints for the log. It hashes every balance, hold and
  // key on the writer thread, holding up commands meanwhile (about 0.1 s
  // per million keys): for tests and audits, not for monitoring.
  Result<std::uint64_t> digest();

  // The last seq whose outcome has been acknowledged: durable per the
  // durability mode (written and fdatasync'd under sync, written under
  // async). Readers of the live log read up to it and never past it.
  std::uint64_t committed_seq();
  // The last seq on disk for good: committed_seq(), but under async
  // durability the last one a periodic fdatasync covered. Snapshots, the
  // history projection and the event feeds read up to it, so that nothing
  // they hand on can be taken back by a crash of the system.
  std::uint64_t durable_seq();
  // What wait_committed() or wait_durable() saw: the seq, and whether the
  // ledger closed (the seq will not grow again).
  struct Committed {
    std::uint64_t seq = 0;
    bool closed = false;
  };
  // Wait until committed_seq() (durable_seq()) > after, the timeout passes
  // or the ledger closes. A timeout is at most a year (milliseconds::max()
  // included). From a completion they return at once what they see: the
  // seq cannot move while a completion runs.
  Committed wait_committed(std::uint64_t after, std::chrono::milliseconds timeout);
  Committed wait_durable(std::uint64_t after, std::chrono::milliseconds timeout);
  // LedgerOptions::data_dir made absolute at open (against the working
  // directory then).
  const std::string& data_dir() const;
  log::FileSystem& file_system() const;

  std::uint64_t ledger_id() const override;

  // Finishes queued commands, syncs the log, stops the threads, releases the
  // lock (another process may open the directory). Later calls answer
  // `closed`. Idempotent: a second close() answers as the first did (a
  // failed write's Status too). The stores' files and maps are released
  // when the Ledger is destroyed; until then an open of the same directory
  // in this process is `locked`.
  Status close() override;

 private:
  struct Impl;
  explicit Ledger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally
