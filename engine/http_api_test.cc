// The HTTP API's contract (docs/http-api.md) where an audit found it loose:
// holds as of a point, unknown parameters, audit fields inside batch ops,
// 405 and Allow, strict JSON, capped feed parameters, names in read paths, metrics
// of refused requests, requests cut off by their client, the bearer scheme's
// case, hold_key, and transfer codings. Against a real server on ephemeral 127.0.0.1 ports
// (engine/server_fixture.h); no timed assertions.
#include <doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <string_view>
#include <vector>

#include "engine/json.h"
#include "engine/server.h"
#include "engine/server_fixture.h"

namespace tally {
namespace {

std::uint64_t next_seq(std::uint16_t port) {
  return static_cast<std::uint64_t>(metric(port, "tally_next_seq"));
}

std::vector<json::Value> events_of(const Reply& answer) {
  REQUIRE(answer.status == 200);
  const json::Value page = answer.json();
  const json::Value* events = page.find("events");
  REQUIRE(events != nullptr);
  return events->items;
}

// An answer refusing the request as invalid: 400, problem code "invalid".
// A macro, so that a failure names the test's line rather than a helper's.
#define CHECK_INVALID(reply)           \
  do {                                 \
    const Reply& reply_ = (reply);     \
    CHECK(reply_.status == 400);       \
    CHECK(reply_.code() == "invalid"); \
  } while (0)

constexpr std::string_view kAcquire = R"({"subject":"berlin","item":"sku","qty":5})";

// Acquires 5 sku in berlin and holds 2 of them for a minute (seqs 1 and
// 2): the hold's path (/v1/holds/{id}) and the time of its event.
struct HeldSku {
  std::string path;
  std::int64_t timestamp_ns = 0;
};
HeldSku acquire_and_hold(std::uint16_t port) {
  REQUIRE(post(port, "/v1/acquire", std::string(kAcquire), "a1").status == 200);
  const Reply held =
      post(port, "/v1/holds", R"({"subject":"berlin","item":"sku","qty":2,"ttl_ms":60000})",
           "h1");
  REQUIRE(held.status == 200);
  return {"/v1/holds/" + std::to_string(held.integer("hold_id")), held.integer("timestamp_ns")};
}

TEST_CASE("http api: a body of whitespace only is an empty object") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::string hold = acquire_and_hold(port).path;
  CHECK_INVALID(post(port, hold + "/commit", " \n x", "c1"));
  CHECK(post(port, hold + "/commit", " \r\n\t", "c1").status == 200);  // commit all
  CHECK(get(port, hold).integer("committed_qty") == 2);
}

TEST_CASE("http api: GET /v1/holds/{id} as of a seq or a time; unknown parameters refused") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const HeldSku held = acquire_and_hold(port);
  const std::string& hold = held.path;
  REQUIRE(post(port, hold + "/commit", "{}", "c1").status == 200);
  CHECK(get(port, hold).string("status") == "committed");
  // As the events left it: open after the hold (seq 2), committed after
  // the commit (seq 3), no hold before it.
  CHECK(get(port, hold + "?at_seq=2").string("status") == "open");
  CHECK(get(port, hold + "?at_seq=3").string("status") == "committed");
  const Reply not_yet = get(port, hold + "?at_seq=1");
  CHECK(not_yet.status == 404);
  CHECK(not_yet.code() == "hold_unknown");  // as a commit of an unknown hold
  const Reply never = get(port, "/v1/holds/999");
  CHECK(never.status == 404);
  CHECK(never.code() == "hold_unknown");
  const std::int64_t held_at = held.timestamp_ns;
  CHECK(get(port, hold + "?at_time=" + std::to_string(held_at)).string("status") == "open");
  CHECK(get(port, hold + "?at_seq=9").status == 400);  // past the end of the log
  for (const std::string query : {"?verbose=1", "?at_seq=1&at_time=1", "?%zz", "?at_seq=x"}) {
    CAPTURE(query);
    const Reply answer = get(port, hold + query);
    CHECK_INVALID(answer);
  }
  CHECK(get(port, hold + "?").status == 200);  // an empty query is no parameter
  // A time past what an int64 of ns holds is named as such, and so is a
  // seq past 2^64 - 1.
  const Reply far = get(port, hold + "?at_time=9223372036854775808");
  CHECK_INVALID(far);
  CHECK(far.string("detail").starts_with("\"at_time\" is outside the times a ledger can hold"));
  const Reply past = get(port, hold + "?at_seq=18446744073709551616");
  CHECK_INVALID(past);
  CHECK(past.string("detail") == "\"at_seq\" is at most 18446744073709551615");
  const Reply from = get(port, "/v1/events?from_seq=18446744073709551616");
  CHECK_INVALID(from);
  CHECK(from.string("detail") == "\"from_seq\" is at most 18446744073709551615");
  CHECK(get(port, "/v1/events?from_seq=-1").string("detail") ==
        "\"from_seq\" must be a non-negative integer");

  // Mutations take no query parameter either; nothing is written.
  const std::uint64_t before = next_seq(port);
  const Reply dry = post(port, "/v1/acquire?dry_run=1", std::string(kAcquire), "a2");
  CHECK_INVALID(dry);
  CHECK(next_seq(port) == before);
}

TEST_CASE("http api: audit fields belong to the batch, not to its ops") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t before = next_seq(port);
  for (const std::string field : {"reason", "reference", "actor"}) {
    CAPTURE(field);
    const std::string body = R"({"ops":[{"op":"acquire","subject":"s","item":"i","qty":1,")" +
                             field + R"(":"restock"}]})";
    const Reply answer = post(port, "/v1/batch", body, "b-" + field);
    CHECK_INVALID(answer);
    CHECK(answer.json().find("detail")->text.find("unknown field") != std::string::npos);
  }
  CHECK(next_seq(port) == before);  // nothing written

  // At the top level they are stored in the batch's event.
  const Reply batch = post(port, "/v1/batch",
                            R"({"reason":"restock","reference":"PO-9","actor":"ann",
                                "ops":[{"op":"acquire","subject":"s","item":"i","qty":1}]})",
                            "b-top");
  REQUIRE(batch.status == 200);
  const auto events = events_of(get(port, "/v1/events?from_seq=" + std::to_string(before)));
  REQUIRE(events.size() == 1);
  const json::Value* meta = events[0].find("meta");
  REQUIRE(meta != nullptr);
  CHECK(meta->find("reason")->text == "restock");
  CHECK(meta->find("reference")->text == "PO-9");
  CHECK(meta->find("actor")->text == "ann");
}

TEST_CASE("http api: both framings of a body, in either order, are said to be both") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::string start = "POST /v1/acquire HTTP/1.1\r\nHost: x\r\n";
  const std::string chunked = "Transfer-Encoding: chunked\r\n";
  const std::string length = "Content-Length: 3\r\n";
  for (const std::string& framing : {chunked + length, length + chunked}) {
    const std::string answer = send_raw_until_closed(port, start + framing + "\r\n");
    CHECK(answer.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(answer.find("malformed HTTP request: both Content-Length and Transfer-Encoding") !=
          std::string::npos);
  }
  const std::string bad = send_raw_until_closed(port, start + "Content-Length: 3x\r\n\r\n");
  CHECK(bad.find("malformed HTTP request: bad Content-Length") != std::string::npos);
}

TEST_CASE("http api: a method a route does not answer is 405 with Allow") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  struct Case {
    http::verb method;
    std::string target;
    std::string allow;
  };
  const std::vector<Case> cases = {
      {http::verb::get, "/v1/acquire", "POST"},
      {http::verb::get, "/v1/consume", "POST"},
      {http::verb::put, "/v1/transfer", "POST"},
      {http::verb::get, "/v1/batch", "POST"},
      {http::verb::get, "/v1/holds", "POST"},
      {http::verb::get, "/v1/holds/5/commit", "POST"},
      {http::verb::delete_, "/v1/holds/5/release", "POST"},
      {http::verb::post, "/v1/holds/5", "GET"},
      {http::verb::post, "/v1/balances/a/b", "GET"},
      {http::verb::delete_, "/v1/balances/a", "GET"},
      {http::verb::post, "/v1/events", "GET"},
      {http::verb::post, "/metrics", "GET"},
      {http::verb::post, "/health", "GET"},
      {http::verb::delete_, "/v1/acquire", "POST"},
  };
  for (const Case& test : cases) {
    CAPTURE(test.target);
    CAPTURE(http::to_string(test.method));
    const Reply answer = http_call(port, test.method, test.target);
    CHECK(answer.status == 405);
    CHECK(answer.code() == "method_not_allowed");
    CHECK(answer.header("Allow") == test.allow);
  }
  // No route at all is still 404, whatever the method.
  for (const http::verb method : {http::verb::get, http::verb::post}) {
    for (const std::string target : {"/v1/nope", "/v2/acquire", "/v1/holds/5/undo", "/"}) {
      CAPTURE(target);
      const Reply answer = http_call(port, method, target);
      CHECK(answer.status == 404);
      CHECK(answer.code() == "not_found");
      CHECK(answer.header("Allow").empty());
    }
  }
  // An answer to HEAD is headers only, and its connection is closed after.
  const Reply head = http_call(port, http::verb::head, "/health");
  CHECK(head.status == 405);
  CHECK(head.header("Allow") == "GET");
  CHECK(head.header("Connection") == "close");
  const std::string raw = send_raw_until_closed(port, "HEAD /health HTTP/1.1\r\nHost: h\r\n\r\n");
  CHECK(raw.starts_with("HTTP/1.1 405 "));
  CHECK(raw.find("\r\n\r\n") == raw.size() - 4);
}

TEST_CASE("http api: JSON with a repeated member, a leading zero or bytes not UTF-8 is malformed") {
  // Bytes that are not UTF-8: stray, overlong, an encoded surrogate, cut short.
  for (const std::string_view text :
       {R"({"a":1,"a":1})", R"({"a":1,"b":{"c":1,"c":2}})", R"([{"x":"a","x":"b"}])", "01",
        "-01", "00", "[1,02]", "1.", ".5", "-", "+1", "1e", "1e+", "1.5e", "--1", "0x10", "1-2",
        "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xe2\x82\"", "{\"\xfe\":1}"}) {
    CAPTURE(text);
    const auto parsed = json::parse(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.code() == ErrorCode::invalid);
    CHECK(parsed.status().message().find("malformed JSON") != std::string::npos);
  }
  for (const std::string_view text : {"0", "-0", "10", "1.5", "0.25", "-1.5E-3", "1e5", "2E+2",
                                      R"({"a":1,"b":1})", R"([{"a":1},{"a":2}])",
                                      "\"\xc3\xbf\"", "\"\xf0\x9f\x98\x80\""}) {
    CAPTURE(text);
    CHECK(json::parse(text).ok());
  }

  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t before = next_seq(port);
  for (const std::string body :
       {R"({"subject":"a","subject":"b","item":"i","qty":1})",
        R"({"subject":"a","item":"i","qty":01})", R"({"subject":"a","item":"i","qty":-01})",
        R"({"ops":[{"op":"acquire","op":"consume","subject":"a","item":"i","qty":1}]})"}) {
    CAPTURE(body);
    const std::string route = body.find("ops") != std::string::npos ? "/v1/batch" : "/v1/acquire";
    const Reply answer = post(port, route, body, "k");
    CHECK_INVALID(answer);
  }
  CHECK(next_seq(port) == before);
}

TEST_CASE("http api: /health and /metrics take no parameters; a path's empty item is 400") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  CHECK(get(port, "/health").status == 200);
  CHECK_INVALID(get(port, "/health?x=1"));
  CHECK(get(port, "/metrics").status == 200);
  CHECK_INVALID(get(port, "/metrics?x=1"));
  // "/v1/balances/a/" names subject a's empty item, not subject a.
  const Reply empty_item = get(port, "/v1/balances/a/");
  CHECK_INVALID(empty_item);
  CHECK(empty_item.string("detail") == "item is empty");
  CHECK(get(port, "/v1/balances/a").status == 200);
  CHECK(get(port, "/health/").status == 404);
}

TEST_CASE("http api: a batch of more than 1000 ops, a hold named badly: refused with their rule") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  // Too long by one op or by many, and whatever the ops hold: the count is
  // checked first, as the ledger checks it.
  const auto ops = [](int count, int bad_index) {
    std::string body = R"({"ops":[)";
    for (int index = 0; index < count; index++) {
      if (index > 0) body += ',';
      body += index == bad_index ? R"({"op":"acquire","subject":"a","item":"b"})"
                                 : R"({"op":"acquire","subject":"a","item":"b","qty":1})";
    }
    return body + "]}";
  };
  for (const auto& [count, bad_index] : {std::pair{1001, -1}, {1500, -1}, {1001, 5}}) {
    CAPTURE(count);
    CAPTURE(bad_index);
    const Reply answer = post(port, "/v1/batch", ops(count, bad_index), "big");
    CHECK_INVALID(answer);
    CHECK(answer.string("detail") == "batch has more than 1000 ops");
  }
  // And an empty hold_key is said to be empty, not missing.
  const Reply empty_key =
      post(port, "/v1/batch", R"({"ops":[{"op":"release","hold_key":""}]})", "empty");
  CHECK_INVALID(empty_key);
  CHECK(empty_key.string("detail").find("\"hold_key\" is empty") != std::string::npos);
  // Beside an id too: it is no key, not a second name.
  const Reply empty_beside_id = post(
      port, "/v1/batch", R"({"ops":[{"op":"release","hold_id":5,"hold_key":""}]})", "empty-id");
  CHECK_INVALID(empty_beside_id);
  CHECK(empty_beside_id.string("detail") == "op 0: \"hold_key\" is empty");
  // A hold_id beside a hold_key names it twice, even an id of 0.
  for (const char* id : {"0", "\"0\"", "7"}) {
    const Reply twice = post(port, "/v1/batch",
                             R"({"ops":[{"op":"release","hold_key":"h","hold_id":)" +
                                 std::string(id) + "}]}",
                             std::string("twice-") + id);
    CHECK_INVALID(twice);
    CHECK(twice.string("detail") == "op 0: name the hold by hold id or by hold_key, not both");
  }
  CHECK(next_seq(port) == 1);
}

TEST_CASE("http api: an integer past its type's range is said to be, not to be no integer") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const auto detail = [port](const std::string& path, const std::string& body, std::string key) {
    const Reply answer = post(port, path, body, std::move(key));
    CHECK_INVALID(answer);
    return answer.string("detail");
  };
  CHECK(detail("/v1/acquire", R"({"subject":"s","item":"i","qty":9223372036854775808})", "q1") ==
        "\"qty\" is outside the int64 range");
  CHECK(detail("/v1/acquire", R"({"subject":"s","item":"i","qty":-9223372036854775809})",
               "q2") == "\"qty\" is outside the int64 range");
  CHECK(detail("/v1/acquire", R"({"subject":"s","item":"i","qty":1.5})", "q3") ==
        "\"qty\" must be an integer");
  CHECK(detail("/v1/holds/18446744073709551616/commit", "{}", "c1") ==
        "a hold id is at most 18446744073709551615");
  CHECK(detail("/v1/holds/-1/commit", "{}", "c2") ==
        "a hold id is a decimal number without leading zeros");
  CHECK(detail("/v1/batch", R"({"ops":[{"op":"release","hold_id":18446744073709551616}]})",
               "b1") == "op 0: \"hold_id\" is at most 18446744073709551615");
  CHECK(detail("/v1/batch", R"({"ops":[{"op":"release","hold_id":-1}]})", "b2") ==
        "op 0: \"hold_id\" must be a non-negative integer");
  CHECK(detail("/v1/batch", R"({"ops":[{"op":"release","hold_id":"18446744073709551616"}]})",
               "b3") == "op 0: a hold id is at most 18446744073709551615");
  CHECK(get(port, "/v1/holds/18446744073709551616").string("detail") ==
        "a hold id is at most 18446744073709551615");
  CHECK(next_seq(port) == 1);
}

TEST_CASE("http api: a request with two Idempotency-Key headers is 400 and writes nothing") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t before = next_seq(port);
  const std::string body(kAcquire);
  const std::string answer = send_raw_until_closed(
      port, "POST /v1/acquire HTTP/1.1\r\nHost: h\r\nIdempotency-Key: k1\r\n"
            "Idempotency-Key: k2\r\nConnection: close\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body);
  CHECK(answer.starts_with("HTTP/1.1 400 "));
  CHECK(answer.find("more than one Idempotency-Key header") != std::string::npos);
  CHECK(next_seq(port) == before);
}

TEST_CASE("http api: an HTTP/1.1 request names exactly one valid Host; HTTP/1.0 may name none") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t before = next_seq(port);
  const std::string body(kAcquire);
  const std::string mutation = "POST /v1/acquire HTTP/1.1\r\nIdempotency-Key: h1\r\n"
                               "Connection: close\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\n";
  for (const std::string& hosts : {std::string(), std::string("Host: a\r\nHost: b\r\n")}) {
    const std::string answer = send_raw_until_closed(port, mutation + hosts + "\r\n" + body);
    CHECK(answer.starts_with("HTTP/1.1 400 "));
    CHECK(answer.find("exactly one Host header") != std::string::npos);
  }
  // One whose value is not uri-host [":" port] is refused too (RFC 9112 3.2).
  for (const std::string host : {"a b/c", "a:b", "a@b", "[::1", "[]", "a:1:2", "%4", "[::1]x",
                                 "[:]", "[zz]", "[1.2.3.4]", "[v.]", "[v1.]", "[fe80::1%eth0]"}) {
    CAPTURE(host);
    const std::string answer =
        send_raw_until_closed(port, mutation + "Host: " + host + "\r\n\r\n" + body);
    CHECK(answer.starts_with("HTTP/1.1 400 "));
    CHECK(answer.find("the Host header is not a host name") != std::string::npos);
  }
  CHECK(next_seq(port) == before);
  CHECK(send_raw_until_closed(port, "GET /health HTTP/1.0\r\n\r\n")
            .starts_with("HTTP/1.0 200 OK\r\n"));
  for (const std::string host : {"", "localhost:7421", "127.0.0.1", "[::1]:80", "x.example:",
                                 "a%2Db", "[v1.x]", "[fe80::1%25eth0]", "[::ffff:1.2.3.4]"}) {
    CAPTURE(host);
    CHECK(send_raw_until_closed(port, "GET /health HTTP/1.1\r\nConnection: close\r\nHost: " +
                                          host + "\r\n\r\n")
              .starts_with("HTTP/1.1 200 OK\r\n"));
  }
}

TEST_CASE("http api: a transfer coding other than one final chunked is refused, the body unread") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t before = next_seq(port);
  // Read as a body, or as the next request by a server that ignored the
  // coding: either way it must not be answered.
  const std::string smuggled = "GET /v1/balances/berlin/sku HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string body(kAcquire);
  struct Case {
    std::string version;
    std::string headers;
    std::string_view status;
    std::string_view code;
  };
  const Case cases[] = {
      {"1.1", "Transfer-Encoding: gzip\r\n", "400", "invalid"},
      {"1.1", "Transfer-Encoding: gzip\r\nContent-Length: " + std::to_string(body.size()) + "\r\n",
       "400", "invalid"},
      {"1.1", "Transfer-Encoding: chunked, gzip\r\n", "400", "invalid"},
      {"1.1", "Transfer-Encoding: chunked,chunked\r\n", "400", "invalid"},
      {"1.1", "Transfer-Encoding: ,\r\n", "400", "invalid"},
      {"1.0", "Transfer-Encoding: chunked\r\n", "400", "invalid"},
      {"1.1", "Transfer-Encoding: xyz, chunked\r\n", "501", "not_implemented"},
      {"1.1", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "501",
       "not_implemented"},
  };
  int key = 0;
  for (const Case& test : cases) {
    CAPTURE(test.headers);
    const std::string answer = send_raw_until_closed(
        port, "POST /v1/acquire HTTP/" + test.version + "\r\nHost: h\r\nIdempotency-Key: te" +
                  std::to_string(key++) + "\r\n" + test.headers + "\r\n" + body + smuggled);
    CHECK(answer.starts_with("HTTP/" + test.version + " " + std::string(test.status) + " "));
    CHECK(answer.find("\"code\":\"" + std::string(test.code) + "\"") != std::string::npos);
    // One answer (each has a Content-Length), then closed.
    CHECK(answer.find("Content-Length:") == answer.rfind("Content-Length:"));
  }
  CHECK(next_seq(port) == before);

  // One chunked coding, in any case, is read.
  std::string chunks;
  for (std::size_t at = 0; at < body.size(); at += 8) {
    const std::string part = body.substr(at, 8);
    chunks += std::to_string(part.size()) + "\r\n" + part + "\r\n";  // under 10: hex alike
  }
  const std::string answer = send_raw_until_closed(
      port, "POST /v1/acquire HTTP/1.1\r\nHost: h\r\nIdempotency-Key: chunked\r\n"
            "Connection: close\r\nTransfer-Encoding:  Chunked \r\n\r\n" + chunks + "0\r\n\r\n");
  CHECK(answer.starts_with("HTTP/1.1 200 "));
  CHECK(fx.ledger->balance("berlin", "sku")->available == 5);
}

TEST_CASE("http api: HTTP/1.0 keep-alive is answered in 1.0 and kept; Expect: 100-continue") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::string answers = send_raw_until_closed(
      port, "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.0\r\n\r\n");
  // Both answered on the one connection; the first says it stays open.
  CHECK(answers.starts_with("HTTP/1.0 200 OK\r\n"));
  const std::size_t second = answers.find("HTTP/1.0 200 OK\r\n", 1);
  REQUIRE(second != std::string::npos);
  CHECK(answers.substr(0, second).find("Connection: keep-alive\r\n") != std::string::npos);
  CHECK(answers.find("Connection: keep-alive", second) == std::string::npos);

  // A client that waits for "100 Continue" before its body gets it.
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  const std::string body(kAcquire);
  asio::write(socket, asio::buffer("POST /v1/acquire HTTP/1.1\r\nHost: h\r\nIdempotency-Key: e1\r\n"
                                   "Expect: 100-continue\r\nConnection: close\r\n"
                                   "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n"));
  std::string interim;
  char chunk[256];
  while (interim.find("\r\n\r\n") == std::string::npos) {
    interim.append(chunk, socket.read_some(asio::buffer(chunk)));
  }
  CHECK(interim == "HTTP/1.1 100 Continue\r\n\r\n");
  asio::write(socket, asio::buffer(body));
  std::string final_answer;
  boost::system::error_code ec;
  while (!ec) final_answer.append(chunk, socket.read_some(asio::buffer(chunk), ec));
  CHECK(final_answer.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(fx.ledger->balance("berlin", "sku")->available == 5);

  // One the headers decide is answered instead (refused, or a GET, which
  // takes no body), and the connection closes with its body never asked
  // for (nor sent).
  struct Decided {
    std::string request;
    std::string key_header;
    std::string status;
  };
  for (const Decided& decided : std::vector<Decided>{
           {"POST /v1/nowhere", "Idempotency-Key: e2\r\n", "404"},
           {"PUT /v1/acquire", "Idempotency-Key: e2\r\n", "405"},
           {"POST /v1/acquire?foo=1", "Idempotency-Key: e2\r\n", "400"},
           {"POST /v1/acquire?%zz", "Idempotency-Key: e2\r\n", "400"},
           {"POST /v1/holds/abc/commit", "Idempotency-Key: e2\r\n", "400"},
           {"POST /v1/holds/7/release", "Idempotency-Key: e2\r\nIdempotency-Key: e4\r\n", "400"},
           {"POST /v1/acquire", "", "400"},
           {"POST /v1/acquire", "Idempotency-Key: " + std::string(256, 'k') + "\r\n", "400"},
           {"GET /metrics", "", "200"},
           {"GET /v1/balances/berlin/sku", "", "200"}}) {
    CAPTURE(decided.request);
    const std::string answer = send_raw_until_closed(
        port, decided.request + " HTTP/1.1\r\nHost: h\r\n" + decided.key_header +
                  "Expect: 100-continue\r\nContent-Length: " + std::to_string(body.size()) +
                  "\r\n\r\n");
    CHECK(answer.starts_with("HTTP/1.1 " + decided.status + " "));
    CHECK(answer.find("100 Continue") == std::string::npos);
    CHECK(answer.find("Connection: close\r\n") != std::string::npos);
  }
  CHECK(fx.ledger->balance("berlin", "sku")->available == 5);

  // HTTP/1.0 has no 1xx answers: the expectation is ignored, the body read.
  const std::string old_client = send_raw_until_closed(
      port, "POST /v1/acquire HTTP/1.0\r\nIdempotency-Key: e3\r\nExpect: 100-continue\r\n"
            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  CHECK(old_client.starts_with("HTTP/1.0 200 OK\r\n"));
  CHECK(old_client.find("100 Continue") == std::string::npos);
  CHECK(fx.ledger->balance("berlin", "sku")->available == 10);
}

TEST_CASE("http api: limit and wait_ms of any size are capped; non-digits are 400") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  // More events than one answer may hold, small enough that the answer's
  // byte bound is not what stops it.
  for (int index = 0; index < 1001; index++) {
    REQUIRE(fx.ledger->acquire(key_of("k", index, 0), "s", "i", 1).ok());
  }
  const auto capped = events_of(get(port, "/v1/events?limit=1000"));
  CHECK(capped.size() == 1000);
  for (const std::string& limit :
       std::vector<std::string>{"1001", "4294967296", "18446744073709551616",
                                "99999999999999999999", std::string(300, '9')}) {
    CAPTURE(limit);
    const Reply answer = get(port, "/v1/events?limit=" + limit);
    CHECK(events_of(answer).size() == 1000);
    CHECK(answer.integer("next_seq") == 1001);
  }
  // wait_ms likewise (events are there: the poll answers at once).
  CHECK(events_of(get(port, "/v1/events?wait_ms=99999999999999999999&limit=1")).size() == 1);
  for (const std::string target :
       {"/v1/events?limit=-1", "/v1/events?limit=99999999999999999999x", "/v1/events?limit=1e3",
        "/v1/events?limit=+5", "/v1/events?limit=", "/v1/events?limit=0", "/v1/events?limit=000",
        "/v1/events?wait_ms=-99999999999999999999", "/v1/events?wait_ms=1.5"}) {
    CAPTURE(target);
    const Reply answer = get(port, target);
    CHECK_INVALID(answer);
  }
}

TEST_CASE("http api: read paths refuse the names mutations refuse, with the same answer") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const Reply mutation =
      post(port, "/v1/acquire", R"({"subject":"a\u0000b","item":"g","qty":1})", "nul");
  REQUIRE(mutation.status == 400);
  REQUIRE(mutation.code() == "invalid");
  const std::string long_name(256, 'x');
  for (const std::string& target : std::vector<std::string>{
           "/v1/balances/a%00b/g", "/v1/balances/a/g%00", "/v1/balances/%00", "/v1/balances/a%00b",
        "/v1/balances/a%00b/g?at_seq=0", "/v1/balances/" + long_name + "/g",
        "/v1/balances/a/" + long_name, "/v1/balances/" + long_name, "/v1/balances//g"}) {
    CAPTURE(target);
    const Reply answer = get(port, target);
    CHECK(answer.status == mutation.status);
    CHECK(answer.code() == mutation.code());
  }
  // A raw '#' is refused, in a path or a query; encoded, it is a name's byte.
  CHECK_INVALID(get(port, "/v1/balances/a/g#frag"));
  CHECK_INVALID(get(port, "/v1/balances/a/g?at_seq=0#frag"));
  CHECK(get(port, "/v1/balances/a/g%23frag").status == 200);
  const Reply nul = get(port, "/v1/balances/a%00b/g");
  CHECK(nul.json().find("detail")->text == "subject contains NUL");
  CHECK(get(port, "/v1/balances/a/g").status == 200);
}

TEST_CASE("http api: requests refused while decoding count in the metrics as invalid") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const auto ops = [&](std::string_view op) {
    return metric(port, "tally_ops_total{op=\"" + std::string(op) + "\",outcome=\"invalid\"}");
  };
  const auto latency_count = [&](std::string_view op) {
    return metric(port, "tally_request_duration_seconds_count{op=\"" + std::string(op) + "\"}");
  };
  CHECK(post(port, "/v1/acquire", "{not json", "k1").status == 400);
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":"1"})", "k2").status ==
        400);
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b"})", "k3").status == 400);
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1,"x":1})", "k4")
            .status == 400);
  CHECK(post(port, "/v1/acquire", std::string(kAcquire), "").status == 400);  // no key
  CHECK(ops("acquire") == 5);
  CHECK(latency_count("acquire") == 5);
  // The ledger's own refusal (an empty subject) is counted as before.
  CHECK(post(port, "/v1/acquire", R"({"subject":"","item":"b","qty":1})", "k5").status == 400);
  CHECK(ops("acquire") == 6);

  CHECK(post(port, "/v1/transfer", "[]", "k6").status == 400);
  CHECK(post(port, "/v1/holds", R"({"subject":"a","item":"b","qty":1})", "k7").status == 400);
  CHECK(post(port, "/v1/holds/x/commit", "{}", "k8").status == 400);
  CHECK(post(port, "/v1/holds/5/release", R"({"hold_id":5})", "k9").status == 400);
  CHECK(post(port, "/v1/batch", R"({"ops":{}})", "k10").status == 400);
  CHECK(get(port, "/v1/balances/a%00/b").status == 400);
  CHECK(get(port, "/v1/balances/a?at_seq=x").status == 400);
  CHECK(get(port, "/v1/holds/x").status == 400);
  CHECK(get(port, "/v1/events?limit=x").status == 400);
  for (const std::string_view op :
       {"transfer", "hold", "commit", "release", "batch", "balance", "list", "hold_info",
        "events"}) {
    CAPTURE(op);
    CHECK(ops(op) == 1);
    CHECK(latency_count(op) == 1);
  }
  // A request of no route, or of a route it used the wrong method on, is
  // no request of an op.
  CHECK(post(port, "/v1/nope", "{}", "k11").status == 404);
  CHECK(get(port, "/v1/acquire").status == 405);
  CHECK(ops("acquire") == 6);
  CHECK(latency_count("acquire") == 6);
}

TEST_CASE("http api: a long poll counts once, and a scrape is not in the queue depth") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::string ok_events = "tally_ops_total{op=\"events\",outcome=\"ok\"}";
  const std::string timed_events = "tally_request_duration_seconds_count{op=\"events\"}";
  // One that waits out its time, one a commit wakes, one that need not wait.
  CHECK(get(port, "/v1/events?from_seq=1&wait_ms=50").status == 200);
  std::thread wake([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1})", "k1").status == 200);
  });
  CHECK(get(port, "/v1/events?from_seq=1&wait_ms=20000").integer("next_seq") == 2);
  wake.join();
  CHECK(get(port, "/v1/events?from_seq=1&wait_ms=20000").integer("next_seq") == 2);
  CHECK(metric(port, ok_events) == 3);
  CHECK(metric(port, timed_events) == 3);
  for (int scrape = 0; scrape < 20; scrape++) CHECK(metric(port, "tally_queue_depth") == 0);
}

TEST_CASE("http api: a client that ends its side inside a request is gone, not malformed") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  // Within its headers, and within its body: nothing comes back.
  CHECK(send_raw_until_closed(port, "GET /health HTTP/1.1\r\nHo", /*end_after=*/true).empty());
  CHECK(send_raw_until_closed(port,
                              "POST /v1/acquire HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\n"
                              "Content-Length: 40\r\n\r\n{\"subject\"",
                              /*end_after=*/true)
            .empty());
  CHECK(metric(port, "tally_malformed_total") == 0);
  CHECK(next_seq(port) == 1);  // nothing written
  // A request that cannot be read is still malformed, and answered.
  CHECK(send_raw_until_closed(port, "GET /health HTTP/1.1\r\nHost x\r\n\r\n").find("400") !=
        std::string::npos);
  CHECK(metric(port, "tally_malformed_total") == 1);
}

TEST_CASE("http api: out of file descriptors, accepts wait, say so once, and serve again after") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  rlimit before{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &before) == 0);
  std::vector<int> clients;
  {
    // Sockets take every descriptor the process may have; then they
    // connect, which needs none, and wait for accepts that cannot get one.
    const auto open_now =
        static_cast<rlim_t>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                          std::filesystem::directory_iterator()));
    rlimit low = before;
    low.rlim_cur = open_now + 16;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    for (int fd = ::socket(AF_INET, SOCK_STREAM, 0); fd >= 0;
         fd = ::socket(AF_INET, SOCK_STREAM, 0)) {
      clients.push_back(fd);
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (const int fd : clients) {
      CHECK(::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    // One descriptor comes free: an accept takes it, and the next fails
    // again, as at the limit of a server whose connections come and go.
    ::close(clients.back());
    clients.pop_back();
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    REQUIRE(setrlimit(RLIMIT_NOFILE, &before) == 0);
  }
  for (const int fd : clients) ::close(fd);
  CHECK(get(port, "/health").status == 200);
  // Every failure counted; the first said, and the recovery after it,
  // once each: the failures after that recovery, within the minute, not.
  CHECK(metric(port, "tally_accept_failures_total") >= 4);
  std::vector<std::string> said;
  {
    // Each line names its listener.
    const std::string prefix = "listening on 127.0.0.1:" + std::to_string(port) + ": ";
    std::lock_guard<std::mutex> guard(fx.log_mu);
    for (const std::string& line : fx.logs) {
      if (line.find(prefix + "accept failed") != std::string::npos) said.push_back("failed");
      if (line.find(prefix + "accepting connections again") != std::string::npos) {
        said.push_back("again");
      }
    }
  }
  CHECK(said == std::vector<std::string>{"failed", "again"});
}

TEST_CASE("http api: the bearer scheme's name is case-insensitive") {
  Fixture fx("s3cret");
  const std::uint16_t port = fx.server->http_port();
  const auto status = [&](std::string authorization) {
    return http_call(port, http::verb::get, "/v1/balances/a/b", {},
                {{"Authorization", std::move(authorization)}})
        .status;
  };
  for (const std::string header : {"Bearer s3cret", "bearer s3cret", "BEARER s3cret",
                                   "bEaReR s3cret", "Bearer   s3cret"}) {
    CAPTURE(header);
    CHECK(status(header) == 200);
  }
  for (const std::string header : {"bearer wrong", "Bearers3cret", "Bearerx s3cret",
                                   "Basic s3cret", "bearer", "bearer ", "s3cret", "beare s3cret"}) {
    CAPTURE(header);
    CHECK(status(header) == 401);
  }
}

TEST_CASE("http api: hold_key names a hold made by POST /v1/holds; a batch's key names none") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  REQUIRE(post(port, "/v1/acquire", std::string(kAcquire), "stock").status == 200);
  // As docs/http-api.md's checkout: two holds reserved by one batch...
  const Reply reserved = post(port, "/v1/batch", R"({"ops":[
      {"op":"hold","subject":"berlin","item":"sku","qty":1,"ttl_ms":900000},
      {"op":"hold","subject":"berlin","item":"sku","qty":1,"ttl_ms":900000}]})",
                               "order-7/reserve");
  REQUIRE(reserved.status == 200);
  const auto ids = reserved.json().find("hold_ids")->items;
  REQUIRE(ids.size() == 2);
  // ...are not named by the batch's key: its holds have ids of their own.
  const Reply by_batch_key = post(port, "/v1/batch",
                                   R"({"ops":[{"op":"commit","hold_key":"order-7/reserve"}]})",
                                   "order-7/pay-by-key");
  CHECK(by_batch_key.status == 404);
  CHECK(by_batch_key.code() == "hold_unknown");
  // A decimal string is written as the server writes ids: no leading zero.
  const Reply padded = post(port, "/v1/batch",
                            R"({"ops":[{"op":"commit","hold_id":"0)" + ids[0].text + R"("}]})",
                            "order-7/pay-padded");
  CHECK(padded.status == 400);
  CHECK(get(port, "/v1/holds/0" + ids[0].text).status == 400);
  CHECK(post(port, "/v1/holds/0" + ids[0].text + "/commit", "{}", "order-7/pay-path").status ==
        400);
  // By their ids, as decimal strings, both at once.
  const Reply paid = post(port, "/v1/batch",
                           R"({"ops":[{"op":"commit","hold_id":")" + ids[0].text +
                               R"("},{"op":"commit","hold_id":")" + ids[1].text + R"("}]})",
                           "order-7/pay");
  CHECK(paid.status == 200);

  // A hold made on its own is named by the key of its request.
  REQUIRE(post(port, "/v1/holds", R"({"subject":"berlin","item":"sku","qty":1,"ttl_ms":900000})",
               "order-8/reserve")
              .status == 200);
  const Reply by_key = post(port, "/v1/batch",
                             R"({"ops":[{"op":"commit","hold_key":"order-8/reserve"}]})",
                             "order-8/pay");
  CHECK(by_key.status == 200);
  const Reply balance = get(port, "/v1/balances/berlin/sku");
  CHECK(balance.integer("available") == 2);
  CHECK(balance.integer("held") == 0);
}

}  // namespace
}  // namespace tally
