// State: invariants, digest and counts; FlowTotals.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "log/hash.h"

#include "projections/state.h"
#include "projections/state_digest.h"
#include "projections/state_impl.h"

namespace tally::proj {

namespace {

Status invariant_broken(const std::string& what) {
  return Status(ErrorCode::corrupt, "invariant: " + what);
}

std::string int128_text(Int128 value) {
  if (value == 0) return "0";
  const bool negative = value < 0;
  std::string digits;
  // An Int128 has at most 40 digits; each pass removes one.
  while (value != 0) {
    const int digit = static_cast<int>(value % 10);
    digits.push_back(static_cast<char>('0' + (negative ? -digit : digit)));
    value /= 10;
  }
  if (negative) digits.push_back('-');
  std::reverse(digits.begin(), digits.end());
  return digits;
}

constexpr std::uint32_t kDigestFormat = 2;  // state_digest.h gives the encoding
constexpr std::uint64_t kBalanceSeed = 1;
constexpr std::uint64_t kHoldSeed = 2;
constexpr std::uint64_t kKeySeed = 3;
constexpr std::uint64_t kLongHoldKeySeed = 4;

// One entry's canonical encoding (state_digest.h).
class Encoder {
 public:
  // Two names and a handful of integers: 2 * (4 + 255) + 64 bytes at most.
  static constexpr std::size_t kBytesMax = 2 * (4 + kNameBytesMax) + 64;

  void u8(std::uint8_t value) { put(&value, 1); }
  void u32(std::uint32_t value) {
    std::array<std::uint8_t, 4> bytes{};
    for (std::size_t index = 0; index < bytes.size(); index++) {
      bytes[index] = static_cast<std::uint8_t>(value >> (8 * index));
    }
    put(bytes.data(), bytes.size());
  }
  void u64(std::uint64_t value) {
    std::array<std::uint8_t, 8> bytes{};
    for (std::size_t index = 0; index < bytes.size(); index++) {
      bytes[index] = static_cast<std::uint8_t>(value >> (8 * index));
    }
    put(bytes.data(), bytes.size());
  }
  void i64(std::int64_t value) { u64(static_cast<std::uint64_t>(value)); }
  void str(std::string_view text) {
    u32(static_cast<std::uint32_t>(text.size()));
    put(text.data(), text.size());
  }
  std::uint64_t hash(std::uint64_t seed) const {
    return XXH3_64bits_withSeed(bytes_.data(), size_, seed);
  }

 private:
  void put(const void* data, std::size_t size) {
    TALLY_ASSERT(size_ + size <= bytes_.size());
    std::memcpy(bytes_.data() + size_, data, size);
    size_ += size;
  }
  std::array<std::uint8_t, kBytesMax> bytes_;  // only the first size_ are hashed
  std::size_t size_ = 0;
};

}  // namespace

// ---------------------------------------------------------------- invariants

std::string State::Impl::pair_name(std::uint64_t pair) const {
  std::string out = quoted(subjects.view(subject_of(pair)));
  out.push_back(' ');
  out.append(quoted(items.view(item_of(pair))));
  return out;
}

Status State::Impl::check_balances() const {
  Status status;
  balances.for_each([&](const BalanceSlot& slot) {
    if (!status.ok()) return;
    if (slot.available < 0) status = invariant_broken(pair_name(slot.pair) + " available < 0");
    if (slot.held < 0) status = invariant_broken(pair_name(slot.pair) + " held < 0");
    if (slot.available == 0 && slot.held == 0) {
      status = invariant_broken(pair_name(slot.pair) + " stored with a zero balance");
    }
  });
  TALLY_TRY(status);
  std::size_t linked = 0;
  for (std::uint32_t subject = 1; subject < subject_heads.size(); subject++) {
    std::uint32_t prev = 0;
    for (std::uint32_t item = subject_heads[subject]; item != 0; linked++) {
      const BalanceSlot* slot = find_balance(subject, item);
      if (slot == nullptr || slot->prev_item != prev || linked >= balances.size()) {
        return invariant_broken("item list of subject '" +
                                std::string(subjects.view(subject)) + "' is broken");
      }
      prev = item;
      item = slot->next_item;
    }
  }
  if (linked != balances.size()) return invariant_broken("item lists miss stored pairs");
  return Status();
}

Status State::Impl::check_holds() const {
  if (!holds.consistent()) return invariant_broken("hold index, heap or queue disagree");
  TALLY_TRY(check_held());
  return check_long_hold_keys();
}

Status State::Impl::check_held() const {
  std::vector<std::pair<std::uint64_t, std::int64_t>> open;
  holds.for_each_open([&](const HoldRecord& hold) {
    open.emplace_back(pair_of(hold.subject, hold.item), hold.qty);
  });
  std::sort(open.begin(), open.end());
  std::size_t pairs_with_holds = 0;
  for (std::size_t index = 0; index < open.size();) {
    const std::uint64_t pair = open[index].first;
    Int128 sum = 0;
    for (; index < open.size() && open[index].first == pair; index++) sum += open[index].second;
    pairs_with_holds++;
    const BalanceSlot* slot = find_balance(subject_of(pair), item_of(pair));
    const Int128 held = slot == nullptr ? 0 : slot->held;
    if (held != sum) {
      return invariant_broken(pair_name(pair) + " held " + int128_text(held) +
                              " but its open holds sum to " + int128_text(sum));
    }
  }
  std::size_t pairs_held = 0;
  balances.for_each([&](const BalanceSlot& slot) { pairs_held += slot.held != 0 ? 1 : 0; });
  if (pairs_held != pairs_with_holds) return invariant_broken("held without open holds");
  return Status();
}

Status State::Impl::check_long_hold_keys() const {
  for (const auto& [id, key] : long_hold_keys.entries()) {
    const std::string hold = "hold " + std::to_string(id);
    if (options.idempotency_window_ns == 0) {
      return invariant_broken(hold + " keeps a key, with no window");
    }
    if (log::hold_id_seq(id) != id) return invariant_broken(hold + ", of a batch, keeps a key");
    if (holds.find(id) == nullptr) return invariant_broken("the key of " + hold + " outlives it");
    // While the key index has the key, it names the same hold.
    const KeyRecord* record = keys_waiting.empty() ? keys.find(key) : nullptr;
    if (record != nullptr && record->seq != id) {
      return invariant_broken(hold + " keeps a key the key index gives seq " +
                              std::to_string(record->seq));
    }
  }
  return Status();
}

Status State::check_invariants() const {
  TALLY_TRY(impl_->check_balances());
  return impl_->check_holds();
}

// ---------------------------------------------------------------- digest

void StateDigest::balance(std::string_view subject, std::string_view item,
                          std::int64_t available, std::int64_t held) {
  Encoder encoder;
  encoder.str(subject);
  encoder.str(item);
  encoder.i64(available);
  encoder.i64(held);
  balances_.count++;
  balances_.sum += encoder.hash(kBalanceSeed);  // unsigned: wraps mod 2^64
}

void StateDigest::hold(const HoldRecord& hold, std::string_view subject, std::string_view item) {
  Encoder encoder;
  encoder.u64(hold.id);
  encoder.str(subject);
  encoder.str(item);
  encoder.i64(hold.qty);
  encoder.i64(hold.expires_at_ns);
  encoder.u8(static_cast<std::uint8_t>(hold.state));
  encoder.i64(hold.finalized_at_ns);
  encoder.i64(hold.committed_qty);
  holds_.count++;
  holds_.sum += encoder.hash(kHoldSeed);
}

void StateDigest::key(std::string_view key, const KeyRecord& record) {
  Encoder encoder;
  encoder.str(key);
  encoder.u64(record.fingerprint);
  encoder.u64(record.seq);
  encoder.i64(record.timestamp_ns);
  encoder.u8(static_cast<std::uint8_t>(record.reason));
  encoder.u32(record.failed_index);
  keys_.count++;
  keys_.sum += encoder.hash(kKeySeed);
}

void StateDigest::long_hold_key(HoldId id, std::string_view key) {
  Encoder encoder;
  encoder.u64(id);
  encoder.str(key);
  long_hold_keys_.count++;
  long_hold_keys_.sum += encoder.hash(kLongHoldKeySeed);
}

void StateDigest::add(const StateDigest& other) {
  for (auto [mine, theirs] : {std::pair{&balances_, &other.balances_}, std::pair{&holds_, &other.holds_},
                              std::pair{&keys_, &other.keys_},
                              std::pair{&long_hold_keys_, &other.long_hold_keys_}}) {
    mine->count += theirs->count;
    mine->sum += theirs->sum;
  }
}

std::uint64_t StateDigest::finish(std::uint64_t last_seq, std::int64_t last_timestamp_ns) const {
  Encoder total;
  total.u32(kDigestFormat);
  for (const TableSum& table : {balances_, holds_, keys_, long_hold_keys_}) {
    total.u64(table.count);
    total.u64(table.sum);
  }
  total.u64(last_seq);
  total.i64(last_timestamp_ns);
  return total.hash(0);
}

std::uint64_t State::digest() const {
  const Impl& impl = *impl_;
  TALLY_ASSERT(impl.keys_waiting.empty());
  StateDigest digest;
  impl.balances.for_each([&](const BalanceSlot& slot) {
    digest.balance(impl.subjects.view(subject_of(slot.pair)), impl.items.view(item_of(slot.pair)),
                   slot.available, slot.held);
  });
  impl.holds.for_each([&](const HoldRecord& hold) {
    digest.hold(hold, impl.subjects.view(hold.subject), impl.items.view(hold.item));
  });
  impl.keys.for_each([&](std::string_view key, const KeyRecord& record) { digest.key(key, record); });
  for (const auto& [id, key] : impl.long_hold_keys.entries()) digest.long_hold_key(id, key);
  return digest.finish(impl.last_seq, impl.last_timestamp_ns);
}

StateCounts State::counts() const {
  TALLY_ASSERT(impl_->keys_waiting.empty());
  StateCounts counts;
  counts.balances = impl_->balances.size();
  counts.open_holds = impl_->holds.open_count();
  counts.finalized_holds = impl_->holds.finalized_count();
  counts.keys = impl_->keys.size();
  counts.subjects = impl_->subjects.size();
  counts.items = impl_->items.size();
  counts.memory_bytes = impl_->subjects.memory_bytes() + impl_->items.memory_bytes() +
                        impl_->subject_heads.memory_bytes() + impl_->balances.memory_bytes() +
                        impl_->holds.memory_bytes() + impl_->long_hold_keys.memory_bytes() +
                        impl_->keys.memory_bytes();
  // What remember_key_batched() keeps between runs, once a replay used it.
  counts.memory_bytes += impl_->keys_waiting.capacity() * sizeof(KeyIndex::Added);
  if (impl_->keys_scratch != nullptr) {
    counts.memory_bytes += kKeysWaitingMax * sizeof(KeyIndex::Added);
  }
  return counts;
}

// ---------------------------------------------------------------- FlowTotals

struct FlowTotals::Impl {
  struct Totals {
    Int128 acquired = 0;
    Int128 consumed = 0;
  };
  Totals& of(std::string_view item) {
    auto it = totals.find(item);
    if (it == totals.end()) it = totals.emplace(std::string(item), Totals{}).first;
    return it->second;
  }
  // Bytewise order (std::string compares as unsigned char), so check()
  // reports the first mismatch in the same order as list().
  std::map<std::string, Totals, std::less<>> totals;
};

FlowTotals::FlowTotals() : impl_(std::make_unique<Impl>()) {}
FlowTotals::~FlowTotals() = default;

void FlowTotals::apply(const log::Event& event) {
  if (event.rejected != log::Reason::none) return;
  for (const log::Op& op : event.ops) {
    switch (op.type) {
      case log::OpType::acquire: impl_->of(op.item).acquired += op.qty; break;
      case log::OpType::consume: impl_->of(op.item).consumed += op.qty; break;
      case log::OpType::commit: impl_->of(op.item).consumed += op.qty; break;
      // Transfers move between subjects; holds, releases and expiries move
      // between available and held. None changes an item's total.
      case log::OpType::transfer:
      case log::OpType::hold:
      case log::OpType::release:
      case log::OpType::expire: break;
    }
  }
}

Status FlowTotals::check(const State& state) const {
  // item -> {expected from the flows, found in the balances}
  std::map<std::string_view, std::pair<Int128, Int128>> sums;
  for (const auto& [item, totals] : impl_->totals) {
    sums[item].first = totals.acquired - totals.consumed;
  }
  state.for_each_balance(kStoredOnly,
                         [&](std::string_view, std::string_view item, Balance balance) {
                           sums[item].second += Int128{balance.available} + balance.held;
                         });
  for (const auto& [item, sum] : sums) {
    if (sum.first != sum.second) {
      return Status(ErrorCode::corrupt,
                    "item '" + std::string(item) + "': balances add up to " +
                        int128_text(sum.second) + ", the log's flows to " + int128_text(sum.first));
    }
  }
  return Status();
}

}  // namespace tally::proj
