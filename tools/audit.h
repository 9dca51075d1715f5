// Read-only access to a data directory for the audit commands (export,
// balance, list, verify) and for `tally bench --expect`. Nothing here takes
// the directory's lock or writes to it, so it may run beside a live writer
// and then sees a prefix of the log.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "engine/replay.h"
#include "log/status.h"
#include "projections/state.h"

namespace tally::cli {

// not_found when DATA is not there: the log reader alone would take a
// mistyped directory for an empty log.
Status require_data_dir(const std::string& data_dir);

// Rebuilds DATA's state: from its newest valid snapshot (unless
// options.use_snapshots is false) and the log after it. Errors: not_found
// when DATA is not there; corrupt (naming segment and offset) and io_error
// from replay.
Result<Replayed> replay_data(const std::string& data_dir, ReplayOptions options = {});

// Appends every non-zero balance as "subject,item,available,held\n", sorted
// bytewise by subject then item. A hold due at now_ns counts as released.
void append_export(const proj::State& state, std::int64_t now_ns, std::string* out);

// Replays DATA and returns append_export's text.
Result<std::string> export_csv(const std::string& data_dir, std::int64_t now_ns);

}  // namespace tally::cli
