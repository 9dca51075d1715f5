#include "engine/types.h"

#include <utility>

namespace tally {

std::string_view outcome_name(Outcome outcome) {
  switch (outcome) {
    case Outcome::ok: return "ok";
    case Outcome::insufficient: return "insufficient";
    case Outcome::overflow: return "overflow";
    case Outcome::hold_unknown: return "hold_unknown";
    case Outcome::hold_expired: return "hold_expired";
    case Outcome::hold_finalized: return "hold_finalized";
  }
  return "unknown";
}

std::string_view hold_status_name(HoldStatus status) {
  switch (status) {
    case HoldStatus::open: return "open";
    case HoldStatus::committed: return "committed";
    case HoldStatus::released: return "released";
    case HoldStatus::expired: return "expired";
  }
  return "unknown";
}

std::string_view durability_name(Durability durability) {
  switch (durability) {
    case Durability::sync: return "sync";
    case Durability::async: return "async";
    case Durability::none: return "none";
  }
  return "unknown";
}

bool parse_durability(std::string_view text, Durability* out) {
  for (Durability d : {Durability::sync, Durability::async, Durability::none}) {
    if (text == durability_name(d)) {
      *out = d;
      return true;
    }
  }
  return false;
}

OpRequest OpRequest::acquire(std::string subject, std::string item, std::int64_t qty) {
  OpRequest op;
  op.type = OpType::acquire;
  op.subject = std::move(subject);
  op.item = std::move(item);
  op.qty = qty;
  return op;
}

OpRequest OpRequest::consume(std::string subject, std::string item, std::int64_t qty) {
  OpRequest op = acquire(std::move(subject), std::move(item), qty);
  op.type = OpType::consume;
  return op;
}

OpRequest OpRequest::transfer(std::string from, std::string to, std::string item,
                              std::int64_t qty) {
  OpRequest op = acquire(std::move(from), std::move(item), qty);
  op.type = OpType::transfer;
  op.to = std::move(to);
  return op;
}

OpRequest OpRequest::hold_of(std::string subject, std::string item, std::int64_t qty,
                             std::int64_t ttl_ns) {
  OpRequest op = acquire(std::move(subject), std::move(item), qty);
  op.type = OpType::hold;
  op.ttl_ns = ttl_ns;
  return op;
}

OpRequest OpRequest::commit(HoldId hold, std::int64_t qty) {
  OpRequest op;
  op.type = OpType::commit;
  op.hold = hold;
  op.qty = qty;
  return op;
}

OpRequest OpRequest::release(HoldId hold) {
  OpRequest op;
  op.type = OpType::release;
  op.hold = hold;
  return op;
}

OpRequest OpRequest::commit_key(std::string hold_key, std::int64_t qty) {
  OpRequest op = commit(0, qty);
  op.hold_key = std::move(hold_key);
  return op;
}

OpRequest OpRequest::release_key(std::string hold_key) {
  OpRequest op = release(0);
  op.hold_key = std::move(hold_key);
  return op;
}

}  // namespace tally
