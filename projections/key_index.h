// KeyIndex: the remembered idempotency keys and their outcomes.
//
// Keys arrive in seq order with non-decreasing timestamps and leave in the
// same order when the window passes them, so records live in a FIFO arena:
// fixed-size chunks appended at the back and recycled from the front. An
// open-addressing index maps a key to its record.
//
// Record, 8-byte aligned inside a chunk (never spanning two):
//   KeyRecord (32 bytes) | key length (1 byte) | key bytes | pad to 8
// Index slot (12 bytes): the low 32 bits of XXH3(key), which place the slot
// and filter mismatches, and the record's location in the arena.
//
// Memory per key: round_up(33 + key length, 8) + 12 / load, with the load
// between 0.41 and 7/8 (ShardedTable): 70..86 bytes for a 16-byte key,
// 86..102 for a 36-byte UUID. Plus at most one partly used chunk at each
// end and one spare: 6 MiB. memory_bytes() counts whole chunks, the first
// included, which is faulted in only as keys fill it.
//
// A key decided again while remembered (a log written with a shorter
// window than this index's forgot it, then decided it anew) takes the
// later decision: its slot moves to the new record, and the old one stays
// in the arena, marked replaced (seq 0; an event's is 1 or more), until
// eviction passes it. Decided again at the very time of its remembered
// decision, it is a Repeat, refused: the new record is the one marked.
//
// Pointers to records stay valid until the key is evicted.
// Thread safety: none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "projections/flat_table.h"
#include "projections/name_table.h"  // kNameBytesMax
#include "projections/state.h"

namespace tally::proj {

class KeyIndex {
 public:
  KeyIndex() = default;
  KeyIndex(const KeyIndex&) = delete;
  KeyIndex& operator=(const KeyIndex&) = delete;

  // The hash find() and insert() use; compute it once per key.
  static std::uint32_t hash_of(std::string_view key) {
    return static_cast<std::uint32_t>(hash_bytes(key));
  }
  // Starts loading the slot where a lookup of `hash` begins.
  void prefetch(std::uint32_t hash) const { index_.prefetch(hash); }

  // nullptr when the key is not remembered.
  const KeyRecord* find(std::string_view key) const { return find(key, hash_of(key)); }
  const KeyRecord* find(std::string_view key, std::uint32_t hash) const;

  // A key decided again at the very time of a decision remembered
  // (KeyRecord::timestamp_ns): no window is that short, so the ledger that
  // wrote both still remembered the first and would have answered the
  // second as its replay. insert() and index_added() refuse it.
  struct Repeat {
    std::string key;
    std::uint64_t first_seq = 0;
    std::uint64_t again_seq = 0;
  };

  // Remembers the key with `record`; a key remembered already takes
  // `record` instead (the later decision). False for a Repeat: the key keeps
  // its first record, and *repeat (when given) is filled in. One probe finds and
  // places a new key. Preconditions: the key is 1..kNameBytesMax bytes,
  // hash == hash_of(key), and record.timestamp_ns is >= that of every key
  // inserted before.
  [[nodiscard]] bool insert(std::string_view key, std::uint32_t hash, const KeyRecord& record,
                            Repeat* repeat = nullptr);

  // Sizes the index for `count` keys in all (FlatTable::reserve).
  void reserve(std::size_t count, PageFill fill = PageFill::now) { index_.reserve(count, fill); }

  // Loading many keys at once (a snapshot's, or a replay's). Inserted as they come, keys
  // land at random in an index far larger than the caches and the TLB: a
  // miss or two each. Instead, add_unindexed() each key (with insert()'s
  // preconditions), keeping what it returns, then index_added() a run of
  // them: grouped by where their slots lie (one pass of a radix sort), they
  // fill the index a region at a time, each small enough to stay in the
  // caches while its keys go in (a run under 256 keys, too short to gain
  // from the grouping, goes in as it comes).
  // Until every added key is indexed, only these two may be called:
  // find(), insert() and evict_through() would not see the added keys.
  struct Added {
    std::uint64_t loc = 0;
    std::uint32_t hash = 0;
    std::uint32_t order = 0;  // scratch of index_added()
  };
  Added add_unindexed(std::string_view key, std::uint32_t hash, const KeyRecord& record);
  // What index_added() does with a key added twice, or already remembered.
  enum class Repeats {
    refused,      // false; the index is then unspecified (a damaged image)
    latest_wins,  // the later record replaces the earlier, as insert() does,
                  // and a Repeat is refused, as insert() refuses it, the
                  // rest of the run still indexed
  };
  // Indexes `added` (reordering it), with `scratch` of at least its size.
  // False when `repeats` refuses a key found twice; for a Repeat,
  // *repeat (when given) is filled in with the one of the least again_seq.
  [[nodiscard]] bool index_added(std::span<Added> added, std::span<Added> scratch,
                                 Repeats repeats, Repeat* repeat = nullptr);

  // Forgets every key whose timestamp_ns <= cutoff_ns. They are the oldest,
  // at the front of the FIFO, so this touches only what it forgets.
  void evict_through(std::int64_t cutoff_ns);

  std::size_t size() const { return count_; }
  // The timestamp_ns of the last key inserted (INT64_MIN before any),
  // evicted or not: the least the next one may have.
  std::int64_t newest_timestamp_ns() const { return newest_timestamp_ns_; }
  // The timestamp_ns of the oldest record in the arena that is indexed or
  // replaced: at most that of the oldest indexed key, the next
  // evict_through() forgets (a replaced record is older than its key's
  // indexed one); INT64_MAX when no key is indexed.
  std::int64_t oldest_timestamp_ns() const;
  std::size_t memory_bytes() const;

  // Visits every remembered key, oldest first.
  template <class Visit>
  void for_each(const Visit& visit) const {
    for (std::size_t chunk_index = 0; chunk_index < chunks_.size(); chunk_index++) {
      const Chunk& chunk = chunks_[chunk_index];
      std::uint32_t offset = chunk_index == 0 ? front_offset_bytes_ : 0;
      while (offset < chunk.used_bytes) {
        const std::byte* record = chunk.bytes.get() + offset;
        if (!replaced(record)) visit(key_of(record), *record_of(record));
        offset += record_bytes(key_of(record).size());
      }
    }
  }

 private:
  struct Chunk {
    ArenaChunk bytes;
    std::uint32_t used_bytes = 0;
  };

  // loc = arena offset / 8 + 1, so 0 marks an empty slot. Split in two u32
  // so the slot packs into 12 bytes.
  struct Slot {
    std::uint32_t hash = 0;
    std::uint32_t loc_hi = 0;
    std::uint32_t loc_lo = 0;
  };
  struct SlotPolicy {
    static bool empty(const Slot& slot) { return slot.loc_hi == 0 && slot.loc_lo == 0; }
    static std::uint64_t hash(const Slot& slot) { return slot.hash; }
    // Probing reads 12-byte slots and compares only the hash tag, so a high
    // load costs little and saves memory per key.
    static constexpr std::size_t kLoadNum = 7;
    static constexpr std::size_t kLoadDen = 8;
    // Per shard; the shard takes the hash's top 4 bits, home slots the low 28.
    static constexpr std::size_t kCapacityMax = std::size_t{1} << 28;
    static constexpr int kHashBits = 32;
  };

  static constexpr std::size_t kChunkBytes = kHugePageBytes;
  static constexpr std::size_t kRecordHeaderBytes = sizeof(KeyRecord) + 1;
  static_assert(sizeof(KeyRecord) == 32);
  static_assert(alignof(KeyRecord) <= 8);
  static_assert(kChunkBytes % 8 == 0);
  static_assert(kChunkBytes >= kRecordHeaderBytes + kNameBytesMax + 8);

  static std::size_t record_bytes(std::size_t key_bytes) {
    return (kRecordHeaderBytes + key_bytes + 7) & ~std::size_t{7};
  }
  static const KeyRecord* record_of(const std::byte* record);
  static std::string_view key_of(const std::byte* record);
  // The seq that marks a record a later one of its key replaced.
  static constexpr std::uint64_t kReplacedSeq = 0;
  static bool replaced(const std::byte* record) { return record_of(record)->seq == kReplacedSeq; }
  // Points the slot of `key` (remembered) at the record at `loc`, and marks
  // the record it pointed at replaced; or, for a Repeat, marks the one at
  // `loc` replaced instead, fills in *repeat (when given) and is false.
  bool replace(std::string_view key, std::uint32_t hash, std::uint64_t loc, Repeat* repeat);
  static std::uint64_t loc_of(const Slot& slot) {
    return (std::uint64_t{slot.loc_hi} << 32) | slot.loc_lo;
  }

  const std::byte* record_at(std::uint64_t loc) const;
  // Indexes the record at make_loc() under the key get_key() returns
  // unless a slot matches it (then make_loc is not called): false. The key
  // is got only to compare with a slot of the same hash.
  template <class GetKey, class MakeLoc>
  bool place(const GetKey& get_key, std::uint32_t hash, const MakeLoc& make_loc) {
    const Slot* placed = index_.insert_unique(
        hash,
        [&](const Slot& candidate) {
          return candidate.hash == hash && key_of(record_at(loc_of(candidate))) == get_key();
        },
        [&] {
          const std::uint64_t loc = make_loc();
          return Slot{hash, static_cast<std::uint32_t>(loc >> 32), static_cast<std::uint32_t>(loc)};
        });
    if (placed == nullptr) return false;
    count_++;
    return true;
  }
  std::uint64_t front_loc() const;
  // Writes a record at the back and returns its loc.
  std::uint64_t append(std::string_view key, const KeyRecord& record);
  // Recycles front chunks whose records are all forgotten.
  void drop_spent_chunks();

  RingBuffer<Chunk> chunks_;
  std::uint64_t front_chunk_seq_ = 0;  // chunk number of chunks_[0] since the start
  std::uint32_t front_offset_bytes_ = 0;  // the oldest record inside chunks_[0]
  ArenaChunk spare_;  // a recycled chunk, reused before allocating
  std::size_t count_ = 0;
  std::int64_t newest_timestamp_ns_ = INT64_MIN;
  ShardedTable<Slot, SlotPolicy> index_;
  static_assert(decltype(index_)::kSlotOrderBits <= 32);  // fits Added::order
};

}  // namespace tally::proj
