// Read-only audit commands over a data directory: export, balance, list and
// verify. Each replays the log into a fresh State (engine/replay.h) and
// never takes the directory's lock.
#include <memory>

#include "engine/clock.h"
#include "log/file.h"
#include "log/reader.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/csv.h"
#include "tools/format.h"

namespace tally::cli {

Status require_data_dir(const std::string& data_dir) {
  // The log reader takes a missing log for an empty one, which is right for
  // a fresh ledger but hides a mistyped --data.
  if (!log::posix_file_system().exists(data_dir)) {
    return Status(ErrorCode::not_found, "no data directory at " + data_dir);
  }
  return Status();
}

Result<Replayed> replay_data(const std::string& data_dir, ReplayOptions options) {
  TALLY_TRY(require_data_dir(data_dir));
  options.data_dir = data_dir;
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

namespace {

// {"subject":..,"item":..,"available":N,"held":N}: the JSON shape of one
// balance in export, balance and list.
void append_balance_json(std::string* out, std::string_view subject, std::string_view item,
                         proj::Balance balance) {
  *out += "{\"subject\":";
  append_json_string(out, subject);
  *out += ",\"item\":";
  append_json_string(out, item);
  *out += ",\"available\":";
  *out += std::to_string(balance.available);
  *out += ",\"held\":";
  *out += std::to_string(balance.held);
  *out += "}";
}

// A fresh State with DATA's log replayed into it.
Result<std::unique_ptr<proj::State>> load_state(std::string_view data_dir) {
  auto replayed = replay_data(std::string(data_dir));
  if (!replayed) return replayed.status();
  return std::move(replayed->state);
}

int run_export(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("export", data.status().message());
  auto loaded = load_state(*data);
  if (!loaded) return failure(loaded.status());
  const proj::State& state = **loaded;
  Output out(stdout);
  const std::int64_t now_ns = system_clock().now_ns();
  if (!args.has("json")) {
    append_export(state, now_ns, &out.buffer());
    return kExitOk;
  }
  state.for_each_balance(now_ns, [&](std::string_view subject, std::string_view item,
                                     proj::Balance balance) {
    append_balance_json(&out.buffer(), subject, item, balance);
    out.end_line();
  });
  return kExitOk;
}

int run_balance(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("balance", data.status().message());
  auto loaded = load_state(*data);
  if (!loaded) return failure(loaded.status());
  const proj::State& state = **loaded;
  const std::string_view subject = args.positionals()[0];
  const std::string_view item = args.positionals()[1];
  const proj::Balance balance = state.balance(subject, item, system_clock().now_ns());
  Output out(stdout);
  if (args.has("json")) {
    append_balance_json(&out.buffer(), subject, item, balance);
  } else {
    out.buffer() += "available=" + std::to_string(balance.available) +
                    " held=" + std::to_string(balance.held);
  }
  out.end_line();
  return kExitOk;
}

int run_list(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("list", data.status().message());
  auto loaded = load_state(*data);
  if (!loaded) return failure(loaded.status());
  const proj::State& state = **loaded;
  const std::string_view subject = args.positionals()[0];
  const bool json = args.has("json");
  Output out(stdout);
  state.list(subject, system_clock().now_ns(), [&](std::string_view item, proj::Balance balance) {
    if (json) {
      append_balance_json(&out.buffer(), subject, item, balance);
    } else {
      std::string& line = out.buffer();
      line += item;
      line += ',';
      line += std::to_string(balance.available);
      line += ',';
      line += std::to_string(balance.held);
    }
    out.end_line();
  });
  return kExitOk;
}

// ---- verify ----------------------------------------------------------------

struct VerifySummary {
  ReplayReport report;
  std::size_t segments = 0;
  std::uint64_t last_seq = 0;
  std::int64_t last_time_ns = 0;
  proj::StateCounts counts;
  std::uint64_t digest = 0;
};

// Replays with checksums and chain checked, then the state's invariants
// and the per-item conservation of flows.
Result<VerifySummary> verify_data(const std::string& data_dir) {
  proj::FlowTotals flows;
  ReplayOptions options;
  options.use_snapshots = false;
  options.visit = [&](const log::Event& event, const log::Record&) { flows.apply(event); };
  auto replayed = replay_data(data_dir, options);
  if (!replayed) return replayed.status();
  const proj::State& state = *replayed->state;
  TALLY_TRY(state.check_invariants());
  TALLY_TRY(flows.check(state));
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir));
  if (!reader) return reader.status();

  VerifySummary summary;
  summary.report = replayed->report;
  summary.segments = (*reader)->segment_first_seqs().size();
  summary.last_seq = state.last_seq();
  summary.last_time_ns = state.last_timestamp_ns();
  summary.counts = state.counts();
  summary.digest = state.digest();
  return summary;
}

void append_verify_text(const VerifySummary& summary, std::string* out) {
  const auto line = [&](std::string_view name, const std::string& value) {
    *out += name;
    *out += ": ";
    *out += value;
    *out += "\n";
  };
  *out += "ok: checksums, chain, invariants and flows verify\n";
  line("events", std::to_string(summary.report.events));
  line("segments", std::to_string(summary.segments));
  line("last_seq", std::to_string(summary.last_seq));
  std::string time;
  append_rfc3339(&time, summary.last_time_ns);
  line("last_time", summary.last_seq == 0 ? "-" : time);
  line("balances", std::to_string(summary.counts.balances));
  line("open_holds", std::to_string(summary.counts.open_holds));
  line("finalized_holds", std::to_string(summary.counts.finalized_holds));
  line("keys", std::to_string(summary.counts.keys));
  std::string digest;
  append_hex64(&digest, summary.digest);
  line("digest", digest);
  const log::LogEnd& end = summary.report.end;
  line("torn_tail", end.torn ? log::log_position(end.segment_first_seq, end.offset) +
                                   " (the next writer truncates it)"
                             : std::string("none"));
}

void append_verify_json(const VerifySummary& summary, std::string* out) {
  const auto field = [&](std::string_view name, const std::string& value) {
    *out += ",\"";
    *out += name;
    *out += "\":";
    *out += value;
  };
  *out += "{\"ok\":true";
  field("events", std::to_string(summary.report.events));
  field("segments", std::to_string(summary.segments));
  field("last_seq", std::to_string(summary.last_seq));
  field("last_time", std::to_string(summary.last_time_ns));
  field("balances", std::to_string(summary.counts.balances));
  field("open_holds", std::to_string(summary.counts.open_holds));
  field("finalized_holds", std::to_string(summary.counts.finalized_holds));
  field("keys", std::to_string(summary.counts.keys));
  std::string digest = "\"";
  append_hex64(&digest, summary.digest);
  field("digest", digest + "\"");
  const log::LogEnd& end = summary.report.end;
  std::string torn = "null";
  if (end.torn) {
    torn = "{\"segment\":\"" + log::segment_file_name(end.segment_first_seq) +
           "\",\"offset\":" + std::to_string(end.offset) + "}";
  }
  field("torn_tail", torn);
  *out += "}";
}

int run_verify(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("verify", data.status().message());
  const bool json = args.has("json");
  auto summary = verify_data(std::string(*data));
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
  return kExitOk;
}

// ---- specs -----------------------------------------------------------------

constexpr FlagSpec kDataOnly[] = {
    {"data", "DIR", "the data directory (required)"},
    {"json", "", "JSON output"},
};

constexpr CommandSpec kExportSpec = {
    "export",
    "Print every non-zero balance as CSV: subject,item,available,held.",
    "tally export --data DIR [--json]",
    "Lines are sorted bytewise by subject, then item; a hold that is due now\n"
    "counts as released. --json prints one object per line instead:\n"
    "  {\"subject\":..,\"item\":..,\"available\":N,\"held\":N}\n",
    kDataOnly,
    0,
};

constexpr CommandSpec kBalanceSpec = {
    "balance",
    "Print the balance of one subject and item: available=N held=M.",
    "tally balance --data DIR [--json] SUBJECT ITEM",
    "--json prints {\"subject\":..,\"item\":..,\"available\":N,\"held\":N}.\n"
    "Use -- before a SUBJECT that starts with '-'.\n",
    kDataOnly,
    2,
};

constexpr CommandSpec kListSpec = {
    "list",
    "Print every non-zero balance of a subject: item,available,held.",
    "tally list --data DIR [--json] SUBJECT",
    "Lines are sorted bytewise by item. --json prints one object per line:\n"
    "  {\"subject\":..,\"item\":..,\"available\":N,\"held\":N}\n",
    kDataOnly,
    1,
};

constexpr CommandSpec kVerifySpec = {
    "verify",
    "Check every checksum, the chain, the state's invariants and the flow totals.",
    "tally verify --data DIR [--json]",
    "Exits 1 at the first problem, naming the segment and byte offset. A torn\n"
    "tail (an unfinished last write) is reported but is not a failure.\n",
    kDataOnly,
    0,
};

}  // namespace

const CliCommand kExport = {&kExportSpec, run_export};
const CliCommand kBalance = {&kBalanceSpec, run_balance};
const CliCommand kList = {&kListSpec, run_list};
const CliCommand kVerify = {&kVerifySpec, run_verify};

}  // namespace tally::cli
