// StateDigest: builds State::digest() entry by entry, so that the digest of
// a state can be taken from its tables (State::digest) or from an image as it
// is read (State::load) with the same code. Not part of the API.
//
// Canonical encoding: every entry of the state is encoded on its own, then
// hashed:
//   u8, u32, u64: little-endian; i64: two's complement as u64;
//   str: u32 length, then the bytes.
//
//   balance (seed 1): str subject, str item, i64 available, i64 held
//       (only pairs with a non-zero stored balance exist; due holds are not
//       released: the digest is of the state as the events left it)
//   hold (seed 2):    u64 id, str subject, str item, i64 qty,
//                     i64 expires_at_ns, u8 state (0 open, 1 committed,
//                     2 released, 3 expired), i64 finalized_at_ns,
//                     i64 committed_qty        (open holds: 0, 0)
//   key (seed 3):     str key, u64 fingerprint, u64 seq, i64 timestamp_ns,
//                     u8 reason (log::Reason's value), u32 failed_index
//   long hold's key (seed 4): u64 hold id, str key   (LongHoldKeys)
//
// A table's digest is the sum mod 2^64 of XXH3_64bits_withSeed(entry, seed)
// over its entries: independent of order and layout. The state's digest is
// XXH3_64bits (seed 0) of
//   u32 kDigestFormat,
//   u64 balance count, u64 balance sum, u64 hold count, u64 hold sum,
//   u64 key count, u64 key sum, u64 long hold key count, u64 long hold key
//   sum, u64 last_seq, i64 last_timestamp_ns.
// The idempotency window itself is configuration, not state.
#pragma once

#include <cstdint>
#include <string_view>

#include "projections/hold_table.h"
#include "projections/state.h"

namespace tally::proj {

class StateDigest {
 public:
  void balance(std::string_view subject, std::string_view item, std::int64_t available,
               std::int64_t held);
  // hold.subject and hold.item are ids; `subject` and `item` are their names.
  void hold(const HoldRecord& hold, std::string_view subject, std::string_view item);
  void key(std::string_view key, const KeyRecord& record);
  void long_hold_key(HoldId id, std::string_view key);
  // Adds the entries another digest took (of another part of one state).
  void add(const StateDigest& other);
  std::uint64_t finish(std::uint64_t last_seq, std::int64_t last_timestamp_ns) const;

 private:
  struct TableSum {
    std::uint64_t count = 0;
    std::uint64_t sum = 0;
  };
  TableSum balances_;
  TableSum holds_;
  TableSum keys_;
  TableSum long_hold_keys_;
};

}  // namespace tally::proj
