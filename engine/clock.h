// Clock: where the engine reads time. Injectable so tests drive expiry; the
// log's timestamps come from it, and replay never reads it.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <initializer_list>

namespace tally {

class Clock {
 public:
  virtual ~Clock() = default;
  // ns since the Unix epoch. Thread-safe.
  virtual std::int64_t now_ns() = 0;
};

// CLOCK_REALTIME, held at the ends of an int64 ns (1677 and 2262). One
// instance serves the process.
Clock& system_clock();

// A clock that moves only when told. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(std::int64_t start_ns) : now_ns_(start_ns) {}
  std::int64_t now_ns() override { return now_ns_.load(std::memory_order_acquire); }
  void set_ns(std::int64_t t_ns) { now_ns_.store(t_ns, std::memory_order_release); }
  void advance_ns(std::int64_t delta_ns) { now_ns_.fetch_add(delta_ns, std::memory_order_acq_rel); }

 private:
  std::atomic<std::int64_t> now_ns_;
};

// The longest wait the engine makes a steady_clock deadline of: a year
// stands for "for ever". A deadline near milliseconds::max() from now
// overflows, and would pass at once.
inline constexpr std::chrono::milliseconds kWaitMax = std::chrono::hours(24 * 365);
inline std::chrono::milliseconds bounded_wait(std::chrono::milliseconds wait) {
  return std::clamp(wait, std::chrono::milliseconds(0), kWaitMax);
}
// Each of the options' times in ms, bounded so.
inline void bound_waits_ms(std::initializer_list<std::int64_t*> times_ms) {
  for (std::int64_t* time_ms : times_ms) {
    *time_ms = bounded_wait(std::chrono::milliseconds(*time_ms)).count();
  }
}

}  // namespace tally
