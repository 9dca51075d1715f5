#include "projections/state.h"

#include <doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "projections/flat_table.h"
#include "projections/state_fixture.h"
#include "projections/state_impl.h"
#include "projections/stream_fixture.h"

namespace tally::proj {

// Reaches into a State to break it on purpose (declared a friend in state.h).
struct StateTestPeer {
  static State::Impl& impl(State& state) { return *state.impl_; }
};

namespace {

// ---------------------------------------------------------------- ops

TEST_CASE("acquire, consume and transfer move available") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 100)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(100, 0));
  REQUIRE_OK(feed.one("k2", consume_op("alice", "gold", 30)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(70, 0));
  REQUIRE_OK(feed.one("k3", transfer_op("alice", "bob", "gold", 70)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(0, 0));
  CHECK(state.balance("bob", "gold", kStoredOnly) == bal(70, 0));
  CHECK(state.balance("nobody", "gold", kStoredOnly) == bal(0, 0));
  CHECK(state.last_seq() == 3);
  CHECK(state.last_timestamp_ns() == kStartNs);
  const StateCounts counts = state.counts();
  CHECK(counts.balances == 1);  // alice's pair went back to zero
  CHECK(counts.keys == 3);
  CHECK(counts.subjects == 2);
  CHECK(counts.items == 1);
  REQUIRE_OK(state.check_invariants());
  REQUIRE_OK(feed.totals.check(state));
}

TEST_CASE("a hold moves available to held under its seq, until commit") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 100)));
  const HoldId id = feed.next_seq();
  REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 40, 10 * kMsNs)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(60, 40));
  std::optional<HoldInfo> hold = state.find_hold(id);
  REQUIRE(hold.has_value());
  CHECK(hold->subject == "alice");
  CHECK(hold->item == "gold");
  CHECK(hold->qty == 40);
  CHECK(hold->state == HoldState::open);
  CHECK(hold->expires_at_ns == kStartNs + 10 * kMsNs);
  CHECK(state.next_expiry_ns() == kStartNs + 10 * kMsNs);
  CHECK_FALSE(state.next_due_hold(kStartNs + 10 * kMsNs - 1).has_value());
  CHECK(state.next_due_hold(kStartNs + 10 * kMsNs)->id == id);

  // A partial commit consumes 25 and gives 15 back.
  feed.now_ns += kMsNs;
  REQUIRE_OK(feed.one("k3", settle_op(OpType::commit, id, "alice", "gold", 25, 15)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(75, 0));
  hold = state.find_hold(id);
  REQUIRE(hold.has_value());
  CHECK(hold->state == HoldState::committed);
  CHECK(hold->committed_qty == 25);
  CHECK(hold->finalized_at_ns == kStartNs + kMsNs);
  CHECK_FALSE(state.next_expiry_ns().has_value());
  CHECK(state.counts().open_holds == 0);
  CHECK(state.counts().finalized_holds == 1);
  REQUIRE_OK(state.check_invariants());
  REQUIRE_OK(feed.totals.check(state));
}

TEST_CASE("release and expire give the hold back to available") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  const HoldId released = feed.next_seq();
  REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 4, 5 * kMsNs)));
  const HoldId expired = feed.next_seq();
  REQUIRE_OK(feed.one("k3", hold_op("alice", "gold", 6, 5 * kMsNs)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(0, 10));
  REQUIRE_OK(feed.one("k4", settle_op(OpType::release, released, "alice", "gold", 4)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(4, 6));
  feed.now_ns += 5 * kMsNs;
  REQUIRE_OK(feed.expire(expired, "alice", "gold", 6));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(10, 0));
  CHECK(state.find_hold(released)->state == HoldState::released);
  CHECK(state.find_hold(expired)->state == HoldState::expired);
  CHECK(state.counts().keys == 4);  // the expire event has no key
  REQUIRE_OK(state.check_invariants());
  REQUIRE_OK(feed.totals.check(state));
}

TEST_CASE("holds inside a batch get batch hold ids") {
  State state;
  Feed feed({&state});
  const std::uint64_t seq = feed.next_seq();
  REQUIRE_OK(feed.batch(
      "b1", {acquire_op("alice", "gold", 10), hold_op("alice", "gold", 3, 5 * kMsNs),
             transfer_op("alice", "bob", "gold", 2), hold_op("alice", "gold", 5, 2 * kMsNs)}));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(0, 8));
  CHECK(state.balance("bob", "gold", kStoredOnly) == bal(2, 0));
  CHECK_FALSE(state.find_hold(seq).has_value());
  const HoldId first = log::hold_id(seq, true, 1);
  const HoldId second = log::hold_id(seq, true, 3);
  REQUIRE(state.find_hold(first).has_value());
  REQUIRE(state.find_hold(second).has_value());
  CHECK(state.find_hold(first)->qty == 3);
  CHECK(state.find_hold(second)->qty == 5);
  CHECK(log::hold_id_seq(second) == seq);
  CHECK(state.next_due_hold(INT64_MAX)->id == second);

  // Equal expiry times: the smaller id comes first.
  feed.now_ns += kMsNs;
  const HoldId standalone = feed.next_seq();
  REQUIRE_OK(feed.one("k-tie", hold_op("bob", "gold", 1, kMsNs)));
  CHECK(state.find_hold(standalone)->expires_at_ns == state.find_hold(second)->expires_at_ns);
  CHECK(standalone < second);
  CHECK(state.next_due_hold(INT64_MAX)->id == standalone);

  REQUIRE_OK(feed.one("k2", settle_op(OpType::commit, second, "alice", "gold", 5, 0)));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(0, 3));
  REQUIRE_OK(feed.one("k3", settle_op(OpType::release, standalone, "bob", "gold", 1)));
  CHECK(state.next_due_hold(INT64_MAX)->id == first);
  REQUIRE_OK(state.check_invariants());
  REQUIRE_OK(feed.totals.check(state));
}

TEST_CASE("a rejected event records its key and changes no balance") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  const std::uint64_t digest_before = state.digest();
  const std::uint64_t seq = feed.next_seq();
  REQUIRE_OK(feed.rejected("k2", Reason::insufficient,
                           {acquire_op("alice", "gold", 1), consume_op("alice", "gold", 50)}, true,
                           1));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(10, 0));
  CHECK(state.last_seq() == seq);
  CHECK(state.digest() != digest_before);
  const KeyRecord* record = state.find_key("k2");
  REQUIRE(record != nullptr);
  CHECK(record->seq == seq);
  CHECK(record->reason == Reason::insufficient);
  CHECK(record->failed_index == 1);
  CHECK(record->timestamp_ns == kStartNs);
  CHECK(record->fingerprint == (hash_bytes("k2") ^ 0x5eed));
  REQUIRE_OK(
      feed.rejected("k3", Reason::hold_unknown, {request_op(OpType::commit, 99, 0)}, false, 0));
  CHECK(state.find_key("k3")->reason == Reason::hold_unknown);
  const KeyRecord* applied = state.find_key("k1");
  REQUIRE(applied != nullptr);
  CHECK(applied->reason == Reason::none);
  CHECK(state.find_key("nope") == nullptr);
  REQUIRE_OK(feed.totals.check(state));
}

// ---------------------------------------------------------------- window

TEST_CASE("the window forgets keys and finalized holds at exactly t - window") {
  // A key stamped t0 is remembered by events stamped up to t0 + window - 1
  // and forgotten by an event stamped t0 + window: the cutoff is inclusive.
  constexpr std::int64_t kWindowNs = 1000;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  const HoldId id = feed.next_seq();
  REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 5, kMsNs)));
  const std::int64_t t0 = feed.now_ns;
  REQUIRE_OK(feed.one("k3", settle_op(OpType::release, id, "alice", "gold", 5)));

  feed.now_ns = t0 + kWindowNs - 1;
  REQUIRE_OK(feed.one("k4", acquire_op("bob", "gold", 1)));
  CHECK(state.find_key("k1") != nullptr);
  CHECK(state.find_key("k3") != nullptr);
  CHECK(state.find_hold(id).has_value());

  feed.now_ns = t0 + kWindowNs;
  REQUIRE_OK(feed.one("k5", acquire_op("bob", "gold", 1)));
  CHECK(state.find_key("k1") == nullptr);
  CHECK(state.find_key("k3") == nullptr);
  CHECK_FALSE(state.find_hold(id).has_value());
  CHECK(state.find_key("k4") != nullptr);
  CHECK(state.counts().keys == 2);
  CHECK(state.counts().finalized_holds == 0);
  // A forgotten key may be decided again.
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 1)));
  CHECK(state.find_key("k1")->seq == state.last_seq());
}

TEST_CASE("a hold whose ttl is past the window keeps its key while the hold is known") {
  constexpr std::int64_t kWindowNs = 10 * kMsNs;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  const HoldId long_hold = feed.next_seq();
  REQUIRE_OK(feed.one("long", hold_op("alice", "gold", 2, 3 * kWindowNs)));
  const HoldId short_hold = feed.next_seq();
  REQUIRE_OK(feed.one("short", hold_op("alice", "gold", 1, kWindowNs - kMsNs)));
  const HoldId in_batch = log::hold_id(feed.next_seq(), true, 0);
  REQUIRE_OK(feed.batch("batch", {hold_op("alice", "gold", 1, 3 * kWindowNs)}));
  CHECK(state.hold_of_key("long") == long_hold);
  CHECK(state.hold_of_key("short") == short_hold);
  CHECK(state.hold_of_key("k1") == 1);  // not a hold: find_hold says so
  CHECK_FALSE(state.find_hold(state.hold_of_key("k1")).has_value());

  // Past the window: the key index forgot every key, the long hold's stays.
  feed.now_ns += kWindowNs;
  REQUIRE_OK(feed.expire(short_hold, "alice", "gold", 1));
  REQUIRE_OK(feed.one("k2", acquire_op("bob", "gold", 1)));
  CHECK(state.find_key("long") == nullptr);
  CHECK(state.hold_of_key("long") == long_hold);
  CHECK(state.hold_of_key("short") == 0);
  CHECK(state.hold_of_key("batch") == 0);  // a batch's key names none of its holds
  CHECK(state.find_hold(in_batch)->state == HoldState::open);

  // A new request with the forgotten key is decided anew; a new hold with it
  // takes the key over, and the first hold keeps nothing.
  const HoldId second = feed.next_seq();
  REQUIRE_OK(feed.one("long", hold_op("alice", "gold", 1, 3 * kWindowNs)));
  CHECK(state.hold_of_key("long") == second);
  feed.now_ns += kWindowNs;
  REQUIRE_OK(feed.one("k3", acquire_op("bob", "gold", 1)));
  CHECK(state.find_key("long") == nullptr);
  CHECK(state.hold_of_key("long") == second);

  // Settled, then forgotten a window later: the key goes with the hold.
  REQUIRE_OK(feed.one("k4", settle_op(OpType::commit, second, "alice", "gold", 1, 0)));
  CHECK(state.hold_of_key("long") == second);
  feed.now_ns += kWindowNs;
  REQUIRE_OK(feed.one("k5", acquire_op("bob", "gold", 1)));
  CHECK_FALSE(state.find_hold(second).has_value());
  CHECK(state.hold_of_key("long") == 0);
  REQUIRE_OK(state.check_invariants());

  // A key used again by any other request names that request from then on,
  // also once the key index forgets it again: never the long hold before.
  for (const bool rejected : {false, true}) {
    CAPTURE(rejected);
    const HoldId third = feed.next_seq();
    REQUIRE_OK(feed.one("again", hold_op("alice", "gold", 1, 3 * kWindowNs)));
    feed.now_ns += kWindowNs;
    REQUIRE_OK(feed.one(rejected ? "k6" : "k7", acquire_op("bob", "gold", 1)));
    CHECK(state.hold_of_key("again") == third);
    if (rejected) {
      REQUIRE_OK(feed.rejected("again", Reason::insufficient, {consume_op("bob", "gold", 99)},
                               false, 0));
    } else {
      REQUIRE_OK(feed.one("again", acquire_op("bob", "gold", 1)));
    }
    CHECK(state.hold_of_key("again") == (rejected ? 0 : feed.next_seq() - 1));
    feed.now_ns += kWindowNs;
    REQUIRE_OK(feed.one(rejected ? "k8" : "k9", acquire_op("bob", "gold", 1)));
    CHECK(state.find_key("again") == nullptr);
    CHECK(state.hold_of_key("again") == 0);
    CHECK(state.find_hold(third)->state == HoldState::open);
    REQUIRE_OK(state.check_invariants());
    REQUIRE_OK(feed.one(rejected ? "k10" : "k11",
                        settle_op(OpType::release, third, "alice", "gold", 1)));
  }
}

TEST_CASE("a window of 0 remembers forever, and open holds are never forgotten") {
  State forever(StateOptions{0});
  State windowed(StateOptions{10});
  Feed feed({&forever, &windowed});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  const HoldId id = feed.next_seq();
  REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 5, 1'000'000 * kMsNs)));
  feed.now_ns += 1000 * kMsNs;
  REQUIRE_OK(feed.one("k3", acquire_op("alice", "gold", 1)));
  CHECK(forever.find_key("k1") != nullptr);
  CHECK(windowed.find_key("k1") == nullptr);
  CHECK(windowed.find_hold(id)->state == HoldState::open);
  CHECK(forever.digest() != windowed.digest());
}

TEST_CASE("the key arena recycles chunks as keys leave the window") {
  // Enough keys to fill several arena chunks, so the FIFO wraps and frees.
  State state(StateOptions{100});
  Feed feed({&state});
  REQUIRE_OK(feed.one("seed", acquire_op("alice", "gold", 1)));
  std::vector<std::string> keys;
  for (int index = 0; index < 40'000; index++) {
    keys.push_back("key-" + std::string(static_cast<std::size_t>(index % 200), 'x') +
                   std::to_string(index));
    feed.now_ns += 10;
    REQUIRE_OK(feed.one(keys.back(), acquire_op("alice", "gold", 1)));
    // Keys stamped within the last 100 ns: this one and the 9 before.
    if (index >= 10 && index % 997 == 0) CHECK(state.counts().keys == 10);
  }
  CHECK(state.find_key(keys.back()) != nullptr);
  CHECK(state.find_key(keys[keys.size() - 10]) != nullptr);
  CHECK(state.find_key(keys[keys.size() - 11]) == nullptr);
  CHECK(state.find_key(keys[0]) == nullptr);
}

TEST_CASE("keys added unindexed, then indexed by where their slots lie, act as if inserted") {
  const auto key_of = [](int index) {
    std::string key = "key-";
    key += std::to_string(index);
    key.append(static_cast<std::size_t>(index % 40), 'k');
    return key;
  };
  const auto record_of = [](int index) {
    KeyRecord record;
    record.seq = static_cast<std::uint64_t>(index) + 1;
    record.timestamp_ns = index;
    record.fingerprint = static_cast<std::uint64_t>(index) * 7;
    return record;
  };
  std::vector<KeyIndex::Added> added;
  std::vector<KeyIndex::Added> scratch(30'000);
  const auto add = [&](KeyIndex& index, int key, int record) {
    const std::string name = key_of(key);
    added.push_back(index.add_unindexed(name, KeyIndex::hash_of(name), record_of(record)));
  };
  const auto index_added = [&](KeyIndex& index) {
    const bool unique = index.index_added(added, scratch, KeyIndex::Repeats::refused);
    added.clear();
    return unique;
  };
  constexpr int kKeys = 30'000;
  KeyIndex index;
  index.reserve(kKeys);
  // Three runs, the last of a single key.
  for (int key = 0; key < kKeys; key++) {
    add(index, key, key);
    if (key == 9'999 || key == kKeys - 2 || key == kKeys - 1) REQUIRE(index_added(index));
  }
  CHECK(index.size() == kKeys);
  CHECK(index.newest_timestamp_ns() == kKeys - 1);
  for (int key = 0; key < kKeys; key++) {
    const KeyRecord* found = index.find(key_of(key));
    REQUIRE(found != nullptr);
    CHECK(found->seq == record_of(key).seq);
    CHECK(found->fingerprint == record_of(key).fingerprint);
  }
  CHECK(index.find("key-nope") == nullptr);
  // An indexed key inserted again takes the later record; a new key is added.
  CHECK(index.insert(key_of(5), KeyIndex::hash_of(key_of(5)), record_of(kKeys)));
  CHECK(index.find(key_of(5))->seq == record_of(kKeys).seq);
  // Again at the time of the record it has, it is refused.
  KeyRecord same_time = record_of(kKeys);
  same_time.seq++;
  KeyIndex::Repeat repeat;
  CHECK_FALSE(index.insert(key_of(5), KeyIndex::hash_of(key_of(5)), same_time, &repeat));
  CHECK(repeat.key == key_of(5));
  CHECK(repeat.first_seq == record_of(kKeys).seq);
  CHECK(repeat.again_seq == same_time.seq);
  CHECK(index.find(key_of(5))->seq == record_of(kKeys).seq);
  CHECK(index.insert(key_of(kKeys), KeyIndex::hash_of(key_of(kKeys)), record_of(kKeys)));
  CHECK(index.size() == kKeys + 1);
  // Eviction passes key 5's replaced record and keeps its later one.
  index.evict_through(kKeys / 2);
  CHECK(index.size() == kKeys / 2 + 1);
  CHECK(index.find(key_of(kKeys / 2)) == nullptr);
  CHECK(index.find(key_of(kKeys / 2 + 1)) != nullptr);
  CHECK(index.find(key_of(5))->seq == record_of(kKeys).seq);
  std::size_t visited = 0;
  index.for_each([&](std::string_view, const KeyRecord&) { visited++; });
  CHECK(visited == index.size());

  SUBCASE("a key added twice in one run is refused, or its later record kept") {
    KeyIndex twice;
    for (const int key : {1, 2, 3, 2}) add(twice, key, key);
    CHECK_FALSE(index_added(twice));
    KeyIndex latest;
    for (const int record : {1, 2, 3, 4}) add(latest, record == 4 ? 2 : record, record);
    REQUIRE(latest.index_added(added, scratch, KeyIndex::Repeats::latest_wins));
    added.clear();
    CHECK(latest.size() == 3);
    CHECK(latest.find(key_of(2))->seq == record_of(4).seq);
  }
  SUBCASE("in a run long enough to be grouped by slot, a repeated key keeps its latest record") {
    // Records 0..999 of keys 0..999, then keys 10, 500 and 10 again: the
    // grouping must keep each key's records in arena order.
    KeyIndex latest;
    for (int record = 0; record < 1'000; record++) add(latest, record, record);
    add(latest, 10, 1'000);
    add(latest, 500, 1'001);
    add(latest, 10, 1'002);
    REQUIRE(added.size() >= 256);
    REQUIRE(latest.index_added(added, scratch, KeyIndex::Repeats::latest_wins));
    added.clear();
    CHECK(latest.size() == 1'000);
    CHECK(latest.find(key_of(10))->seq == record_of(1'002).seq);
    CHECK(latest.find(key_of(500))->seq == record_of(1'001).seq);
    CHECK(latest.find(key_of(999))->seq == record_of(999).seq);
  }
  SUBCASE("a key added again after it was indexed is refused, or its later record kept") {
    KeyIndex again;
    add(again, 1, 1);
    REQUIRE(index_added(again));
    add(again, 1, 2);
    CHECK_FALSE(index_added(again));
    KeyIndex latest;
    add(latest, 1, 1);
    REQUIRE(index_added(latest));
    add(latest, 1, 2);
    REQUIRE(latest.index_added(added, scratch, KeyIndex::Repeats::latest_wins));
    added.clear();
    CHECK(latest.size() == 1);
    CHECK(latest.find(key_of(1))->seq == record_of(2).seq);
  }
}

// ---------------------------------------------------------------- reads

// ---------------------------------------------------------------- keys in runs

struct KeyEvent {
  std::string key;  // empty: an event without one (an expire)
  std::int64_t time_ns = 0;
};

// Remembers the keys of events 1, 2, ... one by one (remember_key) and in
// runs (remember_key_batched, then index_keys): both must refuse the same
// event, with the same message, or agree on the keys remembered. Returns
// what one by one returned.
Status remember_both_ways(const std::vector<KeyEvent>& events, std::int64_t window_ns) {
  State one(StateOptions{window_ns});
  State runs(StateOptions{window_ns});
  Status one_status;
  Status runs_status;
  for (std::size_t index = 0; index < events.size(); index++) {
    log::Event event;
    event.seq = index + 1;
    event.timestamp_ns = events[index].time_ns;
    event.key = events[index].key;
    event.fingerprint = index * 7919;
    const std::uint32_t hash = KeyIndex::hash_of(event.key);
    if (one_status.ok()) one_status = one.remember_key(event, hash);
    if (runs_status.ok()) runs_status = runs.remember_key_batched(event, hash);
  }
  if (runs_status.ok()) runs_status = runs.index_keys();
  CHECK(runs_status.code() == one_status.code());
  CHECK(runs_status.message() == one_status.message());
  if (!one_status.ok()) return one_status;
  CHECK(runs.counts().keys == one.counts().keys);
  CHECK(runs.digest() == one.digest());
  return one_status;
}

void check_runs_match_one_by_one(const std::vector<KeyEvent>& events, std::int64_t window_ns) {
  REQUIRE_OK(remember_both_ways(events, window_ns));
}

// "k" and the number. Appended: GCC 12 warns falsely (-Wrestrict) on
// "k" + std::to_string(...).
std::string key_number(std::int64_t number) {
  std::string key = "k";
  key += std::to_string(number);
  return key;
}

std::vector<KeyEvent> unique_keys(std::size_t count) {
  std::vector<KeyEvent> events;
  for (std::size_t index = 0; index < count; index++) {
    // Every seventh event has no key.
    std::string key = index % 7 == 6 ? std::string() : key_number(static_cast<std::int64_t>(index));
    events.push_back({std::move(key), static_cast<std::int64_t>(index)});
  }
  return events;
}

TEST_CASE("keys remembered in runs match keys remembered one by one") {
  // Longer than a run, so that runs fill up.
  const std::size_t count = State::kKeysWaitingMax * 2 + 1000;
  SUBCASE("remembered forever") { check_runs_match_one_by_one(unique_keys(count), 0); }
  SUBCASE("a window that forgets keys all along, and keys decided again after it") {
    std::vector<KeyEvent> events;
    for (std::int64_t index = 0; index < 20'000; index++) {
      events.push_back({key_number(index % 1500), index});
    }
    check_runs_match_one_by_one(events, 1000);
  }
  SUBCASE("a key repeated within a run") {
    std::vector<KeyEvent> events = unique_keys(count);
    events[State::kKeysWaitingMax + 5000].key = events[State::kKeysWaitingMax + 100].key;
    check_runs_match_one_by_one(events, 0);
  }
  SUBCASE("a key repeated from an earlier run") {
    std::vector<KeyEvent> events = unique_keys(count);
    events[State::kKeysWaitingMax + 5000].key = events[100].key;
    check_runs_match_one_by_one(events, 0);
  }
  SUBCASE("a key repeated within the window, whose first time the window forgets later") {
    // "a" is indexed (the cutoff of event 3 forgets x); event 5 repeats it
    // within the window while it waits; event 6 forgets the first "a"
    // before the run is indexed, which must keep the second.
    check_runs_match_one_by_one(
        {{"x", 0}, {"a", 500}, {"y", 1000}, {"b", 1100}, {"a", 1200}, {"c", 1600}}, 1000);
  }
  SUBCASE("a key repeated after the window forgot it, within a run") {
    check_runs_match_one_by_one({{"a", 0}, {"b", 100}, {"a", 1000}, {"c", 1001}}, 1000);
  }
}

TEST_CASE("a key decided again at the time of its first decision is corrupt, both ways") {
  // No window is that short: the writer remembered the key then, and would
  // have answered it as a replay.
  const std::size_t count = State::kKeysWaitingMax * 2 + 1000;
  std::vector<KeyEvent> events = unique_keys(count);
  const std::size_t again = State::kKeysWaitingMax + 5000;
  for (std::size_t index = 0; index < count; index++) events[index].time_ns = index < 50 ? 1 : 7;
  std::size_t first = 0;
  SUBCASE("within a run") { first = State::kKeysWaitingMax + 100; }
  SUBCASE("from an earlier run") { first = 100; }
  SUBCASE("at a later time, it is the later decision (a shorter window forgot it)") {
    first = 10;
  }
  events[again].key = events[first].key;
  if (first == 10) return check_runs_match_one_by_one(events, 0);
  const Status status = remember_both_ways(events, 0);
  CHECK(status.code() == ErrorCode::corrupt);
  CHECK(status.message() == "seq " + std::to_string(again + 1) + ": key " +
                                quoted(events[first].key) + ", decided at seq " +
                                std::to_string(first + 1) +
                                ", decided again at the same time, which no idempotency window "
                                "allows");
}

TEST_CASE("a key decided again takes the later decision, one by one and in runs") {
  // A log written with a shorter window than the reader's decides a key
  // again once that window forgot it.
  for (const bool in_runs : {false, true}) {
    CAPTURE(in_runs);
    State state(StateOptions{0});
    for (const auto& [seq, key] : {std::pair{1, "a"}, {2, "b"}, {3, "a"}, {4, "c"}, {5, "a"}}) {
      log::Event event;
      event.seq = static_cast<std::uint64_t>(seq);
      event.timestamp_ns = seq;
      event.key = key;
      event.fingerprint = static_cast<std::uint64_t>(seq);
      const std::uint32_t hash = KeyIndex::hash_of(event.key);
      REQUIRE_OK(in_runs ? state.remember_key_batched(event, hash)
                         : state.remember_key(event, hash));
    }
    REQUIRE_OK(state.index_keys());
    CHECK(state.counts().keys == 3);
    REQUIRE(state.find_key("a") != nullptr);
    CHECK(state.find_key("a")->seq == 5);
    CHECK(state.find_key("a")->fingerprint == 5);
  }
}

TEST_CASE("apply with the name ids its look-ahead found leaves the state apply alone leaves") {
  // Replay looks an event's names up some events ahead (prefetch_balances)
  // and apply takes the ids found. A name first interned in between is
  // not found ahead, and apply looks it up then.
  const std::vector<Op> ops = {
      acquire_op("s1", "gold", 50),        transfer_op("s1", "s2", "gold", 20),
      acquire_op("s3", "silver", 5),       consume_op("s1", "gold", 10),
      transfer_op("s2", "s1", "gold", 5),  hold_op("s2", "gold", 7, 1'000'000),
      acquire_op("s2", "silver", 9),       transfer_op("s3", "s4", "silver", 5),
      acquire_op("s4", "gold", 1),         consume_op("s2", "silver", 9),
  };
  State alone(StateOptions{0});
  State ahead(StateOptions{0});
  std::vector<log::Event> events(ops.size());
  std::vector<EventHashes> hashes(ops.size());
  const std::vector<std::string> keys = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
  for (std::size_t index = 0; index < ops.size(); index++) {
    log::Event& event = events[index];
    event.seq = index + 1;
    event.timestamp_ns = kStartNs + static_cast<std::int64_t>(index);
    event.key = keys[index];
    event.fingerprint = index;
    event.ops = std::span<const Op>(&ops[index], 1);
    hashes[index] = State::hash(event);
  }
  constexpr std::size_t kDistance = 2;
  std::size_t found = 0;
  for (std::size_t index = 0; index < ops.size(); index++) {
    if (index == 0) {
      for (std::size_t first = 0; first < kDistance && first < ops.size(); first++) {
        ahead.prefetch_balances(events[first], &hashes[first]);
      }
    }
    if (index + kDistance < ops.size()) {
      ahead.prefetch_balances(events[index + kDistance], &hashes[index + kDistance]);
    }
    const OpHashes& op = hashes[index].first;
    found += (op.subject_id != 0) + (op.item_id != 0) + (op.to_id != 0);
    REQUIRE_OK(alone.apply(events[index]));
    REQUIRE_OK(ahead.apply(events[index], hashes[index]));
    CHECK(ahead.digest() == alone.digest());
  }
  // Some ids were found ahead, and some names were new when looked for.
  CHECK(found > 0);
  CHECK(hashes[0].first.subject_id == 0);
  CHECK(hashes[1].first.to_id == 0);  // s2, interned by this very event
  CHECK(hashes[3].first.subject_id != 0);
  CHECK(alone.balance("s1", "gold", kAsApplied) == bal(25, 0));
  CHECK(ahead.balance("s1", "gold", kAsApplied) == bal(25, 0));
  CHECK(ahead.balance("s4", "silver", kAsApplied) == bal(5, 0));
}

TEST_CASE("keys remembered in runs after reserve_keys are all found, old and new") {
  State state(StateOptions{0});
  const auto key_of = [](std::uint64_t seq) {
    std::string key = "k";
    key += std::to_string(seq);
    return key;
  };
  const auto remember = [&](std::uint64_t seq, bool in_runs) {
    const std::string key = key_of(seq);  // the state copies it
    log::Event event;
    event.seq = seq;
    event.timestamp_ns = static_cast<std::int64_t>(seq);
    event.key = key;
    event.fingerprint = seq;
    const std::uint32_t hash = KeyIndex::hash_of(event.key);
    REQUIRE_OK(in_runs ? state.remember_key_batched(event, hash) : state.remember_key(event, hash));
  };
  constexpr std::uint64_t kBefore = 3;
  constexpr std::uint64_t kReserved = 150'000;
  for (std::uint64_t seq = 1; seq <= kBefore; seq++) remember(seq, false);
  // More than one run, reserved for a third fewer than come: the index
  // still grows where the estimate falls short. The reservation sizes the
  // index's slots at once (12 bytes a key, at most 7/8 full); their pages
  // fault in as keys reach them (PageFill::lazy).
  const std::uint64_t before = state.counts().memory_bytes;
  state.reserve_keys(kReserved * 2 / 3);
  CHECK(state.counts().memory_bytes - before >= kReserved * 2 / 3 * 12 * 8 / 7);
  for (std::uint64_t seq = kBefore + 1; seq <= kBefore + kReserved; seq++) remember(seq, true);
  REQUIRE_OK(state.index_keys());
  CHECK(state.counts().keys == kBefore + kReserved);
  std::uint64_t missing = 0;
  for (std::uint64_t seq = 1; seq <= kBefore + kReserved; seq++) {
    const KeyRecord* found = state.find_key(key_of(seq));
    missing += found == nullptr || found->seq != seq;
  }
  CHECK(missing == 0);
}

TEST_CASE("reads show a due hold as released before its expire event") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  REQUIRE_OK(feed.one("k2", acquire_op("alice", "silver", 10)));
  REQUIRE_OK(feed.one("k3", hold_op("alice", "gold", 4, 5 * kMsNs)));
  REQUIRE_OK(feed.one("k4", hold_op("alice", "gold", 3, 9 * kMsNs)));
  REQUIRE_OK(feed.one("k5", hold_op("alice", "silver", 2, 5 * kMsNs)));
  const std::int64_t early = feed.now_ns + 5 * kMsNs - 1;
  const std::int64_t due = feed.now_ns + 5 * kMsNs;
  CHECK(state.balance("alice", "gold", early) == bal(3, 7));
  CHECK(state.balance("alice", "gold", due) == bal(7, 3));
  CHECK(state.balance("alice", "gold", due + 4 * kMsNs) == bal(10, 0));
  CHECK(state.balance("alice", "gold", kStoredOnly) == bal(3, 7));
  CHECK(state.balance("alice", "silver", due) == bal(10, 0));

  const std::vector<std::pair<std::string, Balance>> listed = list_of(state, "alice", due);
  REQUIRE(listed.size() == 2);
  CHECK(listed[0] == std::pair<std::string, Balance>("gold", bal(7, 3)));
  CHECK(listed[1] == std::pair<std::string, Balance>("silver", bal(10, 0)));
  // Two due holds of one item and one of another.
  CHECK(list_of(state, "alice", due + 4 * kMsNs) ==
        std::vector<std::pair<std::string, Balance>>{{"gold", bal(10, 0)},
                                                     {"silver", bal(10, 0)}});
  const std::vector<Listed> all = all_balances(state, due);
  REQUIRE(all.size() == 2);
  CHECK(all[0] == Listed{"alice", "gold", bal(7, 3)});
  CHECK(all[1] == Listed{"alice", "silver", bal(10, 0)});
  CHECK(all_balances(state, kStoredOnly)[1] == Listed{"alice", "silver", bal(8, 2)});
}

TEST_CASE("list and for_each_balance are sorted bytewise and skip zero balances") {
  State state;
  Feed feed({&state});
  // Inserted out of order; bytewise order puts upper case first and the
  // UTF-8 bytes (>= 0x80) last.
  const std::vector<std::string> items = {"\xc3\xa9pee", "b", "ab", "a", "B", "a\x01"};
  const std::vector<std::string> subjects = {"zed", "\xe2\x82\xac", "Zed", "amy"};
  int key = 0;
  for (const std::string& subject : subjects) {
    for (const std::string& item : items) {
      // Appended: GCC 12 warns falsely (-Wrestrict) on "k" + std::string.
      std::string name = "k";
      name += std::to_string(key++);
      REQUIRE_OK(feed.one(name, acquire_op(subject, item, 5)));
    }
  }
  REQUIRE_OK(feed.one("k-zero", consume_op("amy", "ab", 5)));
  std::vector<std::string> listed;
  state.list("amy", kStoredOnly,
             [&](std::string_view item, Balance) { listed.emplace_back(item); });
  CHECK(listed == std::vector<std::string>{"B", "a", "a\x01", "b", "\xc3\xa9pee"});
  CHECK(list_of(state, "nobody", kStoredOnly).empty());

  std::vector<Listed> all = all_balances(state, kStoredOnly);
  REQUIRE(all.size() == subjects.size() * items.size() - 1);
  CHECK(all.front().subject == "Zed");
  CHECK(all.front().item == "B");
  CHECK(all.back().subject == "\xe2\x82\xac");
  CHECK(std::is_sorted(all.begin(), all.end(), [](const Listed& a, const Listed& b) {
    return std::pair(a.subject, a.item) < std::pair(b.subject, b.item);
  }));
  CHECK(state.counts().balances == all.size());
  REQUIRE_OK(state.check_invariants());
}

// ---------------------------------------------------------------- corruption

TEST_CASE("inconsistent events are corrupt, naming the seq") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  const HoldId hold = feed.next_seq();
  REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 5, 10 * kMsNs)));

  SUBCASE("insufficient") {
    const Status status = feed.one("k3", consume_op("alice", "gold", 6));
    CHECK(status.code() == ErrorCode::corrupt);
    CHECK(status.message().find("seq 3:") == 0);
    CHECK(refused_seq(status) == 3u);
  }
  SUBCASE("unknown pair") { REQUIRE_CORRUPT(feed.one("k3", consume_op("bob", "gold", 1))); }
  SUBCASE("qty <= 0") { REQUIRE_CORRUPT(feed.one("k3", acquire_op("alice", "gold", 0))); }
  SUBCASE("overflow") { REQUIRE_CORRUPT(feed.one("k3", acquire_op("alice", "gold", INT64_MAX))); }
  SUBCASE("transfer to itself") {
    REQUIRE_CORRUPT(feed.one("k3", transfer_op("alice", "alice", "gold", 1)));
  }
  SUBCASE("a key decided again is not inconsistent: the later decision stands") {
    feed.now_ns++;
    REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 1)));
    CHECK(state.find_key("k1")->seq == state.last_seq());
  }
  SUBCASE("a key decided again at the time of its decision is") {
    REQUIRE_CORRUPT(feed.one("k1", acquire_op("alice", "gold", 1)));
  }
  SUBCASE("seq gap") {
    const Op op = acquire_op("alice", "gold", 1);
    log::Event event;
    event.seq = 4;
    event.timestamp_ns = feed.now_ns;
    event.key = "k3";
    event.ops = std::span<const Op>(&op, 1);
    REQUIRE_CORRUPT(state.apply(event));
  }
  SUBCASE("time goes backwards") {
    feed.now_ns -= 1;
    REQUIRE_CORRUPT(feed.one("k3", acquire_op("alice", "gold", 1)));
  }
  SUBCASE("unknown hold") {
    REQUIRE_CORRUPT(feed.one("k3", settle_op(OpType::release, hold + 1, "alice", "gold", 5)));
  }
  SUBCASE("settle copies disagree with the hold") {
    REQUIRE_CORRUPT(feed.one("k3", settle_op(OpType::release, hold, "bob", "gold", 5)));
    REQUIRE_CORRUPT(feed.one("k3", settle_op(OpType::release, hold, "alice", "gold", 4)));
    REQUIRE_CORRUPT(feed.one("k3", settle_op(OpType::commit, hold, "alice", "gold", 3, 1)));
  }
  SUBCASE("a finalized hold is not open") {
    REQUIRE_OK(feed.one("k3", settle_op(OpType::release, hold, "alice", "gold", 5)));
    REQUIRE_CORRUPT(feed.one("k4", settle_op(OpType::commit, hold, "alice", "gold", 5, 0)));
  }
  SUBCASE("expire before due, commit after due") {
    REQUIRE_CORRUPT(feed.expire(hold, "alice", "gold", 5));
    feed.now_ns += 10 * kMsNs;
    REQUIRE_CORRUPT(feed.one("k3", settle_op(OpType::commit, hold, "alice", "gold", 5, 0)));
  }
  SUBCASE("malformed shapes") {
    REQUIRE_CORRUPT(feed.one("k3", settle_op(OpType::expire, hold, "alice", "gold", 5)));  // keyed
    REQUIRE_CORRUPT(feed.batch("k3", {}));
    REQUIRE_CORRUPT(feed.rejected("k3", Reason::insufficient, {consume_op("alice", "gold", 99)},
                                  false, 1));
    REQUIRE_CORRUPT(feed.one("k3", hold_op("alice", "gold", 1, 0)));
    REQUIRE_CORRUPT(feed.one(std::string(256, 'k'), acquire_op("alice", "gold", 1)));
    REQUIRE_CORRUPT(feed.one("k3", acquire_op("", "gold", 1)));
  }
}

TEST_CASE("check_invariants finds a hand-corrupted state") {
  State state;
  Feed feed({&state});
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
  REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 4, kMsNs)));
  REQUIRE_OK(feed.one("k3", acquire_op("bob", "gold", 1)));
  REQUIRE_OK(state.check_invariants());
  auto& impl = StateTestPeer::impl(state);  // State::Impl is private to name
  BalanceSlot* alice = impl.find_balance(impl.subjects.find("alice"), impl.items.find("gold"));
  REQUIRE(alice != nullptr);

  SUBCASE("held differs from the open holds") {
    alice->held += 1;
    REQUIRE_CORRUPT(state.check_invariants());
  }
  SUBCASE("negative available") {
    alice->available = -1;
    REQUIRE_CORRUPT(state.check_invariants());
  }
  SUBCASE("a zero pair left stored") {
    BalanceSlot* bob = impl.find_balance(impl.subjects.find("bob"), impl.items.find("gold"));
    bob->available = 0;
    REQUIRE_CORRUPT(state.check_invariants());
  }
  SUBCASE("conservation") {
    alice->available += 1;
    REQUIRE_OK(state.check_invariants());
    REQUIRE_CORRUPT(feed.totals.check(state));
  }
}

// ---------------------------------------------------------------- digest

TEST_CASE("the digest does not depend on order or layout") {
  // Same final state reached with names interned in a different order, so
  // ids and table slots differ. The window forgets the differing keys.
  State one(StateOptions{100});
  State two(StateOptions{100});
  Feed feed_one({&one});
  Feed feed_two({&two});
  REQUIRE_OK(feed_one.one("a", acquire_op("alice", "gold", 5)));
  REQUIRE_OK(feed_one.one("b", acquire_op("bob", "silver", 3)));
  REQUIRE_OK(feed_two.one("b", acquire_op("bob", "silver", 3)));
  REQUIRE_OK(feed_two.one("a", acquire_op("alice", "gold", 5)));
  CHECK(one.digest() != two.digest());  // the keys remember different seqs
  feed_one.now_ns += 100;
  feed_two.now_ns += 100;
  REQUIRE_OK(feed_one.one("c", acquire_op("carol", "gold", 1)));
  REQUIRE_OK(feed_two.one("c", acquire_op("carol", "gold", 1)));
  CHECK(one.digest() == two.digest());
}

TEST_CASE("the digest changes when any one thing differs") {
  auto build = [](State* state, int variant) {
    Feed feed({state});
    REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", variant == 1 ? 11 : 10)));
    REQUIRE_OK(feed.one("k2", hold_op("alice", "gold", 4, variant == 2 ? 2 * kMsNs : kMsNs)));
    REQUIRE_OK(feed.one(variant == 3 ? "k3x" : "k3", acquire_op("bob", "gold", 1)));
    const HoldId hold = feed.next_seq();
    REQUIRE_OK(feed.one("k4", hold_op("bob", "gold", 1, kMsNs)));
    if (variant == 4) {
      REQUIRE_OK(feed.one("k5", settle_op(OpType::commit, hold, "bob", "gold", 1, 0)));
    } else {
      REQUIRE_OK(feed.one("k5", settle_op(OpType::release, hold, "bob", "gold", 1)));
    }
    if (variant == 5) feed.now_ns += 1;
    REQUIRE_OK(feed.one("k6", acquire_op("carol", "gold", 1)));
    if (variant == 6) REQUIRE_OK(feed.one("k7", acquire_op("carol", "gold", 1)));
    if (variant == 7) feed.fingerprint_salt = 1;
    REQUIRE_OK(feed.one("k8", acquire_op("dave", "gold", 1)));
  };
  State base;
  build(&base, 0);
  State same;
  build(&same, 0);
  CHECK(base.digest() == same.digest());
  std::vector<std::uint64_t> digests = {base.digest()};
  // 1 a balance, 2 an open hold, 3 a key, 4 a finalized hold, 5 a
  // timestamp, 6 one more event, 7 a key's fingerprint.
  for (int variant = 1; variant <= 7; variant++) {
    State other;
    build(&other, variant);
    CAPTURE(variant);
    CHECK(other.digest() != base.digest());
    digests.push_back(other.digest());
  }
  std::sort(digests.begin(), digests.end());
  CHECK(std::adjacent_find(digests.begin(), digests.end()) == digests.end());
}

// ---------------------------------------------------------------- random

void compare_with_model(const State& state, Model& model, std::int64_t now_ns) {
  // Every stored balance, in bytewise order (std::map of std::string is).
  std::vector<Listed> expected;
  for (const auto& [pair, balance] : model.balances)
    expected.push_back({pair.first, pair.second, balance});
  CHECK(all_balances(state, kStoredOnly) == expected);
  // Reads with due holds released.
  for (Listed& entry : expected) entry.balance = model.read(entry.subject, entry.item, now_ns);
  CHECK(all_balances(state, now_ns) == expected);
  for (const Listed& entry : expected) {
    CHECK(state.balance(entry.subject, entry.item, now_ns) == entry.balance);
  }
  // Holds, open and remembered.
  const StateCounts counts = state.counts();
  CHECK(counts.open_holds + counts.finalized_holds == model.holds.size());
  for (const auto& [id, hold] : model.holds) {
    const std::optional<HoldInfo> info = state.find_hold(id);
    REQUIRE(info.has_value());
    CHECK(info->subject == hold.subject);
    CHECK(info->item == hold.item);
    CHECK(info->qty == hold.qty);
    CHECK(info->expires_at_ns == hold.expires_at_ns);
    CHECK(info->state == hold.state);
    CHECK(info->finalized_at_ns == hold.finalized_at_ns);
    CHECK(info->committed_qty == hold.committed_qty);
  }
  // Keys.
  CHECK(counts.keys == model.keys.size());
  for (const auto& [key, record] : model.keys) {
    const KeyRecord* found = state.find_key(key);
    REQUIRE(found != nullptr);
    CHECK(found->seq == record.seq);
    CHECK(found->fingerprint == record.fingerprint);
    CHECK(found->timestamp_ns == record.timestamp_ns);
    CHECK(found->reason == record.reason);
    CHECK(found->failed_index == record.failed_index);
  }
}

void run_random(std::uint64_t seed, std::int64_t window_ns, int steps) {
  State state(StateOptions{window_ns});
  State mirror(StateOptions{window_ns});
  RandomStream stream(seed, window_ns, {&state, &mirror});
  for (int step = 0; step < steps; step++) {
    stream.step(state);
    if (step % 1000 == 0) {
      CAPTURE(step);
      const std::string& subject = stream.subject();
      const std::string& item = stream.item();
      const std::int64_t later =
          stream.feed().now_ns + static_cast<std::int64_t>(stream.pick(40 * kMsNs));
      CHECK(state.balance(subject, item, later) == stream.model().read(subject, item, later));
      CHECK(state.balance(subject, item, kStoredOnly) ==
            stream.model().read(subject, item, INT64_MIN));
      REQUIRE_OK(state.check_invariants());
    }
  }
  const std::int64_t later = stream.feed().now_ns + 15 * kMsNs;
  compare_with_model(state, stream.model(), later);
  REQUIRE_OK(state.check_invariants());
  REQUIRE_OK(stream.feed().totals.check(state));
  CHECK(state.digest() == mirror.digest());
  CHECK(state.last_seq() == mirror.last_seq());
}

TEST_CASE("random streams match a reference model (window 50 ms)") {
  run_random(1, 50 * kMsNs, 50'000);
}

TEST_CASE("random streams match a reference model (window 0: forever)") {
  run_random(2, 0, 10'000);
}

// ---------------------------------------------------------------- tables

struct CountSlot {
  std::uint64_t key = 0;  // 0: empty
};
struct CountPolicy {
  static bool empty(const CountSlot& slot) { return slot.key == 0; }
  static std::uint64_t hash(const CountSlot& slot) { return mix64(slot.key); }
  static constexpr std::size_t kLoadNum = 7;
  static constexpr std::size_t kLoadDen = 8;
  static constexpr std::size_t kCapacityMax = std::size_t{1} << 20;
  static constexpr int kHashBits = 64;
};

TEST_CASE("a reserved table holds that many entries without moving one; reserve keeps what it holds") {
  ShardedTable<CountSlot, CountPolicy> table;
  table.insert(mix64(1), CountSlot{1});
  constexpr std::uint64_t kCount = 20000;
  table.reserve(kCount);
  const std::size_t memory = table.memory_bytes();
  REQUIRE(table.find(mix64(1), [](const CountSlot& slot) { return slot.key == 1; }) != nullptr);
  std::vector<const CountSlot*> inserted;
  for (std::uint64_t key = 2; key <= kCount; key++) inserted.push_back(table.insert(mix64(key), CountSlot{key}));
  CHECK(table.memory_bytes() == memory);  // no shard grew
  for (std::uint64_t key = 2; key <= kCount; key++) {
    const CountSlot* found = table.find(mix64(key), [&](const CountSlot& slot) { return slot.key == key; });
    REQUIRE(found != nullptr);
    CHECK(found == inserted[key - 2]);  // nothing moved
  }
  // Reserving less than it holds changes nothing.
  table.reserve(10);
  CHECK(table.memory_bytes() == memory);
  CHECK(table.size() == kCount);
}

TEST_CASE("a table moved from is empty and takes entries again; the one moved to has them") {
  FlatTable<CountSlot, CountPolicy> from;
  for (std::uint64_t key = 1; key <= 100; key++) from.insert(mix64(key), CountSlot{key});
  FlatTable<CountSlot, CountPolicy> to(std::move(from));
  CHECK(to.size() == 100);
  CHECK(from.size() == 0);
  CHECK(from.capacity() == 0);
  CHECK(from.find(mix64(5), [](const CountSlot& slot) { return slot.key == 5; }) == nullptr);
  // Its first insert allocates again instead of writing past no slots.
  from.insert(mix64(5), CountSlot{5});
  CHECK(from.find(mix64(5), [](const CountSlot& slot) { return slot.key == 5; }) != nullptr);
  to = std::move(from);
  CHECK(to.size() == 1);
  CHECK(to.find(mix64(7), [](const CountSlot& slot) { return slot.key == 7; }) == nullptr);
  CHECK(from.size() == 0);
}

TEST_CASE("the shards of a table grow one after another, not all at one insert") {
  // Entries spread evenly over the shards, so each growth step of the
  // table is 16 shards doubling. Where a shard doubled, memory_bytes()
  // changes; the inserts at which it does are recorded.
  ShardedTable<CountSlot, CountPolicy> table;
  std::vector<std::uint64_t> grew_at;
  std::size_t memory = table.memory_bytes();
  constexpr std::uint64_t kCount = 1'000'000;
  for (std::uint64_t key = 1; key <= kCount; key++) {
    table.insert(mix64(key), CountSlot{key});
    if (table.memory_bytes() != memory) grew_at.push_back(key);
    memory = table.memory_bytes();
  }
  // Three steps: at `full` entries every shard is at the Policy's load (7/8)
  // of 2^14, 2^15 or 2^16 slots.
  constexpr std::uint64_t kFull = 16 * ((std::uint64_t{1} << 15) / 8 * 7);
  for (const std::uint64_t full : {kFull / 2, kFull, kFull * 2}) {
    CAPTURE(full);
    std::vector<std::uint64_t> step;
    for (const std::uint64_t at : grew_at) {
      if (at > full - full / 8 && at <= full + full / 16) step.push_back(at);
    }
    REQUIRE(step.size() == 16);  // each shard grows once in the window
    // They come apart: spread over about 6% of the inserts, no four within
    // a window of full / 400.
    CHECK(step.back() - step.front() > full / 25);
    for (std::size_t index = 3; index < step.size(); index++) {
      CHECK(step[index] - step[index - 3] > full / 400);
    }
    // None grew above the Policy's load, nor more than 6% below it.
    CHECK(step.back() <= full + full / 100);
    CHECK(step.front() >= full - full / 14);
  }
  for (std::uint64_t key = 1; key <= kCount; key += 997) {
    const auto is_key = [&](const CountSlot& slot) { return slot.key == key; };
    REQUIRE(table.find(mix64(key), is_key) != nullptr);
  }
}

TEST_CASE("arena chunks hold their bytes, made either way; whole huge pages are aligned to them") {
  for (const std::size_t bytes : {std::size_t{64} << 10, kHugePageBytes, 2 * kHugePageBytes}) {
    for (const PageFill fill : {PageFill::lazy, PageFill::now}) {
      ArenaChunk chunk = new_arena_chunk(bytes, fill);
      REQUIRE(chunk != nullptr);
      if (fill == PageFill::now && bytes % kHugePageBytes == 0) {
        CHECK(reinterpret_cast<std::uintptr_t>(chunk.get()) % kHugePageBytes == 0);
      }
      for (std::size_t at = 0; at < bytes; at++) chunk[at] = static_cast<std::byte>(at * 7);
      std::size_t wrong = 0;
      for (std::size_t at = 0; at < bytes; at++) {
        if (chunk[at] != static_cast<std::byte>(at * 7)) wrong++;
      }
      CHECK(wrong == 0);
    }  // freed as it was made (ASan checks a heap chunk's delete[])
  }
}

TEST_CASE("slot arrays start empty, on the heap or in a mapping of their own, and move") {
  struct Wide {  // 12 bytes: 2^17 of them are 1.5 MiB, 2^18 3 MiB, not whole huge pages
    std::uint32_t a = 0, b = 0, c = 0;
  };
  constexpr std::size_t kSmall = 1000;
  constexpr std::size_t kMiddle = std::size_t{1} << 17;
  constexpr std::size_t kLarge = std::size_t{1} << 18;
  static_assert(kSmall * sizeof(Wide) < SlotArray<Wide>::kOwnMappingBytesMin);
  static_assert(kMiddle * sizeof(Wide) >= SlotArray<Wide>::kOwnMappingBytesMin);
  static_assert(kMiddle * sizeof(Wide) < kHugePageBytes);
  for (const std::size_t count : {kSmall, kMiddle, kLarge}) {
    // Lazily, a mapping of its own faults in as it is touched.
    for (const PageFill fill : {PageFill::now, PageFill::lazy}) {
      CAPTURE(count);
      {
        // Heap memory freed dirty, which the allocator is likely to hand to
        // the array next: it must be cleared, not taken as fresh zeros.
        std::unique_ptr<std::byte[]> dirty(new std::byte[count * sizeof(Wide)]);
        std::memset(dirty.get(), 0xa5, count * sizeof(Wide));
      }
      SlotArray<Wide> slots(count, fill);
      REQUIRE(slots.size() == count);
      if (count == kLarge) {
        CHECK(reinterpret_cast<std::uintptr_t>(slots.data()) % kHugePageBytes == 0);
        CHECK(slots.memory_bytes() == 2 * kHugePageBytes);  // 3 MiB mapped as 4
      } else if (count == kMiddle) {
        CHECK(reinterpret_cast<std::uintptr_t>(slots.data()) % kHugePageBytes == 0);
        CHECK(slots.memory_bytes() == kHugePageBytes);  // 1.5 MiB mapped as 2
      } else {
        CHECK(slots.memory_bytes() == count * sizeof(Wide));
      }
      std::size_t nonzero = 0;
      for (const Wide& slot : slots) nonzero += (slot.a | slot.b | slot.c) != 0;
      CHECK(nonzero == 0);
      for (std::size_t index = 0; index < count; index++) {
        slots[index] = Wide{static_cast<std::uint32_t>(index), 1, 2};
      }
      SlotArray<Wide> moved(std::move(slots));
      CHECK(slots.empty());
      CHECK(moved.size() == count);
      SlotArray<Wide> assigned(1);
      assigned = std::move(moved);
      std::size_t wrong = 0;
      for (std::size_t index = 0; index < count; index++) {
        wrong += assigned[index].a != index || assigned[index].c != 2;
      }
      CHECK(wrong == 0);
    }  // freed as they were made (ASan checks the heap ones)
  }
}

TEST_CASE("a table keeps its entries as it grows past the size that gets its own mapping") {
  // 8-byte slots: 2^18 of them are 2 MiB, the first power of two over
  // SlotArray's threshold; growing there copies every entry into the new
  // mapping and returns the old array to the heap.
  FlatTable<CountSlot, CountPolicy> table;
  constexpr std::uint64_t kCount = 800'000;
  for (std::uint64_t key = 1; key <= kCount; key++) table.insert(mix64(key), CountSlot{key});
  CHECK(table.capacity() * sizeof(CountSlot) >= SlotArray<CountSlot>::kOwnMappingBytesMin);
  std::uint64_t missing = 0;
  for (std::uint64_t key = 1; key <= kCount; key += 2) {
    CountSlot* found =
        table.find(mix64(key), [&](const CountSlot& slot) { return slot.key == key; });
    if (found == nullptr) {
      missing++;
      continue;
    }
    table.erase(found);
  }
  REQUIRE(missing == 0);
  CHECK(table.size() == kCount / 2);
  std::uint64_t wrong = 0;  // found when erased, or missing when kept
  for (std::uint64_t key = 1; key <= kCount; key++) {
    const bool present =
        table.find(mix64(key), [&](const CountSlot& slot) { return slot.key == key; }) != nullptr;
    if (present != (key % 2 == 0)) wrong++;
  }
  CHECK(wrong == 0);
}

TEST_CASE("refused_seq reads the seq a refusal names, and only that") {
  CHECK(refused_seq(Status(ErrorCode::corrupt, "seq 12: why")) == 12u);
  CHECK_FALSE(refused_seq(Status(ErrorCode::invalid, "seq 12: why")).has_value());
  CHECK_FALSE(refused_seq(Status(ErrorCode::corrupt, "segment 1 offset 2: why")).has_value());
  CHECK_FALSE(refused_seq(Status(ErrorCode::corrupt, "seq : why")).has_value());
  CHECK_FALSE(refused_seq(Status(ErrorCode::corrupt, "seq 12")).has_value());
  CHECK_FALSE(refused_seq(Status()).has_value());
}

}  // namespace
}  // namespace tally::proj
