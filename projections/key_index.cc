#include "projections/key_index.h"

#include <array>
#include <cstring>
#include <new>
#include <utility>

namespace tally::proj {

const KeyRecord* KeyIndex::record_of(const std::byte* record) {
  return std::launder(reinterpret_cast<const KeyRecord*>(record));
}

std::string_view KeyIndex::key_of(const std::byte* record) {
  const auto length = static_cast<std::size_t>(record[sizeof(KeyRecord)]);
  return std::string_view(reinterpret_cast<const char*>(record + kRecordHeaderBytes), length);
}

const std::byte* KeyIndex::record_at(std::uint64_t loc) const {
  TALLY_DEBUG_ASSERT(loc != 0);
  const std::uint64_t offset = (loc - 1) * 8;
  const std::uint64_t chunk_seq = offset / kChunkBytes;
  TALLY_ASSERT(chunk_seq >= front_chunk_seq_);
  TALLY_ASSERT(chunk_seq - front_chunk_seq_ < chunks_.size());
  const Chunk& chunk = chunks_[static_cast<std::size_t>(chunk_seq - front_chunk_seq_)];
  return chunk.bytes.get() + offset % kChunkBytes;
}

std::uint64_t KeyIndex::front_loc() const {
  return (front_chunk_seq_ * kChunkBytes + front_offset_bytes_) / 8 + 1;
}

const KeyRecord* KeyIndex::find(std::string_view key, std::uint32_t hash) const {
  TALLY_DEBUG_ASSERT(hash == hash_of(key));
  const Slot* slot = index_.find(hash, [&](const Slot& candidate) {
    return candidate.hash == hash && key_of(record_at(loc_of(candidate))) == key;
  });
  return slot == nullptr ? nullptr : record_of(record_at(loc_of(*slot)));
}

bool KeyIndex::insert(std::string_view key, std::uint32_t hash, const KeyRecord& record,
                      Repeat* repeat) {
  TALLY_DEBUG_ASSERT(hash == hash_of(key));
  TALLY_ASSERT(!key.empty());
  TALLY_ASSERT(key.size() <= kNameBytesMax);
  newest_timestamp_ns_ = record.timestamp_ns;
  if (place([&] { return key; }, hash, [&] { return append(key, record); })) return true;
  return replace(key, hash, append(key, record), repeat);
}

bool KeyIndex::replace(std::string_view key, std::uint32_t hash, std::uint64_t loc,
                       Repeat* repeat) {
  Slot* slot = index_.find(hash, [&](const Slot& candidate) {
    return candidate.hash == hash && key_of(record_at(loc_of(candidate))) == key;
  });
  TALLY_ASSERT(slot != nullptr);
  // The arena is this index's own: its records are written in place.
  const auto writable = [&](std::uint64_t at) {
    return std::launder(reinterpret_cast<KeyRecord*>(const_cast<std::byte*>(record_at(at))));
  };
  KeyRecord* earlier = writable(loc_of(*slot));
  KeyRecord* later = writable(loc);
  if (earlier->timestamp_ns == later->timestamp_ns) {
    if (repeat != nullptr) *repeat = Repeat{std::string(key), earlier->seq, later->seq};
    later->seq = kReplacedSeq;
    return false;
  }
  earlier->seq = kReplacedSeq;
  slot->loc_hi = static_cast<std::uint32_t>(loc >> 32);
  slot->loc_lo = static_cast<std::uint32_t>(loc);
  return true;
}

KeyIndex::Added KeyIndex::add_unindexed(std::string_view key, std::uint32_t hash,
                                        const KeyRecord& record) {
  TALLY_DEBUG_ASSERT(hash == hash_of(key));
  TALLY_ASSERT(!key.empty());
  TALLY_ASSERT(key.size() <= kNameBytesMax);
  newest_timestamp_ns_ = record.timestamp_ns;
  return Added{append(key, record), hash, 0};
}

bool KeyIndex::index_added(std::span<Added> added, std::span<Added> scratch, Repeats repeats,
                           Repeat* repeat) {
  TALLY_ASSERT(scratch.size() >= added.size());
  // Each added key in turn; a repeat replaces the record indexed before it
  // (the sort below is stable, so a key's records come in arena order).
  // Under latest_wins, a Repeat refused does not stop the run: the one
  // reported is the earliest by seq, as one by one would find first.
  bool repeated = false;
  const auto index_one = [&](const Added& entry) {
    const auto key = [&] { return key_of(record_at(entry.loc)); };
    if (place(key, entry.hash, [&] { return entry.loc; })) return true;
    if (repeats == Repeats::refused) return false;
    Repeat found;
    if (replace(key(), entry.hash, entry.loc, &found)) return true;
    if (repeat != nullptr && (!repeated || found.again_seq < repeat->again_seq)) {
      *repeat = std::move(found);
    }
    repeated = true;
    return true;
  };
  // A short run gains nothing from the grouping, whose pass clears 16 KiB
  // of counts: inserted as they come.
  constexpr std::size_t kGroupedRunMin = 256;
  if (added.size() < kGroupedRunMin) {
    for (const Added& entry : added) {
      if (!index_one(entry)) return false;
    }
    return !repeated;
  }
  // One stable counting pass on the top bits of the slot orders: the keys
  // of a group go to one 2048th of the index (96 KiB of 16 M slots), which
  // stays in the caches while they go in, in arena order within it (so a
  // key's records still come in that order). A sort on every bit, three
  // passes for that index, also ordered the slots within a region, which
  // the caches do not need: loading a snapshot's 11.8 M keys took 5% more
  // CPU (docs/performance.md).
  constexpr int kDigitBits = 11;
  constexpr std::size_t kDigits = std::size_t{1} << kDigitBits;
  constexpr int kShift = decltype(index_)::kSlotOrderBits - kDigitBits;
  static_assert(kShift >= 0);
  std::array<std::size_t, kDigits> starts{};
  for (Added& entry : added) {
    entry.order = static_cast<std::uint32_t>(index_.slot_order(entry.hash) >> kShift);
    starts[entry.order]++;
  }
  std::size_t start = 0;
  for (std::size_t& bucket : starts) start += std::exchange(bucket, start);
  const std::span<Added> grouped = scratch.first(added.size());
  for (const Added& entry : added) grouped[starts[entry.order]++] = entry;
  // By region, the slots within one at random: prefetch.
  constexpr std::size_t kAhead = 16;
  for (std::size_t index = 0; index < grouped.size(); index++) {
    if (index + kAhead < grouped.size()) index_.prefetch(grouped[index + kAhead].hash);
    // The records lie in arena order, not slot order: one is read only to
    // compare it.
    if (!index_one(grouped[index])) return false;
  }
  return !repeated;
}

std::uint64_t KeyIndex::append(std::string_view key, const KeyRecord& record) {
  const std::size_t size_bytes = record_bytes(key.size());
  if (chunks_.empty() || chunks_.back().used_bytes + size_bytes > kChunkBytes) {
    Chunk chunk;
    // The first chunk fills as it is touched: most ledgers' keys fit in it.
    const bool first = front_chunk_seq_ + chunks_.size() == 0;
    chunk.bytes = spare_ != nullptr
                      ? std::move(spare_)
                      : new_arena_chunk(kChunkBytes, first ? PageFill::lazy : PageFill::now);
    chunks_.push_back(std::move(chunk));
  }
  Chunk& chunk = chunks_.back();
  std::byte* out = chunk.bytes.get() + chunk.used_bytes;
  // Field by field: the caller has just built `record` on its stack with
  // a store per field, and a copy by wider loads spanning two of those
  // stores cannot take them from the store buffer. It waits for every
  // older store to reach the cache first: 10% of the replay's reading
  // thread went there (docs/performance.md).
  KeyRecord* slot = std::construct_at(reinterpret_cast<KeyRecord*>(out));
  slot->fingerprint = record.fingerprint;
  slot->seq = record.seq;
  slot->timestamp_ns = record.timestamp_ns;
  slot->reason = record.reason;
  slot->failed_index = record.failed_index;
  out[sizeof(KeyRecord)] = static_cast<std::byte>(key.size());
  std::memcpy(out + kRecordHeaderBytes, key.data(), key.size());
  const std::uint64_t chunk_seq = front_chunk_seq_ + chunks_.size() - 1;
  const std::uint64_t loc = (chunk_seq * kChunkBytes + chunk.used_bytes) / 8 + 1;
  chunk.used_bytes += static_cast<std::uint32_t>(size_bytes);
  return loc;
}

std::int64_t KeyIndex::oldest_timestamp_ns() const {
  if (count_ == 0) return INT64_MAX;
  // Indexed keys precede the added ones in the arena: the front is one,
  // or a record one of them replaced.
  std::size_t chunk_index = 0;
  std::uint32_t offset = front_offset_bytes_;
  while (offset == chunks_[chunk_index].used_bytes) {
    chunk_index++;
    offset = 0;
  }
  return record_of(chunks_[chunk_index].bytes.get() + offset)->timestamp_ns;
}

void KeyIndex::evict_through(std::int64_t cutoff_ns) {
  // Each pass forgets one key or passes a replaced record, which precedes
  // its key's indexed one (or, refused as a Repeat, follows it and is passed
  // by a later eviction): count_ bounds the loop.
  while (count_ > 0) {
    drop_spent_chunks();
    const std::byte* record = chunks_.front().bytes.get() + front_offset_bytes_;
    if (record_of(record)->timestamp_ns > cutoff_ns) break;
    const std::string_view key = key_of(record);
    if (replaced(record)) {
      front_offset_bytes_ += static_cast<std::uint32_t>(record_bytes(key.size()));
      continue;
    }
    const std::uint32_t hash = hash_of(key);
    const std::uint64_t loc = front_loc();
    Slot* slot = index_.find(hash, [&](const Slot& candidate) { return loc_of(candidate) == loc; });
    TALLY_ASSERT(slot != nullptr);
    index_.erase(slot);
    front_offset_bytes_ += static_cast<std::uint32_t>(record_bytes(key.size()));
    count_--;
  }
  drop_spent_chunks();
}

void KeyIndex::drop_spent_chunks() {
  // The back chunk stays even when spent: the next key is written into it.
  while (chunks_.size() > 1 && front_offset_bytes_ == chunks_.front().used_bytes) {
    if (spare_ == nullptr) spare_ = std::move(chunks_.front().bytes);
    chunks_.pop_front();
    front_chunk_seq_++;
    front_offset_bytes_ = 0;
  }
}

std::size_t KeyIndex::memory_bytes() const {
  return (chunks_.size() + (spare_ != nullptr ? 1 : 0)) * kChunkBytes + chunks_.memory_bytes() +
         index_.memory_bytes();
}

}  // namespace tally::proj
