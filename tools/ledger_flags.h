// Flags that tune how a command opens its ledger: snapshots and the history
// projection (docs/snapshots.md). serve, apply and bench take them.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "engine/ledger.h"
#include "log/status.h"
#include "tools/args.h"

namespace tally::cli {

// The most snapshots --snapshot-retain (and tally snapshot --retain) keeps.
inline constexpr std::int64_t kSnapshotRetainMax = 1000;
inline constexpr std::int64_t kSnapshotSecondsMax = 365ll * 24 * 3600;

inline constexpr FlagSpec kLedgerFlags[] = {
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
