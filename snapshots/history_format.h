// The history projection's on-disk format: named databases, keys and
// records of the point-in-time index (snapshots/history.h).
//
// LMDB environment DATA/history/ (data.mdb, lock.mdb), four databases.
// Keys are big-endian where they hold numbers, so that LMDB's bytewise
// order is numeric order; every value is little-endian.
//
//   "meta"    key: "position" (8 ASCII bytes)
//             value: the position record below, 48 bytes
//   "pairs"   key: subject, one 0x00 byte, item (3..511 bytes). Names are
//             1..255 bytes without NUL, so bytewise key order is the order
//             by subject, then item, and a subject's pairs are the keys
//             that start with "subject\0".
//             value: u64 pair id (1, 2, ... in the order pairs first change)
//   "entries" key: u64 pair id big-endian, u64 seq big-endian (16 bytes),
//             so a pair's entries are adjacent and in seq order
//             value: the entry record below, 46..301 bytes
//   "times"   key: u64 big-endian of the timestamp_ns bits XOR 2^63 (a
//             biased i64: bytewise order is numeric order, negative
//             timestamps included)
//             value: u64 seq, the last indexed seq stamped with that time
//
// One entry per (pair, event) that changed the pair: an event whose ops on
// a pair sum to zero (acquire 5, consume 5 in one batch) writes none there.
// Every indexed event, rejected ones too, stamps "times". The index is
// always whole at its position: everything appended up to position.seq and
// nothing after, written with the position record in one transaction.
//
// Position record, little-endian:
//   u32 kPositionMagic, u32 kFormatVersion,
//   u64 seq (the last event indexed; 0 when empty),
//   u64 chain_checksum (the log's chain value after seq),
//   i64 time_ns (the timestamp of the event at seq),
//   u64 pair_count (pair ids 1..pair_count are assigned),
//   u64 XXH3-64 (seed 0) of the 40 bytes before it.
//
// Entry record, little-endian:
//   i64 time_ns (the event's timestamp),
//   i64 delta_available, i64 delta_held (the event's change to the pair),
//   i64 available, i64 held (the pair's balance after the event),
//   u8 op code (below), u8 key length, the event's idempotency key
//   (0..255 bytes; empty for an expire event),
//   u32 check: the low 32 bits of XXH3-64 (seed 0) over the 16 key bytes
//   followed by the record bytes before the check. Covering the key means
//   an entry copied under another pair or seq does not verify either.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tally::snap::history {

inline constexpr const char* kMetaDbName = "meta";
inline constexpr const char* kPairsDbName = "pairs";
inline constexpr const char* kEntriesDbName = "entries";
inline constexpr const char* kTimesDbName = "times";
inline constexpr unsigned kDbCount = 4;

inline constexpr char kPositionKey[] = "position";
inline constexpr std::size_t kPositionKeyBytes = sizeof(kPositionKey) - 1;
inline constexpr std::uint32_t kPositionMagic = 0x53494854;  // "THIS" read as LE bytes
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::size_t kPositionBytes = 48;
inline constexpr std::size_t kPositionCheckedBytes = kPositionBytes - 8;

inline constexpr std::size_t kNameBytesMax = 255;  // subjects, items and keys (DESIGN.md §1)
inline constexpr std::size_t kPairKeyBytesMin = 1 + 1 + 1;
inline constexpr std::size_t kPairKeyBytesMax = kNameBytesMax + 1 + kNameBytesMax;
inline constexpr std::size_t kPairIdBytes = 8;
// LMDB's default key size limit (mdb_env_get_maxkeysize, MDB_MAXKEYSIZE).
// The store checks the library it runs with at open.
inline constexpr std::size_t kLmdbKeyBytesMax = 511;

inline constexpr std::size_t kEntryKeyBytes = 16;
inline constexpr std::size_t kEntryFixedBytes = 8 * 5 + 1 + 1;  // before the key
inline constexpr std::size_t kEntryCheckBytes = 4;
inline constexpr std::size_t kEntryBytesMin = kEntryFixedBytes + kEntryCheckBytes;
inline constexpr std::size_t kEntryBytesMax = kEntryBytesMin + kNameBytesMax;

inline constexpr std::size_t kTimeKeyBytes = 8;
inline constexpr std::size_t kSeqBytes = 8;
inline constexpr std::uint64_t kTimeBias = std::uint64_t{1} << 63;

// The op of an entry's event. 0 and 9..255 are never written.
enum class OpCode : std::uint8_t {
  acquire = 1,
  consume = 2,
  transfer = 3,
  hold = 4,
  commit = 5,
  release = 6,
  expire = 7,
  batch = 8,
};
inline constexpr std::uint8_t kOpCodeMin = 1;
inline constexpr std::uint8_t kOpCodeMax = 8;

static_assert(kPositionBytes == 4 + 4 + 8 + 8 + 8 + 8 + 8);
static_assert(kPositionKeyBytes == 8);
static_assert(kPairKeyBytesMax <= kLmdbKeyBytesMax);
static_assert(kEntryKeyBytes == kPairIdBytes + kSeqBytes);
static_assert(kNameBytesMax <= UINT8_MAX);  // a key's length fits its u8
static_assert(kEntryBytesMin == 46);
static_assert(kEntryBytesMax == 301);

}  // namespace tally::snap::history
