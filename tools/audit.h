// Read-only access to a data directory for the audit commands (export,
// balance, list, history, verify, snapshot) and for `tally bench --expect`.
// Nothing here takes the directory's lock or writes to the log, so it may
// run beside a live writer and then sees a prefix of the log.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engine/point_in_time.h"
#include "engine/replay.h"
#include "log/status.h"
#include "projections/state.h"
#include "snapshots/history.h"

namespace tally::cli {

// invalid unless `name` is 1..255 bytes (docs/architecture.md, "Names"), naming `what`
// ("subject", "item"); the caller reports it as a usage error.
Status check_name(std::string_view what, std::string_view name);

// The idempotency window `verify` and `snapshot` replay DATA with: the one
// its newest snapshot records (newest_snapshot_window_ns), else the
// default, 24 h. A snapshot of another window does not load into such a
// replay. `snapshots`: DATA's store when the caller holds it open;
// nullptr: opened here for the read.
std::int64_t replay_window_ns(const std::string& data_dir, SharedSnapshots* snapshots);

// Rebuilds DATA's state: from its newest valid snapshot (unless
// options.use_snapshots is false) and the log after it, with a progress
// line on stderr when it is a terminal (tools/progress.h). The
// idempotency window is the snapshot's it starts from (window_from_image),
// the newest snapshot's when it starts from none; replay_window_ns() when
// the caller passes its store (options.snapshots) or replays without
// snapshots. Errors: not_found
// when DATA is not there; corrupt (naming segment and offset) and io_error
// from replay.
Result<Replayed> replay_data(const std::string& data_dir, ReplayOptions options = {});

// Appends every non-zero balance as "subject,item,available,held\n", sorted
// bytewise by subject then item. A hold due at now_ns counts as released.
void append_export(const proj::State& state, std::int64_t now_ns, std::string* out);

// Replays DATA and returns append_export's text.
Result<std::string> export_csv(const std::string& data_dir, std::int64_t now_ns);

// ---- the history index (DATA/history) as the tools use it

// How the index stands against the log. The tools answer from it only when
// it is usable; otherwise they replay the log, which gives the same answers
// more slowly (the index is a projection of the log).
enum class HistoryStanding : std::uint8_t {
  absent,      // DATA/history holds no index
  unreadable,  // it does not open: a corrupt position record, an LMDB error
  usable,      // the log has the index's last seq, with the same chain checksum
  mismatch,    // the log's chain checksum at that seq differs (another log)
  ahead,       // the index's last seq is past the end of the log (lost events)
};
std::string_view history_standing_name(HistoryStanding standing);

struct HistoryIndex {
  HistoryStanding standing = HistoryStanding::absent;
  std::unique_ptr<snap::HistoryStore> store;  // open unless absent or unreadable
  snap::HistoryPosition position;             // read at open, when open
  Status problem;                             // unreadable: why
  log::LogEnd log_end;                        // where the log ends, by check_history_chain

  std::uint64_t log_last_seq() const { return log_end.next_seq - 1; }
  // The store when it is usable, else nullptr.
  const snap::HistoryStore* trusted() const {
    return standing == HistoryStanding::usable ? store.get() : nullptr;
  }
};

// Opens DATA/history read-only (creating nothing) and reads its position;
// standing is absent, unreadable, or — until check_history_chain() — usable.
// `check_all_pages`: snap::HistoryStoreOptions::check_all_pages, which an
// index of up to 64 MiB gets anyway.
HistoryIndex open_history_store(const std::string& data_dir, bool check_all_pages = false);

// What one pass over DATA's log from `seq` to its end tells: the chain
// checksum after seq (its record's checksum; nullopt when the log ends
// before seq; kChainSeed for seq 0), and where the log ends. Reads only the
// segments from the one holding seq (for seq 0, the last one): log
// segments are read whole, so the tools read each as few times as they can.
// Errors are the log's: corrupt, io_error.
struct LogScan {
  std::optional<std::uint64_t> chain_at;
  log::LogEnd end;
};
Result<LogScan> scan_log(const std::string& data_dir, std::uint64_t seq);

// Sets index->log_end, and index->standing to usable, mismatch or
// ahead by reading the log from the index's position (an index absent or
// unreadable keeps its standing), in one scan_log. Errors are the log's.
Status check_history_chain(const std::string& data_dir, HistoryIndex* index);

// Tells stderr why an index that is there is not used (not usable); one
// ahead of the log, as a warning that the log lost events.
void note_history_not_used(const std::string& data_dir, const HistoryIndex& index);
// The seq of DATA's newest snapshot; 0 for none, or for a store that does
// not open or list (a replay that needs one says why).
std::uint64_t newest_snapshot_seq(const std::string& data_dir);
// Warns that DATA's log lost events, which `tally verify` fails on, before
// `what` ("the answer", "the index") is made of what the log holds: its
// last segment was cut short (`end`), or a snapshot (up to `snapshot_seq`)
// or the history index (`index`, when given and checked against the log)
// holds events past its end.
void warn_lost_events(const std::string& data_dir, const log::LogEnd& end,
                      std::uint64_t snapshot_seq, const HistoryIndex* index,
                      std::string_view what = "the answer");
// Before a read from `index` (checked) or the log: why the index is not
// used (note_history_not_used), then what the log lost (warn_lost_events).
void note_before_read(const std::string& data_dir, const HistoryIndex& index);
// Tells stderr what a point-in-time read went around: snapshots its replay
// skipped, and a damaged record of the index that left the read to the log
// (read.index_damage). Nothing when there was neither.
void note_read(const PointInTimeRead& read);

// open_history_store then check_history_chain.
Result<HistoryIndex> open_history_index(const std::string& data_dir, bool check_all_pages = false);

// Everything a point-in-time read by a tool needs: the index (when usable)
// and the log's last seq, read after the index's position so that it is at
// least that position even beside a live writer.
struct PointInTimeData {
  HistoryIndex history;
  PointInTimeSource source;  // source.history borrows history.store
};

// Prints a note on stderr when the index exists but is not used. Errors:
// not_found (no DATA), corrupt and io_error (the log). `check_all_pages`
// (open_history_store) for a read of every balance (export), which reads
// much of the index anyway; a read of a pair or a subject reads a few pages.
Result<std::unique_ptr<PointInTimeData>> open_point_in_time(const std::string& data_dir,
                                                            bool check_all_pages = false);

}  // namespace tally::cli
