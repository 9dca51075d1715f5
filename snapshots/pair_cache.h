// PairCache: the history writer's pairs, by their "pairs" key (subject \0
// item), each with its id and its balance after its last entry.
//
// One event looks up each pair it changes, and the pairs of a large ledger
// are far more than the caches hold, so a lookup costs what it misses. A
// node-based map missed three or four lines a lookup (its bucket, the node
// before the chain, the chain's nodes) and allocated a node per pair; here a
// lookup reads one index slot and the record it points to, which holds the
// key to compare and the pair's slot side by side.
//
// Records live in an append-only arena of 64 KiB chunks until clear(), so
// a record's address and its key stay put while the index grows.
//
// Arena record, 8-byte aligned, never spanning two chunks:
//   PairRecord (id, balance, key length) | key bytes | pad to 8
// The index slot (proj::ArenaIndexSlot) holds the low 32 bits of the key's
// hash and the record's "loc": its offset in 8-byte units across all
// chunks, plus 1.
//
// Thread safety: none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "projections/flat_table.h"
#include "projections/name_table.h"  // proj::kNameBytesMax
#include "projections/state.h"

namespace tally::snap {

struct PairSlot {
  std::uint64_t id = 0;   // 0: the pair has no entry yet
  proj::Balance balance;  // after its last entry, flushed or not
};

struct PairRecord {
  PairSlot slot;
  std::uint32_t key_bytes = 0;

  std::string_view key() const {
    return std::string_view(reinterpret_cast<const char*>(this + 1), key_bytes);
  }
};

class PairCache {
 public:
  // The longest key a record holds: two names and the NUL between them.
  static constexpr std::size_t kKeyBytesMax = 2 * proj::kNameBytesMax + 1;

  PairCache() = default;
  PairCache(const PairCache&) = delete;
  PairCache& operator=(const PairCache&) = delete;

  static std::uint32_t hash_of(std::string_view key) {
    return static_cast<std::uint32_t>(proj::hash_bytes(key));
  }

  // nullptr when the key is not cached.
  PairRecord* find(std::string_view key) const;
  // Precondition: the key is not cached, and is 1..kKeyBytesMax bytes.
  PairRecord* insert(std::string_view key, const PairSlot& slot);

  std::size_t size() const { return index_.size(); }
  // Forgets every pair: records found before are gone.
  void clear();

 private:
  using Slot = proj::ArenaIndexSlot;
  using Index = proj::FlatTable<Slot, proj::ArenaIndexPolicy>;

  static constexpr std::size_t kChunkBytes = 64 * 1024;
  static constexpr std::size_t kAlign = 8;
  static_assert(alignof(PairRecord) <= kAlign);
  static_assert(sizeof(PairRecord) % kAlign == 0);
  static_assert(kChunkBytes >= sizeof(PairRecord) + kKeyBytesMax + kAlign);

  PairRecord* record_at(std::uint32_t loc) const;

  std::vector<proj::ArenaChunk> chunks_;
  std::size_t chunk_used_bytes_ = kChunkBytes;  // forces a chunk on first use
  Index index_;
};

}  // namespace tally::snap
