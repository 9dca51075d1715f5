#include "log/wall_clock.h"

#include <time.h>

#include <algorithm>
#include <limits>

namespace tally::log {

namespace {
__extension__ typedef __int128 Int128;  // seconds * 1e9 cannot overflow it
}  // namespace

std::int64_t epoch_ns(std::int64_t seconds, std::int64_t nanoseconds) {
  const Int128 ns = static_cast<Int128>(seconds) * 1'000'000'000 + nanoseconds;
  return static_cast<std::int64_t>(std::clamp<Int128>(
      ns, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()));
}

std::int64_t wall_clock_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return epoch_ns(ts.tv_sec, ts.tv_nsec);
}

}  // namespace tally::log
