#include "snapshots/pair_cache.h"

#include <cstring>
#include <memory>

#include "log/status.h"

namespace tally::snap {

PairRecord* PairCache::record_at(std::uint32_t loc) const {
  TALLY_DEBUG_ASSERT(loc != 0);
  const std::uint64_t offset = (std::uint64_t{loc} - 1) * kAlign;
  TALLY_DEBUG_ASSERT(offset / kChunkBytes < chunks_.size());
  std::byte* chunk = chunks_[offset / kChunkBytes].get();
  return std::launder(reinterpret_cast<PairRecord*>(chunk + offset % kChunkBytes));
}

PairRecord* PairCache::find(std::string_view key) const {
  const std::uint32_t hash = hash_of(key);
  const Slot* slot = index_.find(hash, [&](const Slot& candidate) {
    return candidate.hash == hash && record_at(candidate.loc)->key() == key;
  });
  return slot == nullptr ? nullptr : record_at(slot->loc);
}

PairRecord* PairCache::insert(std::string_view key, const PairSlot& slot) {
  TALLY_ASSERT(!key.empty());
  TALLY_ASSERT(key.size() <= kKeyBytesMax);
  const std::size_t need_bytes = (sizeof(PairRecord) + key.size() + kAlign - 1) & ~(kAlign - 1);
  if (chunk_used_bytes_ + need_bytes > kChunkBytes) {
    // The tail of the old chunk (shorter than the longest record) is left unused.
    TALLY_ASSERT((chunks_.size() + 1) * kChunkBytes / kAlign < UINT32_MAX);
    chunks_.push_back(proj::new_arena_chunk(kChunkBytes, proj::PageFill::now));
    chunk_used_bytes_ = 0;
  }
  std::byte* out = chunks_.back().get() + chunk_used_bytes_;
  PairRecord* record = std::construct_at(reinterpret_cast<PairRecord*>(out));
  record->slot = slot;
  record->key_bytes = static_cast<std::uint32_t>(key.size());
  std::memcpy(out + sizeof(PairRecord), key.data(), key.size());
  const std::uint64_t offset = (chunks_.size() - 1) * kChunkBytes + chunk_used_bytes_;
  chunk_used_bytes_ += need_bytes;
  const auto loc = static_cast<std::uint32_t>(offset / kAlign + 1);
  const std::uint32_t hash = hash_of(key);
  index_.insert(hash, Slot{hash, loc});
  return record;
}

void PairCache::clear() {
  index_ = Index();
  chunks_.clear();
  chunk_used_bytes_ = kChunkBytes;
}

}  // namespace tally::snap
