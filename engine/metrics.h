// Metrics: the server's counters, gauges and latency histograms, rendered in
// the Prometheus text format for GET /metrics. Lock-free: every method may
// be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/feed.h"
#include "engine/ledger.h"
#include "log/histogram.h"

namespace tally {

class Metrics {
 public:
  // What a request asked for. `events` is one read of the event feed: one
  // per GET /v1/events answer and per follow batch (the wait before it is
  // not part of its latency).
  enum class Op : std::uint8_t {
    acquire, consume, transfer, hold, commit, release, batch, balance, list, hold_info, events, count
  };
  // A request's result: an Outcome (ok, insufficient, ...) or an ErrorCode.
  static constexpr std::size_t kOutcomeSlots = 6 + 16;
  static std::size_t outcome_slot(Outcome outcome) { return static_cast<std::size_t>(outcome); }
  static std::size_t error_slot(ErrorCode code) { return 6 + static_cast<std::size_t>(code); }
  static Op op_of(const Command& command);

  enum class Protocol : std::uint8_t { binary, http, count };

  void record(Op op, std::size_t outcome_slot, std::int64_t latency_ns);
  // A mutation answered as a replay (its key decided before); record()
  // counts it under its outcome as well.
  void replayed(Op op);
  void connection_opened(Protocol protocol);
  void connection_closed(Protocol protocol);
  void connection_rejected() { connections_rejected_.fetch_add(1, std::memory_order_relaxed); }
  void malformed() { malformed_.fetch_add(1, std::memory_order_relaxed); }
  // A request (HTTP) or hello (binary) refused for a missing or wrong token.
  void unauthorized(Protocol protocol) {
    unauthorized_[static_cast<std::size_t>(protocol)].fetch_add(1, std::memory_order_relaxed);
  }
  void accept_failed() { accept_failures_.fetch_add(1, std::memory_order_relaxed); }
  void inflight_add(std::int64_t delta) { inflight_.fetch_add(delta, std::memory_order_acq_rel); }
  std::int64_t inflight() const { return inflight_.load(std::memory_order_acquire); }

  // The text exposition, with the ledger's and the event feed's own counters.
  // `self`: requests in flight to leave out of tally_queue_depth (the
  // scrape rendering it).
  std::string render(const LedgerStats& stats, const FeedStats& feed, std::int64_t self = 0) const;
  // The text while the server opens its log: its own counters and how far
  // the open is (`progress` may be null: nothing known yet).
  std::string render_starting(const OpenProgress* progress) const;

 private:
  // Upper bounds of the latency buckets, in nanoseconds.
  static constexpr std::array<std::uint64_t, 12> kLatencyBoundsNs = {
      100'000,    250'000,    500'000,     1'000'000,   2'500'000,   5'000'000,
      10'000'000, 25'000'000, 50'000'000, 100'000'000, 250'000'000, 1'000'000'000};
  static constexpr std::size_t kOps = static_cast<std::size_t>(Op::count);
  static constexpr std::size_t kProtocols = static_cast<std::size_t>(Protocol::count);

  using Histogram = log::Histogram<kLatencyBoundsNs>;

  void render_ops(std::string* out) const;
  void render_latency(std::string* out) const;
  // The families of the server itself: queue depth, connections, refusals.
  void render_server(std::string* out, std::int64_t self) const;
  static void render_open_progress(std::string* out, std::uint64_t snapshot_seq,
                                   std::uint64_t events, bool starting);

  std::array<std::array<std::atomic<std::uint64_t>, kOutcomeSlots>, kOps> ops_{};
  std::array<Histogram, kOps> latency_;
  // The mutations: acquire .. batch.
  static constexpr std::size_t kMutationOps = static_cast<std::size_t>(Op::batch) + 1;
  std::array<std::atomic<std::uint64_t>, kMutationOps> replays_{};
  std::array<std::atomic<std::int64_t>, kProtocols> connections_{};
  std::array<std::atomic<std::uint64_t>, kProtocols> connections_total_{};
  std::atomic<std::uint64_t> connections_rejected_{0};
  std::atomic<std::uint64_t> malformed_{0};
  std::array<std::atomic<std::uint64_t>, kProtocols> unauthorized_{};
  std::atomic<std::uint64_t> accept_failures_{0};
  std::atomic<std::int64_t> inflight_{0};
};

}  // namespace tally
