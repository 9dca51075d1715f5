#include "engine/clock.h"

#include <time.h>

namespace tally {

namespace {

class SystemClock final : public Clock {
 public:
  std::int64_t now_ns() override {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  }
};

}  // namespace

Clock& system_clock() {
  static SystemClock clock;
  return clock;
}

}  // namespace tally
