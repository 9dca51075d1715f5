#include "log/wall_clock.h"

#include <doctest.h>

#include <limits>

namespace tally::log {
namespace {

TEST_CASE("epoch_ns holds a reading past either end of an int64 at that end") {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  CHECK(epoch_ns(1, 5) == 1'000'000'005);
  CHECK(epoch_ns(-1, 5) == -999'999'995);
  // 2262-04-11T23:47:16.854775807Z is the last ns; a clock past it reads it.
  CHECK(epoch_ns(9'223'372'036, 854'775'807) == kMax);
  CHECK(epoch_ns(9'223'372'036, 854'775'806) == kMax - 1);
  CHECK(epoch_ns(9'223'372'036, 854'775'808) == kMax);
  CHECK(epoch_ns(9'223'372'037, 0) == kMax);
  CHECK(epoch_ns(kMax, 999'999'999) == kMax);
  // The first ns is in the second before 1677-09-21T00:12:44Z, whose whole
  // seconds alone are past the end.
  CHECK(epoch_ns(-9'223'372'037, 145'224'192) == kMin);
  CHECK(epoch_ns(-9'223'372'037, 145'224'193) == kMin + 1);
  CHECK(epoch_ns(-9'223'372'037, 500'000'000) == -9'223'372'036'500'000'000);
  CHECK(epoch_ns(-9'223'372'037, 145'224'191) == kMin);
  CHECK(epoch_ns(kMin, 0) == kMin);
}

TEST_CASE("wall_clock_ns reads the time since the epoch") {
  // After 2020-01-01 and before 2262: a reading in ns, not in s or µs.
  const std::int64_t now = wall_clock_ns();
  CHECK(now > 1'577'836'800'000'000'000);
  CHECK(now < std::numeric_limits<std::int64_t>::max());
}

}  // namespace
}  // namespace tally::log
