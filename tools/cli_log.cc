// tally log: print the events of a data directory's log, filtered, as text
// for people or JSON lines for scripts. Reads records directly (no replay).
#include "engine/event_format.h"
#include "engine/replay.h"
#include "log/event.h"
#include "log/file.h"
#include "log/reader.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/format.h"

namespace tally::cli {

namespace {

using log::Event;
using log::Op;

struct LogFilter {
  std::uint64_t to_seq = UINT64_MAX;
  bool by_subject = false;
  std::string_view subject;
  bool by_item = false;
  std::string_view item;
  bool by_key = false;
  std::string_view key;

  bool matches(const Event& event) const {
    if (by_key && event.key != key) return false;
    bool subject_found = !by_subject;
    bool item_found = !by_item;
    for (const Op& op : event.ops) {
      subject_found = subject_found || op.subject == subject || op.to == subject;
      item_found = item_found || op.item == item;
    }
    return subject_found && item_found;
  }
};

Result<LogFilter> parse_filter(const Args& args, std::uint64_t* from_seq) {
  LogFilter filter;
  auto from = args.integer("from-seq", 1, 1, INT64_MAX);
  if (!from) return from.status();
  auto to = args.integer("to-seq", INT64_MAX, 1, INT64_MAX);
  if (!to) return to.status();
  *from_seq = static_cast<std::uint64_t>(*from);
  filter.to_seq = static_cast<std::uint64_t>(*to);
  filter.by_subject = args.has("subject");
  filter.subject = args.get("subject");
  filter.by_item = args.has("item");
  filter.item = args.get("item");
  filter.by_key = args.has("key");
  filter.key = args.get("key");
  return filter;
}

Status print_log(const std::string& data_dir, std::uint64_t from_seq, const LogFilter& filter,
                 bool json) {
  TALLY_TRY(require_data_dir(data_dir));
  log::LogReaderOptions options;
  options.from_seq = from_seq;
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir), options);
  if (!reader) return reader.status();
  log::EventDecoder decoder;
  log::Record record;
  Event event;
  Output out(stdout);
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more || record.seq > filter.to_seq) return Status();
    Status decoded = decoder.decode(record.payload, &event);
    if (!decoded.ok()) {
      return log::corrupt_at(record.segment_first_seq, record.offset, decoded.message());
    }
    if (!filter.matches(event)) continue;
    append_event(event, json ? EventFormat::json : EventFormat::text, &out.buffer());
    out.end_line();
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
    {"from-seq", "N", "start at this seq (default 1)"},
    {"to-seq", "N", "stop after this seq"},
    {"subject", "S", "only events with an op whose subject or `to` is S"},
    {"item", "I", "only events with an op on item I"},
    {"key", "K", "only events with idempotency key K"},
    {"json", "", "one JSON object per line"},
};

constexpr CommandSpec kLogSpec = {
    "log",
    "Print the events of the log, one per line, optionally filtered.",
    "tally log --data DIR [--from-seq N] [--to-seq N] [--subject S] [--item I] [--key K] [--json]",
    "Text: `<seq> <time> <type> key=K field=value ...`. --json: one object per\n"
    "line with seq, time (ns), time_rfc3339, type, key, the op's fields,\n"
    "fingerprint (docs/cli.md lists them). Filters combine with AND.\n",
    kLogFlags,
    0,
};

}  // namespace

const CliCommand kLog = {&kLogSpec, run_log};

}  // namespace tally::cli
