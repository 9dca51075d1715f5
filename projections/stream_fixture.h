// A generator of random valid event streams and the reference model it
// keeps in plain maps, shared by the unit tests that need many realistic
// events: the State's own tests compare against the model, the history
// projection's tests replay the same stream (the same seed gives the same
// events). Test-only; included by *_test.cc files.
#pragma once

#include <doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "projections/state_fixture.h"

namespace tally::proj {
namespace {

// A reference model in plain maps, and a generator of valid event streams
// that behaves like the engine: due holds are expired before each command.
struct ModelHold {
  std::string subject;
  std::string item;
  std::int64_t qty = 0;
  std::int64_t expires_at_ns = 0;
  HoldState state = HoldState::open;
  std::int64_t finalized_at_ns = 0;
  std::int64_t committed_qty = 0;
};

class Model {
 public:
  explicit Model(std::int64_t window_ns) : window_ns_(window_ns) {}

  std::map<std::pair<std::string, std::string>, Balance> balances;  // non-zero only
  std::map<HoldId, ModelHold> holds;                                // open and remembered
  std::map<std::string, KeyRecord> keys;

  void add(const std::string& subject, const std::string& item, std::int64_t available,
           std::int64_t held) {
    Balance& balance = balances[{subject, item}];
    balance.available += available;
    balance.held += held;
    REQUIRE(balance.available >= 0);
    REQUIRE(balance.held >= 0);
    if (balance == Balance{}) balances.erase({subject, item});
  }
  std::int64_t available(const std::string& subject, const std::string& item) const {
    auto it = balances.find({subject, item});
    return it == balances.end() ? 0 : it->second.available;
  }
  Balance read(const std::string& subject, const std::string& item, std::int64_t now_ns) const {
    auto it = balances.find({subject, item});
    Balance balance = it == balances.end() ? Balance{} : it->second;
    for (const auto& [id, hold] : holds) {
      if (hold.state == HoldState::open && hold.expires_at_ns <= now_ns &&
          hold.subject == subject && hold.item == item) {
        balance.held -= hold.qty;
        balance.available += hold.qty;
      }
    }
    return balance;
  }
  // What applying an event stamped t forgets first.
  void forget(std::int64_t t_ns) {
    if (window_ns_ == 0) return;
    std::erase_if(
        keys, [&](const auto& entry) { return entry.second.timestamp_ns <= t_ns - window_ns_; });
    std::erase_if(holds, [&](const auto& entry) {
      return entry.second.state != HoldState::open &&
             entry.second.finalized_at_ns <= t_ns - window_ns_;
    });
  }
  std::optional<HoldId> first_due(std::int64_t t_ns) const {
    std::optional<std::pair<std::int64_t, HoldId>> best;
    for (const auto& [id, hold] : holds) {
      if (hold.state != HoldState::open || hold.expires_at_ns > t_ns) continue;
      if (!best || std::pair(hold.expires_at_ns, id) < *best)
        best = std::pair(hold.expires_at_ns, id);
    }
    if (!best) return std::nullopt;
    return best->second;
  }
  std::vector<HoldId> holds_in(HoldState state) const {
    std::vector<HoldId> out;
    for (const auto& [id, hold] : holds) {
      if (hold.state == state) out.push_back(id);
    }
    return out;
  }

 private:
  std::int64_t window_ns_;
};

class RandomStream {
 public:
  RandomStream(std::uint64_t seed, std::int64_t window_ns, std::vector<State*> states)
      : rng_(seed), model_(window_ns), feed_(std::move(states)) {}

  Model& model() { return model_; }
  Feed& feed() { return feed_; }

  // Advances time, expires what is due, then applies one command.
  void step(State& state) {
    // Coarse steps and whole-ms ttls make equal expiry times common, so the
    // (expires_at, id) tie-break is exercised.
    feed_.now_ns += static_cast<std::int64_t>(pick(20)) * (kMsNs / 10);
    expire_due(state);
    const std::string key = "key-" + std::to_string(feed_.next_seq());
    const std::uint64_t choice = pick(100);
    if (choice < 25) return acquire(key);
    if (choice < 37) return consume(key);
    if (choice < 49) return transfer(key);
    if (choice < 67) return hold(key);
    if (choice < 75) return settle(key, OpType::commit);
    if (choice < 80) return settle(key, OpType::release);
    if (choice < 90) return batch(key);
    return rejected(key);
  }

  const std::string& subject() { return kSubjects[pick(kSubjects.size())]; }
  const std::string& item() { return kItems[pick(kItems.size())]; }
  std::uint64_t pick(std::uint64_t bound) { return rng_() % bound; }

 private:
  // A few odd names (upper case, UTF-8, 0xff, one byte) among numbered ones,
  // enough pairs that the tables grow several times.
  static std::vector<std::string> names(std::vector<std::string> odd, const std::string& prefix,
                                        int count) {
    for (int index = 0; index < count; index++) odd.push_back(prefix + std::to_string(index));
    return odd;
  }
  inline static const std::vector<std::string> kSubjects =
      names({"alice", "bob", "Eve", "\xc3\xa9mile", "h"}, "subject-", 35);
  inline static const std::vector<std::string> kItems =
      names({"gold", "Gem", "\xff", "potion"}, "item-", 8);

  void expire_due(State& state) {
    while (std::optional<HoldId> id = model_.first_due(feed_.now_ns)) {
      std::optional<HoldInfo> due = state.next_due_hold(feed_.now_ns);
      REQUIRE(due.has_value());
      REQUIRE(due->id == *id);
      ModelHold& hold = model_.holds.at(*id);
      REQUIRE_OK(feed_.expire(*id, hold.subject, hold.item, hold.qty));
      model_.forget(feed_.now_ns);
      finalize(&hold, HoldState::expired, hold.qty, 0);
    }
    REQUIRE_FALSE(state.next_due_hold(feed_.now_ns).has_value());
  }

  void finalize(ModelHold* hold, HoldState state, std::int64_t returned, std::int64_t committed) {
    model_.add(hold->subject, hold->item, returned, -hold->qty);
    hold->state = state;
    hold->finalized_at_ns = feed_.now_ns;
    hold->committed_qty = committed;
  }

  void record(const std::string& key, Reason reason, std::uint32_t failed_index) {
    KeyRecord record;
    record.fingerprint = hash_bytes(key) ^ 0x5eed;
    record.seq = feed_.next_seq() - 1;
    record.timestamp_ns = feed_.now_ns;
    record.reason = reason;
    record.failed_index = failed_index;
    model_.keys[key] = record;
  }

  // Applies op to the model if it is valid there; false (and nothing) if not.
  bool model_op(const Op& op, HoldId hold_id) {
    const std::string subject(op.subject), item(op.item);
    switch (op.type) {
      case OpType::acquire: model_.add(subject, item, op.qty, 0); return true;
      case OpType::consume:
      case OpType::transfer:
      case OpType::hold:
        if (model_.available(subject, item) < op.qty) return false;
        model_.add(subject, item, -op.qty, op.type == OpType::hold ? op.qty : 0);
        if (op.type == OpType::transfer) model_.add(std::string(op.to), item, op.qty, 0);
        if (op.type == OpType::hold) {
          model_.holds[hold_id] = ModelHold{subject, item, op.qty, feed_.now_ns + op.ttl_ns};
        }
        return true;
      default: return false;
    }
  }

  Op amount_op(OpType type) {
    const std::string& from = subject();
    const std::string& what = item();
    const std::int64_t available = model_.available(from, what);
    std::int64_t qty = 1 + static_cast<std::int64_t>(pick(1000));
    if (type != OpType::acquire && available > 0) {
      // Often all of it, so pairs go back to zero and leave the table.
      qty = pick(4) == 0
                ? available
                : 1 + static_cast<std::int64_t>(pick(static_cast<std::uint64_t>(available)));
    }
    Op op = acquire_op(from, what, qty);
    op.type = type;
    if (type == OpType::transfer) {
      op.to = subject();
      if (op.to == op.subject) op.to = from == kSubjects[0] ? kSubjects[1] : kSubjects[0];
    }
    if (type == OpType::hold) op.ttl_ns = (1 + static_cast<std::int64_t>(pick(80))) * kMsNs;
    return op;
  }

  void apply_single(const std::string& key, const Op& op) {
    model_.forget(feed_.now_ns);
    if (!model_op(op, feed_.next_seq())) {
      const Reason reason = Reason::insufficient;
      REQUIRE_OK(feed_.rejected(key, reason, {op}, false, 0));
      record(key, reason, 0);
      return;
    }
    REQUIRE_OK(feed_.one(key, op));
    record(key, Reason::none, 0);
  }

  void acquire(const std::string& key) { apply_single(key, amount_op(OpType::acquire)); }
  void consume(const std::string& key) { apply_single(key, amount_op(OpType::consume)); }
  void transfer(const std::string& key) { apply_single(key, amount_op(OpType::transfer)); }
  void hold(const std::string& key) { apply_single(key, amount_op(OpType::hold)); }

  void settle(const std::string& key, OpType type) {
    model_.forget(feed_.now_ns);
    const std::vector<HoldId> open = model_.holds_in(HoldState::open);
    if (open.empty()) return acquire(key);
    const HoldId id = open[pick(open.size())];
    ModelHold& hold = model_.holds.at(id);
    if (type == OpType::release) {
      REQUIRE_OK(feed_.one(key, settle_op(type, id, hold.subject, hold.item, hold.qty)));
      finalize(&hold, HoldState::released, hold.qty, 0);
    } else {
      const std::int64_t committed =
          1 + static_cast<std::int64_t>(pick(static_cast<std::uint64_t>(hold.qty)));
      REQUIRE_OK(feed_.one(key, settle_op(type, id, hold.subject, hold.item, committed,
                                         hold.qty - committed)));
      finalize(&hold, HoldState::committed, hold.qty - committed, committed);
    }
    record(key, Reason::none, 0);
  }

  void batch(const std::string& key) {
    model_.forget(feed_.now_ns);
    const std::uint64_t seq = feed_.next_seq();
    std::vector<Op> ops;
    const std::size_t count = 1 + pick(4);
    for (std::size_t op_index = 0; op_index < count; op_index++) {
      static constexpr OpType kTypes[] = {OpType::acquire, OpType::consume, OpType::transfer,
                                          OpType::hold};
      const Op op = amount_op(kTypes[pick(std::size(kTypes))]);
      // Only ops valid after the ones before: an applied batch is all valid.
      if (model_op(op, log::hold_id(seq, true, ops.size()))) ops.push_back(op);
    }
    if (ops.empty()) {
      ops.push_back(amount_op(OpType::acquire));
      model_op(ops.back(), 0);
    }
    REQUIRE_OK(feed_.batch(key, ops));
    record(key, Reason::none, 0);
  }

  void rejected(const std::string& key) {
    model_.forget(feed_.now_ns);
    const std::vector<HoldId> finalized = model_.holds_in(HoldState::committed);
    if (!finalized.empty() && pick(2) == 0) {
      const HoldId id = finalized[pick(finalized.size())];
      REQUIRE_OK(
          feed_.rejected(key, Reason::hold_finalized, {request_op(OpType::release, id)}, false, 0));
      record(key, Reason::hold_finalized, 0);
      return;
    }
    const std::vector<Op> ops = {acquire_op(subject(), item(), 1),
                                 request_op(OpType::commit, 1u << 30, 5)};
    REQUIRE_OK(feed_.rejected(key, Reason::hold_unknown, ops, true, 1));
    record(key, Reason::hold_unknown, 1);
  }

  std::mt19937_64 rng_;
  Model model_;
  Feed feed_;
};

}  // namespace
}  // namespace tally::proj
