// tally log: print the events of a data directory's log, filtered, as text
// for people or JSON lines for scripts. Reads records directly (no replay).
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
using log::OpType;

// Writes one record's fields in either output form:
//   text: `word name=value name=[item; item]`
//   JSON: `{"name":value,"name":[{...},{...}]}`
// Records nest one level (an event's ops).
class FieldWriter {
 public:
  FieldWriter(std::string* out, bool json) : out_(out), json_(json) {}

  void open_record() {
    if (json_) out_->push_back('{');
    first_[depth_] = true;
  }
  void close_record() {
    if (json_) out_->push_back('}');
  }
  // The record's kind: a bare word in text, "type":"..." in JSON.
  void type(std::string_view name) {
    if (json_) return string("type", name);
    separate();
    out_->append(name);
  }
  void string(std::string_view name, std::string_view value) {
    start_field(name);
    if (json_) {
      append_json_string(out_, value);
    } else {
      append_text_escaped(out_, value);
    }
  }
  void integer(std::string_view name, std::int64_t value) {
    start_field(name);
    *out_ += std::to_string(value);
  }
  void unsigned_integer(std::string_view name, std::uint64_t value) {
    start_field(name);
    *out_ += std::to_string(value);
  }
  void boolean(std::string_view name, bool value) {
    start_field(name);
    *out_ += value ? "true" : "false";
  }
  void open_list(std::string_view name) {
    start_field(name);
    out_->push_back('[');
    depth_++;
    TALLY_ASSERT(depth_ < kDepthMax);
    first_item_ = true;
  }
  // Opens a record inside the open list.
  void open_item() {
    if (!first_item_) *out_ += json_ ? "," : "; ";
    first_item_ = false;
    open_record();
  }
  void close_list() {
    depth_--;
    out_->push_back(']');
  }
  // A named group of fields: {"name":{...}} in JSON, name=[...] in text.
  void open_object(std::string_view name) {
    start_field(name);
    out_->push_back(json_ ? '{' : '[');
    depth_++;
    TALLY_ASSERT(depth_ < kDepthMax);
    first_[depth_] = true;
  }
  void close_object() {
    depth_--;
    out_->push_back(json_ ? '}' : ']');
  }

 private:
  static constexpr int kDepthMax = 2;

  void separate() {
    if (!first_[depth_]) out_->push_back(json_ ? ',' : ' ');
    first_[depth_] = false;
  }
  void start_field(std::string_view name) {
    separate();
    if (json_) {
      out_->push_back('"');
      out_->append(name);
      *out_ += "\":";
    } else {
      out_->append(name);
      out_->push_back('=');
    }
  }

  std::string* out_;
  const bool json_;
  int depth_ = 0;
  bool first_[kDepthMax] = {true, true};
  bool first_item_ = true;
};

// The op's fields that its type uses (log/event.h). `hold_id` is the id a
// hold op created (0 inside a rejected request, which created none).
void write_op_fields(FieldWriter* writer, const Op& op, std::uint64_t hold_id, bool requested) {
  switch (op.type) {
    case OpType::acquire:
    case OpType::consume:
    case OpType::transfer:
      writer->string("subject", op.subject);
      if (op.type == OpType::transfer) writer->string("to", op.to);
      writer->string("item", op.item);
      writer->integer("qty", op.qty);
      return;
    case OpType::hold:
      writer->string("subject", op.subject);
      writer->string("item", op.item);
      writer->integer("qty", op.qty);
      writer->integer("ttl_ns", op.ttl_ns);
      if (hold_id != 0) writer->unsigned_integer("hold", hold_id);
      return;
    case OpType::commit:
    case OpType::release:
    case OpType::expire:
      // A request names its hold by id or by the key of the hold's request;
      // an applied event carries the resolved id as well.
      if (!requested || op.hold_key.empty()) writer->unsigned_integer("hold", op.hold);
      if (!op.hold_key.empty()) writer->string("hold_key", op.hold_key);
      if (requested) {
        // A rejected request names only the hold and, for a commit, the
        // quantity asked for (0: the whole hold).
        if (op.type == OpType::commit) writer->integer("qty", op.qty);
        return;
      }
      writer->string("subject", op.subject);
      writer->string("item", op.item);
      writer->integer("qty", op.qty);
      if (op.type == OpType::commit) writer->integer("released", op.released);
      return;
  }
}

void write_op_list(FieldWriter* writer, std::string_view name, const Event& event,
                   bool requested) {
  writer->open_list(name);
  for (std::size_t op_index = 0; op_index < event.ops.size(); op_index++) {
    const Op& op = event.ops[op_index];
    writer->open_item();
    writer->type(log::op_type_name(op.type));
    write_op_fields(writer, op, requested ? 0 : log::hold_id(event.seq, true, op_index), requested);
    writer->close_record();
  }
  writer->close_list();
}

void write_event(FieldWriter* writer, const Event& event, bool json, std::string* out) {
  writer->open_record();
  if (json) {
    writer->unsigned_integer("seq", event.seq);
    writer->integer("time", event.timestamp_ns);
    std::string time;
    append_rfc3339(&time, event.timestamp_ns);
    writer->string("time_rfc3339", time);
  } else {
    *out += std::to_string(event.seq) + " ";
    append_rfc3339(out, event.timestamp_ns);
    *out += " ";
  }
  const bool single = event.rejected == log::Reason::none && !event.batch;
  TALLY_ASSERT(!event.ops.empty() || !single);  // the decoder's guarantee
  writer->type(event.rejected != log::Reason::none ? "rejected"
               : event.batch                      ? "batch"
                                                  : log::op_type_name(event.ops[0].type));
  if (json || !event.key.empty()) writer->string("key", event.key);
  if (single) {
    write_op_fields(writer, event.ops[0], log::hold_id(event.seq, false, 0), false);
  } else if (event.rejected == log::Reason::none) {
    write_op_list(writer, "ops", event, false);
  } else {
    writer->string("reason", log::reason_name(event.rejected));
    writer->unsigned_integer("index", event.failed_index);
    writer->boolean("batch", event.batch);
    write_op_list(writer, "request", event, true);
  }
  const log::Meta& meta = event.meta;
  if (!meta.reason.empty() || !meta.reference.empty() || !meta.actor.empty()) {
    // Nested, so that a rejected event's reason and the caller's reason
    // never share a name.
    writer->open_object("meta");
    writer->string("reason", meta.reason);
    writer->string("reference", meta.reference);
    writer->string("actor", meta.actor);
    writer->close_object();
  }
  if (json || event.fingerprint != 0) {
    std::string fingerprint;
    append_hex64(&fingerprint, event.fingerprint);
    writer->string("fingerprint", fingerprint);
  }
  writer->close_record();
}

}  // namespace

void append_event(const Event& event, bool json, std::string* out) {
  FieldWriter writer(out, json);
  write_event(&writer, event, json, out);
}

namespace {

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
    bool subject_found = !by_subject;
    bool item_found = !by_item;
    for (const Op& op : event.ops) {
      subject_found = subject_found || op.subject == subject || op.to == subject;
      item_found = item_found || op.item == item;
    }
    return subject_found && item_found;
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
  auto since = args.time("since", INT64_MIN);
  if (!since) return since.status();
  auto until = args.time("until", INT64_MAX);
  if (!until) return until.status();
  filter.since_ns = *since;
  filter.until_ns = *until;
  if (args.has("type")) TALLY_TRY(parse_types(args.get("type"), &filter.types));
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
  Progress progress("log", 0, Streams::stdout_while_working);
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more || record.seq > filter.to_seq) return Status();
    progress.update(record.seq);
    Status decoded = decoder.decode(record.payload, &event);
    if (!decoded.ok()) {
      return log::corrupt_at(record.segment_first_seq, record.offset, decoded.message());
    }
    if (event.timestamp_ns > filter.until_ns) return Status();
    if (!filter.matches(event)) continue;
    append_event(event, json, &out.buffer());
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
