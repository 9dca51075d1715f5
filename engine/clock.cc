#include "engine/clock.h"

#include <time.h>

#include <limits>

namespace tally {

namespace {

class SystemClock final : public Clock {
 public:
  std::int64_t now_ns() override {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return epoch_ns(ts.tv_sec, ts.tv_nsec);
  }
};

}  // namespace

std::int64_t epoch_ns(std::int64_t seconds, std::int64_t nanoseconds) {
  std::int64_t whole_ns = 0;
  std::int64_t ns = 0;
  if (__builtin_mul_overflow(seconds, std::int64_t{1'000'000'000}, &whole_ns) ||
      __builtin_add_overflow(whole_ns, nanoseconds, &ns)) {
    return seconds < 0 ? std::numeric_limits<std::int64_t>::min()
                       : std::numeric_limits<std::int64_t>::max();
  }
  return ns;
}

Clock& system_clock() {
  static SystemClock clock;
  return clock;
}

}  // namespace tally
