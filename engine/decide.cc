#include "engine/decide.h"

#include <algorithm>
#include <climits>

#include "log/hash.h"

namespace tally::detail {

Status batch_too_large() {
  return Status(ErrorCode::invalid, "batch has more than " + std::to_string(kBatchOpsMax) + " ops");
}

Status check_id(std::string_view what, std::string_view id) {
  std::string why;
  if (id.empty()) {
    why = " is empty";
  } else if (id.size() > kIdBytesMax) {
    why = " is longer than " + std::to_string(kIdBytesMax) + " bytes";
  } else if (id.find('\0') != std::string_view::npos) {
    why = " contains NUL";
  } else {
    return Status();
  }
  return Status(ErrorCode::invalid, std::string(what) + why);
}

Status check_subject(std::string_view subject) { return check_id("subject", subject); }

Status check_pair(std::string_view subject, std::string_view item) {
  TALLY_TRY(check_subject(subject));
  return check_id("item", item);
}

namespace {

using log::Reason;

Status invalid(std::string message) { return Status(ErrorCode::invalid, std::move(message)); }

Status check_qty(std::int64_t qty) {
  if (qty <= 0) return invalid("qty must be > 0");
  return Status();
}

// The fields `op`'s type does not use are empty or zero (types.h): a stray
// one is the caller's mistake to hear about, not a value to drop unseen.
Status check_unused(const OpRequest& op) {
  const bool names_hold = op.hold != 0 || !op.hold_key.empty();
  const bool settles = op.type == OpType::commit || op.type == OpType::release;
  const std::pair<bool, std::string_view> fields[] = {
      {!op.subject.empty() && settles, "subject"},
      {!op.item.empty() && settles, "item"},
      {!op.to.empty() && op.type != OpType::transfer, "to"},
      {op.qty != 0 && op.type == OpType::release, "qty"},
      {op.ttl_ns != 0 && op.type != OpType::hold, "ttl"},
      {names_hold && !settles, "hold"},
  };
  for (const auto& [stray, name] : fields) {
    if (stray) {
      return invalid(std::string(op_type_name(op.type)) + " takes no " + std::string(name));
    }
  }
  // Both is ambiguous. Neither (hold 0, no key) names a hold that does not
  // exist: decided hold_unknown, as a key that made no hold is.
  if (settles && op.hold != 0 && !op.hold_key.empty()) {
    return invalid(std::string(kHoldNamedTwice));
  }
  return Status();
}

Status check_ttl(const OpRequest& op, std::int64_t ttl_ns_max) {
  if (op.ttl_ns < kHoldTtlNsMin || op.ttl_ns > ttl_ns_max) {
    return invalid("ttl out of range [" + std::to_string(kHoldTtlNsMin / 1'000'000) + " ms, " +
                   std::to_string(ttl_ns_max / 1'000'000) + " ms]");
  }
  return Status();
}

Status validate_op(const OpRequest& op, const Limits& limits) {
  if (op.type != OpType::expire) TALLY_TRY(check_unused(op));
  switch (op.type) {
    case OpType::acquire:
    case OpType::consume:
      TALLY_TRY(check_id("subject", op.subject));
      TALLY_TRY(check_id("item", op.item));
      return check_qty(op.qty);
    case OpType::transfer:
      TALLY_TRY(check_id("from", op.subject));
      TALLY_TRY(check_id("to", op.to));
      TALLY_TRY(check_id("item", op.item));
      if (op.subject == op.to) return invalid("from and to are the same subject");
      return check_qty(op.qty);
    case OpType::hold:
      TALLY_TRY(check_id("subject", op.subject));
      TALLY_TRY(check_id("item", op.item));
      TALLY_TRY(check_qty(op.qty));
      if (limits.hold_ttl_ns_max != 0) return check_ttl(op, limits.hold_ttl_ns_max);
      return Status();
    case OpType::commit:
      if (op.qty < 0) return invalid("commit qty must not be negative (0 commits the whole hold)");
      [[fallthrough]];
    case OpType::release:
      if (!op.hold_key.empty()) return check_id("hold_key", op.hold_key);
      return Status();
    case OpType::expire:
      break;
  }
  return invalid("unknown op");
}

void put_u64(std::string* out, std::uint64_t v) {
  char bytes[8];
  for (int byte_index = 0; byte_index < 8; byte_index++) {
    bytes[byte_index] = static_cast<char>(v >> (8 * byte_index));
  }
  out->append(bytes, 8);
}

void put_str(std::string* out, std::string_view text) {
  put_u64(out, text.size());
  out->append(text);
}

// Only the fields an op type uses, so that a stray field cannot make two
// equal requests differ. A batch's ops follow one another, and there an
// 8-byte hold id and a length-prefixed hold key could be read in two ways
// (a key "AAAAAAAA" and the next op's bytes as an id, or an id and a qty
// of 0x4141414141414141): in a batch, a tag byte says which one follows.
// A lone op's length tells them apart, and its fingerprint stays what it
// was, so that retries stay retries across versions.
void encode_op(std::string* out, const OpRequest& op, bool in_batch) {
  out->push_back(static_cast<char>(op.type));
  switch (op.type) {
    case OpType::transfer:
      put_str(out, op.to);
      [[fallthrough]];
    case OpType::acquire:
    case OpType::consume:
    case OpType::hold:
      put_str(out, op.subject);
      put_str(out, op.item);
      put_u64(out, static_cast<std::uint64_t>(op.qty));
      if (op.type == OpType::hold) put_u64(out, static_cast<std::uint64_t>(op.ttl_ns));
      return;
    case OpType::commit:
    case OpType::release:
    case OpType::expire:
      if (in_batch) out->push_back(op.hold_key.empty() ? 'i' : 'k');
      if (op.hold_key.empty()) {
        put_u64(out, op.hold);
      } else {
        put_str(out, op.hold_key);
      }
      if (op.type == OpType::commit) put_u64(out, static_cast<std::uint64_t>(op.qty));
      return;
  }
}

log::Op as_requested(const OpRequest& request) {
  log::Op op;
  op.type = request.type;
  op.subject = request.subject;
  op.item = request.item;
  op.to = request.to;
  op.qty = request.qty;
  op.ttl_ns = request.ttl_ns;
  op.hold = request.hold;
  op.hold_key = request.hold_key;
  return op;
}

// The hold a commit or release names. By key: the key's request must have
// been a standalone hold that succeeded (State::hold_of_key).
HoldId resolve_hold(const OpRequest& request, const proj::State& state, std::int64_t now_ns) {
  if (request.hold_key.empty()) return request.hold;
  return state.hold_of_key(request.hold_key, now_ns);
}

// Balances as the state holds them plus what earlier ops of this command did.
class Overlay {
 public:
  Overlay(const proj::State& state, DecideScratch* scratch) : state_(state), scratch_(scratch) {
    scratch_->deltas.clear();
    scratch_->settled.clear();
  }

  proj::Balance get(std::string_view subject, std::string_view item) const {
    proj::Balance balance = state_.balance(subject, item, proj::kStoredOnly);
    for (const auto& delta : scratch_->deltas) {
      if (delta.subject == subject && delta.item == item) {
        balance.available += delta.available;
        balance.held += delta.held;
      }
    }
    return balance;
  }

  // Callers check for overflow before adding.
  void add(std::string_view subject, std::string_view item, std::int64_t available,
           std::int64_t held) {
    scratch_->deltas.push_back({subject, item, available, held});
  }

  bool settled(HoldId hold) const {
    return std::find(scratch_->settled.begin(), scratch_->settled.end(), hold) !=
           scratch_->settled.end();
  }
  void settle(HoldId hold) { scratch_->settled.push_back(hold); }

  const proj::State& state() const { return state_; }

 private:
  const proj::State& state_;
  DecideScratch* scratch_;
};

bool adds_past_max(std::int64_t value, std::int64_t qty) { return value > INT64_MAX - qty; }

// available + held of a pair never exceeds INT64_MAX: checked where
// quantity enters a pair (acquire, transfer in), so moving it between
// available and held (hold, commit, release, and expire, which cannot be
// refused) never overflows.
std::int64_t total(const proj::Balance& balance) { return balance.available + balance.held; }

Reason decide_amount(const OpRequest& request, Overlay* overlay) {
  const proj::Balance from = overlay->get(request.subject, request.item);
  switch (request.type) {
    case OpType::acquire:
      if (adds_past_max(total(from), request.qty)) return Reason::overflow;
      overlay->add(request.subject, request.item, request.qty, 0);
      return Reason::none;
    case OpType::consume:
      if (from.available < request.qty) return Reason::insufficient;
      overlay->add(request.subject, request.item, -request.qty, 0);
      return Reason::none;
    case OpType::transfer: {
      if (from.available < request.qty) return Reason::insufficient;
      const proj::Balance to = overlay->get(request.to, request.item);
      if (adds_past_max(total(to), request.qty)) return Reason::overflow;
      overlay->add(request.subject, request.item, -request.qty, 0);
      overlay->add(request.to, request.item, request.qty, 0);
      return Reason::none;
    }
    case OpType::hold:
      if (from.available < request.qty) return Reason::insufficient;
      overlay->add(request.subject, request.item, -request.qty, request.qty);
      return Reason::none;
    default:
      TALLY_ASSERT(false);
  }
}

// commit and release, stamped now_ns. *op is resolved from the hold when the
// result is none.
Result<Reason> decide_settle(const OpRequest& request, std::int64_t now_ns, Overlay* overlay,
                             log::Op* op) {
  const HoldId id = resolve_hold(request, overlay->state(), now_ns);
  const std::optional<proj::HoldInfo> hold = overlay->state().find_hold(id, now_ns);
  if (!hold) return Reason::hold_unknown;
  if (overlay->settled(id)) return Reason::hold_finalized;
  switch (hold->state) {
    case proj::HoldState::open: break;
    case proj::HoldState::expired: return Reason::hold_expired;
    case proj::HoldState::committed:
    case proj::HoldState::released: return Reason::hold_finalized;
  }
  const bool commit = request.type == OpType::commit;
  const std::int64_t committed = commit ? (request.qty == 0 ? hold->qty : request.qty) : 0;
  if (committed > hold->qty) {
    return Status(ErrorCode::invalid, "commit qty " + std::to_string(committed) +
                                          " exceeds the hold's qty " + std::to_string(hold->qty));
  }
  const std::int64_t returned = hold->qty - committed;
  overlay->add(hold->subject, hold->item, returned, -hold->qty);
  overlay->settle(id);
  op->hold = id;
  op->subject = hold->subject;
  op->item = hold->item;
  op->qty = commit ? committed : returned;
  op->released = commit ? returned : 0;
  return Reason::none;
}

// Whether `op` is as a Command that carries a batch must leave it. (The
// wire has no op beside a batch's ops: a remote client refuses such a
// command before sending, with validate().)
bool op_unset(const OpRequest& op) {
  return op.type == OpType::acquire && op.subject.empty() && op.item.empty() && op.to.empty() &&
         op.qty == 0 && op.ttl_ns == 0 && op.hold == 0 && op.hold_key.empty();
}

}  // namespace

Status blocking_in_completion() {
  return invalid(
      "a blocking call from a completion would wait for itself: use the submit forms there");
}

Status validate(const Command& command, const Limits& limits) {
  TALLY_TRY(check_id("key", command.key));
  for (std::string_view field : {std::string_view(command.meta.reason),
                                 std::string_view(command.meta.reference),
                                 std::string_view(command.meta.actor)}) {
    if (field.size() > kMetaBytesMax) {
      return invalid("metadata longer than " + std::to_string(kMetaBytesMax) + " bytes");
    }
  }
  if (!command.batch) {
    // A command carries one op, or a batch of them: ops without batch would
    // be dropped unseen.
    if (!command.ops.empty()) return invalid("ops are given but batch is not set");
    return validate_op(command.op, limits);
  }
  if (!op_unset(command.op)) {
    return invalid("op is given but batch is set: a batch's ops are in ops");
  }
  if (command.ops.empty()) return invalid("batch has no ops");
  if (command.ops.size() > kBatchOpsMax) return batch_too_large();
  for (std::size_t op_index = 0; op_index < command.ops.size(); op_index++) {
    const OpRequest& op = command.ops[op_index];
    Status status = validate_op(op, limits);
    if (!status.ok()) {
      return invalid("op " + std::to_string(op_index) + ": " + status.message());
    }
    // The server's to check from here (Limits).
    if (op.type == OpType::hold && limits.hold_ttl_ns_max == 0 && !limits.ops_after_hold) break;
  }
  return Status();
}

Status check_ttls(const Command& command, std::int64_t ttl_ns_max) {
  if (!command.batch) {
    return command.op.type == OpType::hold ? check_ttl(command.op, ttl_ns_max) : Status();
  }
  for (std::size_t op_index = 0; op_index < command.ops.size(); op_index++) {
    const OpRequest& op = command.ops[op_index];
    if (op.type != OpType::hold) continue;
    Status status = check_ttl(op, ttl_ns_max);
    if (!status.ok()) return invalid("op " + std::to_string(op_index) + ": " + status.message());
  }
  return Status();
}

std::uint64_t fingerprint(const Command& command, std::string* scratch) {
  scratch->clear();
  scratch->push_back(command.batch ? 'B' : 'S');
  if (command.batch) {
    put_u64(scratch, command.ops.size());
    for (const OpRequest& op : command.ops) encode_op(scratch, op, true);
  } else {
    encode_op(scratch, command.op, false);
  }
  return XXH3_64bits(scratch->data(), scratch->size());
}

namespace {

std::span<const OpRequest> requests_of(const Command& command) {
  return command.batch ? std::span<const OpRequest>(command.ops) : std::span(&command.op, 1);
}

bool settles(const OpRequest& request) {
  return request.type == OpType::commit || request.type == OpType::release;
}

}  // namespace

std::size_t event_growth_bytes_max(const Command& command) {
  const std::span<const OpRequest> requests = requests_of(command);
  // A name's bytes in a message: a Data blob of up to kIdBytesMax bytes in
  // whole words. The rest, a rejection's wrapper around the ops, is far
  // less than the 1 KiB allowed for it.
  constexpr std::size_t kNameBytesMax = (kIdBytesMax + 7) / 8 * 8;
  return 2 * kNameBytesMax * static_cast<std::size_t>(std::count_if(
                                 requests.begin(), requests.end(), settles)) +
         1024;
}

void largest_event_ops(const Command& command, std::vector<log::Op>* ops) {
  static const std::string kLongestName(kIdBytesMax, 'x');
  ops->clear();
  for (const OpRequest& request : requests_of(command)) {
    ops->push_back(as_requested(request));
    if (!settles(request)) continue;
    ops->back().subject = kLongestName;
    ops->back().item = kLongestName;
  }
}

Result<Decision> decide(const Command& command, const proj::State& state,
                        std::int64_t timestamp_ns, std::vector<log::Op>* ops,
                        DecideScratch* scratch) {
  const std::span<const OpRequest> requests = requests_of(command);
  ops->clear();
  Overlay overlay(state, scratch);
  for (std::size_t op_index = 0; op_index < requests.size(); op_index++) {
    const OpRequest& request = requests[op_index];
    // An op found invalid only here is named as validate() names one.
    const auto invalid_op = [&](const std::string& why) {
      return invalid(command.batch ? "op " + std::to_string(op_index) + ": " + why : why);
    };
    std::int64_t expires_at_ns = 0;
    if (request.type == OpType::hold &&
        __builtin_add_overflow(timestamp_ns, request.ttl_ns, &expires_at_ns)) {
      return invalid_op("ttl: the hold would expire past the largest timestamp");
    }
    ops->push_back(as_requested(request));
    Reason reason = Reason::none;
    if (settles(request)) {
      auto settled = decide_settle(request, timestamp_ns, &overlay, &ops->back());
      if (!settled) return invalid_op(settled.status().message());
      reason = *settled;
    } else {
      reason = decide_amount(request, &overlay);
    }
    if (reason != Reason::none) {
      // A rejected request is logged as it was asked.
      ops->clear();
      for (const OpRequest& asked : requests) ops->push_back(as_requested(asked));
      return Decision{reason, static_cast<std::uint32_t>(op_index)};
    }
  }
  return Decision{};
}

Receipt make_receipt(const Decision& decision, const Command& command, std::uint64_t seq,
                     std::int64_t timestamp_ns, bool replay) {
  Receipt receipt;
  receipt.outcome = static_cast<Outcome>(decision.reason);
  receipt.replay = replay;
  receipt.seq = seq;
  receipt.timestamp_ns = timestamp_ns;
  receipt.failed_index = decision.failed_index;
  if (decision.reason != Reason::none) return receipt;
  if (!command.batch) {
    if (command.op.type == OpType::hold) receipt.hold = log::hold_id(seq, false, 0);
    return receipt;
  }
  for (std::size_t op_index = 0; op_index < command.ops.size(); op_index++) {
    if (command.ops[op_index].type == OpType::hold) {
      receipt.holds.push_back(log::hold_id(seq, true, op_index));
    }
  }
  return receipt;
}

}  // namespace tally::detail
