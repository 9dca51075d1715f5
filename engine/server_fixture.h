// Test fixtures shared by the server's unit tests (server_test.cc,
// http_api_test.cc): a Ledger and its Server on ephemeral 127.0.0.1 ports,
// one HTTP request on a fresh connection, and the reading of /metrics.
// Test-only; included by *_test.cc files. Failures are doctest REQUIREs and
// CHECKs in the calling test, not returned errors.
#pragma once

#include <doctest.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>  // before Asio, whose awaitable.hpp uses std::exchange
#include <vector>
#include <boost/asio.hpp>
// GCC 12 reports a false maybe-uninitialized inside Beast's parser
// (boost::optional in basic_parser.hpp) once sanitizers change inlining;
// the diagnostic is attributed to these headers, so it is silenced for them
// alone.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#pragma GCC diagnostic pop

#include "engine/client.h"
#include "engine/json.h"
#include "engine/ledger.h"
#include "engine/server.h"
#include "log/file.h"
#include "log/format.h"
#include "tests/testing.h"

// In the namespace of the code under test and an unnamed one, as
// projections/state_fixture.h: each test file gets its own copy, and uses
// the names unqualified.
namespace tally {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// "p3-17". Built by appending: g++ 12 warns (-Wrestrict, a false positive)
// about "literal" + std::to_string(...) once inlined.
inline std::string key_of(std::string_view prefix, int first, int second) {
  std::string key(prefix);
  key += std::to_string(first);
  key += '-';
  key += std::to_string(second);
  return key;
}

// A ledger in dir/data (durability none), for a test that starts its
// server by hand.
inline std::unique_ptr<Ledger> open_ledger(testing::TempDir& dir) {
  LedgerOptions ledger_options;
  ledger_options.data_dir = dir.sub("data");
  ledger_options.durability = Durability::none;
  auto ledger = Ledger::open(ledger_options);
  REQUIRE(ledger.ok());
  return std::move(*ledger);
}

// A ledger and a server on ephemeral ports (binary and HTTP), restartable
// on the same data: change `options` (or the ledger's fields), then stop()
// and start(). What the server logs is kept in `logs`, for logged().
struct Fixture {
  testing::TempDir dir;
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<Server> server;
  ServerOptions options;
  std::uint64_t segment_size_bytes = log::kSegmentSizeBytesDefault;
  Durability durability = Durability::none;
  log::FileSystem* fs = nullptr;  // nullptr: POSIX
  std::mutex log_mu;
  std::vector<std::string> logs;

  explicit Fixture(std::string token = {}) {
    options.binary_listen = "127.0.0.1:0";
    options.http_listen = "127.0.0.1:0";
    // Connections served on two threads whatever the machine has: the
    // strands' work is part of what these tests cover.
    options.io_threads = 2;
    options.token = std::move(token);
    options.log = [this](std::string_view line) {
      std::lock_guard<std::mutex> guard(log_mu);
      logs.emplace_back(line);
    };
    start();
  }
  ~Fixture() { stop(); }

  void start() {
    LedgerOptions ledger_options;
    ledger_options.data_dir = dir.sub("data");
    ledger_options.durability = durability;
    ledger_options.fs = fs;
    ledger_options.segment_size_bytes = segment_size_bytes;
    auto opened = Ledger::open(ledger_options);
    REQUIRE(opened.ok());
    ledger = std::move(*opened);
    auto started = Server::start(ledger.get(), options);
    REQUIRE(started.ok());
    server = std::move(*started);
  }
  void stop() {
    if (server) server->stop();
    server.reset();
    if (ledger) CHECK(ledger->close().ok());
    ledger.reset();
  }
  bool logged(std::string_view fragment) {
    std::lock_guard<std::mutex> guard(log_mu);
    for (const auto& line : logs) {
      if (line.find(fragment) != std::string::npos) return true;
    }
    return false;
  }
  std::unique_ptr<Client> client(ClientOptions client_options = {}) {
    client_options.address = "127.0.0.1:" + std::to_string(server->binary_port());
    if (client_options.token.empty()) client_options.token = options.token;
    auto connected = Client::connect(client_options);
    REQUIRE(connected.ok());
    return std::move(*connected);
  }
};

// An HTTP answer. The accessors of its JSON body REQUIRE that it parses and
// has the member asked for.
struct Reply {
  unsigned status = 0;
  std::string body;  // empty for an answer to HEAD
  std::map<std::string, std::string> headers;  // names as the server spelled them

  json::Value json() const {
    auto parsed = json::parse(body);
    REQUIRE(parsed.ok());
    return *parsed;
  }
  std::int64_t integer(std::string_view field) const {
    std::int64_t value = -1;
    const json::Value parsed = json();
    const json::Value* member = parsed.find(field);
    REQUIRE(member != nullptr);
    CHECK(json::to_int64(*member, &value));
    return value;
  }
  std::string string(std::string_view field) const {
    const json::Value parsed = json();
    const json::Value* member = parsed.find(field);
    REQUIRE(member != nullptr);
    return member->text;
  }
  // The "code" of a problem+json answer.
  std::string code() const { return string("code"); }
  // The header's value, or empty when the answer has none.
  std::string header(const std::string& name) const {
    const auto found = headers.find(name);
    return found == headers.end() ? std::string() : found->second;
  }
};

// One HTTP request on a fresh connection; a non-empty body is sent as JSON.
inline Reply http_call(std::uint16_t port, http::verb method, std::string target,
                       std::string body = {},
                       const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  http::request<http::string_body> request(method, target, 11);
  request.set(http::field::host, "127.0.0.1");
  for (const auto& [name, value] : headers) request.insert(name, value);  // repeats kept
  if (!body.empty()) request.set(http::field::content_type, "application/json");
  request.body() = std::move(body);
  request.prepare_payload();
  // A server that never answers fails the test here, named, rather than
  // hanging the suite until its timeout.
  stream.expires_after(std::chrono::seconds(60));
  http::write(stream, request);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  // An answer to HEAD has no body, whatever its Content-Length says.
  parser.skip(method == http::verb::head);
  http::read(stream, buffer, parser);
  const http::response<http::string_body>& response = parser.get();
  Reply reply;
  reply.status = response.result_int();
  reply.body = response.body();
  for (const auto& field : response) {
    reply.headers[std::string(field.name_string())] = std::string(field.value());
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return reply;
}

inline Reply get(std::uint16_t port, std::string target) {
  return http_call(port, http::verb::get, std::move(target));
}

// A POST with an Idempotency-Key, or without one when `key` is empty.
inline Reply post(std::uint16_t port, std::string target, std::string body, std::string key) {
  std::vector<std::pair<std::string, std::string>> headers;
  if (!key.empty()) headers.emplace_back("Idempotency-Key", std::move(key));
  return http_call(port, http::verb::post, std::move(target), std::move(body), headers);
}

// Sends `bytes` on a fresh connection (then ends its side when
// `end_after`) and returns all that comes back until the server closes it.
inline std::string send_raw_until_closed(std::uint16_t port, const std::string& bytes,
                                         bool end_after = false) {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  boost::system::error_code ec;
  asio::write(socket, asio::buffer(bytes), ec);
  if (end_after) socket.shutdown(tcp::socket::shutdown_send, ec);
  std::string received;
  char chunk[4096];
  while (true) {
    const std::size_t n = socket.read_some(asio::buffer(chunk), ec);
    if (ec) break;
    received.append(chunk, n);
  }
  return received;
}

// The value of the line "name value" of /metrics (name with its labels), or
// -1 when there is no such line. Some counters (tally_ops_total) print no
// line while they are zero: -1 keeps "absent" apart from a printed 0.
inline std::int64_t metric(std::uint16_t port, std::string_view name) {
  const std::string body = get(port, "/metrics").body;
  const std::string prefix = "\n" + std::string(name) + " ";
  const std::size_t at = body.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stoll(body.substr(at + prefix.size()));
}

}  // namespace
}  // namespace tally
