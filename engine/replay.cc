#include "engine/replay.h"

#include <algorithm>
#include <chrono>

namespace tally {

std::string log_dir(const std::string& data_dir) { return log::join_path(data_dir, "log"); }
std::string snapshot_dir(const std::string& data_dir) { return log::join_path(data_dir, "snapshots"); }
std::string history_dir(const std::string& data_dir) { return log::join_path(data_dir, "history"); }

namespace {

// Where a replay starts: a snapshot's state with a reader positioned on the
// record after it, or (state == nullptr) the beginning of the log.
struct Start {
  std::unique_ptr<proj::State> state;
  std::unique_ptr<log::LogReader> reader;
};

// The newest seq a snapshot may have: at most to_seq, and stamped at or
// before to_time_ns. 0: none qualifies.
Result<std::uint64_t> snapshot_seq_max(const snap::SnapshotStore& store, const ReplayOptions& options) {
  const std::uint64_t seq_max = std::min(options.to_seq, options.snapshot_seq_max);
  if (options.to_time_ns == INT64_MAX) return seq_max;
  auto infos = store.list();
  if (!infos) return infos.status();
  std::uint64_t best = 0;
  for (const snap::SnapshotInfo& info : *infos) {
    if (info.metadata_ok && info.seq <= seq_max && info.time_ns <= options.to_time_ns) {
      best = info.seq;
    }
  }
  return best;
}

// The newest snapshot that verifies and continues into the log: the log's
// record at its seq carries the chain checksum it was taken at. A snapshot
// the log does not continue (taken of events a crash then lost, or of
// another log) is skipped like a damaged one. Log errors are returned;
// snapshot trouble only ever means starting earlier.
Result<Start> start_from_snapshot(const ReplayOptions& options, log::FileSystem& fs,
                                  SharedSnapshots& shared, ReplayReport* report) {
  std::lock_guard<std::mutex> guard(shared.mu);
  snap::SnapshotStore& store = *shared.store;
  auto seq_max = snapshot_seq_max(store, options);
  if (!seq_max) {
    report->skipped.push_back(snap::SkippedSnapshot{0, seq_max.status()});
    return Start{};
  }
  std::uint64_t max_seq = *seq_max;
  while (max_seq > 0) {
    std::vector<snap::SkippedSnapshot> skipped;
    auto loaded = store.load_newest_valid(max_seq, options.state_options, &skipped);
    // A snapshot this walk already passed over is reported once.
    for (snap::SkippedSnapshot& one : skipped) {
      if (one.seq <= max_seq) report->skipped.push_back(std::move(one));
    }
    if (!loaded) {
      if (loaded.code() != ErrorCode::not_found) {
        report->skipped.push_back(snap::SkippedSnapshot{0, loaded.status()});
      }
      return Start{};
    }
    const snap::SnapshotInfo& info = loaded->info;
    auto reader = log::LogReader::open(fs, log_dir(options.data_dir), {.from_seq = info.seq, .keep_previous_segment = true});
    if (!reader) return reader.status();
    log::Record record;
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (*more && record.seq == info.seq && record.checksum == info.chain_checksum) {
      return Start{std::move(loaded->state), std::move(*reader)};
    }
    report->skipped.push_back(snap::SkippedSnapshot{
        info.seq, Status(ErrorCode::corrupt, *more ? "its chain checksum is not the log's at its seq"
                                                   : "it is past the end of the log")});
    max_seq = info.seq - 1;
  }
  return Start{};
}

}  // namespace

Result<Replayed> replay(const ReplayOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  log::FileSystem& fs = options.fs != nullptr ? *options.fs : log::posix_file_system();
  Replayed out;
  Start start;
  if (options.use_snapshots) {
    SharedSnapshots local;
    SharedSnapshots* shared = options.snapshots;
    if (shared == nullptr && fs.exists(snapshot_dir(options.data_dir))) {
      auto store = snap::SnapshotStore::open(snapshot_dir(options.data_dir), {});
      if (store) {
        local.store = std::move(*store);
        shared = &local;
      } else {
        out.report.skipped.push_back(snap::SkippedSnapshot{0, store.status()});
      }
    }
    if (shared != nullptr && shared->store != nullptr) {
      auto found = start_from_snapshot(options, fs, *shared, &out.report);
      if (!found) return found.status();
      start = std::move(*found);
    }
  }
  if (start.state != nullptr) {
    out.report.snapshot_seq = start.state->last_seq();
  } else {
    start.state = std::make_unique<proj::State>(options.state_options);
    auto reader = log::LogReader::open(fs, log_dir(options.data_dir), {.keep_previous_segment = true});
    if (!reader) return reader.status();
    start.reader = std::move(*reader);
  }
  out.state = std::move(start.state);

  // Events are read up to kLookahead ahead of the one applied, so that the
  // cache misses of their lookups overlap (proj::State::prepare). Their
  // payloads must stay in memory until applied: the reader keeps the
  // segment before its current one, and reading ahead waits while any
  // pending event is from that one (a read may move the reader on again,
  // however few records a segment holds).
  struct Pending {
    log::EventDecoder decoder;  // owns the event's ops
    log::Event event;
    log::Record record;
    proj::EventHashes hashes;
  };
  constexpr std::size_t kLookahead = 16;
  std::vector<Pending> ring(kLookahead);
  std::size_t first = 0;  // the next to apply
  std::size_t count = 0;
  bool reading = true;
  std::uint64_t segment_first_seq = 0;  // of the last record the reader returned
  std::uint64_t read_seq = out.state->last_seq();
  const auto at = [&](std::size_t index) -> Pending& { return ring[(first + index) % kLookahead]; };
  while (reading || count > 0) {
    const bool pending_in_current = count == 0 || at(0).record.segment_first_seq == segment_first_seq;
    if (reading && count < kLookahead && pending_in_current) {
      // Never look past to_seq: on a live log the bytes after a committed
      // bound may be in flight.
      if (read_seq >= options.to_seq) {
        reading = false;
        continue;
      }
      Pending& next = at(count);
      auto more = start.reader->next(&next.record);
      if (!more) return more.status();
      if (!*more) {
        out.report.reached_end = true;
        out.report.end = start.reader->end();
        reading = false;
        continue;
      }
      const log::Record& record = next.record;
      segment_first_seq = record.segment_first_seq;
      Status decoded = next.decoder.decode(record.payload, &next.event);
      if (!decoded.ok() || next.event.seq != record.seq) {
        return log::corrupt_at(record.segment_first_seq, record.offset,
                               decoded.ok() ? "event seq differs from its frame" : decoded.message());
      }
      if (next.event.timestamp_ns > options.to_time_ns) {
        reading = false;
        continue;
      }
      read_seq = record.seq;
      next.hashes = out.state->prepare(next.event);
      count++;
      if (count > kLookahead / 2) {
        const Pending& middle = at(count - 1 - kLookahead / 2);
        out.state->prefetch_balances(middle.event, middle.hashes);
      }
      if (count < kLookahead) continue;
    }
    Pending& due = at(0);
    if (options.visit) options.visit(due.event, due.record);
    TALLY_TRY(out.state->apply(due.event, due.hashes));
    out.report.events++;
    if (options.applied) TALLY_TRY(options.applied(*out.state, due.record));
    if (due.record.segment_first_seq == segment_first_seq) start.reader->release_previous_segment();
    first = (first + 1) % kLookahead;
    count--;
  }
  out.report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return out;
}

}  // namespace tally
