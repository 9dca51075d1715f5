// Event: the C++ view of one fact of log/events.capnp, and its codec.
//
// The engine builds Events and encodes them into the log; replay decodes them
// back and hands the same struct to the projections, so the live path and
// replay share one apply function. Strings are views: into the caller's
// command while encoding, into the record's payload after decoding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "log/status.h"

namespace tally::log {

enum class OpType : std::uint8_t {
  acquire,
  consume,
  transfer,
  hold,
  commit,
  release,
  expire,  // system events only; never inside a batch or a request
};
std::string_view op_type_name(OpType type);

// Reasons a keyed request was rejected by the state of the ledger. These are
// durable outcomes, written to the log.
enum class Reason : std::uint8_t {
  none,  // applied
  insufficient,
  overflow,
  hold_unknown,
  hold_expired,
  hold_finalized,
};
std::string_view reason_name(Reason reason);

// One operation. Fields unused by `type` are zero or empty.
//   acquire, consume: subject, item, qty
//   transfer:         subject (the source), to, item, qty
//   hold:             subject, item, qty, ttl_ns
//   commit:           hold, qty (committed), released; subject, item resolved
//   release, expire:  hold, qty (returned to available); subject, item resolved
// A commit or release may name its hold by the key of the request that
// created it (hold_key); applied events carry the resolved hold as well.
// In a rejected request, commit/release carry only hold or hold_key, and
// qty (0 = whole).
struct Op {
  OpType type = OpType::acquire;
  std::string_view subject;
  std::string_view item;
  std::string_view to;
  std::int64_t qty = 0;
  std::int64_t ttl_ns = 0;
  std::uint64_t hold = 0;
  std::int64_t released = 0;
  std::string_view hold_key;
};

struct Meta {
  std::string_view reason;
  std::string_view reference;
  std::string_view actor;
};

// One record of the log.
//   - applied single op: batch == false, rejected == none, ops.size() == 1
//   - applied batch:     batch == true, rejected == none
//   - rejected request:  rejected != none; batch tells the request's shape,
//                        failed_index the failing op of a batch
struct Event {
  std::uint64_t seq = 0;
  std::int64_t timestamp_ns = 0;
  std::string_view key;
  std::uint64_t fingerprint = 0;
  Meta meta;
  bool batch = false;
  Reason rejected = Reason::none;
  std::uint32_t failed_index = 0;
  std::span<const Op> ops;
};

// HoldId: the seq of the event that created the hold. A hold inside a batch
// shares its event with the batch's other ops, so its id also names its op:
// (op_index + 1) << 48 | seq. Standalone holds are their seq exactly.
inline constexpr int kHoldIndexShift = 48;
inline constexpr std::uint64_t kHoldSeqMask = (std::uint64_t{1} << kHoldIndexShift) - 1;
constexpr std::uint64_t hold_id(std::uint64_t seq, bool in_batch, std::size_t op_index) {
  return in_batch ? (static_cast<std::uint64_t>(op_index + 1) << kHoldIndexShift) | seq : seq;
}
constexpr std::uint64_t hold_id_seq(std::uint64_t id) { return id & kHoldSeqMask; }

// Limits on what a decoder accepts. Events the engine writes stay far below.
inline constexpr std::size_t kBatchOpsMax = 1000;
inline constexpr std::uint64_t kDecodeTraversalWordsMax = 1u << 18;
inline constexpr int kDecodeNestingMax = 16;

// Encodes events into serialized Cap'n Proto messages, reusing its buffers.
// Not thread-safe; one per writer thread.
class EventEncoder {
 public:
  EventEncoder();
  ~EventEncoder();
  EventEncoder(const EventEncoder&) = delete;
  EventEncoder& operator=(const EventEncoder&) = delete;

  // The serialized message; valid until the next call.
  std::span<const std::byte> encode(const Event& event);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Decodes serialized messages into Events. The Event's views point into
// `payload` (which must be 8-byte aligned and outlive the use of the Event)
// and into the decoder's op buffer, valid until the next call.
// Not thread-safe; one per reading thread.
class EventDecoder {
 public:
  EventDecoder();
  ~EventDecoder();
  EventDecoder(const EventDecoder&) = delete;
  EventDecoder& operator=(const EventDecoder&) = delete;

  // corrupt when the bytes are not a valid Event within the limits above.
  // One-segment messages with plain pointers, which is what the engine
  // writes, are read in place; any other is decoded by Cap'n Proto's
  // reader, as decode_with_library() does: the two agree on every message.
  Status decode(std::span<const std::byte> payload, Event* event);
  Status decode_with_library(std::span<const std::byte> payload, Event* event);
  // How many messages Cap'n Proto's reader decoded, through either call.
  std::uint64_t library_decodes() const { return library_decodes_; }
  // Gives back the room for ops it kept from a batch of more than
  // `ops_max`; the Events it decoded before must not be used after. For a
  // caller that keeps many decoders (replay's ring of them): each would
  // otherwise keep room for the largest batch it ever decoded.
  void trim(std::size_t ops_max);

 private:
  std::vector<Op> ops_;
  std::uint64_t library_decodes_ = 0;
};

}  // namespace tally::log
