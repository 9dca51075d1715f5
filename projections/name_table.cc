#include "projections/name_table.h"

#include <cstring>

namespace tally::proj {

NameTable::NameTable() {
  locs_.push_back(0);  // id 0 is "no name"
}

const std::uint8_t* NameTable::record_at(std::uint32_t loc) const {
  TALLY_DEBUG_ASSERT(loc != 0);
  const std::uint64_t offset = (std::uint64_t{loc} - 1) * 4;
  TALLY_DEBUG_ASSERT(offset / kChunkBytes < chunks_.size());
  const std::byte* chunk = chunks_[offset / kChunkBytes].get();
  return reinterpret_cast<const std::uint8_t*>(chunk) + offset % kChunkBytes;
}

std::string_view NameTable::name_of(const std::uint8_t* record) {
  return std::string_view(reinterpret_cast<const char*>(record + kRecordHeaderBytes), record[4]);
}

std::uint32_t NameTable::id_of(const std::uint8_t* record) {
  std::uint32_t id = 0;
  std::memcpy(&id, record, sizeof(id));
  return id;
}

std::uint32_t NameTable::find(std::string_view name, std::uint32_t hash) const {
  TALLY_DEBUG_ASSERT(hash == hash_of(name));
  const Slot* slot = index_.find(hash, [&](const Slot& candidate) {
    return candidate.hash == hash && name_of(record_at(candidate.loc)) == name;
  });
  return slot == nullptr ? 0 : id_of(record_at(slot->loc));
}

std::uint32_t NameTable::intern(std::string_view name, std::uint32_t hash) {
  TALLY_ASSERT(!name.empty());
  TALLY_ASSERT(name.size() <= kNameBytesMax);
  const std::uint32_t found = find(name, hash);
  if (found != 0) return found;
  TALLY_ASSERT(locs_.size() < UINT32_MAX);
  const auto id = static_cast<std::uint32_t>(locs_.size());
  const std::uint32_t loc = store(name, id);
  locs_.push_back(loc);
  index_.insert(hash, Slot{hash, loc});
  return id;
}

std::string_view NameTable::view(std::uint32_t id) const {
  TALLY_ASSERT(id != 0);
  TALLY_ASSERT(id < locs_.size());
  return name_of(record_at(locs_[id]));
}

std::uint32_t NameTable::store(std::string_view name, std::uint32_t id) {
  const std::size_t need_bytes = (kRecordHeaderBytes + name.size() + 3) & ~std::size_t{3};
  if (chunk_used_bytes_ + need_bytes > kChunkBytes) {
    // The tail of the old chunk (< 264 bytes) is left unused.
    TALLY_ASSERT((chunks_.size() + 1) * kChunkBytes <= kArenaBytesMax);
    chunks_.push_back(new_arena_chunk(kChunkBytes, PageFill::now));
    chunk_used_bytes_ = 0;
  }
  std::uint8_t* out = reinterpret_cast<std::uint8_t*>(chunks_.back().get()) + chunk_used_bytes_;
  std::memcpy(out, &id, sizeof(id));
  out[4] = static_cast<std::uint8_t>(name.size());
  std::memcpy(out + kRecordHeaderBytes, name.data(), name.size());
  const std::uint64_t offset = (chunks_.size() - 1) * kChunkBytes + chunk_used_bytes_;
  chunk_used_bytes_ += need_bytes;
  return static_cast<std::uint32_t>(offset / 4 + 1);
}

std::size_t NameTable::memory_bytes() const {
  return chunks_.size() * kChunkBytes + locs_.memory_bytes() + index_.memory_bytes();
}

}  // namespace tally::proj
