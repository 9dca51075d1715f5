#include "projections/changes.h"

#include <doctest.h>

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "projections/state_fixture.h"
#include "projections/stream_fixture.h"

namespace tally::proj {

// For doctest's messages.
std::ostream& operator<<(std::ostream& out, const PairDelta& delta) {
  return out << delta.subject << "/" << delta.item << " " << delta.available << "," << delta.held;
}

namespace {

// The event views `ops`, which must outlive it.
log::Event event_of(const std::vector<Op>& ops, bool batch, Reason rejected = Reason::none) {
  log::Event event;
  event.seq = 7;
  event.timestamp_ns = kStartNs;
  event.key = "k";
  event.batch = batch;
  event.rejected = rejected;
  event.ops = ops;
  return event;
}

std::vector<PairDelta> deltas_of(const log::Event& event) {
  std::vector<PairDelta> out;
  event_deltas(event, &out);
  return out;
}

std::vector<PairDelta> single(const Op& op) { return deltas_of(event_of({op}, false)); }

PairDelta delta(std::string_view subject, std::string_view item, std::int64_t available,
                std::int64_t held) {
  return PairDelta{subject, item, available, held};
}

TEST_CASE("each op type changes its pairs as State::apply does") {
  CHECK(single(acquire_op("alice", "gold", 5)) == std::vector{delta("alice", "gold", 5, 0)});
  CHECK(single(consume_op("alice", "gold", 3)) == std::vector{delta("alice", "gold", -3, 0)});
  CHECK(single(transfer_op("alice", "bob", "gold", 4)) ==
        std::vector{delta("alice", "gold", -4, 0), delta("bob", "gold", 4, 0)});
  CHECK(single(hold_op("alice", "gold", 6, 10 * kMsNs)) ==
        std::vector{delta("alice", "gold", -6, 6)});
  // Commit 4 of a hold of 6: 4 consumed, 2 back to available.
  CHECK(single(settle_op(OpType::commit, 3, "alice", "gold", 4, 2)) ==
        std::vector{delta("alice", "gold", 2, -6)});
  CHECK(single(settle_op(OpType::commit, 3, "alice", "gold", 6, 0)) ==
        std::vector{delta("alice", "gold", 0, -6)});
  CHECK(single(settle_op(OpType::release, 3, "alice", "gold", 6)) ==
        std::vector{delta("alice", "gold", 6, -6)});
  const std::vector<Op> expire_ops = {settle_op(OpType::expire, 3, "alice", "gold", 6)};
  log::Event expire = event_of(expire_ops, false);
  expire.key = "";
  CHECK(deltas_of(expire) == std::vector{delta("alice", "gold", 6, -6)});
}

TEST_CASE("a batch sums its ops per pair, pairs in first-touch order") {
  const std::vector<Op> ops = {
      acquire_op("alice", "gold", 10),
      transfer_op("alice", "bob", "gold", 3),
      acquire_op("carol", "silver", 1),
      hold_op("alice", "gold", 2, kMsNs),
      acquire_op("bob", "silver", 8),
      consume_op("bob", "silver", 8),  // bob's silver comes back to zero
      transfer_op("bob", "alice", "gold", 1),
  };
  CHECK(deltas_of(event_of(ops, true)) == std::vector{
                                             delta("alice", "gold", 10 - 3 - 2 + 1, 2),
                                             delta("bob", "gold", 3 - 1, 0),
                                             delta("carol", "silver", 1, 0),
                                             delta("bob", "silver", 0, 0),
                                         });
  // The same names as different pairs: subject and item both count.
  CHECK(deltas_of(event_of({acquire_op("a", "b", 1), acquire_op("b", "a", 2)}, true)) ==
        std::vector{delta("a", "b", 1, 0), delta("b", "a", 2, 0)});
}

TEST_CASE("a rejected event changes nothing, and the output is cleared first") {
  std::vector<PairDelta> out = {delta("stale", "entry", 1, 1)};
  event_deltas(event_of({consume_op("alice", "gold", 1000)}, false, Reason::insufficient), &out);
  CHECK(out.empty());
  out.push_back(delta("stale", "entry", 1, 1));
  event_deltas(event_of({acquire_op("zed", "tin", 1), request_op(OpType::commit, 999)}, true,
                        Reason::hold_unknown),
               &out);
  CHECK(out.empty());
  event_deltas(event_of({acquire_op("alice", "gold", 2)}, false), &out);
  CHECK(out == std::vector{delta("alice", "gold", 2, 0)});
}

TEST_CASE("an event's op name is its op type, or batch") {
  CHECK(event_op_name(event_of({acquire_op("a", "b", 1)}, false)) == "acquire");
  CHECK(event_op_name(event_of({transfer_op("a", "c", "b", 1)}, false)) == "transfer");
  CHECK(event_op_name(event_of({settle_op(OpType::expire, 1, "a", "b", 1)}, false)) == "expire");
  CHECK(event_op_name(event_of({settle_op(OpType::commit, 1, "a", "b", 1)}, false)) == "commit");
  CHECK(event_op_name(event_of({acquire_op("a", "b", 1)}, true)) == "batch");
  CHECK(event_op_name(event_of({consume_op("a", "b", 1)}, false, Reason::insufficient)) ==
        "consume");
  CHECK(event_op_name(event_of({acquire_op("a", "b", 1)}, true, Reason::overflow)) == "batch");
}

// The deltas of every event, summed per pair, are the stored balances.
TEST_CASE("random streams: summed deltas equal the State's balances") {
  State state(StateOptions{50 * kMsNs});
  RandomStream stream(11, 50 * kMsNs, {&state});
  std::map<std::pair<std::string, std::string>, Balance> sums;
  std::vector<PairDelta> deltas;
  std::uint64_t events = 0;
  std::uint64_t changed = 0;
  stream.feed().on_applied = [&](const log::Event& event) {
    events++;
    event_deltas(event, &deltas);
    for (const PairDelta& change : deltas) {
      Balance& sum = sums[{std::string(change.subject), std::string(change.item)}];
      sum.available += change.available;
      sum.held += change.held;
      changed++;
      // Every pair the event touched, at once.
      CHECK(sum == state.balance(change.subject, change.item, kStoredOnly));
    }
  };
  for (int step = 0; step < 20'000; step++) stream.step(state);
  std::vector<Listed> expected;
  for (const auto& [pair, balance] : sums) {
    if (balance != Balance{}) expected.push_back({pair.first, pair.second, balance});
  }
  CHECK(all_balances(state, kStoredOnly) == expected);
  CHECK(events == state.last_seq());
  CHECK(changed > events / 2);  // the stream is not mostly rejections
}

}  // namespace
}  // namespace tally::proj
