// EventFeed: the durable events of one Ledger's log, read from any seq.
// It serves the event feeds of `tally serve` (GET /v1/events, the binary
// protocol's follow stream); their consumers keep their own position and
// ask from it.
//
//   EventFeed feed(ledger.get());
//   FeedCursor cursor;                       // from seq 1
//   auto count = feed.read(&cursor, {}, [&](const log::Record& record) { ...; return Status(); });
//   if (count.ok() && *count == 0) feed.wait(cursor.next_seq - 1, deadline, on_commit);
//
// Reading: a LogTail (log/tail.h) from the cursor, bounded by
// Ledger::durable_seq(), so a reader never sees an event whose outcome is
// not acknowledged yet, nor bytes still in flight, nor (under async
// durability) one a crash of the system could still take back. Opening a tail at an
// arbitrary seq scans its segment from the start, so a cursor keeps the
// tail's position between reads, and poll() — for readers that keep only a
// seq, such as an HTTP client — finds the position in a small LRU cache
// keyed by next_seq: a consumer asking from where the last answer ended
// resumes there instead of rescanning.
//
// Waiting: one watcher thread waits on Ledger::wait_durable on behalf of
// every waiter and calls them back, so that the server's I/O threads never
// block on the ledger. Ledger::wait_durable cannot be interrupted, so the
// watcher waits in slices of kFeedWatchSliceMs, or to the nearest deadline:
// a waiter that comes meanwhile with an earlier deadline, and stop(), are
// noticed within one slice; commits at once. The slice is short, so that a
// long poll of a few ms is not held for long behind another's longer wait;
// the watcher wakes that often only while someone waits.
//
// Errors: corrupt and io_error from the log (LogTail), or what a visitor
// returned. A failed read leaves its cursor unchanged.
//
// Thread safety: every method may be called from any thread. Reads run
// concurrently, each with a tail of its own; a cursor belongs to one reader
// at a time. Ownership: borrows the Ledger, which must stay open until
// stop() (or the destructor) returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/ledger.h"
#include "log/reader.h"
#include "log/status.h"
#include "log/tail.h"

namespace tally {

inline constexpr std::size_t kFeedEventsMax = 1000;              // per read
inline constexpr std::size_t kFeedBytesMaxDefault = 256u << 10;  // payload bytes per read
inline constexpr std::size_t kFeedPositionsMax = 64;             // poll()'s cache
inline constexpr std::int64_t kFeedWatchSliceMs = 5;

struct FeedLimits {
  std::size_t events_max = kFeedEventsMax;  // 1..kFeedEventsMax
  // A read's events have at most this many payload bytes in all, or are
  // one event that alone has more: it always reads at least one event when
  // one is committed, so a batch is never much larger than its largest
  // event, which a client's answer limit takes.
  std::size_t bytes_max = kFeedBytesMaxDefault;
};

// Where a reader stands: the next seq it wants, and where the log holds it.
struct FeedCursor {
  std::uint64_t next_seq = 1;  // >= 1
  // Set by read(); used by the next read when it names next_seq.
  std::optional<log::TailPosition> position;
};

struct FeedStats {
  std::uint64_t tails_opened = 0;   // a segment scanned to reach a seq
  std::uint64_t tails_resumed = 0;  // a cursor's or a cached position reused
  std::uint64_t waiters = 0;        // waits not ended yet
};

class EventFeed {
 public:
  // Called for each record, in seq order; its payload is the Cap'n Proto
  // Event message of log/events.capnp (log::EventDecoder reads it), valid
  // during the call. An error ends the read with that error.
  using Visit = std::function<Status(const log::Record& record)>;
  // Called once per wait, with the durable seq at that moment.
  using Ready = std::function<void(std::uint64_t durable_seq)>;
  using WaiterId = std::uint64_t;
  using Deadline = std::chrono::steady_clock::time_point;

  // Starts the watcher thread; it sleeps while nobody waits. Throws
  // std::system_error when the thread cannot start (Server::serve, which
  // builds the feed, answers that with a Status).
  explicit EventFeed(Ledger* ledger);
  // stop().
  ~EventFeed();
  EventFeed(const EventFeed&) = delete;
  EventFeed& operator=(const EventFeed&) = delete;

  // Visits the committed records with seq >= cursor->next_seq: at most
  // limits.events_max of them, within limits.bytes_max payload bytes (at
  // least one). Advances the cursor past them and returns how many; 0
  // when nothing at or after cursor->next_seq is committed yet. A record
  // that cannot be read (damaged: corrupt), or that `visit` fails, ends
  // the read: after the records before it when there are some, so that a
  // reader gets every event up to it and the next read begins at it;
  // otherwise with its error. `visit` must leave nothing of a record it
  // fails.
  Result<std::size_t> read(FeedCursor* cursor, const FeedLimits& limits, const Visit& visit);

  // read() for a reader that keeps only a seq: the tail position comes from
  // the cache, and the position after the read goes back into it.
  Result<std::size_t> poll(std::uint64_t* next_seq, const FeedLimits& limits, const Visit& visit);

  // Calls `ready` once: as soon as durable_seq() > after, when `deadline`
  // passes, or when the wait is cancelled or the feed stops. It runs on the
  // watcher thread; on the calling thread when the wait is over at once
  // (then wait() returns 0) or is ended by cancel() or stop(). `ready` must
  // not block; it may call wait().
  WaiterId wait(std::uint64_t after, Deadline deadline, Ready ready);
  // Ends a wait now: its `ready` runs on this thread, unless it ran already.
  void cancel(WaiterId waiter);

  // Ends every wait, makes later waits end at once, joins the watcher
  // thread (within one slice). Reads still work. Idempotent; not from a
  // Ready. Once it returned, only read(), poll() and wait() use the Ledger:
  // a stopped feed may be destroyed after it.
  void stop();

  FeedStats stats();

 private:
  struct Waiter {
    std::uint64_t after = 0;
    Deadline deadline;
    Ready ready;
  };
  struct CachedPosition {
    log::TailPosition position;
    std::uint64_t last_used = 0;
  };

  void watch();
  // Removes the waiters that are done at `committed` and `now` into *due.
  void take_due_locked(std::uint64_t committed, Deadline now, std::vector<Ready>* due);
  std::optional<log::TailPosition> cached(std::uint64_t next_seq);
  void remember(const log::TailPosition& position);

  Ledger* ledger_;
  const std::string log_dir_;

  std::mutex mu_;  // guards everything below but the thread
  std::condition_variable cv_;
  std::map<WaiterId, Waiter> waiters_;  // bounded by the server's connections and follows
  WaiterId next_waiter_ = 1;
  bool stopping_ = false;
  bool ledger_closed_ = false;  // wait_durable said the ledger closed
  std::vector<CachedPosition> positions_;  // at most kFeedPositionsMax
  std::uint64_t use_clock_ = 0;
  FeedStats stats_;
  std::thread watcher_;
};

}  // namespace tally
