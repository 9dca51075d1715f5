// Histogram: counts of observed values in buckets with fixed upper bounds,
// for metrics (fdatasync durations, records per group commit, request
// latencies). observe() is lock-free and may run on any thread while
// another takes a snapshot().
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tally::log {

// What a Histogram counted, at one moment.
struct HistogramSnapshot {
  std::vector<std::uint64_t> upper_bounds;  // ascending; +Inf follows the last
  std::vector<std::uint64_t> counts;        // per bucket, not cumulative; one more than bounds
  std::uint64_t sum = 0;                    // of every observed value

  std::uint64_t count() const {
    std::uint64_t total = 0;
    for (const std::uint64_t bucket : counts) total += bucket;
    return total;
  }
};

// kUpperBounds: a std::array of ascending std::uint64_t. A value v lands in
// the first bucket whose bound is >= v, or in +Inf.
template <auto kUpperBounds>
class Histogram {
 public:
  void observe(std::uint64_t value) {
    std::size_t bucket = 0;
    while (bucket < kUpperBounds.size() && value > kUpperBounds[bucket]) bucket++;
    counts_[bucket].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
  }

  HistogramSnapshot snapshot() const {
    HistogramSnapshot out;
    out.upper_bounds.assign(kUpperBounds.begin(), kUpperBounds.end());
    out.counts.reserve(counts_.size());
    for (const auto& bucket : counts_) out.counts.push_back(bucket.load(std::memory_order_relaxed));
    out.sum = sum_.load(std::memory_order_relaxed);
    return out;
  }

 private:
  static_assert(std::is_sorted(kUpperBounds.begin(), kUpperBounds.end()));
  std::array<std::atomic<std::uint64_t>, kUpperBounds.size() + 1> counts_{};
  std::atomic<std::uint64_t> sum_{0};
};

}  // namespace tally::log
