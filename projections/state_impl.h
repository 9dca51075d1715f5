// State::Impl: the tables behind State, shared by state.cc (apply, reads)
// and state_check.cc (invariants, digest, counts). Not part of the API.
//
// Layout:
//   - subjects, items: names interned to u32 ids (NameTable).
//   - balances: open addressing keyed by subject_id << 32 | item_id, holding
//     {available, held} inline. Only non-zero pairs are stored; a pair that
//     returns to {0, 0} is erased.
//   - each subject's stored items form a doubly linked list threaded through
//     the balance slots by item id (next_item, prev_item), headed by
//     subject_heads[subject id]. Links are ids, not positions, so they
//     survive the table moving slots. list() walks it.
//   - holds (HoldTable), keys (KeyIndex), and the keys of holds that may
//     outlive them there (LongHoldKeys).
//
// Memory per stored balance: 32 / load (load 0.35..3/4, so 43..91 bytes; the
// table is sharded, so growing adds ~1/16 briefly) + the subject's and
// item's names when they are new (see NameTable) + 4 bytes of list head per
// subject.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "projections/flat_table.h"
#include "projections/hold_table.h"
#include "projections/key_index.h"
#include "projections/name_table.h"
#include "projections/state.h"

namespace tally::proj {

__extension__ typedef __int128 Int128;  // sums of int64 that cannot overflow

struct BalanceSlot {
  std::uint64_t pair = 0;  // subject id << 32 | item id; 0 marks an empty slot
  std::int64_t available = 0;
  std::int64_t held = 0;
  std::uint32_t next_item = 0;  // the subject's item list; 0 ends it
  std::uint32_t prev_item = 0;
};
static_assert(sizeof(BalanceSlot) == 32);

struct BalancePolicy {
  static bool empty(const BalanceSlot& slot) { return slot.pair == 0; }
  static std::uint64_t hash(const BalanceSlot& slot) { return mix64(slot.pair); }
  static constexpr std::size_t kLoadNum = 3;
  static constexpr std::size_t kLoadDen = 4;
  static constexpr std::size_t kCapacityMax = std::size_t{1} << 40;
  static constexpr int kHashBits = 64;
};

// The keys of standalone holds whose ttl is at least the idempotency window.
// The key index forgets a key one window after its event, while such a
// hold may still be open; a commit or release naming the hold by its key
// then finds it here (State::hold_of_key). An entry lives as long as its
// hold is known (open, or finalized and remembered), or until a new request
// uses the key again (possible once the key index forgot it): the key then
// names that request. The entries are bounded by the holds known; holds that
// long are rare, so node-based maps do.
class LongHoldKeys {
 public:
  LongHoldKeys() = default;
  LongHoldKeys(const LongHoldKeys&) = delete;  // holds_ views keys_'s strings
  LongHoldKeys& operator=(const LongHoldKeys&) = delete;

  // Takes the key over from any hold that had it.
  void add(HoldId id, std::string_view key);
  // Drops the hold's entry, if it has one.
  void forget(HoldId id);
  // Drops the entry with this key, if there is one: a new request with the
  // key (possible only once the key index forgot it) names that request.
  void forget_key(std::string_view key);
  // 0 when no entry has the key.
  HoldId find(std::string_view key) const;
  bool empty() const { return keys_.empty(); }
  std::size_t size() const { return keys_.size(); }
  std::size_t memory_bytes() const;
  // In hold id order.
  const std::map<HoldId, std::string>& entries() const { return keys_; }

 private:
  std::map<HoldId, std::string> keys_;
  std::unordered_map<std::string_view, HoldId> holds_;  // views of keys_'s strings
};

constexpr std::uint64_t pair_of(std::uint32_t subject, std::uint32_t item) {
  return (std::uint64_t{subject} << 32) | item;
}
constexpr std::uint32_t subject_of(std::uint64_t pair) {
  return static_cast<std::uint32_t>(pair >> 32);
}
constexpr std::uint32_t item_of(std::uint64_t pair) { return static_cast<std::uint32_t>(pair); }

struct State::Impl {
  explicit Impl(const StateOptions& state_options);

  // ---- balances ----
  const BalanceSlot* find_balance(std::uint32_t subject, std::uint32_t item) const;
  BalanceSlot* find_balance(std::uint32_t subject, std::uint32_t item);
  // Starts loading the cache line where find_balance() of the pair begins.
  void prefetch_balance(std::uint32_t subject, std::uint32_t item) const;
  // The balance at the head of the subject's item list, which a balance
  // inserted for the subject relinks (upsert_balance): an acquire's or a
  // transfer's destination may be new.
  void prefetch_list_head(std::uint32_t subject) const;
  // The pair's slot, inserted as {0, 0} at the head of the subject's list
  // when missing. May move every slot.
  BalanceSlot* upsert_balance(std::uint32_t subject, std::uint32_t item);
  // Erases the slot (and unlinks it) when it went back to {0, 0}.
  void drop_if_zero(BalanceSlot* slot);
  // `found`: the name's id if known (OpHashes::subject_id), else 0.
  std::uint32_t intern_subject(std::string_view name, std::uint32_t hash,
                               std::uint32_t found = 0);
  // Balance of the pair as stored, with holds due at now_ns released.
  Balance read_balance(std::uint32_t subject, std::uint32_t item, std::int64_t now_ns) const;

  // ---- apply ----
  Status check_event(const log::Event& event) const;
  // What an event stamped timestamp_ns forgets: keys and finalized holds
  // recorded at or before the result; nullopt: nothing (no window).
  // Applying an event stamped t forgets what was recorded at or before
  // t - window: a key stamped exactly t - window is gone, one stamped a
  // nanosecond later is still there. So a key is remembered for events in
  // [its timestamp, its timestamp + window).
  // remember_key()'s checks of the event, which apply_ops() makes too.
  Status check_key(const log::Event& event) const;
  static KeyRecord key_record_of(const log::Event& event);
  // The corruption a KeyIndex::Repeat is.
  static Status repeated(const KeyIndex::Repeat& repeat);
  std::optional<std::int64_t> forget_cutoff(std::int64_t timestamp_ns) const {
    std::int64_t cutoff_ns = 0;
    if (options.idempotency_window_ns == 0 ||
        __builtin_sub_overflow(timestamp_ns, options.idempotency_window_ns, &cutoff_ns)) {
      return std::nullopt;
    }
    return cutoff_ns;
  }
  // Whether what was recorded at recorded_ns is forgotten for an event
  // stamped now_ns (State::find_key).
  bool forgotten_by(std::int64_t recorded_ns, std::int64_t now_ns) const {
    const std::optional<std::int64_t> cutoff_ns = forget_cutoff(now_ns);
    return cutoff_ns && recorded_ns <= *cutoff_ns;
  }
  static OpHashes hash_op(const log::Op& op);
  // Empty names hash to 0, which prefetch_op() skips.
  static OpHashes hash_names(std::string_view subject, std::string_view item, std::string_view to);
  // Starts loading the name slots of the op, so that the misses overlap
  // with each other and with the key lookup.
  void prefetch_op(const OpHashes& hashes) const;
  // The balance slots of (subject, item) and (to, item), or of the pair a
  // hold is on when hold != 0, for names already interned.
  // Keeps the ids it finds in *hashes.
  void prefetch_balances(std::string_view subject, std::string_view item, std::string_view to,
                         HoldId hold, OpHashes* hashes) const;
  Status apply_op(const log::Event& event, const log::Op& op, std::size_t op_index,
                  const OpHashes& hashes);
  Result<BalanceSlot*> take_available(const log::Event& event, const log::Op& op,
                                      const OpHashes& hashes);
  Status apply_acquire(const log::Event& event, const log::Op& op, const OpHashes& hashes);
  Status apply_consume(const log::Event& event, const log::Op& op, const OpHashes& hashes);
  Status apply_transfer(const log::Event& event, const log::Op& op, const OpHashes& hashes);
  Status apply_hold(const log::Event& event, const log::Op& op, std::size_t op_index,
                    const OpHashes& hashes);
  Status apply_settle(const log::Event& event, const log::Op& op);
  Status check_settle(const log::Event& event, const log::Op& op, const HoldRecord& hold) const;

  HoldInfo info_of(const HoldRecord& hold) const;

  // ---- check_invariants ----
  // Stored pairs are non-zero with available, held >= 0, and each subject's
  // list reaches exactly its stored pairs.
  Status check_balances() const;
  // The hold table's structures agree (HoldTable::consistent), then
  // check_held(), then check_long_hold_keys().
  Status check_holds() const;
  // held of every pair equals the sum of its open holds. Reads neither the
  // key index nor the long holds' keys, so a loader may run it while
  // another thread fills those.
  Status check_held() const;
  // Each long hold's key belongs to a hold that is known, is not of a batch,
  // and names that hold in the key index while the index has it.
  Status check_long_hold_keys() const;
  // "'subject' 'item'", for messages.
  std::string pair_name(std::uint64_t pair) const;

  // Replay remembers keys on one thread and applies ops on another
  // (engine/replay.cc). What each of them writes begins a cache line of its
  // own, so that one's stores do not take away the lines the other reads:
  // the keys' part was next to last_seq, written for every event.
  static constexpr std::size_t kCacheLineBytes = 64;
  StateOptions options;
  alignas(kCacheLineBytes) NameTable subjects;
  NameTable items;
  ChunkedVector<std::uint32_t> subject_heads;  // by subject id: first item id, 0 = none
  ShardedTable<BalanceSlot, BalancePolicy> balances;
  HoldTable holds;
  LongHoldKeys long_hold_keys;
  alignas(kCacheLineBytes) KeyIndex keys;
  // remember_key_batched()'s keys, in the arena and not yet indexed; the
  // time of the first; index_added()'s scratch.
  std::vector<KeyIndex::Added> keys_waiting;
  std::int64_t keys_waiting_first_ns = 0;
  std::unique_ptr<KeyIndex::Added[]> keys_scratch;
  alignas(kCacheLineBytes) std::uint64_t last_seq = 0;
  std::int64_t last_timestamp_ns = 0;
};

// "seq N: what", the corrupt Status every apply failure returns.
Status corrupt_at(std::uint64_t seq, const std::string& what);

}  // namespace tally::proj
