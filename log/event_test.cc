// The event codec: every shape of event round-trips, and bytes that are not
// an event are refused as corrupt without crashing.
#include <doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <sys/mman.h>

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
      // Every pointer kind and list encoding among them.
      words[index] = round % 2 == 0 ? random() : random() & 0x000f0007000000ffull;
    }
    words[0] = (count - 1) << 32;
    if (!same_decoding(std::as_bytes(std::span(words)).first(count * 8), in_place)) {
      disagreements++;
    }
  }
  CHECK(disagreements == 0);
}

// Pointers of a hand-built segment, from the word at `at` to the one at
// `target`.
std::uint64_t offset_bits(std::size_t at, std::size_t target) {
  const auto offset = static_cast<std::int64_t>(target) - static_cast<std::int64_t>(at) - 1;
  return static_cast<std::uint32_t>(offset * 4);
}
std::uint64_t struct_pointer(std::size_t at, std::size_t target, std::uint64_t data_words,
                             std::uint64_t pointers) {
  return offset_bits(at, target) | data_words << 32 | pointers << 48;
}
std::uint64_t list_pointer(std::size_t at, std::size_t target, std::uint64_t size_code,
                           std::uint64_t count) {
  return offset_bits(at, target) | 1 | size_code << 32 | count << 35;
}
bool same_decoding_of(const std::vector<std::uint64_t>& message, EventDecoder& in_place) {
  return same_decoding(std::as_bytes(std::span(message)), in_place);
}

// The message of one segment.
std::vector<std::uint64_t> message_of(const std::vector<std::uint64_t>& segment) {
  std::vector<std::uint64_t> message{std::uint64_t{segment.size()} << 32};
  message.insert(message.end(), segment.begin(), segment.end());
  return message;
}

// An acquire whose key, meta fields, subject and item all point at one blob
// of `blob_words`, so that the words read add up to more than the message
// holds; the Event has `data_words` data words.
std::vector<std::uint64_t> aliased_blobs(std::size_t data_words, std::size_t blob_words) {
  const std::size_t pointers = 1 + data_words;
  const std::size_t meta = pointers + 3;
  const std::size_t amount = meta + 3;
  const std::size_t blob = amount + 3;
  std::vector<std::uint64_t> segment(blob + blob_words, 0x4141414141414141ull);
  segment[0] = struct_pointer(0, 1, data_words, 3);
  std::fill(segment.begin() + 1, segment.begin() + pointers, 0);
  segment[1] = 5;  // seq; the body's tag 0 is acquire
  const auto blob_at = [&](std::size_t at) { return list_pointer(at, blob, 2, blob_words * 8); };
  segment[pointers] = blob_at(pointers);
  segment[pointers + 1] = struct_pointer(pointers + 1, meta, 0, 3);
  segment[pointers + 2] = struct_pointer(pointers + 2, amount, 1, 2);
  for (std::size_t index = 0; index < 3; index++) segment[meta + index] = blob_at(meta + index);
  segment[amount] = 7;  // qty
  segment[amount + 1] = blob_at(amount + 1);
  segment[amount + 2] = blob_at(amount + 2);
  return message_of(segment);
}

TEST_CASE("the in-place reader gives up wherever Cap'n Proto's limits refuse") {
  EventDecoder in_place;
  std::size_t accepted = 0;
  std::size_t refused = 0;
  // The words read: 2 for the root, then the Event, a blob, Meta, three
  // blobs, Amount and two blobs: data_words + 11 + 6 * blob_words, swept
  // across the traversal limit.
  for (std::size_t data_words = 4; data_words <= 12; data_words++) {
    for (std::size_t blob_words = 43'684; blob_words <= 43'690; blob_words++) {
      const std::size_t charged = data_words + 11 + 6 * blob_words;
      const bool near = charged + 4 >= kDecodeTraversalWordsMax &&
                        charged <= kDecodeTraversalWordsMax + 4;
      if (!near) continue;
      const std::vector<std::uint64_t> message = aliased_blobs(data_words, blob_words);
      CHECK_MESSAGE(same_decoding_of(message, in_place), charged);
      Event event;
      const auto bytes = std::as_bytes(std::span(message));
      (EventDecoder().decode_with_library(bytes, &event).ok() ? accepted : refused)++;
    }
  }
  CHECK(accepted > 0);
  CHECK(refused > 0);
  // Lists of elements of no words: the library counts each as one.
  for (const std::uint64_t count : {0, 1, 1000, 1001}) {
    std::vector<std::uint64_t> segment(9, 0);
    segment[0] = struct_pointer(0, 1, 4, 3);
    segment[4] = 7;  // batch
    segment[7] = list_pointer(7, 8, 7, 0);
    segment[8] = count << 2;  // the tag: a struct of no sections, `count` times
    CHECK(same_decoding_of(message_of(segment), in_place));
  }
  // Meta pointing at itself with no sections, or far outside; words after
  // the segment.
  std::vector<std::uint64_t> segment(8, 0);
  segment[0] = struct_pointer(0, 1, 4, 3);
  segment[6] = struct_pointer(6, 6, 0, 0);
  CHECK(same_decoding_of(message_of(segment), in_place));
  segment[6] = struct_pointer(6, 1000, 0, 0);
  std::vector<std::uint64_t> message = message_of(segment);
  CHECK(same_decoding_of(message, in_place));
  message.push_back(0xdeadbeef);
  CHECK(same_decoding_of(message, in_place));
}

TEST_CASE("the in-place reader leaves a segment of 2^29 words or more to Cap'n Proto's reader") {
  // 4 GiB of address space, of which the reader touches two pages.
  const std::size_t words = (std::size_t{1} << 29) + 2;
  void* mapped = ::mmap(nullptr, words * 8, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapped == MAP_FAILED) return;  // a system that will not reserve it
  auto* message = static_cast<std::uint64_t*>(mapped);
  message[1] = struct_pointer(0, 1, 4, 3);
  message[2] = 42;  // seq
  const auto bytes = std::span(static_cast<const std::byte*>(mapped), words * 8);
  EventDecoder in_place;
  for (const std::size_t segment_words : {words - 1, words - 2, words - 3}) {
    message[0] = std::uint64_t{segment_words} << 32;
    CHECK(same_decoding(bytes, in_place));
  }
  ::munmap(mapped, words * 8);
}

}  // namespace
}  // namespace tally::log
