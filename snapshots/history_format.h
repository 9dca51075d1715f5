// The history projection's on-disk format: named databases, keys and
// records of the point-in-time index (snapshots/history.h).
//
// LMDB environment DATA/history/ (data.mdb, lock.mdb), seven databases.
// Keys are big-endian where they hold numbers, so that LMDB's bytewise
// order is numeric order; every value is little-endian.
//
// Epochs. The entries are cut into epochs, runs of consecutive seqs; an
// epoch is named by its first seq. Within an epoch, entries are keyed by
// pair, then seq, so one pair's changes are adjacent; across epochs they
// are in seq order. Each epoch but the first opens with the balance of
// every pair that is non-zero then ("openings"). So a flush rewrites only
// the leaves of the newest epoch, which stays about as small as the number
// of pairs, however long the history grows, and the balance of a pair
// after seq N is its last entry at or before N in N's epoch, or else the
// epoch's opening balance, or else zero: two seeks.
//
// An epoch ends at the end of a flush once it holds at least
// max(epoch_entries_min, its opening count) entries (HistoryStoreOptions);
// the next begins at the seq after that flush's position, with openings
// written in the same transaction. A new index has one epoch, 1, with no
// openings.
//
//   "meta"     key: "position" (8 ASCII bytes)
//              value: the position record below, 72 bytes
//   "pairs"    key: subject, one 0x00 byte, item (3..511 bytes). Names are
//              1..255 bytes without NUL, so bytewise key order is the
//              order by subject, then item, and a subject's pairs are the
//              keys that start with "subject\0".
//              value: u64 pair id (1, 2, ... in the order pairs first
//              change), u32 check over the key bytes followed by the 8 id
//              bytes (12 bytes): a name damaged in the key does not verify
//   "hashes"   key: u64 XXH3-64 (seed 0) of the subject, u64 XXH3-64 of the
//              pair's "pairs" key, u64 pair id, all big-endian (24 bytes)
//              value: u32 check over the 24 key bytes (4 bytes)
//              One per pair, written with its "pairs" record: what a read
//              by name that finds no pair, or a walk of a subject's pairs,
//              compares with, so that a damaged name key is corrupt
//              rather than a pair that is not there.
//   "entries"  key: u64 epoch, u64 pair id, u64 seq, all big-endian (24
//              bytes)
//              value: the entry record below, 46..301 bytes
//   "epochs"   key: u64 epoch big-endian (its first seq)
//              value: u64 the epoch's opening count, u32 check: the low 32
//              bits of XXH3-64 (seed 0) over the 8 key bytes followed by
//              the count (12 bytes)
//   "openings" key: u64 epoch, u64 pair id, both big-endian (16 bytes)
//              value: i64 available, i64 held (the pair's balance after
//              seq epoch - 1, not both zero), u32 check over the 16 key
//              bytes followed by the 16 value bytes before it (20 bytes)
//   "times"    key: u64 big-endian of the timestamp_ns bits XOR 2^63 (a
//              biased i64: bytewise order is numeric order, negative
//              timestamps included)
//              value: u64 last, u64 first (the last and the first indexed
//              seqs stamped with that time), u32 check over the 8 key bytes
//              followed by the 16 value bytes before it (20 bytes)
//              Timestamps never go back along the log, so in key order
//              each record's first is the seq after the last of the one
//              before it, the first record's first is 1 and the last
//              record's last is the position's seq: a read checks the link
//              to the record after the one it answers with, so a record
//              lost or moved between them is corrupt, not an earlier seq.
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
//   u64 epoch (the newest epoch; 1 when empty; at most seq + 1),
//   u64 epoch_entries (the entries in it),
//   u64 epoch_openings (its opening count),
//   u64 XXH3-64 (seed 0) of the 64 bytes before it.
//
// Entry record, little-endian:
//   i64 time_ns (the event's timestamp),
//   i64 delta_available, i64 delta_held (the event's change to the pair),
//   i64 available, i64 held (the pair's balance after the event),
//   u8 op code (below), u8 key length, the event's idempotency key
//   (0..255 bytes; empty for an expire event),
//   u32 check: the low 32 bits of XXH3-64 (seed 0) over the 24 key bytes
//   followed by the record bytes before the check. Covering the key means
//   an entry copied under another pair, seq or epoch does not verify
//   either.
//
// Chains. An entry's balance after, less its delta, is the pair's balance
// before it: the previous entry's balance after in the epoch, or else the
// pair's opening balance there, or else zero; and an epoch's openings are
// the balances the epoch before ended with. No change is zero, so a record
// lost from the middle (deleted, or moved away by a damaged key, which the
// check above catches only when the record is read) breaks a chain.
// Readers check the link after the balance they answer. A pair's name has
// no chain; its "hashes" record stands in for one: a read by a name that
// "pairs" does not hold looks for the name's hashes, and a walk of a
// subject's pairs counts the subject's hashes, so a name key that damage
// moved away is corrupt rather than a zero (a record whose own check
// fails is corrupt where it is read).
//
// Older formats are not read; a writer finding one rebuilds the index from
// the log. Format 1 had no epochs (entries keyed by pair, then seq);
// format 2 had no check in a pair's record; format 3 no "hashes"; format 4
// a bare seq in "times".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace tally::snap::history {

inline constexpr const char* kMetaDbName = "meta";
inline constexpr const char* kPairsDbName = "pairs";
inline constexpr const char* kEntriesDbName = "entries";
inline constexpr const char* kTimesDbName = "times";
inline constexpr const char* kEpochsDbName = "epochs";
inline constexpr const char* kOpeningsDbName = "openings";
inline constexpr const char* kHashesDbName = "hashes";
inline constexpr std::array<const char*, 7> kDbNames = {
    kMetaDbName,   kPairsDbName,    kEntriesDbName, kTimesDbName,
    kEpochsDbName, kOpeningsDbName, kHashesDbName};

inline constexpr char kPositionKey[] = "position";
inline constexpr std::size_t kPositionKeyBytes = sizeof(kPositionKey) - 1;
inline constexpr std::uint32_t kPositionMagic = 0x53494854;  // "THIS" read as LE bytes
inline constexpr std::uint32_t kFormatVersion = 5;
inline constexpr std::size_t kPositionBytes = 72;
inline constexpr std::size_t kPositionCheckedBytes = kPositionBytes - 8;

inline constexpr std::size_t kNameBytesMax = 255;  // subjects, items and keys (engine/types.h)
inline constexpr std::size_t kPairKeyBytesMin = 1 + 1 + 1;
inline constexpr std::size_t kPairKeyBytesMax = kNameBytesMax + 1 + kNameBytesMax;
inline constexpr std::size_t kPairIdBytes = 8;
// LMDB's default key size limit (mdb_env_get_maxkeysize, MDB_MAXKEYSIZE).
// The store checks the library it runs with at open.
inline constexpr std::size_t kLmdbKeyBytesMax = 511;

inline constexpr std::size_t kEpochBytes = 8;
inline constexpr std::size_t kCheckBytes = 4;  // the u32 checks of entries, epochs, openings
inline constexpr std::size_t kEntryKeyBytes = 24;
inline constexpr std::size_t kEntryFixedBytes = 8 * 5 + 1 + 1;  // before the key
inline constexpr std::size_t kEntryBytesMin = kEntryFixedBytes + kCheckBytes;
inline constexpr std::size_t kEntryBytesMax = kEntryBytesMin + kNameBytesMax;

inline constexpr std::size_t kTimeKeyBytes = 8;
inline constexpr std::size_t kSeqBytes = 8;
inline constexpr std::size_t kTimeValueBytes = kSeqBytes + kSeqBytes + kCheckBytes;
inline constexpr std::size_t kEpochValueBytes = 8 + kCheckBytes;
inline constexpr std::size_t kOpeningKeyBytes = kEpochBytes + kPairIdBytes;
inline constexpr std::size_t kPairValueBytes = kPairIdBytes + kCheckBytes;
inline constexpr std::size_t kOpeningValueBytes = 8 + 8 + kCheckBytes;
inline constexpr std::size_t kHashBytes = 8;
inline constexpr std::size_t kHashKeyBytes = kHashBytes + kHashBytes + kPairIdBytes;
inline constexpr std::size_t kHashValueBytes = kCheckBytes;
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

static_assert(kPositionBytes == 4 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 8);
static_assert(kPositionKeyBytes == 8);
static_assert(kPairKeyBytesMax <= kLmdbKeyBytesMax);
static_assert(kEntryKeyBytes == kEpochBytes + kPairIdBytes + kSeqBytes);
static_assert(kNameBytesMax <= UINT8_MAX);  // a key's length fits its u8
static_assert(kEntryBytesMin == 46);
static_assert(kEntryBytesMax == 301);

}  // namespace tally::snap::history
