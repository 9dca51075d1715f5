// State: apply() and the reads. Invariants, digest and counts are in
// state_check.cc; the tables are described in state_impl.h.
#include "projections/state.h"

#include <algorithm>
#include <charconv>
#include <numeric>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "projections/state_impl.h"

namespace tally::proj {

std::string_view hold_state_name(HoldState state) {
  switch (state) {
    case HoldState::open: return "open";
    case HoldState::committed: return "committed";
    case HoldState::released: return "released";
    case HoldState::expired: return "expired";
  }
  return "unknown";
}

constexpr std::string_view kSeqPrefix = "seq ";

Status corrupt_at(std::uint64_t seq, const std::string& what) {
  return Status(ErrorCode::corrupt, std::string(kSeqPrefix) + std::to_string(seq) + ": " + what);
}

std::optional<std::uint64_t> refused_seq(const Status& status) {
  const std::string& message = status.message();
  if (status.code() != ErrorCode::corrupt || !message.starts_with(kSeqPrefix)) return std::nullopt;
  std::uint64_t seq = 0;
  const char* const first = message.data() + kSeqPrefix.size();
  const char* const last = message.data() + message.size();
  const auto [end, error] = std::from_chars(first, last, seq);
  if (error != std::errc() || end == first || end == last || *end != ':') return std::nullopt;
  return seq;
}

namespace {

bool valid_name(std::string_view name) { return !name.empty() && name.size() <= kNameBytesMax; }

// An id an op's OpHashes carry for `name`, found by prefetch_balances().
std::uint32_t checked_id([[maybe_unused]] const NameTable& table,
                         [[maybe_unused]] std::string_view name,
                         [[maybe_unused]] std::uint32_t hash, std::uint32_t found) {
  TALLY_DEBUG_ASSERT(found == table.find(name, hash));
  return found;
}

// The id of `name`: `found` when prefetch_balances() found it, else looked
// up (0 when it is not interned).
std::uint32_t find_id(const NameTable& table, std::string_view name, std::uint32_t hash,
                      std::uint32_t found) {
  return found != 0 ? checked_id(table, name, hash, found) : table.find(name, hash);
}

// A read treats a due hold as released. available + held can pass INT64_MAX
// only if the engine allowed it; a read then pins the value instead of
// wrapping.
void release_on_read(Balance* balance, std::int64_t qty) {
  balance->held -= qty;
  if (__builtin_add_overflow(balance->available, qty, &balance->available)) {
    balance->available = INT64_MAX;
  }
}

// Due holds by what they hold (an item, or a pair), sorted, for lookups.
template <class Key>
using DueHolds = std::vector<std::pair<Key, std::int64_t>>;

// release_on_read of every hold of `key` in `due`.
template <class Key>
void release_due(const DueHolds<Key>& due, Key key, Balance* balance) {
  auto hold = std::lower_bound(due.begin(), due.end(), std::make_pair(key, INT64_MIN));
  for (; hold != due.end() && hold->first == key; ++hold) release_on_read(balance, hold->second);
}

// *value += delta, unless that overflows: false then, and *value unchanged.
bool add_to(std::int64_t* value, std::int64_t delta) {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(*value, delta, &sum)) return false;
  *value = sum;
  return true;
}

Status check_op_fields(const log::Event& event, const log::Op& op) {
  if (!valid_name(op.subject) || !valid_name(op.item)) {
    return corrupt_at(event.seq, std::string(log::op_type_name(op.type)) +
                                     " with an empty or over-long subject or item");
  }
  if (op.qty <= 0) {
    return corrupt_at(event.seq, std::string(log::op_type_name(op.type)) + " of qty " +
                                     std::to_string(op.qty));
  }
  return Status();
}

}  // namespace

// ---------------------------------------------------------------- balances

State::Impl::Impl(const StateOptions& state_options) : options(state_options) {
  TALLY_ASSERT(options.idempotency_window_ns >= 0);
  subject_heads.push_back(0);  // subject id 0 is "no subject"
}

const BalanceSlot* State::Impl::find_balance(std::uint32_t subject, std::uint32_t item) const {
  if (subject == 0 || item == 0) return nullptr;
  const std::uint64_t pair = pair_of(subject, item);
  return balances.find(mix64(pair), [&](const BalanceSlot& slot) { return slot.pair == pair; });
}

void State::Impl::prefetch_balance(std::uint32_t subject, std::uint32_t item) const {
  if (subject != 0 && item != 0) balances.prefetch(mix64(pair_of(subject, item)));
}

void State::Impl::prefetch_list_head(std::uint32_t subject) const {
  if (subject != 0 && subject < subject_heads.size()) {
    prefetch_balance(subject, subject_heads[subject]);
  }
}

BalanceSlot* State::Impl::find_balance(std::uint32_t subject, std::uint32_t item) {
  return const_cast<BalanceSlot*>(std::as_const(*this).find_balance(subject, item));
}

BalanceSlot* State::Impl::upsert_balance(std::uint32_t subject, std::uint32_t item) {
  BalanceSlot* slot = find_balance(subject, item);
  if (slot != nullptr) return slot;
  const std::uint32_t head = subject_heads[subject];
  BalanceSlot fresh;
  fresh.pair = pair_of(subject, item);
  fresh.next_item = head;
  BalanceSlot* inserted = balances.insert(mix64(fresh.pair), fresh);
  // find() moves nothing, so `inserted` stays valid.
  if (head != 0) {
    BalanceSlot* old_head = find_balance(subject, head);
    TALLY_ASSERT(old_head != nullptr);
    old_head->prev_item = item;
  }
  subject_heads[subject] = item;
  return inserted;
}

void State::Impl::drop_if_zero(BalanceSlot* slot) {
  if (slot->available != 0 || slot->held != 0) return;
  const std::uint32_t subject = subject_of(slot->pair);
  const std::uint32_t prev = slot->prev_item;
  const std::uint32_t next = slot->next_item;
  if (prev != 0) {
    BalanceSlot* before = find_balance(subject, prev);
    TALLY_ASSERT(before != nullptr);
    before->next_item = next;
  } else {
    subject_heads[subject] = next;
  }
  if (next != 0) {
    BalanceSlot* after = find_balance(subject, next);
    TALLY_ASSERT(after != nullptr);
    after->prev_item = prev;
  }
  balances.erase(slot);
}

std::uint32_t State::Impl::intern_subject(std::string_view name, std::uint32_t hash,
                                          std::uint32_t found) {
  const std::uint32_t id = found != 0 ? checked_id(subjects, name, hash, found)
                                      : subjects.intern(name, hash);
  while (subject_heads.size() <= id) subject_heads.push_back(0);
  return id;
}

Balance State::Impl::read_balance(std::uint32_t subject, std::uint32_t item,
                                  std::int64_t now_ns) const {
  const BalanceSlot* slot = find_balance(subject, item);
  if (slot == nullptr) return Balance{};
  Balance balance{slot->available, slot->held};
  if (now_ns == kStoredOnly || balance.held == 0) return balance;
  holds.for_each_due(now_ns, [&](const HoldRecord& hold) {
    if (hold.subject == subject && hold.item == item) release_on_read(&balance, hold.qty);
  });
  return balance;
}

HoldInfo State::Impl::info_of(const HoldRecord& hold) const {
  HoldInfo info;
  info.id = hold.id;
  info.subject = subjects.view(hold.subject);
  info.item = items.view(hold.item);
  info.qty = hold.qty;
  info.expires_at_ns = hold.expires_at_ns;
  info.state = hold.state;
  info.finalized_at_ns = hold.finalized_at_ns;
  info.committed_qty = hold.committed_qty;
  return info;
}

// ---------------------------------------------------------------- long holds' keys

void LongHoldKeys::add(HoldId id, std::string_view key) {
  forget_key(key);
  const auto [entry, added] = keys_.emplace(id, key);
  TALLY_ASSERT(added);
  holds_.emplace(entry->second, id);
}

void LongHoldKeys::forget(HoldId id) {
  const auto entry = keys_.find(id);
  if (entry == keys_.end()) return;
  holds_.erase(entry->second);
  keys_.erase(entry);
}

void LongHoldKeys::forget_key(std::string_view key) {
  if (const auto taken = holds_.find(key); taken != holds_.end()) forget(taken->second);
}

HoldId LongHoldKeys::find(std::string_view key) const {
  const auto found = holds_.find(key);
  return found == holds_.end() ? 0 : found->second;
}

std::size_t LongHoldKeys::memory_bytes() const {
  // libstdc++, about: a map node is three pointers and a colour before its
  // pair, a hash node a next pointer and the cached hash before its pair,
  // a bucket a pointer; a string keeps up to 15 chars in itself.
  constexpr std::size_t kMapNodeBytes = 32;
  constexpr std::size_t kHashNodeBytes = 16;
  constexpr std::size_t kInlineChars = 15;
  std::size_t bytes =
      keys_.size() * (kMapNodeBytes + sizeof(HoldId) + sizeof(std::string)) +
      holds_.size() * (kHashNodeBytes + sizeof(std::string_view) + sizeof(HoldId)) +
      holds_.bucket_count() * sizeof(void*);
  for (const auto& [id, key] : keys_) {
    if (key.size() > kInlineChars) bytes += key.capacity() + 1;
  }
  return bytes;
}

// ---------------------------------------------------------------- apply

Status State::Impl::check_event(const log::Event& event) const {
  if (event.seq != last_seq + 1) {
    return corrupt_at(event.seq, "expected seq " + std::to_string(last_seq + 1));
  }
  // Batch hold ids keep the op index above the seq bits.
  if (event.seq > log::kHoldSeqMask) return corrupt_at(event.seq, "seq past the HoldId range");
  if (last_seq != 0 && event.timestamp_ns < last_timestamp_ns) {
    return corrupt_at(event.seq, "timestamp " + std::to_string(event.timestamp_ns) +
                                     " before the previous " + std::to_string(last_timestamp_ns));
  }
  if (event.key.size() > kNameBytesMax) return corrupt_at(event.seq, "over-long key");
  if (event.ops.size() > log::kBatchOpsMax) return corrupt_at(event.seq, "too many ops");
  if (event.ops.empty()) return corrupt_at(event.seq, "event without ops");
  if (!event.batch && event.ops.size() != 1) {
    return corrupt_at(event.seq,
                      "single-op event with " + std::to_string(event.ops.size()) + " ops");
  }
  if (event.rejected != log::Reason::none && event.failed_index >= event.ops.size()) {
    return corrupt_at(event.seq, "failed index past the request's ops");
  }
  const bool system = event.ops[0].type == log::OpType::expire;
  if (system && (event.batch || event.rejected != log::Reason::none || !event.key.empty())) {
    return corrupt_at(event.seq, "expire must be a single unkeyed applied event");
  }
  if (event.batch || event.rejected != log::Reason::none) {
    for (const log::Op& op : event.ops) {
      if (op.type == log::OpType::expire) return corrupt_at(event.seq, "expire inside a request");
    }
  }
  return Status();
}

OpHashes State::Impl::hash_op(const log::Op& op) {
  switch (op.type) {
    case log::OpType::transfer: return hash_names(op.subject, op.item, op.to);
    case log::OpType::acquire:
    case log::OpType::consume:
    case log::OpType::hold: return hash_names(op.subject, op.item, {});
    case log::OpType::commit:
    case log::OpType::release:
    case log::OpType::expire: break;  // they name a hold, not names
  }
  return OpHashes{};
}

OpHashes State::Impl::hash_names(std::string_view subject, std::string_view item,
                                 std::string_view to) {
  const std::uint32_t subject_hash = subject.empty() ? 0 : NameTable::hash_of(subject);
  const std::uint32_t item_hash = item.empty() ? 0 : NameTable::hash_of(item);
  const std::uint32_t to_hash = to.empty() ? 0 : NameTable::hash_of(to);
  return OpHashes{subject_hash, item_hash, to_hash};
}

OpHashes State::prefetch(std::string_view key, std::string_view subject, std::string_view item,
                         std::string_view to, HoldId hold) const {
  if (!key.empty()) impl_->keys.prefetch(KeyIndex::hash_of(key));
  const OpHashes hashes = Impl::hash_names(subject, item, to);
  impl_->prefetch_op(hashes);
  if (hold != 0) impl_->holds.prefetch(hold);
  return hashes;
}

void State::prefetch_balances(std::string_view subject, std::string_view item,
                              std::string_view to, HoldId hold, const OpHashes& hashes) const {
#ifndef NDEBUG
  const OpHashes expected = Impl::hash_names(subject, item, to);
  TALLY_ASSERT(hashes.subject == expected.subject && hashes.item == expected.item &&
               hashes.to == expected.to);
#endif
  OpHashes ids = hashes;
  impl_->prefetch_balances(subject, item, to, hold, &ids);
}

void State::Impl::prefetch_balances(std::string_view subject, std::string_view item,
                                    std::string_view to, HoldId hold,
                                    OpHashes* hashes) const {
  if (hold != 0) {
    if (const HoldRecord* record = holds.find(hold)) prefetch_balance(record->subject, record->item);
    return;
  }
  if (item.empty()) return;
  hashes->item_id = items.find(item, hashes->item);
  if (!subject.empty()) {
    hashes->subject_id = subjects.find(subject, hashes->subject);
    prefetch_balance(hashes->subject_id, hashes->item_id);
    prefetch_list_head(hashes->subject_id);
  }
  if (!to.empty()) {
    hashes->to_id = subjects.find(to, hashes->to);
    prefetch_balance(hashes->to_id, hashes->item_id);
    prefetch_list_head(hashes->to_id);
  }
}

void State::Impl::prefetch_op(const OpHashes& hashes) const {
  if (hashes.subject != 0) subjects.prefetch(hashes.subject);
  if (hashes.item != 0) items.prefetch(hashes.item);
  if (hashes.to != 0) subjects.prefetch(hashes.to);
}

Status State::Impl::apply_op(const log::Event& event, const log::Op& op, std::size_t op_index,
                             const OpHashes& hashes) {
  switch (op.type) {
    case log::OpType::acquire: return apply_acquire(event, op, hashes);
    case log::OpType::consume: return apply_consume(event, op, hashes);
    case log::OpType::transfer: return apply_transfer(event, op, hashes);
    case log::OpType::hold: return apply_hold(event, op, op_index, hashes);
    case log::OpType::commit:
    case log::OpType::release:
    case log::OpType::expire: return apply_settle(event, op);
  }
  return corrupt_at(event.seq, "unknown op type");
}

Result<BalanceSlot*> State::Impl::take_available(const log::Event& event, const log::Op& op,
                                                 const OpHashes& hashes) {
  BalanceSlot* slot = find_balance(find_id(subjects, op.subject, hashes.subject, hashes.subject_id),
                                   find_id(items, op.item, hashes.item, hashes.item_id));
  const std::int64_t available = slot == nullptr ? 0 : slot->available;
  if (available < op.qty) {
    return corrupt_at(event.seq, std::string(log::op_type_name(op.type)) + " of " +
                                     std::to_string(op.qty) + " " + quoted(op.item) + " from " +
                                     quoted(op.subject) + " exceeds its available " +
                                     std::to_string(available));
  }
  slot->available -= op.qty;
  return slot;
}

Status State::Impl::apply_acquire(const log::Event& event, const log::Op& op,
                                  const OpHashes& hashes) {
  TALLY_TRY(check_op_fields(event, op));
  const std::uint32_t subject = intern_subject(op.subject, hashes.subject, hashes.subject_id);
  const std::uint32_t item = hashes.item_id != 0
                                 ? checked_id(items, op.item, hashes.item, hashes.item_id)
                                 : items.intern(op.item, hashes.item);
  BalanceSlot* slot = upsert_balance(subject, item);
  if (!add_to(&slot->available, op.qty)) {
    return corrupt_at(event.seq, "acquire overflows " + quoted(op.subject) + " " + quoted(op.item));
  }
  return Status();
}

Status State::Impl::apply_consume(const log::Event& event, const log::Op& op,
                                  const OpHashes& hashes) {
  TALLY_TRY(check_op_fields(event, op));
  Result<BalanceSlot*> slot = take_available(event, op, hashes);
  if (!slot) return slot.status();
  drop_if_zero(*slot);
  return Status();
}

Status State::Impl::apply_transfer(const log::Event& event, const log::Op& op,
                                   const OpHashes& hashes) {
  TALLY_TRY(check_op_fields(event, op));
  if (!valid_name(op.to)) return corrupt_at(event.seq, "transfer to an empty or over-long subject");
  if (op.to == op.subject) return corrupt_at(event.seq, "transfer to its own source");
  Result<BalanceSlot*> from = take_available(event, op, hashes);
  if (!from) return from.status();
  // The source held the item, so it is interned: reuse its id.
  const std::uint32_t item = item_of((*from)->pair);
  drop_if_zero(*from);
  // After drop_if_zero: inserting the destination may move every slot.
  BalanceSlot* to = upsert_balance(intern_subject(op.to, hashes.to, hashes.to_id), item);
  if (!add_to(&to->available, op.qty)) {
    return corrupt_at(event.seq, "transfer overflows " + quoted(op.to) + " " + quoted(op.item));
  }
  return Status();
}

Status State::Impl::apply_hold(const log::Event& event, const log::Op& op, std::size_t op_index,
                               const OpHashes& hashes) {
  TALLY_TRY(check_op_fields(event, op));
  if (op.ttl_ns <= 0) return corrupt_at(event.seq, "hold with ttl " + std::to_string(op.ttl_ns));
  HoldRecord hold;
  hold.id = log::hold_id(event.seq, event.batch, op_index);
  hold.qty = op.qty;
  if (__builtin_add_overflow(event.timestamp_ns, op.ttl_ns, &hold.expires_at_ns)) {
    return corrupt_at(event.seq, "hold expiry past the end of time");
  }
  if (holds.find(hold.id) != nullptr) {
    return corrupt_at(event.seq, "hold " + std::to_string(hold.id) + " exists");
  }
  Result<BalanceSlot*> slot = take_available(event, op, hashes);
  if (!slot) return slot.status();
  if (!add_to(&(*slot)->held, op.qty)) {
    (*slot)->available += op.qty;  // undo take_available: leave no half-applied op
    return corrupt_at(event.seq, "hold overflows the held of " + quoted(op.subject) + " " +
                                     quoted(op.item));
  }
  hold.subject = subject_of((*slot)->pair);
  hold.item = item_of((*slot)->pair);
  holds.open(hold);
  if (!event.batch && !event.key.empty() && options.idempotency_window_ns > 0 &&
      op.ttl_ns >= options.idempotency_window_ns) {
    long_hold_keys.add(hold.id, event.key);
  }
  return Status();
}

// commit, release and expire carry copies of the hold's subject, item and
// quantities; a fact that disagrees with the hold it names is corrupt.
Status State::Impl::check_settle(const log::Event& event, const log::Op& op,
                                 const HoldRecord& hold) const {
  // Messages are built only on failure: this runs for every settled hold.
  const auto fail = [&](const std::string& why) {
    return corrupt_at(event.seq, std::string(log::op_type_name(op.type)) + " of hold " +
                                     std::to_string(op.hold) + ": " + why);
  };
  if (hold.state != HoldState::open) {
    return fail("the hold is " + std::string(hold_state_name(hold.state)));
  }
  if (subjects.view(hold.subject) != op.subject || items.view(hold.item) != op.item) {
    return fail("subject or item differs from the hold's");
  }
  // The engine expires every due hold before deciding a command at the same
  // timestamp, so a settled hold is never due and an expired one always is.
  const bool due = hold.expires_at_ns <= event.timestamp_ns;
  if (due != (op.type == log::OpType::expire)) {
    return fail(due ? "the hold was due" : "the hold was not due");
  }
  const bool quantities_match =
      op.type == log::OpType::commit
          ? op.qty > 0 && op.released >= 0 && op.released == hold.qty - op.qty
          : op.qty == hold.qty && op.released == 0;
  if (!quantities_match) {
    return fail("qty " + std::to_string(op.qty) + " and released " + std::to_string(op.released) +
                " do not fit the hold's " + std::to_string(hold.qty));
  }
  return Status();
}

Status State::Impl::apply_settle(const log::Event& event, const log::Op& op) {
  HoldRecord* hold = holds.find(op.hold);
  if (hold == nullptr) {
    return corrupt_at(event.seq, std::string(log::op_type_name(op.type)) + " of unknown hold " +
                                     std::to_string(op.hold));
  }
  TALLY_TRY(check_settle(event, op, *hold));
  BalanceSlot* slot = find_balance(hold->subject, hold->item);
  if (slot == nullptr || slot->held < hold->qty) {
    return corrupt_at(event.seq, "hold " + std::to_string(op.hold) + " exceeds the pair's held");
  }
  const bool commit = op.type == log::OpType::commit;
  const std::int64_t returned = commit ? op.released : hold->qty;
  if (!add_to(&slot->available, returned)) {
    return corrupt_at(event.seq,
                      "settling hold " + std::to_string(op.hold) + " overflows available");
  }
  slot->held -= hold->qty;
  drop_if_zero(slot);
  const HoldState state = commit                             ? HoldState::committed
                          : op.type == log::OpType::release ? HoldState::released
                                                            : HoldState::expired;
  holds.finalize(hold, state, event.timestamp_ns, commit ? op.qty : 0);
  return Status();
}

// ---------------------------------------------------------------- State

State::State(StateOptions options) : impl_(std::make_unique<Impl>(options)) {}
State::~State() = default;

namespace {

bool settles(log::OpType type) {
  return type == log::OpType::commit || type == log::OpType::release ||
         type == log::OpType::expire;
}

[[maybe_unused]] bool same_hashes(const EventHashes& a, const EventHashes& b) {
  return a.key == b.key && a.first.subject == b.first.subject && a.first.item == b.first.item &&
         a.first.to == b.first.to;
}

// The op the look-ahead (hash(), prefetch()) is for, if any.
const log::Op* first_applied_op(const log::Event& event) {
  return event.rejected == log::Reason::none && !event.ops.empty() ? &event.ops[0] : nullptr;
}

}  // namespace

EventHashes State::hash(const log::Event& event) {
  return EventHashes{hash_key(event), hash_first_op(event)};
}

std::uint32_t State::hash_key(const log::Event& event) { return KeyIndex::hash_of(event.key); }

OpHashes State::hash_first_op(const log::Event& event) {
  const log::Op* op = first_applied_op(event);
  return op != nullptr ? Impl::hash_op(*op) : OpHashes{};
}

void State::prefetch_key(std::uint32_t key_hash) const { impl_->keys.prefetch(key_hash); }

void State::prefetch(const log::Event& event, const EventHashes& hashes) const {
  const Impl& impl = *impl_;
  if (const log::Op* op = first_applied_op(event)) {
    impl.prefetch_op(hashes.first);
    if (settles(op->type)) impl.holds.prefetch(op->hold);
  }
}

void State::prefetch_balances(const log::Event& event, EventHashes* hashes) const {
  if (const log::Op* op = first_applied_op(event)) {
    impl_->prefetch_balances(op->subject, op->item, op->to, settles(op->type) ? op->hold : 0,
                             &hashes->first);
  }
}

Status State::apply(const log::Event& event) {
  // The lookups below are independent cache misses on a large state;
  // start them all now so they overlap.
  const EventHashes hashes = hash(event);
  prefetch_key(hashes.key);
  prefetch(event, hashes);
  return apply(event, hashes);
}

Status State::apply(const log::Event& event, const EventHashes& hashes) {
  // The key first, so that one probe both refuses a key already decided
  // and places the new one. (A refused event leaves the state unspecified
  // either way.)
  TALLY_TRY(remember_key(event, hashes.key));
  return apply_ops(event, hashes);
}

Status State::Impl::check_key(const log::Event& event) const {
  // Checked here too, not only by apply_ops(): on another thread this may
  // run ahead of it, and the key index needs both.
  if (event.key.size() > kNameBytesMax) return corrupt_at(event.seq, "over-long key");
  if (event.timestamp_ns < keys.newest_timestamp_ns()) {
    return corrupt_at(event.seq, "timestamp " + std::to_string(event.timestamp_ns) +
                                     " before that of an earlier key, " +
                                     std::to_string(keys.newest_timestamp_ns()));
  }
  return Status();
}

Status State::Impl::repeated(const KeyIndex::Repeat& repeat) {
  return corrupt_at(repeat.again_seq, "key " + quoted(repeat.key) + ", decided at seq " +
                                          std::to_string(repeat.first_seq) +
                                          ", decided again at the same time, which no "
                                          "idempotency window allows");
}

KeyRecord State::Impl::key_record_of(const log::Event& event) {
  KeyRecord record;
  record.fingerprint = event.fingerprint;
  record.seq = event.seq;
  record.timestamp_ns = event.timestamp_ns;
  record.reason = event.rejected;
  record.failed_index = event.failed_index;
  return record;
}

Status State::remember_key(const log::Event& event, std::uint32_t key_hash) {
  Impl& impl = *impl_;
  TALLY_DEBUG_ASSERT(key_hash == KeyIndex::hash_of(event.key));
  TALLY_ASSERT(impl.keys_waiting.empty());
  TALLY_TRY(impl.check_key(event));
  // Forget first: a key stamped t - window is gone for the event at t, even
  // if that event carries the same key again.
  if (const auto cutoff_ns = impl.forget_cutoff(event.timestamp_ns)) {
    impl.keys.evict_through(*cutoff_ns);
  }
  if (event.key.empty()) return Status();
  // A key remembered already was forgotten by the writer, whose window was
  // shorter than this state's: the later decision is the one that stands.
  KeyIndex::Repeat repeat;
  if (!impl.keys.insert(event.key, key_hash, Impl::key_record_of(event), &repeat)) {
    return Impl::repeated(repeat);
  }
  return Status();
}

Status State::remember_key_batched(const log::Event& event, std::uint32_t key_hash) {
  Impl& impl = *impl_;
  TALLY_DEBUG_ASSERT(key_hash == KeyIndex::hash_of(event.key));
  TALLY_TRY(impl.check_key(event));
  if (const auto cutoff_ns = impl.forget_cutoff(event.timestamp_ns)) {
    // Index the waiting keys before any key is forgotten: a waiting key
    // may repeat it (a key decided again under a shorter window), or be
    // due itself (only indexed keys can be forgotten). In a log longer than the
    // window, that is most events, and the runs stay short. When no key is
    // due, nothing is forgotten and the keys go on waiting.
    if (impl.keys.oldest_timestamp_ns() <= *cutoff_ns ||
        (!impl.keys_waiting.empty() && *cutoff_ns >= impl.keys_waiting_first_ns)) {
      TALLY_TRY(index_keys());
      impl.keys.evict_through(*cutoff_ns);
    }
  }
  if (event.key.empty()) return Status();
  if (impl.keys_waiting.empty()) impl.keys_waiting_first_ns = event.timestamp_ns;
  impl.keys_waiting.push_back(
      impl.keys.add_unindexed(event.key, key_hash, Impl::key_record_of(event)));
  if (impl.keys_waiting.size() == kKeysWaitingMax) return index_keys();
  return Status();
}

void State::reserve_keys(std::size_t more) {
  impl_->keys.reserve(impl_->keys.size() + more, PageFill::lazy);
}

Status State::index_keys() {
  Impl& impl = *impl_;
  if (impl.keys_waiting.empty()) return Status();
  if (impl.keys_scratch == nullptr) {
    impl.keys_scratch = std::make_unique_for_overwrite<KeyIndex::Added[]>(kKeysWaitingMax);
  }
  const std::size_t count = impl.keys_waiting.size();
  impl.keys.reserve(impl.keys.size() + count);
  KeyIndex::Repeat repeat;
  const bool indexed =
      impl.keys.index_added(impl.keys_waiting, std::span(impl.keys_scratch.get(), kKeysWaitingMax),
                            KeyIndex::Repeats::latest_wins, &repeat);
  impl.keys_waiting.clear();
  return indexed ? Status() : Impl::repeated(repeat);
}

Status State::apply_ops(const log::Event& event, const EventHashes& hashes) {
  Impl& impl = *impl_;
  TALLY_TRY(impl.check_event(event));
  const bool applied = event.rejected == log::Reason::none;
  // Hashes of another event would make every lookup below miss.
  TALLY_DEBUG_ASSERT(same_hashes(hashes, hash(event)));
  const OpHashes& first_hashes = hashes.first;
  if (const auto cutoff_ns = impl.forget_cutoff(event.timestamp_ns)) {
    while (const HoldId forgotten = impl.holds.evict_one_through(*cutoff_ns)) {
      if (!impl.long_hold_keys.empty()) impl.long_hold_keys.forget(forgotten);
    }
  }
  if (!impl.long_hold_keys.empty() && !event.key.empty()) {
    impl.long_hold_keys.forget_key(event.key);  // applied or rejected, it is the key's now
  }
  if (applied) {
    for (std::size_t op_index = 0; op_index < event.ops.size(); op_index++) {
      const log::Op& op = event.ops[op_index];
      TALLY_TRY(
          impl.apply_op(event, op, op_index, op_index == 0 ? first_hashes : Impl::hash_op(op)));
    }
  }
  impl.last_seq = event.seq;
  impl.last_timestamp_ns = event.timestamp_ns;
  return Status();
}

std::uint64_t State::last_seq() const { return impl_->last_seq; }
std::int64_t State::last_timestamp_ns() const { return impl_->last_timestamp_ns; }
std::int64_t State::idempotency_window_ns() const { return impl_->options.idempotency_window_ns; }

// ---------------------------------------------------------------- reads

Balance State::balance(std::string_view subject, std::string_view item, std::int64_t now_ns) const {
  return impl_->read_balance(impl_->subjects.find(subject), impl_->items.find(item), now_ns);
}

void State::list(std::string_view subject, std::int64_t now_ns,
                 const std::function<void(std::string_view item, Balance)>& visit) const {
  const Impl& impl = *impl_;
  const std::uint32_t subject_id = impl.subjects.find(subject);
  if (subject_id == 0) return;
  // The subject's balances, each found once: each step follows one link of
  // the subject's list; the table's size bounds it.
  std::vector<std::pair<std::uint32_t, Balance>> listed;
  for (std::uint32_t item = impl.subject_heads[subject_id]; item != 0;) {
    TALLY_ASSERT(listed.size() < impl.balances.size());
    const BalanceSlot* slot = impl.find_balance(subject_id, item);
    listed.emplace_back(item, Balance{slot->available, slot->held});
    item = slot->next_item;
  }
  std::sort(listed.begin(), listed.end(), [&](const auto& a, const auto& b) {
    return impl.items.view(a.first) < impl.items.view(b.first);
  });
  // The subject's due holds, gathered once rather than once per item, and
  // sorted by item: a subject may have many of both.
  DueHolds<std::uint32_t> due;
  if (now_ns != kStoredOnly) {
    impl.holds.for_each_due(now_ns, [&](const HoldRecord& hold) {
      if (hold.subject == subject_id) due.emplace_back(hold.item, hold.qty);
    });
    std::sort(due.begin(), due.end());
  }
  for (auto& [item, balance] : listed) {
    release_due(due, item, &balance);
    visit(impl.items.view(item), balance);
  }
}

namespace {

// ranks[id]: the position of name `id` in the bytewise order of all names
// (ranks[0] is unused). Sorting a million names once is cheaper than
// comparing names in every comparison of a sort of the balances.
std::vector<std::uint32_t> name_ranks(const NameTable& names) {
  const auto count = static_cast<std::uint32_t>(names.size());
  std::vector<std::uint32_t> ids(count);
  std::iota(ids.begin(), ids.end(), 1u);
  {
    std::vector<std::string_view> views(std::size_t{count} + 1);
    for (std::uint32_t id = 1; id <= count; id++) views[id] = names.view(id);
    std::sort(ids.begin(), ids.end(),
              [&](std::uint32_t a, std::uint32_t b) { return views[a] < views[b]; });
  }
  std::vector<std::uint32_t> ranks(std::size_t{count} + 1);
  for (std::uint32_t rank = 0; rank < count; rank++) ranks[ids[rank]] = rank;
  return ranks;
}

}  // namespace

void State::for_each_balance(
    std::int64_t now_ns,
    const std::function<void(std::string_view subject, std::string_view item, Balance)>& visit)
    const {
  const Impl& impl = *impl_;
  const std::vector<std::uint32_t> subject_ranks = name_ranks(impl.subjects);
  const std::vector<std::uint32_t> item_ranks = name_ranks(impl.items);
  const auto order = [&](std::uint64_t pair) {
    return (std::uint64_t{subject_ranks[subject_of(pair)]} << 32) | item_ranks[item_of(pair)];
  };
  std::vector<std::uint64_t> pairs;
  pairs.reserve(impl.balances.size());
  impl.balances.for_each([&](const BalanceSlot& slot) { pairs.push_back(slot.pair); });
  std::sort(pairs.begin(), pairs.end(),
            [&](std::uint64_t a, std::uint64_t b) { return order(a) < order(b); });
  // Due holds, gathered once, sorted by pair for lookup.
  DueHolds<std::uint64_t> due;
  if (now_ns != kStoredOnly) {
    impl.holds.for_each_due(now_ns, [&](const HoldRecord& hold) {
      due.emplace_back(pair_of(hold.subject, hold.item), hold.qty);
    });
    std::sort(due.begin(), due.end());
  }
  for (std::uint64_t pair : pairs) {
    const BalanceSlot* slot = impl.find_balance(subject_of(pair), item_of(pair));
    Balance balance{slot->available, slot->held};
    release_due(due, pair, &balance);
    visit(impl.subjects.view(subject_of(pair)), impl.items.view(item_of(pair)), balance);
  }
}

const KeyRecord* State::find_key(std::string_view key, std::int64_t now_ns) const {
  TALLY_ASSERT(impl_->keys_waiting.empty());
  const KeyRecord* record = impl_->keys.find(key);
  if (record == nullptr || impl_->forgotten_by(record->timestamp_ns, now_ns)) return nullptr;
  return record;
}

HoldId State::hold_of_key(std::string_view key, std::int64_t now_ns) const {
  if (const KeyRecord* record = find_key(key, now_ns)) {
    return record->reason == log::Reason::none ? log::hold_id(record->seq, false, 0) : 0;
  }
  return impl_->long_hold_keys.find(key);
}

std::optional<HoldInfo> State::find_hold(HoldId id, std::int64_t now_ns) const {
  const HoldRecord* hold = impl_->holds.find(id);
  if (hold == nullptr) return std::nullopt;
  const HoldInfo info = impl_->info_of(*hold);
  if (info.state != HoldState::open && impl_->forgotten_by(info.finalized_at_ns, now_ns)) {
    return std::nullopt;
  }
  return info;
}

std::optional<HoldInfo> State::next_due_hold(std::int64_t t_ns) const {
  const HoldRecord* hold = impl_->holds.first_expiring();
  if (hold == nullptr || hold->expires_at_ns > t_ns) return std::nullopt;
  return impl_->info_of(*hold);
}

std::optional<std::int64_t> State::next_expiry_ns() const {
  const HoldRecord* hold = impl_->holds.first_expiring();
  if (hold == nullptr) return std::nullopt;
  return hold->expires_at_ns;
}

}  // namespace tally::proj
