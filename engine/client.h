// Client: the binary protocol's C++ client, with the Ledger's calls and
// result types, so that a backend can switch between an embedded Ledger and
// a remote `tally serve` (docs/protocol.md).
//
//   auto client = tally::Client::connect({.address = "127.0.0.1:7420"});
//   auto receipt = (*client)->acquire("order-1", "alice", "gold", 100);
//
// Requests are pipelined on one connection; responses may arrive in any
// order. A writer thread sends every request queued meanwhile in one write,
// and the reader thread delivers every answer one read brought in. When the
// connection drops, the reader thread reconnects (up to retries_max times
// per request, with backoff; each attempt to connect and say hello gives up
// after connect_timeout_ms, its name's resolution included; a server still
// opening its log, which answers the hello busy, is waited for apart, up to
// start_wait_ms) and sends every unanswered request again, unchanged: a
// mutation keeps its idempotency key, so the server applies it at most once
// and answers a retry with the recorded outcome (Receipt::replay). A
// request sent and not answered when the client gives up fails with
// io_error, whatever the reconnect ran into: the server may have applied
// it, so its outcome is unknown until it is retried with its key (which is
// safe). One never sent fails with the reconnect's reason (io_error;
// invalid, "unauthorized: ...", when the server refuses the token; busy
// when it is still starting after start_wait_ms): nothing was decided.
// submit() and the submit_* reads never wait for a connection: while the
// client reconnects they queue (up to inflight_max). A server that keeps
// the connection open but stops answering (a stopped process) is given up
// once a request sent to it waits answer_timeout_ms: the connection is
// dropped and the unanswered requests go through the reconnects above, so
// a caller hears io_error after at most about answer_timeout_ms plus the
// reconnects, never waits forever.
//
// Order: requests go out, and again after a reconnect, in the order
// submitted. When one fails for want of a connection, every request sent
// after it fails with it, and a request submitted while those failures are
// handed out, or while its submit() waited for room (inflight_max), fails
// at once, unsent, with io_error "not sent: ...": none is delivered after
// one submitted before it failed. A caller that needs order (a commit behind
// its hold) stops at its first failure and sends the failed requests
// again, in order, with their keys.
//
// follow() streams committed events as they are committed, for audit and
// integration (docs/protocol.md, "Follow"):
//
//   auto id = (*client)->follow(position, [&](const tally::EventBatch& batch) {
//     const tally::Status decoded =
//         batch.for_each([&](const tally::log::Event& event) { ... });
//     if (decoded.ok()) store(batch.next_seq());  // resume from here after a restart
//   }, [&](tally::Status end) { ... });
//
// A dropped connection does not lose or repeat a batch: the follow is sent
// again from the seq after the last batch delivered.
//
// Thread safety: every method may be called from any thread. Completions of
// submit(), the submit_* reads and follow()'s callbacks run on the client's
// reader thread (or at once, on the caller's, once the client is closed)
// and must not call the client's blocking methods. A slow on_batch slows the
// server's stream down (the server writes the next batch only once the last
// one was taken), and with it every other answer on this client: give a
// follow doing slow work a Client of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/api.h"
#include "engine/types.h"
#include "engine/wire.h"
#include "log/event.h"
#include "log/status.h"

namespace tally {

// Times are in ms; connect() takes a negative one for 0 and one over a year
// (kWaitMax) for a year, which is "for ever" in effect. An inflight_max of
// 0 is invalid, and so is a frame_bytes_max under 1 MiB
// (wire::kFrameBytesMaxDefault), which every mutation's answer fits in.
struct ClientOptions {
  // HOST:PORT, HOST an IP address ("[::1]:7420") or a name, resolved again
  // at every connection attempt (a restarted server may have moved), whose
  // addresses are tried in the resolver's order.
  std::string address = "127.0.0.1:7420";
  std::string token = {};                   // the server's token, if it has one
  // The ledger the server must serve (Ledger::ledger_id()); 0: the one the
  // first connection finds. A server serving another is refused: invalid;
  // so is one that does not say, when this is set.
  std::uint64_t ledger_id = 0;
  // Reconnects a request survives: a reconnect makes up to retries_max + 1
  // attempts, with 5.26 s of the waits below between them, each attempt
  // taking up to connect_timeout_ms (docs/api.md gives the whole bound):
  // enough to ride out a server restart (the reopen of a large ledger).
  int retries_max = 10;
  std::int64_t retry_backoff_ms = 20;       // first wait; doubles each attempt
  std::int64_t retry_backoff_max_ms = 1000; // up to this
  // A server that is starting (opening, perhaps replaying, its log) answers
  // the hello `busy`. Those attempts are not retries: the client keeps
  // trying, with the waits above, for this long after the first of them.
  std::int64_t start_wait_ms = 300'000;
  // One attempt to resolve the name, connect and exchange hellos gives up
  // after this long (a resolver or a host that does not answer, or a port
  // that accepts and stays silent).
  std::int64_t connect_timeout_ms = 2000;
  // A request sent and not answered for this long means the server is not
  // answering: the connection is dropped and re-established as above. A
  // follow waiting for events does not count. 0: wait for ever. A longer
  // one suits reads at a point in time that the server answers by
  // replaying a long log (its history index off or lagging).
  std::int64_t answer_timeout_ms = 30000;
  // The largest answer read (wire::kAnswerBytesMax, the most a server sends).
  std::size_t frame_bytes_max = wire::kAnswerBytesMax;
  // submit() waits beyond it, except from a completion (the reader thread
  // would wait for itself): a request submitted there goes past it. Open
  // follows do not count.
  std::size_t inflight_max = 1024;
};

// One batch of a follow: committed events with consecutive seqs, in order.
class EventBatch {
 public:
  EventBatch(wire::EventPayloads events, std::uint64_t next_seq)
      : events_(std::move(events)), next_seq_(next_seq) {}

  std::size_t size() const { return events_.size(); }
  std::uint64_t first_seq() const { return next_seq_ - events_.size(); }
  // The seq after the last event: where to follow from again.
  std::uint64_t next_seq() const { return next_seq_; }
  // Event `index`, as logged: the Cap'n Proto Event message of
  // log/events.capnp, 8-byte aligned, for log::EventDecoder.
  std::span<const std::byte> payload(std::size_t index) const { return events_[index]; }
  // Decodes each event in order and calls `visit` with it; the Event's
  // views are valid during the call. corrupt when one does not decode (then
  // the later ones are not visited).
  Status for_each(const std::function<void(const log::Event&)>& visit) const;

 private:
  wire::EventPayloads events_;
  std::uint64_t next_seq_;
};

struct FollowOptions {
  std::uint32_t batch_events_max = 0;  // 0: the server's maximum (1000)
};

using FollowId = std::uint64_t;

class Client final : public LedgerApi {
 public:
  // Connects and says hello (with the token). Errors: invalid (address;
  // "unauthorized: ..." for a wrong token), io_error (cannot connect),
  // busy (the server was still opening its log after start_wait_ms).
  static Result<std::unique_ptr<Client>> connect(ClientOptions options);
  // close().
  ~Client() override;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // LedgerApi (engine/api.h), answered by the server.
  Result<Receipt> execute(Command command) override;
  // Sends a mutation and returns; `done` runs once the answer arrives.
  void submit(Command command, Completion done) override;
  Result<Balance> balance(std::string_view subject, std::string_view item) override;
  Result<std::vector<ItemBalance>> list(std::string_view subject) override;
  Result<Balance> balance(std::string_view subject, std::string_view item, AsOf at) override;
  Result<std::vector<ItemBalance>> list(std::string_view subject, AsOf at) override;
  Result<HoldView> hold_info(HoldId hold) override;
  Result<HoldView> hold_info(HoldId hold, AsOf at) override;
  void submit_balance(std::string subject, std::string item,
                      std::function<void(Result<Balance>)> done) override;
  void submit_list(std::string subject,
                   std::function<void(Result<std::vector<ItemBalance>>)> done) override;
  void submit_hold_info(HoldId hold, std::function<void(Result<HoldView>)> done) override;

  using BatchHandler = std::function<void(const EventBatch& batch)>;
  using EndHandler = std::function<void(Status why)>;
  // Streams the committed events with seq >= from_seq (0 and 1: from the
  // first): `on_batch` runs for each batch as its events are committed, in
  // seq order, without gaps or repeats, also across reconnects. `on_end`
  // runs once when the stream ends: ok after cancel_follow(); closed when
  // the server shuts down or the client closes; the reconnect's reason
  // when the connection could not be restored (io_error; invalid or busy
  // as for a request never sent, above), while a connection that drops and
  // is restored costs the follow nothing; io_error after retries_max + 1
  // connections dropped for a frame the client refused (over
  // frame_bytes_max, or one that does not decode); corrupt or io_error when the
  // server could not read its log; invalid when the server refused the
  // follow (too many on the connection). It may run before follow() returns.
  FollowId follow(std::uint64_t from_seq, BatchHandler on_batch, EndHandler on_end,
                  FollowOptions options = {});
  // Ends a follow: batches arriving after this returns are dropped, and
  // its on_end runs with ok once the server confirms (or the connection
  // drops). Batches the reader thread had already read may still reach
  // on_batch after this returns (a handler may be running as it does):
  // on_end, which comes after every batch, is the follow's last call, so
  // free what on_batch uses there, not here. Called while the client reconnects, the follow is not sent
  // again and its on_end runs with ok (on the reader thread) without
  // waiting for the connection. An unknown or ended id is ignored.
  void cancel_follow(FollowId follow);

  // The first connection's (ClientOptions::ledger_id when set). A server
  // that serves another ledger later is refused (docs/protocol.md).
  std::uint64_t ledger_id() const override;

  // Closes the connection (ending a reconnect's attempt under way, rather
  // than wait out its connect_timeout_ms) and joins the client's threads.
  // Requests not answered yet fail: with `closed` when they were never sent (nothing was
  // decided), with io_error when they were (the server may have applied a
  // mutation: its outcome is unknown until it is sent again with its key);
  // follows end with `closed`. Idempotent and ok, but from a completion
  // (one of the threads it joins): invalid.
  Status close() override;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally
