// Point-in-time reads: balances as of a seq or a time (engine/types.h, AsOf).
//
// Answered from the history projection (snapshots/history.h) where it
// reaches the point asked for, else from the newest snapshot at or before
// the point plus a replay of the log after it (engine/replay.h). Both give
// the balances the log's events give as of then, so they answer the same;
// tests check it.
//
// The Ledger uses these with its own stores and its committed seq as the
// bound; the audit tools with stores they open read-only and the log's end.
// Thread safety: as the stores' (the history store's reads are thread-safe,
// the snapshot store is locked through SharedSnapshots).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/replay.h"
#include "engine/types.h"
#include "log/file.h"
#include "log/status.h"
#include "projections/state.h"
#include "snapshots/history.h"

namespace tally {

struct PointInTimeSource {
  std::string data_dir;
  log::FileSystem* fs = nullptr;        // borrowed; nullptr: POSIX
  proj::StateOptions state_options;     // the ledger's window, or window_from_image
  SharedSnapshots* snapshots = nullptr; // borrowed; nullptr: open DATA/snapshots if there
  const snap::HistoryStore* history = nullptr;  // borrowed; nullptr: replay only
  // The last seq known to be complete: the ledger's committed seq, or the
  // log's end for a tool. A seq past it is invalid.
  std::uint64_t last_seq = 0;
  // Passed to the fallback replay as ReplayOptions::visit (a tool's
  // progress line); empty: none.
  std::function<void(const log::Event&, const log::Record&)> visit;
};

// Which path answered, for reports and tests.
enum class PointInTimePath : std::uint8_t { history, replay };

struct PointInTimeRead {
  std::uint64_t seq = 0;  // the point resolved to a seq (0: before the first event)
  PointInTimePath path = PointInTimePath::replay;
  // Not ok: the index covered the point but a record of it was damaged
  // (corrupt); the answer came from the log instead.
  Status index_damage;
  // Snapshots the replay passed over (ReplayReport::skipped).
  std::vector<snap::SkippedSnapshot> skipped_snapshots;
};

// Balances as of a time T count every hold due by T as released, whether
// or not its expire event is stamped by then (reads never show a due hold
// as held); as of a seq, as the events up to it left them. The index holds
// balances, not holds: where a pair with held quantity may hold one due by
// T (its next change is an expire event, or T is past the last event
// indexed), a replay answers.
//
// Each returns invalid for a seq past source.last_seq. `read` (optional)
// receives the seq the point resolved to and the path taken. Each answers
// from the log where an index record it reads is damaged (for_each_at reads
// the index whole before it visits any balance, so it holds them all in
// memory meanwhile: about 40 bytes each and their names).
Result<Balance> balance_at(const PointInTimeSource& source, std::string_view subject,
                           std::string_view item, AsOf at, PointInTimeRead* read = nullptr);
// Non-zero balances of a subject, items sorted bytewise.
Result<std::vector<ItemBalance>> list_at(const PointInTimeSource& source, std::string_view subject,
                                         AsOf at, PointInTimeRead* read = nullptr);
// Every non-zero balance, sorted bytewise by subject then item.
Status for_each_at(const PointInTimeSource& source, AsOf at,
                   const std::function<void(std::string_view subject, std::string_view item,
                                            Balance balance)>& visit,
                   PointInTimeRead* read = nullptr);

// A hold as the events up to `at` left it, from a replay (the history
// index holds balances only). As of a time T, a hold due by T is expired,
// whether or not its expire event is stamped by then (as balances as of T
// count it released); as of a seq, it is open until its commit, release or
// expire event. not_found when no hold had that id then, or when it was
// finalized longer ago than the idempotency window.
Result<HoldView> hold_at(const PointInTimeSource& source, HoldId hold, AsOf at,
                         PointInTimeRead* read = nullptr);

// What a read at `now_ns` shows of a hold of the State: expired once due.
HoldView hold_view(const proj::HoldInfo& hold, std::int64_t now_ns);

// Whether the history projection alone can answer `at`.
bool history_covers(const PointInTimeSource& source, AsOf at);

// Whether the history projection belongs to DATA's log up to last_seq: its
// position is at most last_seq and the log's record there carries its
// chain checksum (an empty projection always does). A projection that
// does not (another log's, or one of events a crash lost) must not answer;
// rebuild it.
Result<bool> history_continues_log(log::FileSystem& fs, const std::string& data_dir,
                                   const snap::HistoryStore& history, std::uint64_t last_seq);

// Where DATA's log ends, reading only its last segment.
Result<log::LogEnd> log_end_of(log::FileSystem& fs, const std::string& data_dir);
// The seq of the last record of DATA's log (0 when empty): log_end_of()'s.
Result<std::uint64_t> log_last_seq(log::FileSystem& fs, const std::string& data_dir);

}  // namespace tally
