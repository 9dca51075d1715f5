// Server: serves one Ledger over the binary protocol (docs/protocol.md) and
// HTTP/1.1 JSON (docs/http-api.md). Every connection feeds the same Ledger,
// so concurrent clients share its group commits. The event feeds (GET
// /v1/events, the binary follow stream) read the Ledger's log through one
// EventFeed (engine/feed.h), up to its committed seq.
//
//   auto server = tally::Server::start(ledger.get(), options);
//   ... until SIGTERM ...
//   (*server)->stop();      // graceful: every accepted request is answered
//   ledger->close();
//
// Limits: connections_max connections of each protocol (and over HTTP's,
// kProbeConnectionsMax probes for GET /health and GET /metrics), inflight_per_connection_max
// requests in flight and follows_per_connection_max follow streams on each
// (taking turns: one follow batch read or written at a time), 8 MiB of answers waiting
// to be written and one list running on a binary connection, kListsAtOnce
// lists running in all, frame and body sizes,
// idle timeouts, and (binary) a write that sends nothing for the idle
// timeout. A malformed or oversized frame closes only its connection, with
// a logged reason (at most kConnectionLinesPerMinute such lines a minute).
// Tokens are compared in constant time.
//
// Thread safety: start(), bind(), serve() and stop() from one thread;
// ports from any.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "engine/ledger.h"
#include "engine/wire.h"
#include "log/status.h"

namespace tally {

// The most lines about single connections (why one closed) logged in a
// minute: peers that each send garbage must not flood the log.
inline constexpr std::uint64_t kConnectionLinesPerMinute = 100;
// The most of a connection line's account of what happened that is logged.
inline constexpr std::size_t kConnectionNoteBytesMax = 512;

// Over ServerOptions::connections_max HTTP connections, this many more are
// probes: each reads one request and answers it if it is for /health or
// /metrics (a supervisor's check, a scrape; as usual, 405 for a method
// other than GET), or 503 `busy` otherwise, then closes. Idle keep-alive
// clients and long polls then never lock those two out.
inline constexpr std::size_t kProbeConnectionsMax = 4;

// The most `list` requests running at once, over every connection of both
// protocols. A list's answer may be tens of MB (a binary one up to 64 MiB),
// held from before it runs until it is written; more lists wait their turn,
// in the order they came.
inline constexpr std::size_t kListsAtOnce = 4;

// ServerOptions::io_threads unless set: half the cores, at least one.
std::size_t io_threads_default();

struct ServerOptions {
  // "host:port" of each listener; port 0 picks an ephemeral port; empty: off.
  // A name listens on every address it resolves to, on one port.
  std::string binary_listen = "127.0.0.1:7420";
  std::string http_listen = "127.0.0.1:7421";
  // Non-empty: every client must present it (binary hello, HTTP bearer).
  // Required when either listener is not on a loopback address.
  std::string token;
  // Threads running the connections. Default: half the cores, at least
  // one: the ledger's writer and I/O threads and the archivist need cores
  // too (on two cores one I/O thread serves the binary protocol about 10%
  // faster than two; docs/performance.md).
  std::size_t io_threads = io_threads_default();
  // Reads that may block run on threads of their own so that the I/O
  // threads never do: the event feed and /metrics on read_threads, and
  // point-in-time balances, lists and holds (which may replay the log from
  // a snapshot, for seconds) on as many more, so that they never hold up
  // the feed. Current balance, list and hold reads need no thread: they go
  // to the ledger without blocking.
  std::size_t read_threads = 2;
  // Binary; and HTTP, counted on its own (plus kProbeConnectionsMax).
  std::size_t connections_max = 256;
  // Together with connections_max this bounds the requests held in memory.
  // Deep enough that one pipelining client keeps the writer busy while a
  // group is being synced. When all connections together fill the Ledger's
  // queue (LedgerOptions::queue_depth_max), submit() waits for the writer
  // to take it: an I/O thread pauses for about one group, the backpressure
  // of an overloaded server.
  std::size_t inflight_per_connection_max = 4096;
  // Open follow streams (docs/protocol.md) per binary connection. They take
  // turns: one batch (about 256 KiB, or one larger event) at a time is read
  // or waits to be written.
  std::size_t follows_per_connection_max = 16;
  // Times in ms: one over a year counts as a year (kWaitMax), for ever in
  // effect.
  std::int64_t idle_timeout_ms = 60'000;
  std::size_t frame_bytes_max = wire::kFrameBytesMaxDefault;
  std::size_t http_body_bytes_max = 1u << 20;
  std::uint32_t http_header_bytes_max = 16u << 10;
  // How long stop() waits for connections to finish before closing them.
  std::int64_t shutdown_grace_ms = 10'000;
  // Borrowed; when set, GET /health reports it while the server starts: how
  // far its ledger's open is (LedgerOptions::open_progress).
  const OpenProgress* starting = nullptr;
  // Where connection-level problems are reported; nullptr: stderr.
  std::function<void(std::string_view)> log;
};

// Splits "host:port" ("[::1]:7420" for IPv6). invalid when malformed.
Status parse_host_port(std::string_view text, std::string* host, std::uint16_t* port);

// Compares in time that depends only on the lengths, not on the contents.
bool constant_time_equal(std::string_view a, std::string_view b);

class Server {
 public:
  // Binds both listeners and answers on them before there is a ledger to
  // serve: GET /health with 503 `starting`, every other request (and the
  // binary hello) with `busy`, until serve(). `tally serve` binds first,
  // so that an address it cannot bind fails before it touches the data
  // directory, and so that while a long log is replayed its clients hear
  // that the server is on its way (a Client keeps trying; docs/api.md).
  // Errors: invalid (addresses; a non-loopback address without a token),
  // io_error (bind, listen, threads).
  static Result<std::unique_ptr<Server>> bind(ServerOptions options);
  // Starts serving `ledger`, borrowed: it must stay open until stop()
  // returns. Once, before stop(). io_error when a thread cannot start.
  Status serve(Ledger* ledger);
  // bind(), then serve(ledger).
  static Result<std::unique_ptr<Server>> start(Ledger* ledger, ServerOptions options);
  // stop().
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound ports (useful with port 0); 0 when that listener is off.
  std::uint16_t binary_port() const;
  std::uint16_t http_port() const;

  // Stops accepting, reads no new requests, answers every request already
  // read (they are in the Ledger and will be durable; a waiting long poll
  // at once, with what it has), ends open follow streams, then closes the
  // connections and joins the threads. After shutdown_grace_ms the remaining
  // connections are closed; their accepted requests still complete in the
  // Ledger. Idempotent; blocks.
  void stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally
