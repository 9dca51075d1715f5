// Replay: rebuild a projection from a data directory's log, read-only.
//
// Used by Ledger::open and by the audit tools (export, balance, list,
// verify). Verifies every checksum and the chain on the way (log/reader.h);
// never modifies the directory, so it may run beside a live writer, in which
// case it sees a prefix of the log.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "log/event.h"
#include "log/file.h"
#include "log/reader.h"
#include "log/status.h"
#include "projections/state.h"

namespace tally {

struct ReplayOptions {
  std::string data_dir;
  log::FileSystem* fs = nullptr;  // borrowed; nullptr: POSIX
  // Stop after applying the event with this seq.
  std::uint64_t to_seq = UINT64_MAX;
  // Called for each event before it is applied.
  std::function<void(const log::Event&, const log::Record&)> visit;
};

struct ReplayReport {
  std::uint64_t events = 0;        // applied
  log::LogEnd end;                 // where the log ends (torn tail included)
  double seconds = 0;
};

// Applies the log of options.data_dir to `state` (which must be fresh).
// Errors: corrupt (with segment and offset, or the seq apply refused), io_error.
Result<ReplayReport> replay(const ReplayOptions& options, proj::State* state);

// The log directory inside a data directory.
std::string log_dir(const std::string& data_dir);

}  // namespace tally
