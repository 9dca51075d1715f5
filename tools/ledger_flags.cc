#include "tools/ledger_flags.h"

#include <string>

namespace tally::cli {

namespace {

constexpr std::int64_t kNsPerSecond = 1'000'000'000;

}  // namespace

Status parse_ledger_flags(const Args& args, LedgerOptions* options) {
  auto window = args.integer("idempotency-window", options->idempotency_window_ns / kNsPerSecond);
  if (!window) return window.status();
  auto ttl_max = args.integer("hold-ttl-max", options->hold_ttl_ns_max / kNsPerSecond);
  if (!ttl_max) return ttl_max.status();
  auto queue = args.integer("queue-depth", static_cast<std::int64_t>(options->queue_depth_max));
  if (!queue) return queue.status();
  auto segment =
      args.integer("segment-bytes", static_cast<std::int64_t>(options->segment_size_bytes));
  if (!segment) return segment.status();
  // A usage error here, where Ledger::open would refuse it (exit 1).
  if (const Status size = log::check_segment_size(static_cast<std::uint64_t>(*segment));
      !size.ok()) {
    return Status(ErrorCode::invalid, "--segment-bytes: " + size.message());
  }
  auto sync_interval = args.integer("sync-interval-ms", options->sync_interval_ms);
  if (!sync_interval) return sync_interval.status();
  auto scrub = args.integer("scrub-seconds", options->log_scrub_seconds);
  if (!scrub) return scrub.status();
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
  // Set only when given: a window or limit that is not whole seconds (an
  // embedder's default) stays as it is.
  if (args.has("idempotency-window")) options->idempotency_window_ns = *window * kNsPerSecond;
  if (args.has("hold-ttl-max")) options->hold_ttl_ns_max = *ttl_max * kNsPerSecond;
  options->queue_depth_max = static_cast<std::size_t>(*queue);
  options->segment_size_bytes = static_cast<std::uint64_t>(*segment);
  options->sync_interval_ms = *sync_interval;
  options->log_scrub_seconds = *scrub;
  options->snapshot_every_events = static_cast<std::uint64_t>(*every);
  options->snapshot_every_seconds = *seconds;
  options->snapshot_retain = static_cast<std::size_t>(*retain);
  options->history = history == "on";
  return Status();
}

}  // namespace tally::cli
