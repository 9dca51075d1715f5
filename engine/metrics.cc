#include "engine/metrics.h"

#include <cstdio>

namespace tally {

namespace {

constexpr std::array<std::string_view, static_cast<std::size_t>(Metrics::Op::count)> kOpNames = {
    "acquire", "consume", "transfer", "hold", "commit",
    "release", "batch",   "balance",  "list", "hold_info", "events"};
constexpr std::array<std::string_view, 2> kProtocolNames = {"binary", "http"};

std::string slot_name(std::size_t slot) {
  if (slot < 6) return std::string(outcome_name(static_cast<Outcome>(slot)));
  return std::string(error_code_name(static_cast<ErrorCode>(slot - 6)));
}

void append_line(std::string* out, std::string_view name, std::string_view labels,
                 std::uint64_t value) {
  out->append(name);
  if (!labels.empty()) {
    out->push_back('{');
    out->append(labels);
    out->push_back('}');
  }
  out->push_back(' ');
  *out += std::to_string(value);
  out->push_back('\n');
}

// A value in seconds or another fractional unit, as the text format takes it.
void append_number(std::string* out, double value) {
  char text[48];
  // 15 digits: whole numbers (event counts) up to 10^15 print exactly.
  std::snprintf(text, sizeof text, "%.15g", value);
  *out += text;
}

void append_help(std::string* out, std::string_view name, std::string_view type,
                 std::string_view help) {
  *out += "# HELP " + std::string(name) + " " + std::string(help) + "\n";
  *out += "# TYPE " + std::string(name) + " " + std::string(type) + "\n";
}

// One metric without labels: its HELP and TYPE lines, then its value.
void append_single(std::string* out, std::string_view name, std::string_view type,
                   std::string_view help, std::uint64_t value) {
  append_help(out, name, type, help);
  append_line(out, name, "", value);
}

// The _bucket, _sum and _count lines of one histogram; `scale` converts
// its bounds and sum to the metric's unit (1e-9: nanoseconds to seconds).
void append_histogram(std::string* out, std::string_view name, const std::string& labels,
                      const log::HistogramSnapshot& histogram, double scale) {
  const std::string prefix = labels.empty() ? "" : labels + ",";
  std::uint64_t cumulative = 0;
  for (std::size_t bucket = 0; bucket < histogram.counts.size(); bucket++) {
    cumulative += histogram.counts[bucket];
    *out += std::string(name) + "_bucket{" + prefix + "le=\"";
    if (bucket < histogram.upper_bounds.size()) {
      append_number(out, static_cast<double>(histogram.upper_bounds[bucket]) * scale);
    } else {
      *out += "+Inf";
    }
    *out += "\"} " + std::to_string(cumulative) + "\n";
  }
  *out += std::string(name) + "_sum" + (labels.empty() ? "" : "{" + labels + "}") + " ";
  append_number(out, static_cast<double>(histogram.sum) * scale);
  out->push_back('\n');
  append_line(out, std::string(name) + "_count", labels, cumulative);
}

}  // namespace

Metrics::Op Metrics::op_of(const Command& command) {
  if (command.batch) return Op::batch;
  switch (command.op.type) {
    case OpType::acquire: return Op::acquire;
    case OpType::consume: return Op::consume;
    case OpType::transfer: return Op::transfer;
    case OpType::hold: return Op::hold;
    case OpType::commit: return Op::commit;
    case OpType::release:
    case OpType::expire: return Op::release;
  }
  return Op::release;
}

void Metrics::record(Op op, std::size_t outcome_slot, std::int64_t latency_ns) {
  const auto op_index = static_cast<std::size_t>(op);
  TALLY_ASSERT(op_index < kOps);
  TALLY_ASSERT(outcome_slot < kOutcomeSlots);
  ops_[op_index][outcome_slot].fetch_add(1, std::memory_order_relaxed);
  latency_[op_index].observe(static_cast<std::uint64_t>(latency_ns < 0 ? 0 : latency_ns));
}

void Metrics::replayed(Op op) {
  const auto op_index = static_cast<std::size_t>(op);
  TALLY_ASSERT(op_index < kMutationOps);
  replays_[op_index].fetch_add(1, std::memory_order_relaxed);
}

void Metrics::connection_opened(Protocol protocol) {
  connections_[static_cast<std::size_t>(protocol)].fetch_add(1, std::memory_order_relaxed);
  connections_total_[static_cast<std::size_t>(protocol)].fetch_add(1, std::memory_order_relaxed);
}

void Metrics::connection_closed(Protocol protocol) {
  connections_[static_cast<std::size_t>(protocol)].fetch_sub(1, std::memory_order_relaxed);
}

void Metrics::render_ops(std::string* out) const {
  append_help(out, "tally_ops_total", "counter", "Requests answered, by op and outcome.");
  for (std::size_t op = 0; op < kOps; op++) {
    for (std::size_t slot = 0; slot < kOutcomeSlots; slot++) {
      const std::uint64_t value = ops_[op][slot].load(std::memory_order_relaxed);
      if (value == 0) continue;
      append_line(out, "tally_ops_total",
                  "op=\"" + std::string(kOpNames[op]) + "\",outcome=\"" + slot_name(slot) + "\"",
                  value);
    }
  }
  append_help(out, "tally_replays_total", "counter",
              "Mutations answered as replays of a key decided before (in tally_ops_total too, "
              "under their outcome).");
  for (std::size_t op = 0; op < kMutationOps; op++) {
    append_line(out, "tally_replays_total", "op=\"" + std::string(kOpNames[op]) + "\"",
                replays_[op].load(std::memory_order_relaxed));
  }
}

void Metrics::render_latency(std::string* out) const {
  append_help(out, "tally_request_duration_seconds", "histogram",
              "Time from a request's decoding to its answer, by op.");
  for (std::size_t op = 0; op < kOps; op++) {
    append_histogram(out, "tally_request_duration_seconds",
                     "op=\"" + std::string(kOpNames[op]) + "\"", latency_[op].snapshot(), 1e-9);
  }
}

void Metrics::render_open_progress(std::string* out, std::uint64_t snapshot_seq,
                                   std::uint64_t events, bool starting) {
  append_single(out, "tally_starting", "gauge",
                "1 while the server opens its log (every other request is answered 503); 0 once "
                "it serves.",
                starting ? 1 : 0);
  append_single(out, "tally_open_snapshot_seq", "gauge",
                "The seq of the snapshot the ledger opened from (while starting: the one being "
                "loaded, then the one the replay started from); 0: none.",
                snapshot_seq);
  append_single(out, "tally_open_replayed_events", "gauge",
                "Events replayed from the log at open, after the snapshot (while starting: so "
                "far).",
                events);
}

std::string Metrics::render_starting(const OpenProgress* progress) const {
  std::string out;
  render_ops(&out);
  render_latency(&out);
  render_open_progress(&out, progress ? progress->snapshot_seq.load() : 0,
                       progress ? progress->events.load() : 0, true);
  render_server(&out, 0);
  return out;
}

std::string Metrics::render(const LedgerStats& stats, const FeedStats& feed,
                            std::int64_t self) const {
  std::string out;
  render_ops(&out);
  render_latency(&out);
  append_single(&out, "tally_fsyncs_total", "counter", "fdatasync calls on the log.", stats.syncs);
  append_help(&out, "tally_fsync_duration_seconds", "histogram",
              "How long each fdatasync of the log took.");
  append_histogram(&out, "tally_fsync_duration_seconds", "", stats.sync_ns, 1e-9);
  append_help(&out, "tally_group_commit_events", "histogram",
              "Events per group commit: one write of the log for all of them.");
  append_histogram(&out, "tally_group_commit_events", "", stats.group_events, 1);
  append_single(&out, "tally_log_bytes_total", "counter",
                "Bytes written to the log since open: frames, segment headers, zeroed torn tails.",
                stats.log_bytes_written);
  render_open_progress(&out, stats.snapshot_seq, stats.events_replayed, false);
  append_help(&out, "tally_open_replay_seconds", "gauge",
              "How long loading the snapshot and replaying the log took at open.");
  out += "tally_open_replay_seconds ";
  append_number(&out, stats.replay_seconds);
  out.push_back('\n');
  append_single(&out, "tally_next_seq", "gauge",
                "The seq the next event will get.", stats.next_seq);
  append_single(&out, "tally_open_holds", "gauge",
                "Holds neither committed, released nor expired.", stats.open_holds);
  append_single(&out, "tally_history_seq", "gauge",
                "The history projection is flushed up to this seq (0: none, or off).",
                stats.history_seq);
  append_single(&out, "tally_snapshots_written_total", "counter",
                "Snapshots written since open.", stats.snapshots_written);
  append_single(&out, "tally_last_snapshot_seq", "gauge",
                "The seq of the last snapshot written since open; 0: none yet.",
                stats.last_snapshot_seq);
  append_single(&out, "tally_archivist_failed", "gauge",
                "1 once snapshots and history stopped on an error (logged); "
                "0 while they run or are off.",
                stats.archivist_failed ? 1 : 0);
  append_single(&out, "tally_history_failed", "gauge",
                "1 once the history index was found damaged (logged): it stopped, and the next "
                "open rebuilds it; snapshots go on.",
                stats.history_failed ? 1 : 0);
  append_single(&out, "tally_snapshots_failed", "gauge",
                "1 once the snapshot store was found damaged (logged): snapshots stopped, and the "
                "next open begins a new store; the history goes on.",
                stats.snapshots_failed ? 1 : 0);
  append_single(&out, "tally_archivist_retrying", "gauge",
                "1 while a write of the history or of a snapshot, or a read of the log, that "
                "failed with an I/O error (logged) waits to be tried again.",
                stats.archivist_retrying ? 1 : 0);
  append_single(&out, "tally_log_damaged", "gauge",
                "1 once the log's records before the snapshot the open started from, or a scrub "
                "of the durable log, were found damaged (logged): run tally verify; the ledger "
                "goes on.",
                stats.log_damaged ? 1 : 0);
  append_single(&out, "tally_log_scrubs_total", "counter",
                "Scrubs of the log since open: every durable record read again and verified.",
                stats.log_scrubs);
  append_single(&out, "tally_read_only", "gauge",
                "1 once a write failed: every mutation and balance read is refused until the "
                "server restarts (the event feed and metrics still answer).",
                stats.read_only ? 1 : 0);
  render_server(&out, self);
  append_single(&out, "tally_event_waits", "gauge",
                "Event feed readers (long polls, follow streams) waiting for a commit.",
                feed.waiters);
  return out;
}

void Metrics::render_server(std::string* out, std::int64_t self) const {
  const std::int64_t inflight = inflight_.load(std::memory_order_relaxed) - self;
  append_single(out, "tally_queue_depth", "gauge", "Requests submitted and not yet answered.",
                static_cast<std::uint64_t>(inflight < 0 ? 0 : inflight));
  append_help(out, "tally_connections", "gauge", "Open connections, by protocol.");
  for (std::size_t protocol = 0; protocol < kProtocols; protocol++) {
    const std::int64_t open = connections_[protocol].load(std::memory_order_relaxed);
    append_line(out, "tally_connections",
                "protocol=\"" + std::string(kProtocolNames[protocol]) + "\"",
                static_cast<std::uint64_t>(open < 0 ? 0 : open));
  }
  append_help(out, "tally_connections_total", "counter",
              "Connections accepted, by protocol (those refused over connections_max too).");
  for (std::size_t protocol = 0; protocol < kProtocols; protocol++) {
    append_line(out, "tally_connections_total",
                "protocol=\"" + std::string(kProtocolNames[protocol]) + "\"",
                connections_total_[protocol].load(std::memory_order_relaxed));
  }
  append_single(out, "tally_connections_rejected_total", "counter",
                "Connections closed at once (connections_max were open, or the server was "
                "stopping) and requests on a probe connection answered 503 busy.",
                connections_rejected_.load(std::memory_order_relaxed));
  append_single(out, "tally_malformed_total", "counter",
                "Connections closed for a malformed or oversized frame or request.",
                malformed_.load(std::memory_order_relaxed));
  append_help(out, "tally_unauthorized_total", "counter",
              "Requests (http) and connections (binary) refused for a missing or wrong token "
              "(binary: or a first request that is not a hello).");
  for (std::size_t protocol = 0; protocol < kProtocols; protocol++) {
    append_line(out, "tally_unauthorized_total",
                "protocol=\"" + std::string(kProtocolNames[protocol]) + "\"",
                unauthorized_[protocol].load(std::memory_order_relaxed));
  }
  append_single(out, "tally_accept_failures_total", "counter",
                "Accepts that failed (out of file descriptors or memory); each waits 100 ms.",
                accept_failures_.load(std::memory_order_relaxed));
}

}  // namespace tally
