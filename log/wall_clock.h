// The wall clock in ns since the Unix epoch: what the log stamps segment
// headers with, and the engine's system clock (engine/clock.h).
#pragma once

#include <cstdint>

namespace tally::log {

// ns since the Unix epoch of `seconds` and `nanoseconds` (0 .. 1e9 - 1) since
// it, held at the ends of an int64 (1677-09-21 and 2262-04-11): a clock set
// past them reads as the end, and timestamps still never go backwards.
std::int64_t epoch_ns(std::int64_t seconds, std::int64_t nanoseconds);

// CLOCK_REALTIME, held so.
std::int64_t wall_clock_ns();

}  // namespace tally::log
