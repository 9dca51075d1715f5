// HoldTable: open holds and the finalized holds remembered for the
// idempotency window.
//
// Records sit in a chunked slab (they never move, so other structures can
// point at them by index) reached through an open-addressing index by
// HoldId. Open holds are also in a binary min-heap by (expires_at, id) that
// tracks each record's position, so the next expiry is O(1), finalizing is
// O(log n), and the holds due at t are found in O(due) without a scan.
// Finalized holds queue in finalization order, which is timestamp order, so
// the window forgets them from the front.
//
// Memory per hold: 64 (record) + 16 / load (index, load 0.35..3/4) + 24 while
// open (heap) or 16 while finalized (queue).
//
// Thread safety: none.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "projections/flat_table.h"
#include "projections/state.h"

namespace tally::proj {

struct HoldRecord {
  HoldId id = 0;  // 0 marks a free slab entry
  std::uint32_t subject = 0;
  std::uint32_t item = 0;
  std::int64_t qty = 0;
  std::int64_t expires_at_ns = 0;
  std::int64_t finalized_at_ns = 0;
  std::int64_t committed_qty = 0;
  std::uint32_t heap_pos = 0;  // while open: its index in the expiry heap
  HoldState state = HoldState::open;
  // To a cache line: in a chunk of huge pages, which begins on one, each
  // record is one line to miss, not two.
  std::array<std::uint8_t, 11> padding{};
};
static_assert(sizeof(HoldRecord) == 64);

class HoldTable {
 public:
  HoldTable() = default;
  HoldTable(const HoldTable&) = delete;
  HoldTable& operator=(const HoldTable&) = delete;

  // nullptr when the hold is neither open nor remembered.
  const HoldRecord* find(HoldId id) const;
  HoldRecord* find(HoldId id);

  // Adds an open hold. Preconditions: hold.id != 0 and is not known,
  // hold.state == open.
  void open(const HoldRecord& hold);

  // Moves an open hold to `state`, off the expiry heap, onto the queue that
  // the window forgets from. Precondition: hold is open and came from find().
  void finalize(HoldRecord* hold, HoldState state, std::int64_t at_ns, std::int64_t committed_qty);

  // Forgets the oldest finalized hold if its finalized_at_ns <= cutoff_ns
  // and returns its id; 0 when none is due. Repeat to forget every due one.
  HoldId evict_one_through(std::int64_t cutoff_ns);

  // The open hold with the smallest (expires_at, id); nullptr when none.
  const HoldRecord* first_expiring() const;

  // Visits every open hold with expires_at_ns <= t_ns, in no particular order.
  template <class Visit>
  void for_each_due(std::int64_t t_ns, const Visit& visit) const {
    visit_due_from(0, t_ns, visit);
  }

  // Visits every open hold in the expiry heap's array order: open()ing them
  // in this order into an empty table rebuilds the same heap array (each
  // arrives below a parent that sorts before it, so none moves).
  template <class Visit>
  void for_each_open(const Visit& visit) const {
    for (const ExpiryEntry& entry : heap_) visit(records_[entry.record]);
  }

  // Visits every remembered finalized hold in the window's queue order,
  // oldest first.
  template <class Visit>
  void for_each_finalized(const Visit& visit) const {
    for (std::size_t index = 0; index < finalized_.size(); index++) {
      visit(records_[finalized_[index].record]);
    }
  }

  // Adds a finalized hold at the back of the window's queue, as when it was
  // finalized (State::load). Preconditions: hold.id != 0 and is not known,
  // hold.state != open, and hold.finalized_at_ns >= that of the queue's
  // back (last_finalized_at_ns()).
  void restore_finalized(const HoldRecord& hold);
  // finalized_at_ns of the queue's back; INT64_MIN when the queue is empty.
  std::int64_t last_finalized_at_ns() const;

  // Visits every open and remembered finalized hold, in no particular order.
  template <class Visit>
  void for_each(const Visit& visit) const {
    for (std::size_t index = 0; index < records_.size(); index++) {
      if (records_[index].id != 0) visit(records_[index]);
    }
  }

  // Starts loading the index slot where find(id) begins.
  void prefetch(HoldId id) const { index_.prefetch(mix64(id)); }
  // Sizes the index for `count` holds in all (FlatTable::reserve).
  void reserve(std::size_t count) { index_.reserve(count); }

  std::size_t open_count() const { return heap_.size(); }
  std::size_t finalized_count() const { return finalized_.size(); }
  std::size_t memory_bytes() const;

  // Checks the structures against each other: index, heap order and
  // positions, queue. For check_invariants(); O(n).
  bool consistent() const;

 private:
  struct Slot {
    HoldId id = 0;
    std::uint32_t record = 0;
  };
  struct SlotPolicy {
    static bool empty(const Slot& slot) { return slot.id == 0; }
    static std::uint64_t hash(const Slot& slot) { return mix64(slot.id); }
    static constexpr std::size_t kLoadNum = 3;
    static constexpr std::size_t kLoadDen = 4;
    static constexpr std::size_t kCapacityMax = std::size_t{1} << 40;
    static constexpr int kHashBits = 64;
  };
  // The sort key is copied in so sifting compares without touching records.
  struct ExpiryEntry {
    std::int64_t expires_at_ns = 0;
    HoldId id = 0;
    std::uint32_t record = 0;
  };
  struct Finalized {
    std::int64_t at_ns = 0;
    std::uint32_t record = 0;
  };

  static bool before(const ExpiryEntry& a, const ExpiryEntry& b) {
    return a.expires_at_ns != b.expires_at_ns ? a.expires_at_ns < b.expires_at_ns : a.id < b.id;
  }

  template <class Visit>
  void visit_due_from(std::size_t pos, std::int64_t t_ns, const Visit& visit) const {
    // A heap's children never sort before their parent, so a subtree whose
    // root is not due holds nothing due. Depth is log2(open holds).
    if (pos >= heap_.size() || heap_[pos].expires_at_ns > t_ns) return;
    visit(records_[heap_[pos].record]);
    visit_due_from(2 * pos + 1, t_ns, visit);
    visit_due_from(2 * pos + 2, t_ns, visit);
  }

  // Stores the record in a free slab entry, or a new one; returns its index.
  std::uint32_t take_record(const HoldRecord& hold);
  void heap_place(std::size_t pos, const ExpiryEntry& entry);
  void sift_up(std::size_t pos);
  void sift_down(std::size_t pos);
  void heap_remove(std::size_t pos);

  // Chunks of 2 MiB, whole huge pages (ChunkedVector): the 1.4 M holds of a
  // large snapshot loaded in a quarter less time than into chunks of 224 KiB
  // on 4 KiB pages (docs/performance.md, "2026-12-08, later: the reopen's
  // holds").
  ChunkedVector<HoldRecord, 15> records_;
  std::vector<std::uint32_t> free_records_;
  ShardedTable<Slot, SlotPolicy> index_;
  std::vector<ExpiryEntry> heap_;
  RingBuffer<Finalized> finalized_;
};

}  // namespace tally::proj
