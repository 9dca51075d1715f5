// Server, HTTP API, binary protocol and Client, against a real server on
// ephemeral 127.0.0.1 ports. No timed assertions: tests wait for events
// (answers, closed connections), never for durations. The fixture and the
// HTTP helpers are engine/server_fixture.h's.
#include "engine/server.h"

#include <doctest.h>

#include <array>
#include <atomic>
#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "engine/address.h"
#include "engine/client.h"
#include "engine/event_format.h"
#include "engine/json.h"
#include "engine/protocol.capnp.h"
#include "engine/replay.h"
#include "engine/server_fixture.h"
#include "engine/server_impl.h"
#include "engine/wire.h"
#include "log/event.h"
#include "log/faulty_file.h"
#include "log/format.h"
#include "log/reader.h"
#include "tests/testing.h"

namespace tally {
namespace {

constexpr std::int64_t kMinuteNs = 60ll * 1'000'000'000;

// Each event of the data directory's log as `tally log --json` prints it.
std::vector<std::string> log_json(const std::string& data_dir) {
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir));
  REQUIRE(reader.ok());
  log::EventDecoder decoder;
  log::Record record;
  log::Event event;
  std::vector<std::string> out;
  for (;;) {
    auto more = (*reader)->next(&record);
    REQUIRE(more.ok());
    if (!*more) return out;
    REQUIRE(decoder.decode(record.payload, &event).ok());
    append_event(event, EventFormat::json, &out.emplace_back());
  }
}

// Waits (without a clock) until `count` readers wait for a commit.
void await_event_waits(std::uint16_t port, std::int64_t count) {
  while (metric(port, "tally_event_waits") != count) std::this_thread::yield();
}

std::uint64_t uint_of(const json::Value& value) {
  std::uint64_t out = 0;
  CHECK(json::to_uint64(value, &out));
  return out;
}

// Reads one response frame from a raw binary connection.
// The next response, or nullopt with *ec set when the connection ends first.
std::optional<wire::Response> next_response(tcp::socket& socket, boost::system::error_code* ec) {
  wire::FrameWords frame(1);
  if (asio::read(socket, asio::buffer(frame.data(), 8), *ec); *ec) return std::nullopt;
  const std::size_t table = *wire::table_bytes(std::as_bytes(std::span(frame)));
  frame.resize(table / 8);
  asio::read(socket, asio::buffer(reinterpret_cast<char*>(frame.data()) + 8, table - 8), *ec);
  if (*ec) return std::nullopt;
  const std::size_t total =
      *wire::frame_bytes(std::as_bytes(std::span(frame)), wire::kAnswerBytesMax);
  frame.resize(total / 8);
  asio::read(socket, asio::buffer(reinterpret_cast<char*>(frame.data()) + table, total - table),
             *ec);
  if (*ec) return std::nullopt;
  auto response = wire::decode_response(frame);
  REQUIRE(response.ok());
  return std::move(*response);
}

wire::Response read_response(tcp::socket& socket) {
  boost::system::error_code ec;
  std::optional<wire::Response> response = next_response(socket, &ec);
  REQUIRE_MESSAGE(response.has_value(), ec.message());
  return std::move(*response);
}

// A raw connection to the binary port.
void connect_binary(tcp::socket& socket, std::uint16_t port) {
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
}

// A follow request, framed.
std::string follow_frame(std::uint64_t id, std::uint64_t from_seq) {
  wire::Request follow;
  follow.id = id;
  follow.kind = wire::Request::Kind::follow;
  follow.from_seq = from_seq;
  return wire::encode_request(follow);
}

// What a follow delivered, for a test thread to wait on.
struct FollowSink {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::uint64_t> seqs;
  std::vector<std::string> keys;
  std::size_t batches = 0;
  std::size_t largest_batch = 0;
  bool gap = false;  // a batch did not start where the last one ended
  std::optional<Status> end;

  Client::BatchHandler on_batch() {
    return [this](const EventBatch& batch) {
      std::lock_guard<std::mutex> guard(mu);
      gap = gap || (!seqs.empty() && batch.first_seq() != seqs.back() + 1);
      batches++;
      largest_batch = std::max(largest_batch, batch.size());
      CHECK(batch.for_each([&](const log::Event& event) {
        seqs.push_back(event.seq);
        keys.emplace_back(event.key);
      }).ok());
      CHECK(batch.next_seq() == seqs.back() + 1);
      cv.notify_all();
    };
  }
  Client::EndHandler on_end() {
    return [this](Status why) {
      std::lock_guard<std::mutex> guard(mu);
      end = std::move(why);
      cv.notify_all();
    };
  }
  void await_count(std::size_t count) {
    std::unique_lock<std::mutex> guard(mu);
    cv.wait(guard, [&] { return seqs.size() >= count || end.has_value(); });
  }
  Status await_end() {
    std::unique_lock<std::mutex> guard(mu);
    cv.wait(guard, [&] { return end.has_value(); });
    return *end;
  }
};

// Acquires keyed <prefix><first>.. with 1 KiB of metadata each, so that a
// 64 KiB segment holds a few dozen.
void append_large(LedgerApi& ledger, std::string_view prefix, int first, int count) {
  const Metadata meta{std::string(1000, 'r'), {}, {}};
  for (int index = first; index < first + count; index++) {
    auto receipt = ledger.acquire(key_of(prefix, index, 0), "alice", "gold", 1, meta);
    REQUIRE(receipt.ok());
    REQUIRE(receipt->outcome == Outcome::ok);
  }
}

std::vector<std::uint64_t> seq_range(std::uint64_t first, std::uint64_t last) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t seq = first; seq <= last; seq++) out.push_back(seq);
  return out;
}

// A current balance request, and its frame.
wire::Request balance_request(std::uint64_t id, std::string subject, std::string item) {
  wire::Request request;
  request.id = id;
  request.kind = wire::Request::Kind::balance;
  request.subject = std::move(subject);
  request.item = std::move(item);
  return request;
}
std::string balance_frame(std::uint64_t id, std::string subject, std::string item) {
  return wire::encode_request(balance_request(id, std::move(subject), std::move(item)));
}

// Sends the frame of request `id` alone on a fresh binary connection and
// decodes the one answer the server sends before it closes.
wire::Response lone_answer(std::uint16_t port, const std::string& frame, std::uint64_t id) {
  const std::string answer = send_raw_until_closed(port, frame);
  wire::FrameWords words((answer.size() + 7) / 8);
  std::memcpy(words.data(), answer.data(), answer.size());
  auto response = wire::decode_response(words);
  REQUIRE(response.ok());
  CHECK(response->id == id);
  return *response;
}
wire::Response lone_answer(std::uint16_t port, const wire::Request& request) {
  return lone_answer(port, wire::encode_request(request), request.id);
}

// Sets the union discriminant of `builder`, a struct of schema `Struct`, to
// `kind`: a member the schema does not have (yet).
template <class Struct>
void set_union_kind(typename Struct::Builder builder, std::uint16_t kind) {
  // The discriminant's place, in 16-bit units of the data section.
  const std::uint32_t offset =
      capnp::Schema::from<Struct>().getProto().getStruct().getDiscriminantOffset();
  kj::ArrayPtr<capnp::byte> data = capnp::AnyStruct::Builder(kj::mv(builder)).getDataSection();
  REQUIRE(data.size() >= 2 * offset + 2);
  data[2 * offset] = static_cast<capnp::byte>(kind & 0xff);
  data[2 * offset + 1] = static_cast<capnp::byte>(kind >> 8);
}

std::string frame_of(capnp::MallocMessageBuilder& builder) {
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  const auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// The frame of request `id` of a kind the schema does not have.
std::string unknown_kind_frame(std::uint64_t id) {
  capnp::MallocMessageBuilder builder;
  proto::Request::Builder request = builder.initRoot<proto::Request>();
  request.setId(id);
  request.initBalance();
  set_union_kind<proto::Request>(request, 99);
  return frame_of(builder);
}

// The same for a balance request of a/b.
wire::Response lone_balance_answer(std::uint16_t port) {
  return lone_answer(port, balance_request(9, "a", "b"));
}

// Requests with ids 1..count, each filled in by `fill`, framed back to back.
std::string burst_of(std::uint64_t count, const std::function<void(wire::Request*)>& fill) {
  std::string burst;
  for (std::uint64_t id = 1; id <= count; id++) {
    wire::Request request;
    request.id = id;
    fill(&request);
    burst += wire::encode_request(request);
  }
  return burst;
}

// Gives subject "big" `thousands` times 1000 items of 246-byte names, so
// that a list of it answers about 280 KB a thousand, far more than its
// request; then opens `socket` with a small receive buffer.
void make_wide_subject(Fixture& fx, tcp::socket& socket, int thousands = 1) {
  for (int batch = 0; batch < thousands; batch++) {
    std::vector<OpRequest> ops;
    for (int op = 0; op < 1000; op++) {
      std::string item = testing::name("item-", batch * 1000 + op);
      item.resize(246, 'x');
      ops.push_back(OpRequest::acquire("big", item, 1));
    }
    REQUIRE(fx.ledger->batch(testing::name("b", batch), ops)->outcome == Outcome::ok);
  }
  socket.open(tcp::v4());
  socket.set_option(asio::socket_base::receive_buffer_size(4096));
}

// make_wide_subject, then connects `socket` and sends `count` pipelined
// lists of "big".
void send_lists_of_a_wide_subject(Fixture& fx, tcp::socket& socket, std::uint64_t count) {
  make_wide_subject(fx, socket);
  connect_binary(socket, fx.server->binary_port());
  asio::write(socket, asio::buffer(burst_of(count, [](wire::Request* request) {
    request->kind = wire::Request::Kind::list;
    request->subject = "big";
  })));
}

TEST_CASE("server: failed accepts are said once a minute at most, the recovery once") {
  using server_detail::AcceptNotes;
  constexpr std::int64_t kSecond = 1'000'000'000;
  constexpr std::chrono::milliseconds kRetry{100};
  AcceptNotes notes;
  CHECK_FALSE(notes.accepted());  // nothing failed
  const std::int64_t start = 5 * kSecond;
  auto first = notes.failed(start, "Too many open files", kRetry);
  REQUIRE(first.has_value());
  CHECK(*first ==
        "accept failed: Too many open files (trying again every 100 ms; said once a minute at "
        "most)");
  // Within the minute: counted, not said; a recovery is said once.
  CHECK_FALSE(notes.failed(start + kSecond, "Too many open files", kRetry).has_value());
  CHECK(notes.accepted());
  CHECK_FALSE(notes.accepted());
  // A failure after that recovery, still within the minute: counted, and
  // the recovery after it unsaid, as its failure was.
  CHECK_FALSE(notes.failed(start + 59 * kSecond, "Too many open files", kRetry).has_value());
  CHECK_FALSE(notes.accepted());
  // A minute after the last line: said, with the count left unsaid.
  auto later = notes.failed(start + AcceptNotes::kIntervalNs, "Cannot allocate memory", kRetry);
  REQUIRE(later.has_value());
  CHECK(*later ==
        "accept failed: Cannot allocate memory (trying again every 100 ms; said once a minute at "
        "most; 2 more failed since the last such line)");
  CHECK(notes.accepted());
}

TEST_CASE("json: parses objects, arrays, escapes and exact integers") {
  auto value = json::parse(R"( {"a":"x\u00e9\n","n":18446744073709551615,"l":[1,-2,true,null]} )");
  REQUIRE(value.ok());
  CHECK(value->find("a")->text == "x\xc3\xa9\n");
  std::uint64_t big = 0;
  CHECK(json::to_uint64(*value->find("n"), &big));
  CHECK(big == UINT64_MAX);
  CHECK(value->find("l")->items.size() == 4);
  CHECK_FALSE(json::parse("{\"a\":1,}").ok());
  CHECK_FALSE(json::parse("[[[[[[[[[[[[1]]]]]]]]]]]]").ok());
  CHECK_FALSE(json::parse("{\"a\":1} x").ok());
  // Items past kItemsMax are checked, counted and dropped.
  std::string many = "[0";
  for (std::size_t index = 1; index < json::kItemsMax + 999; index++) many += ",{\"a\":[1]}";
  auto long_array = json::parse(many + "]");
  REQUIRE(long_array.ok());
  CHECK(long_array->items.size() == json::kItemsMax);
  CHECK(long_array->items_dropped == 999);
  CHECK_FALSE(json::parse(many + ",{]").ok());
  std::string out;
  json::append_string(&out, std::string("q\"\\\x01\xff", 5));
  CHECK(out == "\"q\\\"\\\\\\u0001\\u00ff\"");
}

wire::FrameWords frame_of(const std::string& bytes) {
  wire::FrameWords frame((bytes.size() + 7) / 8);
  std::memcpy(frame.data(), bytes.data(), bytes.size());
  return frame;
}

TEST_CASE("wire: requests and responses round-trip; framing limits hold") {
  wire::Request request;
  request.id = 42;
  request.kind = wire::Request::Kind::mutation;
  request.command.key = "k";
  request.command.batch = true;
  request.command.ops = {OpRequest::hold_of("s", "i", 3, kMinuteNs), OpRequest::commit_key("h", 2)};
  const std::string bytes = wire::encode_request(request);
  wire::FrameWords frame(bytes.size() / 8);
  std::memcpy(frame.data(), bytes.data(), bytes.size());
  const auto table = wire::table_bytes(std::as_bytes(std::span(frame)));
  REQUIRE(table.ok());
  const auto total = wire::frame_bytes(std::as_bytes(std::span(frame)), 1 << 20);
  REQUIRE(total.ok());
  CHECK(*total == bytes.size());
  CHECK_FALSE(wire::frame_bytes(std::as_bytes(std::span(frame)), 8).ok());
  auto decoded = wire::decode_request(frame);
  REQUIRE(decoded.ok());
  CHECK(decoded->id == 42);
  REQUIRE(decoded->command.ops.size() == 2);
  CHECK(decoded->command.ops[1].hold_key == "h");
  CHECK(decoded->command.ops[0].ttl_ns == kMinuteNs);
  // A follow, a cancel and a batch of events.
  wire::Request follow;
  follow.id = 5;
  follow.kind = wire::Request::Kind::follow;
  follow.from_seq = 77;
  follow.max_events = 9;
  auto follow_back = wire::decode_request(frame_of(wire::encode_request(follow)));
  REQUIRE(follow_back.ok());
  CHECK(follow_back->kind == wire::Request::Kind::follow);
  CHECK(follow_back->from_seq == 77);
  CHECK(follow_back->max_events == 9);
  wire::Request cancel;
  cancel.kind = wire::Request::Kind::cancel;
  cancel.follow_id = 5;
  CHECK(wire::decode_request(frame_of(wire::encode_request(cancel)))->follow_id == 5);
  wire::Response batch;
  batch.id = 5;
  batch.kind = wire::Response::Kind::events;
  const std::string odd = "abc";  // not a multiple of 8: the next one still starts aligned
  batch.events.append(std::as_bytes(std::span(odd)));
  batch.events.append(std::as_bytes(std::span(std::string_view("0123456789"))));
  batch.next_seq = 79;
  auto batch_back = wire::decode_response(frame_of(wire::encode_response(batch)));
  REQUIRE(batch_back.ok());
  REQUIRE(batch_back->events.size() == 2);
  CHECK(reinterpret_cast<std::uintptr_t>(batch_back->events[1].data()) % 8 == 0);
  CHECK(std::string(reinterpret_cast<const char*>(batch_back->events[1].data()), 10) == "0123456789");
  CHECK(batch_back->next_seq == 79);
  CHECK_FALSE(batch_back->end);
  batch.next_seq = 1;  // two events cannot end before seq 2
  CHECK(wire::decode_response(frame_of(wire::encode_response(batch))).code() == ErrorCode::invalid);
  // A pointer far outside the frame: a kj::Exception, caught, turned invalid.
  wire::FrameWords bad = {0, ~std::uint64_t{0}};
  bad[0] = std::uint64_t{1} << 32;  // one segment of one word
  CHECK(wire::decode_request(bad).code() == ErrorCode::invalid);
}

TEST_CASE("wire: a response encoded into a string replaces what the string held") {
  wire::Response receipt;
  receipt.id = 7;
  receipt.kind = wire::Response::Kind::receipt;
  receipt.receipt.seq = 12;
  wire::Response error;
  error.id = 8;
  error.kind = wire::Response::Kind::error;
  error.error = Status(ErrorCode::not_found, std::string(600, 'x'));  // past the first segment
  std::string bytes = "left over";
  for (const wire::Response* response : {&receipt, &error, &receipt}) {
    wire::encode_response_into(*response, &bytes);
    CHECK(bytes == wire::encode_response(*response));
    auto back = wire::decode_response(frame_of(bytes));
    REQUIRE(back.ok());
    CHECK(back->id == response->id);
  }
  CHECK(wire::decode_response(frame_of(bytes))->receipt.seq == 12);
}

TEST_CASE("wire: an answer holding a value this version does not know answers its request") {
  const auto decoded = [](const std::function<void(proto::Response::Builder)>& build) {
    capnp::MallocMessageBuilder builder;
    auto response = builder.initRoot<proto::Response>();
    response.setId(7);
    build(response);
    const kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
    wire::FrameWords frame(words.size());
    std::memcpy(frame.data(), words.begin(), words.size() * sizeof(capnp::word));
    auto answer = wire::decode_response(frame);
    REQUIRE(answer.ok());
    CHECK(answer->id == 7);
    CHECK(answer->kind == wire::Response::Kind::error);
    CHECK(answer->error.code() == ErrorCode::io_error);
    CHECK(answer->unknown);
    return answer->error.message();
  };
  CHECK(decoded([](proto::Response::Builder response) {
          response.initReceipt().setOutcome(static_cast<proto::Outcome>(99));
        }).find("outcome 99, which this version does not know") != std::string::npos);
  CHECK(decoded([](proto::Response::Builder response) {
          response.initHoldInfo().setStatus(static_cast<proto::HoldStatus>(9));
        }).find("hold status 9") != std::string::npos);
  CHECK(decoded([](proto::Response::Builder response) {
          auto error = response.initError();
          error.setCode(static_cast<proto::ErrorCode>(77));
          error.setMessage("rate limited");
        }).find("error code 77 (rate limited)") != std::string::npos);
}

TEST_CASE("wire: the least size of a list answer is at most its frame's, by the frame's header") {
  wire::Response list;
  list.kind = wire::Response::Kind::list;
  for (const std::size_t name_bytes : {1, 7, 8, 9, 255}) {
    list.items.push_back(ItemBalance{std::string(name_bytes, 'x'), Balance{1, 2}});
    const std::size_t least = wire::list_answer_bytes_min(list.items);
    const std::size_t frame = wire::encode_response(list).size();
    CAPTURE(name_bytes);
    CHECK(least <= frame);
    CHECK(frame - least <= 64);  // the segment table, the root and the list's pointer
  }
  CHECK(wire::list_answer_bytes_min({}) == 0);
}

// Feeds `stream` to a FrameReader in reads of at most `read_bytes` (cycling
// through `read_sizes`) and returns the ids of the requests it yields.
std::vector<std::uint64_t> ids_through_reader(const std::string& stream, std::vector<std::size_t> read_sizes,
                                              std::size_t buffer_bytes) {
  wire::FrameReader reader(1 << 20, buffer_bytes);
  std::vector<std::uint64_t> ids;
  std::size_t offset = 0;
  std::size_t read_index = 0;
  while (true) {
    auto frame = reader.next();
    REQUIRE(frame.ok());
    if (!frame->empty()) {
      CHECK(reinterpret_cast<std::uintptr_t>(frame->data()) % 8 == 0);
      auto request = wire::decode_request(*frame);
      REQUIRE(request.ok());
      ids.push_back(request->id);
      continue;
    }
    if (offset == stream.size()) break;
    const std::span<std::byte> space = reader.space();
    REQUIRE_FALSE(space.empty());
    const std::size_t bytes =
        std::min({space.size(), read_sizes[read_index++ % read_sizes.size()], stream.size() - offset});
    std::memcpy(space.data(), stream.data() + offset, bytes);
    reader.commit(bytes);
    offset += bytes;
  }
  CHECK(reader.buffered_bytes() == 0);
  return ids;
}

TEST_CASE("wire: a FrameReader cuts a stream into frames however the reads split it") {
  std::string stream;
  std::vector<std::uint64_t> sent;
  for (std::uint64_t id = 1; id <= 60; id++) {
    wire::Request request;
    request.id = id;
    request.kind = wire::Request::Kind::mutation;
    request.command.key = "key-" + std::to_string(id);
    // Every tenth request is larger than the reader's buffer.
    const std::size_t subject_bytes = id % 10 == 0 ? 5000 : id % 7;
    request.command.op = OpRequest::acquire(std::string(subject_bytes + 1, 's'), "i", 1);
    stream += wire::encode_request(request);
    sent.push_back(id);
  }
  // Everything at once, byte by byte, and in uneven reads that end inside
  // segment tables and bodies.
  CHECK(ids_through_reader(stream, {stream.size()}, 1024) == sent);
  CHECK(ids_through_reader(stream, {1}, 1024) == sent);
  CHECK(ids_through_reader(stream, {3, 700, 13, 4096, 9}, 1024) == sent);
  CHECK(ids_through_reader(stream, {5}, 16 * 1024) == sent);

  // Too many segments, and a frame over the limit, are errors before the
  // body arrives.
  wire::FrameReader small(64);
  std::string big = wire::encode_request(wire::Request{});
  big.resize(8);
  big[4] = 100;  // one segment of 100 words
  std::span<std::byte> space = small.space();
  std::memcpy(space.data(), big.data(), big.size());
  small.commit(big.size());
  CHECK(small.next().code() == ErrorCode::invalid);
  wire::FrameReader segments(1 << 20);
  const std::uint32_t count_minus_one = 1000;
  space = segments.space();
  std::memcpy(space.data(), &count_minus_one, sizeof count_minus_one);
  segments.commit(8);
  CHECK(segments.next().code() == ErrorCode::invalid);

  // A frame announced large takes memory as its bytes come, not before.
  wire::FrameReader announced(1 << 20);
  const std::uint32_t table[2] = {0, (1 << 17) - 1};  // one segment of 1 MiB - 8
  space = announced.space();
  std::memcpy(space.data(), table, sizeof table);
  announced.commit(sizeof table);
  REQUIRE(announced.next().ok());
  CHECK(announced.space().size() <= wire::FrameReader::kBufferBytesDefault);
}

TEST_CASE("http: every mutation and read route, problem+json, idempotency") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  CHECK(get(port, "/health").status == 200);

  Reply acquired = post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku-42","qty":10,"reason":"restock"})", "a1");
  CHECK(acquired.status == 200);
  CHECK(acquired.string("outcome") == "ok");
  CHECK(acquired.integer("seq") > 0);
  CHECK(acquired.headers.count("Idempotent-Replayed") == 0);
  Reply replayed = post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku-42","qty":10})", "a1");
  CHECK(replayed.status == 200);
  CHECK(replayed.headers["Idempotent-Replayed"] == "true");
  CHECK(replayed.integer("seq") == acquired.integer("seq"));
  Reply conflict = post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku-42","qty":11})", "a1");
  CHECK(conflict.status == 409);
  CHECK(conflict.headers["Content-Type"] == "application/problem+json");
  CHECK(conflict.string("code") == "idempotency_conflict");
  CHECK(post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku-42","qty":1})", "").status == 400);

  CHECK(post(port, "/v1/consume", R"({"subject":"berlin","item":"sku-42","qty":1})", "c1").status == 200);
  Reply short_of = post(port, "/v1/consume", R"({"subject":"berlin","item":"sku-42","qty":100})", "c2");
  CHECK(short_of.status == 422);
  CHECK(short_of.string("code") == "insufficient");
  // A rejection is an outcome too: its retry is a replay of it.
  Reply short_again =
      post(port, "/v1/consume", R"({"subject":"berlin","item":"sku-42","qty":100})", "c2");
  CHECK(short_again.status == 422);
  CHECK(short_again.headers["Idempotent-Replayed"] == "true");
  CHECK(post(port, "/v1/transfer", R"({"from":"berlin","to":"paris","item":"sku-42","qty":2})", "t1").status == 200);

  Reply held = post(port, "/v1/holds", R"({"subject":"berlin","item":"sku-42","qty":3,"ttl_ms":60000})", "h1");
  CHECK(held.status == 200);
  const std::int64_t hold = held.integer("hold_id");
  CHECK(hold == held.integer("seq"));
  Reply info = get(port, "/v1/holds/" + std::to_string(hold));
  CHECK(info.status == 200);
  CHECK(info.string("status") == "open");
  CHECK(get(port, "/v1/holds/999999").status == 404);
  CHECK(post(port, "/v1/holds/" + std::to_string(hold) + "/commit", R"({"qty":2})", "h1c").status == 200);
  Reply again = post(port, "/v1/holds/" + std::to_string(hold) + "/release", "", "h1r");
  CHECK(again.status == 422);
  CHECK(again.string("code") == "hold_finalized");
  Reply unknown = post(port, "/v1/holds/777777/release", "{}", "r-unknown");
  CHECK(unknown.status == 404);
  CHECK(unknown.string("code") == "hold_unknown");

  Reply balance = get(port, "/v1/balances/berlin/sku-42");
  CHECK(balance.status == 200);
  // 10 - 1 consumed - 2 moved - 2 committed (and 1 released back).
  CHECK(balance.integer("available") == 5);
  CHECK(balance.integer("held") == 0);
  Reply list = get(port, "/v1/balances/paris");
  CHECK(list.status == 200);
  CHECK(list.json().find("balances")->items.size() == 1);

  Reply metrics = get(port, "/metrics");
  CHECK(metrics.status == 200);
  CHECK(metrics.body.find("tally_ops_total{op=\"acquire\",outcome=\"ok\"} 2") != std::string::npos);
  // Replays count under their outcome, and apart by op.
  CHECK(metrics.body.find("tally_ops_total{op=\"consume\",outcome=\"insufficient\"} 2") !=
        std::string::npos);
  CHECK(metric(port, "tally_replays_total{op=\"acquire\"}") == 1);
  CHECK(metric(port, "tally_replays_total{op=\"consume\"}") == 1);
  CHECK(metric(port, "tally_replays_total{op=\"transfer\"}") == 0);
  CHECK(metrics.body.find("tally_fsyncs_total") != std::string::npos);
  CHECK(metrics.body.find("tally_request_duration_seconds_bucket{op=\"hold\",le=\"+Inf\"} 1") != std::string::npos);
  // Every event was written in some group commit.
  CHECK(metric(port, "tally_group_commit_events_sum") == metric(port, "tally_next_seq") - 1);
  CHECK(metric(port, "tally_group_commit_events_count") > 0);
  // The server sees each earlier connection's close on its own time: wait
  // until only the one asking is left, rather than race the closes.
  while (metric(port, "tally_connections{protocol=\"http\"}") != 1) std::this_thread::yield();
}

TEST_CASE("http: under durability sync, /metrics counts each fdatasync and its duration") {
  Fixture fx;
  fx.stop();
  fx.durability = Durability::sync;
  fx.start();
  const std::uint16_t port = fx.server->http_port();
  for (int request = 0; request < 3; request++) {
    const std::string key = "a" + std::to_string(request);
    REQUIRE(post(port, "/v1/acquire", R"({"subject":"s","item":"i","qty":1})", key).status == 200);
  }
  // Each acquire was answered after its own group commit was synced.
  const std::int64_t fsyncs = metric(port, "tally_fsyncs_total");
  CHECK(fsyncs >= 3);
  CHECK(metric(port, "tally_fsync_duration_seconds_count") == fsyncs);
  CHECK(metric(port, "tally_group_commit_events_count") >= 3);
}

TEST_CASE("http: /metrics shows how far the history projection and the snapshots are") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  for (int request = 0; request < 3; request++) {
    const std::string key = "a" + std::to_string(request);
    REQUIRE(post(port, "/v1/acquire", R"({"subject":"s","item":"i","qty":1})", key).status == 200);
  }
  // A read as of seq 3 asks the archivist to flush the history that far.
  // It runs only on idle cores, so on a busy machine the read may answer
  // by a replay first: wait for the flush rather than race it.
  Reply then = get(port, "/v1/balances/s/i?at_seq=3");
  REQUIRE(then.status == 200);
  CHECK(then.integer("available") == 3);
  while (metric(port, "tally_history_seq") < 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(metric(port, "tally_history_seq") == 3);
  CHECK(metric(port, "tally_snapshots_written_total") == 0);
  CHECK(metric(port, "tally_last_snapshot_seq") == 0);
  auto snapshot = fx.ledger->snapshot_now();
  REQUIRE(snapshot.ok());
  CHECK(*snapshot == 3);
  CHECK(metric(port, "tally_snapshots_written_total") == 1);
  CHECK(metric(port, "tally_last_snapshot_seq") == 3);
}

TEST_CASE("http: /health and /metrics tell when a failed write turned the ledger read-only") {
  log::FaultyFileSystem fs(log::posix_file_system());
  Fixture fx;
  fx.stop();
  fx.fs = &fs;
  fx.durability = Durability::sync;
  fx.start();
  const std::uint16_t port = fx.server->http_port();
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"s","item":"i","qty":1})", "a1").status == 200);
  CHECK(get(port, "/health").status == 200);
  CHECK(metric(port, "tally_read_only") == 0);

  fs.fail_sync(1);
  Reply failed = post(port, "/v1/acquire", R"({"subject":"s","item":"i","qty":1})", "a2");
  CHECK(failed.status == 503);
  CHECK(failed.string("code") == "io_error");
  Reply health = get(port, "/health");
  CHECK(health.status == 503);
  CHECK(health.string("code") == "read_only");
  CHECK(metric(port, "tally_read_only") == 1);
  CHECK(get(port, "/v1/balances/s/i").status == 503);

  fx.server->stop();
  fx.server.reset();
  CHECK_FALSE(fx.ledger->close().ok());  // it reports the failed write
  fx.ledger.reset();
}

TEST_CASE("http: /metrics tells when snapshots and history stopped, and /health stays ready") {
  log::FaultyFileSystem fs(log::posix_file_system());
  Fixture fx;
  fx.stop();
  fx.fs = &fs;
  fx.start();
  const std::uint16_t port = fx.server->http_port();
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"s","item":"i","qty":1})", "a1").status == 200);
  CHECK(metric(port, "tally_archivist_failed") == 0);
  // The next record lands with a payload bit flipped: the archivist, which
  // reads the log back, stops on it; the ledger serves from its memory.
  fs.flip_bit_in_next_write((log::kFrameHeaderSize + 5) * 8 + 3);
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"s","item":"i","qty":1})", "a2").status == 200);
  for (int wait = 0; wait < 6000 && metric(port, "tally_archivist_failed") == 0; wait++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(metric(port, "tally_archivist_failed") == 1);
  CHECK(get(port, "/health").status == 200);
  Reply balance = get(port, "/v1/balances/s/i");
  REQUIRE(balance.status == 200);
  CHECK(balance.integer("available") == 2);
}

TEST_CASE("http: balances as of a seq or a time") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  Reply first = post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku-42","qty":10})", "a1");
  REQUIRE(first.status == 200);
  const std::int64_t seq = first.integer("seq");
  REQUIRE(post(port, "/v1/consume", R"({"subject":"berlin","item":"sku-42","qty":3})", "c1").status == 200);
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku-7","qty":1})", "a2").status == 200);

  Reply then = get(port, "/v1/balances/berlin/sku-42?at_seq=" + std::to_string(seq));
  CHECK(then.status == 200);
  CHECK(then.integer("available") == 10);
  CHECK(get(port, "/v1/balances/berlin/sku-42").integer("available") == 7);
  Reply listed = get(port, "/v1/balances/berlin?at_seq=" + std::to_string(seq));
  CHECK(listed.status == 200);
  CHECK(listed.json().find("balances")->items.size() == 1);
  // Every event is stamped after the epoch and before the end of int64.
  CHECK(get(port, "/v1/balances/berlin/sku-42?at_time=1970-01-01T00:00:00Z").integer("available") == 0);
  CHECK(get(port, "/v1/balances/berlin?at_time=9223372036854775807").json().find("balances")->items.size() == 2);

  CHECK(get(port, "/v1/balances/berlin/sku-42?at_seq=999").string("code") == "invalid");
  CHECK(get(port, "/v1/balances/berlin/sku-42?at_seq=999").status == 400);
  CHECK(get(port, "/v1/balances/berlin/sku-42?at_time=yesterday").status == 400);
  CHECK(get(port, "/v1/balances/berlin/sku-42?at_seq=1&at_time=0").status == 400);
  CHECK(get(port, "/v1/balances/berlin/sku-42?at=1").status == 400);
}

TEST_CASE("http: batch of two holds, commit, release; rejected batch names its index") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  CHECK(post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku","qty":5})", "s1").status == 200);
  CHECK(post(port, "/v1/acquire", R"({"subject":"hamburg","item":"sku","qty":5})", "s2").status == 200);
  Reply batch = post(port, "/v1/batch", R"({"ops":[
      {"op":"hold","subject":"berlin","item":"sku","qty":2,"ttl_ms":900000},
      {"op":"hold","subject":"hamburg","item":"sku","qty":1,"ttl_ms":900000}],
      "reference":"order-7"})", "order-7/reserve");
  REQUIRE(batch.status == 200);
  const auto ids = batch.json().find("hold_ids")->items;
  REQUIRE(ids.size() == 2);
  std::uint64_t first = 0;
  CHECK(json::to_uint64(ids[0], &first));
  CHECK(post(port, "/v1/holds/" + ids[0].text + "/commit", "{}", "order-7/pay-1").status == 200);
  CHECK(post(port, "/v1/holds/" + ids[1].text + "/release", "{}", "order-7/fail-2").status == 200);
  CHECK(get(port, "/v1/balances/berlin/sku").integer("available") == 3);
  CHECK(get(port, "/v1/balances/hamburg/sku").integer("available") == 5);

  Reply rejected = post(port, "/v1/batch", R"({"ops":[
      {"op":"consume","subject":"berlin","item":"sku","qty":1},
      {"op":"consume","subject":"hamburg","item":"sku","qty":99}]})", "too-much");
  CHECK(rejected.status == 422);
  CHECK(rejected.string("code") == "insufficient");
  CHECK(rejected.integer("index") == 1);
  CHECK(get(port, "/v1/balances/berlin/sku").integer("available") == 3);  // all or nothing
}

TEST_CASE("http: malformed and oversized requests close only their connection") {
  Fixture fx;
  fx.options.http_body_bytes_max = 1024;
  fx.stop();
  fx.start();
  const std::uint16_t port = fx.server->http_port();
  CHECK(post(port, "/v1/acquire", "{not json", "k").status == 400);
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1,"extra":1})", "k").status == 400);
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1.5})", "k").status == 400);
  CHECK(post(port, "/v1/acquire", R"({"subject":"","item":"b","qty":1})", "k").status == 400);
  // A ttl out of range is refused with the range, however far out.
  for (const char* ttl : {"0", "-1", "2592000001", "9223372036854775807", "9223372036854775808",
                          "-99999999999999999999"}) {
    CAPTURE(ttl);
    const std::string body =
        R"({"subject":"a","item":"b","qty":1,"ttl_ms":)" + std::string(ttl) + "}";
    const Reply refused = post(port, "/v1/holds", body, "k");
    CHECK(refused.status == 400);
    CHECK(refused.string("detail") == "ttl out of range [1 ms, 2592000000 ms]");
  }
  CHECK(post(port, "/v1/nope", "{}", "k").status == 404);
  CHECK(get(port, "/v1/balances/a/b/c/d/e/f/g/h/i").status == 404);  // however long
  CHECK(get(port, "http://localhost/v1/balances/a/b").status == 200);  // absolute form
  CHECK(get(port, "HTTP://localhost?x=1").status == 404);  // "/?x=1"
  CHECK(http_call(port, http::verb::delete_, "/v1/acquire").status == 405);
  const std::string big = R"({"subject":"a","item":"b","qty":1,"reason":")" + std::string(4096, 'x') + "\"}";
  CHECK(post(port, "/v1/acquire", big, "big").status == 413);
  const std::string garbage = send_raw_until_closed(port, "GARBAGE\x01\x02 / HTTP/9\r\n\r\n");
  CHECK(garbage.find("400") != std::string::npos);
  CHECK(fx.logged("http connection: closing"));
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1})", "still-serving").status == 200);
}

TEST_CASE("http: headers past the limit are refused however short their fields") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  // 32 KiB, past the 16 KiB limit but within one read, and 100 KiB, past
  // both, each as fields of 4 bytes.
  for (const std::size_t fields : {8u << 10, 25u << 10}) {
    CAPTURE(fields);
    std::string request = "GET /health HTTP/1.1\r\nHost: h\r\n";
    for (std::size_t index = 0; index < fields; index++) request += "A:\r\n";
    const std::string answer = send_raw_until_closed(port, request + "\r\n");
    CHECK(answer.rfind("HTTP/1.1 431", 0) == 0);
  }
  // Within the limit, and a client that ends its side inside the headers
  // or before a request, are as before.
  std::string request = "GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n";
  for (int index = 0; index < 3000; index++) request += "A:\r\n";
  CHECK(send_raw_until_closed(port, request + "\r\n").rfind("HTTP/1.1 200", 0) == 0);
  CHECK(send_raw_until_closed(port, "GET /health HTTP/1.1\r\nHost", true).empty());
  CHECK(send_raw_until_closed(port, "", true).empty());
  CHECK(metric(port, "tally_malformed_total") == 2);
}

TEST_CASE("http: a chunk's size line or trailers without end are refused at the read cap") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::string head =
      "POST /v1/acquire HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n";
  const std::string endless(100 << 10, 'a');  // past 16 KiB of headers + 64 KiB of one read
  const std::string extension = send_raw_until_closed(
      port, head + "Idempotency-Key: c1\r\n\r\n1;" + endless);
  CHECK(extension.rfind("HTTP/1.1 431", 0) == 0);
  CHECK(extension.find("too_large") != std::string::npos);
  const std::string trailers = send_raw_until_closed(
      port, head + "Idempotency-Key: c2\r\n\r\n1\r\n{\r\n0\r\nX-T: " + endless);
  CHECK(trailers.rfind("HTTP/1.1 431", 0) == 0);
  // A chunk far larger than the cap still goes to the body as it arrives.
  const std::string body =
      R"({"subject":"a",)" + std::string(500 << 10, ' ') + R"("item":"b","qty":1})";
  char size_line[32];
  std::snprintf(size_line, sizeof size_line, "%zx\r\n", body.size());
  const std::string large = send_raw_until_closed(
      port, head + "Idempotency-Key: c3\r\nConnection: close\r\n\r\n" + size_line + body +
                "\r\n0\r\n\r\n");
  CHECK(large.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(get(port, "/v1/balances/a/b").integer("available") == 1);
}

TEST_CASE("http and binary: auth on") {
  Fixture fx("s3cret-token");
  const std::uint16_t port = fx.server->http_port();
  CHECK(get(port, "/health").status == 200);
  Reply missing = get(port, "/v1/balances/a/b");
  CHECK(missing.status == 401);
  CHECK(missing.string("code") == "unauthorized");
  CHECK(http_call(port, http::verb::get, "/v1/balances/a/b", {}, {{"Authorization", "Bearer wrong"}}).status == 401);
  CHECK(http_call(port, http::verb::get, "/metrics", {}, {}).status == 401);
  CHECK(http_call(port, http::verb::get, "/v1/balances/a/b", {}, {{"Authorization", "Bearer s3cret-token"}}).status == 200);
  CHECK(http_call(port, http::verb::get, "/v1/balances/a/b", {},
                  {{"Authorization", "Bearer s3cret-token"}, {"Authorization", "Bearer wrong"}})
            .status == 401);
  CHECK(get(port, "/v1/a/b/c/d/e/f/g/h/i/j").status == 401);  // no route, but no token either
  CHECK(get(port, "/v1/events").status == 401);
  CHECK(http_call(port, http::verb::get, "/v1/events?wait_ms=0", {}, {{"Authorization", "Bearer wrong"}}).status == 401);
  CHECK(http_call(port, http::verb::get, "/v1/events?wait_ms=0", {}, {{"Authorization", "Bearer s3cret-token"}}).status == 200);
  // A client that holds its body back until asked is refused first.
  const std::string expecting = send_raw_until_closed(
      port, "POST /v1/acquire HTTP/1.1\r\nHost: h\r\nIdempotency-Key: x\r\n"
            "Expect: 100-continue\r\nContent-Length: 40\r\n\r\n");
  CHECK(expecting.starts_with("HTTP/1.1 401 "));
  CHECK(expecting.find("Connection: close\r\n") != std::string::npos);

  ClientOptions wrong;
  wrong.address = "127.0.0.1:" + std::to_string(fx.server->binary_port());
  wrong.token = "nope";
  auto refused = Client::connect(wrong);
  CHECK_FALSE(refused.ok());
  CHECK(refused.status().message().find("unauthorized: wrong token") != std::string::npos);
  wrong.token.clear();
  refused = Client::connect(wrong);
  CHECK(refused.status().message().find("unauthorized: no token") != std::string::npos);

  // A request before the hello is refused, and the connection closed.
  CHECK(lone_balance_answer(fx.server->binary_port()).unauthorized);
  // Each refusal counts, by protocol, and is logged without the token.
  const std::string scraped =
      http_call(port, http::verb::get, "/metrics", {}, {{"Authorization", "Bearer s3cret-token"}})
          .body;
  CHECK(scraped.find("\ntally_unauthorized_total{protocol=\"http\"} 8\n") != std::string::npos);
  CHECK(scraped.find("\ntally_unauthorized_total{protocol=\"binary\"} 3\n") != std::string::npos);
  CHECK(fx.logged("http connection: unauthorized: wrong token (peer 127.0.0.1:"));
  CHECK(fx.logged("http connection: unauthorized: two Authorization headers"));
  CHECK(fx.logged("binary connection: closing: the first request must be a hello"));
  CHECK_FALSE(fx.logged("s3cret"));
  // A hello whose token is too long is a hello, refused for its token.
  wire::Request hello;
  hello.id = 4;
  hello.kind = wire::Request::Kind::hello;
  hello.version = wire::kProtocolVersion;
  hello.token = std::string(wire::kTokenBytesMax + 1, 'x');
  const wire::Response long_token = lone_answer(fx.server->binary_port(), hello);
  CHECK(long_token.unauthorized);
  CHECK(long_token.error.message() == "unauthorized: token too long");
  // A first request of a kind this server does not know is no hello.
  const wire::Response unknown = lone_answer(fx.server->binary_port(), unknown_kind_frame(5), 5);
  CHECK(unknown.unauthorized);
  CHECK(unknown.error.message() ==
        "unauthorized: the first request must be a hello with the token");

  // Before the hello, no message over 4 KiB is buffered: one whose table
  // claims 512 KiB closes the connection at once.
  std::string large(8, '\0');
  large[6] = 0x01;  // one segment of 2^16 words
  CHECK(send_raw_until_closed(fx.server->binary_port(), large).empty());
  CHECK(fx.logged("closing: before the hello: frame of"));
  CHECK(fx.logged("exceeds the limit of 4096"));

  auto client = fx.client();
  CHECK(client->acquire("k", "a", "b", 1).ok());
  CHECK(client->balance("a", "b")->available == 1);
  // After the hello, the whole frame limit, for a large request in the
  // same write as the hello too (as a client that resends after a
  // reconnect writes them): a batch of 1000 ops of long names.
  wire::Request pipelined[2];
  pipelined[0].id = 1;
  pipelined[0].kind = wire::Request::Kind::hello;
  pipelined[0].token = "s3cret-token";
  pipelined[1].id = 2;
  pipelined[1].kind = wire::Request::Kind::mutation;
  pipelined[1].command.key = "wide";
  pipelined[1].command.batch = true;
  for (int op = 0; op < 1000; op++) {
    std::string item = testing::name("item-", op);
    item.resize(200, 'x');
    pipelined[1].command.ops.push_back(OpRequest::acquire("a", item, 1));
  }
  const std::string burst =
      wire::encode_request(pipelined[0]) + wire::encode_request(pipelined[1]);
  REQUIRE(burst.size() > 100'000);
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::address_v4::loopback(), fx.server->binary_port()));
  asio::write(socket, asio::buffer(burst));
  CHECK(read_response(socket).kind == wire::Response::Kind::hello);
  const wire::Response applied = read_response(socket);
  REQUIRE(applied.kind == wire::Response::Kind::receipt);
  CHECK(applied.receipt.outcome == Outcome::ok);
}

// The `tr` (timer) field of the IPv4 TCP socket from local port `local` to
// remote port `remote`, as /proc/net/tcp gives it: 2 while its keepalive
// timer is pending, 0 with no timer. nullopt when there is no such socket.
std::optional<unsigned> tcp_timer(std::uint16_t local, std::uint16_t remote) {
  std::ifstream table("/proc/net/tcp");
  std::string line;
  std::getline(table, line);  // the header
  while (std::getline(table, line)) {
    unsigned local_port = 0;
    unsigned remote_port = 0;
    unsigned timer = 0;
    // "sl: local_ip:port remote_ip:port st tx:rx tr:when ..."
    if (std::sscanf(line.c_str(), " %*d: %*x:%x %*x:%x %*x %*x:%*x %x", &local_port,
                    &remote_port, &timer) == 3 &&
        local_port == local && remote_port == remote) {
      return timer;
    }
  }
  return std::nullopt;
}

TEST_CASE("server: accepted connections of both protocols keep alive") {
  Fixture fx;
  asio::io_context io;
  for (const std::uint16_t port : {fx.server->binary_port(), fx.server->http_port()}) {
    CAPTURE(port);
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(asio::ip::address_v4::loopback(), port));
    const std::uint16_t mine = socket.local_endpoint().port();
    // The server side's timer, once the accept is handled: keepalive's.
    std::optional<unsigned> timer;
    for (int poll = 0; poll < 500 && timer != 2u; poll++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      timer = tcp_timer(port, mine);
    }
    CHECK(timer == 2u);
    CHECK(tcp_timer(mine, port) == 0u);  // this side has none
  }
}

// Seeds a few events of every shape: acquire, transfer, hold, batch,
// commit, a rejection. Returns how many events the log holds.
std::uint64_t seed_events(std::uint16_t port) {
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"berlin","item":"sku","qty":10,"reason":"restock","reference":"PO-1"})", "e1").status == 200);
  REQUIRE(post(port, "/v1/transfer", R"({"from":"berlin","to":"paris","item":"sku","qty":2})", "e2").status == 200);
  const Reply held = post(port, "/v1/holds", R"({"subject":"berlin","item":"sku","qty":3,"ttl_ms":60000})", "e3");
  REQUIRE(held.status == 200);
  REQUIRE(post(port, "/v1/batch", R"({"ops":[{"op":"consume","subject":"paris","item":"sku","qty":1},
      {"op":"acquire","subject":"rome","item":"sku","qty":4}]})", "e4").status == 200);
  REQUIRE(post(port, "/v1/holds/" + std::to_string(held.integer("hold_id")) + "/commit", "{}", "e5").status == 200);
  REQUIRE(post(port, "/v1/consume", R"({"subject":"rome","item":"sku","qty":99})", "e6").status == 422);
  return 6;
}

TEST_CASE("http: GET /v1/events answers committed events in order, as tally log --json prints them") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t count = seed_events(port);
  const std::vector<std::string> expected = log_json(fx.dir.sub("data"));
  REQUIRE(expected.size() == count);

  const Reply all = get(port, "/v1/events?from_seq=1&limit=100");
  CHECK(all.status == 200);
  CHECK(all.headers.at("Content-Type") == "application/json");
  std::string body = "{\"events\":[";
  for (std::size_t index = 0; index < expected.size(); index++) body += (index ? "," : "") + expected[index];
  body += "],\"next_seq\":" + std::to_string(count + 1) + "}";
  CHECK(all.body == body);

  const json::Value parsed = all.json();
  const auto& events = parsed.find("events")->items;
  REQUIRE(events.size() == count);
  CHECK(events[0].find("type")->text == "acquire");
  CHECK(events[0].find("key")->text == "e1");
  CHECK(events[0].find("subject")->text == "berlin");
  CHECK(uint_of(*events[0].find("qty")) == 10);
  CHECK(events[0].find("meta")->find("reference")->text == "PO-1");
  CHECK(events[1].find("to")->text == "paris");
  CHECK(events[3].find("type")->text == "batch");
  CHECK(events[3].find("ops")->items.size() == 2);
  CHECK(events[4].find("type")->text == "commit");
  CHECK(events[5].find("type")->text == "rejected");
  CHECK(events[5].find("reason")->text == "insufficient");
  for (std::size_t index = 0; index < events.size(); index++) CHECK(uint_of(*events[index].find("seq")) == index + 1);

  // Defaults: from the first seq, no wait.
  CHECK(get(port, "/v1/events").body == body);
  // from_seq 0 is the start too.
  CHECK(get(port, "/v1/events?from_seq=0").body == body);
}

TEST_CASE("http: paging with next_seq covers every event exactly once") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  std::uint64_t count = seed_events(port);
  for (int index = 0; index < 25; index++) {
    REQUIRE(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1})", key_of("p", index, 0)).status == 200);
    count++;
  }
  std::vector<std::uint64_t> seqs;
  std::uint64_t next_seq = 1;
  for (int page = 0; page < 100; page++) {
    const Reply reply = get(port, "/v1/events?from_seq=" + std::to_string(next_seq) + "&limit=4");
    REQUIRE(reply.status == 200);
    const json::Value parsed = reply.json();
    const auto& events = parsed.find("events")->items;
    CHECK(events.size() <= 4);
    for (const json::Value& event : events) seqs.push_back(uint_of(*event.find("seq")));
    const std::uint64_t next = uint_of(*parsed.find("next_seq"));
    CHECK(next == next_seq + events.size());
    next_seq = next;
    if (events.empty()) break;
  }
  std::vector<std::uint64_t> all;
  for (std::uint64_t seq = 1; seq <= count; seq++) all.push_back(seq);
  CHECK(seqs == all);
  CHECK(next_seq == count + 1);
  // Past the end: empty, and the position stays where it was asked for.
  const Reply beyond = get(port, "/v1/events?from_seq=1000&wait_ms=0");
  CHECK(beyond.status == 200);
  CHECK(beyond.body == "{\"events\":[],\"next_seq\":1000}");
  // A limit above the cap is capped, not refused.
  CHECK(get(port, "/v1/events?limit=100000").status == 200);
}

TEST_CASE("http: a long poll wakes when a mutation commits; wait_ms=0 answers at once") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::uint64_t count = seed_events(port);
  // Nothing at or after from_seq: an empty answer, with or without wait_ms=0.
  const std::string from = "/v1/events?from_seq=" + std::to_string(count + 1);
  CHECK(get(port, from + "&wait_ms=0").body == "{\"events\":[],\"next_seq\":" + std::to_string(count + 1) + "}");
  CHECK(get(port, from).body == "{\"events\":[],\"next_seq\":" + std::to_string(count + 1) + "}");
  // A short wait that nothing ends: empty at its deadline.
  CHECK(get(port, from + "&wait_ms=20").body == "{\"events\":[],\"next_seq\":" + std::to_string(count + 1) + "}");

  Reply polled;
  std::thread poller([&] { polled = get(port, from + "&wait_ms=30000"); });
  await_event_waits(port, 1);  // the poll is parked in the feed, not on an I/O thread
  // The server still answers everything else meanwhile.
  CHECK(get(port, "/v1/balances/berlin/sku").status == 200);
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"late","item":"sku","qty":1})", "late").status == 200);
  poller.join();
  CHECK(polled.status == 200);
  const json::Value parsed = polled.json();
  const auto& events = parsed.find("events")->items;
  REQUIRE(events.size() == 1);
  CHECK(uint_of(*events[0].find("seq")) == count + 1);
  CHECK(events[0].find("key")->text == "late");
  CHECK(uint_of(*parsed.find("next_seq")) == count + 2);
  CHECK(metric(port, "tally_event_waits") == 0);
}

TEST_CASE("http: a long poll whose client goes away stops waiting") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  {
    asio::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    asio::write(socket, asio::buffer(std::string(
        "GET /v1/events?from_seq=5&wait_ms=30000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")));
    await_event_waits(port, 1);
  }  // closed long before wait_ms
  await_event_waits(port, 0);
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1})", "k").status == 200);
}

TEST_CASE("http: bad event feed parameters are 400 invalid") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  for (const char* target : {"/v1/events?from_seq=abc", "/v1/events?from_seq=-1", "/v1/events?limit=0",
                             "/v1/events?wait_ms=-5", "/v1/events?wait_ms=1.5", "/v1/events?limit=",
                             "/v1/events?from=1", "/v1/events?from_seq=1&from_seq=2",
                             "/v1/events?from_seq=99999999999999999999999", "/v1/events?limit=%zz"}) {
    CAPTURE(target);
    const Reply reply = get(port, target);
    CHECK(reply.status == 400);
    CHECK(reply.string("code") == "invalid");
  }
  CHECK(get(port, "/v1/events?limit=%zz").string("detail").find("in the query") != std::string::npos);
  CHECK(post(port, "/v1/events", "{}", "k").status == 405);
  CHECK(get(port, "/v1/events?from_seq=%31&limit=2&").status == 200);  // percent-encoded, trailing &
}

TEST_CASE("client: a follow gets the events committed before and after it started, across rotations") {
  Fixture fx;
  fx.segment_size_bytes = log::kSegmentSizeBytesMin;
  fx.stop();
  std::filesystem::remove_all(fx.dir.sub("data"));  // its first segment has the default size
  fx.start();
  append_large(*fx.ledger, "before", 0, 60);
  auto client = fx.client();
  FollowSink sink;
  const FollowId id = client->follow(1, sink.on_batch(), sink.on_end());
  sink.await_count(60);
  // A second client writes while the follow waits; the follow sees each
  // event once, as it is committed, through several new segments.
  auto writer = fx.client();
  append_large(*writer, "after", 0, 150);
  sink.await_count(210);
  std::size_t segments = 0;
  for (const auto& entry : std::filesystem::directory_iterator(fx.dir.sub("data") + "/log")) {
    segments += entry.path().extension() == ".seg" ? 1 : 0;
  }
  CHECK(segments >= 3);
  client->cancel_follow(id);
  CHECK(sink.await_end().ok());
  std::lock_guard<std::mutex> guard(sink.mu);
  CHECK(sink.seqs == seq_range(1, 210));
  CHECK_FALSE(sink.gap);
  CHECK(sink.keys[0] == "before0-0");
  CHECK(sink.keys[60] == "after0-0");
  CHECK(sink.keys[209] == "after149-0");
}

TEST_CASE("client: a follow from a later seq, in small batches; cancel and close end follows") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  auto client = fx.client();
  for (int index = 0; index < 30; index++) REQUIRE(client->acquire(key_of("k", index, 0), "a", "b", 1).ok());
  FollowSink small;
  FollowOptions options;
  options.batch_events_max = 4;
  const FollowId id = client->follow(11, small.on_batch(), small.on_end(), options);
  small.await_count(20);
  {
    std::lock_guard<std::mutex> guard(small.mu);
    CHECK(small.seqs == seq_range(11, 30));
    CHECK(small.largest_batch <= 4);
    CHECK(small.batches >= 5);
  }
  // The same client keeps answering while its follow is open.
  CHECK(client->balance("a", "b")->available == 30);
  client->cancel_follow(id);
  CHECK(small.await_end().ok());
  client->cancel_follow(id);  // ended: ignored
  // The client goes on answering requests after it.
  for (int index = 0; index < 3; index++) {
    REQUIRE(client->acquire(key_of("after", index, 0), "a", "b", 1).ok());
  }
  CHECK(client->balance("a", "b")->available == 33);

  // A follow ahead of the log waits; closing the client ends it.
  FollowSink ahead;
  client->follow(1000, ahead.on_batch(), ahead.on_end());
  await_event_waits(port, 1);
  CHECK(client->close().ok());
  CHECK(ahead.await_end().code() == ErrorCode::closed);
  // The server lets go of the connection and of its wait.
  await_event_waits(port, 0);
  while (metric(port, "tally_connections{protocol=\"binary\"}") != 0) std::this_thread::yield();
}

TEST_CASE("binary: a follow ends cleanly when its connection closes; too many follows are refused") {
  Fixture fx;
  fx.options.follows_per_connection_max = 1;
  fx.stop();
  fx.start();
  const std::uint16_t port = fx.server->http_port();
  REQUIRE(fx.client()->acquire("seed", "s", "i", 5).ok());
  {
    asio::io_context io;
    tcp::socket socket(io);
    connect_binary(socket, fx.server->binary_port());
    asio::write(socket, asio::buffer(follow_frame(7, 1) + follow_frame(8, 1)));
    std::map<std::uint64_t, wire::Response> answers;
    while (answers.size() < 2) {
      wire::Response response = read_response(socket);
      answers[response.id] = std::move(response);
    }
    CHECK(answers[7].kind == wire::Response::Kind::events);
    CHECK(answers[7].events.size() == 1);
    CHECK(answers[7].next_seq == 2);
    CHECK(answers[8].kind == wire::Response::Kind::error);
    CHECK(answers[8].error.code() == ErrorCode::invalid);
    await_event_waits(port, 1);  // follow 7 waits for seq 2
  }  // the peer goes away without a cancel
  await_event_waits(port, 0);
  while (metric(port, "tally_connections{protocol=\"binary\"}") != 0) std::this_thread::yield();
  CHECK(fx.client()->acquire("after", "s", "i", 1).ok());

  // A hello refused while a follow waits: the server reads no more, so the
  // follow ends and the connection closes (it stayed open for good).
  asio::io_context io;
  tcp::socket socket(io);
  connect_binary(socket, fx.server->binary_port());
  // From "after": one event, then a wait for seq 3.
  asio::write(socket, asio::buffer(follow_frame(7, 2)));
  CHECK(read_response(socket).events.size() == 1);
  await_event_waits(port, 1);
  wire::Request hello;
  hello.id = 9;
  hello.kind = wire::Request::Kind::hello;
  hello.version = wire::kProtocolVersion + 1;
  asio::write(socket, asio::buffer(wire::encode_request(hello)));
  std::map<std::uint64_t, wire::Response> last;
  boost::system::error_code ec;
  while (std::optional<wire::Response> response = next_response(socket, &ec)) {
    last[response->id] = std::move(*response);
  }
  CHECK(last[9].kind == wire::Response::Kind::error);
  CHECK(last.count(7) == 1);  // the follow's last message
  await_event_waits(port, 0);
  while (metric(port, "tally_connections{protocol=\"binary\"}") != 0) std::this_thread::yield();

  // A follow under an open follow's id could not be told from it: the
  // connection closes, and the open follow ends with one last message.
  tcp::socket reuse(io);
  connect_binary(reuse, fx.server->binary_port());
  asio::write(reuse, asio::buffer(follow_frame(5, 2)));
  CHECK(read_response(reuse).events.size() == 1);
  await_event_waits(port, 1);
  asio::write(reuse, asio::buffer(follow_frame(5, 1)));
  std::vector<wire::Response> after_reuse;
  while (std::optional<wire::Response> response = next_response(reuse, &ec)) {
    after_reuse.push_back(std::move(*response));
  }
  REQUIRE(after_reuse.size() == 1);
  CHECK(after_reuse[0].id == 5);
  CHECK(after_reuse[0].kind == wire::Response::Kind::error);
  CHECK(after_reuse[0].error.message() == "closing: a follow with this id is open");
  await_event_waits(port, 0);
}

TEST_CASE("binary: the follows of a peer that reads nothing take turns for one batch") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  // 16 events of about 760 KB: rejected batches of 1000 transfers between
  // long names, the ops logged as asked.
  const std::vector<OpRequest> ops(1000, OpRequest::transfer(std::string(255, 'a'),
                                                             std::string(255, 'b'),
                                                             std::string(250, 'i'), 1));
  for (int event = 0; event < 16; event++) {
    const auto rejected = fx.ledger->batch(testing::name("big", event), ops);
    REQUIRE(rejected.ok());
    REQUIRE(rejected->outcome == Outcome::insufficient);
  }
  asio::io_context io;
  tcp::socket socket(io);
  socket.open(tcp::v4());
  socket.set_option(asio::socket_base::receive_buffer_size(4096));
  connect_binary(socket, fx.server->binary_port());
  std::string follows;
  for (std::uint64_t id = 1; id <= 16; id++) {
    wire::Request follow;
    follow.id = id;
    follow.kind = wire::Request::Kind::follow;
    follow.from_seq = id;
    follow.max_events = 1;
    follows += wire::encode_request(follow);
  }
  asio::write(socket, asio::buffer(follows));
  // Each follow alone would read its batch at once: 12 MB for 16 of them,
  // far more than the sockets hold. Taking turns, a batch is read only once
  // the one before is in the socket, which fills after a few.
  const std::string batches_read = "tally_request_duration_seconds_count{op=\"events\"}";
  while (metric(port, batches_read) < 1) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(metric(port, batches_read) < 16);
  // Read, they all go on.
  std::set<std::uint64_t> answered;
  while (answered.size() < 16) {
    const wire::Response response = read_response(socket);
    REQUIRE(response.kind == wire::Response::Kind::events);
    CHECK(response.events.size() == 1);
    answered.insert(response.id);
  }
}

TEST_CASE("binary: a peer that pipelines point-in-time reads holds no one else's behind them") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  // A hold as of a seq is read by replaying the log up to it: 20,000 events.
  constexpr int kEvents = 20'000;
  for (int event = 1; event < kEvents; event++) {
    Command command;
    command.key = testing::name("k", event);
    command.op = OpRequest::acquire("s", "i", 1);
    fx.ledger->submit(std::move(command), nullptr);
  }
  const auto held = fx.ledger->hold("h", "s", "i", 1, 60'000'000'000);
  REQUIRE(held.ok());
  REQUIRE(held->seq == kEvents);
  const AsOf at = AsOf::at_seq(kEvents);

  asio::io_context io;
  tcp::socket socket(io);
  connect_binary(socket, fx.server->binary_port());
  constexpr std::uint64_t kReads = 300;
  std::string reads;
  for (std::uint64_t id = 1; id <= kReads; id++) {
    wire::Request read;
    read.id = id;
    read.kind = wire::Request::Kind::hold_info;
    read.hold = held->hold;
    read.as_of = at;
    reads += wire::encode_request(read);
  }
  // Nor its own other requests: a mutation after them.
  wire::Request mutation;
  mutation.id = kReads + 1;
  mutation.kind = wire::Request::Kind::mutation;
  mutation.command.key = "after";
  mutation.command.op = OpRequest::acquire("s", "i", 1);
  asio::write(socket, asio::buffer(reads + wire::encode_request(mutation)));
  const std::string reads_done = "tally_request_duration_seconds_count{op=\"hold_info\"}";
  while (metric(port, reads_done) < 1) std::this_thread::yield();
  // Another client's read waits for at most the two of that peer's on the
  // pool, not for all of them.
  const auto other = fx.client()->hold_info(held->hold, at);
  REQUIRE(other.ok());
  CHECK(metric(port, reads_done) < static_cast<std::int64_t>(kReads));
  std::uint64_t reads_before_mutation = 0;
  for (std::uint64_t answered = 0; answered <= kReads; answered++) {
    const wire::Response response = read_response(socket);
    if (response.id == mutation.id) {
      CHECK(response.kind == wire::Response::Kind::receipt);
      reads_before_mutation = answered;
    } else {
      CHECK(response.kind == wire::Response::Kind::hold_info);
    }
  }
  CHECK(reads_before_mutation < kReads);
}

TEST_CASE("binary: responses complete out of order: an open follow is overtaken by later requests") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  auto writer = fx.client();
  REQUIRE(writer->acquire("seed", "s", "i", 10).ok());
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), fx.server->binary_port()));
  // Sent in one burst: a follow of seq 2 (not committed yet), then reads.
  std::vector<std::uint64_t> sent;
  std::string burst;
  burst += follow_frame(1, 2);
  sent.push_back(1);
  for (std::uint64_t id = 2; id <= 6; id++) {
    wire::Request read;
    read.id = id;
    read.kind = id % 2 == 0 ? wire::Request::Kind::balance : wire::Request::Kind::hold_info;
    read.subject = "s";
    read.item = "i";
    read.hold = 424242;
    burst += wire::encode_request(read);
    sent.push_back(id);
  }
  asio::write(socket, asio::buffer(burst));
  std::vector<std::uint64_t> received;
  for (int index = 0; index < 5; index++) {
    const wire::Response response = read_response(socket);
    CHECK(response.kind == (response.id % 2 == 0 ? wire::Response::Kind::balance : wire::Response::Kind::error));
    received.push_back(response.id);
  }
  // Every read is answered while the follow (sent first) is still open.
  await_event_waits(port, 1);
  REQUIRE(writer->acquire("second", "s", "i", 1).ok());
  const wire::Response batch = read_response(socket);
  received.push_back(batch.id);
  CHECK(batch.id == 1);
  CHECK(batch.kind == wire::Response::Kind::events);
  REQUIRE(batch.events.size() == 1);
  CHECK(batch.next_seq == 3);
  log::EventDecoder decoder;
  log::Event event;
  REQUIRE(decoder.decode(batch.events[0], &event).ok());
  CHECK(event.seq == 2);
  CHECK(event.key == "second");
  std::vector<std::uint64_t> sorted = received;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == sent);      // one response each (the follow's first batch)...
  CHECK(received != sent);    // ...in another order than sent
  CHECK(received.back() == 1);

  // Cancel: the follow's last message carries its id and `end`.
  wire::Request cancel;
  cancel.id = 9;
  cancel.kind = wire::Request::Kind::cancel;
  cancel.follow_id = 1;
  asio::write(socket, asio::buffer(wire::encode_request(cancel)));
  const wire::Response last = read_response(socket);
  CHECK(last.id == 1);
  CHECK(last.kind == wire::Response::Kind::events);
  CHECK(last.end);
  CHECK(last.next_seq == 3);
}

TEST_CASE("server: stop ends an open long poll and an open follow with an answer, not a cut") {
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1})", "k").status == 200);
  ClientOptions options;
  options.retries_max = 0;
  auto client = fx.client(options);
  FollowSink sink;
  client->follow(1, sink.on_batch(), sink.on_end());
  sink.await_count(1);
  std::atomic<bool> polled_ok{false};
  std::string poll_connection;
  std::thread poller([&] {
    // Longer than shutdown_grace_ms: only the server's wake-up answers it.
    const Reply reply = get(port, "/v1/events?from_seq=2&wait_ms=30000");
    polled_ok = reply.status == 200 && reply.body == "{\"events\":[],\"next_seq\":2}";
    poll_connection = reply.headers.count("Connection") ? reply.headers.at("Connection") : "";
  });
  await_event_waits(port, 2);  // the poll and the follow
  fx.server->stop();
  poller.join();
  CHECK(polled_ok.load());
  CHECK(poll_connection == "close");
  // The follow got the server's own last word, not a dropped connection.
  CHECK(sink.await_end().code() == ErrorCode::closed);
  CHECK(client->close().ok());
}

TEST_CASE("server: a non-loopback listener needs a token; names resolve, localhost is loopback") {
  testing::TempDir dir;
  const std::unique_ptr<Ledger> ledger = open_ledger(dir);
  ServerOptions options;
  options.binary_listen = "0.0.0.0:0";
  options.http_listen = "";
  CHECK(Server::start(ledger.get(), options).code() == ErrorCode::invalid);
  options.binary_listen = "[::ffff:10.0.0.1]:0";  // IPv4 written as IPv6: not loopback
  CHECK(Server::start(ledger.get(), options).code() == ErrorCode::invalid);
  options.binary_listen = "[::ffff:127.0.0.1]:0";  // IPv4 loopback written as IPv6
  CHECK(Server::start(ledger.get(), options).ok());
  CHECK(constant_time_equal("abc", "abc"));
  CHECK_FALSE(constant_time_equal("abc", "abd"));
  CHECK_FALSE(constant_time_equal("abc", "ab"));
  CHECK_FALSE(constant_time_equal("", "a"));

  // A Client reaches a server by name.
  options.binary_listen = "localhost:0";  // no token needed: loopback
  auto server = Server::start(ledger.get(), options);
  REQUIRE_MESSAGE(server.ok(), server.status().to_string());
  ClientOptions client_options;
  client_options.address = "localhost:" + std::to_string((*server)->binary_port());
  auto client = Client::connect(client_options);
  REQUIRE_MESSAGE(client.ok(), client.status().to_string());
  CHECK((*client)->acquire("a", "alice", "gold", 3)->outcome == Outcome::ok);
  CHECK(ledger->balance("alice", "gold")->available == 3);
  CHECK((*client)->close().ok());
  // It listens on every address the name has (127.0.0.1 and, on many
  // hosts, ::1), so a client that tries only one of them gets in.
  auto addresses = resolve_endpoints("localhost", (*server)->binary_port());
  REQUIRE(addresses.ok());
  for (const tcp::endpoint& address : *addresses) {
    const std::string ip = address.address().to_string();
    ClientOptions direct;
    direct.address = (address.address().is_v6() ? "[" + ip + "]" : ip) + ":" +
                     std::to_string(address.port());
    direct.retries_max = 0;
    auto reached = Client::connect(direct);
    REQUIRE_MESSAGE(reached.ok(), direct.address << ": " << reached.status().to_string());
    CHECK((*reached)->balance("alice", "gold")->available == 3);
    CHECK((*reached)->close().ok());
  }
  (*server)->stop();

  // A name that does not resolve: the server's address is invalid, the
  // client's fails to connect (io_error: a name may resolve later).
  options.binary_listen = "no-such-host.invalid:0";
  auto refused = Server::start(ledger.get(), options);
  CHECK(refused.code() == ErrorCode::invalid);
  CHECK(refused.status().message().find("cannot resolve 'no-such-host.invalid'") !=
        std::string::npos);
  client_options.address = "no-such-host.invalid:1";
  client_options.retries_max = 0;
  auto unreached = Client::connect(client_options);
  CHECK(unreached.code() == ErrorCode::io_error);
  CHECK(unreached.status().message().find("cannot resolve") != std::string::npos);
  CHECK(ledger->close().ok());
}

TEST_CASE("address: a resolution that outlives its deadline is dropped, not waited for") {
  // A resolver that answers only once let go, as a name server that does
  // not answer; it outlives the call that gave up on it.
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    bool answered = false;
  };
  auto gate = std::make_shared<Gate>();
  const auto slow = [gate](const std::string&, std::uint16_t port) {
    std::unique_lock<std::mutex> guard(gate->mu);
    gate->cv.wait(guard, [&] { return gate->open; });
    auto resolved = resolve_endpoints("127.0.0.1", port);
    gate->answered = true;
    gate->cv.notify_all();
    return resolved;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
  auto late = resolve_endpoints_until("slow.example", 7420, deadline, slow);
  CHECK(late.code() == ErrorCode::io_error);
  CHECK(late.status().message() == "cannot resolve 'slow.example': no answer in time");
  CHECK(std::chrono::steady_clock::now() >= deadline);
  {
    std::unique_lock<std::mutex> guard(gate->mu);
    gate->open = true;
    gate->cv.notify_all();
    gate->cv.wait(guard, [&] { return gate->answered; });  // its answer goes nowhere
  }
  // One that answers in time is returned as it answered.
  auto prompt = resolve_endpoints_until(
      "slow.example", 7420, std::chrono::steady_clock::now() + std::chrono::seconds(60), slow);
  REQUIRE(prompt.ok());
  REQUIRE(prompt->size() == 1);
  CHECK(prompt->front() == tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 7420));
}

TEST_CASE("server: bound before its ledger, it answers starting; a Client waits for serve()") {
  ServerOptions options;
  options.binary_listen = "127.0.0.1:0";
  options.http_listen = "127.0.0.1:0";
  options.log = [](std::string_view) {};
  OpenProgress progress;  // what the open has done so far
  progress.snapshot_seq = 1000;
  progress.events = 4096;
  options.starting = &progress;
  auto bound = Server::bind(options);
  REQUIRE(bound.ok());
  Server& server = **bound;
  const Reply health = get(server.http_port(), "/health");
  CHECK(health.status == 503);
  CHECK(health.code() == "starting");
  CHECK(health.header("Retry-After") == "1");
  CHECK(health.integer("snapshot_seq") == 1000);
  CHECK(health.integer("replayed_events") == 4096);
  progress.events = 8192;
  CHECK(get(server.http_port(), "/health").integer("replayed_events") == 8192);
  const Reply read = get(server.http_port(), "/v1/balances/alice/gold");
  CHECK(read.status == 503);
  CHECK(read.code() == "busy");
  CHECK(read.header("Retry-After") == "1");
  // A scrape meanwhile gets the server's own counters and the open's
  // progress, and no figure of a ledger that is not there yet.
  const Reply scrape = get(server.http_port(), "/metrics");
  CHECK(scrape.status == 200);
  CHECK(scrape.header("Content-Type") == "text/plain; version=0.0.4");
  CHECK(metric(server.http_port(), "tally_starting") == 1);
  CHECK(metric(server.http_port(), "tally_open_snapshot_seq") == 1000);
  CHECK(metric(server.http_port(), "tally_open_replayed_events") == 8192);
  CHECK(metric(server.http_port(), "tally_connections_total{protocol=\"http\"}") >= 5);
  CHECK(metric(server.http_port(), "tally_next_seq") == -1);
  CHECK(metric(server.http_port(), "tally_fsyncs_total") == -1);
  CHECK(get(server.http_port(), "/metrics?x=1").status == 400);
  // The read turned away counts under its op; a path that is no route, or a
  // method its route does not take, under none.
  CHECK(get(server.http_port(), "/v2/nothing").status == 503);
  CHECK(post(server.http_port(), "/v1/balances/alice/gold", "{}", "k").status == 503);
  CHECK(metric(server.http_port(), "tally_ops_total{op=\"balance\",outcome=\"busy\"}") == 1);

  // A first request without a hello (this server has no token) is
  // answered busy, and the connection closed.
  const wire::Response early = lone_balance_answer(server.binary_port());
  CHECK(early.kind == wire::Response::Kind::error);
  CHECK(early.error.code() == ErrorCode::busy);
  CHECK(metric(server.http_port(), "tally_ops_total{op=\"balance\",outcome=\"busy\"}") == 2);

  // So is the hello. A client whose start wait is over stops
  // there (it has no retries left)...
  ClientOptions client_options;
  client_options.address = "127.0.0.1:" + std::to_string(server.binary_port());
  client_options.retries_max = 0;
  client_options.retry_backoff_max_ms = 20;
  client_options.start_wait_ms = 50;
  auto impatient = Client::connect(client_options);
  CHECK(impatient.code() == ErrorCode::busy);
  CHECK(impatient.status().message().find("starting") != std::string::npos);

  // ...one still in its start wait keeps trying, however few its retries,
  // and is served once the ledger is.
  client_options.start_wait_ms = 60'000;
  std::optional<Result<std::unique_ptr<Client>>> patient;
  std::thread connecting([&] { patient.emplace(Client::connect(client_options)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  testing::TempDir dir;
  const std::unique_ptr<Ledger> ledger = open_ledger(dir);
  REQUIRE(server.serve(ledger.get()).ok());
  connecting.join();
  REQUIRE_MESSAGE(patient->ok(), patient->status().to_string());
  CHECK((**patient)->acquire("a", "alice", "gold", 3)->outcome == Outcome::ok);
  CHECK(get(server.http_port(), "/health").status == 200);
  CHECK(get(server.http_port(), "/v1/balances/alice/gold").integer("available") == 3);
  CHECK(metric(server.http_port(), "tally_starting") == 0);
  CHECK(metric(server.http_port(), "tally_next_seq") == 2);
  CHECK((**patient)->close().ok());
  server.stop();
  CHECK(ledger->close().ok());
}

TEST_CASE("server: starting, a hello with a wrong token is refused, not told to wait") {
  ServerOptions options;
  options.binary_listen = "127.0.0.1:0";
  options.http_listen = "127.0.0.1:0";
  options.log = [](std::string_view) {};
  options.token = "s3cret-token";
  OpenProgress progress;
  options.starting = &progress;
  auto bound = Server::bind(options);
  REQUIRE(bound.ok());
  Server& server = **bound;
  wire::Request hello;
  hello.id = 4;
  hello.kind = wire::Request::Kind::hello;
  hello.version = wire::kProtocolVersion;
  hello.token = "wrong";
  const wire::Response wrong = lone_answer(server.binary_port(), hello);
  CHECK(wrong.unauthorized);
  CHECK(wrong.error.message() == "unauthorized: wrong token");
  hello.token.clear();
  CHECK(lone_answer(server.binary_port(), hello).unauthorized);
  // The right token is told the server is starting, as HTTP answers 401
  // before 503.
  hello.token = "s3cret-token";
  const wire::Response right = lone_answer(server.binary_port(), hello);
  CHECK_FALSE(right.unauthorized);
  CHECK(right.error.code() == ErrorCode::busy);
  CHECK(get(server.http_port(), "/v1/balances/a/b").status == 401);
  const std::string scraped = http_call(server.http_port(), http::verb::get, "/metrics", {},
                                        {{"Authorization", "Bearer s3cret-token"}})
                                  .body;
  CHECK(scraped.find("\ntally_unauthorized_total{protocol=\"binary\"} 2\n") != std::string::npos);
  server.stop();
}

TEST_CASE("client: every call, with the Ledger's results") {
  Fixture fx;
  auto client = fx.client();
  CHECK(client->acquire("a", "alice", "gold", 100, {.reason = "grant", .reference = {}, .actor = {}})->outcome == Outcome::ok);
  CHECK(client->consume("c", "alice", "gold", 1000)->outcome == Outcome::insufficient);
  CHECK(client->transfer("t", "alice", "bob", "gold", 10)->outcome == Outcome::ok);
  auto hold = client->hold("h", "alice", "gold", 5, kMinuteNs);
  REQUIRE(hold.ok());
  CHECK(hold->hold == hold->seq);
  CHECK(client->commit("hc", hold->hold, 3)->outcome == Outcome::ok);
  CHECK(client->commit("bad", hold->hold, 0).code() == ErrorCode::invalid);
  CHECK(client->release("hr", hold->hold)->outcome == Outcome::hold_finalized);
  auto batch = client->batch("b", {OpRequest::hold_of("alice", "gold", 1, kMinuteNs),
                                   OpRequest::hold_of("bob", "gold", 1, kMinuteNs)});
  REQUIRE(batch.ok());
  CHECK(batch->holds.size() == 2);
  CHECK(client->release("br", batch->holds[1])->outcome == Outcome::ok);
  CHECK(client->acquire("a", "alice", "gold", 100)->replay);
  CHECK(client->acquire("a", "alice", "gold", 7).code() == ErrorCode::idempotency_conflict);
  CHECK(client->acquire("", "alice", "gold", 7).code() == ErrorCode::invalid);
  CHECK(*client->balance("alice", "gold") == Balance{100 - 10 - 3 - 1, 1});
  auto items = client->list("bob");
  REQUIRE(items.ok());
  REQUIRE(items->size() == 1);
  CHECK(items->front().balance == Balance{10, 0});
  auto info = client->hold_info(hold->hold);
  REQUIRE(info.ok());
  CHECK(info->status == HoldStatus::committed);
  CHECK(info->committed_qty == 3);
  CHECK(client->hold_info(424242).code() == ErrorCode::not_found);
  // The same answers as the embedded Ledger gives.
  CHECK(*fx.ledger->balance("alice", "gold") == *client->balance("alice", "gold"));
}

// What a completion may not do, on either implementation: a blocking call
// or close() there is invalid, not a wait for itself; and an empty
// completion runs its command (or is a read nobody hears).
void check_completion_misuse(LedgerApi& api, const std::string& subject) {
  Command command;
  command.key = subject + "-misuse";
  command.op = OpRequest::acquire(subject, "gold", 1);
  std::promise<std::array<ErrorCode, 6>> codes;
  api.submit(command, [&](Result<Receipt> result) {
    // The point-in-time reads too: they may wait for what the ledger's
    // threads write.
    const AsOf at = AsOf::at_seq(result.ok() ? result->seq : 1);
    codes.set_value({result.code(), api.balance(subject, "gold").code(),
                     api.balance(subject, "gold", at).code(), api.list(subject, at).code(),
                     api.hold_info(1, at).code(), api.close().code()});
  });
  CHECK(codes.get_future().get() ==
        std::array<ErrorCode, 6>{ErrorCode::ok, ErrorCode::invalid, ErrorCode::invalid,
                                 ErrorCode::invalid, ErrorCode::invalid, ErrorCode::invalid});
  command.key = subject + "-unheard";
  api.submit(command, {});
  Command both = command;
  both.key = subject + "-both";
  both.batch = true;
  api.submit(both, {});  // refused at once
  api.submit_balance(subject, "gold", {});
  api.submit_list(subject, {});
  api.submit_hold_info(1, {});
  const Result<Balance> balance = api.balance(subject, "gold");
  REQUIRE(balance.ok());
  CHECK(balance->available == 2);
}

TEST_CASE("client: completions that block, close or are empty, as the Ledger takes them") {
  Fixture fx;
  check_completion_misuse(*fx.ledger, "carol");
  auto client = fx.client();
  check_completion_misuse(*client, "dave");
  CHECK(client->close().ok());
}

TEST_CASE("client: a single command that also has ops is refused, as the Ledger refuses it") {
  Fixture fx;
  auto client = fx.client();
  Command command;
  command.key = "both";
  command.op = OpRequest::acquire("alice", "gold", 1);
  command.ops = {OpRequest::acquire("bob", "gold", 1)};
  const Result<Receipt> embedded = fx.ledger->execute(command);
  const Result<Receipt> remote = client->execute(command);
  CHECK(embedded.code() == ErrorCode::invalid);
  CHECK(remote.code() == embedded.code());
  CHECK(remote.status().message() == embedded.status().message());
  CHECK(fx.ledger->stats().next_seq == 1);  // nothing was written
}

TEST_CASE("client: point-in-time balance and list, as the embedded Ledger answers them") {
  Fixture fx;
  auto client = fx.client();
  REQUIRE(client->acquire("a1", "alice", "gold", 10)->outcome == Outcome::ok);
  const std::uint64_t first = client->acquire("a2", "alice", "silver", 5)->seq;
  REQUIRE(client->transfer("t1", "alice", "bob", "gold", 4)->outcome == Outcome::ok);
  auto before = client->balance("alice", "gold", AsOf::at_seq(first));
  REQUIRE(before.ok());
  CHECK(*before == Balance{10, 0});
  CHECK(*before == *fx.ledger->balance("alice", "gold", AsOf::at_seq(first)));
  auto items = client->list("alice", AsOf::at_seq(first));
  REQUIRE(items.ok());
  REQUIRE(items->size() == 2);
  CHECK(items->at(1).item == "silver");
  auto empty = client->list("bob", AsOf::at_seq(first));
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  // Every event is stamped at or before now.
  auto now = client->balance("bob", "gold", AsOf::at_time(INT64_MAX));
  REQUIRE(now.ok());
  CHECK(*now == Balance{4, 0});
  CHECK(client->balance("alice", "gold", AsOf::at_seq(1000)).code() == ErrorCode::invalid);
}

TEST_CASE("client: a list far over the request limit is answered whole, as the Ledger answers it") {
  // 5,000 items with names of 246 bytes: a list answer of about 1.4 MB.
  Fixture fx;
  auto client = fx.client();
  for (int batch = 0; batch < 5; batch++) {
    std::vector<OpRequest> ops;
    for (int op = 0; op < 1000; op++) {
      std::string item = testing::name("item-", batch * 1000 + op);
      item.resize(246, 'x');
      ops.push_back(OpRequest::acquire("big", item, 1));
    }
    REQUIRE(client->batch(testing::name("b", batch), ops)->outcome == Outcome::ok);
  }
  const auto same = [](const std::vector<ItemBalance>& a, const std::vector<ItemBalance>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
      return x.item == y.item && x.balance == y.balance;
    });
  };
  auto remote = client->list("big");
  REQUIRE_MESSAGE(remote.ok(), remote.status().to_string());
  CHECK(remote->size() == 5000);
  CHECK(same(*remote, *fx.ledger->list("big")));
  auto at_seq = client->list("big", AsOf::at_seq(5));
  REQUIRE(at_seq.ok());
  CHECK(same(*at_seq, *remote));
  // The connection goes on.
  CHECK(client->acquire("after", "big", "small", 1)->outcome == Outcome::ok);
}

TEST_CASE("binary: pipelined requests on one connection, matched by id") {
  Fixture fx;
  REQUIRE(fx.client()->acquire("seed", "s", "i", 1000)->outcome == Outcome::ok);
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), fx.server->binary_port()));
  std::string burst;
  constexpr std::uint64_t kRequests = 40;
  for (std::uint64_t index = 0; index < kRequests; index++) {
    wire::Request request;
    request.id = 1000 + index;
    if (index % 2 == 0) {
      request.kind = wire::Request::Kind::mutation;
      // Appended: GCC 12 warns falsely (-Wrestrict) on "p" + std::to_string.
      request.command.key = "p";
      request.command.key += std::to_string(index);
      request.command.op = OpRequest::consume("s", "i", 1);
    } else {
      request.kind = wire::Request::Kind::hold_info;
      request.hold = 999999;
    }
    burst += wire::encode_request(request);
  }
  asio::write(socket, asio::buffer(burst));  // all before reading any answer
  std::map<std::uint64_t, wire::Response> answers;
  while (answers.size() < kRequests) {
    wire::Response response = read_response(socket);
    answers[response.id] = std::move(response);
  }
  for (std::uint64_t index = 0; index < kRequests; index++) {
    const wire::Response& response = answers.at(1000 + index);
    if (index % 2 == 0) {
      CHECK(response.kind == wire::Response::Kind::receipt);
      CHECK(response.receipt.outcome == Outcome::ok);
    } else {
      CHECK(response.kind == wire::Response::Kind::error);
      CHECK(response.error.code() == ErrorCode::not_found);
    }
  }
  CHECK(fx.ledger->balance("s", "i")->available == 1000 - static_cast<std::int64_t>(kRequests / 2));
}

TEST_CASE("binary: a peer pipelining far ahead of its reading gets every answer") {
  Fixture fx;
  fx.options.inflight_per_connection_max = 2;  // read, or answered and not yet written
  fx.stop();
  fx.start();
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), fx.server->binary_port()));
  constexpr std::uint64_t kRequests = 5000;
  const std::string burst = burst_of(kRequests, [](wire::Request* request) {
    request->kind = wire::Request::Kind::hold_info;
    request->hold = request->id;
  });
  // Sent from another thread: the server reads it only as fast as this
  // thread takes the answers.
  std::thread sender([&] { asio::write(socket, asio::buffer(burst)); });
  std::vector<bool> seen(kRequests + 1, false);
  for (std::uint64_t count = 0; count < kRequests; count++) {
    const wire::Response response = read_response(socket);
    REQUIRE(response.id >= 1);
    REQUIRE(response.id <= kRequests);
    CHECK_FALSE(seen[response.id]);
    seen[response.id] = true;
  }
  sender.join();
}

// How many lists the server has answered ok, by GET /metrics.
std::uint64_t lists_answered(Fixture& fx) {
  const std::string body = get(fx.server->http_port(), "/metrics").body;
  const std::string name = "tally_ops_total{op=\"list\",outcome=\"ok\"} ";
  const std::size_t at = body.find(name);
  return at == std::string::npos ? 0 : std::stoull(body.substr(at + name.size()));
}

// Waits until `count` lists are answered (their answers maybe unwritten).
void wait_lists_answered(Fixture& fx, std::uint64_t count) {
  for (int poll = 0; poll < 1000 && lists_answered(fx) < count; poll++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(lists_answered(fx) == count);
}

// A binary list of "big" (make_wide_subject), id 1.
std::string list_of_big() {
  return burst_of(1, [](wire::Request* request) {
    request->kind = wire::Request::Kind::list;
    request->subject = "big";
  });
}

// Connects `socket`, opened by make_wide_subject or as it does, and sends
// list_of_big(); read nothing from it, and its answer holds a list place.
void hold_a_list_place(Fixture& fx, tcp::socket& socket) {
  if (!socket.is_open()) {
    socket.open(tcp::v4());
    socket.set_option(asio::socket_base::receive_buffer_size(4096));
  }
  connect_binary(socket, fx.server->binary_port());
  asio::write(socket, asio::buffer(list_of_big()));
}

TEST_CASE("binary: pipelined lists whose answers are not read are served a few at a time") {
  Fixture fx;
  // What the server may run before it stops: 8 MiB of answers waiting, what
  // the kernel's largest send buffer takes, one list being written and one
  // running. Each answer is about 280 KB.
  std::ifstream tcp_wmem("/proc/sys/net/ipv4/tcp_wmem");
  std::uint64_t send_buffer_min = 0;
  std::uint64_t send_buffer_default = 0;
  std::uint64_t send_buffer_max = 4u << 20;
  tcp_wmem >> send_buffer_min >> send_buffer_default >> send_buffer_max;
  const std::uint64_t served_max = ((8u << 20) + send_buffer_max) / 280'000 + 3;
  const std::uint64_t lists = served_max + 40;
  asio::io_context io;
  tcp::socket socket(io);
  send_lists_of_a_wide_subject(fx, socket, lists);
  // Nothing read yet: the server runs lists until 8 MiB of answers wait to
  // be written (and the socket's buffers hold what they take), then stops.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::uint64_t served = lists_answered(fx);
  CHECK(served >= 1);
  CHECK(served <= served_max);
  // Read, every list is answered, in order.
  for (std::uint64_t id = 1; id <= lists; id++) {
    const wire::Response response = read_response(socket);
    REQUIRE(response.id == id);
    REQUIRE(response.kind == wire::Response::Kind::list);
    CHECK(response.items.size() == 1000);
  }
  CHECK(lists_answered(fx) == lists);
}

TEST_CASE("server: at most kListsAtOnce lists run at once, over both protocols; others wait") {
  Fixture fx;
  asio::io_context io;
  // kListsAtOnce connections, one of them HTTP, each ask for a list of
  // about 8 MB, more than any socket buffers hold, and read nothing: every
  // answer stays unwritten, holding its place.
  std::vector<tcp::socket> stuck;
  for (std::size_t index = 0; index < kListsAtOnce; index++) stuck.emplace_back(io);
  make_wide_subject(fx, stuck[0], 28);
  stuck[0].connect(tcp::endpoint(asio::ip::address_v4::loopback(), fx.server->http_port()));
  const std::string http_list = "GET /v1/balances/big HTTP/1.1\r\nHost: x\r\n\r\n";
  asio::write(stuck[0], asio::buffer(http_list));
  for (std::size_t index = 1; index < kListsAtOnce; index++) hold_a_list_place(fx, stuck[index]);
  wait_lists_answered(fx, kListsAtOnce);
  // One more list waits for a place; a request after it on its connection
  // does not.
  tcp::socket waiting(io);
  connect_binary(waiting, fx.server->binary_port());
  asio::write(waiting, asio::buffer(burst_of(2, [](wire::Request* request) {
    request->kind = request->id == 1 ? wire::Request::Kind::list : wire::Request::Kind::balance;
    request->subject = "big";
    request->item = "nothing";
  })));
  CHECK(read_response(waiting).id == 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(lists_answered(fx) == kListsAtOnce);
  // The HTTP client goes away, its answer unwritten: its place goes to the
  // list that waited.
  stuck[0].close();
  const wire::Response list = read_response(waiting);
  CHECK(list.id == 1);
  REQUIRE(list.kind == wire::Response::Kind::list);
  CHECK(list.items.size() == 28'000);
  // A binary client that goes away frees its place too: the places are
  // full again (the freed one taken by a list that is not read), one more
  // list waits, and a binary client leaves.
  stuck[0] = tcp::socket(io);
  hold_a_list_place(fx, stuck[0]);
  wait_lists_answered(fx, kListsAtOnce + 2);
  asio::write(waiting, asio::buffer(list_of_big()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(lists_answered(fx) == kListsAtOnce + 2);
  stuck[1].close();
  const wire::Response again = read_response(waiting);
  REQUIRE(again.kind == wire::Response::Kind::list);
  CHECK(again.items.size() == 28'000);
}

TEST_CASE("server: a list waiting for a place when the server stops is answered closed") {
  Fixture fx;
  // Peers that read nothing hold the places past the grace period: the
  // waiting list must not wait for them to be cut off.
  fx.stop();
  fx.options.shutdown_grace_ms = 1000;
  fx.start();
  asio::io_context io;
  std::vector<tcp::socket> stuck;
  for (std::size_t index = 0; index < kListsAtOnce; index++) stuck.emplace_back(io);
  make_wide_subject(fx, stuck[0], 28);
  for (tcp::socket& socket : stuck) hold_a_list_place(fx, socket);
  wait_lists_answered(fx, kListsAtOnce);
  tcp::socket waiting(io);
  connect_binary(waiting, fx.server->binary_port());
  asio::write(waiting, asio::buffer(list_of_big()));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::thread stopper([&] { fx.server->stop(); });
  const wire::Response answer = read_response(waiting);
  stopper.join();
  CHECK(answer.id == 1);
  REQUIRE(answer.kind == wire::Response::Kind::error);
  CHECK(answer.error.code() == ErrorCode::closed);
  CHECK(answer.error.message() == "the server is stopping");
}

TEST_CASE("binary: a list answer over the protocol's limit is refused; the connection goes on") {
  Fixture fx;
  // 270,000 items of 255-byte names: about 75 MB of answer.
  constexpr int kItems = 270'000;
  for (int batch = 0; batch < kItems / 1000; batch++) {
    std::vector<OpRequest> ops;
    for (int op = 0; op < 1000; op++) {
      std::string item = testing::name("item-", batch * 1000 + op);
      item.resize(255, 'x');
      ops.push_back(OpRequest::acquire("huge", item, 1));
    }
    REQUIRE(fx.ledger->batch(testing::name("b", batch), ops)->outcome == Outcome::ok);
  }
  asio::io_context io;
  tcp::socket socket(io);
  connect_binary(socket, fx.server->binary_port());
  asio::write(socket, asio::buffer(burst_of(2, [](wire::Request* request) {
    request->kind = request->id == 1 ? wire::Request::Kind::list : wire::Request::Kind::balance;
    request->subject = "huge";
    request->item = testing::name("item-", 7);
    request->item.resize(255, 'x');
  })));
  std::map<std::uint64_t, wire::Response> answers;
  for (int answer = 0; answer < 2; answer++) {
    wire::Response response = read_response(socket);
    answers[response.id] = std::move(response);
  }
  REQUIRE(answers[1].kind == wire::Response::Kind::error);
  CHECK(answers[1].error.code() == ErrorCode::invalid);
  // Refused by its items' size, before it was encoded.
  CHECK(answers[1].error.message().find("is at least ") != std::string::npos);
  CHECK(answers[1].error.message().find("bytes, over the protocol's limit of 67108864") !=
        std::string::npos);
  REQUIRE(answers[2].kind == wire::Response::Kind::balance);
  CHECK(answers[2].balance.available == 1);
}

TEST_CASE("binary: a stop mid-pipeline answers every request it applied, then ends the stream") {
  Fixture fx;
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), fx.server->binary_port()));
  constexpr std::uint64_t kRequests = 20000;
  const std::string burst = burst_of(kRequests, [](wire::Request* request) {
    request->kind = wire::Request::Kind::mutation;
    request->command.key = "m";
    request->command.key += std::to_string(request->id);
    request->command.op = OpRequest::acquire("s", "i", 1);
  });
  // The peer keeps sending while the server stops: what the server has not
  // read when it stops gets no answer, and must not cost the answers sent.
  std::thread sender([&] {
    boost::system::error_code ignored;
    asio::write(socket, asio::buffer(burst), ignored);
  });
  std::uint64_t answers = 0;
  std::thread stopper;
  boost::system::error_code ended;
  while (next_response(socket, &ended)) {
    if (++answers == 100) stopper = std::thread([&] { fx.server->stop(); });
  }
  // A clean end of stream after the last answer, not a reset.
  CHECK(ended == asio::error::eof);
  socket.close();
  sender.join();
  stopper.join();
  CHECK(answers >= 100);
  CHECK(answers < kRequests);  // it stopped before the end
  // Every request the server applied was answered.
  CHECK(fx.ledger->balance("s", "i")->available == static_cast<std::int64_t>(answers));
}

TEST_CASE("binary: many concurrent clients share one ledger") {
  Fixture fx;
  constexpr int kClients = 8;
  constexpr int kOpsPerClient = 100;
  std::atomic<int> ok_count{0};
  std::vector<std::thread> threads;
  for (int client_index = 0; client_index < kClients; client_index++) {
    threads.emplace_back([&, client_index] {
      auto client = fx.client();
      std::atomic<int> answered{0};
      for (int op = 0; op < kOpsPerClient; op++) {
        Command command;
        command.key = key_of("c", client_index, op);
        command.op = OpRequest::acquire("pool", "coin", 1);
        client->submit(std::move(command), [&](Result<Receipt> result) {
          if (result.ok() && result->outcome == Outcome::ok) ok_count++;
          answered++;
        });
      }
      // A blocking read after the pipelined writes: answered after them.
      CHECK(client->balance("pool", "coin").ok());
      while (answered.load() < kOpsPerClient) std::this_thread::yield();
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(ok_count.load() == kClients * kOpsPerClient);
  CHECK(fx.ledger->balance("pool", "coin")->available == kClients * kOpsPerClient);
}

// Forwards one connection at a time to the server; on the first connection
// it drops both sides instead of forwarding the server's `drop_chunk`th
// piece of answers (the first is the hello's), after the server has done
// what was asked.
class DroppingProxy {
 public:
  explicit DroppingProxy(std::uint16_t upstream, int drop_chunk = 2)
      : upstream_(upstream), drop_chunk_(drop_chunk),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this] { run(); });
  }
  ~DroppingProxy() {
    stopping_ = true;
    boost::system::error_code ignored;
    // Wake the acceptor with a connection of our own.
    tcp::socket poke(io_);
    poke.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port()), ignored);
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  int connections() const { return connections_.load(); }

 private:
  void run() {
    while (!stopping_) {
      tcp::socket downstream(io_);
      boost::system::error_code ec;
      acceptor_.accept(downstream, ec);
      if (ec || stopping_) return;
      tcp::socket upstream(io_);
      upstream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), upstream_), ec);
      const bool drop = connections_++ == 0;
      std::thread up([&] { pump(downstream, upstream, false); });
      pump(upstream, downstream, drop);
      up.join();
    }
  }
  void pump(tcp::socket& from, tcp::socket& to, bool drop) {
    char chunk[4096];
    int chunks = 0;
    boost::system::error_code ec;
    while (true) {
      const std::size_t n = from.read_some(asio::buffer(chunk), ec);
      if (ec || (drop && ++chunks == drop_chunk_)) break;
      asio::write(to, asio::buffer(chunk, n), ec);
      if (ec) break;
    }
    from.shutdown(tcp::socket::shutdown_both, ec);
    to.shutdown(tcp::socket::shutdown_both, ec);
  }

  std::uint16_t upstream_;
  const int drop_chunk_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

TEST_CASE("client: a dropped connection is retried with the same key, applied once") {
  Fixture fx;
  DroppingProxy proxy(fx.server->binary_port());
  ClientOptions options;
  options.address = "127.0.0.1:" + std::to_string(proxy.port());
  auto client = Client::connect(options);
  REQUIRE(client.ok());
  auto receipt = (*client)->acquire("once", "alice", "gold", 7);
  REQUIRE(receipt.ok());
  CHECK(receipt->outcome == Outcome::ok);
  CHECK(receipt->replay);  // the first attempt was applied; its answer was lost
  CHECK(proxy.connections() == 2);
  CHECK((*client)->balance("alice", "gold")->available == 7);
  CHECK((*client)->close().ok());
}

// Forwards one connection at a time to an upstream port the test may
// change, or to none (0: each connection is closed at once, as by a server
// that is down), and cuts the connection it forwards when told. With
// `swallow_first`, the first connection forwards the server's first piece
// of answers (the hello's) and swallows the rest, as a network that loses
// them, until the server closes it.
class SwitchingProxy {
 public:
  explicit SwitchingProxy(std::uint16_t upstream, bool swallow_first = false)
      : upstream_(upstream), swallow_first_(swallow_first),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this] { run(); });
  }
  ~SwitchingProxy() {
    stopping_ = true;
    cut();
    boost::system::error_code ignored;
    tcp::socket poke(io_);  // wakes the acceptor
    poke.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port()), ignored);
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  int connections() const { return connections_.load(); }
  ClientOptions client_options() const {
    ClientOptions options;
    options.address = "127.0.0.1:" + std::to_string(port());
    // Reconnects that outlast a server restart however slow the machine.
    options.retries_max = 1000;
    options.retry_backoff_max_ms = 20;
    return options;
  }
  void redirect(std::uint16_t upstream) { upstream_ = upstream; }
  // Ends the connection forwarded now, both ways.
  void cut() {
    std::lock_guard<std::mutex> guard(mu_);
    boost::system::error_code ignored;
    for (tcp::socket* socket : current_) {
      if (socket != nullptr) socket->shutdown(tcp::socket::shutdown_both, ignored);
    }
  }
  void await_connections(int count) const {
    while (connections() < count) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

 private:
  void run() {
    while (!stopping_) {
      tcp::socket downstream(io_);
      boost::system::error_code ec;
      acceptor_.accept(downstream, ec);
      if (ec || stopping_) return;
      const bool swallow = connections_++ == 0 && swallow_first_;
      const std::uint16_t to = upstream_.load();
      if (to == 0) continue;  // `downstream` closes as it goes
      tcp::socket upstream(io_);
      upstream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), to), ec);
      if (ec) continue;
      {
        std::lock_guard<std::mutex> guard(mu_);
        current_ = {&downstream, &upstream};
      }
      std::thread up([&] { pump(downstream, upstream, false); });
      pump(upstream, downstream, swallow);
      up.join();
      std::lock_guard<std::mutex> guard(mu_);
      current_ = {nullptr, nullptr};
    }
  }
  void pump(tcp::socket& from, tcp::socket& to, bool swallow) {
    char chunk[4096];
    bool forwarded = false;
    boost::system::error_code ec;
    while (true) {
      const std::size_t n = from.read_some(asio::buffer(chunk), ec);
      if (ec) break;
      if (swallow && forwarded) continue;
      forwarded = true;
      asio::write(to, asio::buffer(chunk, n), ec);
      if (ec) break;
    }
    from.shutdown(tcp::socket::shutdown_both, ec);
    to.shutdown(tcp::socket::shutdown_both, ec);
  }

  std::atomic<std::uint16_t> upstream_;
  const bool swallow_first_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::mutex mu_;
  std::array<tcp::socket*, 2> current_{nullptr, nullptr};  // the connection forwarded now
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

TEST_CASE("client: a request sent, unanswered, then refused a reconnect is io_error, not invalid") {
  Fixture fx;  // no token, for now
  SwitchingProxy proxy(fx.server->binary_port(), true);
  auto client = Client::connect(proxy.client_options());
  REQUIRE(client.ok());
  const auto submit = [&](const std::string& key, std::promise<Result<Receipt>>* answer) {
    Command command;
    command.key = key;
    command.op = OpRequest::acquire("alice", "gold", 7);
    (*client)->submit(std::move(command),
                      [answer](Result<Receipt> result) { answer->set_value(std::move(result)); });
  };
  std::promise<Result<Receipt>> sent_answer;
  submit("sent", &sent_answer);
  // Applied; its answer is swallowed.
  while (fx.ledger->balance("alice", "gold")->available != 7) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // The server goes down: the client reconnects, and fails, until it is back.
  proxy.redirect(0);
  fx.stop();
  proxy.await_connections(2);
  std::promise<Result<Receipt>> unsent_answer;
  submit("unsent", &unsent_answer);  // queued: there is no connection to send it on
  // Back, with a token this client does not have: the reconnect is refused.
  fx.options.token = "secret";
  fx.start();
  proxy.redirect(fx.server->binary_port());
  const Result<Receipt> sent = sent_answer.get_future().get();
  CHECK(sent.code() == ErrorCode::io_error);
  CHECK(sent.status().message().find("outcome is unknown") != std::string::npos);
  CHECK(sent.status().message().find("unauthorized") != std::string::npos);
  // Never sent, so never decided: that one carries the reconnect's reason.
  const Result<Receipt> unsent = unsent_answer.get_future().get();
  CHECK(unsent.code() == ErrorCode::invalid);
  CHECK(unsent.status().message().find("unauthorized") != std::string::npos);
  // The retry the io_error calls for, with the same key, is safe.
  Command again;
  again.key = "sent";
  again.op = OpRequest::acquire("alice", "gold", 7);
  auto replay = fx.client()->execute(std::move(again));
  REQUIRE(replay.ok());
  CHECK(replay->replay);
  CHECK(fx.ledger->balance("alice", "gold")->available == 7);
}

TEST_CASE("client: a server of another ledger is refused; its own is taken back") {
  Fixture fx;
  Fixture other;  // another data directory
  CHECK(fx.ledger->ledger_id() != other.ledger->ledger_id());
  SwitchingProxy proxy(fx.server->binary_port());
  auto client = Client::connect(proxy.client_options());
  REQUIRE(client.ok());
  CHECK((*client)->ledger_id() == fx.ledger->ledger_id());
  REQUIRE((*client)->acquire("k1", "alice", "gold", 5).ok());
  // The address now leads to the other ledger's server.
  proxy.redirect(other.server->binary_port());
  proxy.cut();
  const auto refused = (*client)->acquire("k2", "alice", "gold", 5);
  // invalid when the client saw the cut before sending it, else io_error
  // (sent, unanswered): either way the reconnect's reason.
  CHECK((refused.code() == ErrorCode::invalid || refused.code() == ErrorCode::io_error));
  CHECK(refused.status().message().find("was it started on another data directory?") !=
        std::string::npos);
  CHECK(other.ledger->balance("alice", "gold")->available == 0);
  CHECK(other.ledger->committed_seq() == 0);
  // Its own ledger back at the address: served again.
  proxy.redirect(fx.server->binary_port());
  REQUIRE((*client)->acquire("k2", "alice", "gold", 5).ok());
  CHECK(fx.ledger->balance("alice", "gold")->available == 10);
  CHECK((*client)->ledger_id() == fx.ledger->ledger_id());

  // A client told which ledger to expect refuses another from the start.
  ClientOptions pinned;
  pinned.address = "127.0.0.1:" + std::to_string(other.server->binary_port());
  pinned.ledger_id = fx.ledger->ledger_id();
  const auto wrong = Client::connect(pinned);
  CHECK(wrong.code() == ErrorCode::invalid);
  pinned.ledger_id = other.ledger->ledger_id();
  const auto right = Client::connect(pinned);
  REQUIRE(right.ok());
  CHECK((*right)->ledger_id() == other.ledger->ledger_id());

  // A server too old to say (ledgerId 0): taken, unless the client asks
  // for a ledger. This one answers each of two connections' hellos.
  asio::io_context io;
  tcp::acceptor old_server(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  std::thread answering([&] {
    wire::Response hello;
    hello.kind = wire::Response::Kind::hello;
    const std::string answer = wire::encode_response(hello);
    std::vector<tcp::socket> accepted;
    for (int connection = 0; connection < 2; connection++) {
      accepted.push_back(old_server.accept());
      asio::write(accepted.back(), asio::buffer(answer));
    }
  });
  ClientOptions to_old;
  to_old.address = "127.0.0.1:" + std::to_string(old_server.local_endpoint().port());
  to_old.retries_max = 0;
  const auto unpinned = Client::connect(to_old);
  REQUIRE(unpinned.ok());
  CHECK((*unpinned)->ledger_id() == 0);
  to_old.ledger_id = fx.ledger->ledger_id();
  const auto refused_old = Client::connect(to_old);
  CHECK(refused_old.code() == ErrorCode::invalid);
  CHECK(refused_old.status().message().find("does not say which ledger it serves") !=
        std::string::npos);
  answering.join();
}

TEST_CASE("client: a follow outlives connections that drop and are restored, however many") {
  Fixture fx;
  SwitchingProxy proxy(fx.server->binary_port());
  ClientOptions options = proxy.client_options();
  options.retries_max = 1;  // each reconnect is restored at its first attempt
  auto client = Client::connect(options);
  REQUIRE(client.ok());
  REQUIRE(fx.ledger->acquire("k1", "alice", "gold", 1).ok());
  FollowSink sink;
  (*client)->follow(1, sink.on_batch(), sink.on_end());
  sink.await_count(1);
  const auto ended = [&] {
    std::lock_guard<std::mutex> guard(sink.mu);
    return sink.end.has_value();
  };
  for (int cut = 1; cut <= 4 && !ended(); cut++) {
    proxy.cut();
    // Answered once the client has reconnected and sent the follow again:
    // the next cut falls on a connection in use, not on a reconnect's
    // hello, which would count against the reconnect's own attempts.
    REQUIRE((*client)->balance("alice", "gold").ok());
  }
  REQUIRE(fx.ledger->acquire("k2", "alice", "gold", 1).ok());
  sink.await_count(2);
  {
    std::lock_guard<std::mutex> guard(sink.mu);
    CHECK_FALSE(sink.end.has_value());
    CHECK(sink.seqs == seq_range(1, 2));
  }
  CHECK((*client)->close().ok());
  CHECK(sink.await_end().code() == ErrorCode::closed);
}

TEST_CASE("client: open follows do not count against inflight_max") {
  Fixture fx;
  ClientOptions options;
  options.inflight_max = 1;
  auto client = fx.client(options);
  FollowSink sink;
  client->follow(1'000'000, sink.on_batch(), sink.on_end());  // waits far ahead
  auto read = std::async(std::launch::async, [&] { return client->balance("a", "b").ok(); });
  const bool answered = read.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  CHECK(answered);
  CHECK(client->close().ok());  // ends the wait if nothing else did
  if (answered) CHECK(read.get());
}

TEST_CASE("client: a follow cancelled while the client reconnects ends with ok, not sent again") {
  Fixture fx;
  SwitchingProxy proxy(fx.server->binary_port());
  auto client = Client::connect(proxy.client_options());
  REQUIRE(client.ok());
  REQUIRE(fx.ledger->acquire("k1", "alice", "gold", 1).ok());
  FollowSink sink;
  const FollowId id = (*client)->follow(1, sink.on_batch(), sink.on_end());
  sink.await_count(1);
  // The connection drops, and the server cannot be reached for now.
  proxy.redirect(0);
  proxy.cut();
  proxy.await_connections(2);  // the client is reconnecting
  (*client)->cancel_follow(id);
  proxy.redirect(fx.server->binary_port());
  // Answered on the new connection, after the follow's end was delivered.
  REQUIRE((*client)->acquire("k2", "alice", "gold", 1).ok());
  {
    std::lock_guard<std::mutex> guard(sink.mu);
    REQUIRE(sink.end.has_value());
    CHECK(sink.end->ok());
    CHECK(sink.seqs == seq_range(1, 1));
  }
  CHECK((*client)->close().ok());
  // close() does not end it a second time.
  std::lock_guard<std::mutex> guard(sink.mu);
  CHECK(sink.end->ok());
}

// A peer that accepts connections and answers nothing, or only the hello:
// a stopped server, or one whose answers never come.
// The next request a client sent; none when the connection ends first.
std::optional<wire::Request> read_frame(tcp::socket& socket, wire::FrameReader& reader) {
  boost::system::error_code ec;
  while (true) {
    auto frame = reader.next();
    if (!frame) return std::nullopt;
    if (!frame->empty()) {
      auto request = wire::decode_request(*frame);
      if (!request) return std::nullopt;
      return std::move(*request);
    }
    const std::span<std::byte> space = reader.space();
    const std::size_t n = socket.read_some(asio::buffer(space.data(), space.size()), ec);
    if (ec) return std::nullopt;
    reader.commit(n);
  }
}

class SilentServer {
 public:
  // `answer_kind`: what it answers the hello with. `after_hello`: what it
  // does then on each connection, before it reads and answers nothing.
  using Script = std::function<void(tcp::socket&, wire::FrameReader&)>;
  explicit SilentServer(bool answer_hello,
                        wire::Response::Kind answer_kind = wire::Response::Kind::hello,
                        Script after_hello = {})
      : answer_hello_(answer_hello),
        answer_kind_(answer_kind),
        after_hello_(std::move(after_hello)),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this] { run(); });
  }
  ~SilentServer() {
    stopping_ = true;
    boost::system::error_code ignored;
    tcp::socket poke(io_);  // wakes the acceptor
    poke.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port()), ignored);
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  // Options of a client of this peer.
  ClientOptions client_options() const {
    ClientOptions options;
    options.address = "127.0.0.1:" + std::to_string(port());
    return options;
  }
  // Bytes read from the client after its hello.
  std::size_t bytes_after_hello() const { return bytes_.load(); }
  // Later connections get no answer to their hello: a server that hangs.
  void stop_answering_hellos() { hellos_unanswered_ = true; }
  int connections() const { return connections_.load(); }

 private:
  void run() {
    std::vector<std::unique_ptr<tcp::socket>> kept;  // open until the end
    while (!stopping_) {
      auto socket = std::make_unique<tcp::socket>(io_);
      boost::system::error_code ec;
      acceptor_.accept(*socket, ec);
      if (ec || stopping_) return;
      connections_++;
      if (answer_hello_ && !hellos_unanswered_) {
        wire::FrameReader reader(wire::kFrameBytesMaxDefault);
        read_frame(*socket, reader);  // the hello
        wire::Response hello;
        hello.kind = answer_kind_;
        asio::write(*socket, asio::buffer(wire::encode_response(hello)), ec);
        if (after_hello_) after_hello_(*socket, reader);
        socket->non_blocking(true, ec);
      }
      kept.push_back(std::move(socket));
      // What the client sends next is read and never answered.
      for (int poll = 0; poll < 50 && !stopping_; poll++) {
        char chunk[4096];
        for (auto& open : kept) {
          bytes_ += open->read_some(asio::buffer(chunk), ec);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  const bool answer_hello_;
  const wire::Response::Kind answer_kind_;
  const Script after_hello_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> hellos_unanswered_{false};
  std::atomic<std::size_t> bytes_{0};
  std::atomic<int> connections_{0};
};

// A script that answers the client's first request after its hello (a
// follow) with the frame `answer` makes for its id.
SilentServer::Script answer_first_with(std::function<std::string(std::uint64_t id)> answer) {
  return [answer = std::move(answer)](tcp::socket& socket, wire::FrameReader& reader) {
    const auto request = read_frame(socket, reader);
    if (!request) return;
    boost::system::error_code ec;
    asio::write(socket, asio::buffer(answer(request->id)), ec);
  };
}

// Follows from seq 1 through a client of `peer` with one retry, until the
// follow ends: how, and how many batches it delivered.
std::pair<Status, int> follow_until_end(const SilentServer& peer) {
  ClientOptions options = peer.client_options();
  options.retries_max = 1;
  auto connected = Client::connect(options);
  REQUIRE(connected.ok());
  std::atomic<int> batches{0};
  std::promise<Status> ended;
  (*connected)->follow(
      1, [&](const EventBatch&) { batches++; },
      [&](Status why) { ended.set_value(std::move(why)); });
  auto end = ended.get_future();
  REQUIRE(end.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  return {end.get(), batches.load()};
}

TEST_CASE("client: a follow's batch that does not begin where it should drops the connection") {
  // Asked from seq 1, it answers with one event that ends before seq 5:
  // seq 4, three events lost.
  SilentServer skipping(true, wire::Response::Kind::hello, answer_first_with([](std::uint64_t id) {
                          wire::Response batch;
                          batch.id = id;
                          batch.kind = wire::Response::Kind::events;
                          batch.events.append(std::vector<std::byte>(8));
                          batch.next_seq = 5;
                          return wire::encode_response(batch);
                        }));
  const auto [why, batches] = follow_until_end(skipping);
  CHECK(why.code() == ErrorCode::io_error);  // as for any answer it refused
  CHECK_MESSAGE(why.message().find("does not begin at the seq") != std::string::npos,
                why.to_string());
  CHECK(batches == 0);
  CHECK(skipping.connections() == 2);  // once again, then given up
}

TEST_CASE("client: a follow's answer this version does not know drops the connection") {
  // A receipt of an outcome a later version may have, under the follow's
  // id: the stream cannot pass over it.
  SilentServer newer(true, wire::Response::Kind::hello, answer_first_with([](std::uint64_t id) {
                       capnp::MallocMessageBuilder builder;
                       auto response = builder.initRoot<proto::Response>();
                       response.setId(id);
                       response.initReceipt().setOutcome(static_cast<proto::Outcome>(99));
                       const kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
                       const auto bytes = words.asBytes();
                       return std::string(reinterpret_cast<const char*>(bytes.begin()),
                                          bytes.size());
                     }));
  const auto [why, batches] = follow_until_end(newer);
  CHECK(why.code() == ErrorCode::io_error);
  CHECK_MESSAGE(why.message().find("outcome 99") != std::string::npos, why.to_string());
  CHECK(batches == 0);
  CHECK(newer.connections() == 2);  // once again, then given up
}

TEST_CASE("client: a peer that answers the hello with something else is refused at connect") {
  SilentServer silent(true, wire::Response::Kind::receipt);
  auto connected = Client::connect(silent.client_options());
  REQUIRE(connected.code() == ErrorCode::invalid);
  CHECK(connected.status().message().find("answered the hello with something else") !=
        std::string::npos);
  CHECK(silent.connections() == 1);  // not tried again
}

TEST_CASE("client: a server that never answers the hello is given up after connect_timeout_ms") {
  SilentServer silent(false);
  ClientOptions options = silent.client_options();
  options.connect_timeout_ms = 100;
  options.retries_max = 1;
  auto client = Client::connect(options);
  REQUIRE(client.code() == ErrorCode::io_error);
  CHECK(client.status().message().find("no answer within 100 ms") != std::string::npos);
}

TEST_CASE("client: pointed at the HTTP port, connect says so") {
  Fixture fx;
  ClientOptions options;
  options.address = "127.0.0.1:" + std::to_string(fx.server->http_port());
  auto client = Client::connect(options);
  REQUIRE(client.code() == ErrorCode::invalid);
  CHECK(client.status().message().find("that is the HTTP port") != std::string::npos);
}

TEST_CASE("client: close fails what it sent with io_error (outcome unknown), never closed") {
  SilentServer silent(true);
  ClientOptions options = silent.client_options();
  auto client = Client::connect(options);
  REQUIRE(client.ok());
  std::mutex mu;
  std::vector<Status> results;
  for (int op = 0; op < 3; op++) {
    Command command;
    command.key = key_of("k", op, 0);
    command.op = OpRequest::acquire("alice", "gold", 1);
    (*client)->submit(std::move(command), [&](Result<Receipt> result) {
      std::lock_guard<std::mutex> guard(mu);
      results.push_back(result.status());
    });
  }
  // The server has the requests (it may have applied them), but answers none.
  for (int wait = 0; wait < 500 && silent.bytes_after_hello() == 0; wait++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(silent.bytes_after_hello() > 0);
  CHECK((*client)->close().ok());
  REQUIRE(results.size() == 3);
  for (const Status& result : results) {
    CHECK(result.code() == ErrorCode::io_error);
    CHECK(result.message().find("outcome is unknown") != std::string::npos);
  }
  // After close, a call fails at once with closed: nothing was sent.
  CHECK((*client)->acquire("late", "alice", "gold", 1).code() == ErrorCode::closed);
}

// A client of `silent` that gives up on an answer after answer_timeout_ms,
// and reconnects once.
std::unique_ptr<Client> impatient_client(const SilentServer& silent,
                                         std::int64_t answer_timeout_ms, int retries_max = 1,
                                         std::size_t inflight_max = ClientOptions{}.inflight_max) {
  ClientOptions options = silent.client_options();
  options.answer_timeout_ms = answer_timeout_ms;
  options.retries_max = retries_max;
  options.inflight_max = inflight_max;
  auto client = Client::connect(options);
  REQUIRE(client.ok());
  return std::move(*client);
}

TEST_CASE("client: times of any size wait as long as they say; too little room is invalid") {
  Fixture fx;
  ClientOptions forever;
  forever.retry_backoff_ms = INT64_MAX;
  forever.retry_backoff_max_ms = INT64_MAX;
  forever.start_wait_ms = INT64_MAX;
  forever.connect_timeout_ms = INT64_MAX;
  forever.answer_timeout_ms = INT64_MAX;
  auto client = fx.client(forever);
  // A deadline of now + INT64_MAX ms would have passed at once: the answer
  // counted as overdue and the connection dropped.
  for (int index = 0; index < 3; index++) {
    CHECK(client->acquire("k" + std::to_string(index), "alice", "gold", 1).ok());
  }
  CHECK(client->balance("alice", "gold")->available == 3);
  CHECK(client->close().ok());
  ClientOptions none;
  none.address = "127.0.0.1:" + std::to_string(fx.server->binary_port());
  none.inflight_max = 0;
  CHECK(Client::connect(none).code() == ErrorCode::invalid);
  // Too small for some answers to mutations the server would apply.
  none.inflight_max = 1;
  none.frame_bytes_max = 64;
  CHECK(Client::connect(none).code() == ErrorCode::invalid);
}

TEST_CASE("client: a server that stops answering is given up after answer_timeout_ms") {
  SilentServer silent(true);
  auto client = impatient_client(silent, 100);
  // Sent, dropped after 100 ms, sent again on a new connection, dropped
  // again: then io_error, the outcome unknown, instead of waiting for ever.
  auto receipt = client->acquire("late", "alice", "gold", 1);
  REQUIRE(receipt.code() == ErrorCode::io_error);
  CHECK(receipt.status().message().find("no answer within 100 ms") != std::string::npos);
  CHECK(silent.bytes_after_hello() > 0);
  CHECK(client->close().ok());
}

TEST_CASE("client: close() ends a reconnect's attempt under way") {
  SilentServer silent(true);
  ClientOptions options = silent.client_options();
  options.answer_timeout_ms = 50;
  options.connect_timeout_ms = 120'000;  // an attempt close() must not wait out
  auto connected = Client::connect(options);
  REQUIRE(connected.ok());
  Client& client = **connected;
  silent.stop_answering_hellos();
  std::atomic<bool> failed{false};
  Command command;
  command.key = "late";
  command.op = OpRequest::acquire("alice", "gold", 1);
  client.submit(std::move(command), [&](Result<Receipt> result) {
    CHECK(result.code() == ErrorCode::io_error);
    failed = true;
  });
  // Its answer overdue, the client reconnects, and its hello waits.
  for (int wait = 0; wait < 1000 && silent.connections() < 2; wait++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(silent.connections() == 2);
  auto closed = std::async(std::launch::async, [&] { return client.close(); });
  // Long before the attempt's own timeout.
  REQUIRE(closed.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  CHECK(closed.get().ok());
  CHECK(failed);
}

TEST_CASE("client: a request that gives up takes every request sent after it along") {
  SilentServer silent(true);
  auto client = impatient_client(silent, 1000);  // time enough to submit "second"
  std::mutex mu;
  std::vector<std::string> failed;  // keys, in the order they failed
  const auto submit = [&](const std::string& key) {
    Command command;
    command.key = key;
    command.op = OpRequest::acquire("alice", "gold", 1);
    client->submit(std::move(command), [&, key](Result<Receipt> result) {
      CHECK(result.code() == ErrorCode::io_error);
      std::lock_guard<std::mutex> guard(mu);
      failed.push_back(key);
    });
  };
  submit("first");
  // Its answer overdue, "first" goes out again on a second connection;
  // "second" follows it there, with one retry left to its name.
  for (int wait = 0; wait < 500 && silent.connections() < 2; wait++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(silent.connections() == 2);
  submit("second");
  for (int wait = 0; wait < 500; wait++) {
    {
      std::lock_guard<std::mutex> guard(mu);
      if (failed.size() == 2) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Both failed when "first" ran out of retries: "second" was not sent on
  // a third connection, where it could have been decided without "first".
  std::lock_guard<std::mutex> guard(mu);
  CHECK(failed == std::vector<std::string>{"first", "second"});
  CHECK(silent.connections() == 2);
}

// A client of fx's server that answered it once, then stopped: each
// request then waits for a reconnect that fails.
std::unique_ptr<Client> client_of_stopped(Fixture& fx, int retries_max,
                                          std::int64_t retry_backoff_ms) {
  ClientOptions options;
  options.retries_max = retries_max;
  options.retry_backoff_ms = retry_backoff_ms;
  auto client = fx.client(options);
  REQUIRE(client->balance("alice", "gold").ok());
  fx.stop();
  return client;
}

TEST_CASE("client: a call after one that failed with the reconnect tries to reconnect again") {
  Fixture fx;
  auto client = client_of_stopped(fx, 1, 1);
  // Each caller heard of the failure before it called again: its call is
  // sent (to a reconnect, which fails again), not refused as one that
  // might follow the failed one unaware.
  for (int call = 0; call < 20; call++) {
    const auto balance = client->balance("alice", "gold");
    REQUIRE_FALSE(balance.ok());
    CHECK_MESSAGE(balance.status().message().find("could not reconnect") == 0,
                  balance.status().to_string());
  }
}

TEST_CASE("client: a caller waiting for room is woken when the requests in flight give up") {
  SilentServer silent(true);
  auto connected = impatient_client(silent, 100, 1, 2);
  Client& client = *connected;
  std::atomic<int> failed{0};
  for (const char* key : {"first", "second"}) {
    Command command;
    command.key = key;
    command.op = OpRequest::acquire("alice", "gold", 1);
    client.submit(std::move(command), [&](Result<Receipt> result) {
      CHECK(result.code() == ErrorCode::io_error);
      failed++;
    });
  }
  // No room: this call waits until the two give up (two connections of
  // 100 ms each), and then hears io_error too, never waiting for ever.
  auto third = std::async(std::launch::async, [&] {
    return client.acquire("third", "alice", "gold", 1).code();
  });
  const bool woken = third.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  CHECK(woken);
  CHECK(client.close().ok());  // wakes it if nothing else did
  if (woken) CHECK(third.get() == ErrorCode::io_error);
  CHECK(failed == 2);
}

TEST_CASE("client: a request waiting for room when the one before it gives up is not sent") {
  SilentServer silent(true);
  auto connected = impatient_client(silent, 100, 0, 1);
  Client& client = *connected;
  std::atomic<bool> hold_failed{false};
  Command hold;
  hold.key = "hold";
  hold.op = OpRequest::hold_of("alice", "gold", 1, 60'000'000'000);
  client.submit(std::move(hold), [&](Result<Receipt> result) {
    CHECK(result.code() == ErrorCode::io_error);
    hold_failed = true;
  });
  // No room: the commit right behind its hold waits in submit() until the
  // hold gives up. Sent then, it would be decided without its hold.
  Command commit;
  commit.key = "commit";
  commit.op = OpRequest::commit_key("hold");
  const Result<Receipt> committed = client.execute(std::move(commit));
  REQUIRE(committed.code() == ErrorCode::io_error);
  CHECK(committed.status().message() ==
        "not sent: a request sent before it could not be delivered");
  for (int wait = 0; wait < 500 && !hold_failed; wait++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(hold_failed);
  CHECK(silent.connections() == 1);  // the commit went nowhere
  CHECK(client.close().ok());
}

TEST_CASE("client: a completion that submits goes past inflight_max, not waiting for itself") {
  Fixture fx;
  ClientOptions options;
  options.inflight_max = 4;
  auto client = fx.client(options);
  REQUIRE(client->acquire("fund", "alice", "gold", 1000).ok());
  constexpr int kHolds = 200;
  std::mutex mu;
  std::condition_variable done_cv;
  int committed = 0;
  for (int index = 0; index < kHolds; index++) {
    Command hold;
    hold.key = "hold-" + std::to_string(index);
    hold.op = OpRequest::hold_of("alice", "gold", 1, 60'000'000'000);
    // The commit right behind its hold, sent from the hold's completion,
    // while the caller fills the window with more holds.
    client->submit(std::move(hold), [&, index](Result<Receipt> held) {
      CHECK_MESSAGE(held.ok(), held.status().to_string());
      if (!held.ok()) return;
      Command commit;
      commit.key = "commit-" + std::to_string(index);
      commit.op = OpRequest::commit(held->hold);
      client->submit(std::move(commit), [&](Result<Receipt> result) {
        CHECK(result.ok());
        std::lock_guard<std::mutex> guard(mu);
        committed++;
        done_cv.notify_all();
      });
    });
  }
  std::unique_lock<std::mutex> guard(mu);
  REQUIRE(done_cv.wait_for(guard, std::chrono::seconds(30), [&] { return committed == kHolds; }));
  guard.unlock();
  const Result<Balance> balance = client->balance("alice", "gold");
  REQUIRE(balance.ok());
  CHECK(balance->available == 1000 - kHolds);
  CHECK(balance->held == 0);
  CHECK(client->close().ok());
}

TEST_CASE("client: a follow waiting for events is not an overdue answer") {
  Fixture fx;
  DroppingProxy proxy(fx.server->binary_port(), 1 << 30);  // forwards, never drops
  ClientOptions options;
  options.address = "127.0.0.1:" + std::to_string(proxy.port());
  options.answer_timeout_ms = 20;
  auto client = Client::connect(options);
  REQUIRE(client.ok());
  FollowSink sink;
  const FollowId id = (*client)->follow(1, sink.on_batch(), sink.on_end());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // ten timeouts, no events
  // Committed beside the client, whose only request stays the follow.
  REQUIRE(fx.ledger->acquire("k1", "alice", "gold", 3).ok());
  sink.await_count(1);
  (*client)->cancel_follow(id);
  CHECK(sink.await_end().ok());
  CHECK(proxy.connections() == 1);
  CHECK((*client)->close().ok());
}

TEST_CASE("client: with no server, submit returns; the completion runs on the client's thread") {
  Fixture fx;
  auto client = client_of_stopped(fx, 2, 10);
  std::promise<std::pair<std::thread::id, Status>> answered;
  Command command;
  command.key = "b";
  command.op = OpRequest::acquire("alice", "gold", 1);
  client->submit(std::move(command), [&](Result<Receipt> result) {
    answered.set_value({std::this_thread::get_id(), result.status()});
  });
  const auto [thread, status] = answered.get_future().get();
  CHECK(thread != std::this_thread::get_id());
  CHECK(status.code() == ErrorCode::io_error);
}

// The same calls on an embedded Ledger and on a Client, through LedgerApi.
std::vector<std::string> api_script(LedgerApi& api) {
  std::vector<std::string> seen;
  const auto note = [&](const auto& result) {
    seen.push_back(result.ok() ? "ok" : std::string(error_code_name(result.code())));
  };
  REQUIRE(api.acquire("a", "alice", "gold", 10)->outcome == Outcome::ok);
  const std::uint64_t hold = api.hold("h", "alice", "gold", 5, kMinuteNs)->hold;
  const std::uint64_t before_commit = api.commit("c", hold, 2)->seq - 1;
  auto then = api.hold_info(hold, AsOf::at_seq(before_commit));
  note(then);
  if (then.ok()) seen.push_back(std::string(hold_status_name(then->status)));
  auto now = api.hold_info(hold, AsOf::at_seq(before_commit + 1));
  if (now.ok()) seen.push_back(std::to_string(now->committed_qty));
  note(api.hold_info(hold + 1000, AsOf::at_seq(before_commit)));
  std::promise<void> reads;
  std::atomic<int> left{3};
  std::mutex mu;
  const auto done = [&] {
    if (--left == 0) reads.set_value();
  };
  api.submit_balance("alice", "gold", [&](Result<Balance> balance) {
    std::lock_guard<std::mutex> guard(mu);
    seen.push_back("balance " + std::to_string(balance->available) + "/" +
                   std::to_string(balance->held));
    done();
  });
  api.submit_list("alice", [&](Result<std::vector<ItemBalance>> items) {
    std::lock_guard<std::mutex> guard(mu);
    seen.push_back("items " + std::to_string(items->size()));
    done();
  });
  api.submit_hold_info(hold, [&](Result<HoldView> info) {
    std::lock_guard<std::mutex> guard(mu);
    seen.push_back("hold " + std::string(hold_status_name(info->status)));
    done();
  });
  reads.get_future().wait();
  std::sort(seen.end() - 3, seen.end());  // the three reads may answer in any order
  CHECK(api.close().ok());
  CHECK(api.balance("alice", "gold").code() == ErrorCode::closed);
  return seen;
}

TEST_CASE("client: the non-blocking reads and holds as of a seq, as the Ledger answers them") {
  Fixture fx;
  auto client = fx.client();
  const std::vector<std::string> remote = api_script(*client);
  Fixture other;  // its ledger, embedded: the server beside it serves nobody
  const std::vector<std::string> embedded = api_script(*other.ledger);
  CHECK(remote == embedded);
  CHECK(remote == std::vector<std::string>{"ok", "open", "2", "not_found", "balance 8/0",
                                           "hold committed", "items 1"});
}

TEST_CASE("client: a follow survives a dropped connection without losing or repeating a batch") {
  Fixture fx;
  // Answers: the hello, the first batch, then the second batch is lost.
  DroppingProxy proxy(fx.server->binary_port(), 3);
  auto writer = fx.client();
  for (int index = 0; index < 5; index++) REQUIRE(writer->acquire(key_of("a", index, 0), "s", "i", 1).ok());
  ClientOptions options;
  options.address = "127.0.0.1:" + std::to_string(proxy.port());
  auto client = Client::connect(options);
  REQUIRE(client.ok());
  FollowSink sink;
  const FollowId id = (*client)->follow(1, sink.on_batch(), sink.on_end());
  sink.await_count(5);
  for (int index = 0; index < 5; index++) REQUIRE(writer->acquire(key_of("b", index, 0), "s", "i", 1).ok());
  sink.await_count(10);
  CHECK(proxy.connections() == 2);  // the follow was sent again, from seq 6
  (*client)->cancel_follow(id);
  CHECK(sink.await_end().ok());
  std::lock_guard<std::mutex> guard(sink.mu);
  CHECK(sink.seqs == seq_range(1, 10));
  CHECK_FALSE(sink.gap);
  CHECK((*client)->close().ok());
}

TEST_CASE("client: what is invalid on its face is refused at once, unsent, as embedded") {
  Fixture fx;
  auto client = fx.client();
  std::vector<Command> commands;
  const auto add = [&](std::string key, OpRequest op) {
    Command& command = commands.emplace_back();
    command.key = std::move(key);
    command.op = std::move(op);
    return &command;
  };
  Command* batch_with_op = add("k1", OpRequest::consume("alice", "gold", 1000));
  batch_with_op->batch = true;
  batch_with_op->ops = {OpRequest::acquire("alice", "gold", 5)};
  Command* too_many = add("k2", OpRequest{});
  too_many->batch = true;
  too_many->ops.assign(kBatchOpsMax + 1, OpRequest::acquire("alice", "gold", 1));
  // Over the server's frame limit: sent, it would cost the connection.
  add(std::string(2 << 20, 'k'), OpRequest::acquire("alice", "gold", 1));
  add("k4", OpRequest::acquire("alice", "gold", 1))->meta.reason = std::string(2 << 20, 'r');
  add("k5", OpRequest::acquire("", "gold", 1));
  add("k6", OpRequest::transfer("alice", "alice", "gold", 1));
  add("k7", OpRequest::acquire("alice", "gold", 1))->op.type = OpType::expire;

  const std::string long_name(2 << 20, 's');
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"", "gold"}, {"alice", long_name}, {std::string("a\0b", 3), "gold"}};
  // What the Ledger answers, then the Client alike.
  std::vector<std::string> expected;
  for (const Command& command : commands) {
    const Result<Receipt> embedded = fx.ledger->execute(command);
    REQUIRE(embedded.code() == ErrorCode::invalid);
    expected.push_back(embedded.status().message());
  }
  for (const auto& [subject, item] : pairs) {
    const Result<Balance> embedded = fx.ledger->balance(subject, item);
    REQUIRE(embedded.code() == ErrorCode::invalid);
    expected.push_back(embedded.status().message());
  }
  const Result<std::vector<ItemBalance>> listed = fx.ledger->list(long_name);
  REQUIRE(listed.code() == ErrorCode::invalid);
  expected.push_back(listed.status().message());

  const auto check_client = [&] {
    std::vector<std::string> seen;
    for (const Command& command : commands) {
      bool answered = false;
      client->submit(command, [&](Result<Receipt> remote) {
        answered = true;
        seen.push_back(remote.status().message());
      });
      CHECK(answered);  // at once, on this thread
    }
    for (const auto& [subject, item] : pairs) {
      bool answered = false;
      client->submit_balance(subject, item, [&](Result<Balance> remote) {
        answered = true;
        seen.push_back(remote.status().message());
      });
      CHECK(answered);
    }
    seen.push_back(client->list(long_name).status().message());
    CHECK(seen == expected);
  };
  check_client();
  CHECK_FALSE(fx.logged("exceeds the limit"));  // nothing was sent
  CHECK(fx.ledger->stats().next_seq == 1);      // nor written
  // A hold's ttl is the server's limit: the server refuses it, in its words.
  Command hold;
  hold.key = "h";
  hold.op = OpRequest::hold_of("alice", "gold", 1, 0);
  const Result<Receipt> embedded_hold = fx.ledger->execute(hold);
  REQUIRE(embedded_hold.code() == ErrorCode::invalid);
  CHECK(client->execute(hold).status().message() == embedded_hold.status().message());
  // So are the ops of a batch after such a hold: the Ledger names the hold.
  Command held_first;
  held_first.key = "hb";
  held_first.batch = true;
  held_first.ops = {hold.op, OpRequest::acquire("", "gold", 1)};
  const Result<Receipt> embedded_batch = fx.ledger->execute(held_first);
  REQUIRE(embedded_batch.code() == ErrorCode::invalid);
  CHECK(embedded_batch.status().message().starts_with("op 0: ttl out of range"));
  CHECK(client->execute(held_first).status().message() == embedded_batch.status().message());
  // Unless an op after the hold makes the request too large for a server
  // to read: then that op's error, at once, and the connection stays.
  held_first.key = "hb-large";
  held_first.ops[1].subject = std::string(2u << 20, 's');
  const Result<Receipt> too_large = client->execute(held_first);
  REQUIRE(too_large.code() == ErrorCode::invalid);
  CHECK(too_large.status().message().starts_with("op 1: "));
  CHECK_FALSE(fx.logged("exceeds the limit"));
  REQUIRE(client->balance("alice", "gold").ok());
  // With the server gone, the same: no reconnect, no io_error.
  fx.stop();
  check_client();
  // A closed client answers a mutation closed first, as a closed Ledger
  // does, and a read of a name no mutation can write invalid, as it does.
  REQUIRE(client->close().ok());
  testing::TempDir closed_dir;
  const std::unique_ptr<Ledger> closed = open_ledger(closed_dir);
  REQUIRE(closed->close().ok());
  CHECK(client->execute(commands.front()).code() == ErrorCode::closed);
  CHECK(closed->execute(commands.front()).code() == ErrorCode::closed);
  CHECK(client->balance("", "gold").code() == ErrorCode::invalid);
  CHECK(client->balance("", "gold").status().message() ==
        closed->balance("", "gold").status().message());
  CHECK(client->balance("alice", "gold").code() == ErrorCode::closed);
  CHECK(closed->balance("alice", "gold").code() == ErrorCode::closed);
}

TEST_CASE("binary: a request that decodes but cannot be taken is answered invalid; the connection stays") {
  Fixture fx;
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), fx.server->binary_port()));
  // Built with the schema directly: wire::encode_request only writes what
  // the server takes.
  const auto send_mutation = [&](std::uint64_t id, unsigned op_count, std::uint16_t type) {
    capnp::MallocMessageBuilder builder;
    auto request = builder.initRoot<proto::Request>();
    request.setId(id);
    auto mutation = request.initMutation();
    mutation.setKey(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("k"), 1));
    auto ops = mutation.initOps(op_count);
    for (auto op : ops) {
      op.setType(static_cast<proto::OpType>(type));
      op.setSubject(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("s"), 1));
      op.setItem(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("i"), 1));
      op.setQty(1);
    }
    const kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
    asio::write(socket, asio::buffer(words.begin(), words.size() * sizeof(capnp::word)));
  };
  send_mutation(1, 0, 0);  // a single mutation with no op
  send_mutation(2, 2, 0);  // ... with two: the Ledger refuses it, as it would embedded
  send_mutation(3, 1, 9);  // an op type this version does not know
  send_mutation(5, 1001, 1);  // consumes, more than a batch may hold
  // In completion order: the second goes to the Ledger, the others are
  // refused as they are decoded.
  std::set<std::uint64_t> refused;
  for (int answer = 0; answer < 4; answer++) {
    const wire::Response response = read_response(socket);
    CHECK(response.kind == wire::Response::Kind::error);
    CHECK(response.error.code() == ErrorCode::invalid);
    if (response.id == 2) CHECK(response.error.message() == "ops are given but batch is not set");
    refused.insert(response.id);
  }
  CHECK(refused == std::set<std::uint64_t>{1, 2, 3, 5});
  // Each answer counts under the op it asked for, where it says: the
  // second and the last; the others name none, as an unknown route.
  const std::string metrics = get(fx.server->http_port(), "/metrics").body;
  CHECK(metrics.find("tally_ops_total{op=\"acquire\",outcome=\"invalid\"} 1\n") !=
        std::string::npos);
  CHECK(metrics.find("tally_ops_total{op=\"consume\",outcome=\"invalid\"} 1\n") !=
        std::string::npos);
  CHECK(metrics.find("tally_request_duration_seconds_count{op=\"consume\"} 1\n") !=
        std::string::npos);
  asio::write(socket, asio::buffer(balance_frame(4, "s", "i")));
  const wire::Response answer = read_response(socket);
  CHECK(answer.id == 4);
  CHECK(answer.kind == wire::Response::Kind::balance);
  CHECK(fx.ledger->stats().next_seq == 1);  // nothing was applied
}

// The frame of a request that `build` makes with the schema, whose AsOf's
// union discriminant is then set to `kind`: a kind of point in time the
// schema does not have (yet).
using AsOfBuild = std::function<proto::AsOf::Builder(proto::Request::Builder)>;
std::string with_as_of_kind(std::uint16_t kind, const AsOfBuild& build) {
  capnp::MallocMessageBuilder builder;
  proto::AsOf::Builder at = build(builder.initRoot<proto::Request>());
  at.setSeq(1);
  set_union_kind<proto::AsOf>(at, kind);
  return frame_of(builder);
}

TEST_CASE("binary: an asOf of an unknown kind is answered invalid, not read as a time") {
  Fixture fx;
  REQUIRE(fx.ledger->acquire("k", "s", "i", 1).ok());
  asio::io_context io;
  tcp::socket socket(io);
  connect_binary(socket, fx.server->binary_port());
  const auto data = [](std::string_view text) {
    return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(text.data()), text.size());
  };
  std::string frames = with_as_of_kind(5, [&](proto::Request::Builder request) {
    request.setId(1);
    auto query = request.initBalance();
    query.setSubject(data("s"));
    query.setItem(data("i"));
    return query.initAsOf();
  });
  frames += with_as_of_kind(5, [&](proto::Request::Builder request) {
    request.setId(2);
    auto query = request.initList();
    query.setSubject(data("s"));
    return query.initAsOf();
  });
  frames += with_as_of_kind(5, [&](proto::Request::Builder request) {
    request.setId(3);
    auto query = request.initHoldInfoAt();
    query.setHold(1);
    return query.initAsOf();
  });
  asio::write(socket, asio::buffer(frames));
  std::set<std::uint64_t> refused;
  for (int answer = 0; answer < 3; answer++) {
    const wire::Response response = read_response(socket);
    CHECK(response.kind == wire::Response::Kind::error);
    CHECK(response.error.code() == ErrorCode::invalid);
    CHECK(response.error.message().find("unknown asOf kind 5") != std::string::npos);
    refused.insert(response.id);
  }
  CHECK(refused == std::set<std::uint64_t>{1, 2, 3});
  const std::string metrics = get(fx.server->http_port(), "/metrics").body;
  for (const char* op : {"balance", "list", "hold_info"}) {
    std::string series = "tally_ops_total{op=\"";
    series += op;
    series += "\",outcome=\"invalid\"} 1\n";
    CHECK(metrics.find(series) != std::string::npos);
  }
  // The connection stays.
  asio::write(socket, asio::buffer(balance_frame(4, "s", "i")));
  const wire::Response answer = read_response(socket);
  CHECK(answer.id == 4);
  CHECK(answer.balance.available == 1);
}

TEST_CASE("binary: malformed and oversized frames close only their connection") {
  Fixture fx;
  fx.options.frame_bytes_max = 4096;
  fx.stop();
  fx.start();
  auto client = fx.client();
  const std::uint16_t port = fx.server->binary_port();
  // 1000 segments.
  std::string many(8, '\0');
  many[0] = static_cast<char>(0xE7), many[1] = 0x03;
  CHECK(send_raw_until_closed(port, many).empty());
  // One segment of 2^20 words: over frame_bytes_max.
  std::string huge(8, '\0');
  huge[6] = 0x10;
  CHECK(send_raw_until_closed(port, huge).empty());
  // Well framed, but its root pointer points far outside the segment.
  std::string wild(16, '\xff');
  wild.replace(0, 8, std::string("\0\0\0\0\1\0\0\0", 8));
  CHECK(send_raw_until_closed(port, wild).empty());
  // Half a frame, then the end of the stream.
  const std::string frame = balance_frame(0, "s", "i");
  CHECK(send_raw_until_closed(port, frame.substr(0, frame.size() / 2), true).empty());
  CHECK(fx.logged("segments"));
  CHECK(fx.logged("exceeds the limit"));
  CHECK(fx.logged("malformed request"));
  CHECK(fx.logged("the stream ended inside a frame"));
  // The first three sent what is not the protocol; the last one is gone.
  CHECK(metric(fx.server->http_port(), "tally_malformed_total") == 3);
  CHECK(client->acquire("after", "a", "b", 1)->outcome == Outcome::ok);
}

TEST_CASE("server: a flood of malformed connections logs a bounded number of lines") {
  Fixture fx;
  const std::uint64_t flood = kConnectionLinesPerMinute + 20;
  for (std::uint64_t i = 0; i < flood; i++) {
    CHECK(send_raw_until_closed(fx.server->binary_port(), std::string(16, '\xff')).empty());
  }
  std::size_t closing_lines = 0;
  {
    std::lock_guard<std::mutex> guard(fx.log_mu);
    for (const auto& line : fx.logs) {
      closing_lines += line.starts_with("binary connection: closing") ? 1 : 0;
    }
  }
  CHECK(closing_lines == kConnectionLinesPerMinute);
  CHECK(fx.logged("the rest of this minute's are left out"));
  // Every one is still counted.
  const auto malformed = static_cast<std::int64_t>(flood);
  CHECK(metric(fx.server->http_port(), "tally_malformed_total") == malformed);
}

TEST_CASE("binary: requests read before a malformed frame are answered before the close") {
  Fixture fx;
  std::string bytes = burst_of(2, [](wire::Request* request) {
    request->kind = wire::Request::Kind::mutation;
    request->command.key = "k" + std::to_string(request->id);
    request->command.op = OpRequest::acquire("g", "i", 1);
  });
  bytes += std::string(40, '\xff');  // in the same write
  const std::string answers = send_raw_until_closed(fx.server->binary_port(), bytes);
  // Applied, so answered: the caller is not left to guess the outcome.
  wire::FrameReader reader(wire::kFrameBytesMaxDefault);
  REQUIRE(reader.space().size() >= answers.size());
  std::memcpy(reader.space().data(), answers.data(), answers.size());
  reader.commit(answers.size());
  std::set<std::uint64_t> answered;
  while (true) {
    auto frame = reader.next();
    REQUIRE(frame.ok());
    if (frame->empty()) break;
    auto response = wire::decode_response(*frame);
    REQUIRE(response.ok());
    CHECK(response->kind == wire::Response::Kind::receipt);
    answered.insert(response->id);
  }
  CHECK(answered == std::set<std::uint64_t>{1, 2});
  CHECK(fx.ledger->balance("g", "i")->available == 2);
  CHECK(fx.logged("binary connection: closing"));
}

TEST_CASE("server: connection limit, for each protocol on its own") {
  Fixture fx;
  fx.options.connections_max = 1;
  fx.stop();
  fx.start();
  auto client = fx.client();
  // The one binary slot is taken: the next binary connection is closed at
  // once, while HTTP (a supervisor's GET /health) still gets in.
  CHECK(send_raw_until_closed(fx.server->binary_port(), "").empty());
  CHECK(get(fx.server->http_port(), "/health").status == 200);
  CHECK(client->acquire("k", "a", "b", 1).ok());
  // Refusals are said once, not once each.
  for (int refused = 0; refused < 5; refused++) {
    CHECK(send_raw_until_closed(fx.server->binary_port(), "").empty());
  }
  std::size_t said = 0;
  {
    std::lock_guard<std::mutex> guard(fx.log_mu);
    for (const std::string& line : fx.logs) {
      said += line.find("refusing connections over connections_max (1 binary connections)") == 0;
    }
  }
  CHECK(said == 1);
  CHECK(metric(fx.server->http_port(), "tally_connections_rejected_total") == 6);
}

// Restarts `fx`'s server with one HTTP connection at most, and takes it
// with a keep-alive client (its GET /health answered) that keeps it.
struct HttpSlotHeld {
  explicit HttpSlotHeld(Fixture& fx) {
    fx.options.connections_max = 1;
    fx.stop();
    fx.start();
    port = fx.server->http_port();
    held.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    request.set(http::field::host, "127.0.0.1");
    http::write(held, request);
    http::response<http::string_body> answer;
    http::read(held, buffer, answer);
    REQUIRE(answer.result_int() == 200);
    REQUIRE(answer.keep_alive());
  }
  std::uint16_t port = 0;
  asio::io_context io;
  beast::tcp_stream held{io};
  http::request<http::empty_body> request{http::verb::get, "/health", 11};
  beast::flat_buffer buffer;
};

TEST_CASE("server: over HTTP's connection limit, a few probes still get GET /health and /metrics") {
  Fixture fx;
  HttpSlotHeld slot(fx);
  const std::uint16_t port = slot.port;
  asio::io_context& io = slot.io;

  // A supervisor's check and a scrape are answered, then closed, as many
  // times in a row as needed: each probe gives its slot back.
  for (std::size_t check = 0; check < 2 * kProbeConnectionsMax; check++) {
    const Reply health = get(port, "/health");
    CHECK(health.status == 200);
    CHECK(health.header("Connection") == "close");
  }
  // The held client and this probe (earlier probes may not be gone yet).
  while (metric(port, "tally_connections{protocol=\"http\"}") != 2) std::this_thread::yield();
  // A binary connection refused first is said on its own line, and does
  // not keep HTTP's refusals from being said in the same minute.
  auto client = fx.client();
  CHECK(send_raw_until_closed(fx.server->binary_port(), "").empty());
  CHECK(fx.logged("refusing connections over connections_max (1 binary connections); 1 refused"));
  // Any other route is refused, as a connection over the limit is, and
  // before its body is read.
  const Reply refused = get(port, "/v1/balances/a/b");
  CHECK(refused.status == 503);
  CHECK(refused.code() == "busy");
  CHECK(refused.header("Retry-After") == "1");
  CHECK(post(port, "/v1/acquire", R"({"subject":"a","item":"b","qty":1})", "k").status == 503);
  CHECK(fx.logged("refusing connections over connections_max (1 HTTP connections); 1 refused"));
  CHECK(metric(port, "tally_connections_rejected_total") == 3);
  CHECK(fx.ledger->balance("a", "b")->available == 0);

  // The probes are few, but connections that only hold their places do not
  // keep a check out: each new one closes the oldest that has sent nothing.
  // The refused connections above hold a probe's place until the server
  // has closed them: wait for that.
  while (metric(port, "tally_connections{protocol=\"http\"}") != 2) std::this_thread::yield();
  std::vector<std::unique_ptr<tcp::socket>> idle;
  for (std::size_t taken = 0; taken < kProbeConnectionsMax; taken++) {
    idle.push_back(std::make_unique<tcp::socket>(io));
    idle.back()->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  // Not waited for: whether a check finds a place free or takes an idle
  // one's (as the later ones do), it is answered.
  for (std::size_t check = 0; check < 2 * kProbeConnectionsMax; check++) {
    const std::string answered =
        send_raw_until_closed(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(answered.rfind("HTTP/1.1 200", 0) == 0);
  }
  // The held client was served all along.
  http::write(slot.held, slot.request);
  http::response<http::string_body> again;
  http::read(slot.held, slot.buffer, again);
  CHECK(again.result_int() == 200);
}

TEST_CASE("server: an idle probe closed to make room is counted and said as a refusal") {
  Fixture fx;
  HttpSlotHeld slot(fx);
  const std::uint16_t port = slot.port;
  // Idle connections take every probe's place; accepted in order, they are
  // all in place before the scrape's connection, which closes the oldest.
  std::vector<std::unique_ptr<tcp::socket>> idle;
  for (std::size_t taken = 0; taken < kProbeConnectionsMax; taken++) {
    idle.push_back(std::make_unique<tcp::socket>(slot.io));
    idle.back()->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  CHECK(metric(port, "tally_connections_rejected_total") == 1);
  char byte = 0;
  boost::system::error_code ec;
  CHECK(idle.front()->read_some(asio::buffer(&byte, 1), ec) == 0);
  CHECK(ec == asio::error::eof);
  CHECK(fx.logged("refusing connections over connections_max (1 HTTP connections); 1 refused "
                  "since the last such line; GET /health and GET /metrics are still answered"));
}

TEST_CASE("server: what a peer sent is logged cut short and escaped") {
  Fixture fx;
  const std::string coding = "x\ty" + std::string(3000, 'x');
  const std::string answer = send_raw_until_closed(
      fx.server->http_port(),
      "POST /v1/acquire HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + ", chunked\r\n\r\n");
  CHECK(answer.rfind("HTTP/1.1 501", 0) == 0);
  std::string line;
  {
    std::lock_guard<std::mutex> guard(fx.log_mu);
    for (const std::string& logged : fx.logs) {
      if (logged.find("transfer coding") != std::string::npos) line = logged;
    }
  }
  CAPTURE(line);
  CHECK(line.find("http connection: ") == 0);
  CHECK(line.find("\"x\\x09y") != std::string::npos);
  CHECK(line.find('\t') == std::string::npos);
  CHECK(line.size() < kConnectionNoteBytesMax + 100);
  CHECK(line.find("... (") != std::string::npos);
  CHECK(line.find(" (peer 127.0.0.1:") != std::string::npos);
}

// Restarts `fx`'s server with an idle timeout of `timeout_ms`.
void restart_with_idle_timeout(Fixture& fx, std::int64_t timeout_ms) {
  fx.options.idle_timeout_ms = timeout_ms;
  fx.stop();
  fx.start();
}

TEST_CASE("server: idle connections are closed") {
  Fixture fx;
  restart_with_idle_timeout(fx, 100);
  // Nobody sends anything: the server closes each connection by itself.
  CHECK(send_raw_until_closed(fx.server->http_port(), "").empty());
  CHECK(send_raw_until_closed(fx.server->binary_port(), "").empty());
  CHECK(fx.logged("http connection: closing: idle timeout (peer 127.0.0.1:"));
  CHECK(fx.logged("binary connection: closing: idle timeout (peer 127.0.0.1:"));
}

TEST_CASE("server: an idle timeout and a grace of any length wait that long") {
  Fixture fx;
  fx.options.idle_timeout_ms = INT64_MAX;
  fx.options.shutdown_grace_ms = INT64_MAX;
  fx.stop();
  fx.start();
  // A deadline of now + INT64_MAX ms would have passed at once: every
  // connection closed as idle before it was served.
  auto client = fx.client();
  CHECK(client->acquire("k", "alice", "gold", 1).ok());
  CHECK(get(fx.server->http_port(), "/v1/balances/alice/gold").status == 200);
  CHECK_FALSE(fx.logged("idle timeout"));
  CHECK(client->close().ok());
}

// Reads `socket` until a read fails; that failure (eof once the server
// closed it cleanly).
boost::system::error_code read_to_the_end(tcp::socket& socket) {
  boost::system::error_code ec;
  std::vector<char> chunk(1 << 16);
  while (!ec) socket.read_some(asio::buffer(chunk), ec);
  return ec;
}

TEST_CASE("server: a binary connection closes one idle timeout after its last request") {
  // The timer first fires a timeout after the connection opened and finds
  // a request 200 ms old: the close is due 200 ms later, not a whole
  // timeout later (2 s apart; the bounds leave 0.9 s of scheduling slack).
  constexpr std::int64_t kTimeoutMs = 2000;
  Fixture fx;
  restart_with_idle_timeout(fx, kTimeoutMs);
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), fx.server->binary_port()));
  wire::Request hello;
  asio::write(socket, asio::buffer(wire::encode_request(hello)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  asio::write(socket, asio::buffer(balance_frame(1, "a", "b")));
  const auto last_request = std::chrono::steady_clock::now();
  (void)read_to_the_end(socket);
  const auto idle_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - last_request)
                           .count();
  CHECK(idle_ms >= kTimeoutMs - 100);
  CHECK(idle_ms < kTimeoutMs + 900);
  CHECK(fx.logged("binary connection: closing: idle timeout"));
}

// Polls `fx`'s log for `fragment` for up to `polls` times 10 ms.
bool await_logged(Fixture& fx, std::string_view fragment, int polls) {
  for (int poll = 0; poll < polls; poll++) {
    if (fx.logged(fragment)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return fx.logged(fragment);
}

TEST_CASE("server: a frame trickled a byte at a time does not hold a binary connection open") {
  Fixture fx;
  restart_with_idle_timeout(fx, 300);
  asio::io_context io;
  tcp::socket socket(io);
  connect_binary(socket, fx.server->binary_port());
  // One segment of 100 words, sent a byte each 50 ms: ten idle timeouts'
  // worth of bytes, none of them making a whole request.
  std::string frame(8 + 100 * 8, '\0');
  frame[4] = 100;
  bool closed = false;
  for (std::size_t sent = 0; sent < 60 && !closed; sent++) {
    boost::system::error_code ec;
    asio::write(socket, asio::buffer(frame.data() + sent, 1), ec);
    closed = ec || await_logged(fx, "binary connection: closing: idle timeout", 5);
  }
  CHECK(closed);
  CHECK(fx.logged("binary connection: closing: idle timeout"));
}

// Checks that the server resets `socket`, a `protocol` connection whose
// peer reads none of its answers, saying `why` ("no answer bytes written",
// say), and does not take it for idle.
void check_reset_as_reading_none(Fixture& fx, tcp::socket& socket, const std::string& protocol,
                                 const std::string& why) {
  CHECK(await_logged(fx, protocol + " connection: closing: " + why, 1000));
  CHECK_FALSE(fx.logged(protocol + " connection: closing: idle timeout"));
  // Reset: what this side had received comes, then the reset. What the
  // server's system still held to send is dropped, not kept for a peer
  // that reads none.
  CHECK(read_to_the_end(socket) == asio::error::connection_reset);
}

// Reads `socket`, whose answers fill any socket buffers, 4 KiB every
// 20 ms for 2 s: many idle timeouts of 300 ms, far from the whole answers.
// The system's send buffer, which may hold megabytes, drains too slowly
// for the server's write to find room in it for many idle timeouts, but
// the peer takes bytes all the while: its `protocol` connection stays.
void check_slow_reader_stays(Fixture& fx, tcp::socket& socket, const std::string& protocol) {
  std::vector<char> chunk(4096);
  std::size_t received = 0;
  for (int read = 0; read < 100; read++) {
    boost::system::error_code ec;
    received += socket.read_some(asio::buffer(chunk), ec);
    REQUIRE_FALSE(ec);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(received > 0);
  CHECK_FALSE(fx.logged(protocol + " connection: closing"));
}

TEST_CASE("server: a peer that reads none of its answers is reset once the write stalls") {
  Fixture fx;
  restart_with_idle_timeout(fx, 300);
  // 48 answers of 280 KB fill any socket buffers.
  asio::io_context io;
  tcp::socket socket(io);
  send_lists_of_a_wide_subject(fx, socket, 48);
  SUBCASE("none read: the server gives up one idle timeout after its write stopped moving") {
    check_reset_as_reading_none(fx, socket, "binary", "no answer bytes written");
  }
  SUBCASE("read slowly: the connection stays") {
    check_slow_reader_stays(fx, socket, "binary");
  }
}

TEST_CASE("server: a peer that takes none of answers written whole is reset, not idle") {
  Fixture fx;
  restart_with_idle_timeout(fx, 300);
  asio::io_context io;
  tcp::socket socket(io);
  socket.open(tcp::v4());
  socket.set_option(asio::socket_base::receive_buffer_size(4096));
  SUBCASE("binary") {
    connect_binary(socket, fx.server->binary_port());
    // About 100 KB of answers: more than this side's buffer takes, and
    // likely no more than the server's holds, so its writes all complete.
    asio::write(socket, asio::buffer(burst_of(2000, [](wire::Request* request) {
      request->kind = wire::Request::Kind::balance;
      request->subject = "subject-with-a-long-name-to-answer";
      request->item = "item-with-a-long-name-to-answer";
    })));
    // Whether the writes completed or stalled, the peer takes nothing: reset.
    check_reset_as_reading_none(fx, socket, "binary", "no answer bytes");
  }
  SUBCASE("binary, a follow open on a quiet ledger") {
    // About 40 KB of events: more than this side's buffer takes, less than
    // the server's holds. Once they are written nothing more comes, and the
    // open follow must not make the connection look in use for ever.
    const std::string name(100, 'n');
    for (int index = 0; index < 200; index++) {
      REQUIRE(fx.ledger->acquire(testing::name("k", index), name, name, 1).ok());
    }
    connect_binary(socket, fx.server->binary_port());
    asio::write(socket, asio::buffer(follow_frame(1, 1)));
    check_reset_as_reading_none(fx, socket, "binary", "no answer bytes taken for 300 ms");
  }
  SUBCASE("http") {
    socket.connect(tcp::endpoint(asio::ip::address_v4::loopback(), fx.server->http_port()));
    // 60 pipelined answers of about 250 bytes: more than this side's
    // buffer takes, and less than the server's holds, so its writes all
    // complete and the connection waits for a next request that never
    // comes.
    const std::string name(100, 'n');
    std::string requests;
    for (int index = 0; index < 60; index++) {
      requests += "GET /v1/balances/" + name + "/" + name + " HTTP/1.1\r\nHost: x\r\n\r\n";
    }
    asio::write(socket, asio::buffer(requests));
    check_reset_as_reading_none(fx, socket, "http", "no answer bytes taken for 300 ms");
  }
}

TEST_CASE("server: DrainWatch tells a peer that takes its bytes from one that takes none") {
  using server_detail::DrainWatch;
  DrainWatch watch;
  CHECK(watch.look(-1, 10, 0) == DrainWatch::Seen::unknown);
  CHECK(watch.look(0, 20, 0) == DrainWatch::Seen::empty);
  // Bytes wait; the look before saw none, so this one compares.
  CHECK(watch.look(500, 30, 0) == DrainWatch::Seen::none);
  CHECK(watch.look(400, 40, 0) == DrainWatch::Seen::took);
  CHECK(watch.look(400, 50, 0) == DrainWatch::Seen::none);
  // The connection wrote since the last look: more bytes may have come, so
  // this look does not compare.
  CHECK(watch.look(300, 70, 60) == DrainWatch::Seen::first);
  CHECK(watch.look(200, 80, 60) == DrainWatch::Seen::took);
  // An unknown count compares with nothing.
  CHECK(watch.look(-1, 90, 60) == DrainWatch::Seen::unknown);
  CHECK(watch.look(100, 100, 60) == DrainWatch::Seen::first);
}

TEST_CASE("server: look_at_write gives a write the idle time since it last moved") {
  using server_detail::DrainWatch;
  using server_detail::drain_probe_ns;
  using server_detail::look_at_write;
  constexpr std::int64_t kIdle = 300;
  DrainWatch watch;
  std::int64_t moved = 0;  // the write began at 0
  // A first look compares with none: however near the deadline, the next
  // waits a probe (here the idle time, shorter than 10 s).
  CHECK(drain_probe_ns(kIdle) == kIdle);
  CHECK(drain_probe_ns(60'000'000'000) == 10'000'000'000);
  CHECK(look_at_write(watch, 1000, 298, kIdle, &moved) == kIdle);
  CHECK(moved == 0);
  // Some taken: the write moved at this look; the whole idle time is left.
  CHECK(look_at_write(watch, 900, 598, kIdle, &moved) == kIdle);
  CHECK(moved == 598);
  // None taken, but the idle time since the move has not passed.
  CHECK(look_at_write(watch, 900, 700, kIdle, &moved) == 198);
  // None taken for the idle time: the peer reads none.
  CHECK(look_at_write(watch, 900, 898, kIdle, &moved) == 0);
  // A piece written since the last look: that look does not compare.
  moved = 950;
  CHECK(look_at_write(watch, 5000, 1000, kIdle, &moved) == kIdle);
  // Everything taken is a move; a count the system cannot give is not.
  CHECK(look_at_write(watch, 0, 1300, kIdle, &moved) == kIdle);
  CHECK(moved == 1300);
  CHECK(look_at_write(watch, -1, 1700, kIdle, &moved) == 0);
}

TEST_CASE("server: look_when_idle closes a connection idle, or stuck on answers not taken") {
  using server_detail::DrainWatch;
  using server_detail::look_when_idle;
  constexpr std::int64_t kIdle = 300;
  std::int64_t active = 0;  // the connection began to wait at 0
  {
    DrainWatch watch;
    // The idle time has not passed: whatever waits, wait the rest.
    CHECK(look_when_idle(watch, 1000, 100, kIdle, &active) == 200);
    // Idle, and every answer taken (or a count the system cannot give).
    CHECK(look_when_idle(watch, 0, 300, kIdle, &active) == 0);
    CHECK(look_when_idle(watch, -1, 300, kIdle, &active) == 0);
  }
  DrainWatch watch;
  // Bytes wait, and no look before compares: look again a probe later.
  CHECK(look_when_idle(watch, 1000, 300, kIdle, &active) == kIdle);
  // Some taken: the peer is there; a whole idle time from this look.
  CHECK(look_when_idle(watch, 900, 600, kIdle, &active) == kIdle);
  CHECK(active == 600);
  CHECK(look_when_idle(watch, 900, 800, kIdle, &active) == 100);
  // None taken for the idle time: stuck.
  CHECK(look_when_idle(watch, 900, 900, kIdle, &active) == -1);
  CHECK(active == 600);
}

TEST_CASE("server: an HTTP client that reads none of its answer is reset once the write stalls") {
  Fixture fx;
  restart_with_idle_timeout(fx, 300);
  asio::io_context io;
  tcp::socket socket(io);
  // One list of about 8 MB, more than any socket buffers hold. One request,
  // read whole: a close with requests left unread would reset anyway.
  make_wide_subject(fx, socket, 28);
  socket.connect(tcp::endpoint(asio::ip::address_v4::loopback(), fx.server->http_port()));
  const std::string request = "GET /v1/balances/big HTTP/1.1\r\nHost: x\r\n\r\n";
  asio::write(socket, asio::buffer(request));
  SUBCASE("none read: the server gives up one idle timeout after its write stopped moving") {
    CHECK(await_logged(fx, "http connection: closing: no answer bytes written for 300 ms", 1000));
    CHECK(read_to_the_end(socket) == asio::error::connection_reset);
  }
  SUBCASE("read slowly: the connection stays") { check_slow_reader_stays(fx, socket, "http"); }
}

TEST_CASE("http: a stop under POST load ends each session at once, not at the grace's end") {
  // A stop that came after a request's headers were read, before their
  // handler ran, closed the session; the handler then armed a read of the
  // body (and its idle deadline) on it, which kept the session, and the
  // stop waited out the grace period for it. Races: several rounds. The
  // grace is far longer than a stop that has nothing left to wait for.
  Fixture fx;
  fx.options.idle_timeout_ms = 600'000;
  fx.options.shutdown_grace_ms = 5'000;
  constexpr int kRounds = 8;
  constexpr int kClients = 8;
  for (int round = 0; round < kRounds; round++) {
    fx.stop();
    fx.start();
    const std::uint16_t port = fx.server->http_port();
    std::atomic<int> answered{0};
    std::atomic<int> finished{0};
    std::vector<std::thread> threads;
    for (int client = 0; client < kClients; client++) {
      threads.emplace_back([&, client] {
        asio::io_context io;
        beast::tcp_stream stream(io);
        beast::error_code ec;
        stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
        beast::flat_buffer buffer;
        for (int op = 0; !ec; op++) {
          // Headers and body in one write, as most clients send them.
          http::request<http::string_body> request(http::verb::post, "/v1/acquire", 11);
          request.set(http::field::host, "127.0.0.1");
          request.set("Idempotency-Key", key_of("r" + std::to_string(round) + "-", client, op));
          request.body() = R"({"subject":"s","item":"i","qty":1})";
          request.prepare_payload();
          http::write(stream, request, ec);
          http::response<http::string_body> response;
          if (!ec) http::read(stream, buffer, response, ec);
          if (!ec) answered++;
        }
        finished++;
      });
    }
    while (answered.load() < kClients * 20 && finished.load() == 0) std::this_thread::yield();
    CHECK(finished.load() == 0);  // every client still sending when the stop comes
    fx.server->stop();
    for (auto& thread : threads) thread.join();
    CHECK_FALSE(fx.logged("grace period over"));
    if (fx.logged("grace period over")) break;
  }
}

TEST_CASE("server: graceful shutdown answers what it accepted; a restart serves the same state") {
  Fixture fx;
  constexpr int kClients = 4;
  constexpr int kBatches = 200;
  std::atomic<int> acked{0};
  std::atomic<int> answered{0};
  std::mutex acked_mu;
  std::string acked_key;  // one key the server acknowledged
  std::vector<std::unique_ptr<Client>> clients;
  ClientOptions options;
  options.retries_max = 0;
  for (int index = 0; index < kClients; index++) clients.push_back(fx.client(options));
  std::atomic<int> submitted{0};
  std::vector<std::thread> threads;
  for (int client_index = 0; client_index < kClients; client_index++) {
    threads.emplace_back([&, client_index] {
      for (int op = 0; op < kBatches; op++) {
        Command command;
        command.key = key_of("g", client_index, op);
        command.batch = true;
        command.ops = {OpRequest::acquire("left", "coin", 1), OpRequest::acquire("right", "coin", 1)};
        std::string key = command.key;
        clients[client_index]->submit(std::move(command), [&, key = std::move(key)](Result<Receipt> result) {
          if (result.ok()) {
            acked++;
            std::lock_guard<std::mutex> guard(acked_mu);
            if (acked_key.empty()) acked_key = key;
          }
          answered++;
        });
        submitted++;
      }
    });
  }
  // Stop with requests in flight, once the server has acknowledged at least
  // one: a client queues a submit before it writes it, so "submitted" alone
  // does not mean the server has seen anything yet.
  while (submitted.load() < kClients * kBatches / 4 || acked.load() == 0) std::this_thread::yield();
  fx.server->stop();
  for (auto& thread : threads) thread.join();
  while (answered.load() < kClients * kBatches) std::this_thread::yield();
  for (auto& client : clients) CHECK(client->close().ok());
  fx.stop();

  fx.start();
  const std::uint16_t port = fx.server->http_port();
  // The reopen replayed the log (no snapshot was due), and says so.
  CHECK(metric(port, "tally_open_snapshot_seq") == 0);
  CHECK(metric(port, "tally_open_replayed_events") == metric(port, "tally_next_seq") - 1);
  CHECK(metric(port, "tally_open_replayed_events") > 0);
  const std::int64_t left = get(port, "/v1/balances/left/coin").integer("available");
  const std::int64_t right = get(port, "/v1/balances/right/coin").integer("available");
  CHECK(left == right);         // no batch half-applied
  CHECK(left >= acked.load());  // nothing acknowledged lost
  CHECK(acked.load() > 0);
  // An acknowledged key is remembered across the restart. (Not g0-0: under
  // load the server may stop before the first client's thread sent anything.)
  auto client = fx.client();
  Command again;
  again.key = acked_key;
  again.batch = true;
  again.ops = {OpRequest::acquire("left", "coin", 1), OpRequest::acquire("right", "coin", 1)};
  auto replay = client->execute(std::move(again));
  REQUIRE(replay.ok());
  CHECK(replay->replay);
  CHECK(get(port, "/v1/balances/left/coin").integer("available") == left);
}

}  // namespace
}  // namespace tally
