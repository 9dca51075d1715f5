// Client: the binary protocol's C++ client, with the Ledger's calls and
// result types, so that a backend can switch between an embedded Ledger and
// a remote `tally serve` (docs/protocol.md).
//
//   auto client = tally::Client::connect({.address = "127.0.0.1:7420"});
//   auto receipt = (*client)->acquire("order-1", "alice", "gold", 100);
//
// Requests are pipelined on one connection; responses may arrive in any
// order. When the connection drops, the client reconnects (up to
// retries_max times per request, with backoff) and sends every unanswered
// request again, unchanged: a mutation keeps its idempotency key, so the
// server applies it at most once and answers a retry with the recorded
// outcome (Receipt::replay). A request that cannot be delivered fails with
// io_error; its outcome is then unknown until it is retried with its key.
//
// Thread safety: every method may be called from any thread. Completions of
// submit() run on the client's reader thread, must not block, and must not
// call the client's blocking methods.
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
#include "log/status.h"

namespace tally {

struct ClientOptions {
  std::string address = "127.0.0.1:7420";  // HOST:PORT, HOST an IP address
  std::string token;                        // the server's token, if it has one
  int retries_max = 5;                      // reconnects a request survives
  std::int64_t retry_backoff_ms = 20;       // first wait; doubles each attempt
  std::size_t frame_bytes_max = wire::kFrameBytesMaxDefault;
  std::size_t inflight_max = 1024;          // submit() waits beyond it
};

class Client final : public LedgerApi {
 public:
  // Connects and says hello (with the token). Errors: invalid (address;
  // "unauthorized: ..." for a wrong token), io_error (cannot connect).
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
  Result<HoldView> hold_info(HoldId hold) override;

  // Fails unanswered requests with `closed`, closes the connection, joins
  // the reader thread. Idempotent.
  void close();

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally
