// The Ledger's threads (docs/architecture.md, "Write path"):
//
//   callers --submit--> queue --> writer thread --group--> I/O thread --> acks
//
// The writer thread owns the State. It drains the queue, decides each
// command against the State, encodes its event into the log's open batch,
// applies it, and holds the answer back in `pending_`. When the I/O thread is
// idle, the writer hands it the batch and the answers (a group); the I/O
// thread writes the group with one write and one fdatasync, then delivers
// the answers in order. While it syncs, the writer decides the next group, so
// every caller that arrives during a sync shares the next one.
//
// Reads travel the same queue and are answered with the group they were
// decided in: they see every mutation queued before them, and nothing that
// is not yet acknowledged (durable per the durability mode) reaches a caller.
#include "engine/ledger.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "engine/archivist.h"
#include "engine/decide.h"
#include "engine/point_in_time.h"
#include "engine/replay.h"
#include "log/lock.h"
#include "log/reader.h"
#include "log/thread.h"
#include "log/writer.h"
#include "projections/state.h"
#include "snapshots/renew.h"

namespace tally {

namespace {

static_assert(static_cast<int>(Outcome::hold_finalized) == static_cast<int>(log::Reason::hold_finalized),
              "Outcome mirrors log::Reason");

// A data directory by its device and inode, whatever path names it.
struct DirId {
  dev_t device = 0;
  ino_t inode = 0;
  auto operator<=>(const DirId&) const = default;
};

// The data directories of the Ledger objects this process holds, closed
// or not. A closed Ledger keeps its stores' LMDB environments until it is
// destroyed, and LMDB allows one environment per file and process: one
// opened beside it on the same store would lose its locks when the closed
// one goes. So a directory opens again in the same process only once the
// Ledger that had it is destroyed.
std::mutex held_dirs_mu;
std::set<DirId> held_dirs;

Result<DirId> hold_dir(const std::string& data_dir) {
  struct stat info {};
  if (::stat(data_dir.c_str(), &info) != 0) {
    return Status(ErrorCode::io_error, "stat " + data_dir + ": " + std::strerror(errno));
  }
  const DirId id{info.st_dev, info.st_ino};
  std::lock_guard<std::mutex> guard(held_dirs_mu);
  if (!held_dirs.insert(id).second) {
    return Status(ErrorCode::locked,
                  "data directory " + data_dir +
                      " is still held by a Ledger of this process, closed but not destroyed: "
                      "destroy it before opening the directory again");
  }
  return id;
}

void release_dir(const DirId& id) {
  std::lock_guard<std::mutex> guard(held_dirs_mu);
  held_dirs.erase(id);
}

// The backups this thread is running, innermost first, by their ledgers'
// Impls: a backup's progress callback runs here (and may start a backup of
// another ledger), and a close() of any of their ledgers from it would
// wait for itself.
struct BackupFrame {
  const void* ledger = nullptr;
  const BackupFrame* outer = nullptr;
};
thread_local const BackupFrame* backups_on_this_thread = nullptr;

bool backing_up_on_this_thread(const void* ledger) {
  for (const BackupFrame* frame = backups_on_this_thread; frame != nullptr; frame = frame->outer) {
    if (frame->ledger == ledger) return true;
  }
  return false;
}

// One caller waiting for one answer.
class Waiter {
 public:
  void notify() {
    // Notify while holding the lock: the waiter may destroy *this as soon as
    // it sees done_.
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
    cv_.notify_one();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
};

// A pair's balance, and a subject's non-zero balances, in a read at now_ns.
Balance read_balance(const proj::State& state, std::string_view subject, std::string_view item,
                     std::int64_t now_ns) {
  const proj::Balance b = state.balance(subject, item, now_ns);
  return Balance{b.available, b.held};
}

void read_list(const proj::State& state, std::string_view subject, std::int64_t now_ns,
               std::vector<ItemBalance>* items) {
  state.list(subject, now_ns, [&](std::string_view item, proj::Balance b) {
    items->push_back(ItemBalance{std::string(item), Balance{b.available, b.held}});
  });
}

// Calls start(done) and waits for what done is given.
template <class Answer, class Start>
Answer await_answer(Start start) {
  Waiter waiter;
  std::optional<Answer> result;
  start([&](Answer answer) {
    result.emplace(std::move(answer));
    waiter.notify();
  });
  waiter.wait();
  return std::move(*result);
}

using ReadFn = std::function<Status(const proj::State&, std::int64_t now_ns)>;
using ReadDone = std::function<void(Status)>;

// A unit of work for the writer thread.
struct Task {
  enum class Kind : std::uint8_t { command, read, expire };
  Kind kind = Kind::command;
  Command command;
  Ledger::Completion done;  // command
  ReadFn read;              // read: runs on the writer thread
  ReadDone read_done;       // read, expire: runs once the group is durable
};

// An answer held back until its group is durable.
struct Ack {
  Ledger::Completion done;
  std::optional<Result<Receipt>> result;
  ReadDone read_done;
  Status status;
};

constexpr std::int64_t kIdleWaitNsMax = 1'000'000'000;
constexpr std::size_t kPrefetchDistance = 16;
constexpr std::int64_t kIdleWaitNsMin = 1'000'000;
// next_timestamp(): commands that reuse one clock read after the first.
constexpr std::uint32_t kClockReuseMax = 63;

ArchivistOptions archivist_options(const LedgerOptions& options) {
  ArchivistOptions archive;
  archive.snapshot_every_events = options.snapshot_every_events;
  archive.snapshot_every_seconds = options.snapshot_every_seconds;
  archive.snapshot_retain = options.snapshot_retain;
  archive.history = options.history;
  return archive;
}

// A point-in-time read the history projection does not reach yet waits for
// it, at most this long, when it is at most kHistoryWaitLagMax events behind
// (the archivist catches up with that in well under the wait); further
// behind (a ledger under full load), it answers by a replay at once.
constexpr std::chrono::milliseconds kHistoryWaitMax{2000};
// How long snapshot_now() waits for the archivist.
constexpr std::chrono::minutes kSnapshotTimeout{10};
constexpr std::uint64_t kHistoryWaitLagMax = 65536;
// A check of the log's records that cannot read them (an I/O error: out of
// file descriptors, a sector the disk did not read this time) is tried
// again, kCheckTries times in all, kCheckRetry apart (or a scrub period,
// when shorter), before the log counts as damaged: what no try read is
// lost to every reader.
constexpr int kCheckTries = 3;
constexpr std::chrono::seconds kCheckRetry{10};

}  // namespace

struct Ledger::Impl {
  explicit Impl(const LedgerOptions& opts)
      : options(opts),
        clock(opts.clock != nullptr ? opts.clock : &system_clock()),
        fs(opts.fs != nullptr ? opts.fs : &log::posix_file_system()),
        state_options{opts.idempotency_window_ns} {}
  ~Impl() {
    if (held_dir) release_dir(*held_dir);
  }

  Status start(LedgerStats* replayed_stats);
  Status check_lost_events(const log::LogEnd& end);
  // LedgerOptions::snapshot_due_at_close: a snapshot when the durable log
  // is snapshot_every_events or more past the newest one.
  void take_due_snapshot();
  // The snapshot take_due_snapshot() wrote, for stats(): seq 0 for none.
  std::atomic<std::uint64_t> close_snapshot_seq{0};
  std::atomic<double> close_snapshot_seconds{0};
  Status start_archivist();
  // Starts check_log_main() when the open began its replay at a
  // snapshot's seq, reading none of the log's records before it.
  Status start_log_check(std::uint64_t snapshot_seq);
  void check_log_main(std::uint64_t to_seq);
  Status check_log_before(std::uint64_t to_seq, bool writer_live);
  // check_log_before(), and damage logged ("the log up to seq N (why) does
  // not read back: ...") and set in log_damaged; false once close() began.
  // A check that fails to read the log (an I/O error) is tried again, up to
  // kCheckTries in all, `retry` apart.
  bool check_log_said(std::uint64_t to_seq, bool writer_live, const char* why,
                      std::chrono::seconds retry);
  // Waits `period`, or less: true once close() began.
  bool check_wait(std::chrono::seconds period);
  void writer_main();
  void io_main();

  // ---- writer thread ----
  void process(Task& task);
  void process_command(Task& task);
  // The event `command` is logged as, but for what deciding it sets (ops,
  // rejection).
  log::Event event_of(const Command& command, std::uint64_t fingerprint,
                      std::int64_t now_ns) const;
  // Whether the largest event `command` can be logged as, whatever the
  // state (decide.h), fits a segment; `event` is event_of() it.
  bool largest_fits(const Command& command, const log::Event& event);
  static Status too_large();
  void expire_due(std::int64_t now_ns);
  // Encodes, appends and applies one decided event.
  void append(const log::Event& event, std::span<const std::byte> payload);
  void make_room(std::size_t payload_bytes);
  std::int64_t next_timestamp();
  // Whether an open hold is due by the last clock reading.
  bool hold_came_due() const;
  bool group_ready() const { return !log->batch_empty() || !pending.empty(); }
  void handoff_locked();
  void answer(Task& task, Result<Receipt> result);
  // Queues a task for the writer, waiting for room (but not in a
  // completion). closed once closing, busy past kQueueDepthMaxLimit; the
  // task is then left as it was.
  Status enqueue(Task& task);
  // Runs `read` on the writer thread; `done` runs once its group is durable.
  void submit_read(ReadFn read, ReadDone done, bool expire);
  // The same, waiting for it.
  Status run_read(ReadFn read, bool expire);
  // A read as of a time T at or after the last committed event is the
  // State read at T, as a current read with T for its clock: no index or
  // replay needed (a pair with open holds may leave the index to a replay,
  // point_in_time.h). nullopt where the State holds an event stamped after
  // T, or does not answer (read-only): then the point-in-time path does.
  template <class R>
  std::optional<R> state_at(std::int64_t time_ns,
                            std::function<void(const proj::State&, std::int64_t, R*)> read) {
    if (time_ns < committed_time_ns.load(std::memory_order_relaxed)) return std::nullopt;
    Result<R> answer = await_answer<Result<R>>([&](std::function<void(Result<R>)> done) {
      submit_state_read<R>(
          [time_ns, read](const proj::State& state, std::int64_t, R* out) {
            if (state.last_timestamp_ns() > time_ns) {
              return Status(ErrorCode::not_found, "the State holds a later event");
            }
            read(state, time_ns, out);
            return Status();
          },
          std::move(done));
    });
    if (!answer) return std::nullopt;
    return std::move(*answer);
  }
  // Reads an R from the state on the writer thread into a shared slot and
  // hands it to `done` once the read's group is durable.
  template <class R>
  void submit_state_read(std::function<Status(const proj::State&, std::int64_t now_ns, R*)> read,
                         std::function<void(Result<R>)> done) {
    auto answer = std::make_shared<R>();
    submit_read(
        [answer, read = std::move(read)](const proj::State& state, std::int64_t now_ns) {
          return read(state, now_ns, answer.get());
        },
        [answer, done = std::move(done)](Status status) {
          if (status.ok()) return done(std::move(*answer));
          done(std::move(status));
        },
        false);
  }
  void wait_for_work(std::vector<Task>* tasks, bool* stop, bool* expire_now);

  // ---- I/O thread ----
  void write_group(log::WriteBatch* batch, std::vector<Ack>* acks);
  void fail(const Status& status);
  // Under committed_mu, waking wait_committed and wait_durable. durable_too:
  // the seq is durable as it is committed (sync and none).
  void publish_committed(std::uint64_t seq, std::int64_t time_ns, bool durable_too);
  void publish_durable(std::uint64_t seq);
  // Waits until `seq` (committed or durable) > after, the timeout passes or
  // the ledger closes.
  Committed wait_past(const std::atomic<std::uint64_t>& seq, std::uint64_t after,
                      std::chrono::milliseconds timeout);
  PointInTimeSource point_in_time_source(AsOf at);
  // A point-in-time read: `read(source, &noted)` with the source for `at`,
  // then what it passed over said on stderr, as the tools say it.
  template <class Read>
  auto read_at(AsOf at, Read read) {
    PointInTimeRead noted;
    auto result = read(point_in_time_source(at), &noted);
    note_point_in_time(noted);
    return result;
  }
  // Once per damaged snapshot (its seq; 0 the store) and once for the
  // history index: every read that walks past a damage meets it again.
  void note_point_in_time(const PointInTimeRead& read);
  // closed once close() began.
  Status check_open() const;

  const LedgerOptions options;
  Clock* const clock;
  log::FileSystem* const fs;
  std::unique_ptr<log::DirLock> lock;
  std::optional<DirId> held_dir;  // hold_dir()'s, released with the Impl
  std::unique_ptr<log::LogWriter> log;

  const proj::StateOptions state_options;
  SharedSnapshots snapshots;
  std::unique_ptr<snap::HistoryStore> history;
  std::mutex noted_mu;
  std::set<std::uint64_t> noted_snapshots;  // note_point_in_time()'s
  bool noted_index_damage = false;
  std::unique_ptr<Archivist> archivist;
  // The check of the log's records before the snapshot the open started
  // from, then the scrubs, on a thread of its own at the lowest priority:
  // its thread, close()'s stop (check_cancelled, under check_mu, wakes it
  // from its wait for the next scrub), and what it found
  // (LedgerStats::log_checked, log_damaged, log_scrubs).
  std::thread check_thread;
  std::mutex check_mu;
  std::condition_variable check_cv;
  std::atomic<bool> check_cancelled{false};
  std::atomic<bool> log_checked{false};
  std::atomic<bool> log_damaged{false};
  std::atomic<std::uint64_t> log_scrubs{0};

  // Owned by the writer thread once started.
  std::unique_ptr<proj::State> state_owner;
  proj::State* state = nullptr;
  log::EventEncoder encoder;
  std::vector<log::Op> ops;
  std::vector<log::Op> largest_ops;  // of a command near the segment's limit
  detail::DecideScratch decide_scratch;
  std::string fingerprint_scratch;
  std::vector<Ack> pending;
  // next_timestamp(): the last clock reading, and how many more tasks it
  // serves before the next one.
  std::int64_t clock_reading_ns = INT64_MIN;
  std::uint32_t clock_reuses_left = 0;

  // Shared; guarded by mu.
  std::mutex mu;
  std::condition_variable writer_cv;  // tasks arrived, the I/O thread went idle, closing
  std::condition_variable room_cv;    // the queue has room
  std::condition_variable io_cv;      // a group to write, or stop
  std::vector<Task> queue;
  // Room reserved at open for the queue and the writer's batch: the default
  // depth's worth at most. A deeper queue grows them as it fills, so that
  // a depth near kQueueDepthMaxLimit (16M slots of a few hundred bytes)
  // costs memory only when commands wait that deep.
  std::size_t queue_reserve() const {
    return std::min(options.queue_depth_max, LedgerOptions{}.queue_depth_max);
  }
  bool closing = false;
  bool io_busy = false;
  bool io_stop = false;
  log::WriteBatch* io_batch = nullptr;
  std::uint64_t io_last_seq = 0;  // the last seq in io_batch
  std::int64_t io_last_time_ns = 0;  // the timestamp of the State's last event then
  std::vector<Ack> io_acks;
  Status failure;
  std::atomic<bool> failed{false};
  std::uint64_t groups = 0;
  // The State's sizes for stats(), as of the last hand-off (and of the
  // open): every event goes through one before it is answered, so a caller
  // sees its own mutations, and stats() never queues behind the writer.
  struct Counts {
    std::atomic<std::uint64_t> next_seq{0};
    std::atomic<std::uint64_t> balances{0};
    std::atomic<std::uint64_t> open_holds{0};
    std::atomic<std::uint64_t> keys{0};
  } counts;
  void publish_counts();

  // Ledger::ledger_id, read at open; 0 until the first segment exists (an
  // open on a full disk may leave it to the first append to make).
  mutable std::atomic<std::uint64_t> ledger_id{0};

  // The last seq acknowledged (durable per the durability mode); readers of
  // the live log go up to it. Written under committed_mu (for the waiters
  // of committed_cv), read without it.
  std::mutex committed_mu;
  std::condition_variable committed_cv;
  std::atomic<std::uint64_t> committed{0};
  // The timestamp of the event at committed (or the State's last before).
  std::atomic<std::int64_t> committed_time_ns{0};
  bool committed_closed = false;  // guarded by committed_mu
  // The last seq on disk for good (fdatasync returned): committed, but for
  // async durability, where it follows the periodic syncs. The archivist
  // reads the log up to it, so that snapshots and the history index never
  // describe events a crash can take back, and a log that ends before them
  // has lost events (check_lost_events).
  std::atomic<std::uint64_t> durable{0};

  std::thread writer_thread;
  std::thread io_thread;
  // Their ids, kept as they started (join() clears a std::thread's): the
  // threads completions run on.
  std::thread::id writer_thread_id;
  std::thread::id io_thread_id;
  // Whether the caller is one of them: a completion, which close() and the
  // blocking calls would wait for.
  bool on_own_thread() const {
    const std::thread::id caller = std::this_thread::get_id();
    return caller == io_thread_id || caller == writer_thread_id;
  }
  std::mutex close_mu;
  bool closed = false;
  // Set as close() begins: the calls that do not go through the writer
  // (point-in-time reads, snapshot_now) answer closed from then on, as the
  // queued ones do.
  std::atomic<bool> closing_began{false};
  // Backups under way (Ledger::backup): close() cancels them and waits for
  // them to return before it stops what they use.
  std::mutex backup_mu;
  std::condition_variable backup_cv;
  std::size_t backups_running = 0;  // guarded by backup_mu
  std::atomic<bool> backups_cancelled{false};
  std::mutex failure_mu;
  LedgerStats open_stats;
};

// ---------------------------------------------------------------- open

Status Ledger::Impl::start(LedgerStats* replayed_stats) {
  TALLY_TRY(fs->make_dirs(options.data_dir));
  // A mistyped path (another directory, a ledger's own log directory) is
  // not made a ledger, as the audit tools do not read it as one.
  TALLY_TRY(check_ledger_dir(options.data_dir));
  auto locked = log::DirLock::acquire(options.data_dir);
  if (!locked) return locked.status();
  lock = std::move(*locked);
  auto dir = hold_dir(options.data_dir);
  if (!dir) return dir.status();
  held_dir = *dir;

  const ArchivistOptions archive = archivist_options(options);
  if (snapshots_enabled(archive) || fs->exists(snapshot_dir(options.data_dir))) {
    auto store = snap::open_renewing<snap::SnapshotStore>(snapshot_dir(options.data_dir),
                                                           snap::SnapshotStoreOptions{});
    if (!store) return store.status();
    snapshots.store = std::move(*store);
  }
  ReplayOptions replay_options;
  replay_options.data_dir = options.data_dir;
  replay_options.fs = fs;
  replay_options.state_options = state_options;
  replay_options.snapshots = &snapshots;
  replay_options.cancel = options.cancel_open;
  replay_options.progress = options.open_progress;
  auto replayed = replay(replay_options);
  if (!replayed) return replayed.status();
  warn_skipped_snapshots(replayed->report.skipped);
  state_owner = std::move(replayed->state);
  state = state_owner.get();
  const ReplayReport& report = replayed->report;
  TALLY_TRY(check_lost_events(report.end));
  replayed_stats->events_replayed = report.events;
  replayed_stats->replay_seconds = report.seconds;
  replayed_stats->snapshot_seq = report.snapshot_seq;

  log::LogWriterOptions writer_options;
  writer_options.segment_size_bytes = options.segment_size_bytes;
  auto writer = log::LogWriter::open(*fs, log_dir(options.data_dir), report.end, writer_options);
  if (!writer) return writer.status();
  log = std::move(*writer);
  // The writer made the first segment if the log had none, unless the disk
  // was full: then ledger_id() reads it once the first append has made it.
  auto id = log::read_log_id(*fs, log_dir(options.data_dir));
  if (!id && id.code() != ErrorCode::not_found) return id.status();
  if (id) ledger_id = *id;
  committed = state->last_seq();
  committed_time_ns = state->last_timestamp_ns();
  durable = state->last_seq();
  queue.reserve(queue_reserve());
  publish_counts();
  auto writer_started = start_thread("tally-writer", [this] { writer_main(); });
  if (!writer_started) return writer_started.status();
  writer_thread = std::move(*writer_started);
  writer_thread_id = writer_thread.get_id();
  auto io_started = start_thread("tally-io", [this] { io_main(); });
  if (!io_started) return io_started.status();
  io_thread = std::move(*io_started);
  io_thread_id = io_thread.get_id();
  TALLY_TRY(start_archivist());
  return start_log_check(report.snapshot_seq);
}

// Called by close() once the writer and the archivist have stopped: the
// ledger's own state is final then, so the snapshot is written from it at
// once. Asking the archivist instead would wait for its copy to catch up,
// which after a long run at full speed (the archivist follows at idle
// priority, history and all) takes minutes.
void Ledger::Impl::take_due_snapshot() {
  const std::uint64_t every = options.snapshot_every_events;
  if (every == 0 || !snapshots_enabled(archivist_options(options)) || failed.load() ||
      state == nullptr || log == nullptr) {
    return;
  }
  const std::uint64_t newest = std::max(
      open_stats.snapshot_seq, archivist != nullptr ? archivist->stats().last_snapshot_seq : 0);
  const std::uint64_t last = state->last_seq();
  if (last < newest + every) return;
  Status written;
  if (last + 1 != log->next_seq()) {
    written = Status(ErrorCode::invalid, "the state ends at seq " + std::to_string(last) +
                                             ", the log at " + std::to_string(log->next_seq() - 1));
  } else {
    const snap::LogPosition position{last, log->last_checksum(), state->last_timestamp_ns()};
    const auto started = std::chrono::steady_clock::now();
    written = write_snapshot(snapshots, *state, position, options.snapshot_retain);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
    if (written.ok()) {
      close_snapshot_seconds.store(took.count(), std::memory_order_relaxed);
      close_snapshot_seq.store(last, std::memory_order_release);
    }
  }
  if (!written.ok()) {
    std::fprintf(stderr, "tally: warning: no snapshot at close: %s\n", written.to_string().c_str());
  }
}

// Snapshots and the history index describe only durable events, so a log
// that ends before the newest of them lost events after the fact. With no
// event at all (no segment, or only a first one whose header is torn), it
// lost the log (deleted, emptied, or another directory restored without
// it): starting over would write new events under the seqs they describe,
// so the ledger refuses. With a shorter log, the events past its end are
// gone for good (a last segment cut short by hand ends like a torn tail);
// the ledger says so loudly, deletes the snapshots past the log's end
// (new events will take their seqs, so they can never be used again) and
// goes on from the log's end; the archivist rebuilds the history index,
// which no longer continues the log. A last segment cut short (shorter
// than it was made, its frames running to its end) may have lost records
// with no store to tell: the ledger says so too, and goes on.
Status Ledger::Impl::check_lost_events(const log::LogEnd& end) {
  if (end.cut_short) {
    std::fprintf(stderr,
                 "tally: warning: the log in %s: %s. Going on from there (the segment gets its "
                 "size back); restore the log from a backup instead if you have one\n",
                 log_dir(options.data_dir).c_str(), log::cut_short_status(end).message().c_str());
  }
  const std::uint64_t last_seq = end.next_seq - 1;
  std::uint64_t known_seq = 0;
  std::string where;
  if (snapshots.store != nullptr) {
    auto infos = snapshots.store->list();
    if (!infos) return infos.status();
    // A record that does not verify says nothing of the log (its seq may
    // be anything); recovery skipped it, and pruning deletes it.
    for (const snap::SnapshotInfo& info : *infos) {
      if (info.metadata_ok && info.seq > known_seq) {
        known_seq = info.seq;
        where = snapshot_dir(options.data_dir);
      }
    }
  }
  const std::string history_path = history_dir(options.data_dir);
  // A damaged store (set aside already, as the snapshots are by now, or
  // about to be, as the history is once the archivist opens it) says
  // nothing of how far it reached, but that it was there: a log with no
  // event beside one is as likely lost as new, and only the operator knows
  // which.
  std::string damaged;
  if (fs->exists(history_path)) {
    snap::HistoryStoreOptions read_only;
    read_only.read_only = true;
    auto store = snap::HistoryStore::open(history_path, read_only);
    auto position = store ? (*store)->position() : Result<snap::HistoryPosition>(store.status());
    if (position && position->seq > known_seq) {
      known_seq = position->seq;
      where = history_path;
    }
    if (position.code() == ErrorCode::corrupt) {
      damaged = history_path + " (damaged: " + position.status().message() + ")";
    }
  }
  for (const std::string& store : {snapshot_dir(options.data_dir), history_path}) {
    if (damaged.empty() && fs->exists(store + ".damaged")) {
      damaged = store + ".damaged (a damaged store set aside)";
    }
  }
  if (last_seq == 0 && known_seq == 0 && !damaged.empty()) {
    return Status(ErrorCode::corrupt,
                  "the log in " + log_dir(options.data_dir) + " holds no event, but " + damaged +
                      " may hold events: if the log is missing, restore it; else remove the "
                      "damaged store to begin a new ledger in this directory");
  }
  if (known_seq <= last_seq) return Status();
  if (last_seq == 0) {
    return Status(ErrorCode::corrupt,
                  "the log in " + log_dir(options.data_dir) +
                      (end.has_segment ? " holds no event" : " has no segment") + ", but " +
                      where + " holds events up to seq " + std::to_string(known_seq) +
                      ": the log is missing. Restore it, or remove " +
                      snapshot_dir(options.data_dir) + " and " + history_path +
                      " to begin a new ledger in this directory");
  }
  std::fprintf(stderr,
               "tally: warning: the log in %s ends at seq %llu, but %s holds events up to seq "
               "%llu: the %llu event%s after seq %llu %s lost (the log was cut short, or its "
               "last records damaged, after they were written). Going on from seq %llu; "
               "restore the log from a backup instead if you have one\n",
               log_dir(options.data_dir).c_str(), static_cast<unsigned long long>(last_seq),
               where.c_str(), static_cast<unsigned long long>(known_seq),
               static_cast<unsigned long long>(known_seq - last_seq),
               known_seq - last_seq == 1 ? "" : "s", static_cast<unsigned long long>(last_seq),
               known_seq - last_seq == 1 ? "is" : "are",
               static_cast<unsigned long long>(last_seq + 1));
  if (snapshots.store != nullptr) {
    auto pruned =
        snapshots.store->prune(options.snapshot_retain, last_seq, options.idempotency_window_ns,
                               snap::SnapshotStore::Later::drop);
    if (!pruned) return pruned.status();
  }
  return Status();
}

Status Ledger::Impl::start_archivist() {
  const ArchivistOptions archive = archivist_options(options);
  if (!archive.history && !snapshots_enabled(archive)) return Status();
  if (archive.history) {
    // A new one is rebuilt from the log (Archivist::start).
    auto store = snap::open_renewing<snap::HistoryStore>(history_dir(options.data_dir),
                                                          snap::HistoryStoreOptions{});
    if (!store) return store.status();
    history = std::move(*store);
  }
  ArchivistContext context;
  context.data_dir = options.data_dir;
  context.fs = fs;
  context.state_options = state_options;
  context.snapshots = &snapshots;
  context.history = history.get();
  context.committed_seq = [this] { return durable.load(std::memory_order_acquire); };
  auto started = Archivist::start(std::move(context), archive);
  if (!started) return started.status();
  archivist = std::move(*started);
  return Status();
}

Status Ledger::Impl::start_log_check(std::uint64_t snapshot_seq) {
  if (snapshot_seq <= 1) log_checked.store(true);  // the replay read every record
  if (snapshot_seq <= 1 && options.log_scrub_seconds == 0) return Status();
  auto started =
      start_thread("tally-logcheck", [this, snapshot_seq] { check_log_main(snapshot_seq); });
  if (!started) return started.status();
  check_thread = std::move(*started);
  return Status();
}

// Damage to records before the snapshot (a flipped bit, a segment deleted)
// is not in the state, but an audit of them, a replay from the start and
// the next open without that snapshot would meet it: found here, as soon
// after the open as idle cores allow, rather than when one of those needs
// the records. The ledger goes on: what it serves is unaffected.
void Ledger::Impl::check_log_main(std::uint64_t to_seq) {
  // The lowest priority that still runs under load (SCHED_IDLE might not
  // run while the cores are busy, and close() waits for it to see its
  // cancel): about 1.5% of a busy core, all of an idle one. Best effort.
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
  // At most a century: a longer wait would overflow the clock's time point.
  const std::chrono::seconds period(std::min<std::int64_t>(options.log_scrub_seconds,
                                                           100ll * 365 * 24 * 3600));
  // Tries again sooner where scrubs come sooner.
  const std::chrono::seconds retry =
      period.count() > 0 ? std::min(period, kCheckRetry) : kCheckRetry;
  if (!log_checked.load()) {
    if (!check_log_said(to_seq, /*writer_live=*/false, "the snapshot this open started from",
                        retry)) {
      return;
    }
    log_checked.store(true);
  }
  // Scrubs, until one finds damage: it is logged once, and stays in the
  // stats until the ledger is reopened.
  while (period.count() > 0 && !log_damaged.load()) {
    if (check_wait(period)) return;
    const std::uint64_t durable_seq = durable.load(std::memory_order_acquire);
    if (!check_log_said(durable_seq, /*writer_live=*/true, "a scrub", retry)) return;
    log_scrubs.fetch_add(1);
  }
}

bool Ledger::Impl::check_wait(std::chrono::seconds period) {
  std::unique_lock<std::mutex> guard(check_mu);
  return check_cv.wait_for(guard, period, [this] { return check_cancelled.load(); });
}

bool Ledger::Impl::check_log_said(std::uint64_t to_seq, bool writer_live, const char* why,
                                  std::chrono::seconds retry) {
  Status found;
  for (int tries = 1;; tries++) {
    found = check_log_before(to_seq, writer_live);
    if (found.code() == ErrorCode::closed) return false;
    if (found.code() != ErrorCode::io_error || tries == kCheckTries) break;
    std::fprintf(stderr,
                 "tally: the log up to seq %llu (%s) could not be read: %s; trying again in "
                 "%lld s\n",
                 static_cast<unsigned long long>(to_seq), why, found.to_string().c_str(),
                 static_cast<long long>(retry.count()));
    if (check_wait(retry)) return false;
  }
  if (!found.ok()) {
    std::fprintf(stderr,
                 "tally: the log up to seq %llu (%s) does not read back: %s; run tally verify "
                 "and see \"When the log is damaged\"\n",
                 static_cast<unsigned long long>(to_seq), why, found.to_string().c_str());
    log_damaged.store(true);
  }
  return true;
}

// Reads every record from seq 1 up to `to_seq` included, which verifies their
// checksums and chain; closed once close() began. `writer_live`: the
// writer may be appending past to_seq (a scrub). The records are there to
// be read (durable, or before the snapshot the open started from): a log
// that ends before to_seq, a damaged frame with nothing valid after it
// say, lost them.
Status Ledger::Impl::check_log_before(std::uint64_t to_seq, bool writer_live) {
  // Read through, not only mapped: a sector the disk cannot read is an
  // io_error here, where a mapped page would kill the process (SIGBUS).
  // The read of a segment stops at close()'s cancel as the records do.
  std::unique_ptr<log::FileSystem> read_through;
  if (fs == &log::posix_file_system()) {
    read_through = log::make_posix_read_through_file_system(check_cancelled);
  }
  auto reader = log::LogReader::open(read_through ? *read_through : *fs,
                                     log_dir(options.data_dir),
                                     {.writer_may_be_live = writer_live});
  if (!reader) return reader.status();
  log::Record record;
  while (!check_cancelled.load(std::memory_order_relaxed)) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (*more && record.seq < to_seq) continue;
    const log::LogEnd& end = (*reader)->end();
    if (*more || end.next_seq > to_seq) return Status();
    if (end.cut_short) return log::cut_short_status(end);
    return Status(ErrorCode::corrupt,
                  "the log ends at seq " + std::to_string(end.next_seq - 1) + " (segment " +
                      log::segment_file_name(end.segment_first_seq) + ", offset " +
                      std::to_string(end.offset) + "), before seq " + std::to_string(to_seq) +
                      ", which was written");
  }
  return Status(ErrorCode::closed, "the ledger is closing");
}

Result<std::unique_ptr<Ledger>> Ledger::open(const LedgerOptions& options) {
  if (options.data_dir.empty()) return Status(ErrorCode::invalid, "data_dir is empty");
  if (options.data_dir.find('\0') != std::string::npos) {
    return Status(ErrorCode::invalid, "data_dir holds a NUL byte");
  }
  if (const Status segment = log::check_segment_size(options.segment_size_bytes); !segment.ok()) {
    return Status(ErrorCode::invalid, "segment_size_bytes: " + segment.message());
  }
  // The queues are sized for it at open.
  if (options.queue_depth_max == 0 || options.queue_depth_max > kQueueDepthMaxLimit) {
    return Status(ErrorCode::invalid,
                  "queue_depth_max must be 1.." + std::to_string(kQueueDepthMaxLimit));
  }
  if (options.durability != Durability::sync && options.durability != Durability::async &&
      options.durability != Durability::none) {
    return Status(ErrorCode::invalid, "durability is not sync, async or none");
  }
  if (options.idempotency_window_ns < 0 || options.hold_ttl_ns_max < kHoldTtlNsMin) {
    return Status(ErrorCode::invalid, "idempotency window or hold ttl limit out of range");
  }
  if (options.snapshot_retain == 0) return Status(ErrorCode::invalid, "snapshot_retain is 0");
  if (options.snapshot_every_seconds < 0 || options.sync_interval_ms < 0 ||
      options.log_scrub_seconds < 0) {
    return Status(ErrorCode::invalid,
                  "snapshot_every_seconds, sync_interval_ms and log_scrub_seconds must be >= 0");
  }
  // Made absolute once: segments, snapshots and the index are opened by
  // path long after, and a chdir() of the process must not move them.
  LedgerOptions resolved = options;
  std::error_code error;
  resolved.data_dir = std::filesystem::absolute(options.data_dir, error).string();
  if (error) {
    return Status(ErrorCode::io_error, "data_dir " + options.data_dir + ": " + error.message());
  }
  std::unique_ptr<Ledger> ledger(new Ledger(std::make_unique<Impl>(resolved)));
  // A start that fails part way is undone by ~Ledger: close() stops what
  // started and unlocks the directory.
  TALLY_TRY(ledger->impl_->start(&ledger->impl_->open_stats));
  return ledger;
}

Ledger::Ledger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Ledger::~Ledger() {
  // invalid only from a thread close() would wait for, whose threads could
  // then not be joined.
  const Status closed = close();
  TALLY_ASSERT(closed.code() != ErrorCode::invalid &&
               "a Ledger destroyed from its own completion or backup progress");
}

// ---------------------------------------------------------------- writer thread

void Ledger::Impl::writer_main() {
  std::vector<Task> tasks;
  tasks.reserve(queue_reserve());
  // The names of the commands ahead are hashed once, when prefetch() starts
  // loading their slots; the balance stage reuses the hashes. Task j's are
  // at j % kPrefetchDistance, written kPrefetchDistance places ahead and
  // read half as far ahead, before the slot is written again.
  std::array<proj::OpHashes, kPrefetchDistance> ahead_hashes;
  for (;;) {
    bool stop = false;
    bool expire_now = false;
    wait_for_work(&tasks, &stop, &expire_now);
    if (stop) break;
    clock_reuses_left = 0;  // a new batch reads the clock afresh
    for (std::size_t task_index = 0; task_index < tasks.size(); task_index++) {
      // The lookups of a command miss the cache on a large ledger; start
      // loading those of a command a few places ahead, and halfway there,
      // its balances (which need the names prefetch() brought in).
      const std::size_t far = task_index + kPrefetchDistance;
      if (far < tasks.size()) {
        const Command& ahead = tasks[far].command;
        ahead_hashes[far % kPrefetchDistance] =
            state->prefetch(ahead.key, ahead.op.subject, ahead.op.item, ahead.op.to, ahead.op.hold);
      }
      // Only tasks that had the first stage (far enough into the batch).
      const std::size_t near = task_index + kPrefetchDistance / 2;
      if (near < tasks.size() && near >= kPrefetchDistance) {
        const OpRequest& ahead = tasks[near].command.op;
        state->prefetch_balances(ahead.subject, ahead.item, ahead.to, ahead.hold,
                                 ahead_hashes[near % kPrefetchDistance]);
      }
      process(tasks[task_index]);
    }
    tasks.clear();
    // Reads come as often as they like and restart the idle wait, so a
    // batch also expires what came due by its own clock reading: reads
    // alone must not put a due hold's expire event off.
    if (!failed.load() && (expire_now || hold_came_due())) expire_due(next_timestamp());
  }
  std::lock_guard<std::mutex> guard(mu);
  io_stop = true;
  io_cv.notify_one();
}

// Hands a finished group to the I/O thread whenever it is idle, then takes
// every queued task. Sleeps when there is nothing to do; wakes on its own
// when the first open hold comes due.
void Ledger::Impl::wait_for_work(std::vector<Task>* tasks, bool* stop, bool* expire_now) {
  std::optional<std::int64_t> expiry = state->next_expiry_ns();
  std::unique_lock<std::mutex> guard(mu);
  for (;;) {
    if (!io_busy && group_ready()) handoff_locked();
    if (!queue.empty()) break;
    if (closing && !io_busy && !group_ready()) {
      *stop = true;
      return;
    }
    if (!expiry || closing || failed.load() || group_ready()) {
      writer_cv.wait(guard);
      continue;
    }
    // The clock is read without the lock, which submitters wait for: an
    // injected clock may take its time. Whatever came meanwhile is seen
    // before the wait.
    guard.unlock();
    const std::int64_t now_ns = clock->now_ns();
    guard.lock();
    if (!queue.empty() || closing) continue;
    std::int64_t until_ns = 0;
    if (__builtin_sub_overflow(*expiry, now_ns, &until_ns)) {
      until_ns = *expiry < now_ns ? kIdleWaitNsMin : kIdleWaitNsMax;
    }
    const std::int64_t wait_ns = std::clamp(until_ns, kIdleWaitNsMin, kIdleWaitNsMax);
    if (writer_cv.wait_for(guard, std::chrono::nanoseconds(wait_ns)) == std::cv_status::timeout &&
        queue.empty()) {
      *expire_now = true;
      break;
    }
  }
  tasks->swap(queue);
  room_cv.notify_all();
}

void Ledger::Impl::publish_counts() {
  const proj::StateCounts now = state->counts();
  counts.next_seq.store(state->last_seq() + 1, std::memory_order_relaxed);
  counts.balances.store(now.balances, std::memory_order_relaxed);
  counts.open_holds.store(now.open_holds, std::memory_order_relaxed);
  counts.keys.store(now.keys, std::memory_order_relaxed);
}

void Ledger::Impl::handoff_locked() {
  publish_counts();
  io_batch = log->batch_empty() ? nullptr : log->seal();
  io_last_seq = log->next_seq() - 1;
  io_last_time_ns = state->last_timestamp_ns();
  TALLY_ASSERT(io_acks.empty());
  io_acks.swap(pending);
  io_busy = true;
  if (io_batch != nullptr) groups++;  // a hand-off of reads alone writes nothing
  io_cv.notify_one();
}

void Ledger::Impl::process(Task& task) {
  switch (task.kind) {
    case Task::Kind::command:
      process_command(task);
      return;
    case Task::Kind::read: {
      // A read looks at the clock afresh, and the commands after it are
      // stamped no earlier: a hold it finds due is due for them too.
      clock_reuses_left = 0;
      const std::int64_t now_ns = next_timestamp();
      Status status = failed.load() ? Status(ErrorCode::read_only, "the ledger failed a write; reopen it")
                                    : task.read(*state, now_ns);
      pending.push_back(Ack{{}, std::nullopt, std::move(task.read_done), std::move(status)});
      return;
    }
    case Task::Kind::expire: {
      Status status = failed.load() ? Status(ErrorCode::read_only, "the ledger failed a write; reopen it")
                                    : Status();
      if (status.ok()) expire_due(next_timestamp());
      pending.push_back(Ack{{}, std::nullopt, std::move(task.read_done), std::move(status)});
      return;
    }
  }
}

void Ledger::Impl::answer(Task& task, Result<Receipt> result) {
  pending.push_back(Ack{std::move(task.done), std::move(result), {}, Status()});
}

void Ledger::Impl::process_command(Task& task) {
  const Command& command = task.command;
  if (failed.load()) {
    return answer(task, Status(ErrorCode::read_only, "the ledger failed a write; reopen it"));
  }
  // The ops' shape now, and ttls under the least any ledger took (no limit
  // is past INT64_MAX); their ttls against today's limit once the key is
  // known to be new (check_ttls). A command malformed in shape was never
  // decided: it is refused naming its first bad op, a ttl included.
  if (!detail::validate(command, detail::Limits{.ops_after_hold = true}).ok() ||
      !detail::check_ttls(command, INT64_MAX).ok()) {
    return answer(task, detail::validate(command, detail::Limits{options.hold_ttl_ns_max}));
  }
  const std::uint64_t fingerprint = detail::fingerprint(command, &fingerprint_scratch);
  const std::int64_t now_ns = next_timestamp();
  expire_due(now_ns);

  log::Event event = event_of(command, fingerprint, now_ns);
  if (const proj::KeyRecord* record = state->find_key(command.key, now_ns)) {
    if (record->fingerprint != fingerprint) {
      // Too large for the log, a request is invalid on its face, under any
      // key (measured here only: a request decided before fitted).
      if (!largest_fits(command, event)) return answer(task, too_large());
      return answer(task, Status(ErrorCode::idempotency_conflict,
                                 "key was used for a different request at seq " +
                                     std::to_string(record->seq)));
    }
    detail::Decision recorded{record->reason, record->failed_index};
    return answer(task, detail::make_receipt(recorded, command, record->seq,
                                             record->timestamp_ns, true));
  }

  Status ttls = detail::check_ttls(command, options.hold_ttl_ns_max);
  if (!ttls.ok()) return answer(task, ttls);
  auto decision = detail::decide(command, *state, now_ns, &ops, &decide_scratch);
  if (!decision) return answer(task, decision.status());
  event.rejected = decision->reason;
  event.failed_index = decision->failed_index;
  event.ops = ops;
  std::span<const std::byte> payload = encoder.encode(event);
  const std::size_t payload_max = log::payload_bytes_max(options.segment_size_bytes);
  if (payload.size() + detail::event_growth_bytes_max(command) > payload_max) {
    if (!largest_fits(command, event)) return answer(task, too_large());
    payload = encoder.encode(event);
  }
  append(event, payload);
  answer(task, detail::make_receipt(*decision, command, event.seq, now_ns, false));
}

log::Event Ledger::Impl::event_of(const Command& command, std::uint64_t fingerprint,
                                   std::int64_t now_ns) const {
  log::Event event;
  event.seq = log->next_seq();
  event.timestamp_ns = now_ns;
  event.key = command.key;
  event.fingerprint = fingerprint;
  event.meta = log::Meta{command.meta.reason, command.meta.reference, command.meta.actor};
  event.batch = command.batch;
  return event;
}

bool Ledger::Impl::largest_fits(const Command& command, const log::Event& event) {
  log::Event largest = event;
  detail::largest_event_ops(command, &largest_ops);
  largest.ops = largest_ops;
  largest.rejected = log::Reason::insufficient;
  largest.failed_index = 0;
  return encoder.encode(largest).size() <= log::payload_bytes_max(options.segment_size_bytes);
}

Status Ledger::Impl::too_large() {
  return Status(ErrorCode::invalid, "request too large for the log's segment size");
}

void Ledger::Impl::expire_due(std::int64_t now_ns) {
  while (std::optional<proj::HoldInfo> hold = state->next_due_hold(now_ns)) {
    log::Op op;
    op.type = log::OpType::expire;
    op.hold = hold->id;
    op.subject = hold->subject;
    op.item = hold->item;
    op.qty = hold->qty;
    log::Event event;
    event.seq = log->next_seq();
    event.timestamp_ns = now_ns;
    event.ops = std::span<const log::Op>(&op, 1);
    append(event, encoder.encode(event));
  }
}

void Ledger::Impl::append(const log::Event& event, std::span<const std::byte> payload) {
  make_room(payload.size());
  const std::uint64_t seq = log->append(payload);
  TALLY_ASSERT(seq == event.seq);
  // The event was decided against this very state; a refusal is a bug.
  // decide() has just brought the slots in, so apply() without its
  // prefetches.
  Status applied = state->apply(event, proj::State::hash(event));
  if (!applied.ok()) {
    std::fprintf(stderr, "tally: %s\n", applied.to_string().c_str());
    TALLY_ASSERT(applied.ok());
  }
}

void Ledger::Impl::make_room(std::size_t payload_bytes) {
  if (log->has_room(payload_bytes)) return;
  std::unique_lock<std::mutex> guard(mu);
  writer_cv.wait(guard, [this] { return !io_busy; });
  handoff_locked();
  TALLY_ASSERT(log->has_room(payload_bytes));
}

bool Ledger::Impl::hold_came_due() const {
  const std::optional<std::int64_t> expiry = state->next_expiry_ns();
  return expiry && *expiry <= std::max(clock_reading_ns, state->last_timestamp_ns());
}

// Event timestamps never go backwards, whatever the clock does. Reading the
// clock costs a few percent of a small command, so within one batch of
// queued tasks a read serves up to kClockReuseMax more commands. Every task
// of a batch was queued before the writer took the batch, and the batch's
// first read comes after that: a stamp is never earlier than the request's
// arrival, and lags the writer by at most that many commands.
// Log time moves only with the events stamped by it: a reading ahead of the
// log that no event records (a read's, a replayed answer's) stamps nothing
// later on its own, so that the log, not what the process happened to see,
// decides what a later request finds (after a restart too).
std::int64_t Ledger::Impl::next_timestamp() {
  if (clock_reuses_left > 0) {
    clock_reuses_left--;
  } else {
    clock_reuses_left = kClockReuseMax;
    clock_reading_ns = clock->now_ns();
  }
  return std::max(clock_reading_ns, state->last_timestamp_ns());
}

// ---------------------------------------------------------------- I/O thread

void Ledger::Impl::io_main() {
  const bool sync_each = options.durability == Durability::sync;
  // At least 1 ms, and at most kWaitMax (a year): last_sync plus it must
  // not overflow the clock.
  const auto sync_interval =
      bounded_wait(std::chrono::milliseconds(std::max<std::int64_t>(options.sync_interval_ms, 1)));
  bool unsynced = false;
  auto last_sync = std::chrono::steady_clock::now();
  std::vector<Ack> acks;
  std::unique_lock<std::mutex> guard(mu);
  for (;;) {
    if (unsynced && options.durability == Durability::async) {
      io_cv.wait_until(guard, last_sync + sync_interval, [this] { return io_busy || io_stop; });
    } else {
      io_cv.wait(guard, [this] { return io_busy || io_stop; });
    }
    if (io_busy) {
      log::WriteBatch* batch = io_batch;
      const std::uint64_t last_seq = io_last_seq;
      const std::int64_t last_time_ns = io_last_time_ns;
      acks.swap(io_acks);
      guard.unlock();
      write_group(batch, &acks);
      if (batch != nullptr && !failed.load()) {
        publish_committed(last_seq, last_time_ns, options.durability != Durability::async);
      }
      unsynced = unsynced || (batch != nullptr && !sync_each);
      guard.lock();
      io_busy = false;
      writer_cv.notify_one();
      // Deliver outside the lock but after the writer may go on: the next
      // group waits for this thread anyway, so answers stay in order.
      guard.unlock();
      for (Ack& ack : acks) {
        if (ack.done) ack.done(std::move(*ack.result));
        if (ack.read_done) ack.read_done(std::move(ack.status));
      }
      acks.clear();
      guard.lock();
    }
    // Under async, once sync_interval passed; under none too, at close.
    const bool due = io_stop || (options.durability == Durability::async &&
                                 std::chrono::steady_clock::now() >= last_sync + sync_interval);
    if (unsynced && due && !failed.load()) {
      guard.unlock();
      // Every committed seq is written: this thread writes them.
      const std::uint64_t written = committed.load(std::memory_order_acquire);
      Status synced = log->sync();
      if (synced.ok()) {
        publish_durable(written);
      } else {
        fail(synced);
      }
      guard.lock();
      unsynced = false;
      last_sync = std::chrono::steady_clock::now();
    }
    if (io_stop && !io_busy) return;
  }
}

void Ledger::Impl::write_group(log::WriteBatch* batch, std::vector<Ack>* acks) {
  if (batch == nullptr || failed.load()) {
    // Not written, but handed back: the writer seals into it again.
    if (batch != nullptr) log->drop(batch);
    if (failed.load()) {
      // Decided after a group whose write failed: on a state holding its
      // events, which may never reach the log. No answer may rest on them:
      // not a success, nor a refusal (idempotency_conflict with a key only
      // that group used, invalid for a commit past a hold only it made).
      // Those decided once the failure was known say read_only already.
      for (Ack& ack : *acks) {
        if (ack.result && ack.result->code() != ErrorCode::read_only) {
          ack.result.emplace(Status(ErrorCode::io_error, "the ledger failed a write; outcome unknown"));
        }
        if (ack.read_done && ack.status.ok()) {
          ack.status = Status(ErrorCode::read_only,
                              "the ledger failed a write while this read ran; reopen it");
        }
      }
    }
    return;
  }
  Status written = log->write(batch, options.durability == Durability::sync);
  if (written.ok()) return;
  fail(written);
  // The outcome of every mutation in the group is unknown: the bytes may or
  // may not be on disk. Reopening the ledger tells.
  for (Ack& ack : *acks) {
    if (ack.result) ack.result.emplace(Status(ErrorCode::io_error, written.message()));
    if (ack.read_done) ack.status = Status(ErrorCode::io_error, written.message());
  }
}

void Ledger::Impl::publish_committed(std::uint64_t seq, std::int64_t time_ns, bool durable_too) {
  std::lock_guard<std::mutex> guard(committed_mu);
  committed_time_ns.store(time_ns, std::memory_order_relaxed);
  if (durable_too) durable.store(seq, std::memory_order_release);
  committed.store(seq, std::memory_order_release);
  committed_cv.notify_all();
}

void Ledger::Impl::publish_durable(std::uint64_t seq) {
  std::lock_guard<std::mutex> guard(committed_mu);
  durable.store(seq, std::memory_order_release);
  committed_cv.notify_all();
}

void Ledger::Impl::fail(const Status& status) {
  std::lock_guard<std::mutex> guard(failure_mu);
  if (failed.exchange(true)) return;
  failure = status;
  std::fprintf(stderr, "tally: the ledger is read-only after a failed write: %s\n",
               status.to_string().c_str());
}

// ---------------------------------------------------------------- public API

void Ledger::submit(Command command, Completion done) {
  Task task;
  task.command = std::move(command);
  task.done = std::move(done);
  if (const Status queued = impl_->enqueue(task); !queued.ok() && task.done) task.done(queued);
}

Result<Receipt> Ledger::execute(Command command) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  return await_answer<Result<Receipt>>([&](Completion done) { submit(std::move(command), std::move(done)); });
}

void Ledger::submit_balance(std::string subject, std::string item, std::function<void(Result<Balance>)> done) {
  if (!done) return;  // a read nobody hears
  const Status valid = detail::check_pair(subject, item);
  if (!valid.ok()) return done(valid);
  impl_->submit_state_read<Balance>(
      [subject = std::move(subject), item = std::move(item)](const proj::State& state, std::int64_t now_ns,
                                                            Balance* balance) {
        *balance = read_balance(state, subject, item, now_ns);
        return Status();
      },
      std::move(done));
}

void Ledger::submit_list(std::string subject, std::function<void(Result<std::vector<ItemBalance>>)> done) {
  if (!done) return;
  const Status valid = detail::check_subject(subject);
  if (!valid.ok()) return done(valid);
  impl_->submit_state_read<std::vector<ItemBalance>>(
      [subject = std::move(subject)](const proj::State& state, std::int64_t now_ns,
                                     std::vector<ItemBalance>* items) {
        read_list(state, subject, now_ns, items);
        return Status();
      },
      std::move(done));
}

void Ledger::submit_hold_info(HoldId id, std::function<void(Result<HoldView>)> done) {
  if (!done) return;
  impl_->submit_state_read<HoldView>(
      [id](const proj::State& state, std::int64_t now_ns, HoldView* view) {
        std::optional<proj::HoldInfo> hold = state.find_hold(id, now_ns);
        if (!hold) return Status(ErrorCode::not_found, "no hold " + std::to_string(id));
        *view = hold_view(*hold, now_ns);
        return Status();
      },
      std::move(done));
}

Result<Balance> Ledger::balance(std::string_view subject, std::string_view item) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  return await_answer<Result<Balance>>([&](auto done) { submit_balance(std::string(subject), std::string(item), done); });
}

Result<std::vector<ItemBalance>> Ledger::list(std::string_view subject) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  return await_answer<Result<std::vector<ItemBalance>>>([&](auto done) { submit_list(std::string(subject), done); });
}

Result<HoldView> Ledger::hold_info(HoldId id) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  return await_answer<Result<HoldView>>([&](auto done) { submit_hold_info(id, done); });
}

Status Ledger::expire_due() {
  return impl_->run_read({}, true);
}

LedgerStats Ledger::stats() {
  LedgerStats stats = impl_->open_stats;
  const log::LogWriterStats log_stats = impl_->log->stats();
  stats.syncs = log_stats.syncs;
  stats.log_bytes_written = log_stats.bytes_written;
  stats.sync_ns = log_stats.sync_ns;
  stats.group_events = log_stats.write_records;
  stats.next_seq = impl_->counts.next_seq.load(std::memory_order_relaxed);
  stats.balances = impl_->counts.balances.load(std::memory_order_relaxed);
  stats.open_holds = impl_->counts.open_holds.load(std::memory_order_relaxed);
  stats.keys = impl_->counts.keys.load(std::memory_order_relaxed);
  // Read-only after a failed write, the state may hold events the log does
  // not: the log goes up to what was committed.
  if (read_only()) stats.next_seq = impl_->committed.load(std::memory_order_acquire) + 1;
  if (impl_->archivist != nullptr) {
    const ArchivistStats archive = impl_->archivist->stats();
    stats.history_seq = archive.history_seq;
    stats.snapshots_written = archive.snapshots_written;
    stats.last_snapshot_seq = archive.last_snapshot_seq;
    stats.last_snapshot_seconds = archive.last_snapshot_seconds;
    stats.archivist_failed = !archive.failure.ok();
    stats.history_failed = !archive.history_failure.ok();
    stats.snapshots_failed = !archive.snapshot_failure.ok();
    stats.archivist_retrying = !archive.retrying.ok();
  }
  if (const std::uint64_t seq = impl_->close_snapshot_seq.load(std::memory_order_acquire)) {
    stats.snapshots_written++;
    stats.last_snapshot_seq = seq;
    stats.last_snapshot_seconds = impl_->close_snapshot_seconds.load(std::memory_order_relaxed);
  }
  stats.read_only = read_only();
  stats.log_checked = impl_->log_checked.load();
  stats.log_damaged = impl_->log_damaged.load();
  stats.log_scrubs = impl_->log_scrubs.load();
  std::lock_guard<std::mutex> guard(impl_->mu);
  stats.groups = impl_->groups;
  return stats;
}

Status Ledger::close() {
  Impl& impl = *impl_;
  if (impl.on_own_thread()) {
    return Status(ErrorCode::invalid,
                  "close() called from a completion, on a thread it would wait for: close "
                  "the ledger from another thread");
  }
  if (backing_up_on_this_thread(&impl)) {
    return Status(ErrorCode::invalid,
                  "close() called from a backup's progress, on the thread of the backup it "
                  "would wait for: close the ledger from another thread");
  }
  std::lock_guard<std::mutex> closing(impl.close_mu);
  if (impl.closed) {
    // Again the first close()'s answer: a failed write stays failed.
    std::lock_guard<std::mutex> guard(impl.failure_mu);
    return impl.failure;
  }
  impl.closed = true;
  impl.closing_began.store(true);
  {
    // A backup stops at its next MiB (of a store's copy or the log's) or
    // event.
    std::unique_lock<std::mutex> guard(impl.backup_mu);
    impl.backups_cancelled.store(true);
    impl.backup_cv.wait(guard, [&] { return impl.backups_running == 0; });
  }
  {
    std::lock_guard<std::mutex> guard(impl.mu);
    impl.closing = true;
  }
  impl.writer_cv.notify_all();
  impl.room_cv.notify_all();
  {
    std::lock_guard<std::mutex> guard(impl.check_mu);
    impl.check_cancelled.store(true);
  }
  impl.check_cv.notify_all();
  if (impl.check_thread.joinable()) impl.check_thread.join();
  // After an open that failed part way, either may never have started (the
  // I/O thread only after the writer, which stops it as it exits).
  if (impl.writer_thread.joinable()) impl.writer_thread.join();
  if (impl.io_thread.joinable()) impl.io_thread.join();
  {
    std::lock_guard<std::mutex> guard(impl.committed_mu);
    impl.committed_closed = true;
  }
  impl.committed_cv.notify_all();
  // Every event is durable now (the I/O thread synced as it stopped).
  if (impl.archivist != nullptr) impl.archivist->stop();
  if (impl.options.snapshot_due_at_close) impl.take_due_snapshot();
  impl.lock.reset();
  std::lock_guard<std::mutex> guard(impl.failure_mu);
  return impl.failure;
}

bool Ledger::read_only() const { return impl_->failed.load(); }

Result<std::uint64_t> Ledger::digest() {
  std::uint64_t digest = 0;
  TALLY_TRY(impl_->run_read([&](const proj::State& state, std::int64_t) {
    digest = state.digest();
    return Status();
  }, false));
  return digest;
}

std::uint64_t Ledger::ledger_id() const {
  std::uint64_t id = impl_->ledger_id.load(std::memory_order_relaxed);
  if (id != 0) return id;
  // A header being written does not verify: 0 again, until it is whole.
  auto read = log::read_log_id(*impl_->fs, log_dir(impl_->options.data_dir));
  if (read) impl_->ledger_id.store(id = *read, std::memory_order_relaxed);
  return id;
}

std::uint64_t Ledger::committed_seq() {
  return impl_->committed.load(std::memory_order_acquire);
}

Ledger::Committed Ledger::wait_committed(std::uint64_t after, std::chrono::milliseconds timeout) {
  return impl_->wait_past(impl_->committed, after, timeout);
}

std::uint64_t Ledger::durable_seq() { return impl_->durable.load(std::memory_order_acquire); }

Ledger::Committed Ledger::wait_durable(std::uint64_t after, std::chrono::milliseconds timeout) {
  return impl_->wait_past(impl_->durable, after, timeout);
}

Ledger::Committed Ledger::Impl::wait_past(const std::atomic<std::uint64_t>& seq,
                                          std::uint64_t after, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> guard(committed_mu);
  // From a completion the seq cannot move while it waits: it would wait
  // for itself (and hold up the ledger) until the timeout.
  if (!on_own_thread()) {
    committed_cv.wait_for(guard, bounded_wait(timeout),
                          [&] { return seq.load() > after || committed_closed; });
  }
  return Committed{seq.load(), committed_closed};
}

const std::string& Ledger::data_dir() const { return impl_->options.data_dir; }

log::FileSystem& Ledger::file_system() const { return *impl_->fs; }

Status Ledger::Impl::check_open() const {
  if (closing_began.load()) return Status(ErrorCode::closed, "the ledger is closed");
  return Status();
}

PointInTimeSource Ledger::Impl::point_in_time_source(AsOf at) {
  PointInTimeSource source;
  source.data_dir = options.data_dir;
  source.fs = fs;
  source.state_options = state_options;
  source.snapshots = &snapshots;
  // An index is read once the archivist has walked its pages, and not
  // again once it found it damaged.
  const bool readable = archivist != nullptr && history != nullptr &&
                        archivist->history_readable(kHistoryWaitMax);
  source.history = readable ? history.get() : nullptr;
  source.last_seq = committed.load(std::memory_order_acquire);
  // The archivist follows the durable log closely; wait for it rather
  // than replay, unless it is far behind, or the target is past the
  // durable log and the next sync (under async) further off than the wait.
  if (archivist != nullptr && source.history != nullptr && !history_covers(source, at)) {
    const std::uint64_t target = at.kind == AsOf::Kind::seq ? std::min(at.seq, source.last_seq)
                                                            : source.last_seq;
    const bool synced_soon = target <= durable.load(std::memory_order_acquire) ||
                             options.sync_interval_ms < kHistoryWaitMax.count();
    if (synced_soon &&
        target - std::min(target, archivist->stats().history_seq) <= kHistoryWaitLagMax) {
      archivist->wait_history(target, kHistoryWaitMax);
    }
  }
  return source;
}

void Ledger::Impl::note_point_in_time(const PointInTimeRead& read) {
  if (read.skipped_snapshots.empty() && read.index_damage.ok()) return;
  std::vector<snap::SkippedSnapshot> first_seen;
  bool index_damage_first_seen = false;
  {
    std::lock_guard<std::mutex> guard(noted_mu);
    for (const snap::SkippedSnapshot& skipped : read.skipped_snapshots) {
      if (noted_snapshots.insert(skipped.seq).second) first_seen.push_back(skipped);
    }
    if (!read.index_damage.ok() && !noted_index_damage) {
      noted_index_damage = index_damage_first_seen = true;
    }
  }
  warn_skipped_snapshots(first_seen);
  if (index_damage_first_seen) {
    std::fprintf(stderr,
                 "tally: the history index is damaged (%s); point-in-time reads answer from the "
                 "log instead\n",
                 read.index_damage.to_string().c_str());
  }
}

// The point-in-time reads may wait for the history projection, which
// follows what the ledger's threads write: from a completion they are
// refused as every blocking call is.
Result<Balance> Ledger::balance(std::string_view subject, std::string_view item, AsOf at) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  TALLY_TRY(detail::check_pair(subject, item));
  TALLY_TRY(impl_->check_open());
  if (at.kind == AsOf::Kind::time) {
    auto now = impl_->state_at<Balance>(
        at.time_ns, [subject, item](const proj::State& state, std::int64_t time_ns, Balance* out) {
          *out = read_balance(state, subject, item, time_ns);
        });
    if (now) return *now;
  }
  return impl_->read_at(at, [&](const PointInTimeSource& source, PointInTimeRead* read) {
    return balance_at(source, subject, item, at, read);
  });
}

Result<HoldView> Ledger::hold_info(HoldId hold, AsOf at) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  TALLY_TRY(impl_->check_open());
  return impl_->read_at(at, [&](const PointInTimeSource& source, PointInTimeRead* read) {
    return hold_at(source, hold, at, read);
  });
}

Result<std::vector<ItemBalance>> Ledger::list(std::string_view subject, AsOf at) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  TALLY_TRY(detail::check_subject(subject));
  TALLY_TRY(impl_->check_open());
  if (at.kind == AsOf::Kind::time) {
    auto now = impl_->state_at<std::vector<ItemBalance>>(
        at.time_ns, [subject](const proj::State& state, std::int64_t time_ns,
                              std::vector<ItemBalance>* items) {
          read_list(state, subject, time_ns, items);
        });
    if (now) return std::move(*now);
  }
  return impl_->read_at(at, [&](const PointInTimeSource& source, PointInTimeRead* read) {
    return list_at(source, subject, at, read);
  });
}

Status Ledger::for_each_balance(AsOf at, const std::function<void(std::string_view subject, std::string_view item, Balance balance)>& visit) {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  TALLY_TRY(impl_->check_open());
  return impl_->read_at(at, [&](const PointInTimeSource& source, PointInTimeRead* read) {
    return for_each_at(source, at, visit, read);
  });
}

Result<std::uint64_t> Ledger::snapshot_now() {
  if (impl_->on_own_thread()) return detail::blocking_in_completion();
  TALLY_TRY(impl_->check_open());
  if (impl_->archivist == nullptr || !snapshots_enabled(archivist_options(impl_->options))) {
    return Status(ErrorCode::invalid, "snapshots are off for this ledger");
  }
  return impl_->archivist->snapshot_now(kSnapshotTimeout);
}

Result<BackupReport> Ledger::backup(const std::string& out_dir, const BackupProgress& progress) {
  Impl& impl = *impl_;
  if (impl.on_own_thread()) return detail::blocking_in_completion();
  {
    std::lock_guard<std::mutex> guard(impl.backup_mu);
    if (impl.backups_cancelled.load()) return Status(ErrorCode::closed, "the ledger is closed");
    impl.backups_running++;
  }
  // close() waits for this to return before it stops anything; a close()
  // from the progress callback, on this thread, would wait for itself.
  struct Running {
    Impl& impl;
    BackupFrame frame{&impl, backups_on_this_thread};
    explicit Running(Impl& impl_in) : impl(impl_in) { backups_on_this_thread = &frame; }
    Running(const Running&) = delete;
    Running& operator=(const Running&) = delete;
    ~Running() {
      backups_on_this_thread = frame.outer;
      std::lock_guard<std::mutex> guard(impl.backup_mu);
      impl.backups_running--;
      impl.backup_cv.notify_all();
    }
  } running(impl);
  detail::StoreCopies copies;
  copies.snapshots = [&impl](const std::string& to,
                             const snap::CopyProgress& keep_going) -> Status {
    std::lock_guard<std::mutex> guard(impl.snapshots.mu);
    if (impl.snapshots.failed) {
      return Status(ErrorCode::corrupt, "the store was found damaged and set aside");
    }
    if (impl.snapshots.store == nullptr) return Status(ErrorCode::not_found, "no store");
    TALLY_TRY(impl.snapshots.store->probe());
    return impl.snapshots.store->copy_to(to, keep_going);
  };
  copies.history = [&impl](const std::string& to,
                           const snap::CopyProgress& keep_going) -> Status {
    if (impl.history == nullptr) return Status(ErrorCode::not_found, "no index");
    if (impl.archivist != nullptr && impl.archivist->history_stopped()) {
      return Status(ErrorCode::corrupt, "the index was found damaged and set aside");
    }
    TALLY_TRY(impl.history->probe());
    // The copy reads every page, and LMDB trusts them: they are walked first.
    TALLY_TRY(impl.history->check_pages(&impl.backups_cancelled));
    return impl.history->copy_to(to, keep_going);
  };
  return detail::backup_data(impl.options.data_dir, out_dir, *impl.fs, copies, progress,
                             &impl.backups_cancelled);
}

Status Ledger::Impl::enqueue(Task& task) {
  // A completion's submit does not wait for room: the writer, which makes
  // it, may itself wait for the thread the completion runs on (to take a
  // full batch), and neither would go on. It queues past queue_depth_max,
  // up to kQueueDepthMaxLimit, and is refused busy beyond that (completions
  // that each submit more than one could otherwise grow it without end).
  const bool in_completion = on_own_thread();
  std::unique_lock<std::mutex> guard(mu);
  room_cv.wait(guard, [&] {
    return in_completion || queue.size() < options.queue_depth_max || closing;
  });
  if (closing) return Status(ErrorCode::closed, "the ledger is closed");
  if (queue.size() >= kQueueDepthMaxLimit) {
    return Status(ErrorCode::busy, "the queue holds " + std::to_string(kQueueDepthMaxLimit) +
                                       " commands: a completion's submit cannot wait for room");
  }
  queue.push_back(std::move(task));
  const bool was_empty = queue.size() == 1;
  guard.unlock();
  if (was_empty) writer_cv.notify_one();
  return Status();
}

void Ledger::Impl::submit_read(ReadFn read, ReadDone done, bool expire) {
  Task task;
  task.kind = expire ? Task::Kind::expire : Task::Kind::read;
  task.read = std::move(read);
  task.read_done = std::move(done);
  if (const Status queued = enqueue(task); !queued.ok()) task.read_done(queued);
}

Status Ledger::Impl::run_read(ReadFn read, bool expire) {
  if (on_own_thread()) return detail::blocking_in_completion();
  return await_answer<Status>([&](ReadDone done) { submit_read(std::move(read), std::move(done), expire); });
}

}  // namespace tally
