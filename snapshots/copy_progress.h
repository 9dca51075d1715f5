// How a copy of an LMDB store (a backup's) reports and stops.
#pragma once

#include <cstdint>
#include <functional>

namespace tally::snap {

// Called on the copying thread with the bytes of the copy written so far,
// after each MiB and at the end; false stops the copy, which then answers
// closed.
using CopyProgress = std::function<bool(std::uint64_t bytes_written)>;

}  // namespace tally::snap
