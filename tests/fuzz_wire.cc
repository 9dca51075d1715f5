// Fuzz targets of the binary protocol (engine/wire.h): decode_request and
// decode_response on mutated frames, with a round trip of whatever decodes,
// and the stream framing (FrameReader, table_bytes, frame_bytes) on
// mutated streams of frames cut into random reads.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "engine/wire.h"
#include "log/event.h"
#include "tests/fuzz.h"

namespace tally::fuzz {

namespace {

using wire::Request;
using wire::Response;

// ---- seeds ---------------------------------------------------------------------

std::vector<OpRequest> every_op() {
  return {OpRequest::acquire("alice", "gold", 5),
          OpRequest::consume("alice", "gold", 1),
          OpRequest::transfer("alice", "bob", "gold", 2),
          OpRequest::hold_of("alice", "gold", 3, 60'000'000'000),
          OpRequest::commit(42, 1),
          OpRequest::release(43),
          OpRequest::commit_key("hold-key-1"),
          OpRequest::release_key("hold-key-2")};
}

std::vector<Request> request_seeds() {
  std::vector<Request> seeds;
  Request hello;
  hello.id = 1;
  hello.token = "secret-token";
  seeds.push_back(hello);
  std::uint64_t id = 2;
  for (const OpRequest& op : every_op()) {
    Request single;
    single.id = id++;
    single.kind = Request::Kind::mutation;
    single.command.key = "key-" + std::to_string(single.id);
    single.command.meta = Metadata{"restock", "po-17", "ops@example"};
    single.command.op = op;
    seeds.push_back(single);
  }
  Request batch;
  batch.id = id++;
  batch.kind = Request::Kind::mutation;
  batch.command.key = "batch-key";
  batch.command.batch = true;
  batch.command.ops = every_op();
  seeds.push_back(batch);
  for (const std::optional<AsOf>& at :
       {std::optional<AsOf>(), std::optional<AsOf>(AsOf::at_seq(7)),
        std::optional<AsOf>(AsOf::at_time(1'700'000'000'000'000'000))}) {
    Request balance;
    balance.id = id++;
    balance.kind = Request::Kind::balance;
    balance.subject = "alice";
    balance.item = "gold";
    balance.as_of = at;
    seeds.push_back(balance);
    Request list = balance;
    list.kind = Request::Kind::list;
    list.item.clear();
    seeds.push_back(list);
  }
  Request hold_info;
  hold_info.id = id++;
  hold_info.kind = Request::Kind::hold_info;
  hold_info.hold = (std::uint64_t{2} << 48) | 77;
  seeds.push_back(hold_info);
  hold_info.id = id++;
  hold_info.as_of = AsOf::at_seq(5);  // as of a point, where the server reads one
  seeds.push_back(hold_info);
  Request follow;
  follow.id = id++;
  follow.kind = Request::Kind::follow;
  follow.from_seq = 12;
  follow.max_events = 100;
  seeds.push_back(follow);
  Request cancel;
  cancel.id = id++;
  cancel.kind = Request::Kind::cancel;
  cancel.follow_id = follow.id;
  seeds.push_back(cancel);
  return seeds;
}

// Two events as logged, for the events response.
std::vector<Bytes> event_payloads() {
  log::EventEncoder encoder;
  std::vector<Bytes> out;
  log::Op acquire;
  acquire.subject = "alice";
  acquire.item = "gold";
  acquire.qty = 5;
  log::Event event;
  event.seq = 9;
  event.timestamp_ns = 1'700'000'000'000'000'000;
  event.key = "k9";
  event.ops = std::span<const log::Op>(&acquire, 1);
  auto bytes = encoder.encode(event);
  out.emplace_back(bytes.begin(), bytes.end());
  log::Op hold = acquire;
  hold.type = log::OpType::hold;
  hold.ttl_ns = 1'000'000;
  const log::Op ops[] = {acquire, hold};
  event.seq = 10;
  event.batch = true;
  event.ops = ops;
  bytes = encoder.encode(event);
  out.emplace_back(bytes.begin(), bytes.end());
  return out;
}

std::vector<Response> response_seeds() {
  std::vector<Response> seeds;
  Response error;
  error.id = 1;
  error.kind = Response::Kind::error;
  error.error = Status(ErrorCode::invalid, "qty must be > 0");
  seeds.push_back(error);
  Response unauthorized = error;
  unauthorized.unauthorized = true;
  seeds.push_back(unauthorized);
  Response receipt;
  receipt.id = 2;
  receipt.kind = Response::Kind::receipt;
  receipt.receipt = Receipt{Outcome::ok, true, 17, 1'700'000'000, 17, 0, {17, (1ull << 48) | 17}};
  seeds.push_back(receipt);
  Response balance;
  balance.id = 3;
  balance.kind = Response::Kind::balance;
  balance.balance = Balance{100, 5};
  seeds.push_back(balance);
  Response list;
  list.id = 4;
  list.kind = Response::Kind::list;
  list.items = {ItemBalance{"gold", Balance{1, 2}}, ItemBalance{"silver", Balance{3, 0}}};
  seeds.push_back(list);
  Response hold;
  hold.id = 5;
  hold.kind = Response::Kind::hold_info;
  hold.hold = HoldView{77, "alice", "gold", 3, 1'700'000'000, HoldStatus::committed, 2};
  seeds.push_back(hold);
  Response hello;
  hello.id = 6;
  seeds.push_back(hello);
  Response events;
  events.id = 7;
  events.kind = Response::Kind::events;
  for (const Bytes& payload : event_payloads()) events.events.append(payload);
  events.next_seq = 11;
  seeds.push_back(events);
  Response end;
  end.id = 7;
  end.kind = Response::Kind::events;
  end.next_seq = 11;
  end.end = true;
  seeds.push_back(end);
  return seeds;
}

std::vector<Bytes> frame_seeds() {
  std::vector<Bytes> out;
  for (const Request& request : request_seeds()) {
    out.push_back(to_bytes(wire::encode_request(request)));
  }
  for (const Response& response : response_seeds()) {
    out.push_back(to_bytes(wire::encode_response(response)));
  }
  return out;
}

// ---- equality, for the round trips ---------------------------------------------

bool same_op(const OpRequest& a, const OpRequest& b) {
  return a.type == b.type && a.subject == b.subject && a.item == b.item && a.to == b.to &&
         a.qty == b.qty && a.ttl_ns == b.ttl_ns && a.hold == b.hold && a.hold_key == b.hold_key;
}

bool same_command(const Command& a, const Command& b) {
  if (a.key != b.key || a.meta.reason != b.meta.reason || a.meta.reference != b.meta.reference ||
      a.meta.actor != b.meta.actor || a.batch != b.batch) {
    return false;
  }
  if (!a.batch) return same_op(a.op, b.op);
  return std::equal(a.ops.begin(), a.ops.end(), b.ops.begin(), b.ops.end(), same_op);
}

bool same_as_of(const std::optional<AsOf>& a, const std::optional<AsOf>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->kind == b->kind && a->seq == b->seq && a->time_ns == b->time_ns;
}

bool same_request(const Request& a, const Request& b) {
  return a.id == b.id && a.kind == b.kind && a.version == b.version && a.token == b.token &&
         same_command(a.command, b.command) && a.subject == b.subject && a.item == b.item &&
         same_as_of(a.as_of, b.as_of) && a.hold == b.hold && a.from_seq == b.from_seq &&
         a.max_events == b.max_events && a.follow_id == b.follow_id &&
         a.refused.code() == b.refused.code();
}

bool same_events(const wire::EventPayloads& a, const wire::EventPayloads& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t index = 0; index < a.size(); index++) {
    if (!std::ranges::equal(a[index], b[index])) return false;
  }
  return true;
}

bool same_response(const Response& a, const Response& b) {
  // Unauthorized carries its message behind a prefix the decoder adds.
  const bool same_error = a.error.code() == b.error.code() &&
                          (a.unauthorized || a.error.message() == b.error.message());
  const Receipt& x = a.receipt;
  const Receipt& y = b.receipt;
  const bool same_receipt = x.outcome == y.outcome && x.replay == y.replay && x.seq == y.seq &&
                            x.timestamp_ns == y.timestamp_ns && x.hold == y.hold &&
                            x.failed_index == y.failed_index && x.holds == y.holds;
  const bool same_items = std::equal(
      a.items.begin(), a.items.end(), b.items.begin(), b.items.end(),
      [](const ItemBalance& p, const ItemBalance& q) {
        return p.item == q.item && p.balance == q.balance;
      });
  const HoldView& h = a.hold;
  const HoldView& k = b.hold;
  const bool same_hold = h.id == k.id && h.subject == k.subject && h.item == k.item &&
                         h.qty == k.qty && h.expires_at_ns == k.expires_at_ns &&
                         h.status == k.status && h.committed_qty == k.committed_qty;
  return a.id == b.id && a.kind == b.kind && same_error && a.unauthorized == b.unauthorized &&
         same_receipt && a.balance == b.balance && same_items && same_hold &&
         same_events(a.events, b.events) && a.next_seq == b.next_seq && a.end == b.end;
}

// ---- checks ----------------------------------------------------------------------

// A decoded message, encoded again, decodes to the same message.
template <class Message, class Encode, class Decode, class Same>
void check_round_trip(Context& context, const Bytes& input, std::string_view what,
                      const Message& decoded, const Encode& encode, const Decode& decode,
                      const Same& same) {
  const auto words = to_words(to_bytes(encode(decoded)));
  auto redecoded = decode(words);
  if (!redecoded) {
    fail(context, std::string(what) + " re-encoded does not decode: " +
                      redecoded.status().to_string(), input);
  }
  if (!same(decoded, *redecoded)) fail(context, std::string(what) + " round trip differs", input);
}

void check_request(Context& context, const Bytes& input, wire::FrameView frame) {
  auto decoded = wire::decode_request(frame);
  if (!decoded) {
    if (decoded.code() != ErrorCode::invalid) fail(context, "request: not invalid", input);
    return;
  }
  if (!decoded->refused.ok()) {
    if (decoded->refused.code() != ErrorCode::invalid) fail(context, "refused: not invalid", input);
    return;  // the rest is unset by contract
  }
  check_round_trip(context, input, "request", *decoded, wire::encode_request,
                   wire::decode_request, same_request);
}

void check_response(Context& context, const Bytes& input, wire::FrameView frame) {
  auto decoded = wire::decode_response(frame);
  if (!decoded) {
    if (decoded.code() != ErrorCode::invalid) fail(context, "response: not invalid", input);
    return;
  }
  if (decoded->kind == Response::Kind::error && decoded->error.ok()) {
    fail(context, "an error response decoded to an ok Status", input);
  }
  // A client hands the follow's events to log::EventDecoder.
  log::EventDecoder decoder;
  for (std::size_t index = 0; index < decoded->events.size(); index++) {
    log::Event event;
    const Status status = decoder.decode(decoded->events[index], &event);
    if (!status.ok() && status.code() != ErrorCode::corrupt) {
      fail(context, "event: not corrupt", input);
    }
  }
  check_round_trip(context, input, "response", *decoded, wire::encode_response,
                   wire::decode_response, same_response);
}

// ---- framing ---------------------------------------------------------------------

// Feeds `stream` to a FrameReader in reads of random sizes, as a socket
// would, decoding each frame it yields. The reader must account for every
// byte and stop at the first malformed frame.
void read_stream(Context& context, const Bytes& stream, std::size_t frame_bytes_max, Rng& rng) {
  wire::FrameReader reader(frame_bytes_max, rng.one_in(2) ? 1024 : 16 * 1024);
  std::size_t fed = 0;
  std::size_t taken = 0;
  // Each pass feeds at least one byte or takes a frame: a bound, not a guess.
  for (std::size_t pass = 0; pass < 2 * stream.size() + 8; pass++) {
    auto frame = reader.next();
    if (!frame) {
      if (frame.code() != ErrorCode::invalid) fail(context, "framing: not invalid", stream);
      return;
    }
    if (!frame->empty()) {
      const std::size_t bytes = frame->size() * sizeof(std::uint64_t);
      if (bytes > frame_bytes_max) fail(context, "framing: a frame over the limit", stream);
      taken += bytes;
      ignore_status(wire::decode_request(*frame).status());
      ignore_status(wire::decode_response(*frame).status());
      continue;
    }
    if (fed == stream.size()) break;
    const std::span<std::byte> space = reader.space();
    if (space.empty()) fail(context, "framing: space() is empty", stream);
    const std::size_t want = 1 + rng.below(rng.one_in(4) ? 4096 : 64);
    const std::size_t bytes = std::min({want, space.size(), stream.size() - fed});
    std::memcpy(space.data(), stream.data() + fed, bytes);
    reader.commit(bytes);
    fed += bytes;
  }
  if (taken + reader.buffered_bytes() != fed) fail(context, "framing: bytes lost", stream);
}

// table_bytes and frame_bytes on their own, on the stream's first bytes.
void check_table(Context& context, const Bytes& stream) {
  if (stream.size() < wire::kFirstBytes) return;
  auto table = wire::table_bytes(stream);
  if (!table) return;
  if (*table < wire::kFirstBytes || *table % 8 != 0) fail(context, "table_bytes: bad size", stream);
  if (stream.size() < *table) return;
  auto total = wire::frame_bytes(std::span(stream).first(*table), wire::kFrameBytesMaxDefault);
  if (total && (*total < *table || *total % 8 != 0)) fail(context, "frame_bytes: bad size", stream);
}

}  // namespace

void fuzz_wire(Context& context) {
  const std::vector<Bytes> seeds = frame_seeds();
  Rng rng(context.seed ^ 0x5173);
  for (const Bytes& seed : seeds) {
    check_request(context, seed, to_words(seed));
    check_response(context, seed, to_words(seed));
  }
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    const Bytes& seed = seeds[rng.below(seeds.size())];
    const Bytes& other = seeds[rng.below(seeds.size())];
    const Bytes input = mutate(seed, other, rng);
    const auto words = to_words(input);
    check_request(context, input, words);
    check_response(context, input, words);
  }
}

void fuzz_framing(Context& context) {
  const std::vector<Bytes> seeds = frame_seeds();
  Rng rng(context.seed ^ 0xf4a3e);
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    Bytes stream;
    const std::size_t frames = 1 + rng.below(6);
    for (std::size_t index = 0; index < frames; index++) {
      const Bytes& seed = seeds[rng.below(seeds.size())];
      stream.insert(stream.end(), seed.begin(), seed.end());
    }
    const Bytes input = mutate(stream, seeds[rng.below(seeds.size())], rng);
    check_table(context, input);
    // A small limit now and then, so frames over it are common.
    const std::size_t limit = rng.one_in(4) ? 64 + 8 * rng.below(64) : wire::kFrameBytesMaxDefault;
    read_stream(context, input, limit, rng);
  }
}

}  // namespace tally::fuzz
