// The server's internals shared by the binary protocol (engine/server.cc)
// and HTTP (engine/http.cc). Not installed.
#pragma once

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>

#include "engine/feed.h"
#include "engine/ledger.h"
#include "engine/metrics.h"
#include "engine/server.h"

namespace tally::server_detail {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// A connection. Every method runs on the connection's strand.
class Session {
 public:
  virtual ~Session() = default;
  // Graceful stop: read no more requests, answer those in flight, close.
  virtual void begin_shutdown() = 0;
  // Closes now.
  virtual void close_now() = 0;
};

std::int64_t steady_now_ns();

// What a listener says of its failed accepts. Out of descriptors (EMFILE)
// or memory, an accept fails again at once for as long as it lasts, and a
// process at its limit whose connections come and go fails and recovers
// once for every connection that closes: a failure is said once a minute
// at most, with a count of those left unsaid, and the recovery once, after
// a failure that was said.
class AcceptNotes {
 public:
  static constexpr std::int64_t kIntervalNs = 60'000'000'000;

  // An accept failed at now_ns (a steady clock) for `why`, and is tried
  // again every `retry`: the line to log, or nothing.
  std::optional<std::string> failed(std::int64_t now_ns, const std::string& why,
                                    std::chrono::milliseconds retry);
  // An accept worked: whether to say that accepting works again.
  bool accepted();

 private:
  bool failing_ = false;                // a failure was said; no accept worked since
  std::optional<std::int64_t> said_ns_;  // when a failure was last said
  std::uint64_t unsaid_ = 0;            // failures since that were not said
};

// "HOST:PORT" of a connection's peer, as the accept gave it (a peer that
// resets the connection at once leaves no remote_endpoint() to ask), for
// the lines a session logs.
std::string peer_of(const tcp::endpoint& peer);

// Closes a connection whose peer reads nothing with a reset: the answers
// the system still holds for it are dropped, not kept (for minutes) in
// memory that no connection limit counts.
void close_abortively(tcp::socket& socket);

// The bytes the system holds to send on `socket` that the peer has not
// taken yet (SIOCOUTQ); -1 when the system cannot say.
std::int64_t unsent_bytes(tcp::socket& socket);

// Whether a peer takes the bytes the system holds for it. Its send buffer
// may hold megabytes: a peer that reads slowly drains it for longer than
// the idle timeout before a write finds room for its next piece, and a
// peer that reads none leaves what was written there. Each look() counts
// them (unsent_bytes); the peer took some when they are fewer than at the
// look before, provided nothing was written since (`written_ns`, when the
// connection last wrote, is not after that look).
class DrainWatch {
 public:
  enum class Seen {
    unknown,  // the system cannot say
    empty,    // the peer has taken every byte
    first,    // bytes wait, and no earlier look compares: look again
    took,     // fewer bytes wait than at the last look
    none,     // as many or more wait: the peer took none since
  };
  Seen look(std::int64_t unsent, std::int64_t now_ns, std::int64_t written_ns);

 private:
  std::int64_t unsent_ = -1;  // at the last look; -1: none
  std::int64_t looked_ns_ = 0;
};

// How long a first look at the bytes the peer has not taken waits for a
// second: a peer that reads at all, however slowly, takes some within it.
std::int64_t drain_probe_ns(std::int64_t idle_ns);

// The write-stall rule of both protocols. A write in progress moves while
// its pieces go to the system (*moved_ns: when one last did, or the write
// began) or while the peer takes what the system holds of it (`drain`; a
// look that sees some taken sets *moved_ns to now). Returns how long to
// wait before looking again, or 0 once the write has not moved for
// `idle_ns`: its peer reads none. `unsent` is unsent_bytes() of the
// connection's socket at `now_ns`.
std::int64_t look_at_write(DrainWatch& drain, std::int64_t unsent, std::int64_t now_ns,
                           std::int64_t idle_ns, std::int64_t* moved_ns);

// The idle rule of both protocols, for a connection that waits for its
// peer (*active_ns: since when) with no write in progress. Answers written
// whole may still wait in the system for the peer: the connection is idle
// once the peer has taken them, and stuck if it takes none. Returns how
// long to wait before looking again (the idle time left; a probe after a
// first look at bytes that wait; the whole idle time after a look that
// sees some taken, which sets *active_ns to now), 0 once the connection has
// been idle for `idle_ns` (close it), or -1 once its peer took none of the
// bytes waiting for it in that time (reset it as stuck). `unsent` is
// unsent_bytes() of the connection's socket at `now_ns`.
std::int64_t look_when_idle(DrainWatch& drain, std::int64_t unsent, std::int64_t now_ns,
                            std::int64_t idle_ns, std::int64_t* active_ns);

// The line a connection reset as stuck logs: its peer took no answer bytes
// for `idle_ms`, which the server's side had `what` ("written", "taken").
std::string stuck_reason(std::string_view what, std::int64_t idle_ms);

// A place among the kListsAtOnce lists the server runs at once. It is held
// from before the list runs until its answer is written or dropped: the
// last copy destroyed frees it.
using ListPass = std::shared_ptr<void>;

// Runs at most `places` lists at once; the others wait, in the order they
// came: at most one per connection (a binary one runs its next list once
// the answer of the one before is written; HTTP answers one request at a
// time), so the connection limits bound the wait. Thread-safe.
class ListGate {
 public:
  explicit ListGate(std::size_t places);
  // Calls `start` with a pass: at once when a place is free, else on the
  // thread that frees one, inside the destructor of the last copy of its
  // pass. So `start` must not wait long (handing the list to the Ledger
  // may wait for room in its queue, as any request does) nor drop its own
  // pass there: Core::list()'s answer is posted to the connection's strand.
  void enter(std::function<void(ListPass)> start);
  // Calls every waiting `start`, and from now on each at once, with a null
  // pass, which holds no place: the server is stopping, and a list that
  // waits for a place held by a peer that reads nothing would be answered
  // only when that peer is cut off.
  void stop();

 private:
  struct Places;
  std::shared_ptr<Places> places_;  // shared with every pass
};

// What every connection shares. Outlives every Session (Server::Impl
// destroys the io_context, and with it the sessions, first).
class Core {
 public:
  explicit Core(ServerOptions options);

  // Starts serving `ledger`: builds the event feed (its watcher thread),
  // then makes serving() true. Until then every request but GET /health
  // is answered `busy` (Core::starting()). Once, before begin_stop().
  // Throws std::system_error when the feed's thread cannot start.
  void serve(Ledger* ledger);
  bool serving() const { return ledger_.load(std::memory_order_acquire) != nullptr; }
  // What a request hears while the ledger is not served yet.
  static Status starting();
  // ledger() and feed() only once serving() was true.
  Ledger& ledger() { return *ledger_.load(std::memory_order_relaxed); }
  // The committed events, for GET /v1/events and the binary follow stream.
  // Its waits all end when the server begins to stop.
  EventFeed& feed() { return *feed_; }
  const ServerOptions& options() const { return options_; }
  Metrics& metrics() { return metrics_; }
  // Requests handed to the Ledger whose completion has not yet returned:
  // Server::stop() waits for none to be left before it destroys the Core.
  std::int64_t completing() const { return completing_.load(std::memory_order_acquire); }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  void log(std::string_view message) const;
  // Logs "PROTOCOL connection: WHAT (peer HOST:PORT)", at most
  // kConnectionLinesPerMinute such lines a minute. The line that reaches
  // the limit says so; the first one in a later minute says how many were
  // left out. WHAT may quote the peer: it is cut at kConnectionNoteBytesMax
  // and escaped (append_escaped).
  void log_connection(std::string_view protocol, std::string_view peer, std::string_view what);
  // True when no token is configured or `presented` matches it.
  bool token_ok(std::string_view presented) const;

  // How add_session() takes a connection. Each protocol has its own
  // connections_max, so that a flood of one (binary clients) never locks
  // out the other (GET /health); over HTTP's, kProbeConnectionsMax more are
  // probes (server.h).
  enum class Admission {
    refused,  // connections_max (and for HTTP the probes) are open, or stopping
    served,
    probe,
  };
  // Registers a session, or counts (tally_connections_rejected_total) and
  // logs (once a minute at most) its refusal.
  Admission add_session(const std::shared_ptr<Session>& session, Metrics::Protocol protocol,
                        std::uint64_t* id);
  // A probe's request was not for /health or /metrics: counted and logged
  // as a connection refused over connections_max.
  void refuse_probe();
  // A probe's request came: it keeps its place until it is answered.
  void probe_asked(std::uint64_t id);
  void remove_session(std::uint64_t id);

  // Submits a mutation; `done` runs on a ledger thread (post to a strand).
  void submit(Command command, std::function<void(Result<Receipt>)> done);
  // The reads of both protocols. `done` runs on a ledger or read-pool
  // thread (post to a strand). Current reads go to the ledger without
  // blocking a thread; point-in-time reads may block, so they run on the
  // read pool.
  void balance(std::string subject, std::string item, std::optional<AsOf> at,
               std::function<void(Result<Balance>)> done);
  // A list starts once the ListGate lets it; `done` gets the answer with
  // its pass, to hold until the answer is written.
  void list(std::string subject, std::optional<AsOf> at,
            std::function<void(Result<std::vector<ItemBalance>>, ListPass)> done);
  void hold_info(HoldId hold, std::optional<AsOf> at,
                 std::function<void(Result<HoldView>)> done);
  // The threads a blocking read runs on (ServerOptions::read_threads).
  enum class ReadPool {
    quick,          // the feed's pages, follow batches, GET /metrics
    point_in_time,  // reads as of a seq or time: they may replay the log
  };
  // Runs `read` on `pool` (it may block on the Ledger), then `done` there
  // too, with what it returned. `op` is for the metrics; Op::count records
  // nothing (GET /metrics itself). A point-in-time read still queued when
  // the server begins to stop is answered `closed` instead of run.
  template <class R>
  void read(Metrics::Op op, std::function<Result<R>()> read, std::function<void(Result<R>)> done,
            ReadPool pool = ReadPool::quick);
  // read() with `done` already counted by track().
  template <class R>
  void run_read(ReadPool pool, std::function<Result<R>()> read,
                std::function<void(Result<R>)> done);
  // Starts a non-blocking ledger read: `start` hands its callback to a
  // Ledger::submit_* call, which passes it what `done` then gets.
  template <class R>
  void query(Metrics::Op op, std::function<void(std::function<void(Result<R>)>)> start,
             std::function<void(Result<R>)> done);

  // For Server::stop().
  void begin_stop();
  // Waits until no sessions remain or the deadline passes; true: none remain.
  bool wait_sessions(std::chrono::steady_clock::time_point deadline);
  void close_sessions_now();
  void join_reads() {
    read_pool_.join();
    point_in_time_pool_.join();
  }

 private:
  void for_each_session(void (Session::*method)());
  // Counts a request in flight; the returned function records its outcome
  // and latency (nothing for Op::count), calls `done` and counts it out.
  template <class R>
  std::function<void(Result<R>)> track(Metrics::Op op, std::function<void(Result<R>)> done);

  const ServerOptions options_;
  Metrics metrics_;
  std::atomic<std::int64_t> completing_{0};
  // Set by serve(), the feed first. The feed is before read_pool_: reads
  // use it until the pool is joined.
  std::optional<EventFeed> feed_;
  std::atomic<Ledger*> ledger_{nullptr};
  asio::thread_pool read_pool_;
  asio::thread_pool point_in_time_pool_;
  ListGate lists_{kListsAtOnce};
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable sessions_cv_;
  struct Registered {
    std::weak_ptr<Session> session;
    Metrics::Protocol protocol;
    bool probe = false;
    bool idle = true;  // a probe that has sent no request, and keeps its place
  };
  // With every probe's place taken, the oldest idle probe, which is then
  // closed for a newer connection (marked not idle, so chosen once).
  std::shared_ptr<Session> idle_probe_locked();
  std::unordered_map<std::uint64_t, Registered> sessions_;
  std::array<std::size_t, static_cast<std::size_t>(Metrics::Protocol::count)> open_{};
  std::size_t probes_open_ = 0;  // HTTP probes, beside open_[http]
  std::uint64_t next_session_id_ = 1;
  // Counts a connection refused over connections_max. Under mu_; returns
  // the line to log once mu_ is released (empty: none, it was said less
  // than a minute ago), so that a slow log sink never holds mu_.
  // `probe_admitted`: a probe took the refused one's place (the probes are
  // still answered, though all their places are taken).
  std::string count_refused_locked(Metrics::Protocol protocol, bool probe_admitted = false);
  // Of each protocol, connections refused over connections_max since the
  // last line that said so, and when that was (steady ns; 0: never). Under
  // mu_.
  static constexpr std::int64_t kRefusedNoteNs = 60'000'000'000;
  std::array<std::uint64_t, static_cast<std::size_t>(Metrics::Protocol::count)> refused_{};
  std::array<std::int64_t, static_cast<std::size_t>(Metrics::Protocol::count)> refused_noted_ns_{};
  // log_connection()'s minute: when it began (steady ns; 0: none yet), the
  // lines logged in it and those left out. Under log_mu_.
  std::mutex log_mu_;
  std::int64_t connection_minute_ns_ = 0;
  std::uint64_t connection_lines_ = 0;
  std::uint64_t connection_lines_left_out_ = 0;
};

template <class R>
std::function<void(Result<R>)> Core::track(Metrics::Op op, std::function<void(Result<R>)> done) {
  metrics_.inflight_add(1);
  completing_.fetch_add(1, std::memory_order_relaxed);
  const std::int64_t start_ns = steady_now_ns();
  return [this, op, start_ns, done = std::move(done)](Result<R> result) mutable {
    if (op != Metrics::Op::count) {
      std::size_t slot = Metrics::outcome_slot(Outcome::ok);
      if (!result) {
        slot = Metrics::error_slot(result.code());
      } else if constexpr (std::is_same_v<R, Receipt>) {
        slot = Metrics::outcome_slot(result->outcome);
        if (result->replay) metrics_.replayed(op);
      }
      metrics_.record(op, slot, steady_now_ns() - start_ns);
    }
    // Out of the queue depth before the answer can reach the client: one
    // that has it and scrapes at once must not see its request counted.
    metrics_.inflight_add(-1);
    // `done` may hold the last reference to its session, whose destructor
    // counts in the metrics: destroy it here, while Server::stop() still
    // waits for this request, not later on a ledger thread.
    {
      auto finish = std::move(done);
      finish(std::move(result));
    }
    completing_.fetch_sub(1, std::memory_order_acq_rel);
  };
}

template <class R>
void Core::read(Metrics::Op op, std::function<Result<R>()> read,
                std::function<void(Result<R>)> done, ReadPool pool) {
  run_read(pool, std::move(read), track(op, std::move(done)));
}

template <class R>
void Core::run_read(ReadPool pool, std::function<Result<R>()> read,
                    std::function<void(Result<R>)> done) {
  if (pool == ReadPool::quick) {
    asio::post(read_pool_, [read = std::move(read), done = std::move(done)] { done(read()); });
    return;
  }
  asio::post(point_in_time_pool_, [this, read = std::move(read), done = std::move(done)] {
    if (stopping()) return done(Status(ErrorCode::closed, "the server is stopping"));
    done(read());
  });
}

template <class R>
void Core::query(Metrics::Op op, std::function<void(std::function<void(Result<R>)>)> start,
                 std::function<void(Result<R>)> done) {
  start(track(op, std::move(done)));
}

// Takes over an accepted socket (whose executor is a strand) from `peer`
// (peer_of).
void start_binary_session(Core& core, tcp::socket socket, std::string peer);
void start_http_session(Core& core, tcp::socket socket, std::string peer);

// What both start_*_session do: register a new SessionType (constructed
// from the core, the socket and the peer, with start(id, probe) and
// close_now()), or
// refuse it when the server is full or stopping. Both on the session's
// strand, not the acceptor's: once registered, a stop may post to the
// session, and with several I/O threads its handler would otherwise run
// beside start(), on the same socket and timers.
template <class SessionType>
void start_session(Core& core, tcp::socket socket, std::string peer, Metrics::Protocol protocol) {
  core.metrics().connection_opened(protocol);
  const auto strand = socket.get_executor();
  auto session = std::make_shared<SessionType>(core, std::move(socket), std::move(peer));
  asio::post(strand, [&core, session = std::move(session), protocol] {
    std::uint64_t id = 0;
    const Core::Admission admission = core.add_session(session, protocol, &id);
    if (admission == Core::Admission::refused) return session->close_now();
    session->start(id, admission == Core::Admission::probe);
  });
}

}  // namespace tally::server_detail
