// Opening a store made from the log for writing — the snapshot store or the
// history projection — when it may be damaged: a store that does not open
// (corrupt: not an LMDB file, truncated, damaged pages) is moved aside to
// DIR.damaged, where it stays for a look, and a new empty one is made. The
// log is the truth; a new snapshot store means the next open replays the
// whole log, a new history projection is rebuilt from it.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "log/status.h"

namespace tally::snap {

// Moves `dir` to `dir + ".damaged"`, replacing an older one there.
Status set_aside(const std::string& dir);

// Store::open(dir, options); on corrupt, set_aside(dir) with a note on
// stderr, then Store::open again.
template <class Store, class Options>
Result<std::unique_ptr<Store>> open_renewing(const std::string& dir, const Options& options) {
  auto store = Store::open(dir, options);
  if (store || store.code() != ErrorCode::corrupt) return store;
  TALLY_TRY(set_aside(dir));
  std::fprintf(stderr, "tally: %s; moved it to %s.damaged and began a new one\n",
               store.status().to_string().c_str(), dir.c_str());
  return Store::open(dir, options);
}

}  // namespace tally::snap
