// Clock: where the engine reads time. Injectable so tests drive expiry; the
// log's timestamps come from it, and replay never reads it.
#pragma once

#include <atomic>
#include <cstdint>

namespace tally {

class Clock {
 public:
  virtual ~Clock() = default;
  // ns since the Unix epoch. Thread-safe.
  virtual std::int64_t now_ns() = 0;
};

// CLOCK_REALTIME. One instance serves the process.
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

}  // namespace tally
