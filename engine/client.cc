#include "engine/client.h"

#include <algorithm>
#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "engine/address.h"
#include "engine/clock.h"
#include "engine/decide.h"
#include "engine/event_format.h"
#include "engine/server.h"
#include "log/thread.h"

namespace tally {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

Status client_closed() { return Status(ErrorCode::closed, "the client is closed"); }

using ResponseDone = std::function<void(Result<wire::Response>)>;

struct Pending {
  std::string frame;  // the encoded request, sent again after a reconnect
  ResponseDone done;
  int attempts = 0;
  // Queued for a connection at least once: the server may have it, so its
  // outcome is unknown if the client closes before the answer.
  bool written = false;
  // A follow: `done` runs for each batch and the entry stays until the
  // follow ends; `frame` is re-encoded after each batch, so that a resend
  // continues after the last batch delivered.
  bool follow = false;
  bool cancelled = false;
  // A follow's request; nullptr for the rest, which keep only their frame
  // (a Request is large, and every in-flight mutation has a Pending).
  std::unique_ptr<wire::Request> request;
  // When it was last queued for a connection: its answer is due
  // answer_timeout_ms later.
  std::chrono::steady_clock::time_point sent_at;
};

// The response a follow ends with after a cancel.
wire::Response follow_end() {
  wire::Response response;
  response.kind = wire::Response::Kind::events;
  response.end = true;
  return response;
}

Status io_status(std::string_view what, const boost::system::error_code& ec) {
  return Status(ErrorCode::io_error, std::string(what) + ": " + ec.message());
}

// Reads from `socket` until `reader` has a whole frame; decodes it.
Result<wire::Response> read_response(tcp::socket& socket, wire::FrameReader& reader) {
  while (true) {
    auto frame = reader.next();
    if (!frame) return frame.status();
    if (!frame->empty()) return wire::decode_response(*frame);
    const std::span<std::byte> space = reader.space();
    boost::system::error_code ec;
    const std::size_t bytes = socket.read_some(asio::buffer(space.data(), space.size()), ec);
    if (ec) return io_status("read", ec);
    reader.commit(bytes);
  }
}

// Runs `io` until `done` or the deadline. Past the deadline, or once
// `cancelled`, closes the socket and runs the aborted handler, so that
// nothing is left pending on `io`: false.
bool run_until(asio::io_context& io, tcp::socket& socket,
               std::chrono::steady_clock::time_point deadline, const bool& done,
               const std::atomic<bool>& cancelled) {
  io.restart();
  while (!done) {
    // close() sets `cancelled`, then stops `io` to end a wait under way.
    if (cancelled.load() || (io.run_one_until(deadline) == 0 && !done)) {
      boost::system::error_code ignored;
      socket.close(ignored);
      io.restart();
      io.run();
      return false;
    }
  }
  return true;
}

Result<Receipt> to_receipt(Result<wire::Response>& response) {
  if (!response) return response.status();
  if (response->kind == wire::Response::Kind::error) return response->error;
  if (response->kind != wire::Response::Kind::receipt) {
    return Status(ErrorCode::invalid, "the server answered a mutation with something else");
  }
  return std::move(response->receipt);
}

// The answer of `kind` in a read's response, or the error it carries.
template <class T, class Extract>
Result<T> read_answer(Result<wire::Response>& response, wire::Response::Kind kind,
                      const Extract& extract) {
  if (!response) return response.status();
  if (response->kind == wire::Response::Kind::error) return response->error;
  if (response->kind != kind) return Status(ErrorCode::invalid, "unexpected response kind");
  return extract(*response);
}

// Whether a batch has ops after a hold, which validate() leaves to the
// server when it does not know the server's ttl limit.
bool has_ops_after_hold(const Command& command) {
  if (!command.batch) return false;
  for (std::size_t index = 0; index + 1 < command.ops.size(); index++) {
    if (command.ops[index].type == OpType::hold) return true;
  }
  return false;
}

// A round of failing requests (Client::Impl::fail): the client, and the
// round's number, unique in the process (a client made later at the same
// address does not take an earlier one's rounds for its own).
struct FailingRound {
  const void* client = nullptr;
  std::uint64_t round = 0;
};
std::atomic<std::uint64_t> failing_rounds_begun{0};
// The round whose handlers this thread runs.
thread_local FailingRound running_round;
// The round that failed this thread's last blocking call: its caller has
// heard of that round's failures (Client::Impl::send).
thread_local FailingRound heard_round;

// Waits for what submitting with a completion delivers; from one of the
// client's own threads (a completion) that would wait for itself.
template <class T, class Submit>
Result<T> wait_for(bool own_thread, const Submit& submit) {
  if (own_thread) return detail::blocking_in_completion();
  std::promise<Result<T>> answer;
  auto future = answer.get_future();
  FailingRound failed_in;  // set before the promise, read after it
  submit([&answer, &failed_in](Result<T> result) {
    failed_in = running_round;
    answer.set_value(std::move(result));
  });
  Result<T> result = future.get();
  if (failed_in.client != nullptr) heard_round = failed_in;
  return result;
}

wire::Request balance_request(std::string subject, std::string item, std::optional<AsOf> at) {
  wire::Request request;
  request.kind = wire::Request::Kind::balance;
  request.subject = std::move(subject);
  request.item = std::move(item);
  request.as_of = at;
  return request;
}

wire::Request list_request(std::string subject, std::optional<AsOf> at) {
  wire::Request request;
  request.kind = wire::Request::Kind::list;
  request.subject = std::move(subject);
  request.as_of = at;
  return request;
}

wire::Request hold_request(HoldId hold, std::optional<AsOf> at) {
  wire::Request request;
  request.kind = wire::Request::Kind::hold_info;
  request.hold = hold;
  request.as_of = at;
  return request;
}

Balance balance_of(wire::Response& response) { return response.balance; }
std::vector<ItemBalance> items_of(wire::Response& response) { return std::move(response.items); }
HoldView hold_of(wire::Response& response) { return std::move(response.hold); }


}  // namespace

struct Client::Impl {
  explicit Impl(ClientOptions options_in)
      : options(std::move(options_in)), ledger_id(options.ledger_id) {}

  // Connects (with retries, waiting without the lock between them) and
  // sends every unanswered request again.
  Status connect_locked(std::unique_lock<std::mutex>& guard);
  // One attempt to connect and say hello, within connect_timeout_ms. Runs
  // without the lock: after Client::connect only the reader thread
  // connects, so nothing else uses `io` meanwhile. *served: the ledger id
  // the hello's answer gave.
  Result<std::unique_ptr<tcp::socket>> connect_once(std::uint64_t* served);
  // Fails every unanswered request: sent ones with `sent`, the rest (and
  // follows) with `unsent`; ends the follows cancelled meanwhile. Unlocks
  // to run the handlers.
  void fail_all_locked(std::unique_lock<std::mutex>& guard, const Status& sent,
                       const Status& unsent);
  // Sends `request` with a fresh id (returned); `follow` marks a stream.
  std::uint64_t send(wire::Request request, ResponseDone done, bool follow = false);
  // Queues frame bytes for the writer thread.
  void write_locked(std::string_view frame);
  // Waits until the writer thread is not writing to the socket.
  void wait_writer_idle_locked(std::unique_lock<std::mutex>& guard);
  // Queues a request's frame for the connection, its answer due from now.
  void write_request_locked(Pending& request);
  // When the oldest request sent and not answered is overdue:
  // time_point::max() when there is none, no connection or no timeout.
  std::chrono::steady_clock::time_point answer_due_locked() const;
  void reader_main();
  void writer_main();
  // close() has begun.
  bool is_closing();
  // closed, or invalid for a read that names what no mutation can write:
  // answered at once, unsent.
  Status refuse_read(const wire::Request& request);
  // Drops the connection once an answer is overdue (answer_timeout_ms).
  void watchdog_main();
  // Sends a read; `done` gets its answer of `kind` on the reader thread,
  // or at once, on this one, when the client is closed or the read names
  // what no mutation can write (as the Ledger answers it).
  template <class T, class Extract>
  void submit_read(wire::Request request, wire::Response::Kind kind, Extract extract,
                   std::function<void(Result<T>)> done) {
    if (!done) return;  // a read nobody hears
    if (Status refused = refuse_read(request); !refused.ok()) return done(std::move(refused));
    send(std::move(request),
         [kind, extract, done = std::move(done)](Result<wire::Response> response) {
           done(read_answer<T>(response, kind, extract));
         });
  }
  // Hands the answers to one read's frames to their handlers.
  Status deliver(std::vector<wire::Response>* responses);
  bool take_batch(Pending& entry, const wire::Response& response, ResponseDone* deliver);
  // `link_failed`: the connection failed (io_error: it ended, reset, or
  // timed out), rather than the client refusing what the server sent.
  void on_connection_lost_locked(std::unique_lock<std::mutex>& guard,
                                 std::vector<ResponseDone>* failed, bool link_failed);
  // Removes a pending request, keeping follows_pending.
  std::map<std::uint64_t, Pending>::iterator erase_pending(
      std::map<std::uint64_t, Pending>::iterator entry);
  // Runs the handlers of failing round `round` (running_round).
  void fail(std::vector<ResponseDone> failed, const Status& why, std::uint64_t round);
  // Runs the on_end of every follow in `ended`, without the lock.
  void end_cancelled_locked(std::unique_lock<std::mutex>& guard);
  // Sets `failing` and counts the round: its number.
  std::uint64_t begin_failing_locked();
  // fail(), without the lock; meanwhile `failing` (send()).
  void fail_locked(std::unique_lock<std::mutex>& guard, std::vector<ResponseDone> failed,
                   const Status& why);

  ClientOptions options;
  // The ledger its server must serve: options.ledger_id, else the first
  // connection's. Written only by the thread that connects.
  std::atomic<std::uint64_t> ledger_id;
  std::string host;
  std::uint16_t port = 0;
  asio::io_context io;
  std::mutex mu;
  std::condition_variable cv;
  std::unique_ptr<tcp::socket> socket;  // replaced only while !connected
  bool connected = false;
  bool closing = false;
  // Set by close(), read without the lock: a connection attempt under way
  // gives up rather than make close() wait out connect_timeout_ms.
  std::atomic<bool> connect_cancelled{false};
  // Handlers of failed requests are running. A request another thread
  // sends meanwhile fails at once, unless its caller's blocking call failed
  // in this round (heard_round): it may not have heard of the failures
  // yet, and it must not be delivered after them.
  bool failing = false;
  std::uint64_t failing_round = 0;  // the last one begun (FailingRound::round)
  // Rounds begun by this client: a caller that waited for room in send()
  // while one began was submitting when requests before it failed.
  std::uint64_t rounds_begun = 0;
  std::uint64_t next_id = 1;
  std::map<std::uint64_t, Pending> pending;  // by id: resent in the order sent
  // The follows among them, which do not count against inflight_max.
  std::size_t follows_pending = 0;
  // The handlers of follows cancelled while the connection was down: no
  // server will end them, and they are not sent again. The reader thread
  // runs them (follow()'s callbacks run there), while it reconnects.
  std::vector<ResponseDone> ended;
  // Frames queued for the writer thread, which sends all that are queued in
  // one write: a pipelining caller costs one syscall per burst.
  std::string out;
  bool writing = false;  // the writer thread is in a write to *socket
  std::condition_variable writer_cv;
  // The watchdog sleeps until watch_until; an earlier due wakes it.
  std::condition_variable watchdog_cv;
  std::chrono::steady_clock::time_point watch_until = std::chrono::steady_clock::time_point::max();
  bool overdue = false;  // the watchdog dropped the connection: an answer was late
  std::thread reader;
  std::thread writer;
  std::thread watchdog;
  // Their ids, kept as they started (join() clears a std::thread's): the
  // threads completions run on.
  std::thread::id reader_id;
  std::thread::id writer_id;
  std::thread::id watchdog_id;
  bool on_own_thread() const {
    const std::thread::id caller = std::this_thread::get_id();
    return caller == reader_id || caller == writer_id || caller == watchdog_id;
  }
};

Result<std::unique_ptr<tcp::socket>> Client::Impl::connect_once(std::uint64_t* served) {
  const std::int64_t timeout_ms = std::max<std::int64_t>(options.connect_timeout_ms, 1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  // Resolved at every attempt (a restarted server may have a new address),
  // within the attempt's time.
  auto endpoints = resolve_endpoints_until(host, port, deadline);
  if (!endpoints) return endpoints.status();
  auto fresh = std::make_unique<tcp::socket>(io);
  const auto timed_out = [&](const char* step) {
    return Status(ErrorCode::io_error, std::string(step) + ": no answer within " +
                                           std::to_string(options.connect_timeout_ms) + " ms");
  };
  boost::system::error_code ec;
  bool done = false;
  // Each endpoint in turn, until one takes the connection.
  for (const tcp::endpoint& endpoint : *endpoints) {
    boost::system::error_code ignored;
    fresh->close(ignored);  // opened again for the endpoint's protocol
    done = false;
    fresh->async_connect(endpoint, [&](const boost::system::error_code& error) {
      ec = error;
      done = true;
    });
    if (!run_until(io, *fresh, deadline, done, connect_cancelled)) return timed_out("connect");
    if (!ec) break;
  }
  if (ec) return io_status("connect", ec);
  fresh->set_option(tcp::no_delay(true), ec);
  wire::Request hello;
  hello.id = 0;
  hello.kind = wire::Request::Kind::hello;
  hello.token = options.token;
  const std::string frame = wire::encode_request(hello);
  done = false;
  asio::async_write(*fresh, asio::buffer(frame),
                    [&](const boost::system::error_code& error, std::size_t) {
                      ec = error;
                      done = true;
                    });
  if (!run_until(io, *fresh, deadline, done, connect_cancelled)) return timed_out("hello");
  if (ec) return io_status("hello", ec);
  wire::FrameReader reader(options.frame_bytes_max);
  // Each pass reads once, until the answer is whole.
  while (true) {
    auto answer = reader.next();
    if (!answer) return answer.status();
    if (!answer->empty()) {
      auto response = wire::decode_response(*answer);
      if (!response) return response.status();
      if (response->kind == wire::Response::Kind::error && !response->unknown) {
        return response->error;
      }
      // Else every request would wait out its answer timeout on a peer
      // that does not speak the protocol as a server does (or as one this
      // version knows).
      if (response->kind != wire::Response::Kind::hello || response->id != hello.id) {
        return Status(ErrorCode::invalid, options.address +
                                              " answered the hello with something else than "
                                              "a hello: is it a tally server?");
      }
      *served = response->ledger_id;
      return fresh;
    }
    const std::span<std::byte> space = reader.space();
    std::size_t bytes = 0;
    done = false;
    fresh->async_read_some(asio::buffer(space.data(), space.size()),
                           [&](const boost::system::error_code& error, std::size_t got) {
                             ec = error;
                             bytes = got;
                             done = true;
                           });
    if (!run_until(io, *fresh, deadline, done, connect_cancelled)) return timed_out("hello");
    if (ec) return io_status("hello", ec);
    // An HTTP server answers a frame it cannot parse with a status line.
    constexpr std::string_view kHttp = "HTTP/";
    if (bytes >= kHttp.size() &&
        std::memcmp(space.data(), kHttp.data(), kHttp.size()) == 0) {
      return Status(ErrorCode::invalid, options.address + " answered in HTTP: that is the HTTP "
                                        "port; the binary protocol listens on serve's --listen");
    }
    reader.commit(bytes);
  }
}

// A wrong token or version (an `invalid` answer) is not retried. A hello
// answered `busy` comes from a server still opening its log: those
// attempts are not counted against retries_max for start_wait_ms.
Status Client::Impl::connect_locked(std::unique_lock<std::mutex>& guard) {
  Status status;
  std::int64_t backoff_ms = options.retry_backoff_ms;
  int failures = 0;
  std::optional<std::chrono::steady_clock::time_point> started_by;  // at the first `busy`
  for (bool first = true; !closing; first = false) {
    if (!first) {
      // A follow cancelled meanwhile ends now, not once the server is back.
      const auto wait_until =
          std::chrono::steady_clock::now() + std::chrono::milliseconds(backoff_ms);
      while (cv.wait_until(guard, wait_until, [&] { return closing || !ended.empty(); })) {
        if (closing) break;
        end_cancelled_locked(guard);
      }
      if (closing) break;
      backoff_ms = std::min(backoff_ms * 2, std::max(options.retry_backoff_max_ms, backoff_ms));
    }
    guard.unlock();
    std::uint64_t served = 0;
    auto fresh = connect_once(&served);
    guard.lock();
    status = fresh.status();
    // Requests sent again to another ledger would be decided there afresh,
    // and a follow would go on in another log: refused, not retried (the
    // same server will answer the same). 0: a server that cannot say, taken
    // unless options.ledger_id asks for a ledger.
    const std::uint64_t expected = ledger_id.load(std::memory_order_relaxed);
    if (fresh && expected != 0 && served != expected && (served != 0 || options.ledger_id != 0)) {
      std::string wanted;
      append_hex64(&wanted, expected);
      std::string message = options.address;
      if (served != 0) {
        message += " serves ledger ";
        append_hex64(&message, served);
        message += ", not ledger " + wanted + ": was it started on another data directory?";
      } else {
        message += " does not say which ledger it serves; this client asks for ledger " + wanted;
      }
      status = Status(ErrorCode::invalid, std::move(message));
      break;
    }
    if (fresh) {
      if (expected == 0) ledger_id.store(served, std::memory_order_relaxed);
      socket = std::move(*fresh);
      connected = true;
      break;
    }
    if (status.code() == ErrorCode::invalid) break;
    const auto now = std::chrono::steady_clock::now();
    if (status.code() == ErrorCode::busy && !started_by) {
      const std::int64_t wait_ms = std::max<std::int64_t>(options.start_wait_ms, 0);
      started_by = now + std::chrono::milliseconds(wait_ms);
    }
    const bool starting = status.code() == ErrorCode::busy && now < *started_by;
    if (!starting && ++failures > options.retries_max) break;
  }
  if (closing) return client_closed();
  if (!status.ok()) return status;
  cv.notify_all();
  // Bytes queued for the old connection are gone with it: send every
  // unanswered request again, in the order sent.
  out.clear();
  for (auto& [id, request] : pending) write_request_locked(request);
  watchdog_cv.notify_all();
  return Status();
}

void Client::Impl::fail_all_locked(std::unique_lock<std::mutex>& guard, const Status& sent,
                                   const Status& unsent) {
  std::vector<ResponseDone> failed_sent;
  std::vector<ResponseDone> failed_unsent;
  for (auto& [id, request] : pending) {
    (request.written && !request.follow ? failed_sent : failed_unsent)
        .push_back(std::move(request.done));
  }
  pending.clear();
  follows_pending = 0;
  cv.notify_all();  // senders waiting for room
  const std::uint64_t round = begin_failing_locked();
  guard.unlock();
  fail(std::move(failed_sent), sent, round);
  fail(std::move(failed_unsent), unsent, round);
  guard.lock();
  failing = false;
  end_cancelled_locked(guard);
}

void Client::Impl::end_cancelled_locked(std::unique_lock<std::mutex>& guard) {
  // A follow cancelled while these run joins `ended` again: take turns.
  while (!ended.empty()) {
    std::vector<ResponseDone> handlers = std::move(ended);
    ended.clear();
    guard.unlock();
    for (ResponseDone& done : handlers) done(follow_end());
    guard.lock();
  }
}

std::uint64_t Client::Impl::begin_failing_locked() {
  failing = true;
  rounds_begun++;
  failing_round = failing_rounds_begun.fetch_add(1, std::memory_order_relaxed) + 1;
  return failing_round;
}

void Client::Impl::fail(std::vector<ResponseDone> failed, const Status& why,
                        std::uint64_t round) {
  const FailingRound outer = std::exchange(running_round, FailingRound{this, round});
  for (ResponseDone& done : failed) done(why);
  running_round = outer;
}

void Client::Impl::fail_locked(std::unique_lock<std::mutex>& guard,
                               std::vector<ResponseDone> failed, const Status& why) {
  if (failed.empty()) return;
  const std::uint64_t round = begin_failing_locked();
  guard.unlock();
  fail(std::move(failed), why, round);
  guard.lock();
  failing = false;
}

std::map<std::uint64_t, Pending>::iterator Client::Impl::erase_pending(
    std::map<std::uint64_t, Pending>::iterator entry) {
  if (entry->second.follow) follows_pending--;
  return pending.erase(entry);
}

// Drops the connection; reconnects and resends what survives its retries.
void Client::Impl::on_connection_lost_locked(std::unique_lock<std::mutex>& guard,
                                             std::vector<ResponseDone>* failed,
                                             bool link_failed) {
  connected = false;
  boost::system::error_code ignored;
  // A write in progress fails at once on a shut down socket; the socket is
  // closed (and replaced) only once the writer is out of it.
  socket->shutdown(tcp::socket::shutdown_both, ignored);
  wait_writer_idle_locked(guard);
  socket->close(ignored);
  // Once a request has used up its retries, every request sent after it
  // fails with it: none is delivered after one sent before it failed (a
  // commit must not be decided without the hold it names). Follows are
  // streams of their own and keep their own count.
  bool giving_up = false;
  for (auto entry = pending.begin(); entry != pending.end();) {
    Pending& request = entry->second;
    if (request.cancelled) {
      // The new connection will not know the follow; it is over.
      failed->push_back(
          [done = std::move(request.done)](Result<wire::Response>) { done(follow_end()); });
      entry = erase_pending(entry);
      continue;
    }
    // A follow waits for events, not for an answer: a link that fails and
    // is restored costs it nothing (it ends with io_error when the
    // reconnect fails). A drop for what the client refused (a frame over
    // frame_bytes_max, or one that does not decode) would only come again:
    // that counts, as for the rest.
    const bool counts = !request.follow || !link_failed;
    const bool spent = counts && ++request.attempts > options.retries_max;
    if (spent || (giving_up && !request.follow)) {
      giving_up = giving_up || !request.follow;
      failed->push_back(std::move(request.done));
      entry = erase_pending(entry);
    } else {
      ++entry;
    }
  }
  // A caller waiting for room (send()) has it now, maybe all of it.
  if (!failed->empty()) cv.notify_all();
  // The reader thread reconnects for what is left (reader_main).
}

void Client::Impl::wait_writer_idle_locked(std::unique_lock<std::mutex>& guard) {
  writer_cv.wait(guard, [&] { return !writing; });
}

void Client::Impl::write_locked(std::string_view frame) {
  const bool was_empty = out.empty();
  out += frame;
  if (was_empty) writer_cv.notify_all();
}

void Client::Impl::writer_main() {
  std::unique_lock<std::mutex> guard(mu);
  std::string batch;
  while (true) {
    writer_cv.wait(guard, [&] { return closing || (connected && !out.empty()); });
    if (closing) return;
    batch.clear();
    batch.swap(out);
    writing = true;
    tcp::socket& current = *socket;
    guard.unlock();
    boost::system::error_code ec;
    asio::write(current, asio::buffer(batch), ec);
    // On a failed write the reader thread notices the broken connection and
    // resends every unanswered request.
    if (ec) current.shutdown(tcp::socket::shutdown_both, ec);
    guard.lock();
    writing = false;
    writer_cv.notify_all();
  }
}

bool Client::Impl::is_closing() {
  std::lock_guard<std::mutex> guard(mu);
  return closing;
}

Status Client::Impl::refuse_read(const wire::Request& request) {
  // As the Ledger: a name no mutation can write is invalid, closed or not.
  if (request.kind == wire::Request::Kind::balance) {
    TALLY_TRY(detail::check_pair(request.subject, request.item));
  } else if (request.kind == wire::Request::Kind::list) {
    TALLY_TRY(detail::check_subject(request.subject));
  }
  if (is_closing()) return client_closed();
  return Status();
}

std::uint64_t Client::Impl::send(wire::Request request, ResponseDone done, bool follow) {
  std::unique_lock<std::mutex> guard(mu);
  // A completion runs on the reader thread, the only one that makes room:
  // what it submits goes past inflight_max rather than wait for ever.
  const bool on_reader = std::this_thread::get_id() == reader_id;
  const std::uint64_t rounds_at_submit = rounds_begun;
  // Follows do not count against inflight_max (docs/protocol.md), nor wait.
  cv.wait(guard, [&] {
    return follow || pending.size() - follows_pending < options.inflight_max || closing ||
           on_reader;
  });
  if (closing) {
    guard.unlock();
    done(client_closed());
    return 0;
  }
  const bool heard = heard_round.client == this && heard_round.round == failing_round;
  // Requests sent before this one are failing, or failed while it waited
  // for room: sent now, it could be decided without them.
  const bool after_failures = failing || rounds_begun != rounds_at_submit;
  if (after_failures && !on_reader && !heard) {
    guard.unlock();
    done(Status(ErrorCode::io_error,
                "not sent: a request sent before it could not be delivered"));
    return 0;
  }
  request.id = next_id++;
  const std::uint64_t id = request.id;
  Pending entry_value;
  entry_value.frame = wire::encode_request(request);
  entry_value.done = std::move(done);
  entry_value.follow = follow;
  if (follow) entry_value.request = std::make_unique<wire::Request>(std::move(request));
  auto [entry, added] = pending.emplace(id, std::move(entry_value));
  TALLY_ASSERT(added);
  if (follow) follows_pending++;
  if (!connected) {
    // The reader thread reconnects and sends every pending request, this
    // one included: the caller does not wait for it.
    cv.notify_all();
    return id;
  }
  write_request_locked(entry->second);
  return id;
}

void Client::Impl::write_request_locked(Pending& request) {
  write_locked(request.frame);
  request.written = true;
  request.sent_at = std::chrono::steady_clock::now();
  if (!request.follow && options.answer_timeout_ms > 0 &&
      request.sent_at + std::chrono::milliseconds(options.answer_timeout_ms) < watch_until) {
    watchdog_cv.notify_all();
  }
}

std::chrono::steady_clock::time_point Client::Impl::answer_due_locked() const {
  if (options.answer_timeout_ms > 0 && connected) {
    // Ids grow in the order sent, and a reconnect sends all again at once:
    // the first in the map is the oldest.
    for (const auto& [id, request] : pending) {
      if (request.written && !request.follow) {
        return request.sent_at + std::chrono::milliseconds(options.answer_timeout_ms);
      }
    }
  }
  return std::chrono::steady_clock::time_point::max();
}

void Client::Impl::watchdog_main() {
  std::unique_lock<std::mutex> guard(mu);
  while (!closing) {
    // Once it dropped a connection, nothing is due until the reader thread
    // has taken note and connected again (connect_locked() wakes it).
    watch_until = overdue ? std::chrono::steady_clock::time_point::max() : answer_due_locked();
    if (watch_until == std::chrono::steady_clock::time_point::max()) {
      watchdog_cv.wait(guard);
    } else {
      watchdog_cv.wait_until(guard, watch_until);
    }
    if (closing || !connected || overdue) continue;
    if (answer_due_locked() <= std::chrono::steady_clock::now()) {
      // The reader's read fails and it reconnects (reader_main).
      overdue = true;
      boost::system::error_code ignored;
      socket->shutdown(tcp::socket::shutdown_both, ignored);
    }
  }
}

// A follow's batch that does not end it: the entry stays, and its request
// moves past the batch. *deliver is its handler, or empty once cancelled.
bool Client::Impl::take_batch(Pending& entry, const wire::Response& response, ResponseDone* deliver) {
  if (!entry.follow || response.kind != wire::Response::Kind::events || response.end) return false;
  entry.request->from_seq = response.next_seq;
  entry.frame = wire::encode_request(*entry.request);
  entry.attempts = 0;
  if (!entry.cancelled) *deliver = entry.done;
  return true;
}

// Hands each answer to its handler (outside the lock); a follow's batch
// keeps its entry. invalid: an answer to no request.
Status Client::Impl::deliver(std::vector<wire::Response>* responses) {
  std::vector<std::pair<ResponseDone, wire::Response*>> ready;
  Status status;
  {
    std::lock_guard<std::mutex> guard(mu);
    for (wire::Response& response : *responses) {
      auto entry = pending.find(response.id);
      if (entry == pending.end()) {
        status = Status(ErrorCode::invalid, "response to an unknown request id");
        break;
      }
      // A follow's batch begins where the last one ended (or at the seq
      // asked for): else events would be lost or repeated.
      if (entry->second.follow && response.kind == wire::Response::Kind::events &&
          !response.end &&
          response.next_seq - response.events.size() != entry->second.request->from_seq) {
        status = Status(ErrorCode::invalid, "a follow's batch does not begin at the seq it "
                                            "was to begin at");
        break;
      }
      // A stream cannot pass over a message: the server goes on with it.
      if (entry->second.follow && response.unknown) {
        status = Status(ErrorCode::invalid, response.error.message());
        break;
      }
      ResponseDone done;
      if (!take_batch(entry->second, response, &done)) {
        done = std::move(entry->second.done);
        erase_pending(entry);
      }
      if (done) ready.emplace_back(std::move(done), &response);
    }
    cv.notify_all();
  }
  for (auto& [done, response] : ready) done(std::move(*response));
  return status;
}

void Client::Impl::reader_main() {
  std::unique_lock<std::mutex> guard(mu);
  std::vector<wire::Response> responses;
  while (true) {
    // Not connected with requests waiting: reconnect, here, so that no
    // caller waits for it.
    cv.wait(guard,
            [&] { return connected || closing || !pending.empty() || !ended.empty(); });
    if (closing) return;
    end_cancelled_locked(guard);
    if (!connected && pending.empty()) continue;  // only cancelled follows woke it
    if (!connected) {
      const Status status = connect_locked(guard);
      if (closing) return;
      if (!status.ok()) {
        // A request sent and not answered may have been applied, whatever
        // the reconnect ran into (a token the restarted server refuses is
        // invalid, a server still starting busy): its outcome is unknown.
        // Only a request never sent can carry the reconnect's reason.
        const Status sent(ErrorCode::io_error,
                          "could not reconnect (" + status.to_string() +
                              "): the request was sent and not answered, so its outcome is "
                              "unknown; sending it again (a mutation with the same key) is safe");
        const Status unsent(status.code(), "could not reconnect: " + status.message());
        fail_all_locked(guard, sent, unsent);
        continue;
      }
    }
    // Follows cancelled while the connection was down (they were not sent
    // again) end before any answer on the new connection is delivered.
    end_cancelled_locked(guard);
    // The socket is replaced only after this thread marks the connection
    // lost, so reading it without the lock is safe.
    tcp::socket& current = *socket;
    guard.unlock();
    wire::FrameReader reader(options.frame_bytes_max);
    Status lost;
    while (lost.ok()) {
      // The first answer (reading as needed), then every other whole one
      // the same read brought in: delivered together, under one lock.
      responses.clear();
      auto first = read_response(current, reader);
      if (!first) {
        lost = first.status();
        break;
      }
      responses.push_back(std::move(*first));
      while (true) {
        auto frame = reader.next();
        if (!frame || frame->empty()) {
          if (!frame) lost = frame.status();
          break;
        }
        auto response = wire::decode_response(*frame);
        if (!response) {
          lost = response.status();
          break;
        }
        responses.push_back(std::move(*response));
      }
      const Status delivered = deliver(&responses);
      if (lost.ok()) lost = delivered;
    }
    guard.lock();
    if (closing) return;
    if (std::exchange(overdue, false)) {
      lost = Status(ErrorCode::io_error, "no answer within " +
                                             std::to_string(options.answer_timeout_ms) + " ms");
    }
    std::vector<ResponseDone> failed;
    on_connection_lost_locked(guard, &failed, lost.code() == ErrorCode::io_error);
    fail_locked(guard, std::move(failed),
                Status(ErrorCode::io_error, "connection lost: " + lost.message()));
  }
}

Result<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  if (options.inflight_max == 0) {
    return Status(ErrorCode::invalid, "inflight_max must be at least 1");
  }
  // Under it, the answer to a mutation the server applied might not be read.
  if (options.frame_bytes_max < wire::kFrameBytesMaxDefault) {
    return Status(ErrorCode::invalid, "frame_bytes_max must be at least " +
                                          std::to_string(wire::kFrameBytesMaxDefault) + " bytes");
  }
  bound_waits_ms({&options.retry_backoff_ms, &options.retry_backoff_max_ms, &options.start_wait_ms,
                  &options.connect_timeout_ms, &options.answer_timeout_ms});
  auto impl = std::make_unique<Impl>(std::move(options));
  TALLY_TRY(parse_host_port(impl->options.address, &impl->host, &impl->port));
  {
    std::unique_lock<std::mutex> guard(impl->mu);
    TALLY_TRY(impl->connect_locked(guard));
  }
  // ~Client closes the connection and stops what started if the rest fails.
  std::unique_ptr<Client> client(new Client(std::move(impl)));
  Impl* raw = client->impl_.get();
  auto reader = start_thread("tally-client-rd", [raw] { raw->reader_main(); });
  if (!reader) return reader.status();
  raw->reader = std::move(*reader);
  raw->reader_id = raw->reader.get_id();
  auto writer = start_thread("tally-client-wr", [raw] { raw->writer_main(); });
  if (!writer) return writer.status();
  raw->writer = std::move(*writer);
  raw->writer_id = raw->writer.get_id();
  if (raw->options.answer_timeout_ms > 0) {
    auto watchdog = start_thread("tally-client-wd", [raw] { raw->watchdog_main(); });
    if (!watchdog) return watchdog.status();
    raw->watchdog = std::move(*watchdog);
    raw->watchdog_id = raw->watchdog.get_id();
  }
  return client;
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() { ignore_status(close()); }

std::uint64_t Client::ledger_id() const {
  return impl_->ledger_id.load(std::memory_order_relaxed);
}

Status Client::close() {
  Impl& impl = *impl_;
  if (impl.on_own_thread()) {
    return Status(ErrorCode::invalid,
                  "close() called from a completion, on a thread it would wait for: close "
                  "the client from another thread");
  }
  {
    std::lock_guard<std::mutex> guard(impl.mu);
    if (impl.closing) return Status();
    impl.closing = true;
    impl.connect_cancelled = true;
    impl.io.stop();  // a wait of connect_once() under way ends now
    boost::system::error_code ignored;
    if (impl.socket) impl.socket->shutdown(tcp::socket::shutdown_both, ignored);
    impl.cv.notify_all();
    impl.writer_cv.notify_all();
    impl.watchdog_cv.notify_all();
  }
  if (impl.reader.joinable()) impl.reader.join();
  if (impl.writer.joinable()) impl.writer.join();
  if (impl.watchdog.joinable()) impl.watchdog.join();
  std::unique_lock<std::mutex> guard(impl.mu);
  boost::system::error_code ignored;
  if (impl.socket) impl.socket->close(ignored);
  impl.fail_all_locked(guard,
                       Status(ErrorCode::io_error,
                              "the client closed before the answer came: the outcome is unknown "
                              "until the request is sent again with its key"),
                       client_closed());
  return Status();
}

void Client::submit(Command command, Completion done) {
  if (!done) done = [](Result<Receipt>) {};  // the command runs; nobody hears its outcome
  // Invalid on its face: refused here as the Ledger refuses it, at once and
  // on this thread, instead of sent. (A request the server cannot read
  // would cost the connection, and come back io_error after every retry.)
  // A hold's ttl is the server's to check (the limit is its setting), and
  // so are a batch's ops after it, unless they make a request too large to
  // reach it. A closed client answers closed first, as a closed Ledger
  // does.
  if (impl_->is_closing()) return done(client_closed());
  const Status valid = detail::validate(command, detail::Limits{});
  if (!valid.ok()) return done(valid);
  wire::Request request;
  request.kind = wire::Request::Kind::mutation;
  request.command = std::move(command);
  // An op after the hold too long for the frame a server reads: the
  // server would close the connection, so the op's error is given here.
  if (has_ops_after_hold(request.command)) {
    const Status after_hold =
        detail::validate(request.command, detail::Limits{.ops_after_hold = true});
    if (!after_hold.ok() && wire::encode_request(request).size() > wire::kFrameBytesMaxDefault) {
      return done(after_hold);
    }
  }
  impl_->send(std::move(request), [done = std::move(done)](Result<wire::Response> response) {
    done(to_receipt(response));
  });
}

Result<Receipt> Client::execute(Command command) {
  return wait_for<Receipt>(impl_->on_own_thread(), [&](Completion done) {
    submit(std::move(command), std::move(done));
  });
}


Status EventBatch::for_each(const std::function<void(const log::Event&)>& visit) const {
  log::EventDecoder decoder;
  log::Event event;
  for (std::size_t index = 0; index < events_.size(); index++) {
    const Status decoded = decoder.decode(events_[index], &event);
    if (!decoded.ok()) {
      return Status(ErrorCode::corrupt, "event " + std::to_string(first_seq() + index) + ": " + decoded.message());
    }
    visit(event);
  }
  return Status();
}

FollowId Client::follow(std::uint64_t from_seq, BatchHandler on_batch, EndHandler on_end,
                        FollowOptions options) {
  wire::Request request;
  request.kind = wire::Request::Kind::follow;
  request.from_seq = std::max<std::uint64_t>(from_seq, 1);
  request.max_events = options.batch_events_max;
  auto handlers = std::make_shared<std::pair<BatchHandler, EndHandler>>(std::move(on_batch), std::move(on_end));
  return impl_->send(std::move(request), [handlers](Result<wire::Response> response) {
    if (!response) return handlers->second(response.status());
    if (response->kind == wire::Response::Kind::error) return handlers->second(response->error);
    if (response->kind != wire::Response::Kind::events) {
      return handlers->second(Status(ErrorCode::invalid, "the server answered a follow with something else"));
    }
    if (response->end) return handlers->second(Status());
    handlers->first(EventBatch(std::move(response->events), response->next_seq));
  }, true);
}

void Client::cancel_follow(FollowId follow) {
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> guard(impl.mu);
  auto entry = impl.pending.find(follow);
  if (entry == impl.pending.end() || !entry->second.follow || entry->second.cancelled) return;
  entry->second.cancelled = true;
  if (!impl.connected) {
    // The connection that had the follow is gone, and the reconnect would
    // send it again: it ends here instead, its on_end run by the reader
    // thread, which is reconnecting or waiting for work.
    impl.ended.push_back(std::move(entry->second.done));
    impl.erase_pending(entry);
    impl.cv.notify_all();
    return;
  }
  wire::Request cancel;
  cancel.kind = wire::Request::Kind::cancel;
  cancel.id = impl.next_id++;
  cancel.follow_id = follow;
  impl.write_locked(wire::encode_request(cancel));
}

void Client::submit_balance(std::string subject, std::string item,
                            std::function<void(Result<Balance>)> done) {
  impl_->submit_read<Balance>(balance_request(std::move(subject), std::move(item), std::nullopt),
                       wire::Response::Kind::balance, balance_of, std::move(done));
}

void Client::submit_list(std::string subject,
                         std::function<void(Result<std::vector<ItemBalance>>)> done) {
  impl_->submit_read<std::vector<ItemBalance>>(list_request(std::move(subject), std::nullopt),
                                        wire::Response::Kind::list, items_of, std::move(done));
}

void Client::submit_hold_info(HoldId hold, std::function<void(Result<HoldView>)> done) {
  impl_->submit_read<HoldView>(hold_request(hold, std::nullopt), wire::Response::Kind::hold_info,
                        hold_of, std::move(done));
}

Result<Balance> Client::balance(std::string_view subject, std::string_view item) {
  return wait_for<Balance>(impl_->on_own_thread(), [&](auto done) {
    submit_balance(std::string(subject), std::string(item), std::move(done));
  });
}

Result<Balance> Client::balance(std::string_view subject, std::string_view item, AsOf at) {
  return wait_for<Balance>(impl_->on_own_thread(), [&](auto done) {
    impl_->submit_read<Balance>(balance_request(std::string(subject), std::string(item), at),
                         wire::Response::Kind::balance, balance_of, std::move(done));
  });
}

Result<std::vector<ItemBalance>> Client::list(std::string_view subject) {
  return wait_for<std::vector<ItemBalance>>(impl_->on_own_thread(), [&](auto done) {
    submit_list(std::string(subject), std::move(done));
  });
}

Result<std::vector<ItemBalance>> Client::list(std::string_view subject, AsOf at) {
  return wait_for<std::vector<ItemBalance>>(impl_->on_own_thread(), [&](auto done) {
    impl_->submit_read<std::vector<ItemBalance>>(list_request(std::string(subject), at),
                                          wire::Response::Kind::list, items_of, std::move(done));
  });
}

Result<HoldView> Client::hold_info(HoldId hold) {
  return wait_for<HoldView>(impl_->on_own_thread(),
                            [&](auto done) { submit_hold_info(hold, std::move(done)); });
}

Result<HoldView> Client::hold_info(HoldId hold, AsOf at) {
  return wait_for<HoldView>(impl_->on_own_thread(), [&](auto done) {
    impl_->submit_read<HoldView>(hold_request(hold, at), wire::Response::Kind::hold_info, hold_of,
                          std::move(done));
  });
}

}  // namespace tally
