// A test fixture shared by the engine's unit tests that check a data
// directory against a replay of its log (archive_test.cc, backup_test.cc).
// Test-only; failures are doctest REQUIREs in the calling test.
#pragma once

#include <doctest.h>

#include <cstdint>
#include <memory>
#include <string>

#include "engine/replay.h"
#include "projections/state.h"

namespace tally::testing {

// The state after `to_seq`, from the whole log, no snapshot.
inline std::unique_ptr<proj::State> brute_force(const std::string& data_dir,
                                                std::uint64_t to_seq = UINT64_MAX) {
  ReplayOptions options;
  options.data_dir = data_dir;
  options.use_snapshots = false;
  options.to_seq = to_seq;
  auto replayed = replay(options);
  REQUIRE_MESSAGE(replayed.ok(), replayed.status().to_string());
  return std::move(replayed->state);
}

}  // namespace tally::testing
