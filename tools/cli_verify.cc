// tally verify: checks a data directory end to end — every record's
// checksum and the chain, the state's invariants and the per-item flows,
// every snapshot against a replay of the log to its seq, and how far the
// history index reaches and whether it agrees with the log. Read-only;
// never takes the directory's lock.
#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "log/file.h"
#include "log/hash.h"
#include "log/reader.h"
#include "snapshots/store.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/csv.h"
#include "tools/format.h"

namespace tally::cli {

namespace {

// One part's verdict. `unchecked` is not a failure: the part was outside
// what this run could compare (docs/cli.md, verify).
enum class Verdict : std::uint8_t { ok, bad, unchecked };

std::string_view verdict_name(Verdict verdict) {
  switch (verdict) {
    case Verdict::ok: return "ok";
    case Verdict::bad: return "bad";
    case Verdict::unchecked: return "unchecked";
  }
  return "unknown";
}

struct SnapshotCheck {
  snap::SnapshotInfo info;
  Verdict verdict = Verdict::unchecked;
  std::string detail;  // bad: why; unchecked: why not
  bool loads = false;  // load_newest_valid(its seq) returned this very snapshot
};

struct HistoryCheck {
  HistoryIndex index;        // the store, its position and standing
  bool chain_seen = false;   // the replay passed the index's seq
  std::uint64_t chain = 0;   // the log's chain checksum there
  Verdict balances = Verdict::unchecked;
  std::string detail;        // of the balances' verdict
};

struct VerifySummary {
  ReplayReport report;
  std::size_t segments = 0;
  std::uint64_t last_seq = 0;
  std::int64_t last_time_ns = 0;
  proj::StateCounts counts;
  std::uint64_t digest = 0;
  log::LogEnd log_end;  // where the log ends, whatever --to-seq said
  bool flows_checked = false;
  std::vector<SnapshotCheck> snapshots;
  Status snapshots_unreadable;  // DATA/snapshots does not open or list
  HistoryCheck history;
  Status failed;  // the first bad snapshot or index: verify exits 1

  std::uint64_t log_last_seq() const { return log_end.next_seq - 1; }
};

// Hashes a sorted run of balances, so that the history index's balances at
// a seq and the replayed state's compare without holding both in memory.
// Equal runs give equal byte streams, cut into equal chunks.
class BalanceHash {
 public:
  void add(std::string_view subject, std::string_view item, std::int64_t available,
           std::int64_t held) {
    append_balance_line(&buffer_, subject, item, available, held);
    count_++;
    if (buffer_.size() >= kChunkBytes) drain();
  }
  std::uint64_t finish() {
    drain();
    return hash_ ^ count_;
  }

 private:
  static constexpr std::size_t kChunkBytes = 1u << 16;
  void drain() {
    hash_ = XXH3_64bits_withSeed(buffer_.data(), buffer_.size(), hash_);
    buffer_.clear();
  }
  std::string buffer_;
  std::uint64_t hash_ = 0;
  std::uint64_t count_ = 0;
};

// Whether the store still lists the snapshot at seq (true when it cannot
// tell: a failure to list is not a reason to pass over a load's failure).
bool still_listed(const snap::SnapshotStore& store, std::uint64_t seq) {
  auto infos = store.list();
  if (!infos) return true;
  return std::any_of(infos->begin(), infos->end(),
                     [seq](const snap::SnapshotInfo& info) { return info.seq == seq; });
}

// Opens DATA/snapshots (when it exists), lists it and checks that each
// snapshot loads: load_newest_valid(its seq) returns it. A store that does
// not open or list (damaged, or a file in its place) is left in
// *unreadable, and the check goes on without it, as recovery would.
Status load_snapshots(const std::string& data_dir, SharedSnapshots* shared,
                      std::vector<SnapshotCheck>* checks, Status* unreadable) {
  const std::string dir = snapshot_dir(data_dir);
  if (!log::posix_file_system().exists(dir)) return Status();
  auto store = snap::SnapshotStore::open(dir, {.read_only = true});
  auto infos = store ? (*store)->list() : Result<std::vector<snap::SnapshotInfo>>(store.status());
  if (!infos) {
    if (infos.code() == ErrorCode::not_found) return Status();  // none
    *unreadable = infos.status();
    return Status();
  }
  shared->store = std::move(*store);
  // The window the replay compares with: snapshots of another are unchecked.
  const proj::StateOptions state_options{replay_window_ns(data_dir, shared)};
  for (const snap::SnapshotInfo& info : *infos) {
    SnapshotCheck check{info, Verdict::unchecked, {}, false};
    if (!info.metadata_ok) {
      if (info.metadata_other_version) {
        // As an image of another version's: not damaged, not comparable.
        check.detail = "not comparable: its metadata record is in another version's format";
      } else {
        check.verdict = Verdict::bad;
        check.detail = "its metadata record does not verify";
      }
      checks->push_back(std::move(check));
      continue;
    }
    std::vector<snap::SkippedSnapshot> skipped;
    auto loaded = shared->store->load_newest_valid(info.seq, state_options, &skipped);
    if (loaded && loaded->info.seq == info.seq) {
      check.loads = true;
      checks->push_back(std::move(check));
      continue;
    }
    // A ledger (or tally snapshot) writing beside verify prunes the oldest
    // snapshots as it takes new ones: one gone since the list was read is
    // not damaged.
    if (!still_listed(*shared->store, info.seq)) {
      check.detail = "pruned while verify ran";
      checks->push_back(std::move(check));
      continue;
    }
    Status why = loaded ? Status(ErrorCode::corrupt, "another snapshot loads in its place")
                        : loaded.status();
    for (const snap::SkippedSnapshot& one : skipped) {
      if (one.seq == info.seq) why = one.why;
    }
    // The store names the snapshot ("snapshot N: why"); the report does.
    std::string detail = why.message();
    const std::string named = "snapshot " + std::to_string(info.seq) + ": ";
    if (detail.starts_with(named)) detail.erase(0, named.size());
    if (why.code() == ErrorCode::invalid) {
      // Taken by a ledger with another idempotency window, or by another
      // version: not damaged, but not comparable with the tools' replay.
      check.detail = "not comparable: " + detail;
    } else {
      check.verdict = Verdict::bad;
      check.detail = std::move(detail);
    }
    checks->push_back(std::move(check));
  }
  return Status();
}

// At each snapshot's seq, the replayed state must have its digest and the
// log its chain checksum.
void compare_snapshot(const proj::State& state, const log::Record& record, SnapshotCheck* check) {
  if (!check->loads) return;
  const std::uint64_t digest = state.digest();
  if (digest != check->info.digest) {
    std::string detail = "its digest ";
    append_hex64(&detail, check->info.digest);
    detail += " is not the replay's ";
    append_hex64(&detail, digest);
    check->verdict = Verdict::bad;
    check->detail = detail;
  } else if (record.checksum != check->info.chain_checksum) {
    check->verdict = Verdict::bad;
    check->detail = "its chain checksum is not the log's at its seq";
  } else {
    check->verdict = Verdict::ok;
  }
}

// At the history index's seq, its balances must be the replayed state's.
void compare_history(const proj::State& state, const log::Record& record, HistoryCheck* check) {
  check->chain_seen = true;
  check->chain = record.checksum;
  BalanceHash replayed;
  state.for_each_balance(proj::kStoredOnly, [&](std::string_view subject, std::string_view item,
                                                proj::Balance balance) {
    replayed.add(subject, item, balance.available, balance.held);
  });
  BalanceHash indexed;
  const Status read = check->index.store->for_each_at(
      record.seq, [&](std::string_view subject, std::string_view item, proj::Balance balance) {
        indexed.add(subject, item, balance.available, balance.held);
      });
  if (!read.ok()) {
    check->balances = Verdict::bad;
    check->detail = read.to_string();
  } else if (indexed.finish() != replayed.finish()) {
    check->balances = Verdict::bad;
    check->detail = "its balances at seq " + std::to_string(record.seq) +
                    " differ from the log's";
  } else {
    check->balances = Verdict::ok;
  }
}

// Where the log's records end: the torn segment header, or the segment and
// offset after its last whole record.
std::string end_position(const log::LogEnd& end) {
  return end.torn_header ? log::log_position(end.next_seq, 0)
                         : log::log_position(end.segment_first_seq, end.offset);
}

// For a snapshot or an index holding events up to `held_seq`, past the
// log's end: they describe only durable events, so the log lost the ones
// after its end (docs/operations.md). Names where the log ends: the loss
// begins there.
std::string lost_events_text(const VerifySummary& summary, std::uint64_t held_seq) {
  const std::uint64_t last_seq = summary.log_last_seq();
  const std::uint64_t lost = held_seq - last_seq;
  const log::LogEnd& end = summary.log_end;
  return "the log ends at seq " + std::to_string(last_seq) +
         (end.has_segment ? " (" + end_position(end) + ")" : " (it has no segment)") +
         ": the " + std::to_string(lost) + (lost == 1 ? " event" : " events") + " after it " +
         (lost == 1 ? "is" : "are") + " lost (the log was cut short, or its last records damaged)";
}

// What the replay could not compare, and why.
void settle_snapshots(const VerifySummary& summary, std::vector<SnapshotCheck>* checks) {
  for (SnapshotCheck& check : *checks) {
    if (!check.loads || check.verdict != Verdict::unchecked) continue;
    const std::uint64_t seq = check.info.seq;
    if (seq > summary.log_last_seq()) {
      // Recovery cannot use it: the log lost events it holds.
      check.verdict = Verdict::bad;
      check.detail = "it is past the end of the log: " + lost_events_text(summary, seq);
    } else if (seq == summary.report.snapshot_seq) {
      check.detail = "the replay started from it";
    } else if (seq < summary.report.snapshot_seq) {
      check.detail = "before the range checked";
    } else {
      check.detail = "after the range checked";
    }
  }
}

// The index's standing against the log, and the balances' verdict where the
// replay could not compare them.
Status settle_history(const std::string& data_dir, const VerifySummary& summary,
                      HistoryCheck* check) {
  HistoryIndex& index = check->index;
  if (index.store == nullptr) return Status();
  if (check->chain_seen) {
    const bool matches = check->chain == index.position.chain_checksum;
    index.standing = matches ? HistoryStanding::usable : HistoryStanding::mismatch;
  } else {
    TALLY_TRY(check_history_chain(data_dir, &index));
  }
  if (index.standing != HistoryStanding::usable) {
    check->balances = Verdict::unchecked;
    check->detail = "the index does not follow this log";
  } else if (index.position.seq == 0) {
    check->balances = Verdict::unchecked;
    check->detail = "the index is empty";
  } else if (!check->chain_seen) {
    check->balances = Verdict::unchecked;
    check->detail = index.position.seq <= summary.report.snapshot_seq
                        ? "its seq is before the range checked"
                        : "its seq is after the range checked";
  }
  if (index.standing != HistoryStanding::usable || check->balances == Verdict::bad) {
    return Status();
  }
  // Every entry of every pair, once: a change lost anywhere breaks a chain,
  // where the comparison above sees only the balances at the index's seq.
  const Status chains = index.store->check_chains();
  if (!chains.ok()) {
    check->balances = Verdict::bad;
    check->detail = chains.to_string();
  }
  return Status();
}

// The first bad part, for the exit code and stderr.
// A store that does not open: `what`, then why. A writer (`mover`) moves a
// corrupt one aside and begins a new one (snapshots/renew.h).
Status unreadable_store(std::string what, const Status& problem, const std::string& dir,
                        std::string_view mover) {
  what += problem.message();
  if (problem.code() == ErrorCode::corrupt) {
    what += "; " + std::string(mover) + " moves it to " + dir + ".damaged";
  }
  // A store that could not be read for another reason (locked, I/O) keeps
  // its code: it is not damage.
  return Status(problem.code(), what);
}

Status first_failure(const std::string& data_dir, const VerifySummary& summary) {
  if (!summary.snapshots_unreadable.ok()) {
    // The store's message names its directory.
    return unreadable_store("", summary.snapshots_unreadable, snapshot_dir(data_dir),
                            "the next ledger to open");
  }
  for (const SnapshotCheck& check : summary.snapshots) {
    if (check.verdict == Verdict::bad) {
      return Status(ErrorCode::corrupt, "snapshot at seq " + std::to_string(check.info.seq) +
                                            ": " + check.detail);
    }
  }
  const HistoryIndex& index = summary.history.index;
  if (index.standing == HistoryStanding::unreadable) {
    // A ledger with --history off leaves the index alone.
    return unreadable_store("history index (" + history_dir(data_dir) + "): ", index.problem,
                            history_dir(data_dir),
                            "the next ledger to open with its history on (the default), or "
                            "`tally history --rebuild`,");
  }
  if (index.standing == HistoryStanding::ahead) {
    return Status(ErrorCode::corrupt, "history index (" + history_dir(data_dir) +
                                          "): it holds events up to seq " +
                                          std::to_string(index.position.seq) + ", but " +
                                          lost_events_text(summary, index.position.seq));
  }
  if (summary.history.balances == Verdict::bad) {
    return Status(ErrorCode::corrupt, "history index (" + history_dir(data_dir) + "): " +
                                          summary.history.detail +
                                          "; `tally history --rebuild` rebuilds it");
  }
  // Last: a snapshot or the index past the log's end says more (how many).
  if (summary.log_end.cut_short) return log::cut_short_status(summary.log_end);
  return Status();
}

// What verify reads the log through: each segment with pread before it is
// mapped (log::posix_read_through_file_system), so that a sector the disk
// cannot read is an io_error naming the segment, not a SIGBUS where the
// mapping is read. The other tools map without it, as a ledger's open does.
log::FileSystem& verify_files() { return log::posix_read_through_file_system(); }

// Replays [from_seq, to_seq] with checksums and chain checked (from the
// newest valid snapshot at or below from_seq - 1 when from_seq > 1), then
// the state's invariants and, from seq 1 only, the per-item flows; compares
// every snapshot and the history index the replay passes. `from_seq`: as
// given (a seq the log must hold), or nullopt for the whole log.
Result<VerifySummary> verify_data(const std::string& data_dir,
                                  std::optional<std::uint64_t> given_from_seq,
                                  std::uint64_t to_seq) {
  const std::uint64_t from_seq = given_from_seq.value_or(1);
  TALLY_TRY(check_ledger_dir(data_dir));
  VerifySummary summary;
  SharedSnapshots snapshots;
  TALLY_TRY(
      load_snapshots(data_dir, &snapshots, &summary.snapshots, &summary.snapshots_unreadable));
  // It reads the whole index: its pages are checked before LMDB reads them.
  summary.history.index = open_history_store(data_dir, /*check_all_pages=*/true);
  const std::uint64_t history_seq = summary.history.index.position.seq;

  proj::FlowTotals flows;
  std::size_t next_snapshot = 0;
  ReplayOptions options;
  options.fs = &verify_files();
  options.use_snapshots = from_seq > 1;
  options.snapshot_seq_max = from_seq - 1;
  options.to_seq = to_seq;
  options.snapshots = snapshots.store != nullptr ? &snapshots : nullptr;
  options.visit = [&](const log::Event& event, const log::Record&) { flows.apply(event); };
  const auto compare = [&](const proj::State& state, const log::Record& record) {
    std::vector<SnapshotCheck>& checks = summary.snapshots;
    while (next_snapshot < checks.size() && checks[next_snapshot].info.seq < record.seq) {
      next_snapshot++;
    }
    if (next_snapshot < checks.size() && checks[next_snapshot].info.seq == record.seq) {
      compare_snapshot(state, record, &checks[next_snapshot]);
    }
    if (summary.history.index.store != nullptr && record.seq == history_seq) {
      compare_history(state, record, &summary.history);
    }
    return Status();
  };
  // The state is looked at only where a snapshot or the history index
  // stands; replay keeps its keys ahead of the ops everywhere else.
  for (const SnapshotCheck& check : summary.snapshots) {
    options.applied_seqs.push_back(check.info.seq);
  }
  if (summary.history.index.store != nullptr) options.applied_seqs.push_back(history_seq);
  std::sort(options.applied_seqs.begin(), options.applied_seqs.end());
  if (!options.applied_seqs.empty()) options.applied = compare;
  auto replayed = replay_data(data_dir, options);
  if (!replayed) return replayed.status();
  const proj::State& state = *replayed->state;
  TALLY_TRY(state.check_invariants());
  summary.flows_checked = replayed->report.snapshot_seq == 0;
  if (summary.flows_checked) TALLY_TRY(flows.check(state));
  auto reader = log::LogReader::open(verify_files(), log_dir(data_dir));
  if (!reader) return reader.status();

  summary.report = replayed->report;
  summary.segments = (*reader)->segment_first_seqs().size();
  summary.last_seq = state.last_seq();
  summary.last_time_ns = state.last_timestamp_ns();
  summary.counts = state.counts();
  summary.digest = state.digest();
  if (summary.report.reached_end) {
    summary.log_end = summary.report.end;
  } else {
    auto end = log_end_of(verify_files(), data_dir);
    if (!end) return end.status();
    summary.log_end = *end;
  }
  if (given_from_seq.has_value() && from_seq > summary.log_last_seq()) {
    return Status(ErrorCode::invalid, "--from-seq " + std::to_string(from_seq) +
                                          " is past the end of the log (last seq " +
                                          std::to_string(summary.log_last_seq()) +
                                          "): nothing to check");
  }
  settle_snapshots(summary, &summary.snapshots);
  TALLY_TRY(settle_history(data_dir, summary, &summary.history));
  summary.failed = first_failure(data_dir, summary);
  return summary;
}

// ---- output ---------------------------------------------------------------

std::string time_text(std::int64_t time_ns) {
  std::string text;
  append_rfc3339(&text, time_ns);
  return text;
}

std::string hex_text(std::uint64_t value) {
  std::string text;
  append_hex64(&text, value);
  return text;
}

std::string summary_line(const VerifySummary& summary) {
  if (!summary.failed.ok()) return "failed: " + summary.failed.message();
  if (summary.flows_checked) return "ok: checksums, chain, invariants and flows verify";
  return "ok: checksums, chain and invariants verify (flows skipped: the replay started from "
         "the snapshot at seq " + std::to_string(summary.report.snapshot_seq) + ")";
}

std::string history_text(const VerifySummary& summary) {
  const HistoryCheck& check = summary.history;
  const HistoryIndex& index = check.index;
  switch (index.standing) {
    case HistoryStanding::absent: return "none";
    case HistoryStanding::unreadable: return "unreadable: " + index.problem.to_string();
    case HistoryStanding::ahead:
    case HistoryStanding::mismatch:
    case HistoryStanding::usable: break;
  }
  std::string text = "seq " + std::to_string(index.position.seq) + " of " +
                     std::to_string(summary.log_last_seq());
  if (index.standing == HistoryStanding::ahead) return text + ": ahead of the log (events lost)";
  if (index.standing == HistoryStanding::mismatch) {
    return text + ": its chain checksum is not the log's (stale)";
  }
  text += ", chain matches, balances ";
  text += check.balances == Verdict::ok    ? "match"
          : check.balances == Verdict::bad ? "differ: " + check.detail
                                           : "unchecked (" + check.detail + ")";
  return text;
}

void append_verify_text(const VerifySummary& summary, std::string* out) {
  const auto line = [&](std::string_view name, const std::string& value) {
    *out += name;
    *out += ": ";
    *out += value;
    *out += "\n";
  };
  *out += summary_line(summary) + "\n";
  line("events", std::to_string(summary.report.events));
  line("segments", std::to_string(summary.segments));
  line("last_seq", std::to_string(summary.last_seq));
  line("last_time", summary.last_seq == 0 ? "-" : time_text(summary.last_time_ns));
  line("balances", std::to_string(summary.counts.balances));
  line("open_holds", std::to_string(summary.counts.open_holds));
  line("finalized_holds", std::to_string(summary.counts.finalized_holds));
  line("keys", std::to_string(summary.counts.keys));
  line("digest", hex_text(summary.digest));
  const log::LogEnd& end = summary.log_end;
  std::string torn = "none";
  if (end.torn_header || end.torn) {
    const char* what = " (a torn segment header; the next writer makes the segment again)";
    if (!end.torn_header) {
      what = " (the next writer zeroes it)";
    } else if (end.cut_short && end.cut_inside_header()) {
      what = " (a segment's file cut short inside its header; the next writer makes the "
             "segment again)";
    } else if (end.cut_short) {
      what = " (a segment's file cut short, its header damaged; the next writer makes the "
             "segment again)";
    }
    torn = end_position(end) + what;
  }
  line("torn_tail", torn);
  line("from_seq", std::to_string(summary.report.snapshot_seq + 1));
  line("to_seq", std::to_string(summary.last_seq));
  line("log_last_seq", std::to_string(summary.log_last_seq()));
  line("snapshot_start", summary.report.snapshot_seq == 0
                             ? std::string("none")
                             : std::to_string(summary.report.snapshot_seq));
  line("flows", summary.flows_checked ? "ok" : "skipped");
  std::size_t counts[3] = {0, 0, 0};
  for (const SnapshotCheck& check : summary.snapshots) counts[static_cast<int>(check.verdict)]++;
  line("snapshots", !summary.snapshots_unreadable.ok()
                        ? "unreadable: " + summary.snapshots_unreadable.to_string()
                        : std::to_string(summary.snapshots.size()) + " (ok " +
                              std::to_string(counts[0]) + ", bad " + std::to_string(counts[1]) +
                              ", unchecked " + std::to_string(counts[2]) + ")");
  for (const SnapshotCheck& check : summary.snapshots) {
    std::string value(verdict_name(check.verdict));
    if (check.info.metadata_ok) {
      value += " time=" + time_text(check.info.time_ns) + " digest=" + hex_text(check.info.digest);
    }
    if (!check.detail.empty()) value += ": " + check.detail;
    line("snapshot " + std::to_string(check.info.seq), value);
  }
  line("history", history_text(summary));
}

void append_snapshots_json(const VerifySummary& summary, std::string* out) {
  *out += '[';
  for (const SnapshotCheck& check : summary.snapshots) {
    if (&check != &summary.snapshots.front()) *out += ',';
    *out += "{\"seq\":" + std::to_string(check.info.seq);
    *out += ",\"status\":\"" + std::string(verdict_name(check.verdict)) + "\"";
    if (check.info.metadata_ok) {
      *out += ",\"time\":" + std::to_string(check.info.time_ns);
      *out += ",\"size\":" + std::to_string(check.info.size_bytes);
      *out += ",\"digest\":\"" + hex_text(check.info.digest) + "\"";
    }
    *out += ",\"detail\":";
    append_json_string(out, check.detail);
    *out += '}';
  }
  *out += ']';
}

void append_history_json(const VerifySummary& summary, std::string* out) {
  const HistoryCheck& check = summary.history;
  const HistoryIndex& index = check.index;
  if (index.standing == HistoryStanding::absent) {
    *out += "null";
    return;
  }
  *out += "{\"standing\":\"" + std::string(history_standing_name(index.standing)) + "\"";
  if (index.standing == HistoryStanding::unreadable) {
    *out += ",\"error\":";
    append_json_string(out, index.problem.to_string());
    *out += '}';
    return;
  }
  *out += ",\"seq\":" + std::to_string(index.position.seq);
  *out += ",\"time\":" + std::to_string(index.position.time_ns);
  *out += ",\"log_last_seq\":" + std::to_string(summary.log_last_seq());
  *out += ",\"balances\":\"";
  *out += check.balances == Verdict::ok ? "match" : check.balances == Verdict::bad ? "differ" : "unchecked";
  *out += "\",\"detail\":";
  append_json_string(out, check.detail);
  *out += '}';
}

void append_verify_json(const VerifySummary& summary, std::string* out) {
  const auto field = [&](std::string_view name, const std::string& value) {
    *out += ",\"";
    *out += name;
    *out += "\":";
    *out += value;
  };
  *out += summary.failed.ok() ? "{\"ok\":true" : "{\"ok\":false";
  if (!summary.failed.ok()) {
    std::string error;
    append_json_string(&error, summary.failed.to_string());
    field("error", error);
  }
  field("events", std::to_string(summary.report.events));
  field("segments", std::to_string(summary.segments));
  field("last_seq", std::to_string(summary.last_seq));
  field("last_time", std::to_string(summary.last_time_ns));
  field("balances", std::to_string(summary.counts.balances));
  field("open_holds", std::to_string(summary.counts.open_holds));
  field("finalized_holds", std::to_string(summary.counts.finalized_holds));
  field("keys", std::to_string(summary.counts.keys));
  field("digest", "\"" + hex_text(summary.digest) + "\"");
  const log::LogEnd& end = summary.log_end;
  std::string torn = "null";
  if (end.torn_header) {
    torn = "{\"segment\":\"" + log::segment_file_name(end.next_seq) + "\",\"offset\":0}";
  } else if (end.torn) {
    torn = "{\"segment\":\"" + log::segment_file_name(end.segment_first_seq) +
           "\",\"offset\":" + std::to_string(end.offset) + "}";
  }
  field("torn_tail", torn);
  field("from_seq", std::to_string(summary.report.snapshot_seq + 1));
  field("to_seq", std::to_string(summary.last_seq));
  field("log_last_seq", std::to_string(summary.log_last_seq()));
  field("snapshot_start", std::to_string(summary.report.snapshot_seq));
  field("flows", summary.flows_checked ? "\"ok\"" : "\"skipped\"");
  std::string snapshots;
  append_snapshots_json(summary, &snapshots);
  field("snapshots", snapshots);
  std::string history;
  append_history_json(summary, &history);
  field("history", history);
  *out += "}";
}

int run_verify(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("verify", data.status().message());
  auto from = args.integer("from-seq", 1);
  if (!from) return usage_error("verify", from.status().message());
  auto to = args.integer("to-seq", INT64_MAX);
  if (!to) return usage_error("verify", to.status().message());
  if (*from > *to) return usage_error("verify", "--from-seq is after --to-seq");
  const bool json = args.has("json");
  auto summary = verify_data(std::string(*data),
                             args.has("from-seq") ? std::optional(static_cast<std::uint64_t>(*from))
                                                  : std::nullopt,
                             args.has("to-seq") ? static_cast<std::uint64_t>(*to) : UINT64_MAX);
  Output out(stdout);
  if (!summary) {
    if (json) {
      out.buffer() += "{\"ok\":false,\"error\":";
      append_json_string(&out.buffer(), summary.status().to_string());
      out.buffer() += "}";
      out.flush_line();
    }
    return failure(summary.status());
  }
  if (json) {
    append_verify_json(*summary, &out.buffer());
    out.end_line();
  } else {
    append_verify_text(*summary, &out.buffer());
  }
  if (!summary->failed.ok()) {
    out.flush();
    return failure(summary->failed);
  }
  return kExitOk;
}

constexpr FlagSpec kVerifyFlags[] = {
    {"data", "DIR", "the data directory (required)"},
    {"from-seq", "N", "start from the newest valid snapshot at or below N-1 (default 1)",
     IntegerRange{1}},
    {"to-seq", "N", "stop the replay after seq N", IntegerRange{1}},
    {"json", "", "one JSON object"},
};

constexpr CommandSpec kVerifySpec = {
    "verify",
    "Check checksums, chain, invariants, flows, snapshots and the history index.",
    "tally verify --data DIR [--from-seq N] [--to-seq N] [--json]",
    "Replays the log checking every checksum and the chain, then the state's\n"
    "invariants and the per-item flow totals. Every snapshot must load and\n"
    "equal the replay at its seq (digest and chain checksum); the history\n"
    "index's position is compared with the log, its balances with the\n"
    "replay's at that seq, and every entry with the one before (the chains).\n"
    "Exits 1 at the first problem in the log (naming the segment and byte\n"
    "offset), or after the report when a snapshot or the index is bad or does\n"
    "not open, or when either holds events past the log's end (the log lost\n"
    "them). A torn tail (an unfinished last write) and a lagging index, or one\n"
    "that follows another log, are reported but are not failures.\n"
    "\n"
    "--from-seq N replays from the newest valid snapshot at or below N-1\n"
    "instead of seq 1: flows are then skipped (they need the whole log), and\n"
    "snapshots outside the range replayed are unchecked. --to-seq N stops the\n"
    "replay after seq N. The tools replay with the idempotency window the\n"
    "newest snapshot records (the ledger's; 24 h when there is none): a\n"
    "snapshot of another window is unchecked.\n",
    kVerifyFlags,
    0,
};

}  // namespace

const CliCommand kVerify = {&kVerifySpec, run_verify};

}  // namespace tally::cli
