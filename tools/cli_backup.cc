// tally backup: a copy of a data directory, taken beside a live writer
// (engine/backup.h).
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "engine/backup.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/format.h"
#include "tools/progress.h"

namespace tally::cli {

namespace {

// ` name=N` (JSON: `,"name":N`), `none` (null) for no value; the first
// field of the line opens it instead.
void append_field(std::string* line, bool json, const char* name,
                  std::optional<std::uint64_t> value) {
  if (json) {
    *line += line->empty() ? "{\"" : ",\"";
    *line += name;
    *line += "\":";
  } else {
    if (!line->empty()) *line += " ";
    *line += name;
    *line += "=";
  }
  if (value.has_value()) {
    append_int(line, static_cast<std::int64_t>(*value));
  } else {
    *line += json ? "null" : "none";
  }
}

int run_backup(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("backup", data.status().message());
  auto out_dir = args.required("out");
  if (!out_dir) return usage_error("backup", out_dir.status().message());
  const Status exists = check_ledger_dir(std::string(*data));
  if (!exists.ok()) return failure(exists);
  Progress stores("backup: copying the stores", 0);
  stores.set_unit("MiB");
  Progress copying("backup: copying the log", 0);
  copying.set_unit("MiB");
  Progress checking("backup: checking the copy", 0);
  const auto progress = [&](BackupStage stage, std::uint64_t done, std::uint64_t total) {
    switch (stage) {
      case BackupStage::store_bytes:
        stores.update_now(done >> 20);
        break;
      case BackupStage::log_bytes:
        stores.finish();
        copying.set_total(total >> 20);
        copying.update_now(done >> 20);
        break;
      case BackupStage::log_events:
        copying.finish();
        checking.update(done);
        break;
    }
  };
  auto report = backup_data(std::string(*data), std::string(*out_dir), nullptr,
                            copying.enabled() ? BackupProgress(progress) : BackupProgress());
  stores.finish();
  copying.finish();
  checking.finish();
  if (!report) return failure(report.status());
  for (const std::string& why : report->left_out) {
    std::fprintf(stderr, "tally: left out of the backup (made from the log at open): %s\n",
                 why.c_str());
  }
  const bool json = args.has("json");
  Output out(stdout);
  std::string& line = out.buffer();
  append_field(&line, json, "last_seq", report->last_seq);
  append_field(&line, json, "segments", report->segments);
  append_field(&line, json, "log_bytes", report->log_bytes);
  append_field(&line, json, "log_copies", report->log_copies);
  append_field(&line, json, "snapshots", report->snapshots);
  append_field(&line, json, "history_seq", report->history_seq);
  if (json) {
    line += ",\"left_out\":[";
    for (std::size_t index = 0; index < report->left_out.size(); index++) {
      if (index > 0) line += ",";
      append_json_string(&line, report->left_out[index]);
    }
    line += "]}";
  }
  out.end_line();
  return kExitOk;
}

constexpr FlagSpec kBackupFlags[] = {
    {"data", "DIR", "the data directory (required)"},
    {"out", "DEST", "where the backup goes; must not exist (required)"},
    {"json", "", "one JSON object"},
};

constexpr CommandSpec kBackupSpec = {
    "backup",
    "Copy a data directory, safely beside a running server.",
    "tally backup --data DIR --out DEST [--json]",
    "Copies DIR to DEST while a ledger may be writing DIR: the snapshots and\n"
    "the history index as one LMDB read transaction each sees them, then the\n"
    "log, read back record by record (every checksum and the chain) and\n"
    "copied again where a write in flight made it disagree. The log ends at\n"
    "the last event it held when copied; a torn tail is repaired, so DEST\n"
    "opens as it is (`tally serve --data DEST`, `tally verify --data DEST`).\n"
    "A store that does not open is left out, with a warning: it is made from\n"
    "the log. The copy is built in DEST.partial and renamed to DEST once\n"
    "complete and synced. Takes no lock and writes nothing in DIR (but its\n"
    "reader slot in an LMDB store's lock.mdb, as every reader).\n"
    "Prints `last_seq=N segments=N log_bytes=N log_copies=N snapshots=N\n"
    "history_seq=N` (`none` for a store not copied; with --json, one object,\n"
    "null, and `left_out`: the warnings, as a list). DEST may not lie inside\n"
    "DIR. A program that embeds the ledger backs it up with Ledger::backup\n"
    "(LMDB allows one open of a store per process). Progress goes to stderr\n"
    "when it is a terminal.\n",
    kBackupFlags,
    0,
};

}  // namespace

const CliCommand kBackup = {&kBackupSpec, run_backup};

}  // namespace tally::cli
