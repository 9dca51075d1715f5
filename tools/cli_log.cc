// tally log: print the events of a data directory's log, filtered, as text
// for people or JSON lines for scripts. Reads records directly (no replay).
#include <algorithm>
#include <tuple>

#include "engine/event_format.h"
#include "engine/replay.h"
#include "log/event.h"
#include "log/file.h"
#include "log/reader.h"
#include "projections/changes.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/format.h"
#include "tools/progress.h"

namespace tally::cli {

namespace {

using log::Event;
using log::Op;

// The values of --type, the `type` field of `tally log`: an op type for an
// applied single-op event, "batch" for an applied batch, "rejected" for a
// rejected request.
constexpr std::string_view kEventTypes[] = {"acquire", "consume", "transfer", "hold",  "commit",
                                            "release", "expire",  "batch",    "rejected"};
constexpr std::size_t kEventTypeCount = std::size(kEventTypes);
static_assert(kEventTypeCount <= 32, "a type mask is 32 bits");

std::string_view event_type(const Event& event) {
  return event.rejected != log::Reason::none ? "rejected" : proj::event_op_name(event);
}

std::uint32_t type_bit(std::string_view type) {
  for (std::size_t index = 0; index < kEventTypeCount; index++) {
    if (kEventTypes[index] == type) return std::uint32_t{1} << index;
  }
  return 0;
}

struct LogFilter {
  std::uint64_t to_seq = UINT64_MAX;
  // Event timestamps, inclusive. The log's timestamps never go backwards,
  // so the first event after `until_ns` ends the scan.
  std::int64_t since_ns = INT64_MIN;
  std::int64_t until_ns = INT64_MAX;
  std::uint32_t types = 0;  // bits of kEventTypes; 0: every type
  bool by_subject = false;
  std::string_view subject;
  bool by_item = false;
  std::string_view item;
  bool by_key = false;
  std::string_view key;

  bool matches(const Event& event) const {
    if (event.timestamp_ns < since_ns) return false;
    if (types != 0 && (types & type_bit(event_type(event))) == 0) return false;
    if (by_key && event.key != key) return false;
    if (!by_subject && !by_item) return true;
    // Both on one op: the pair's events, not a batch that touches the
    // subject in one op and the item in another.
    return std::any_of(event.ops.begin(), event.ops.end(), [&](const Op& op) {
      return (!by_subject || op.subject == subject || op.to == subject) &&
             (!by_item || op.item == item);
    });
  }
};

// --type T[,T...]: the event types to keep.
Status parse_types(std::string_view list, std::uint32_t* types) {
  *types = 0;
  for (;;) {
    const std::size_t comma = list.find(',');
    const std::string_view type = list.substr(0, comma);
    const std::uint32_t bit = type_bit(type);
    if (bit == 0) {
      std::string message = "--type: '" + std::string(type) + "' is not one of ";
      for (const std::string_view known : kEventTypes) {
        if (known != kEventTypes[0]) message += ", ";
        message += known;
      }
      return Status(ErrorCode::invalid, std::move(message));
    }
    *types |= bit;
    if (comma == std::string_view::npos) return Status();
    list.remove_prefix(comma + 1);
  }
}

Result<LogFilter> parse_filter(const Args& args, std::uint64_t* from_seq) {
  LogFilter filter;
  auto from = args.integer("from-seq", 1);
  if (!from) return from.status();
  auto to = args.integer("to-seq", INT64_MAX);
  if (!to) return to.status();
  if (*from > *to) return Status(ErrorCode::invalid, "--from-seq is after --to-seq");
  *from_seq = static_cast<std::uint64_t>(*from);
  filter.to_seq = static_cast<std::uint64_t>(*to);
  filter.by_subject = args.has("subject");
  filter.subject = args.get("subject");
  filter.by_item = args.has("item");
  filter.item = args.get("item");
  filter.by_key = args.has("key");
  filter.key = args.get("key");
  // An empty name would match the empty fields of ops that lack one (an
  // acquire's `to`, an expiry's key): no name is empty, so refuse it.
  for (const auto& [given, what, name] : {std::tuple(filter.by_subject, "subject", filter.subject),
                                          std::tuple(filter.by_item, "item", filter.item),
                                          std::tuple(filter.by_key, "key", filter.key)}) {
    if (given) TALLY_TRY(check_name(what, name));
  }
  auto since = args.time("since", INT64_MIN);
  if (!since) return since.status();
  auto until = args.time("until", INT64_MAX);
  if (!until) return until.status();
  if (*since > *until) return Status(ErrorCode::invalid, "--since is after --until");
  filter.since_ns = *since;
  filter.until_ns = *until;
  if (args.has("type")) TALLY_TRY(parse_types(args.get("type"), &filter.types));
  return filter;
}

Status print_log(const std::string& data_dir, std::uint64_t from_seq, const LogFilter& filter,
                 bool json) {
  TALLY_TRY(check_ledger_dir(data_dir));
  // Before the log is read: a server beside it may write a later snapshot
  // of events past the segments this read lists.
  const std::uint64_t snapshot_seq = newest_snapshot_seq(data_dir);
  log::LogReaderOptions options;
  options.from_seq = from_seq;
  options.writer_may_be_live = true;  // beside a server, maybe
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir), options);
  if (!reader) return reader.status();
  log::EventDecoder decoder;
  log::Record record;
  Event event;
  Output out(stdout);
  Progress progress("log", 0, Streams::stdout_while_working);
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more) {
      // Read to the log's end: what it lost there is said, as the reads say it.
      warn_lost_events(data_dir, (*reader)->end(), snapshot_seq, nullptr, "what is printed");
      return Status();
    }
    if (record.seq > filter.to_seq) return Status();
    progress.update(record.seq);
    TALLY_TRY(log::decode_record(decoder, record, &event));
    if (event.timestamp_ns > filter.until_ns) return Status();
    if (filter.matches(event)) {
      append_event(event, json ? EventFormat::json : EventFormat::text, &out.buffer());
      out.end_line();
    }
    // Seqs run without gaps: the record after to_seq is neither read nor
    // checked, so damage past the range asked for does not fail it.
    if (record.seq == filter.to_seq) return Status();
  }
}

int run_log(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("log", data.status().message());
  std::uint64_t from_seq = 1;
  auto filter = parse_filter(args, &from_seq);
  if (!filter) return usage_error("log", filter.status().message());
  const Status printed = print_log(std::string(*data), from_seq, *filter, args.has("json"));
  if (!printed.ok()) return failure(printed);
  return kExitOk;
}

constexpr FlagSpec kLogFlags[] = {
    {"data", "DIR", "the data directory (required)"},
    {"from-seq", "N", "start at this seq (default 1)", IntegerRange{1}},
    {"to-seq", "N", "stop after this seq", IntegerRange{1}},
    {"subject", "S", "only events with an op whose subject or `to` is S"},
    {"item", "I", "only events with an op on item I"},
    {"key", "K", "only events with idempotency key K"},
    {"since", "T", "only events stamped at or after time T"},
    {"until", "T", "only events stamped at or before time T"},
    {"type", "T[,T]", "only events of these types (the `type` field)"},
    {"json", "", "one JSON object per line"},
};

constexpr CommandSpec kLogSpec = {
    "log",
    "Print the events of the log, one per line, optionally filtered.",
    "tally log --data DIR [--from-seq N] [--to-seq N] [--since T] [--until T] [--type T[,T]]\n"
    "                 [--subject S] [--item I] [--key K] [--json]",
    "Text: `<seq> <time> <type> key=K field=value ...`. --json: one object per\n"
    "line with seq, time (ns), time_rfc3339, type, key, the op's fields,\n"
    "fingerprint (docs/cli.md lists them). Filters combine with AND.\n"
    "\n"
    "--since/--until take RFC 3339 with an offset (2026-03-31T23:59:59.999999999Z)\n"
    "or ns since the epoch, and are inclusive. --type matches the event's `type`:\n"
    "acquire, consume, transfer, hold, commit, release, expire for a single applied\n"
    "op, batch for an applied batch (whatever its ops), rejected for a rejected\n"
    "request (single or batch); a comma-separated list matches any of them.\n",
    kLogFlags,
    0,
};

}  // namespace

const CliCommand kLog = {&kLogSpec, run_log};

}  // namespace tally::cli
