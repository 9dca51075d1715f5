#include "projections/hold_table.h"

#include <climits>

namespace tally::proj {

const HoldRecord* HoldTable::find(HoldId id) const {
  if (id == 0) return nullptr;
  const Slot* slot =
      index_.find(mix64(id), [&](const Slot& candidate) { return candidate.id == id; });
  return slot == nullptr ? nullptr : &records_[slot->record];
}

HoldRecord* HoldTable::find(HoldId id) {
  return const_cast<HoldRecord*>(std::as_const(*this).find(id));
}

std::uint32_t HoldTable::take_record(const HoldRecord& hold) {
  if (!free_records_.empty()) {
    const std::uint32_t record = free_records_.back();
    free_records_.pop_back();
    records_[record] = hold;
    return record;
  }
  TALLY_ASSERT(records_.size() < UINT32_MAX);
  const auto record = static_cast<std::uint32_t>(records_.size());
  records_.push_back(hold);
  return record;
}

void HoldTable::open(const HoldRecord& hold) {
  TALLY_ASSERT(hold.id != 0);
  TALLY_ASSERT(hold.state == HoldState::open);
  TALLY_DEBUG_ASSERT(find(hold.id) == nullptr);
  const std::uint32_t record = take_record(hold);
  index_.insert(mix64(hold.id), Slot{hold.id, record});
  heap_.push_back({});
  heap_place(heap_.size() - 1, ExpiryEntry{hold.expires_at_ns, hold.id, record});
  sift_up(heap_.size() - 1);
}

void HoldTable::finalize(HoldRecord* hold, HoldState state, std::int64_t at_ns,
                         std::int64_t committed_qty) {
  TALLY_ASSERT(hold->state == HoldState::open);
  TALLY_ASSERT(state != HoldState::open);
  TALLY_ASSERT(hold->heap_pos < heap_.size());
  const std::uint32_t record = heap_[hold->heap_pos].record;
  TALLY_ASSERT(&records_[record] == hold);
  heap_remove(hold->heap_pos);
  hold->state = state;
  hold->finalized_at_ns = at_ns;
  hold->committed_qty = committed_qty;
  finalized_.push_back(Finalized{at_ns, record});
}

void HoldTable::restore_finalized(const HoldRecord& hold) {
  TALLY_ASSERT(hold.id != 0);
  TALLY_ASSERT(hold.state != HoldState::open);
  TALLY_ASSERT(hold.finalized_at_ns >= last_finalized_at_ns());
  TALLY_DEBUG_ASSERT(find(hold.id) == nullptr);
  const std::uint32_t record = take_record(hold);
  records_[record].heap_pos = 0;
  index_.insert(mix64(hold.id), Slot{hold.id, record});
  finalized_.push_back(Finalized{hold.finalized_at_ns, record});
}

std::int64_t HoldTable::last_finalized_at_ns() const {
  return finalized_.empty() ? INT64_MIN : finalized_[finalized_.size() - 1].at_ns;
}

HoldId HoldTable::evict_one_through(std::int64_t cutoff_ns) {
  if (finalized_.empty() || finalized_.front().at_ns > cutoff_ns) return 0;
  const std::uint32_t record = finalized_.front().record;
  const HoldId id = records_[record].id;
  Slot* slot = index_.find(mix64(id), [&](const Slot& candidate) { return candidate.id == id; });
  TALLY_ASSERT(slot != nullptr);
  index_.erase(slot);
  records_[record] = HoldRecord{};
  free_records_.push_back(record);
  finalized_.pop_front();
  return id;
}

const HoldRecord* HoldTable::first_expiring() const {
  return heap_.empty() ? nullptr : &records_[heap_[0].record];
}

void HoldTable::heap_place(std::size_t pos, const ExpiryEntry& entry) {
  heap_[pos] = entry;
  records_[entry.record].heap_pos = static_cast<std::uint32_t>(pos);
}

void HoldTable::sift_up(std::size_t pos) {
  const ExpiryEntry entry = heap_[pos];
  while (pos > 0) {
    const std::size_t parent = (pos - 1) / 2;
    if (!before(entry, heap_[parent])) break;
    heap_place(pos, heap_[parent]);
    pos = parent;
  }
  heap_place(pos, entry);
}

void HoldTable::sift_down(std::size_t pos) {
  const ExpiryEntry entry = heap_[pos];
  const std::size_t size = heap_.size();
  while (true) {
    std::size_t child = 2 * pos + 1;
    if (child >= size) break;
    if (child + 1 < size && before(heap_[child + 1], heap_[child])) child++;
    if (!before(heap_[child], entry)) break;
    heap_place(pos, heap_[child]);
    pos = child;
  }
  heap_place(pos, entry);
}

void HoldTable::heap_remove(std::size_t pos) {
  const std::size_t last = heap_.size() - 1;
  if (pos == last) {
    heap_.pop_back();
    return;
  }
  heap_place(pos, heap_[last]);
  heap_.pop_back();
  // The entry moved in from the end may belong above or below its new place.
  if (pos > 0 && before(heap_[pos], heap_[(pos - 1) / 2])) {
    sift_up(pos);
  } else {
    sift_down(pos);
  }
}

std::size_t HoldTable::memory_bytes() const {
  return records_.memory_bytes() + free_records_.capacity() * sizeof(std::uint32_t) +
         index_.memory_bytes() + heap_.capacity() * sizeof(ExpiryEntry) +
         finalized_.memory_bytes();
}

bool HoldTable::consistent() const {
  if (index_.size() != heap_.size() + finalized_.size()) return false;
  for (std::size_t pos = 0; pos < heap_.size(); pos++) {
    const HoldRecord& hold = records_[heap_[pos].record];
    if (hold.state != HoldState::open || hold.heap_pos != pos) return false;
    if (hold.id != heap_[pos].id || hold.expires_at_ns != heap_[pos].expires_at_ns) return false;
    if (pos > 0 && before(heap_[pos], heap_[(pos - 1) / 2])) return false;
    if (find(hold.id) != &hold) return false;
  }
  for (std::size_t index = 0; index < finalized_.size(); index++) {
    const HoldRecord& hold = records_[finalized_[index].record];
    if (hold.state == HoldState::open || hold.finalized_at_ns != finalized_[index].at_ns)
      return false;
    if (find(hold.id) != &hold) return false;
  }
  return true;
}

}  // namespace tally::proj
