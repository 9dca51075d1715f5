// The event codec: every shape of event round-trips, and bytes that are not
// an event are refused as corrupt without crashing.
#include <doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "log/event.h"
#include "log/format.h"
#include "log/reader.h"

namespace tally::log {
namespace {

// Encodes, copies into 8-byte aligned storage (as the log's buffers are) and
// decodes. The decoded Event points into this object.
class RoundTrip {
 public:
  Status run(const Event& in, Event* out) {
    const std::span<const std::byte> bytes = encoder_.encode(in);
    REQUIRE(bytes.size() % 8 == 0);
    words_.assign(bytes.size() / 8, 0);
    std::memcpy(words_.data(), bytes.data(), bytes.size());
    return decoder_.decode(this->bytes(), out);
  }
  std::span<const std::byte> bytes() const { return std::as_bytes(std::span(words_)); }
  EventDecoder& decoder() { return decoder_; }

 private:
  EventEncoder encoder_;
  EventDecoder decoder_;
  std::vector<std::uint64_t> words_;
};

void check_same_op(const Op& want, const Op& got) {
  CHECK(want.type == got.type);
  CHECK(want.subject == got.subject);
  CHECK(want.item == got.item);
  CHECK(want.to == got.to);
  CHECK(want.qty == got.qty);
  CHECK(want.ttl_ns == got.ttl_ns);
  CHECK(want.hold == got.hold);
  CHECK(want.released == got.released);
}

void check_round_trip(const Event& want) {
  RoundTrip trip;
  Event got;
  const Status status = trip.run(want, &got);
  REQUIRE_MESSAGE(status.ok(), status.to_string());
  CHECK(got.seq == want.seq);
  CHECK(got.timestamp_ns == want.timestamp_ns);
  CHECK(got.key == want.key);
  CHECK(got.fingerprint == want.fingerprint);
  CHECK(got.meta.reason == want.meta.reason);
  CHECK(got.meta.reference == want.meta.reference);
  CHECK(got.meta.actor == want.meta.actor);
  CHECK(got.batch == want.batch);
  CHECK(got.rejected == want.rejected);
  CHECK(got.failed_index == want.failed_index);
  REQUIRE(got.ops.size() == want.ops.size());
  for (std::size_t op_index = 0; op_index < want.ops.size(); op_index++) {
    check_same_op(want.ops[op_index], got.ops[op_index]);
  }
}

Event event_of(std::span<const Op> ops) {
  Event event;
  event.seq = 77;
  event.timestamp_ns = 1'700'000'000'123'456'789;
  event.key = "order-1";
  event.fingerprint = 0xfeedfacecafebeefull;
  event.ops = ops;
  return event;
}

Op amount(OpType type, std::int64_t qty) {
  Op op;
  op.type = type;
  op.subject = "alice";
  op.item = "gold";
  op.qty = qty;
  return op;
}

Op transfer_op() {
  Op op = amount(OpType::transfer, 25);
  op.to = "bob";
  return op;
}

Op hold_op() {
  Op op = amount(OpType::hold, 10);
  op.ttl_ns = 30'000'000'000;
  return op;
}

Op settle(OpType type, std::uint64_t hold, std::int64_t qty, std::int64_t released) {
  Op op = amount(type, qty);
  op.hold = hold;
  op.released = released;
  return op;
}

TEST_CASE("every single-op event round-trips") {
  const std::vector<Op> ops = {
      amount(OpType::acquire, 100),
      amount(OpType::consume, 40),
      transfer_op(),
      hold_op(),
      settle(OpType::commit, 12, 6, 4),
      settle(OpType::release, 13, 10, 0),
      settle(OpType::expire, 14, 10, 0),
  };
  for (const Op& op : ops) {
    INFO(op_type_name(op.type));
    Event event = event_of(std::span(&op, 1));
    if (op.type == OpType::expire) event.key = "";  // a system event
    check_round_trip(event);
  }
}

TEST_CASE("a record whose event is not its frame's seq is corrupt where it lies") {
  const Op op = amount(OpType::acquire, 100);
  const Event event = event_of(std::span(&op, 1));
  RoundTrip trip;
  Event decoded;
  REQUIRE(trip.run(event, &decoded).ok());
  Record record;
  record.payload = trip.bytes();
  record.segment_first_seq = 1;
  record.offset = 64;
  record.seq = event.seq;
  CHECK(decode_record(trip.decoder(), record, &decoded).ok());
  // The frame of another seq carrying it: a copy of the whole frame.
  record.seq = event.seq + 1;
  const Status status = decode_record(trip.decoder(), record, &decoded);
  CHECK(status.code() == ErrorCode::corrupt);
  CHECK(status.message() ==
        "segment 0000000000000001.seg offset 64: event seq differs from its frame");
}

TEST_CASE("a batch round-trips with every op type a request may carry") {
  const std::vector<Op> ops = {
      amount(OpType::acquire, 100), amount(OpType::consume, 1), transfer_op(),
      hold_op(), settle(OpType::commit, hold_id(5, true, 3), 6, 4),
      settle(OpType::release, 9, 10, 0),
  };
  Event event = event_of(ops);
  event.batch = true;
  check_round_trip(event);
}

TEST_CASE("rejected requests round-trip: single and batch, every reason") {
  for (Reason reason : {Reason::insufficient, Reason::overflow, Reason::hold_unknown,
                        Reason::hold_expired, Reason::hold_finalized}) {
    INFO(reason_name(reason));
    const Op single = amount(OpType::consume, 1'000'000);
    Event event = event_of(std::span(&single, 1));
    event.rejected = reason;
    check_round_trip(event);
  }
  // A rejected commit carries only the hold and the asked quantity.
  Op commit;
  commit.type = OpType::commit;
  commit.hold = 42;
  commit.qty = 0;
  Event rejected_commit = event_of(std::span(&commit, 1));
  rejected_commit.rejected = Reason::hold_expired;
  check_round_trip(rejected_commit);

  const std::vector<Op> ops = {amount(OpType::acquire, 1), transfer_op(), amount(OpType::consume, 9)};
  Event batch = event_of(ops);
  batch.batch = true;
  batch.rejected = Reason::insufficient;
  batch.failed_index = 2;
  check_round_trip(batch);
}

TEST_CASE("metadata and binary strings round-trip") {
  std::string subject(255, '\xff');
  subject[0] = 'x';
  Op op = amount(OpType::acquire, 1);
  op.subject = subject;
  Event event = event_of(std::span(&op, 1));
  event.meta.reason = "restock";
  event.meta.reference = "PO-2024-0001";
  event.meta.actor = "warehouse-bot";
  check_round_trip(event);
  event.meta.reference = "";  // a partial set
  check_round_trip(event);
}

TEST_CASE("names of op types and reasons") {
  CHECK(op_type_name(OpType::transfer) == "transfer");
  CHECK(op_type_name(OpType::expire) == "expire");
  CHECK(reason_name(Reason::none) == "ok");
  CHECK(reason_name(Reason::hold_finalized) == "hold_finalized");
}

TEST_CASE("truncated events are corrupt") {
  const std::vector<Op> ops = {amount(OpType::acquire, 100), transfer_op(), hold_op()};
  Event event = event_of(ops);
  event.batch = true;
  event.meta.actor = "me";
  RoundTrip trip;
  Event decoded;
  REQUIRE(trip.run(event, &decoded).ok());
  const std::span<const std::byte> whole = trip.bytes();
  for (std::size_t length = 0; length < whole.size(); length++) {
    INFO("length " << length);
    CHECK(trip.decoder().decode(whole.first(length), &decoded).code() == ErrorCode::corrupt);
  }
}

TEST_CASE("garbage never crashes the decoder") {
  std::mt19937_64 random(12345);
  EventDecoder decoder;
  Event decoded;
  std::vector<std::uint64_t> words(64);
  const auto bytes = std::as_bytes(std::span(words));
  // All ones: a segment table claiming billions of words.
  std::fill(words.begin(), words.end(), ~0ull);
  CHECK(decoder.decode(bytes, &decoded).code() == ErrorCode::corrupt);
  // Not word-aligned, in length or in address.
  CHECK(decoder.decode(bytes.first(13), &decoded).code() == ErrorCode::corrupt);
  CHECK(decoder.decode(bytes.subspan(4, 16), &decoded).code() == ErrorCode::corrupt);
  for (int round = 0; round < 2000; round++) {
    const std::size_t count = 1 + random() % words.size();
    for (std::size_t index = 0; index < count; index++) words[index] = random();
    // Often a plausible segment table, so the pointers get exercised.
    if (round % 2 == 0) words[0] = (count - 1) << 32;
    const Status status = decoder.decode(bytes.first(count * 8), &decoded);
    CHECK((status.ok() || status.code() == ErrorCode::corrupt));
  }
}

TEST_CASE("a valid event with corrupted bytes decodes or is refused, never crashes") {
  const std::vector<Op> ops = {amount(OpType::acquire, 100), transfer_op(), hold_op(),
                               settle(OpType::commit, 3, 1, 0)};
  Event event = event_of(ops);
  event.batch = true;
  event.meta.reason = "why";
  RoundTrip trip;
  Event decoded;
  REQUIRE(trip.run(event, &decoded).ok());
  std::vector<std::uint64_t> words(trip.bytes().size() / 8);
  const auto bytes = std::as_writable_bytes(std::span(words));
  std::mt19937_64 random(777);
  EventDecoder decoder;
  for (std::size_t at = 0; at < bytes.size(); at++) {
    std::memcpy(words.data(), trip.bytes().data(), bytes.size());
    bytes[at] = static_cast<std::byte>(random());
    const Status status = decoder.decode(bytes, &decoded);
    CHECK((status.ok() || status.code() == ErrorCode::corrupt));
  }
}

TEST_CASE("a batch over the decoder's op limit is corrupt") {
  std::vector<Op> ops(kBatchOpsMax + 1, amount(OpType::acquire, 1));
  Event event = event_of(ops);
  event.batch = true;
  RoundTrip trip;
  Event decoded;
  CHECK(trip.run(event, &decoded).code() == ErrorCode::corrupt);
  ops.resize(kBatchOpsMax);
  event.ops = ops;
  CHECK(trip.run(event, &decoded).ok());
  CHECK(decoded.ops.size() == kBatchOpsMax);
}

// decode() reads one-segment messages in place and leaves the rest to
// Cap'n Proto's reader: on any bytes at all, it must answer as that reader
// does, status and event alike.
bool same_decoding(std::span<const std::byte> bytes, EventDecoder& in_place) {
  EventDecoder library;
  Event want;
  Event got;
  const Status wanted = library.decode_with_library(bytes, &want);
  const Status status = in_place.decode(bytes, &got);
  if (wanted.code() != status.code() || wanted.message() != status.message()) return false;
  const auto same_op = [](const Op& a, const Op& b) {
    return a.type == b.type && a.subject == b.subject && a.item == b.item && a.to == b.to &&
           a.qty == b.qty && a.ttl_ns == b.ttl_ns && a.hold == b.hold &&
           a.released == b.released && a.hold_key == b.hold_key;
  };
  return want.seq == got.seq && want.timestamp_ns == got.timestamp_ns && want.key == got.key &&
         want.fingerprint == got.fingerprint && want.meta.reason == got.meta.reason &&
         want.meta.reference == got.meta.reference && want.meta.actor == got.meta.actor &&
         want.batch == got.batch && want.rejected == got.rejected &&
         want.failed_index == got.failed_index &&
         std::equal(want.ops.begin(), want.ops.end(), got.ops.begin(), got.ops.end(), same_op);
}

TEST_CASE("the in-place reader reads what the engine writes as Cap'n Proto's reader does") {
  Op commit = settle(OpType::commit, 3, 4, 6);
  commit.hold_key = "hold-key";
  const std::vector<Op> singles = {amount(OpType::acquire, 100), amount(OpType::consume, 1),
                                   transfer_op(), hold_op(), commit,
                                   settle(OpType::release, 9, 10, 0)};
  std::vector<Event> events;
  for (const Op& op : singles) events.push_back(event_of(std::span(&op, 1)));
  const Op expire = settle(OpType::expire, 5, 10, 0);
  events.push_back(event_of(std::span(&expire, 1)));
  events.back().key = "";
  events.push_back(event_of(singles));
  events.back().batch = true;
  events.back().meta = Meta{"why", "ref\0erence", "actor"};
  events.push_back(event_of(singles));
  events.back().rejected = Reason::insufficient;
  events.back().batch = true;
  events.back().failed_index = 4;
  events.push_back(event_of(std::span(&singles[1], 1)));
  events.back().rejected = Reason::hold_finalized;
  RoundTrip trip;
  Event decoded;
  for (const Event& event : events) {
    REQUIRE(trip.run(event, &decoded).ok());
    EventDecoder in_place;
    CHECK(same_decoding(trip.bytes(), in_place));
    CHECK(in_place.library_decodes() == 0);
  }
  // A batch too large for the encoder's first segment: two segments, which
  // the library reads.
  std::vector<Op> large(kBatchOpsMax, amount(OpType::acquire, 1));
  const std::string name(200, 'n');
  for (Op& op : large) op.subject = name;
  Event batch = event_of(large);
  batch.batch = true;
  REQUIRE(trip.run(batch, &decoded).ok());
  REQUIRE(load_u64(trip.bytes().data()) % (std::uint64_t{1} << 32) != 0);  // segments - 1
  EventDecoder in_place;
  CHECK(same_decoding(trip.bytes(), in_place));
  CHECK(in_place.library_decodes() == 1);
  CHECK(decoded.ops.size() == kBatchOpsMax);
}

TEST_CASE("the in-place reader answers as Cap'n Proto's reader on every damaged byte") {
  Op commit = settle(OpType::commit, 3, 4, 6);
  commit.hold_key = "k";
  const std::vector<Op> ops = {amount(OpType::acquire, 100), transfer_op(), hold_op(), commit};
  Event batch = event_of(ops);
  batch.batch = true;
  batch.meta.actor = "who";
  Event rejected = event_of(ops);
  rejected.rejected = Reason::hold_unknown;
  rejected.batch = true;
  rejected.failed_index = 3;
  EventDecoder in_place;
  std::uint64_t disagreements = 0;
  std::uint64_t flips = 0;
  for (const Event& event : {batch, rejected, event_of(std::span(&ops[1], 1))}) {
    RoundTrip trip;
    Event decoded;
    REQUIRE(trip.run(event, &decoded).ok());
    std::vector<std::uint64_t> words(trip.bytes().size() / 8);
    const auto bytes = std::as_writable_bytes(std::span(words));
    for (std::size_t bit = 0; bit < bytes.size() * 8; bit++) {
      std::memcpy(words.data(), trip.bytes().data(), bytes.size());
      bytes[bit / 8] ^= static_cast<std::byte>(1u << (bit % 8));
      if (!same_decoding(bytes, in_place)) disagreements++;
      flips++;
    }
  }
  CHECK(disagreements == 0);
  // A flip outside the pointers leaves a message the in-place reader reads
  // itself: more than half of them here.
  CHECK(in_place.library_decodes() * 2 < flips);
  // Random words under a plausible segment table.
  std::mt19937_64 random(4242);
  std::vector<std::uint64_t> words(32);
  for (int round = 0; round < 20000; round++) {
    const std::size_t count = 2 + random() % (words.size() - 1);
    for (std::size_t index = 0; index < count; index++) {
      // Small values, so that pointers often land inside the segment.
      words[index] = round % 2 == 0 ? random() : random() & 0x000f0003000000fdull;
    }
    words[0] = (count - 1) << 32;
    if (!same_decoding(std::as_bytes(std::span(words)).first(count * 8), in_place)) {
      disagreements++;
    }
  }
  CHECK(disagreements == 0);
}

}  // namespace
}  // namespace tally::log
