// Replay: rebuild a projection from a data directory, read-only.
//
// Used by Ledger::open, by point-in-time queries and by the audit tools
// (export, balance, list, verify). Starts from the newest snapshot that
// verifies and whose chain checksum matches the log at its seq, or from an
// empty state when there is none (docs/snapshots.md, "Recovery"), then
// applies the log after it, verifying every checksum and the chain on the
// way (log/reader.h). Never modifies the directory, so it may run beside a
// live writer, in which case it sees a prefix of the log.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/types.h"
#include "log/event.h"
#include "log/file.h"
#include "log/reader.h"
#include "log/status.h"
#include "projections/state.h"
#include "snapshots/store.h"

namespace tally {

// A snapshot store shared by the threads of one process: LMDB allows one
// open environment per process, so every user of a data directory's
// snapshots in a process goes through one of these.
struct SharedSnapshots {
  std::mutex mu;
  std::unique_ptr<snap::SnapshotStore> store;  // guarded by mu
  // Guarded by mu: the store was found damaged and set aside (the
  // archivist's stop_snapshots); nothing reads it again.
  bool failed = false;
};

struct ReplayOptions {
  std::string data_dir;
  log::FileSystem* fs = nullptr;  // borrowed; nullptr: POSIX
  proj::StateOptions state_options;
  // Stop after the event with this seq, and before the first event stamped
  // after to_time_ns.
  std::uint64_t to_seq = UINT64_MAX;
  std::int64_t to_time_ns = INT64_MAX;
  // Start from a snapshot when one verifies. false: replay the whole log.
  bool use_snapshots = true;
  // The snapshot started from has at most this seq (verify --from-seq).
  std::uint64_t snapshot_seq_max = UINT64_MAX;
  // Borrowed; nullptr: open DATA/snapshots if it exists (a process that
  // keeps one open must pass it).
  SharedSnapshots* snapshots = nullptr;
  // Called for each event before it is applied, and after (a failure stops
  // the replay with that Status).
  std::function<void(const log::Event&, const log::Record&)> visit;
  std::function<Status(const proj::State&, const log::Record&)> applied;
  // When not empty (ascending), `applied` is called only after the events
  // with these seqs. The state it sees is exact either way, but replay
  // then remembers keys ahead of the ops on its reading thread, pausing
  // only at these seqs, instead of in step on the applying thread: faster.
  std::vector<std::uint64_t> applied_seqs;
  // log::LogReaderOptions::writer_may_be_live: a tool's replay of a log a
  // server may be appending to.
  bool writer_may_be_live = false;
  // Borrowed; when set, checked before each event: once it is true the
  // replay stops with `closed` (an owner that is shutting down).
  const std::atomic<bool>* cancel = nullptr;
  // Borrowed; when set, the snapshot being loaded and then started from,
  // and the events applied so far (for a server that says how far its open
  // is).
  OpenProgress* progress = nullptr;
};

struct ReplayReport {
  std::uint64_t events = 0;         // applied from the log
  std::uint64_t snapshot_seq = 0;   // the snapshot started from; 0: none
  std::vector<snap::SkippedSnapshot> skipped;  // newer snapshots passed over, and why
  bool reached_end = false;         // read to the end of the log (no bound stopped it)
  log::LogEnd end;                  // where the log ends, when reached_end
  double seconds = 0;
};

struct Replayed {
  std::unique_ptr<proj::State> state;
  ReplayReport report;
};

// Errors: corrupt (with segment and offset, or the seq apply refused),
// io_error. With options.state_options.window_from_image, a replay that
// starts from no snapshot takes newest_snapshot_window_ns()'s window.
Result<Replayed> replay(const ReplayOptions& options);

// Says on stderr which snapshots a replay passed over, and why: a damaged
// snapshot is answered around, but its owner should know.
void warn_skipped_snapshots(const std::vector<snap::SkippedSnapshot>& skipped);

// The idempotency window recorded in the newest snapshot of `shared` whose
// payload verifies (SnapshotStore::newest_window): the window of the
// ledger that took it, which the data directory records nowhere else.
// `fallback_ns` when there is none, or no usable store.
std::int64_t newest_snapshot_window_ns(SharedSnapshots& shared, std::int64_t fallback_ns);

// Roughly how many keys a replay of the events after seq `after`, through
// `to_seq`, will remember and still hold at its end, for replay() to size
// the key index with: one for each event of the segments it reads that the
// idempotency window keeps. A segment is left out once the next was created
// more than a window before the one the replay ends in (its events are
// older than that, the last replayed ones newer). The last segment, still
// being written, counts as an average whole one, and no segment for more
// frames than its size holds. From the headers of the segments of the log
// in `dir`, named by `first_seqs`; 0 for a replay that starts inside the
// segment it ends in (short: growing costs it little) or when a header
// cannot be read (the replay finds why).
std::uint64_t keys_expected(log::FileSystem& fs, const std::string& dir,
                            const std::vector<std::uint64_t>& first_seqs, std::uint64_t after,
                            std::uint64_t to_seq, std::int64_t window_ns);

// The log, snapshot and history directories inside a data directory.
std::string log_dir(const std::string& data_dir);
std::string snapshot_dir(const std::string& data_dir);
std::string history_dir(const std::string& data_dir);

// A data directory: one with a log directory, or one holding nothing but
// what a ledger makes (LOCK, its stores; none: a ledger with nothing in it
// yet; no log: a lost one, which the audit tools report) and hidden files. not_found for a
// missing path, a file, or a directory of other things without a log, so
// that a mistyped path (another directory, a ledger's own log directory)
// is not taken for an empty ledger; io_error when it cannot be read.
Status check_ledger_dir(const std::string& data_dir);

}  // namespace tally
