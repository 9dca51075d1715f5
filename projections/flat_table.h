// Containers for the projection's hot path: an open-addressing hash table,
// a vector that grows in fixed chunks, and a FIFO ring. They exist so apply()
// costs a few cache lines and no allocation in the steady state, and so the
// bytes per entry are known (docs/performance.md).
//
// Thread safety: none; they belong to one State.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "log/hash.h"
#include "log/status.h"

namespace tally::proj {

// splitmix64's finalizer: every input bit reaches every output bit, so the
// low bits used as a table index are well spread even for sequential ids.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

inline std::uint64_t hash_bytes(std::string_view bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

// Starts loading the cache line at `at`, so that several independent
// lookups can wait on memory at the same time.
inline void prefetch_line(const void* at) {
  __builtin_prefetch(at);
  // GCC (12, -O3) may find a function whose only effect is a prefetch
  // free of side effects and delete calls to it before inlining them;
  // replay lost its hold prefetch that way. This empty asm is a
  // side effect it must keep, and costs no instruction.
  asm volatile("" : : "r"(at));
}

// Transparent huge pages are this size on x86-64 (and on arm64 with 4 KiB
// pages).
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

// `bytes` rounded up to whole huge pages.
constexpr std::size_t huge_pages_bytes(std::size_t bytes) {
  return (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
}

// huge_pages_bytes(bytes) of zeros in a mapping of their own, aligned to a
// huge page and advised to use them (a hint: where the system does not
// allow them, this changes nothing). Unmapped by unmap_huge_pages(bytes).
inline std::byte* map_huge_pages(std::size_t bytes) {
  TALLY_ASSERT(bytes > 0);
  const std::size_t mapped_bytes = huge_pages_bytes(bytes);
  // Mapped one huge page over and trimmed to a huge page's alignment.
  void* mapped = ::mmap(nullptr, mapped_bytes + kHugePageBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<std::uintptr_t>(mapped);
  const std::uintptr_t aligned = (start + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (aligned > start) ::munmap(mapped, aligned - start);
  const std::uintptr_t end = start + mapped_bytes + kHugePageBytes;
  if (end > aligned + mapped_bytes) {
    ::munmap(reinterpret_cast<void*>(aligned + mapped_bytes), end - aligned - mapped_bytes);
  }
  auto* memory = reinterpret_cast<std::byte*>(aligned);
  (void)::madvise(memory, mapped_bytes, MADV_HUGEPAGE);
  return memory;
}

inline void unmap_huge_pages(std::byte* memory, std::size_t bytes) {
  ::munmap(memory, huge_pages_bytes(bytes));
}

// Faults the whole pages of [memory, memory + bytes) in, writable, by one
// call (MADV_POPULATE_WRITE) instead of a trap per page as they are
// touched: a virtual machine can take microseconds per trap. A hint: where
// the kernel cannot, the pages fault in as they are touched.
inline void populate(std::byte* memory, std::size_t bytes) {
#ifdef MADV_POPULATE_WRITE  // Linux 5.14
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto start = reinterpret_cast<std::uintptr_t>(memory);
  const std::uintptr_t begin = (start + page - 1) & ~(page - 1);
  const std::uintptr_t end = (start + bytes) & ~(page - 1);
  if (end > begin) {
    (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
  }
#else
  (void)memory;
  (void)bytes;
#endif
}

// Frees a chunk as new_arena_chunk made it.
class ArenaChunkFree {
 public:
  ArenaChunkFree() = default;
  explicit ArenaChunkFree(std::size_t mapped_bytes) : mapped_bytes_(mapped_bytes) {}
  void operator()(std::byte* bytes) const {
    if (mapped_bytes_ == 0) {
      delete[] bytes;
    } else {
      unmap_huge_pages(bytes, mapped_bytes_);
    }
  }

 private:
  std::size_t mapped_bytes_ = 0;  // 0: the chunk is from the heap
};
using ArenaChunk = std::unique_ptr<std::byte[], ArenaChunkFree>;

// When new memory's pages are faulted in: as they are touched (an arena
// that may stay small; a table sized ahead for a thread with time to spare
// to fill), or all at once.
enum class PageFill { lazy, now };

// A chunk of an arena that fills front to back, uninitialized.
//
// PageFill::now faults its pages in at once (populate()): loading a large
// snapshot fills hundreds of thousands of pages. A chunk of whole huge
// pages then gets a mapping of its own (map_huge_pages): a fault and a TLB
// entry per 2 MiB. For the key arena that took about 5% off a replay
// (docs/performance.md, "events read in place").
inline ArenaChunk new_arena_chunk(std::size_t bytes, PageFill fill) {
  if (fill == PageFill::lazy) return ArenaChunk(new std::byte[bytes]);
  ArenaChunk chunk;
  if (bytes % kHugePageBytes == 0) {
    chunk = ArenaChunk(map_huge_pages(bytes), ArenaChunkFree(bytes));
  } else {
    chunk = ArenaChunk(new std::byte[bytes]);
  }
  populate(chunk.get(), bytes);
  return chunk;
}

// A table's slots, every one zero bytes at first: the FlatTable's Policy
// must read zero bytes as an empty slot.
//
// Tables are probed at random, so on 4 KiB pages nearly every lookup into
// one much larger than the TLB's reach (a few MiB) misses it: an array of
// kOwnMappingBytesMin or more gets its own mapping, advised to use
// transparent huge pages (where the system allows them; otherwise this
// changes nothing). A ShardedTable is 16 such arrays probed together, so
// what the TLB must reach is 16 times the array. The threshold is three
// quarters of a huge page: such an array takes whole huge pages, at most a
// third more than its size, but its pages are faulted in one trap each
// instead of 512, and on a virtual machine a trap can take 10 µs (a tenth
// of a replay went to faulting in arrays of 1.5 MiB: docs/performance.md,
// "2026-12-06, later: replay's threads waiting on each other"). Smaller
// arrays stay on the heap, so that a table growing from small does not pay
// a mapping at every doubling.
//
// A new mapping reads as zeros already, so it is not cleared again (a
// std::vector of value-initialized slots wrote every page twice); its pages
// are faulted in writable at once (populate()). Left to fault as the table
// fills, the lookup before each insert would map the shared zero page, and
// the insert would fault again to replace it, flushing the TLB of every
// thread: slower than clearing twice.
template <class Slot>
class SlotArray {
  static_assert(std::is_trivially_copyable_v<Slot>);
  static_assert(std::is_trivially_destructible_v<Slot>);
  static_assert(alignof(Slot) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);

 public:
  static constexpr std::size_t kOwnMappingBytesMin = kHugePageBytes / 4 * 3;

  SlotArray() = default;
  // PageFill::lazy leaves a mapping of its own to fault in as it is
  // touched: on huge pages, the two faults above cost two traps per 2 MiB,
  // on whichever thread first touches them (where the system gives no huge
  // pages, two per 4 KiB page).
  explicit SlotArray(std::size_t count, PageFill fill = PageFill::now) : count_(count) {
    if (count == 0) return;
    const std::size_t bytes = count * sizeof(Slot);
    void* memory = nullptr;
    if (bytes < kOwnMappingBytesMin) {
      // Cleared by writing, for the zero-page reason above. Not malloc and
      // memset, which the compiler may turn into a calloc that leaves
      // fresh memory unwritten.
      memory = ::operator new(bytes);
      std::memset(memory, 0, bytes);
    } else {
      std::byte* mapped = map_huge_pages(bytes);
      if (fill == PageFill::now) populate(mapped, bytes);
      memory = mapped;
    }
    // Slots are trivially copyable: their lifetimes begin implicitly in
    // memory from operator new; a mapping is taken to do the same.
    slots_ = static_cast<Slot*>(memory);
  }
  SlotArray(SlotArray&& other) noexcept
      : slots_(std::exchange(other.slots_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  SlotArray& operator=(SlotArray&& other) noexcept {
    SlotArray(std::move(other)).swap(*this);
    return *this;
  }
  ~SlotArray() {
    if (slots_ == nullptr) return;
    const std::size_t bytes = count_ * sizeof(Slot);
    if (bytes < kOwnMappingBytesMin) {
      ::operator delete(slots_);
    } else {
      unmap_huge_pages(reinterpret_cast<std::byte*>(slots_), bytes);
    }
  }

  void swap(SlotArray& other) noexcept {
    std::swap(slots_, other.slots_);
    std::swap(count_, other.count_);
  }

  bool empty() const { return count_ == 0; }
  std::size_t size() const { return count_; }
  // What it holds of memory: a mapping of its own is whole huge pages.
  std::size_t memory_bytes() const {
    const std::size_t bytes = count_ * sizeof(Slot);
    return bytes < kOwnMappingBytesMin ? bytes : huge_pages_bytes(bytes);
  }
  Slot* data() { return slots_; }
  const Slot* data() const { return slots_; }
  Slot& operator[](std::size_t index) { return slots_[index]; }
  const Slot& operator[](std::size_t index) const { return slots_[index]; }
  const Slot* begin() const { return slots_; }
  const Slot* end() const { return slots_ + count_; }

 private:
  Slot* slots_ = nullptr;
  std::size_t count_ = 0;
};

// Open addressing with linear probing and backward-shift deletion (no
// tombstones, so lookups never slow down as entries come and go).
//
// Slot is a trivially copyable struct whose value-initialized form, and
// zero bytes (SlotArray), are the empty slot. Policy provides:
//   static bool empty(const Slot&);
//   static std::uint64_t hash(const Slot&);   // the hash the slot was inserted with
//   static constexpr std::size_t kLoadNum, kLoadDen;  // grow above this load
//   static constexpr std::size_t kCapacityMax;
//   static constexpr int kHashBits;  // 32 or 64: how wide hash() is (ShardedTable)
// Lookups pass the hash and a predicate, so a slot may hold a key that lives
// elsewhere (an arena) and only a tag of it inline.
//
// Pointers to slots stay valid until the next insert or erase.
template <class Slot, class Policy>
class FlatTable {
 public:
  static constexpr std::size_t kCapacityMin = 16;
  static_assert(Policy::kLoadNum < Policy::kLoadDen);
  static_assert(std::has_single_bit(Policy::kCapacityMax));
  static_assert(kCapacityMin % Policy::kLoadDen == 0);

  FlatTable() = default;
  // A table moved from is empty (its stagger stays).
  FlatTable(FlatTable&& other) noexcept { *this = std::move(other); }
  FlatTable& operator=(FlatTable&& other) noexcept {
    slots_ = std::move(other.slots_);  // leaves other's empty
    mask_ = std::exchange(other.mask_, 0);
    size_ = std::exchange(other.size_, 0);
    stagger_ = other.stagger_;
    grow_above_ = std::exchange(other.grow_above_, 0);
    return *this;
  }

  // set_stagger(s) makes the table grow at (1 - s/kStaggerDen) times the
  // Policy's load, for s in [0, kStaggerMax].
  static constexpr std::size_t kStaggerDen = 256;
  static constexpr std::size_t kStaggerMax = 15;
  void set_stagger(std::size_t stagger) {
    TALLY_ASSERT(stagger <= kStaggerMax);
    stagger_ = stagger;
    if (!slots_.empty()) grow_above_ = load_max(slots_.size());
  }

  std::size_t size() const { return size_; }
  std::size_t capacity() const { return slots_.size(); }
  std::size_t memory_bytes() const { return slots_.memory_bytes(); }
  // The slot where a lookup of `hash` begins (0 while the table is empty).
  std::size_t home(std::uint64_t hash) const { return hash & mask_; }

  template <class Match>
  const Slot* find(std::uint64_t hash, const Match& match) const {
    if (slots_.empty()) return nullptr;
    for (std::size_t index = hash & mask_;; index = (index + 1) & mask_) {
      const Slot& slot = slots_[index];
      if (Policy::empty(slot)) return nullptr;
      if (match(slot)) return &slot;
    }
  }

  template <class Match>
  Slot* find(std::uint64_t hash, const Match& match) {
    return const_cast<Slot*>(std::as_const(*this).find(hash, match));
  }

  // Starts loading the cache line where a lookup of `hash` begins, so
  // several independent lookups can wait on memory at the same time.
  void prefetch(std::uint64_t hash) const {
    if (slots_.empty()) return;
    prefetch_line(&slots_[hash & mask_]);
  }

  // Makes room for `count` entries in all, so that inserting up to that
  // many moves nothing (a loader that knows its count rehashes once).
  // `fill`: SlotArray's.
  void reserve(std::size_t count, PageFill fill = PageFill::now) {
    std::size_t capacity = std::max(slots_.size(), kCapacityMin);
    while (count > load_max(capacity) && capacity < Policy::kCapacityMax) capacity *= 2;
    if (capacity > slots_.size()) rehash(capacity, fill);
  }

  // Inserts make() unless a slot matches, in one probe: nullptr when one
  // does (make() is then not called). May move every slot.
  template <class Match, class Make>
  Slot* insert_unique(std::uint64_t hash, const Match& match, const Make& make) {
    if (size_ + 1 > grow_above_) grow();
    std::size_t index = hash & mask_;
    for (; !Policy::empty(slots_[index]); index = (index + 1) & mask_) {
      if (match(slots_[index])) return nullptr;
    }
    slots_[index] = make();
    TALLY_ASSERT(!Policy::empty(slots_[index]));
    size_++;
    return &slots_[index];
  }

  // Precondition: no slot matches `slot`'s key. May move every slot.
  Slot* insert(std::uint64_t hash, const Slot& slot) {
    return insert_unique(hash, [](const Slot&) { return false; }, [&] { return slot; });
  }

  // Removes *slot. Later members of its cluster move back into the hole when
  // their home allows, so every entry stays reachable from its home slot.
  void erase(Slot* slot) {
    TALLY_ASSERT(slot >= slots_.data());
    TALLY_ASSERT(slot < slots_.data() + slots_.size());
    std::size_t hole = static_cast<std::size_t>(slot - slots_.data());
    for (std::size_t index = (hole + 1) & mask_; !Policy::empty(slots_[index]);
         index = (index + 1) & mask_) {
      const std::size_t home = Policy::hash(slots_[index]) & mask_;
      // The entry may fill the hole when the hole lies on its probe path,
      // i.e. between its home and where it sits now (cyclically).
      if (((index - home) & mask_) >= ((index - hole) & mask_)) {
        slots_[hole] = slots_[index];
        hole = index;
      }
    }
    slots_[hole] = Slot{};
    size_--;
  }

  template <class Visit>
  void for_each(const Visit& visit) const {
    for (const Slot& slot : slots_) {
      if (!Policy::empty(slot)) visit(slot);
    }
  }

 private:
  // The most entries `capacity` slots hold before the table grows.
  std::size_t load_max(std::size_t capacity) const {
    const std::size_t at_policy_load = capacity / Policy::kLoadDen * Policy::kLoadNum;
    return at_policy_load - at_policy_load * stagger_ / kStaggerDen;
  }
  void grow() { rehash(slots_.empty() ? kCapacityMin : slots_.size() * 2); }

  void rehash(std::size_t capacity, PageFill fill = PageFill::now) {
    TALLY_ASSERT(capacity <= Policy::kCapacityMax);
    SlotArray<Slot> old(capacity, fill);
    old.swap(slots_);
    // Zero bytes are an empty slot. Checked on a copy: reading the new
    // array would fault its first page in, which PageFill::lazy leaves to
    // the thread that fills it.
    TALLY_ASSERT(Policy::empty(std::bit_cast<Slot>(std::array<std::byte, sizeof(Slot)>{})));
    mask_ = capacity - 1;
    grow_above_ = load_max(capacity);
    for (const Slot& slot : old) {
      if (Policy::empty(slot)) continue;
      std::size_t index = Policy::hash(slot) & mask_;
      while (!Policy::empty(slots_[index])) index = (index + 1) & mask_;
      slots_[index] = slot;
    }
  }

  SlotArray<Slot> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
  std::size_t stagger_ = 0;
  std::size_t grow_above_ = 0;  // load_max(capacity()); 0 while empty
};

// A FlatTable split into 2^kShardBits independent tables by the top bits of
// the hash (Policy::kHashBits says how wide hashes are). Each shard grows on
// its own, so one growth step copies 1/16 of the entries: memory peaks at
// about 1.03x the table while growing instead of 1.5x, and no single insert
// pays for rehashing everything. Policy::kCapacityMax is per shard.
//
// Shards fill at the same pace, so at one load they would all grow within
// about 2% of the table's inserts: on the writer, the 16 steps of the key
// index at a million keys came close enough to stall it for 27 and 59 ms
// in 2 of 6 runs (docs/performance.md, "growth steps apart"). Each shard
// grows at its own load instead, up to 6% lower than the Policy's
// (FlatTable::set_stagger), so the steps come apart over the last 6% of
// inserts before the table's size doubles. The load just after a step is
// then at least 0.47 times the Policy's, not 0.5.
template <class Slot, class Policy, int kShardBits = 4>
class ShardedTable {
 public:
  static constexpr std::size_t kShards = std::size_t{1} << kShardBits;
  static_assert(Policy::kHashBits == 32 || Policy::kHashBits == 64);

  ShardedTable() {
    using Shard = FlatTable<Slot, Policy>;
    for (std::size_t shard = 0; shard < kShards; shard++) {
      shards_[shard].set_stagger(shard * (Shard::kStaggerMax + 1) / kShards);
    }
  }

  std::size_t size() const { return size_; }
  std::size_t memory_bytes() const {
    std::size_t total = 0;
    for (const auto& shard : shards_) total += shard.memory_bytes();
    return total;
  }

  template <class Match>
  const Slot* find(std::uint64_t hash, const Match& match) const {
    return shards_[shard_of(hash)].find(hash, match);
  }
  template <class Match>
  Slot* find(std::uint64_t hash, const Match& match) {
    return shards_[shard_of(hash)].find(hash, match);
  }
  void prefetch(std::uint64_t hash) const { shards_[shard_of(hash)].prefetch(hash); }
  // Where the slot of `hash` lies, as a number: the shard, then the slot's
  // place in it scaled to kHomeBits bits whatever the shard's capacity, so
  // that the top bits say where in the whole table. Inserting entries in
  // the increasing order of this fills each shard front to back (while no
  // insert grows a shard). Fits in kSlotOrderBits bits.
  std::uint64_t slot_order(std::uint64_t hash) const {
    const std::size_t shard = shard_of(hash);
    const auto& table = shards_[shard];
    const int scale = table.capacity() == 0 ? 0 : kHomeBits - std::countr_zero(table.capacity());
    return (std::uint64_t{shard} << kHomeBits) | (std::uint64_t{table.home(hash)} << scale);
  }
  static constexpr int kSlotOrderBits = kShardBits + std::countr_zero(Policy::kCapacityMax);

  // As FlatTable::reserve, for hashes spread evenly over the shards. A
  // shard's count is then binomial: n / kShards on average, with a standard
  // deviation under sqrt(n / kShards). Each shard is sized for four
  // deviations more, and a 64th for hashes less even than random. A wider
  // margin costs: with the staggered growth points taking up to 6% off a
  // shard's load, an eighth to spare doubled most shards of a key index
  // loaded with 11.8 M keys when a replay then asked room for 1 M more.
  void reserve(std::size_t count, PageFill fill = PageFill::now) {
    const std::size_t mean = count / kShards;
    const auto deviation = static_cast<std::size_t>(std::sqrt(static_cast<double>(mean)));
    for (auto& shard : shards_) shard.reserve(mean + mean / 64 + 4 * deviation + 16, fill);
  }

  // As FlatTable::insert_unique; moves only slots of the same shard.
  template <class Match, class Make>
  Slot* insert_unique(std::uint64_t hash, const Match& match, const Make& make) {
    Slot* inserted = shards_[shard_of(hash)].insert_unique(hash, match, make);
    if (inserted != nullptr) size_++;
    return inserted;
  }

  // As FlatTable::insert; moves only slots of the same shard.
  Slot* insert(std::uint64_t hash, const Slot& slot) {
    return insert_unique(hash, [](const Slot&) { return false; }, [&] { return slot; });
  }
  void erase(Slot* slot) {
    shards_[shard_of(Policy::hash(*slot))].erase(slot);
    size_--;
  }

  template <class Visit>
  void for_each(const Visit& visit) const {
    for (const auto& shard : shards_) shard.for_each(visit);
  }

 private:
  static constexpr int kHomeBits = std::countr_zero(Policy::kCapacityMax);

  static std::size_t shard_of(std::uint64_t hash) {
    return static_cast<std::size_t>(hash >> (Policy::kHashBits - kShardBits)) & (kShards - 1);
  }

  std::array<FlatTable<Slot, Policy>, kShards> shards_;
  std::size_t size_ = 0;
};

// A slot of an index over records kept in an arena (NameTable's names, the
// history's pairs): the low 32 bits of the key's hash, and the record's
// "loc", its place in the arena plus 1 (0: the slot is empty). A lookup
// reads the slot, then the record to compare the key with.
struct ArenaIndexSlot {
  std::uint32_t hash = 0;
  std::uint32_t loc = 0;
};
struct ArenaIndexPolicy {
  static bool empty(const ArenaIndexSlot& slot) { return slot.loc == 0; }
  static std::uint64_t hash(const ArenaIndexSlot& slot) { return slot.hash; }
  static constexpr std::size_t kLoadNum = 3;
  static constexpr std::size_t kLoadDen = 4;
  // Per table; a ShardedTable's shard takes the hash's top 4 bits, home
  // slots the low 28.
  static constexpr std::size_t kCapacityMax = std::size_t{1} << 28;
  static constexpr int kHashBits = 32;
};

// A vector that grows by whole chunks: elements never move (pointers stay
// valid) and growth never copies or briefly doubles the memory. Chunks are
// not cleared: an element is constructed when it is pushed. The first chunk
// is faulted in as it fills, so that a vector which stays small takes only
// the pages it touches; each later one at once (new_arena_chunk).
template <class T, int kChunkShift = 12>
class ChunkedVector {
  static_assert(std::is_trivially_destructible_v<T>);
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);

 public:
  static constexpr std::size_t kChunkElems = std::size_t{1} << kChunkShift;

  std::size_t size() const { return size_; }
  std::size_t memory_bytes() const {
    return chunks_.size() * kChunkElems * sizeof(T) +
           chunks_.capacity() * sizeof(ArenaChunk);
  }

  T& operator[](std::size_t index) {
    TALLY_DEBUG_ASSERT(index < size_);
    return chunk(index >> kChunkShift)[index & (kChunkElems - 1)];
  }
  const T& operator[](std::size_t index) const {
    TALLY_DEBUG_ASSERT(index < size_);
    return chunk(index >> kChunkShift)[index & (kChunkElems - 1)];
  }

  void push_back(const T& value) {
    if (size_ == chunks_.size() * kChunkElems) {
      const PageFill fill = chunks_.empty() ? PageFill::lazy : PageFill::now;
      chunks_.push_back(new_arena_chunk(kChunkElems * sizeof(T), fill));
    }
    std::byte* bytes = chunks_[size_ >> kChunkShift].get();
    std::construct_at(reinterpret_cast<T*>(bytes) + (size_ & (kChunkElems - 1)), value);
    size_++;
  }

 private:
  T* chunk(std::size_t index) const {
    return std::launder(reinterpret_cast<T*>(chunks_[index].get()));
  }

  // Elements are trivially destructible: freeing a chunk frees its bytes.
  std::vector<ArenaChunk> chunks_;
  std::size_t size_ = 0;
};

// A FIFO in a power-of-two ring that doubles when full: pushing and popping
// in the steady state allocate nothing (a std::deque allocates a block every
// few hundred bytes).
template <class T>
class RingBuffer {
 public:
  static constexpr std::size_t kCapacityMin = 16;

  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }
  std::size_t memory_bytes() const { return slots_.capacity() * sizeof(T); }

  T& operator[](std::size_t index) {
    TALLY_DEBUG_ASSERT(index < size_);
    return slots_[(head_ + index) & (slots_.size() - 1)];
  }
  const T& operator[](std::size_t index) const {
    TALLY_DEBUG_ASSERT(index < size_);
    return slots_[(head_ + index) & (slots_.size() - 1)];
  }
  T& front() { return (*this)[0]; }
  const T& front() const { return (*this)[0]; }
  T& back() { return (*this)[size_ - 1]; }

  void push_back(T value) {
    if (size_ == slots_.size()) grow();
    slots_[(head_ + size_) & (slots_.size() - 1)] = std::move(value);
    size_++;
  }

  void pop_front() {
    TALLY_ASSERT(size_ > 0);
    slots_[head_] = T{};  // drop what it owns now, not when overwritten
    head_ = (head_ + 1) & (slots_.size() - 1);
    size_--;
  }

 private:
  void grow() {
    const std::size_t capacity = slots_.empty() ? kCapacityMin : slots_.size() * 2;
    std::vector<T> next(capacity);
    for (std::size_t index = 0; index < size_; index++) next[index] = std::move((*this)[index]);
    slots_.swap(next);
    head_ = 0;
  }

  std::vector<T> slots_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
};

}  // namespace tally::proj
