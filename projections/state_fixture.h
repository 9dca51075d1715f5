// Test fixtures shared by the projections' unit tests: op builders, a Feed
// that numbers events and applies them to several States (and shows each to
// an observer), and readers that collect balances. Test-only; included by
// *_test.cc files.
#pragma once

#include <doctest.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "projections/flat_table.h"
#include "projections/state.h"

namespace tally::proj {
namespace {

using log::Op;
using log::OpType;
using log::Reason;

constexpr std::int64_t kStartNs = 1'700'000'000'000'000'000;
constexpr std::int64_t kMsNs = 1'000'000;

// Status-returning expressions, with the message shown on failure.
#define REQUIRE_OK(expr)                                  \
  do {                                                    \
    const ::tally::Status status_ = (expr);               \
    REQUIRE_MESSAGE(status_.ok(), status_.to_string());   \
  } while (0)

#define REQUIRE_CORRUPT(expr)                                                      \
  do {                                                                             \
    const ::tally::Status status_ = (expr);                                        \
    REQUIRE_MESSAGE(status_.code() == ErrorCode::corrupt, status_.to_string());    \
  } while (0)

inline Op acquire_op(std::string_view subject, std::string_view item, std::int64_t qty) {
  Op op;
  op.type = OpType::acquire;
  op.subject = subject;
  op.item = item;
  op.qty = qty;
  return op;
}

inline Op consume_op(std::string_view subject, std::string_view item, std::int64_t qty) {
  Op op = acquire_op(subject, item, qty);
  op.type = OpType::consume;
  return op;
}

inline Op transfer_op(std::string_view from, std::string_view to, std::string_view item,
               std::int64_t qty) {
  Op op = acquire_op(from, item, qty);
  op.type = OpType::transfer;
  op.to = to;
  return op;
}

inline Op hold_op(std::string_view subject, std::string_view item, std::int64_t qty,
                  std::int64_t ttl_ns) {
  Op op = acquire_op(subject, item, qty);
  op.type = OpType::hold;
  op.ttl_ns = ttl_ns;
  return op;
}

// commit, release or expire as applied: resolved from the hold.
inline Op settle_op(OpType type, HoldId hold, std::string_view subject, std::string_view item,
             std::int64_t qty, std::int64_t released = 0) {
  Op op = acquire_op(subject, item, qty);
  op.type = type;
  op.hold = hold;
  op.released = released;
  return op;
}

// commit or release as a rejected request carries it: hold and qty only.
inline Op request_op(OpType type, HoldId hold, std::int64_t qty = 0) {
  Op op;
  op.type = type;
  op.hold = hold;
  op.qty = qty;
  return op;
}

// Numbers events and applies each to every State it feeds, and to totals.
class Feed {
 public:
  explicit Feed(std::vector<State*> states) : states_(std::move(states)) {}

  std::int64_t now_ns = kStartNs;
  std::uint64_t fingerprint_salt = 0x5eed;  // fingerprint = XXH3(key) ^ salt
  FlowTotals totals;
  // Called with each event once every State has applied it; the event's
  // views are valid during the call only.
  std::function<void(const log::Event&)> on_applied;

  std::uint64_t next_seq() const { return states_[0]->last_seq() + 1; }

  Status one(std::string_view key, const Op& op) {
    return apply(key, std::span<const Op>(&op, 1), false, Reason::none, 0);
  }
  Status batch(std::string_view key, const std::vector<Op>& ops) {
    return apply(key, ops, true, Reason::none, 0);
  }
  Status rejected(std::string_view key, Reason reason, const std::vector<Op>& ops, bool batch,
                  std::uint32_t failed_index) {
    return apply(key, ops, batch, reason, failed_index);
  }
  Status expire(HoldId hold, std::string_view subject, std::string_view item, std::int64_t qty) {
    return one("", settle_op(OpType::expire, hold, subject, item, qty));
  }

  Status apply(std::string_view key, std::span<const Op> ops, bool batch, Reason reason,
               std::uint32_t failed_index) {
    log::Event event;
    event.seq = next_seq();
    event.timestamp_ns = now_ns;
    event.key = key;
    event.fingerprint = key.empty() ? 0 : hash_bytes(key) ^ fingerprint_salt;
    event.batch = batch;
    event.rejected = reason;
    event.failed_index = failed_index;
    event.ops = ops;
    for (State* state : states_) TALLY_TRY(state->apply(event));
    totals.apply(event);
    if (on_applied) on_applied(event);
    return Status();
  }

 private:
  std::vector<State*> states_;
};

inline Balance bal(std::int64_t available, std::int64_t held) { return Balance{available, held}; }

struct Listed {
  std::string subject;
  std::string item;
  Balance balance;
  bool operator==(const Listed&) const = default;
};

inline std::vector<Listed> all_balances(const State& state, std::int64_t now_ns) {
  std::vector<Listed> out;
  state.for_each_balance(now_ns, [&](std::string_view subject, std::string_view item, Balance b) {
    out.push_back({std::string(subject), std::string(item), b});
  });
  return out;
}

inline std::vector<std::pair<std::string, Balance>> list_of(const State& state,
                                                            std::string_view subject,
                                                            std::int64_t now_ns) {
  std::vector<std::pair<std::string, Balance>> out;
  state.list(subject, now_ns, [&](std::string_view item, Balance b) {
    out.emplace_back(std::string(item), b);
  });
  return out;
}

// ---- a script of every kind of event, for save/load and snapshot tests

// The window the script is written for.
constexpr std::int64_t kWindowNs = 50 * kMsNs;

// Hold ids the script's later steps need, filled in as it runs.
struct ScriptHolds {
  HoldId partly_committed = 0;
  HoldId released = 0;
  HoldId expired = 0;
  HoldId in_batch = 0;
  HoldId expired_late = 0;
  HoldId long_open = 0;  // ttl past the window: open, its key kept, to the end
};

using Step = std::function<Status(Feed&, ScriptHolds&)>;

// Every kind of event: acquire, consume, transfer, holds, a partial and a
// full commit, release, expiries, a batch with a hold, rejected single and
// batch requests, an unkeyed event, a jump past the window that forgets
// keys and finalized holds, and holds whose ttl is past the window (k6,
// released; k9, open to the end: the state keeps their keys).
inline std::vector<Step> script() {
  std::vector<Step> steps;
  steps.push_back(
      [](Feed& f, ScriptHolds&) { return f.one("k1", acquire_op("alice", "gold", 100)); });
  steps.push_back(
      [](Feed& f, ScriptHolds&) { return f.one("k2", acquire_op("bob", "silver", 50)); });
  steps.push_back(
      [](Feed& f, ScriptHolds&) { return f.one("k3", consume_op("alice", "gold", 10)); });
  steps.push_back(
      [](Feed& f, ScriptHolds&) { return f.one("k4", transfer_op("alice", "carol", "gold", 20)); });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    h.partly_committed = f.next_seq();
    return f.one("k5", hold_op("alice", "gold", 30, 10 * kMsNs));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    h.released = f.next_seq();
    return f.one("k6", hold_op("bob", "silver", 5, 100 * kMsNs));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    f.now_ns += kMsNs;
    return f.one("k7", settle_op(OpType::commit, h.partly_committed, "alice", "gold", 12, 18));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    h.expired = f.next_seq();
    return f.one("k8", hold_op("alice", "gold", 7, 5 * kMsNs));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    f.now_ns += 6 * kMsNs;
    return f.expire(h.expired, "alice", "gold", 7);
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    h.in_batch = log::hold_id(f.next_seq(), true, 1);
    return f.batch("k10", {acquire_op("dave", "gold", 9), hold_op("dave", "gold", 4, 20 * kMsNs),
                           transfer_op("dave", "erin", "gold", 2)});
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    return f.one("k11", settle_op(OpType::release, h.released, "bob", "silver", 5));
  });
  steps.push_back([](Feed& f, ScriptHolds&) {
    return f.rejected("k12", Reason::insufficient, {consume_op("alice", "gold", 1000)}, false, 0);
  });
  steps.push_back([](Feed& f, ScriptHolds&) {
    return f.rejected("k13", Reason::hold_unknown,
                      {acquire_op("zed", "tin", 1), request_op(OpType::commit, 999)}, true, 1);
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    return f.one("k14", settle_op(OpType::commit, h.in_batch, "dave", "gold", 4, 0));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    h.long_open = f.next_seq();
    return f.one("k9", hold_op("carol", "gold", 5, 4 * kWindowNs));
  });
  steps.push_back([](Feed& f, ScriptHolds&) {
    f.now_ns += kWindowNs;  // forgets k1..k11 and the holds finalized with them
    return f.one("k15", acquire_op("frank", "gold", 3));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    h.expired_late = f.next_seq();
    return f.one("k16", hold_op("frank", "gold", 1, kMsNs));
  });
  steps.push_back([](Feed& f, ScriptHolds& h) {
    f.now_ns += 2 * kMsNs;
    return f.expire(h.expired_late, "frank", "gold", 1);
  });
  steps.push_back([](Feed& f, ScriptHolds&) { return f.one("", acquire_op("gina", "gold", 1)); });
  steps.push_back([](Feed& f, ScriptHolds&) {
    f.now_ns += kWindowNs;
    return f.one("k19", consume_op("frank", "gold", 2));
  });
  return steps;
}

}  // namespace
}  // namespace tally::proj
