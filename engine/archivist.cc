#include "engine/archivist.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "engine/point_in_time.h"
#include "log/event.h"
#include "log/tail.h"
#include "log/thread.h"
#include "snapshots/renew.h"

namespace tally {

namespace {

// Records read between checks for a flush, a snapshot or stop.
constexpr std::size_t kRoundRecordsMax = 16384;
// The thread wakes when this many records are committed past what it read,
// or after kPollInterval: in large steps, so that under load it takes a
// core from the writer rarely, and not once per group commit.
constexpr std::uint64_t kWakeRecords = 8192;
constexpr std::chrono::milliseconds kPollInterval{20};
// How often it looks at the committed seq while it waits: it polls rather
// than wait on the ledger's lock (ArchivistContext::committed_seq).
constexpr std::chrono::milliseconds kPollStep{4};
// How long stop() lets the thread finish: load its copy of the state if it
// has not yet, and catch the history up with the committed log; and then
// how long it lets the last flush of the history run.
constexpr std::chrono::milliseconds kDrainMax{1000};
constexpr std::chrono::milliseconds kLastFlushMax{1000};

}  // namespace

bool snapshots_enabled(const ArchivistOptions& options) {
  return options.snapshot_every_events > 0 || options.snapshot_every_seconds > 0;
}

Status write_snapshot(SharedSnapshots& shared, const proj::State& state,
                      const snap::LogPosition& position, std::size_t retain) {
  std::lock_guard<std::mutex> guard(shared.mu);
  if (shared.store == nullptr || shared.failed) {
    return Status(ErrorCode::invalid, "the snapshot store is off or was set aside");
  }
  auto written = shared.store->write(state, position);
  if (!written) return written.status();
  auto pruned = shared.store->prune(retain, position.seq, state.idempotency_window_ns(),
                                    snap::SnapshotStore::Later::keep);
  return pruned.status();
}

struct Archivist::Impl {
  Impl(ArchivistContext context_in, ArchivistOptions options_in)
      : context(std::move(context_in)),
        options(options_in),
        fs(context.fs != nullptr ? context.fs : &log::posix_file_system()) {}

  void main();
  Status run();
  Status prepare();
  // prepare(), tried again every retry_interval while it fails with an I/O
  // error (a read of the log, as settle_read() pauses one), and at once
  // when a snapshot is asked for; what is asked for while a try runs is
  // answered with that try's error. false: stop() came first.
  Result<bool> prepare_retrying();
  Status check_history();
  Status check_history_pages();
  void mark_history_checked();
  // Waits for kWakeRecords committed records, kPollInterval, a snapshot
  // request, a reader waiting for committed history, or stop; returns the
  // committed seq, and in *reader_waits whether a wait_history() waits.
  std::uint64_t wait_for_work(std::uint64_t requests, bool* reader_waits);
  // Reads the lead tail up to `committed`: applies each event to the state
  // and, when `history_rides` and the history is at the record before it,
  // appends it to the history too. Leaves the history behind otherwise.
  Status lead_round(std::uint64_t committed, bool history_rides);
  // Brings the history towards the lead on its own tail, when it is
  // behind; with `yield`, it stops early for a snapshot request.
  Status history_round(bool yield);
  // The next record of `from` up to max_seq, decoded: false past it.
  Result<bool> next_event(log::LogTail& from, std::uint64_t max_seq, log::Record* record,
                          log::Event* event);
  // Appends one event to the history, flushing first if its buffer is full.
  Status append_history(const log::Event& event, const log::Record& record);
  bool history_behind() const { return history_on && history_seq < read_seq; }
  // Whether the history waits to try a failed flush again (pause).
  bool history_paused() const { return history_retry_at.has_value(); }
  // Whether a wait_history() waits for a seq appended but not flushed: the
  // reading stops for the flush.
  bool reader_waits_for_flush() const {
    const std::uint64_t wanted = history_wanted.load(std::memory_order_relaxed);
    return history_dirty && !history_paused() && wanted > flushed_seq && history_seq >= wanted;
  }
  // Flushes what the history appended; while it is paused, only once its
  // retry time has come.
  Status flush_history();
  // A write of `what` that failed with an I/O error (a full disk, say):
  // its part pauses, keeping what it has, until *retry_at, a retry_interval
  // from now. resume() ends the pause once such a write succeeds.
  void pause(const char* what, const Status& failed,
             std::optional<std::chrono::steady_clock::time_point>* retry_at);
  void resume(const char* what, std::optional<std::chrono::steady_clock::time_point>* retry_at);
  // Ends a pause without a word (its part stopped, or resumed).
  void end_pause(std::optional<std::chrono::steady_clock::time_point>* retry_at);
  // Takes a failed read of the log (either tail's, or a tail's open): an
  // I/O error (out of descriptors, say) pauses the reading, which both
  // tails then try again from where they stood; Status() comes back. Any
  // other error (damage) comes back as it is, to stop both.
  Status settle_read(Status failed);
  // Whether reading waits to try a failed read again, at this time.
  bool reads_paused() const { return read_retry_at.has_value(); }
  bool reads_wait() const {
    return reads_paused() && std::chrono::steady_clock::now() < *read_retry_at;
  }
  // Takes the outcome of a snapshot's write: an I/O error pauses the
  // snapshots, damage stops them (stop_snapshots), any other error stops
  // the archivist.
  Status settle_snapshot(Status written);
  // Takes a failed read or write of the history index: a damaged index
  // (corrupt) stops only the history, which is set aside for the next open
  // to rebuild, while snapshots go on, and Status() comes back; any other
  // error comes back as it is, to stop both. Only for the store's own
  // errors: a damaged log is not the index's fault.
  Status stop_history(Status status);
  // The same for a failed write of a snapshot: a damaged store (corrupt)
  // stops only the snapshots and is set aside (the next open begins a new
  // one and replays the log), while the history goes on.
  Status stop_snapshots(Status status);
  Status write_snapshot();
  // Answers the snapshots asked for with tickets up to `through` (every
  // one asked for so far by default); `idle`: the thread goes back under
  // SCHED_IDLE, unless a later ticket waits (not while it loads the state,
  // which runs normal).
  static constexpr std::uint64_t kAllTickets = UINT64_MAX;
  void finish_snapshot_request(std::uint64_t seq, Status status,
                               std::uint64_t through = kAllTickets, bool idle = true);

  const ArchivistContext context;
  const ArchivistOptions options;
  log::FileSystem* const fs;

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;       // history flushed, snapshot written, stopped
  std::condition_variable wake_cv;  // a snapshot request, or stop
  bool stopping = false;
  // Set by stop() kDrainMax after stopping: the loading replay (its cancel)
  // and the drain give up. Read without the lock.
  std::atomic<bool> abandon{false};
  // Set kLastFlushMax later: a history flush under way gives up too.
  std::atomic<bool> abandon_flush{false};
  bool stopped = false;
  std::atomic<bool> history_stopped{false};  // set with stats.history_failure
  // The history's pages were walked (check_history_pages). Set under mu.
  std::atomic<bool> history_checked{false};
  std::uint64_t snapshot_requests = 0;   // tickets handed out
  std::uint64_t snapshot_answered = 0;   // tickets answered
  // Whether a ticket is unanswered: read without the lock by the history's
  // reading, which gives way to it.
  std::atomic<bool> snapshot_waiting{false};
  // The highest seq a wait_history() waits for. Written under mu; read
  // without it too, by the reading rounds, which stop once they reach it.
  std::atomic<std::uint64_t> history_wanted{0};
  Result<std::uint64_t> snapshot_answer{std::uint64_t{0}};
  ArchivistStats stats;
  // The history waits to try a failed flush again: a wait_history() does
  // not wait for it.
  bool history_waits_retry = false;

  // Owned by the thread.
  bool history_on = options.history;  // until stop_history()
  std::unique_ptr<proj::State> state;  // nullptr when snapshots are off
  // The lead tail: the state's reading when snapshots are on, else the
  // history's. The history rides on it while it keeps up, and reads on a
  // tail of its own while it is behind (after an open that found the
  // index behind the state, or while a snapshot request went first).
  std::unique_ptr<log::LogTail> tail;
  std::unique_ptr<log::LogTail> history_tail;  // only while the history is behind
  // Where the lead stood when the history stopped riding on it: the
  // history's tail resumes there without reading its segment again.
  std::optional<log::TailPosition> history_left_at;
  log::EventDecoder decoder;
  std::uint64_t history_seq = 0;    // appended up to here
  std::uint64_t flushed_seq = 0;    // flushed up to here (stats.history_seq, without the lock)
  std::uint64_t read_seq = 0;       // the last record the lead read
  std::uint64_t read_checksum = 0;  // its checksum: the chain value after it
  std::uint64_t events_since_snapshot = 0;
  std::chrono::steady_clock::time_point last_snapshot = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_flush = std::chrono::steady_clock::now();
  bool history_dirty = false;
  // Set while a failed write of the history or of a snapshot waits to be
  // tried again (pause): at this time.
  std::optional<std::chrono::steady_clock::time_point> history_retry_at;
  std::optional<std::chrono::steady_clock::time_point> snapshot_retry_at;
  // Set while a read of the log that failed with an I/O error waits to be
  // tried again (settle_read): at this time. The error, for a snapshot
  // asked for meanwhile.
  std::optional<std::chrono::steady_clock::time_point> read_retry_at;
  Status read_failure;

  std::thread thread;
  std::mutex stop_mu;
};

// A history projection that the log does not continue is rebuilt.
Status Archivist::Impl::check_history() {
  auto position = context.history->position();
  if (!position) return stop_history(position.status());
  history_seq = position->seq;
  // Reads the log at the index's position: its errors are the log's.
  const std::uint64_t committed = context.committed_seq();
  auto matches = history_continues_log(*fs, context.data_dir, *context.history, committed);
  if (!matches) return matches.status();
  if (*matches) {
    if (history_seq == 0 && committed > 0) {
      std::fprintf(stderr,
                   "tally: the history projection is empty; building it from the log's %llu "
                   "events (reads as of a seq or time replay the log until it catches up)\n",
                   static_cast<unsigned long long>(committed));
    }
    // Published now, not once prepare() has loaded the state: meanwhile the
    // stats (and the metrics' lag) show where the index is, not 0.
    std::lock_guard<std::mutex> guard(mu);
    stats.history_seq = history_seq;
    return Status();
  }
  std::fprintf(stderr, "tally: the history projection does not match the log at seq %llu; rebuilding it\n",
               static_cast<unsigned long long>(history_seq));
  history_seq = 0;
  // LMDB reads the pages it frees: they are walked first.
  Status cleared = context.history->check_pages();
  if (cleared.ok()) cleared = context.history->clear();
  if (cleared.ok()) mark_history_checked();  // empty now
  return stop_history(std::move(cleared));
}

// Walks the history's pages before anything reads or writes them: one found
// damaged, or that the disk cannot read (EIO), stops the history alone
// (stop_history); snapshots go on. Another I/O error (out of descriptors
// or memory) pauses it and it is tried again, as a read of the log is.
// closed when stop() came first.
Status Archivist::Impl::check_history_pages() {
  if (!history_on || history_checked.load()) return Status();
  constexpr const char* kWhat = "checking the history index's pages";
  while (true) {
    Status checked = context.history->check_pages(&abandon);
    if (checked.code() == ErrorCode::closed && abandon.load()) return checked;
    if (checked.os_error() == EIO) {
      checked = Status(ErrorCode::corrupt, "reading its pages: " + checked.to_string());
    }
    if (checked.code() != ErrorCode::io_error) {
      TALLY_TRY(stop_history(std::move(checked)));
      break;
    }
    pause(kWhat, checked, &history_retry_at);
    std::unique_lock<std::mutex> guard(mu);
    wake_cv.wait_until(guard, *history_retry_at, [this] { return stopping; });
    if (stopping) return Status(ErrorCode::closed, "stopped before the pages were checked");
  }
  resume(kWhat, &history_retry_at);
  if (history_on) mark_history_checked();
  return Status();
}

void Archivist::Impl::mark_history_checked() {
  std::lock_guard<std::mutex> guard(mu);
  history_checked.store(true, std::memory_order_release);
  cv.notify_all();  // history_readable() waits no more
}

Status Archivist::Impl::prepare() {
  std::uint64_t start = history_seq;
  // A state loaded by a try whose open of the tail failed is kept: the
  // tail opens after it, and the lead's reading catches it up.
  if (snapshots_enabled(options) && state == nullptr) {
    ReplayOptions replay_options;
    replay_options.data_dir = context.data_dir;
    replay_options.fs = fs;
    replay_options.state_options = context.state_options;
    replay_options.snapshots = context.snapshots;
    replay_options.to_seq = context.committed_seq();
    replay_options.cancel = &abandon;
    auto replayed = replay(replay_options);
    if (!replayed) return replayed.status();
    state = std::move(replayed->state);
    // The events since the newest snapshot count towards the next, so a
    // ledger opened on a log far past its last snapshot takes one soon,
    // idle or not.
    events_since_snapshot = state->last_seq() - replayed->report.snapshot_seq;
  }
  if (state != nullptr) start = state->last_seq();
  auto opened = log::LogTail::open(*fs, log_dir(context.data_dir), start + 1);
  if (!opened) return opened.status();
  tail = std::move(*opened);
  read_seq = start;
  read_checksum = tail->position().prev_checksum;
  flushed_seq = history_seq;  // where the index was opened
  std::lock_guard<std::mutex> guard(mu);
  stats.history_seq = history_seq;
  stats.state_seq = state != nullptr ? state->last_seq() : 0;
  return Status();
}

Result<bool> Archivist::Impl::prepare_retrying() {
  for (;;) {
    Status prepared = prepare();
    if (prepared.code() != ErrorCode::io_error) {
      if (!prepared.ok()) return prepared;
      resume("reading the log", &read_retry_at);
      return true;
    }
    bool asked = false;
    {
      // Stopped meanwhile: no "trying again" for a try that will not come.
      std::lock_guard<std::mutex> guard(mu);
      if (stopping) return false;
      asked = snapshot_requests > snapshot_answered;
    }
    TALLY_TRY(settle_read(std::move(prepared)));
    if (asked) finish_snapshot_request(0, read_failure, kAllTickets, /*idle=*/false);
    std::unique_lock<std::mutex> guard(mu);
    wake_cv.wait_until(guard, *read_retry_at, [this] {
      return stopping || snapshot_requests > snapshot_answered;
    });
    if (stopping) return false;
  }
}

Result<bool> Archivist::Impl::next_event(log::LogTail& from, std::uint64_t max_seq,
                                         log::Record* record, log::Event* event) {
  auto more = from.next(record, max_seq);
  if (!more || !*more) return more;
  TALLY_TRY(log::decode_record(decoder, *record, event));
  return true;
}

Status Archivist::Impl::append_history(const log::Event& event, const log::Record& record) {
  Status appended = context.history->append(event, record.checksum);
  if (appended.code() == ErrorCode::busy) {  // its buffer is full
    TALLY_TRY(flush_history());
    // Not flushed: stop() gave up on the flush.
    if (abandon_flush.load()) return Status(ErrorCode::closed, "the history flush was given up");
    // Not flushed either: the flush failed and paused the history, which
    // takes the event again once it catches up.
    if (history_paused()) return Status();
    // The flush may have found the index damaged and stopped it.
    appended = history_on ? context.history->append(event, record.checksum) : Status();
  }
  if (!appended.ok()) return stop_history(std::move(appended));
  if (history_on) {
    history_seq = record.seq;
    history_dirty = true;
  }
  return Status();
}

Status Archivist::Impl::lead_round(std::uint64_t committed, bool history_rides) {
  // A snapshot asked for tries at once (and is answered with the error).
  if (reads_wait() && history_rides) return Status();
  log::Record record;
  log::Event event;
  for (std::size_t count = 0; count < kRoundRecordsMax && !abandon.load(); count++) {
    auto more = next_event(*tail, committed, &record, &event);
    if (!more) return settle_read(more.status());
    if (reads_paused()) resume("reading the log", &read_retry_at);
    if (!*more) break;
    if (history_on && history_rides && !history_paused() && history_seq + 1 == record.seq) {
      Status appended = append_history(event, record);
      if (appended.code() == ErrorCode::closed) break;  // stop() gave up on the flush
      TALLY_TRY(appended);
    }
    if (state != nullptr && record.seq > state->last_seq()) {
      TALLY_TRY(state->apply(event));
      events_since_snapshot++;
    }
    read_seq = record.seq;
    read_checksum = record.checksum;
    if (reader_waits_for_flush()) break;
  }
  return Status();
}

Status Archivist::Impl::history_round(bool yield) {
  if (!history_behind()) {
    history_tail.reset();
    return Status();
  }
  if (history_paused() || reads_wait()) return Status();
  if (history_tail == nullptr) {
    const std::string dir = log_dir(context.data_dir);
    auto opened = history_left_at.has_value() && history_left_at->next_seq == history_seq + 1
                      ? log::LogTail::resume(*fs, dir, *history_left_at)
                      : log::LogTail::open(*fs, dir, history_seq + 1);
    history_left_at.reset();
    if (!opened) return settle_read(opened.status());
    history_tail = std::move(*opened);
  }
  log::Record record;
  log::Event event;
  for (std::size_t count = 0; count < kRoundRecordsMax && history_behind() && !abandon.load();
       count++) {
    if (yield && snapshot_waiting.load(std::memory_order_relaxed)) break;
    auto more = next_event(*history_tail, read_seq, &record, &event);
    if (!more) return settle_read(more.status());
    if (reads_paused()) resume("reading the log", &read_retry_at);
    if (!*more) break;
    Status appended = append_history(event, record);
    if (appended.code() == ErrorCode::closed) break;  // stop() gave up on the flush
    TALLY_TRY(appended);
    if (history_paused() || reader_waits_for_flush()) break;
  }
  // Caught up: it rides on the lead tail again.
  if (!history_behind()) history_tail.reset();
  return Status();
}

Status Archivist::Impl::stop_history(Status status) {
  if (status.ok() || status.code() != ErrorCode::corrupt) return status;
  history_on = false;
  history_dirty = false;
  end_pause(&history_retry_at);
  // The ledger holds the store open; its files move with the directory.
  const Status aside = snap::set_aside(history_dir(context.data_dir));
  std::fprintf(stderr,
               "tally: the history index stopped: %s; point-in-time reads replay the log, "
               "snapshots go on, and %s\n",
               status.to_string().c_str(),
               aside.ok() ? "the next open rebuilds it (the damaged one is in history.damaged)"
                          : ("setting it aside failed: " + aside.to_string()).c_str());
  history_stopped.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> guard(mu);
  stats.history_failure = std::move(status);
  cv.notify_all();  // a wait_history() waits no more
  return Status();
}

Status Archivist::Impl::stop_snapshots(Status status) {
  if (status.ok() || status.code() != ErrorCode::corrupt) return status;
  state.reset();  // snapshots off, as when the options turn them off
  end_pause(&snapshot_retry_at);
  {
    std::lock_guard<std::mutex> guard(context.snapshots->mu);
    context.snapshots->failed = true;
  }
  // The ledger holds the store open; its files move with the directory.
  const Status aside = snap::set_aside(snapshot_dir(context.data_dir));
  std::fprintf(stderr,
               "tally: snapshots stopped: %s; the history goes on, and %s\n",
               status.to_string().c_str(),
               aside.ok() ? "the next open begins a new store and replays the log (the damaged "
                            "one is in snapshots.damaged)"
                          : ("setting it aside failed: " + aside.to_string()).c_str());
  std::lock_guard<std::mutex> guard(mu);
  stats.snapshot_failure = std::move(status);
  return Status();
}

Status Archivist::Impl::flush_history() {
  // Once stop() gave up waiting for the flush too (abandon_flush), nothing
  // more is written, and a flush under way stops: the next open reads those
  // events from the log again, as after a crash. A flush into an index of
  // millions of events takes seconds.
  if (!history_dirty || abandon_flush.load()) return Status();
  if (history_paused() && std::chrono::steady_clock::now() < *history_retry_at) return Status();
  if (Status flushed = context.history->flush(&abandon_flush); !flushed.ok()) {
    if (flushed.code() == ErrorCode::closed && abandon_flush.load()) return Status();
    // What was appended stays in the store's buffer for the next try.
    if (flushed.code() == ErrorCode::io_error) {
      pause("the history flush", flushed, &history_retry_at);
      return Status();
    }
    return stop_history(std::move(flushed));
  }
  resume("the history flush", &history_retry_at);
  history_dirty = false;
  flushed_seq = history_seq;
  last_flush = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> guard(mu);
  stats.history_seq = history_seq;
  cv.notify_all();
  return Status();
}

void Archivist::Impl::pause(const char* what, const Status& failed,
                            std::optional<std::chrono::steady_clock::time_point>* retry_at) {
  if (!retry_at->has_value()) {
    std::fprintf(stderr, "tally: %s failed: %s; trying again every %lld ms\n", what,
                 failed.to_string().c_str(),
                 static_cast<long long>(options.retry_interval.count()));
  }
  *retry_at = std::chrono::steady_clock::now() + options.retry_interval;
  std::lock_guard<std::mutex> guard(mu);
  stats.retrying = failed;
  history_waits_retry = history_paused() || reads_paused();
  cv.notify_all();  // a wait_history() waits no more
}

void Archivist::Impl::resume(const char* what,
                             std::optional<std::chrono::steady_clock::time_point>* retry_at) {
  if (!retry_at->has_value()) return;
  std::fprintf(stderr, "tally: %s succeeded again\n", what);
  end_pause(retry_at);
}

void Archivist::Impl::end_pause(std::optional<std::chrono::steady_clock::time_point>* retry_at) {
  retry_at->reset();
  std::lock_guard<std::mutex> guard(mu);
  history_waits_retry = history_paused() || reads_paused();
  // Unless another part still waits.
  if (!history_paused() && !snapshot_retry_at.has_value() && !reads_paused()) {
    stats.retrying = Status();
  }
}

Status Archivist::Impl::settle_read(Status failed) {
  if (failed.code() != ErrorCode::io_error) return failed;
  pause("reading the log", failed, &read_retry_at);
  read_failure = std::move(failed);
  return Status();
}

Status Archivist::Impl::settle_snapshot(Status written) {
  if (written.code() == ErrorCode::io_error) {
    pause("a snapshot", written, &snapshot_retry_at);
    return Status();
  }
  if (written.ok()) resume("a snapshot", &snapshot_retry_at);
  return stop_snapshots(std::move(written));
}

Status Archivist::Impl::write_snapshot() {
  const auto started = std::chrono::steady_clock::now();
  TALLY_ASSERT(state->last_seq() == read_seq);
  TALLY_TRY(tally::write_snapshot(*context.snapshots, *state,
                                  {read_seq, read_checksum, state->last_timestamp_ns()},
                                  options.snapshot_retain));
  events_since_snapshot = 0;
  last_snapshot = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> guard(mu);
  stats.snapshots_written++;
  stats.last_snapshot_seq = read_seq;
  stats.last_snapshot_seconds = std::chrono::duration<double>(last_snapshot - started).count();
  return Status();
}

void Archivist::Impl::finish_snapshot_request(std::uint64_t seq, Status status,
                                               std::uint64_t through, bool idle) {
  std::lock_guard<std::mutex> guard(mu);
  if (status.ok()) {
    snapshot_answer = seq;
  } else {
    snapshot_answer = std::move(status);
  }
  snapshot_answered = std::max(snapshot_answered, std::min(through, snapshot_requests));
  const bool more = snapshot_requests > snapshot_answered;
  snapshot_waiting.store(more, std::memory_order_relaxed);
  // Back to the cores nothing else wants (snapshot_now lifted it), unless
  // stop() has made it normal for good or another request waits. Under
  // mu, as the lift is: a request made after this lifts it again.
  sched_param param{};
  if (idle && !stopping && !more) (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &param);
  cv.notify_all();
}

std::uint64_t Archivist::Impl::wait_for_work(std::uint64_t requests, bool* reader_waits) {
  const auto until = std::chrono::steady_clock::now() + kPollInterval;
  std::unique_lock<std::mutex> guard(mu);
  while (true) {
    const std::uint64_t committed = context.committed_seq();
    *reader_waits = history_wanted > stats.history_seq;
    // A reader waiting for a seq not committed yet wakes nothing: there is
    // nothing to read for it. A history behind the lead is work at once,
    // unless it waits to try a failed flush again; neither is work while
    // reading waits to try a failed read again.
    if ((!reads_paused() && (committed >= read_seq + kWakeRecords ||
                             (history_behind() && !history_paused()))) ||
        stopping || snapshot_requests > requests || snapshot_requests > snapshot_answered ||
        (*reader_waits && history_wanted <= committed) ||
        std::chrono::steady_clock::now() >= until) {
      return committed;
    }
    wake_cv.wait_for(guard, kPollStep);
  }
}

Status Archivist::Impl::run() {
  // Loading its copy of the state runs at normal priority, like the open
  // it follows, and so do the threads that replay starts for it: under
  // SCHED_IDLE, a machine busy with other work could keep it (and a close
  // that waits for it) from finishing for as long as the load lasts. The
  // walk of the history's pages first: readers wait for it.
  const Status checked = check_history_pages();
  if (checked.code() == ErrorCode::closed) return Status();  // stopped: nothing to flush
  TALLY_TRY(checked);
  auto prepared = prepare_retrying();
  // Stopped, and not done loading within kDrainMax: nothing to flush.
  if (!prepared && abandon.load()) return Status();
  if (!prepared) return prepared.status();
  if (!*prepared) return Status();  // stopped while a failed load waited
  {
    // From here on it runs only on a core nothing else wants: under full
    // load it lags rather than slow the writer (measured in
    // docs/performance.md). Not once stop() began, nor while snapshot_now
    // waits: they have made the thread normal (finish_snapshot_request
    // makes it idle again). Best effort: a failure only means it competes
    // evenly.
    std::lock_guard<std::mutex> guard(mu);
    sched_param param{};
    if (!stopping && snapshot_requests == snapshot_answered) {
      (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &param);
    }
  }
  for (;;) {
    std::uint64_t requests = 0;
    {
      std::lock_guard<std::mutex> guard(mu);
      if (stopping) break;
      requests = snapshot_requests;
    }
    bool reader_waits = false;
    const std::uint64_t committed = wait_for_work(requests, &reader_waits);
    // A request is answered with a snapshot at the seq committed when it
    // was read here, or later. It goes first: the state reads ahead
    // without the history (whose appends and flushes into a large index
    // are the slow part), which catches up after it on a tail of its own.
    const bool requested = requests > snapshot_answered && state != nullptr;
    if (requested && history_on && history_seq == read_seq) history_left_at = tail->position();
    TALLY_TRY(lead_round(committed, !requested));
    if (requested && reads_paused()) {
      // Its try at once failed too: the state cannot reach the seq asked for.
      finish_snapshot_request(0, read_failure);
      continue;
    }
    if (state != nullptr) {
      std::lock_guard<std::mutex> guard(mu);
      stats.state_seq = state->last_seq();
    }
    if (!requested) TALLY_TRY(history_round(/*yield=*/true));
    const bool caught_up = read_seq >= committed;
    const auto now = std::chrono::steady_clock::now();
    // On the interval (ArchivistOptions::flush_interval), or at once for
    // a reader waiting for the index. While the history catches up on its
    // own tail, only when its buffer fills (append_history): fewer, larger
    // flushes rewrite fewer pages, and a 13M-event catch-up took 15% less
    // time (docs/performance.md); a crash or a stop costs a re-read of
    // what was not flushed, and a reader past the index replays meanwhile.
    const bool interval_due = !requested && !history_behind() &&
                              now - last_flush >= options.flush_interval;
    const bool retry_due = history_paused() && now >= *history_retry_at;
    if (reader_waits || interval_due || retry_due || reader_waits_for_flush()) {
      TALLY_TRY(flush_history());
    }
    if (state == nullptr) {
      if (requests > snapshot_answered) {
        finish_snapshot_request(0, Status(ErrorCode::invalid, "snapshots are off"));
      }
      continue;
    }
    const bool count_due = options.snapshot_every_events > 0 &&
                           events_since_snapshot >= options.snapshot_every_events;
    const bool time_due = options.snapshot_every_seconds > 0 && events_since_snapshot > 0 &&
                          std::chrono::duration_cast<std::chrono::seconds>(now - last_snapshot)
                                  .count() >= options.snapshot_every_seconds;
    // A snapshot takes seconds on a large state: once stop() began, only
    // one asked for (snapshot_now) is written. A close with
    // snapshot_due_at_close writes its own, from the ledger's state, once
    // the archivist has stopped.
    bool stop_begun = false;
    std::uint64_t written_seq = 0;  // of the last snapshot this open wrote
    {
      std::lock_guard<std::mutex> guard(mu);
      stop_begun = stopping;
      written_seq = stats.last_snapshot_seq;
    }
    // After a failed write, a due one waits for its retry time.
    const bool snapshot_paused = snapshot_retry_at.has_value() && now < *snapshot_retry_at;
    if (requested && caught_up && read_seq == 0) {
      // No event is durable yet: there is no state to snapshot.
      finish_snapshot_request(
          0, Status(ErrorCode::invalid, "no event is durable yet: there is nothing to snapshot"),
          requests);
    } else if (requested && caught_up && read_seq == written_seq) {
      // Asked for while the last one was written, with nothing since.
      finish_snapshot_request(read_seq, Status(), requests);
    } else if (((count_due || time_due) && !stop_begun && !snapshot_paused) ||
               (requested && caught_up)) {
      Status written = write_snapshot();
      // Only the tickets handed out before `committed` was read: one asked
      // for since may follow an event acknowledged after it.
      if (requested && caught_up) finish_snapshot_request(read_seq, written, requests);
      TALLY_TRY(settle_snapshot(std::move(written)));
    }
  }
  // Catch the history up with what the ledger committed, until stop() gives
  // up: a short-lived ledger (a batch job, a test) then leaves a current
  // index.
  while (history_on && !history_paused() && !reads_paused() && !abandon.load()) {
    const std::uint64_t committed = context.committed_seq();
    if (read_seq >= committed && !history_behind()) break;
    TALLY_TRY(lead_round(committed, /*history_rides=*/true));
    TALLY_TRY(history_round(/*yield=*/false));
    if (reader_waits_for_flush()) TALLY_TRY(flush_history());
  }
  return flush_history();
}

void Archivist::Impl::main() {
  Status status = run();
  if (!status.ok()) {
    std::fprintf(stderr, "tally: snapshots and history stopped: %s\n", status.to_string().c_str());
  }
  std::lock_guard<std::mutex> guard(mu);
  stats.failure = status;
  stopped = true;
  if (snapshot_requests > snapshot_answered) {
    snapshot_answer = status.ok() ? Status(ErrorCode::closed, "the ledger is closing") : status;
    snapshot_answered = snapshot_requests;
  }
  cv.notify_all();
}

Archivist::Archivist(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Archivist::~Archivist() { stop(); }

Result<std::unique_ptr<Archivist>> Archivist::start(ArchivistContext context, ArchivistOptions options) {
  if (options.history && context.history == nullptr) {
    return Status(ErrorCode::invalid, "history is on but there is no history store");
  }
  if (snapshots_enabled(options) && (context.snapshots == nullptr || context.snapshots->store == nullptr)) {
    return Status(ErrorCode::invalid, "snapshots are on but there is no snapshot store");
  }
  if (options.snapshot_retain == 0) return Status(ErrorCode::invalid, "snapshot_retain is 0");
  if (options.retry_interval.count() <= 0) {
    return Status(ErrorCode::invalid, "retry_interval must be > 0");
  }
  auto impl = std::make_unique<Impl>(std::move(context), options);
  // Before anyone reads the history: it must be this log's.
  if (options.history) TALLY_TRY(impl->check_history());
  Impl* raw = impl.get();
  auto started = start_thread("tally-archive", [raw] { raw->main(); });
  if (!started) return started.status();
  raw->thread = std::move(*started);
  return std::unique_ptr<Archivist>(new Archivist(std::move(impl)));
}

Result<std::uint64_t> Archivist::snapshot_now(std::chrono::milliseconds timeout) {
  Impl& impl = *impl_;
  if (!snapshots_enabled(impl.options)) return Status(ErrorCode::invalid, "snapshots are off");
  std::unique_lock<std::mutex> guard(impl.mu);
  if (impl.stopped) {
    return impl.stats.failure.ok() ? Status(ErrorCode::closed, "the archivist has stopped")
                                   : impl.stats.failure;
  }
  const std::uint64_t ticket = ++impl.snapshot_requests;
  impl.snapshot_waiting.store(true, std::memory_order_relaxed);
  // Someone waits for this one: until it is answered the thread runs at
  // normal priority, or a busy machine could keep it waiting for as long as
  // the load lasts. Linux lets a thread out of SCHED_IDLE only with
  // CAP_SYS_NICE or an RLIMIT_NICE of 20; without them this fails, and the
  // request waits for the follower at idle priority.
  sched_param param{};
  (void)pthread_setschedparam(impl.thread.native_handle(), SCHED_OTHER, &param);
  impl.wake_cv.notify_all();
  if (!impl.cv.wait_for(guard, timeout, [&] { return impl.snapshot_answered >= ticket; })) {
    return Status(ErrorCode::busy, "the snapshot did not finish in time; it is still being taken");
  }
  return impl.snapshot_answer;
}

bool Archivist::wait_history(std::uint64_t seq, std::chrono::milliseconds timeout) {
  Impl& impl = *impl_;
  std::unique_lock<std::mutex> guard(impl.mu);
  impl.history_wanted.store(std::max(impl.history_wanted.load(), seq));
  impl.wake_cv.notify_all();
  return impl.cv.wait_for(guard, timeout,
                          [&] {
                            return impl.stats.history_seq >= seq || impl.stopped ||
                                   !impl.stats.history_failure.ok() || impl.history_waits_retry;
                          }) &&
         impl.stats.history_seq >= seq;
}

bool Archivist::history_readable(std::chrono::milliseconds timeout) {
  Impl& impl = *impl_;
  const auto readable = [&impl] {
    return impl.history_checked.load(std::memory_order_acquire) &&
           !impl.history_stopped.load(std::memory_order_acquire);
  };
  if (readable() || impl.history_stopped.load(std::memory_order_acquire)) return readable();
  std::unique_lock<std::mutex> guard(impl.mu);
  impl.cv.wait_for(guard, timeout, [&] {
    return impl.history_checked.load() || impl.history_stopped.load() || impl.stopped;
  });
  return readable();
}

bool Archivist::history_stopped() const {
  return impl_->history_stopped.load(std::memory_order_acquire);
}

ArchivistStats Archivist::stats() {
  std::lock_guard<std::mutex> guard(impl_->mu);
  return impl_->stats;
}

void Archivist::stop() {
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> stop_guard(impl.stop_mu);
  {
    std::lock_guard<std::mutex> guard(impl.mu);
    impl.stopping = true;
  }
  impl.wake_cv.notify_all();
  if (!impl.thread.joinable()) return;
  // What is left (draining and flushing the history) runs at normal
  // priority: under SCHED_IDLE, a machine busy with other work would keep
  // the close waiting for as long as it stays busy.
  sched_param param{};
  (void)pthread_setschedparam(impl.thread.native_handle(), SCHED_OTHER, &param);
  {
    std::unique_lock<std::mutex> guard(impl.mu);
    impl.cv.wait_for(guard, kDrainMax, [&] { return impl.stopped; });
  }
  impl.abandon = true;
  {
    std::unique_lock<std::mutex> guard(impl.mu);
    impl.cv.wait_for(guard, kLastFlushMax, [&] { return impl.stopped; });
  }
  impl.abandon_flush = true;
  impl.thread.join();
}

}  // namespace tally
