// NameTable: interns subject or item names into dense u32 ids, so balances
// and holds store 4-byte ids instead of strings.
//
// Names live in an append-only arena of fixed-size chunks and are never
// freed: a view returned by view() stays valid for the table's life. Ids
// start at 1; 0 means "no name".
//
// Arena record, 4-byte aligned, never spanning two chunks:
//   id (u32) | length (1 byte) | name bytes | pad to 4
// A record is addressed by a u32 "loc": its offset in 4-byte units across
// all chunks, plus 1 (0 = none). The index slot holds the low 32 bits of the
// name's hash and the loc: a lookup costs one miss for the slot and one for
// the record, which holds both the bytes to compare and the id.
//
// Memory per name: round_up(5 + length, 4) (arena) + 4 (id -> loc) + one
// 8-byte index slot at a load of 0.35..3/4 (11..23 bytes; ShardedTable
// says why not 3/8).
//
// Thread safety: none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "projections/flat_table.h"

namespace tally::proj {

// Subjects, items and keys are 1..255 bytes (docs/architecture.md, "Names"); the one-byte
// length prefixes in the arenas depend on it.
inline constexpr std::size_t kNameBytesMax = 255;

class NameTable {
 public:
  // A u32 loc in 4-byte units addresses this much arena; interning past it
  // is an assertion failure (hundreds of millions of names).
  static constexpr std::uint64_t kArenaBytesMax = (std::uint64_t{1} << 32) * 4 - 4;

  NameTable();
  NameTable(const NameTable&) = delete;
  NameTable& operator=(const NameTable&) = delete;

  // The hash find() and intern() use; callers that look a name up more than
  // once, or prefetch, compute it once.
  static std::uint32_t hash_of(std::string_view name) {
    return static_cast<std::uint32_t>(hash_bytes(name));
  }
  // Starts loading the slot where a lookup of `hash` begins.
  void prefetch(std::uint32_t hash) const { index_.prefetch(hash); }

  // 0 when the name was never interned.
  std::uint32_t find(std::string_view name) const { return find(name, hash_of(name)); }
  std::uint32_t find(std::string_view name, std::uint32_t hash) const;
  // The name's id, interning it if new. Precondition: 1..kNameBytesMax bytes.
  std::uint32_t intern(std::string_view name) { return intern(name, hash_of(name)); }
  std::uint32_t intern(std::string_view name, std::uint32_t hash);
  // Precondition: 1 <= id <= size().
  std::string_view view(std::uint32_t id) const;
  // The two steps of prefetching what view(id) reads, for ids in no order:
  // the id's loc, then, once that has arrived, the record it points at.
  // Precondition: 1 <= id <= size().
  void prefetch_loc(std::uint32_t id) const { prefetch_line(&locs_[id]); }
  void prefetch_record(std::uint32_t id) const { prefetch_line(record_at(locs_[id])); }
  // Sizes the index for `count` names in all, so that interning that many
  // moves no slot (a loader that knows its count).
  void reserve(std::size_t count) { index_.reserve(count); }

  // Names interned so far.
  std::size_t size() const { return locs_.size() - 1; }
  std::size_t memory_bytes() const;

 private:
  using Slot = ArenaIndexSlot;

  static constexpr std::size_t kChunkBytes = 64 * 1024;
  static constexpr std::size_t kRecordHeaderBytes = 5;
  static_assert(kChunkBytes % 4 == 0);
  static_assert(kChunkBytes >= kRecordHeaderBytes + kNameBytesMax + 3);

  const std::uint8_t* record_at(std::uint32_t loc) const;
  static std::string_view name_of(const std::uint8_t* record);
  static std::uint32_t id_of(const std::uint8_t* record);
  // Appends a record to the arena and returns its loc.
  std::uint32_t store(std::string_view name, std::uint32_t id);

  std::vector<ArenaChunk> chunks_;
  std::size_t chunk_used_bytes_ = kChunkBytes;  // forces a chunk on first use
  ChunkedVector<std::uint32_t> locs_;           // id -> loc of its record
  ShardedTable<Slot, ArenaIndexPolicy> index_;
};

}  // namespace tally::proj
