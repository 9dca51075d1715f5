// Archivist: keeps the snapshots and the history projection of a live
// ledger, off the write path.
//
// A follower thread reads the committed log with a LogTail (log/tail.h) as
// the writer appends it — the only handoff from the writer is its committed
// seq, so the writer never waits for it — and
//   - applies every event to its own copy of the state and writes that copy
//     as a snapshot every snapshot_every_events events or
//     snapshot_every_seconds seconds, or when asked (snapshot_now), then
//     prunes to snapshot_retain;
//   - appends every event to the history projection (snapshots/history.h),
//     flushing it every flush_interval, and at once when a reader waits
//     for it (wait_history).
// One read of the log serves both while the history keeps up. Where it is
// behind (an index rebuilt or left behind at the last close, or while a
// snapshot asked for went first), it reads on a second tail, so that the
// state and its snapshots never wait for the history's catch-up, which
// takes minutes on a large index.
// A write of either that fails with an I/O error (a full disk, say) pauses
// that part, which keeps what it has and tries again every retry_interval;
// the other part goes on. A read of the log that fails with one (out of
// descriptors, say) pauses both, which read on from where they stood
// every retry_interval; so does the load of the state they start from.
// Any other error stops both, and damage stops the damaged part
// (ArchivistStats).
// The copy costs the state's memory a second time; the alternatives (a
// copy-on-write fork, stopping the writer to serialise its state) stall
// the writer instead. docs/snapshots.md gives the measurements.
//
// Once it has loaded its copy of the state (at normal priority, like the
// open), the thread runs under SCHED_IDLE, only on a core nothing else
// wants: under full load it lags and catches up later, which point-in-time
// reads account for (engine/point_in_time.h falls back to a replay where
// the index lags). It wakes every 8192 committed records or 20 ms, not
// once per group commit. stop() makes it normal again for the drain, and
// snapshot_now until the snapshot it waits for is taken, where the process
// may (docs/snapshots.md: root, CAP_SYS_NICE or RLIMIT_NICE 20).
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "engine/replay.h"
#include "log/file.h"
#include "log/status.h"
#include "projections/state.h"
#include "snapshots/history.h"

namespace tally {

struct ArchivistOptions {
  std::uint64_t snapshot_every_events = 1'000'000;  // 0: no count trigger
  std::int64_t snapshot_every_seconds = 3600;       // 0: no time trigger
  std::size_t snapshot_retain = 2;
  bool history = true;
  // How often the history is flushed while events keep coming. Each flush
  // rewrites every B-tree page its entries land on, so rarer, larger ones
  // write less (docs/performance.md); a reader waiting for the index
  // (wait_history) gets a flush at once, and a crash costs only a re-read
  // of the log since the last one. While the history catches up from far
  // behind, it is flushed only when its buffer is full.
  std::chrono::milliseconds flush_interval{1000};
  // How long after a write of the history or of a snapshot, or a read of
  // the log (the load of the state included), failed with an I/O error it
  // is tried again. Meanwhile the history falls behind and catches up once
  // a try succeeds; due snapshots wait, while one asked for (snapshot_now)
  // is tried at once. Must be > 0.
  std::chrono::milliseconds retry_interval{10'000};
};

// What the archivist works on; every pointer is borrowed and must outlive it.
struct ArchivistContext {
  std::string data_dir;
  log::FileSystem* fs = nullptr;
  proj::StateOptions state_options;
  SharedSnapshots* snapshots = nullptr;   // required when snapshots are on
  snap::HistoryStore* history = nullptr;  // required when history is on
  // The last seq to read: the ledger's durable seq (committed, and for
  // async durability also synced), so that nothing the archivist writes
  // describes events a crash can take back. Must not block or take a lock the ledger's threads
  // take: the archivist runs at SCHED_IDLE, and preempted while holding
  // such a lock it would stall the writer (priority inversion).
  std::function<std::uint64_t()> committed_seq;
};

struct ArchivistStats {
  std::uint64_t history_seq = 0;   // indexed up to here
  std::uint64_t state_seq = 0;     // the follower's copy is here (0 when snapshots are off)
  std::uint64_t snapshots_written = 0;
  std::uint64_t last_snapshot_seq = 0;
  double last_snapshot_seconds = 0;  // time to write it
  Status failure;                  // why the archivist stopped, if it did
  // Why the history stopped while snapshots go on: its index was found
  // damaged (corrupt), and set aside for the next open to rebuild.
  Status history_failure;
  // Why the snapshots stopped while the history goes on: their store was
  // found damaged (corrupt) as one was written, and set aside.
  Status snapshot_failure;
  // The last I/O error of a write of the history or of a snapshot, or of a
  // read of the log, that is to be tried again
  // (ArchivistOptions::retry_interval); ok when none is.
  Status retrying;
};

class Archivist {
 public:
  // Starts the thread. The history projection is checked against the log
  // first, before start returns: one that is ahead of the log, or whose
  // chain checksum differs from the log's at its seq (another log, or
  // events a crash lost), is cleared, and the thread rebuilds it. One that
  // reads as corrupt stops the history alone (ArchivistStats::history_failure),
  // and so does one whose pages the thread, before anything else, finds
  // damaged (history_readable).
  static Result<std::unique_ptr<Archivist>> start(ArchivistContext context, ArchivistOptions options);
  ~Archivist();  // stop()
  Archivist(const Archivist&) = delete;
  Archivist& operator=(const Archivist&) = delete;

  // Writes a snapshot of the state at the committed seq as it is when
  // called; returns its seq. invalid when snapshots are off.
  Result<std::uint64_t> snapshot_now(std::chrono::milliseconds timeout);
  // Waits until the history projection reaches `seq` or the timeout
  // passes; true when it did. False at once when the history stopped, or
  // waits to try a failed flush again (ArchivistOptions::retry_interval):
  // the reader then goes to the log.
  bool wait_history(std::uint64_t seq, std::chrono::milliseconds timeout);
  // Whether the history index may be read: once the thread has walked its
  // pages (snap::HistoryStore::check_pages, its first work: a page damaged
  // on disk would end the process in LMDB's read of it) and while it has
  // not stopped on a damaged index, or one with a page the disk could not
  // read in that walk (stats().history_failure). Waits for the
  // walk up to `timeout` (0.1 s for a 245 MB index in the page cache;
  // about a second per 250 MB from the disk); false past it, or at once
  // once the history stopped: the reader then goes to the log. Without the
  // lock once the walk is done.
  bool history_readable(std::chrono::milliseconds timeout);
  // Whether the history stopped on a damaged index (stats().history_failure
  // is set): without the lock and the copy of stats().
  bool history_stopped() const;
  ArchivistStats stats();
  // Lets the thread finish loading its copy of the state and catch the
  // history up with the committed log, for up to a second in all; past
  // it, a load or read under way (the walk of the history's pages too)
  // stops. Then lets it flush the history,
  // for up to another second; past it, the flush stops (the next open
  // reads what was not flushed from the log again, as after a crash).
  // Only a snapshot being written is waited for. Stops the thread.
  // Idempotent.
  void stop();

 private:
  struct Impl;
  explicit Archivist(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

bool snapshots_enabled(const ArchivistOptions& options);

// Writes `state`, whose last event is at `position`, as a snapshot into the
// shared store, then prunes it to `retain`: the archivist's snapshots, and
// the ledger's at close. invalid when the store is missing or was set aside.
Status write_snapshot(SharedSnapshots& shared, const proj::State& state,
                      const snap::LogPosition& position, std::size_t retain);

}  // namespace tally
