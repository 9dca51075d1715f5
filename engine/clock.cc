#include "engine/clock.h"

#include "log/wall_clock.h"

namespace tally {

namespace {

class SystemClock final : public Clock {
 public:
  std::int64_t now_ns() override { return log::wall_clock_ns(); }
};

}  // namespace

Clock& system_clock() {
  static SystemClock clock;
  return clock;
}

}  // namespace tally
