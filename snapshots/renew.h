// Opening a store made from the log for writing — the snapshot store or the
// history projection — when it may be damaged: a store that does not open,
// or whose first read fails (corrupt: not an LMDB file, truncated, damaged
// pages), is moved aside to DIR.damaged, where it stays for a look, and a
// new empty one is made. The log is the truth; a new snapshot store means
// the next open replays the whole log, a new history projection is rebuilt
// from it.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "log/status.h"

namespace tally::snap {

// Moves `dir` to `dir + ".damaged"`, replacing an older one there.
Status set_aside(const std::string& dir);

// Store::open(dir, options), then store->probe(), the read every open
// makes first; on corrupt from either, set_aside(dir) with a note on
// stderr, then Store::open again.
template <class Store, class Options>
Result<std::unique_ptr<Store>> open_renewing(const std::string& dir, const Options& options) {
  auto store = Store::open(dir, options);
  const Status found = store ? (*store)->probe() : store.status();
  if (found.ok()) return store;
  if (found.code() != ErrorCode::corrupt) return found;
  if (store) store->reset();  // closed before its files move
  TALLY_TRY(set_aside(dir));
  std::fprintf(stderr, "tally: %s; moved it to %s.damaged and began a new one\n",
               found.to_string().c_str(), dir.c_str());
  return Store::open(dir, options);
}

}  // namespace tally::snap
