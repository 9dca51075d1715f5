// tally history: every change of one (subject, item) pair, with the balance
// after each — from the history index (DATA/history) as far as it reaches,
// then from the log — or, with --rebuild, a new index built from the log.
//
// The answer never depends on the index: where it is absent, stale or
// behind, the rest comes from the log's events (proj::event_deltas, the
// same changes the index records), continuing the running balance.
#include <vector>

#include "log/event.h"
#include "log/file.h"
#include "log/lock.h"
#include "log/reader.h"
#include "projections/changes.h"
#include "snapshots/history.h"
#include "snapshots/renew.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/format.h"
#include "tools/progress.h"

namespace tally::cli {

namespace {

// Output written in pieces of about this size; a read transaction on the
// index never waits for stdout.
constexpr std::size_t kChunkBytes = std::size_t{1} << 16;
// history --rebuild makes the index visible at least this often.
constexpr std::uint64_t kRebuildFlushEvents = std::uint64_t{1} << 20;

// Adds a change to the pair's balance. The log alone is read, not checked
// whole as a replay checks it, but a balance that leaves 0..INT64_MAX is
// one no ledger wrote: false.
bool add_change(proj::Balance* balance, const proj::PairDelta& delta) {
  return !__builtin_add_overflow(balance->available, delta.available, &balance->available) &&
         !__builtin_add_overflow(balance->held, delta.held, &balance->held) &&
         balance->available >= 0 && balance->held >= 0;
}

// One change per line:
//   text: <seq> <time> <op> key=<key> delta_available=<±n> delta_held=<±n> available=<n> held=<n>
//   JSON: {"seq":..,"time":ns,"key":..,"op":..,"delta_available":..,"delta_held":..,
//          "available":..,"held":..}
class ChangePrinter {
 public:
  ChangePrinter(Output* out, bool json) : out_(out), json_(json) {}

  void line(std::uint64_t seq, std::int64_t time_ns, std::string_view key, std::string_view op,
            std::int64_t delta_available, std::int64_t delta_held, proj::Balance after) {
    std::string& out = out_->buffer();
    if (json_) {
      out += "{\"seq\":";
      append_int(&out, static_cast<std::int64_t>(seq));
      out += ",\"time\":";
      append_int(&out, time_ns);
      out += ",\"key\":";
      append_json_string(&out, key);
      out += ",\"op\":\"";
      out += op;  // one of proj::event_op_name's names
      out += "\",\"delta_available\":";
      append_int(&out, delta_available);
      out += ",\"delta_held\":";
      append_int(&out, delta_held);
      out += ",\"available\":";
      append_int(&out, after.available);
      out += ",\"held\":";
      append_int(&out, after.held);
      out += "}\n";
      return;
    }
    append_int(&out, static_cast<std::int64_t>(seq));
    out += ' ';
    append_rfc3339(&out, time_ns);
    out += ' ';
    out += op;
    out += " key=";
    append_text_escaped(&out, key);
    out += " delta_available=";
    append_signed(&out, delta_available);
    out += " delta_held=";
    append_signed(&out, delta_held);
    out += " available=";
    append_int(&out, after.available);
    out += " held=";
    append_int(&out, after.held);
    out += '\n';
  }
  bool full() const { return out_->buffer().size() >= kChunkBytes; }
  void flush() { out_->flush(); }

 private:
  Output* out_;
  const bool json_;
};

// Where print_from_index got to: the seq after the last entry it printed,
// and that entry's balance after (none printed: from_seq, nullopt); and
// whether the index went back before the range's end (rebuilt beside this
// read), leaving the rest to the log.
struct IndexProgress {
  std::uint64_t next_seq = 0;
  std::optional<proj::Balance> after;
  bool index_went_back = false;
};

// The index's entries of the pair in [from_seq, to_seq], a chunk of output
// per read transaction. Every entry printed passed its checks, so a damaged
// record found later leaves *progress where the log can take over.
Status print_from_index(const snap::HistoryStore& store, std::string_view subject,
                        std::string_view item, std::uint64_t from_seq, std::uint64_t to_seq,
                        ChangePrinter* printer, IndexProgress* progress) {
  progress->next_seq = from_seq;
  for (;;) {
    bool stopped = false;
    const auto print = [&](const snap::HistoryEntry& entry) {
      printer->line(entry.seq, entry.time_ns, entry.key, entry.op, entry.delta_available,
                    entry.delta_held, entry.after);
      progress->next_seq = entry.seq + 1;
      progress->after = entry.after;
      stopped = printer->full();
      return !stopped;
    };
    snap::HistoryPosition found;
    const Status read = store.entries(subject, item, progress->next_seq, to_seq, print, &found);
    printer->flush();
    TALLY_TRY(read);
    if (stopped && progress->next_seq <= to_seq) continue;
    progress->index_went_back = found.seq < to_seq;
    return Status();
  }
}

// Whether an event can change the pair: a cheap test before event_deltas.
bool touches(const log::Event& event, std::string_view subject, std::string_view item) {
  if (event.rejected != log::Reason::none) return false;
  for (const log::Op& op : event.ops) {
    if (op.item == item && (op.subject == subject || op.to == subject)) return true;
  }
  return false;
}

// Where the log part starts: the pair's balance after seq start_seq - 1.
struct LogStart {
  std::uint64_t seq = 1;
  proj::Balance balance;
};

// The pair's changes in the log from start.seq to to_seq, printing those at
// or after from_seq.
Status print_from_log(const std::string& data_dir, std::string_view subject, std::string_view item,
                      LogStart start, std::uint64_t from_seq, std::uint64_t to_seq,
                      ChangePrinter* printer) {
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir),
                                     {.from_seq = start.seq, .writer_may_be_live = true});
  if (!reader) return reader.status();
  Progress progress("history", 0, Streams::stdout_while_working);
  if (progress.enabled()) {
    auto last = log_last_seq(log::posix_file_system(), data_dir);
    if (last) progress.set_total(std::min(*last, to_seq));
  }
  log::EventDecoder decoder;
  log::Record record;
  log::Event event;
  std::vector<proj::PairDelta> deltas;
  proj::Balance balance = start.balance;
  // Seqs run without gaps: the record after to_seq is neither read nor
  // checked, so damage past the range asked for does not fail it.
  for (bool wanted = true; wanted;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more || record.seq > to_seq) break;
    wanted = record.seq < to_seq;
    progress.update(record.seq);
    TALLY_TRY(log::decode_record(decoder, record, &event));
    if (!touches(event, subject, item)) continue;
    proj::event_deltas(event, &deltas);
    for (const proj::PairDelta& delta : deltas) {
      // A batch whose ops on the pair sum to zero changes nothing there (the
      // index records no entry for it either).
      if (delta.subject != subject || delta.item != item) continue;
      if (delta.available == 0 && delta.held == 0) continue;
      const proj::Balance before = balance;
      if (!add_change(&balance, delta)) {
        return log::corrupt_at(
            record.segment_first_seq, record.offset,
            "seq " + std::to_string(record.seq) + ": a change of " +
                std::to_string(delta.available) + " available and " +
                std::to_string(delta.held) + " held takes " + quoted(subject) + " " +
                quoted(item) + " (available=" + std::to_string(before.available) +
                " held=" + std::to_string(before.held) +
                ") below zero or past the largest quantity, which no ledger writes");
      }
      if (record.seq < from_seq) continue;
      printer->line(record.seq, event.timestamp_ns, event.key, proj::event_op_name(event),
                    delta.available, delta.held, balance);
      if (printer->full()) printer->flush();
    }
  }
  progress.finish();
  printer->flush();
  return Status();
}

// Without a usable index: the pair's balance after from_seq - 1, from the
// newest snapshot at or below it plus the log, so the log part need not
// start at seq 1.
Result<LogStart> start_without_index(const std::string& data_dir, std::string_view subject,
                                     std::string_view item, std::uint64_t from_seq) {
  if (from_seq <= 1) return LogStart{};
  ReplayOptions options;
  options.to_seq = from_seq - 1;
  auto replayed = replay_data(data_dir, options);
  if (!replayed) return replayed.status();
  const proj::State& state = *replayed->state;
  return LogStart{state.last_seq() + 1, state.balance(subject, item, proj::kStoredOnly)};
}

Status print_history(const std::string& data_dir, std::string_view subject, std::string_view item,
                     std::uint64_t from_seq, std::uint64_t to_seq, bool json) {
  TALLY_TRY(check_ledger_dir(data_dir));
  auto index = open_history_index(data_dir);
  if (!index) return index.status();
  // The answer is as of the log when it was opened: beside a live writer,
  // a prefix, as every audit command sees.
  to_seq = std::min(to_seq, index->log_last_seq());
  Output out(stdout);
  ChangePrinter printer(&out, json);
  const snap::HistoryStore* store = index->trusted();
  note_before_read(data_dir, *index);
  if (store == nullptr) {
    auto start = start_without_index(data_dir, subject, item, from_seq);
    if (!start) return start.status();
    return print_from_log(data_dir, subject, item, *start, from_seq, to_seq, &printer);
  }
  const std::uint64_t indexed_seq = index->position.seq;
  IndexProgress progress;
  const Status indexed = print_from_index(*store, subject, item, from_seq,
                                          std::min(to_seq, indexed_seq), &printer, &progress);
  // The index is a projection: a damaged record of it leaves the rest to
  // the log, from where the index got to.
  const auto from_log_after_index = [&]() -> Status {
    auto start = progress.after ? Result<LogStart>(LogStart{progress.next_seq, *progress.after})
                                : start_without_index(data_dir, subject, item, from_seq);
    if (!start) return start.status();
    return print_from_log(data_dir, subject, item, *start, from_seq, to_seq, &printer);
  };
  const auto from_log_after_damage = [&](const Status& damage) -> Status {
    if (damage.code() != ErrorCode::corrupt) return damage;
    PointInTimeRead read;
    read.index_damage = damage;
    note_read(read);
    return from_log_after_index();
  };
  if (!indexed.ok()) return from_log_after_damage(indexed);
  if (progress.index_went_back) return from_log_after_index();
  if (to_seq <= indexed_seq) return Status();
  // The log goes further than the index. A seq past the index's position
  // (invalid: the names were checked) is one it went back from since.
  auto balance = store->balance_at(subject, item, indexed_seq);
  if (!balance && balance.code() == ErrorCode::invalid) return from_log_after_index();
  if (!balance) return from_log_after_damage(balance.status());
  return print_from_log(data_dir, subject, item, LogStart{indexed_seq + 1, *balance}, from_seq,
                        to_seq, &printer);
}

// ---- --rebuild ------------------------------------------------------------------

struct Rebuilt {
  std::uint64_t events = 0;
  std::uint64_t last_seq = 0;
};

// An index that does not open is set aside first: it is a projection.
Result<std::unique_ptr<snap::HistoryStore>> open_for_rebuild(const std::string& data_dir) {
  // Clearing it frees every page, which LMDB reads to do it: they are
  // walked first (check_all_pages).
  return snap::open_renewing<snap::HistoryStore>(
      history_dir(data_dir), snap::HistoryStoreOptions{.check_all_pages = true});
}

Status index_event(snap::HistoryStore* store, const log::Event& event, std::uint64_t checksum) {
  Status appended = store->append(event, checksum);
  if (appended.code() != ErrorCode::busy) return appended;
  TALLY_TRY(store->flush());  // its buffer is full
  return store->append(event, checksum);
}

Result<Rebuilt> rebuild_history(const std::string& data_dir) {
  TALLY_TRY(check_ledger_dir(data_dir));
  // No ledger may follow the log into the index meanwhile.
  auto lock = log::DirLock::acquire(data_dir);
  if (!lock) return lock.status();
  auto store = open_for_rebuild(data_dir);
  if (!store) return store.status();
  TALLY_TRY((*store)->clear());
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir));
  if (!reader) return reader.status();
  Progress progress("history --rebuild", 0);
  if (progress.enabled()) {
    auto last = log_last_seq(log::posix_file_system(), data_dir);
    if (last) progress.set_total(*last);
  }
  log::EventDecoder decoder;
  log::Record record;
  log::Event event;
  Rebuilt rebuilt;
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more) break;
    TALLY_TRY(log::decode_record(decoder, record, &event));
    TALLY_TRY(index_event(store->get(), event, record.checksum));
    rebuilt.events++;
    rebuilt.last_seq = record.seq;
    if (rebuilt.events % kRebuildFlushEvents == 0) TALLY_TRY((*store)->flush());
    progress.update(record.seq);
  }
  TALLY_TRY((*store)->flush());
  warn_lost_events(data_dir, (*reader)->end(), newest_snapshot_seq(data_dir), nullptr,
                   "the index");
  return rebuilt;
}

int run_rebuild(const Args& args) {
  if (args.has("from-seq") || args.has("to-seq")) {
    return usage_error("history", "--from-seq and --to-seq are not for --rebuild");
  }
  auto rebuilt = rebuild_history(std::string(args.get("data")));
  if (!rebuilt) return failure(rebuilt.status());
  Output out(stdout);
  if (args.has("json")) {
    out.buffer() += "{\"events\":" + std::to_string(rebuilt->events) +
                    ",\"last_seq\":" + std::to_string(rebuilt->last_seq) + "}";
  } else {
    out.buffer() += "indexed " + std::to_string(rebuilt->events) + " events (last seq " +
                    std::to_string(rebuilt->last_seq) + ")";
  }
  out.end_line();
  return kExitOk;
}

int run_history(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("history", data.status().message());
  const bool rebuild = args.has("rebuild");
  if (rebuild != args.positionals().empty()) {
    return usage_error("history", rebuild ? "--rebuild takes no SUBJECT ITEM"
                                          : "expected SUBJECT ITEM (or --rebuild)");
  }
  if (rebuild) return run_rebuild(args);
  const std::string_view subject = args.positionals()[0];
  const std::string_view item = args.positionals()[1];
  for (const Status& name : {check_name("subject", subject), check_name("item", item)}) {
    if (!name.ok()) return usage_error("history", name.message());
  }
  auto from = args.integer("from-seq", 1);
  if (!from) return usage_error("history", from.status().message());
  auto to = args.integer("to-seq", INT64_MAX);
  if (!to) return usage_error("history", to.status().message());
  if (*from > *to) return usage_error("history", "--from-seq is after --to-seq");
  const Status printed = print_history(std::string(*data), subject, item,
                                       static_cast<std::uint64_t>(*from),
                                       static_cast<std::uint64_t>(*to), args.has("json"));
  if (!printed.ok()) return failure(printed);
  return kExitOk;
}

constexpr FlagSpec kHistoryFlags[] = {
    {"data", "DIR", "the data directory (required)"},
    {"from-seq", "N", "changes at or after seq N (default 1)", IntegerRange{1}},
    {"to-seq", "N", "changes at or before seq N", IntegerRange{1}},
    {"rebuild", "", "rebuild the history index from the log (takes the directory's lock)"},
    {"json", "", "one JSON object per line"},
};

constexpr CommandSpec kHistorySpec = {
    "history",
    "Print every change of one subject's item with the balance after it.",
    "tally history --data DIR [--from-seq N] [--to-seq N] [--json] SUBJECT ITEM\n"
    "       tally history --data DIR --rebuild [--json]",
    "One line per event that changed the pair, in seq order:\n"
    "  <seq> <time> <op> key=<key> delta_available=<±n> delta_held=<±n> available=<n> held=<n>\n"
    "op is acquire, consume, transfer, hold, commit, release, expire or batch; key is\n"
    "empty for expire. --json: {\"seq\":..,\"time\":ns,\"key\":..,\"op\":..,\n"
    "\"delta_available\":..,\"delta_held\":..,\"available\":..,\"held\":..} per line.\n"
    "Rejected events change nothing and are not listed. Read from the history\n"
    "index (DATA/history) as far as it reaches, the rest from the log: the\n"
    "answer is complete whether the index is current, behind or absent.\n"
    "\n"
    "--rebuild clears the index and indexes the whole log again, then prints\n"
    "`indexed N events (last seq N)`. It takes the data directory's lock, so it\n"
    "cannot run beside a ledger that has the directory open.\n",
    kHistoryFlags,
    2,
    true,
};

}  // namespace

const CliCommand kHistory = {&kHistorySpec, run_history};

}  // namespace tally::cli
