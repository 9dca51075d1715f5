#include "tools/ledger_flags.h"

#include <string>

namespace tally::cli {

Status parse_ledger_flags(const Args& args, LedgerOptions* options) {
  auto every = args.integer("snapshot-every", static_cast<std::int64_t>(options->snapshot_every_events));
  if (!every) return every.status();
  auto seconds = args.integer("snapshot-seconds", options->snapshot_every_seconds);
  if (!seconds) return seconds.status();
  auto retain = args.integer("snapshot-retain", static_cast<std::int64_t>(options->snapshot_retain));
  if (!retain) return retain.status();
  const std::string_view history = args.get("history", options->history ? "on" : "off");
  if (history != "on" && history != "off") {
    return Status(ErrorCode::invalid, "--history: '" + std::string(history) + "' is not on or off");
  }
  options->snapshot_every_events = static_cast<std::uint64_t>(*every);
  options->snapshot_every_seconds = *seconds;
  options->snapshot_retain = static_cast<std::size_t>(*retain);
  options->history = history == "on";
  return Status();
}

}  // namespace tally::cli
