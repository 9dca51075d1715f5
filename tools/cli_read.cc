// Read-only audit commands over a data directory: export, balance and list,
// current or as of a seq or a time, and the helpers the audit commands
// share (tools/audit.h). Current reads replay the log into a fresh State
// (engine/replay.h); point-in-time reads go through engine/point_in_time.h.
// Nothing here takes the directory's lock.
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>

#include "engine/clock.h"
#include "log/file.h"
#include "log/format.h"
#include "log/reader.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/csv.h"
#include "tools/format.h"
#include "tools/progress.h"

namespace tally::cli {

Status check_name(std::string_view what, std::string_view name) {
  if (!name.empty() && name.size() <= kIdBytesMax) return Status();
  return Status(ErrorCode::invalid, std::string(what) + " must be 1.." +
                                        std::to_string(kIdBytesMax) + " bytes");
}

std::int64_t replay_window_ns(const std::string& data_dir, SharedSnapshots* snapshots) {
  const std::int64_t fallback = proj::StateOptions{}.idempotency_window_ns;
  if (snapshots != nullptr) return newest_snapshot_window_ns(*snapshots, fallback);
  const std::string dir = snapshot_dir(data_dir);
  if (!log::posix_file_system().exists(dir)) return fallback;
  // Closed again before the replay opens it: one environment per process.
  SharedSnapshots opened;
  auto store = snap::SnapshotStore::open(dir, {.read_only = true});
  if (!store) return fallback;
  opened.store = std::move(*store);
  return newest_snapshot_window_ns(opened, fallback);
}

Result<Replayed> replay_data(const std::string& data_dir, ReplayOptions options) {
  TALLY_TRY(check_ledger_dir(data_dir));
  options.data_dir = data_dir;
  if (options.use_snapshots && options.snapshots == nullptr) {
    // The window of the snapshot the replay starts from, read from its
    // image as it loads, so that its payload is hashed once, beside the
    // load, and not also before it (replay() asks the store only when it
    // starts from none).
    options.state_options.window_from_image = true;
  } else {
    options.state_options.idempotency_window_ns = replay_window_ns(data_dir, options.snapshots);
  }
  options.writer_may_be_live = true;  // beside a server, maybe
  Progress progress("replay", 0);
  if (progress.enabled()) {
    // The total costs a read of the last segment: only for a terminal.
    auto last = log_last_seq(log::posix_file_system(), data_dir);
    if (last) progress.set_total(std::min(*last, options.to_seq));
    options.visit = [&progress, visit = std::move(options.visit)](const log::Event& event,
                                                                  const log::Record& record) {
      if (visit) visit(event, record);
      progress.update(record.seq);
    };
  }
  return replay(options);
}

void append_export(const proj::State& state, std::int64_t now_ns, std::string* out) {
  state.for_each_balance(now_ns, [&](std::string_view subject, std::string_view item,
                                     proj::Balance balance) {
    append_balance_line(out, subject, item, balance.available, balance.held);
  });
}

Result<std::string> export_csv(const std::string& data_dir, std::int64_t now_ns) {
  auto replayed = replay_data(data_dir);
  if (!replayed) return replayed.status();
  std::string out;
  append_export(*replayed->state, now_ns, &out);
  return out;
}

// ---- the history index -------------------------------------------------------

// An index up to this size is walked by every read (open_history_store).
constexpr std::uintmax_t kWalkedIndexBytesMax = std::uintmax_t{64} << 20;

std::string_view history_standing_name(HistoryStanding standing) {
  switch (standing) {
    case HistoryStanding::absent: return "absent";
    case HistoryStanding::unreadable: return "unreadable";
    case HistoryStanding::usable: return "usable";
    case HistoryStanding::mismatch: return "mismatch";
    case HistoryStanding::ahead: return "ahead";
  }
  return "unknown";
}

HistoryIndex open_history_store(const std::string& data_dir, bool check_all_pages) {
  HistoryIndex index;
  const std::string dir = history_dir(data_dir);
  if (!log::posix_file_system().exists(dir)) return index;
  snap::HistoryStoreOptions options;
  options.read_only = true;
  // A small index is walked whatever the read: 64 MiB cost about 25 ms in
  // the page cache (docs/operations.md).
  std::error_code size_error;
  const std::uintmax_t bytes = std::filesystem::file_size(dir + "/data.mdb", size_error);
  options.check_all_pages = check_all_pages || (!size_error && bytes <= kWalkedIndexBytesMax);
  auto store = snap::HistoryStore::open(dir, options);
  if (!store) {
    if (store.code() != ErrorCode::not_found) {
      index.standing = HistoryStanding::unreadable;
      index.problem = store.status();
    }
    return index;
  }
  auto position = (*store)->position();
  if (!position) {
    index.standing = HistoryStanding::unreadable;
    index.problem = position.status();
    return index;
  }
  index.store = std::move(*store);
  index.position = *position;
  index.standing = HistoryStanding::usable;
  return index;
}

Result<LogScan> scan_log(const std::string& data_dir, std::uint64_t seq) {
  // From UINT64_MAX the reader opens the last segment only.
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir),
                                     {.from_seq = seq == 0 ? UINT64_MAX : seq,
                                      .writer_may_be_live = true});
  if (!reader) return reader.status();
  LogScan scan;
  if (seq == 0) scan.chain_at = log::kChainSeed;
  log::Record record;
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more) break;
    if (record.seq == seq) scan.chain_at = record.checksum;
  }
  scan.end = (*reader)->end();
  return scan;
}

Status check_history_chain(const std::string& data_dir, HistoryIndex* index) {
  const bool open = index->store != nullptr;
  auto scan = scan_log(data_dir, open ? index->position.seq : 0);
  if (!scan) return scan.status();
  index->log_end = scan->end;
  if (!open) return Status();
  if (!scan->chain_at.has_value()) {
    index->standing = HistoryStanding::ahead;
  } else if (index->position.seq > 0 && *scan->chain_at != index->position.chain_checksum) {
    index->standing = HistoryStanding::mismatch;
  } else {
    index->standing = HistoryStanding::usable;
  }
  return Status();
}

namespace {

// "the log ends at seq E, but WHERE holds events up to seq K: the N
// events after seq E are lost (...)", for known_seq > last_seq.
std::string lost_events(std::uint64_t last_seq, const std::string& where,
                        std::uint64_t known_seq) {
  TALLY_ASSERT(known_seq > last_seq);
  const std::uint64_t lost = known_seq - last_seq;
  return "the log ends at seq " + std::to_string(last_seq) + ", but " + where +
         " holds events up to seq " + std::to_string(known_seq) + ": the " +
         std::to_string(lost) + (lost == 1 ? " event" : " events") + " after seq " +
         std::to_string(last_seq) + (lost == 1 ? " is" : " are") +
         " lost (the log was cut short, or its last records damaged)";
}

}  // namespace

void note_history_not_used(const std::string& data_dir, const HistoryIndex& index) {
  if (index.standing == HistoryStanding::ahead) {
    // Not only a projection to rebuild: the log lost what it holds.
    std::fprintf(stderr,
                 "tally: warning: %s; not using the history index, reading the log instead. "
                 "`tally verify` reports it\n",
                 lost_events(index.log_last_seq(), history_dir(data_dir), index.position.seq)
                     .c_str());
    return;
  }
  const std::string seq = std::to_string(index.position.seq);
  const std::string why = index.standing == HistoryStanding::unreadable
                              ? index.problem.to_string()
                              : "its chain checksum at seq " + seq + " is not the log's";
  // Rebuilding helps an index that is damaged or does not follow the log,
  // not one that could not be opened now (locked, I/O).
  const bool rebuild_helps = index.standing != HistoryStanding::unreadable ||
                             index.problem.code() == ErrorCode::corrupt;
  std::fprintf(stderr, "tally: not using the history index (%s); reading the log instead%s\n",
               why.c_str(), rebuild_helps ? ". `tally history --rebuild` rebuilds it" : "");
}

std::uint64_t newest_snapshot_seq(const std::string& data_dir) {
  const std::string dir = snapshot_dir(data_dir);
  if (!log::posix_file_system().exists(dir)) return 0;
  // Closed again before a replay opens it: one environment per process.
  auto store = snap::SnapshotStore::open(dir, {.read_only = true});
  if (!store) return 0;
  auto listed = (*store)->list();
  if (!listed) return 0;
  std::uint64_t newest = 0;
  // A record that does not verify says nothing of the log: its seq may be
  // anything (the ledger's open judges the same way).
  for (const snap::SnapshotInfo& info : *listed) {
    if (info.metadata_ok) newest = std::max(newest, info.seq);
  }
  return newest;
}

void warn_lost_events(const std::string& data_dir, const log::LogEnd& end,
                      std::uint64_t snapshot_seq, const HistoryIndex* index,
                      std::string_view what) {
  if (end.cut_short) {
    std::fprintf(stderr, "tally: warning: %s; `tally verify` reports it\n",
                 log::cut_short_status(end).message().c_str());
  }
  const std::uint64_t last_seq = end.next_seq - 1;
  std::uint64_t known_seq = last_seq;
  std::string where;
  if (snapshot_seq > known_seq) {
    known_seq = snapshot_seq;
    where = snapshot_dir(data_dir);
  }
  if (index != nullptr && index->standing == HistoryStanding::ahead &&
      index->position.seq > known_seq) {
    known_seq = index->position.seq;
    where = history_dir(data_dir);
  }
  if (known_seq == last_seq) return;
  std::fprintf(stderr, "tally: warning: %s; %.*s is the log's. `tally verify` reports it\n",
               lost_events(last_seq, where, known_seq).c_str(), static_cast<int>(what.size()),
               what.data());
}

void note_before_read(const std::string& data_dir, const HistoryIndex& index) {
  if (index.standing != HistoryStanding::absent && index.trusted() == nullptr) {
    note_history_not_used(data_dir, index);
  }
  // An index ahead of the log was just named; the rest of what the log
  // lost, as a current read warns of it.
  warn_lost_events(data_dir, index.log_end, newest_snapshot_seq(data_dir), nullptr);
}

void note_read(const PointInTimeRead& read) {
  warn_skipped_snapshots(read.skipped_snapshots);
  if (read.index_damage.ok()) return;
  std::fprintf(stderr,
               "tally: the history index is damaged (%s); answered from the log instead. "
               "`tally history --rebuild` rebuilds it\n",
               read.index_damage.to_string().c_str());
}

Result<HistoryIndex> open_history_index(const std::string& data_dir, bool check_all_pages) {
  HistoryIndex index = open_history_store(data_dir, check_all_pages);
  TALLY_TRY(check_history_chain(data_dir, &index));
  return index;
}

Result<std::unique_ptr<PointInTimeData>> open_point_in_time(const std::string& data_dir,
                                                            bool check_all_pages) {
  TALLY_TRY(check_ledger_dir(data_dir));
  auto data = std::make_unique<PointInTimeData>();
  auto index = open_history_index(data_dir, check_all_pages);
  if (!index) return index.status();
  data->history = std::move(*index);
  const HistoryIndex& history = data->history;
  note_before_read(data_dir, history);
  data->source.data_dir = data_dir;
  // A replay takes the window of the snapshot it starts from (as replay_data's).
  data->source.state_options.window_from_image = true;
  data->source.history = history.trusted();
  data->source.last_seq = history.log_last_seq();
  return data;
}

namespace {

// {"subject":..,"item":..,"available":N,"held":N}: the JSON shape of one
// balance in export, balance and list.
void append_balance_json(std::string* out, std::string_view subject, std::string_view item,
                         std::int64_t available, std::int64_t held) {
  *out += "{\"subject\":";
  append_json_string(out, subject);
  *out += ",\"item\":";
  append_json_string(out, item);
  *out += ",\"available\":";
  append_int(out, available);
  *out += ",\"held\":";
  append_int(out, held);
  *out += "}";
}

// --at-seq N or --at-time T: a point-in-time read; nullopt for a current one.
Result<std::optional<AsOf>> parse_as_of(const Args& args) {
  const bool by_seq = args.has("at-seq");
  const bool by_time = args.has("at-time");
  if (by_seq && by_time) {
    return Status(ErrorCode::invalid, "--at-seq and --at-time exclude each other");
  }
  if (by_seq) {
    auto seq = args.integer("at-seq", 0);
    if (!seq) return seq.status();
    return std::optional<AsOf>(AsOf::at_seq(static_cast<std::uint64_t>(*seq)));
  }
  if (by_time) {
    auto time_ns = args.time("at-time", 0);
    if (!time_ns) return time_ns.status();
    return std::optional<AsOf>(AsOf::at_time(*time_ns));
  }
  return std::optional<AsOf>();
}

// A fresh State with DATA's log replayed into it. A log cut short, or one
// that snapshots or the index show lost events, is answered from what it
// holds, with a warning (verify fails).
Result<std::unique_ptr<proj::State>> load_state(std::string_view data_dir) {
  auto replayed = replay_data(std::string(data_dir));
  if (!replayed) return replayed.status();
  const ReplayReport& report = replayed->report;
  warn_skipped_snapshots(report.skipped);
  if (report.reached_end) {
    std::uint64_t snapshot_seq = 0;
    for (const snap::SkippedSnapshot& skipped : report.skipped) {
      snapshot_seq = std::max(snapshot_seq, skipped.seq);
    }
    // Checked against the log as it is now, so that events a live writer
    // appended since the replay are not taken for lost. Only an index that
    // opens can be ahead of the log.
    HistoryIndex index = open_history_store(std::string(data_dir));
    const bool checked =
        index.store != nullptr && check_history_chain(std::string(data_dir), &index).ok();
    warn_lost_events(std::string(data_dir), report.end, snapshot_seq,
                     checked ? &index : nullptr);
  }
  return std::move(replayed->state);
}

// A point-in-time read's source, with a progress line for its fallback
// replay. Owns what the source borrows.
struct PointInTimeRun {
  std::unique_ptr<PointInTimeData> data;
  std::unique_ptr<Progress> progress;
};

// `whole_index`: the read goes through all of the index (export). A replay
// as of a seq ends there; one as of a time, at an event it cannot know yet.
Result<PointInTimeRun> open_run(std::string_view data_dir, AsOf at, bool whole_index = false) {
  auto data = open_point_in_time(std::string(data_dir), whole_index);
  if (!data) return data.status();
  PointInTimeRun run{std::move(*data), nullptr};
  std::uint64_t replay_end = run.data->source.last_seq;
  if (at.kind == AsOf::Kind::seq) replay_end = std::min(replay_end, at.seq);
  run.progress = std::make_unique<Progress>("replay", replay_end);
  if (run.progress->enabled()) {
    Progress* progress = run.progress.get();
    run.data->source.visit = [progress](const log::Event&, const log::Record& record) {
      progress->update(record.seq);
    };
  }
  return run;
}

// The printed form of one balance line, for export and list.
struct BalancePrinter {
  Output* out;
  bool json;

  void line(std::string_view subject, std::string_view item, std::int64_t available,
            std::int64_t held, bool with_subject) {
    std::string& buffer = out->buffer();
    if (json) {
      append_balance_json(&buffer, subject, item, available, held);
      out->end_line();
      return;
    }
    if (with_subject) {
      // append_balance_line ends the line itself.
      append_balance_line(&buffer, subject, item, available, held);
      out->flush_if_large();
      return;
    }
    append_csv_name(&buffer, item);
    buffer += ',';
    append_int(&buffer, available);
    buffer += ',';
    append_int(&buffer, held);
    out->end_line();
  }
};

// Prints the failure and drops the output not yet written: a partial answer
// must not look whole.
int fail_output(Output* out, const Status& status) {
  out->buffer().clear();
  return failure(status);
}

int run_export(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("export", data.status().message());
  auto at = parse_as_of(args);
  if (!at) return usage_error("export", at.status().message());
  Output out(stdout);
  BalancePrinter printer{&out, args.has("json")};
  if (at->has_value()) {
    auto run = open_run(*data, **at, /*whole_index=*/true);
    if (!run) return failure(run.status());
    PointInTimeRead how;
    const Status status = for_each_at(
        run->data->source, **at,
        [&](std::string_view subject, std::string_view item, Balance balance) {
          printer.line(subject, item, balance.available, balance.held, true);
        },
        &how);
    run->progress->finish();
    note_read(how);
    return status.ok() ? kExitOk : fail_output(&out, status);
  }
  auto loaded = load_state(*data);
  if (!loaded) return failure(loaded.status());
  (*loaded)->for_each_balance(system_clock().now_ns(), [&](std::string_view subject,
                                                           std::string_view item,
                                                           proj::Balance balance) {
    printer.line(subject, item, balance.available, balance.held, true);
  });
  return kExitOk;
}

int run_balance(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("balance", data.status().message());
  auto at = parse_as_of(args);
  if (!at) return usage_error("balance", at.status().message());
  const std::string_view subject = args.positionals()[0];
  const std::string_view item = args.positionals()[1];
  for (const Status& name : {check_name("subject", subject), check_name("item", item)}) {
    if (!name.ok()) return usage_error("balance", name.message());
  }
  Balance balance;
  if (at->has_value()) {
    auto run = open_run(*data, **at);
    if (!run) return failure(run.status());
    PointInTimeRead how;
    auto read = balance_at(run->data->source, subject, item, **at, &how);
    run->progress->finish();
    if (!read) return failure(read.status());
    note_read(how);
    balance = *read;
  } else {
    auto loaded = load_state(*data);
    if (!loaded) return failure(loaded.status());
    const proj::Balance now = (*loaded)->balance(subject, item, system_clock().now_ns());
    balance = Balance{now.available, now.held};
  }
  Output out(stdout);
  if (args.has("json")) {
    append_balance_json(&out.buffer(), subject, item, balance.available, balance.held);
  } else {
    out.buffer() += "available=";
    append_int(&out.buffer(), balance.available);
    out.buffer() += " held=";
    append_int(&out.buffer(), balance.held);
  }
  out.end_line();
  return kExitOk;
}

int run_list(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("list", data.status().message());
  auto at = parse_as_of(args);
  if (!at) return usage_error("list", at.status().message());
  const std::string_view subject = args.positionals()[0];
  const Status name = check_name("subject", subject);
  if (!name.ok()) return usage_error("list", name.message());
  Output out(stdout);
  BalancePrinter printer{&out, args.has("json")};
  if (at->has_value()) {
    auto run = open_run(*data, **at);
    if (!run) return failure(run.status());
    PointInTimeRead how;
    auto items = list_at(run->data->source, subject, **at, &how);
    run->progress->finish();
    if (!items) return failure(items.status());
    note_read(how);
    for (const ItemBalance& one : *items) {
      printer.line(subject, one.item, one.balance.available, one.balance.held, false);
    }
    return kExitOk;
  }
  auto loaded = load_state(*data);
  if (!loaded) return failure(loaded.status());
  (*loaded)->list(subject, system_clock().now_ns(), [&](std::string_view item, proj::Balance balance) {
    printer.line(subject, item, balance.available, balance.held, false);
  });
  return kExitOk;
}

// ---- specs -----------------------------------------------------------------

constexpr FlagSpec kReadFlags[] = {
    {"data", "DIR", "the data directory (required)"},
    {"at-seq", "N", "as of the event with seq N (0: before the first event)", IntegerRange{0}},
    {"at-time", "T", "as of time T: after every event stamped at or before T"},
    {"json", "", "JSON output"},
};

// The point-in-time paragraph every read command's help shares.
#define TALLY_AT_HELP                                                                     \
  "--at-seq N / --at-time T (one of them) read the balances as the log's events\n"        \
  "left them then: T is RFC 3339 with an offset (2026-03-31T23:59:59.999999999Z,\n"        \
  "2026-04-01T01:59:59+02:00) or ns since the epoch, and an event stamped exactly\n"       \
  "T is included. As of a seq, a hold is held until its commit, release or expire\n"     \
  "event, even when it was due earlier; as of a time T, a hold due by T counts as\n"     \
  "released, as in a current read. Answered from the history index (DATA/history)\n"    \
  "where it reaches, else by replaying the log from a snapshot: the same answer.\n"      \
  "A seq past the end of the log exits 1.\n"

constexpr CommandSpec kExportSpec = {
    "export",
    "Print every non-zero balance as CSV: subject,item,available,held.",
    "tally export --data DIR [--at-seq N | --at-time T] [--json]",
    "Lines are sorted bytewise by subject, then item; a hold that is due now\n"
    "counts as released. --json prints one object per line instead:\n"
    "  {\"subject\":..,\"item\":..,\"available\":N,\"held\":N}\n"
    "\n" TALLY_AT_HELP,
    kReadFlags,
    0,
};

constexpr CommandSpec kBalanceSpec = {
    "balance",
    "Print the balance of one subject and item: available=N held=M.",
    "tally balance --data DIR [--at-seq N | --at-time T] [--json] SUBJECT ITEM",
    "--json prints {\"subject\":..,\"item\":..,\"available\":N,\"held\":N}.\n"
    "Use -- before a SUBJECT that starts with '-'.\n"
    "\n" TALLY_AT_HELP,
    kReadFlags,
    2,
};

constexpr CommandSpec kListSpec = {
    "list",
    "Print every non-zero balance of a subject: item,available,held.",
    "tally list --data DIR [--at-seq N | --at-time T] [--json] SUBJECT",
    "Lines are sorted bytewise by item. --json prints one object per line:\n"
    "  {\"subject\":..,\"item\":..,\"available\":N,\"held\":N}\n"
    "\n" TALLY_AT_HELP,
    kReadFlags,
    1,
};

#undef TALLY_AT_HELP

}  // namespace

const CliCommand kExport = {&kExportSpec, run_export};
const CliCommand kBalance = {&kBalanceSpec, run_balance};
const CliCommand kList = {&kListSpec, run_list};

}  // namespace tally::cli
