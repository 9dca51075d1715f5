// Flags that set how a command opens its ledger (LedgerOptions): the
// idempotency window and hold ttl limit, the queue, the log's segments and
// async syncs, the log's scrubs, snapshots and the history projection (docs/snapshots.md).
// serve, apply and bench --data take them.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "engine/ledger.h"
#include "log/format.h"
#include "log/status.h"
#include "tools/args.h"

namespace tally::cli {

// The most snapshots --snapshot-retain (and tally snapshot --retain) keeps.
inline constexpr std::int64_t kSnapshotRetainMax = 1000;
inline constexpr std::int64_t kSnapshotSecondsMax = 365ll * 24 * 3600;
// --idempotency-window and --hold-ttl-max, in seconds: 100 years, whose
// nanoseconds (3.2e18) fit an int64 with room for a timestamp of today.
inline constexpr std::int64_t kDurationSecondsMax = 100ll * 365 * 24 * 3600;
inline constexpr std::int64_t kSyncIntervalMsMax = 60'000;

inline constexpr FlagSpec kLedgerFlags[] = {
    {"idempotency-window", "S",
     "remember keys and finalized holds for S seconds of log time (default 86400; 0: forever)",
     IntegerRange{0, kDurationSecondsMax}},
    {"hold-ttl-max", "S", "the longest hold ttl, in seconds (default 2592000: 30 days)",
     IntegerRange{1, kDurationSecondsMax}},
    {"queue-depth", "N", "commands waiting for the writer at most (default 65536)",
     IntegerRange{1, static_cast<std::int64_t>(kQueueDepthMaxLimit)}},
    {"segment-bytes", "N", "the log's segment size, a multiple of 8 (default 67108864)",
     IntegerRange{static_cast<std::int64_t>(log::kSegmentSizeBytesMin),
                  static_cast<std::int64_t>(log::kSegmentSizeBytesMax)}},
    {"sync-interval-ms", "N", "async durability: fdatasync once N ms passed since the last (10)",
     IntegerRange{1, kSyncIntervalMsMax}},
    {"scrub-seconds", "S",
     "read and verify the whole durable log again every S seconds (default 604800, 7 days; 0: "
     "never)",
     IntegerRange{0, kSnapshotSecondsMax}},
    {"snapshot-every", "N", "take a snapshot every N events (default 1000000; 0: no count trigger)",
     IntegerRange{0}},
    {"snapshot-seconds", "S", "and every S seconds (default 3600; 0: no time trigger; both 0: no snapshots)",
     IntegerRange{0, kSnapshotSecondsMax}},
    {"snapshot-retain", "K", "keep the newest K snapshots (default 2)", IntegerRange{1, kSnapshotRetainMax}},
    {"history", "on|off", "keep the point-in-time history projection (default on)"},
};

// A command's own flags followed by kLedgerFlags.
template <std::size_t N>
constexpr std::array<FlagSpec, N + std::size(kLedgerFlags)> with_ledger_flags(const FlagSpec (&own)[N]) {
  std::array<FlagSpec, N + std::size(kLedgerFlags)> all{};
  std::size_t at = 0;
  for (const FlagSpec& flag : own) all[at++] = flag;
  for (const FlagSpec& flag : kLedgerFlags) all[at++] = flag;
  return all;
}

// Sets options from kLedgerFlags; invalid (a usage error) for bad values.
Status parse_ledger_flags(const Args& args, LedgerOptions* options);

}  // namespace tally::cli
