// Snapshots and point-in-time reads of a live Ledger (engine/archivist.h,
// engine/point_in_time.h), checked against brute-force replays of the log.
#include <doctest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>

#include <csignal>
#include <functional>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "engine/archivist.h"
#include "engine/ledger.h"
#include "engine/point_in_time.h"
#include "engine/replay.h"
#include "engine/replay_fixture.h"
#include "log/faulty_file.h"
#include "log/format.h"
#include "log/reader.h"
#include "projections/state.h"
#include "snapshots/history.h"
#include "snapshots/store.h"
#include "tests/testing.h"

namespace tally {
namespace {

constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kStart = 1'700'000'000 * kSecond;
constexpr std::int64_t kEventsOnly = INT64_MIN;

using testing::name;

struct Fixture {
  testing::TempDir dir;
  ManualClock clock{kStart};
  LedgerOptions options;
  std::unique_ptr<Ledger> ledger;

  Fixture() {
    options.data_dir = dir.sub("data");
    options.durability = Durability::none;
    options.clock = &clock;
    // Snapshots on, taken when asked.
    options.snapshot_every_events = UINT64_MAX;
    options.snapshot_every_seconds = 0;
    options.snapshot_retain = 100;
  }

  void open() {
    auto opened = Ledger::open(options);
    REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
    ledger = std::move(*opened);
  }
  void close() {
    REQUIRE(ledger->close().ok());
    ledger.reset();
  }
  void ok(Result<Receipt> result) { REQUIRE_MESSAGE(result.ok(), result.status().to_string()); }
  std::uint64_t snapshot() {
    auto seq = ledger->snapshot_now();
    REQUIRE_MESSAGE(seq.ok(), seq.status().to_string());
    return *seq;
  }
  std::uint64_t last_seq() { return ledger->stats().next_seq - 1; }
  // Acquires 1 gold for alice under keys "k<first>".."k<first + count - 1>";
  // the last seq then.
  std::uint64_t acquire_ones(int count, int first = 0) {
    for (int op = first; op < first + count; op++) {
      ok(ledger->acquire(name("k", op), "alice", "gold", 1));
    }
    return last_seq();
  }
};

using testing::brute_force;

// The seq the history index of a closed ledger is flushed to.
std::uint64_t indexed_seq(const std::string& data_dir) {
  auto history = snap::HistoryStore::open(history_dir(data_dir), {});
  REQUIRE(history.ok());
  auto position = (*history)->position();
  REQUIRE(position.ok());
  return position->seq;
}

std::vector<snap::SnapshotInfo> list_snapshots(const std::string& data_dir) {
  auto store = snap::SnapshotStore::open(snapshot_dir(data_dir), {});
  REQUIRE(store.ok());
  auto infos = (*store)->list();
  REQUIRE(infos.ok());
  return *infos;
}

TEST_CASE("a snapshot plus the log after it replays to the state of the whole log, after every kind of event") {
  Fixture f;
  f.open();
  std::vector<std::uint64_t> taken;
  const auto step = [&](auto&& mutate) {
    mutate();
    taken.push_back(f.snapshot());
    CHECK(taken.back() == f.last_seq());
  };
  step([&] { f.ok(f.ledger->acquire("a1", "alice", "gold", 100)); });
  step([&] { f.ok(f.ledger->consume("c1", "alice", "gold", 10)); });
  step([&] { f.ok(f.ledger->transfer("t1", "alice", "bob", "gold", 20)); });
  HoldId h1 = 0;
  step([&] {
    auto r = f.ledger->hold("h1", "alice", "gold", 30, 10 * kSecond);
    REQUIRE(r.ok());
    h1 = r->hold;
  });
  step([&] { f.ok(f.ledger->commit("m1", h1, 12)); });
  step([&] {
    auto r = f.ledger->hold("h2", "bob", "gold", 5, 10 * kSecond);
    REQUIRE(r.ok());
    f.ok(f.ledger->release("r2", r->hold));
  });
  step([&] {
    f.ok(f.ledger->hold("h3", "bob", "gold", 4, 5 * kSecond));
    f.clock.advance_ns(6 * kSecond);
    REQUIRE(f.ledger->expire_due().ok());
  });
  step([&] {
    f.ok(f.ledger->batch("b1", {OpRequest::acquire("carol", "silver", 9),
                                OpRequest::hold_of("carol", "silver", 3, 60 * kSecond),
                                OpRequest::transfer("alice", "carol", "gold", 1)}));
  });
  step([&] { f.ok(f.ledger->consume("c2", "alice", "gold", 1'000'000)); });  // rejected: insufficient
  step([&] { f.ok(f.ledger->commit("m9", 987654321)); });                    // rejected: hold_unknown
  // Events after the last snapshot: the tail.
  f.ok(f.ledger->acquire("a2", "dave", "gold", 7));
  f.ok(f.ledger->hold("h4", "dave", "gold", 7, 100 * kSecond));
  const std::uint64_t digest = *f.ledger->digest();
  f.close();

  CHECK(brute_force(f.options.data_dir)->digest() == digest);
  const std::vector<snap::SnapshotInfo> infos = list_snapshots(f.options.data_dir);
  REQUIRE(infos.size() == taken.size());
  for (std::size_t index = 0; index < infos.size(); index++) {
    CAPTURE(index);
    CHECK(infos[index].seq == taken[index]);
    CHECK(infos[index].digest == brute_force(f.options.data_dir, taken[index])->digest());
    // From exactly this snapshot, then the log after it.
    ReplayOptions options;
    options.data_dir = f.options.data_dir;
    options.snapshot_seq_max = taken[index];
    auto replayed = replay(options);
    REQUIRE(replayed.ok());
    CHECK(replayed->report.snapshot_seq == taken[index]);
    CHECK(replayed->state->digest() == digest);
  }

  // Reopening starts from the newest snapshot and replays only the tail.
  f.open();
  CHECK(f.ledger->stats().snapshot_seq == taken.back());
  CHECK(f.ledger->stats().events_replayed == 2);
  CHECK(*f.ledger->digest() == digest);
}

// Whether this process may move a thread from SCHED_IDLE back to
// SCHED_OTHER (root, CAP_SYS_NICE, or an RLIMIT_NICE of 20), as
// snapshot_now does for the archivist. Tried on a thread of its own.
bool idle_is_reversible() {
  bool reversible = false;
  std::thread probe([&] {
    sched_param param{};
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) != 0) return;
    reversible = pthread_setschedparam(pthread_self(), SCHED_OTHER, &param) == 0;
  });
  probe.join();
  return reversible;
}

TEST_CASE("a snapshot asked for while every core is busy is taken, not left to the idle time") {
  if (!idle_is_reversible()) {
    MESSAGE("skipped: this process may not lift a thread out of SCHED_IDLE");
    return;
  }
  Fixture f;
  f.open();
  // Writes that never let up, and a busy thread at normal priority on every
  // core: a follower left under SCHED_IDLE would fall ever further behind
  // the log until they stop, and the snapshot would wait for it.
  std::atomic<bool> stop{false};
  std::atomic<bool> wrote{true};
  std::vector<std::thread> busy;
  busy.emplace_back([&] {
    for (int n = 0; !stop.load() && wrote.load(); n++) {
      wrote.store(f.ledger->acquire(name("k", n), name("s", n % 100), "gold", 1).ok());
    }
  });
  for (unsigned index = 0; index < std::max(2u, std::thread::hardware_concurrency()); index++) {
    busy.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  }
  while (f.ledger->committed_seq() < 1000) std::this_thread::yield();
  std::vector<Result<std::uint64_t>> taken;
  for (int round = 0; round < 2; round++) taken.push_back(f.ledger->snapshot_now());
  stop.store(true);
  for (std::thread& thread : busy) thread.join();
  CHECK(wrote.load());
  for (const Result<std::uint64_t>& seq : taken) {
    REQUIRE_MESSAGE(seq.ok(), seq.status().to_string());
    CHECK(*seq >= 1000);
  }
  CHECK(*taken[1] >= *taken[0]);
  f.close();
}

TEST_CASE("a snapshot the log does not continue is skipped; the older one is used") {
  Fixture f;
  f.open();
  f.ok(f.ledger->acquire("a1", "alice", "gold", 100));
  const std::uint64_t older = f.snapshot();
  f.ok(f.ledger->transfer("t1", "alice", "bob", "gold", 20));
  f.ok(f.ledger->acquire("a2", "alice", "gold", 1));
  const std::uint64_t digest = *f.ledger->digest();
  f.close();
  {
    // A valid snapshot of this very state, but with a chain checksum the
    // log does not have: as if taken of another log, or of events lost.
    auto state = brute_force(f.options.data_dir);
    auto store = snap::SnapshotStore::open(snapshot_dir(f.options.data_dir), {});
    REQUIRE(store.ok());
    snap::LogPosition position{state->last_seq(), 0x1234, state->last_timestamp_ns()};
    REQUIRE((*store)->write(*state, position).ok());
  }
  f.open();
  CHECK(f.ledger->stats().snapshot_seq == older);
  CHECK(*f.ledger->digest() == digest);
}

TEST_CASE("snapshots taken while writes continue are each the state at their seq") {
  Fixture f;
  f.options.snapshot_every_events = 300;  // and on demand below
  f.open();
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int n = 0; n < 4000; n++) {
      const std::string subject = name("s", n % 17);
      REQUIRE(f.ledger->acquire(name("a", n), subject, "gold", 5).ok());
      REQUIRE(f.ledger->transfer(name("t", n), subject, name("s", (n + 3) % 17), "gold", 2).ok());
    }
    done = true;
  });
  std::vector<std::uint64_t> asked;
  // A snapshot needs an event to be durable first.
  REQUIRE(f.ledger->wait_committed(0, std::chrono::seconds(30)).seq > 0);
  while (!done) asked.push_back(f.snapshot());
  writer.join();
  const std::uint64_t last = f.last_seq();
  f.close();
  const std::vector<snap::SnapshotInfo> infos = list_snapshots(f.options.data_dir);
  REQUIRE(!asked.empty());
  REQUIRE(!infos.empty());
  // The newest snapshot is the last one asked for, or one the count trigger
  // took after it.
  CHECK(infos.back().seq >= asked.back());
  for (const snap::SnapshotInfo& info : infos) {
    CAPTURE(info.seq);
    CHECK(info.seq <= last);
    CHECK(info.digest == brute_force(f.options.data_dir, info.seq)->digest());
  }
}

std::string other_subject(const std::string& subject, std::uint32_t pick) {
  std::string other = name("s", pick % 6);
  return other == subject ? subject + "x" : other;
}

// A random workload over a few pairs, with holds, commits, releases,
// expiries and batches, and a clock that moves in steps (so several events
// share a timestamp).
std::uint64_t run_random_workload(Fixture& f, int ops, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<HoldId> holds;
  for (int n = 0; n < ops; n++) {
    const std::string subject = name("s", random() % 6);
    const std::string item = name("i", random() % 3);
    const std::string key = name("k", n);
    if (random() % 4 == 0) f.clock.advance_ns(static_cast<std::int64_t>(random() % 3) * kSecond);
    switch (random() % 7) {
      case 0:
      case 1: f.ok(f.ledger->acquire(key, subject, item, 1 + random() % 50)); break;
      case 2: f.ok(f.ledger->consume(key, subject, item, 1 + random() % 30)); break;
      case 3: f.ok(f.ledger->transfer(key, subject, other_subject(subject, random()), item, 1 + random() % 30)); break;
      case 4: {
        auto r = f.ledger->hold(key, subject, item, 1 + random() % 20, (1 + random() % 5) * kSecond);
        REQUIRE(r.ok());
        if (r->outcome == Outcome::ok) holds.push_back(r->hold);
        break;
      }
      case 5:
        if (!holds.empty()) {
          const HoldId hold = holds[random() % holds.size()];
          if (random() % 2 == 0) {
            f.ok(f.ledger->commit(key, hold, random() % 3 == 0 ? std::optional<std::int64_t>(1) : std::nullopt));
          } else {
            f.ok(f.ledger->release(key, hold));
          }
        }
        break;
      default:
        f.ok(f.ledger->batch(key, {OpRequest::acquire(subject, item, 3),
                                   OpRequest::transfer(subject, other_subject(subject, random()), item, 2)}));
    }
  }
  REQUIRE(f.ledger->expire_due().ok());
  return f.last_seq();
}

// A closed ledger's data read both ways: through its history projection,
// and by replays alone.
struct ClosedLedger {
  std::unique_ptr<snap::HistoryStore> history;
  PointInTimeSource indexed;
  PointInTimeSource replayed;

  ClosedLedger(const std::string& data_dir, std::uint64_t last_seq) {
    auto opened = snap::HistoryStore::open(history_dir(data_dir), {.read_only = true});
    REQUIRE(opened.ok());
    history = std::move(*opened);
    indexed.data_dir = data_dir;
    indexed.history = history.get();
    indexed.last_seq = last_seq;
    replayed = indexed;
    replayed.history = nullptr;
  }
};

Balance raw_balance(const proj::State& state, std::string_view subject, std::string_view item) {
  const proj::Balance b = state.balance(subject, item, kEventsOnly);
  return Balance{b.available, b.held};
}

TEST_CASE("point-in-time reads equal a brute-force replay, through the history and through a replay") {
  Fixture f;
  f.open();
  const std::uint64_t last = run_random_workload(f, 600, 7);
  f.snapshot();
  run_random_workload(f, 0, 8);
  std::mt19937 random(11);
  int holds_seen = 0;
  // Through the live ledger (history, or a replay where it lags); holds
  // through a replay.
  for (int sample = 0; sample < 60; sample++) {
    const std::uint64_t seq = random() % (last + 1);
    const std::string subject = name("s", random() % 6);
    const std::string item = name("i", random() % 3);
    CAPTURE(seq);
    auto state = brute_force(f.options.data_dir, seq);
    auto balance = f.ledger->balance(subject, item, AsOf::at_seq(seq));
    REQUIRE_MESSAGE(balance.ok(), balance.status().to_string());
    CHECK(*balance == raw_balance(*state, subject, item));
    // A hold id is the seq of its event: any seq up to this one may be one.
    const HoldId hold = 1 + random() % std::max<std::uint64_t>(seq, 1);
    const std::optional<proj::HoldInfo> want = state->find_hold(hold);
    auto got = f.ledger->hold_info(hold, AsOf::at_seq(seq));
    if (!want) {
      CHECK(got.code() == ErrorCode::not_found);
      continue;
    }
    holds_seen++;
    REQUIRE_MESSAGE(got.ok(), got.status().to_string());
    CHECK(got->status == static_cast<HoldStatus>(want->state));
    CHECK(got->qty == want->qty);
    CHECK(got->committed_qty == want->committed_qty);
    CHECK(got->subject == want->subject);
  }
  CHECK(holds_seen > 0);
  CHECK(f.ledger->balance("s1", "i1", AsOf::at_seq(last + 1000)).code() == ErrorCode::invalid);
  f.close();

  // The same samples through each path on its own.
  ClosedLedger closed(f.options.data_dir, last);
  const PointInTimeSource& indexed = closed.indexed;
  const PointInTimeSource& replayed = closed.replayed;
  for (int sample = 0; sample < 80; sample++) {
    const std::uint64_t seq = random() % (last + 1);
    const std::string subject = name("s", random() % 6);
    const std::string item = name("i", random() % 3);
    CAPTURE(seq);
    auto state = brute_force(f.options.data_dir, seq);
    PointInTimeRead read;
    auto from_index = balance_at(indexed, subject, item, AsOf::at_seq(seq), &read);
    REQUIRE(from_index.ok());
    CHECK(read.path == PointInTimePath::history);
    auto from_replay = balance_at(replayed, subject, item, AsOf::at_seq(seq), &read);
    REQUIRE(from_replay.ok());
    CHECK(read.path == PointInTimePath::replay);
    CHECK(*from_index == raw_balance(*state, subject, item));
    CHECK(*from_replay == raw_balance(*state, subject, item));

    auto list_index = list_at(indexed, subject, AsOf::at_seq(seq));
    auto list_replay = list_at(replayed, subject, AsOf::at_seq(seq));
    REQUIRE(list_index.ok());
    REQUIRE(list_replay.ok());
    std::vector<std::pair<std::string, Balance>> expected;
    state->list(subject, kEventsOnly, [&](std::string_view item_name, proj::Balance b) {
      expected.emplace_back(std::string(item_name), Balance{b.available, b.held});
    });
    REQUIRE(list_index->size() == expected.size());
    REQUIRE(list_replay->size() == expected.size());
    for (std::size_t index = 0; index < expected.size(); index++) {
      CHECK((*list_index)[index].item == expected[index].first);
      CHECK((*list_index)[index].balance == expected[index].second);
      CHECK((*list_replay)[index].item == expected[index].first);
      CHECK((*list_replay)[index].balance == expected[index].second);
    }
  }
  // The whole ledger as of a seq (a trial balance), both ways.
  for (std::uint64_t seq : {std::uint64_t{0}, last / 3, last}) {
    std::string want;
    brute_force(f.options.data_dir, seq)
        ->for_each_balance(kEventsOnly, [&](std::string_view s, std::string_view i, proj::Balance b) {
          want += std::string(s) + "," + std::string(i) + "," + std::to_string(b.available) + "," +
                  std::to_string(b.held) + "\n";
        });
    for (const PointInTimeSource* source : {&indexed, &replayed}) {
      std::string got;
      REQUIRE(for_each_at(*source, AsOf::at_seq(seq), [&](std::string_view s, std::string_view i, Balance b) {
                got += std::string(s) + "," + std::string(i) + "," + std::to_string(b.available) + "," +
                       std::to_string(b.held) + "\n";
              }).ok());
      CHECK(got == want);
    }
  }
}

TEST_CASE("as of time T includes every event stamped T, and none after") {
  Fixture f;
  f.open();
  f.clock.set_ns(kStart + 10 * kSecond);
  f.ok(f.ledger->acquire("a1", "alice", "gold", 1));
  f.ok(f.ledger->acquire("a2", "alice", "gold", 2));  // same timestamp
  f.clock.set_ns(kStart + 20 * kSecond);
  f.ok(f.ledger->acquire("a3", "alice", "gold", 4));
  f.clock.set_ns(kStart + 30 * kSecond);
  f.ok(f.ledger->acquire("a4", "alice", "gold", 8));
  const std::uint64_t last = f.last_seq();
  const struct {
    std::int64_t t;
    std::int64_t available;
  } cases[] = {{kStart, 0},
               {kStart + 10 * kSecond - 1, 0},
               {kStart + 10 * kSecond, 3},
               {kStart + 20 * kSecond - 1, 3},
               {kStart + 20 * kSecond, 7},
               {kStart + 30 * kSecond, 15},
               {kStart + 1000 * kSecond, 15}};
  for (const auto& c : cases) {
    CAPTURE(c.t);
    auto balance = f.ledger->balance("alice", "gold", AsOf::at_time(c.t));
    REQUIRE(balance.ok());
    CHECK(balance->available == c.available);
  }
  f.close();
  ClosedLedger closed(f.options.data_dir, last);
  const PointInTimeSource& indexed = closed.indexed;
  const PointInTimeSource& replayed = closed.replayed;
  for (const auto& c : cases) {
    CAPTURE(c.t);
    for (const PointInTimeSource* source : {&indexed, &replayed}) {
      auto balance = balance_at(*source, "alice", "gold", AsOf::at_time(c.t));
      REQUIRE(balance.ok());
      CHECK(balance->available == c.available);
    }
  }
}

TEST_CASE("as of time T a hold due by T is released, whether or not its expire event is by then") {
  Fixture f;
  f.open();
  const std::int64_t t0 = kStart + 10 * kSecond;
  f.clock.set_ns(t0);
  f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  f.ok(f.ledger->acquire("b1", "bob", "gold", 10));
  auto held = f.ledger->hold("h1", "alice", "gold", 4, kSecond);  // due at t0 + 1 s
  REQUIRE(held.ok());
  const std::uint64_t hold_seq = f.last_seq();
  // The next command, 5 s on, writes the expire event first, stamped then.
  f.clock.set_ns(t0 + 5 * kSecond);
  f.ok(f.ledger->acquire("a2", "carol", "gold", 1));
  // A hold still open at the log's end, due after its last event.
  auto open_hold = f.ledger->hold("h2", "bob", "gold", 3, kSecond);
  REQUIRE(open_hold.ok());
  const std::uint64_t last = f.last_seq();
  // A live ledger answers a time at or past its last event from its State
  // read at that time, and an earlier one as the closed ledger below does.
  for (const auto& [t, alice, bob] : {std::tuple{t0 + 3 * kSecond, Balance{10, 0}, Balance{10, 0}},
                                      std::tuple{t0 + 5 * kSecond, Balance{10, 0}, Balance{7, 3}},
                                      std::tuple{t0 + 6 * kSecond, Balance{10, 0}, Balance{10, 0}}}) {
    CAPTURE(t - t0);
    auto live = f.ledger->balance("alice", "gold", AsOf::at_time(t));
    REQUIRE(live.ok());
    CHECK(*live == alice);
    auto items = f.ledger->list("bob", AsOf::at_time(t));
    REQUIRE(items.ok());
    REQUIRE(items->size() == 1);
    CHECK((*items)[0].balance == bob);
  }
  f.close();
  struct Case {
    AsOf at;
    Balance alice;
    Balance bob;
    HoldStatus first_hold;
  };
  const Case cases[] = {
      {AsOf::at_time(t0 + kSecond - 1), {6, 4}, {10, 0}, HoldStatus::open},
      {AsOf::at_time(t0 + kSecond), {10, 0}, {10, 0}, HoldStatus::expired},
      {AsOf::at_time(t0 + 3 * kSecond), {10, 0}, {10, 0}, HoldStatus::expired},
      {AsOf::at_time(t0 + 5 * kSecond), {10, 0}, {7, 3}, HoldStatus::expired},
      {AsOf::at_time(t0 + 6 * kSecond), {10, 0}, {10, 0}, HoldStatus::expired},
      // As of a seq, as the events left it: the hold is open until its
      // expire event.
      {AsOf::at_seq(hold_seq), {6, 4}, {10, 0}, HoldStatus::open},
      {AsOf::at_seq(last), {10, 0}, {7, 3}, HoldStatus::expired},
  };
  ClosedLedger closed(f.options.data_dir, last);
  for (const Case& c : cases) {
    CAPTURE(c.at.kind == AsOf::Kind::seq ? c.at.seq : static_cast<std::uint64_t>(c.at.time_ns - t0));
    for (const PointInTimeSource* source : {&closed.indexed, &closed.replayed}) {
      CAPTURE(source->history != nullptr);
      auto alice = balance_at(*source, "alice", "gold", c.at);
      REQUIRE(alice.ok());
      CHECK(*alice == c.alice);
      auto bob = list_at(*source, "bob", c.at);
      REQUIRE(bob.ok());
      REQUIRE(bob->size() == 1);
      CHECK((*bob)[0].balance == c.bob);
      std::map<std::string, Balance> all;
      REQUIRE(for_each_at(*source, c.at, [&](std::string_view subject, std::string_view, Balance b) {
                all[std::string(subject)] = b;
              }).ok());
      CHECK(all["alice"] == c.alice);
      CHECK(all["bob"] == c.bob);
    }
    auto view = hold_at(closed.replayed, held->hold, c.at);
    REQUIRE(view.ok());
    CHECK(view->status == c.first_hold);
  }
}

TEST_CASE("a history projection the log does not continue is rebuilt") {
  Fixture f;
  f.open();
  f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  f.ok(f.ledger->acquire("a2", "alice", "gold", 6));
  f.close();
  // Another ledger's history in this directory.
  Fixture other;
  other.open();
  other.ok(other.ledger->acquire("x1", "zed", "gold", 1));
  other.ok(other.ledger->acquire("x2", "zed", "gold", 1));
  other.ok(other.ledger->acquire("x3", "zed", "gold", 1));
  other.close();
  std::filesystem::remove_all(history_dir(f.options.data_dir));
  std::filesystem::copy(history_dir(other.options.data_dir), history_dir(f.options.data_dir));
  f.open();
  auto balance = f.ledger->balance("alice", "gold", AsOf::at_seq(2));
  REQUIRE(balance.ok());
  CHECK(balance->available == 11);
  auto zed = f.ledger->balance("zed", "gold", AsOf::at_seq(2));
  REQUIRE(zed.ok());
  CHECK(zed->available == 0);
}

TEST_CASE("a ledger closed right after its writes leaves a history index at its last seq") {
  Fixture f;
  // Each session closes as soon as its writes are acknowledged, most
  // likely before the archivist has loaded its copy of the state.
  for (int session = 1; session <= 3; session++) {
    f.open();
    for (int op = 0; op < session; op++) {
      f.ok(f.ledger->acquire(name("k", session * 10 + op), "alice", "gold", 1));
    }
    const std::uint64_t last = f.last_seq();
    f.close();
    CHECK(indexed_seq(f.options.data_dir) == last);
  }
}

TEST_CASE("a ledger sets damaged snapshot and history files aside and rebuilds from the log") {
  Fixture f;
  f.open();
  for (int op = 0; op < 2000; op++) f.ok(f.ledger->acquire(name("k", op), name("s", op), "gold", 1));
  f.snapshot();
  const std::uint64_t last = f.last_seq();
  f.close();
  for (const std::string& dir : {snapshot_dir(f.options.data_dir), history_dir(f.options.data_dir)}) {
    // Their meta pages stay; the pages they point at are gone.
    std::filesystem::resize_file(dir + "/data.mdb", 3 * 4096);
  }
  f.open();
  CHECK(f.ledger->stats().snapshot_seq == 0);  // a full replay
  auto balance = f.ledger->balance("s7", "gold", AsOf::at_seq(last));
  REQUIRE(balance.ok());
  CHECK(balance->available == 1);
  f.close();
  for (const std::string& dir : {snapshot_dir(f.options.data_dir), history_dir(f.options.data_dir)}) {
    CHECK(std::filesystem::exists(dir + ".damaged/data.mdb"));
  }
  CHECK(indexed_seq(f.options.data_dir) == last);
}

// Whether the open ledger's check of the log before its snapshot is done,
// waiting up to a minute.
bool log_checked(Fixture& f) {
  for (int wait = 0; wait < 6000 && !f.ledger->stats().log_checked; wait++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return f.ledger->stats().log_checked;
}

TEST_CASE("an open from a snapshot checks the records before it in the background") {
  Fixture f;
  f.options.segment_size_bytes = 64 << 10;
  f.open();
  CHECK(f.ledger->stats().log_checked);  // an empty log: nothing before the start
  const std::uint64_t last = f.acquire_ones(2000);
  f.snapshot();
  f.close();
  const std::string first_segment =
      log::join_path(log_dir(f.options.data_dir), log::segment_file_name(1));
  SUBCASE("sound") {
    f.open();
    CHECK(f.ledger->stats().snapshot_seq == last);
    REQUIRE(log_checked(f));
    CHECK_FALSE(f.ledger->stats().log_damaged);
  }
  SUBCASE("a flipped bit in the first segment, which the open does not read") {
    REQUIRE(testing::flip_byte(first_segment, 32 << 10));
    f.open();
    CHECK(f.ledger->stats().snapshot_seq == last);
    REQUIRE(log_checked(f));
    CHECK(f.ledger->stats().log_damaged);
    // The ledger goes on: its state is the snapshot's and the log after it.
    CHECK(f.ledger->balance("alice", "gold")->available == 2000);
    f.ok(f.ledger->acquire("after", "alice", "gold", 1));
  }
  SUBCASE("a close while the check runs stops it") {
    REQUIRE(testing::flip_byte(first_segment, 32 << 10));
    f.open();
  }
  f.close();
}

TEST_CASE("a scrub reads the durable log again on its period and finds damage that came later") {
  Fixture f;
  f.options.segment_size_bytes = 64 << 10;
  f.options.log_scrub_seconds = 1;
  f.open();
  const std::uint64_t last = f.acquire_ones(2000);
  const auto wait_for = [&](auto done) {
    for (int wait = 0; wait < 6000 && !done(f.ledger->stats()); wait++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done(f.ledger->stats());
  };
  REQUIRE(wait_for([](const LedgerStats& stats) { return stats.log_scrubs >= 1; }));
  CHECK_FALSE(f.ledger->stats().log_damaged);
  // Where the first and the last record's frames lie.
  std::string first_segment;
  std::string last_segment;
  std::uint64_t last_offset = 0;
  {
    auto reader = log::LogReader::open(log::posix_file_system(), log_dir(f.options.data_dir), {});
    REQUIRE(reader.ok());
    log::Record record;
    while (*(*reader)->next(&record)) {
      const std::string path = log::join_path(log_dir(f.options.data_dir),
                                              log::segment_file_name(record.segment_first_seq));
      if (record.seq == 1) first_segment = path;
      if (record.seq == last) {
        last_segment = path;
        last_offset = record.offset;
      }
    }
  }
  REQUIRE(!last_segment.empty());
  SUBCASE("a bit flips in the first segment, long written, while the ledger runs") {
    REQUIRE(testing::flip_byte(first_segment, 32 << 10));
  }
  SUBCASE("the last durable record is damaged, with nothing after it") {
    // Read alone, the log would seem to end one record early (a torn tail).
    REQUIRE(testing::flip_byte(last_segment, last_offset + 20));
  }
  REQUIRE(wait_for([](const LedgerStats& stats) { return stats.log_damaged; }));
  // The ledger goes on: its state does not depend on the records.
  CHECK(f.ledger->balance("alice", "gold")->available == 2000);
  f.close();
}

TEST_CASE("a scrub that cannot read the log tries again before it calls the log damaged") {
  // Declared first, destroyed last: the ledger reads through it until closed.
  log::FaultyFileSystem faulty(log::posix_file_system());
  Fixture f;
  f.options.fs = &faulty;
  f.options.log_scrub_seconds = 1;  // and its tries 1 s apart
  f.options.history = false;  // nothing else reads the log
  f.options.snapshot_every_events = 0;
  f.options.snapshot_every_seconds = 0;
  f.open();
  f.acquire_ones(200);
  const auto wait_for = [&](auto done) {
    for (int wait = 0; wait < 6000 && !done(f.ledger->stats()); wait++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done(f.ledger->stats());
  };
  REQUIRE(wait_for([](const LedgerStats& stats) { return stats.log_scrubs >= 1; }));
  SUBCASE("a read that fails once (out of file descriptors, say)") {
    const std::uint64_t scrubs = f.ledger->stats().log_scrubs;
    faulty.fail_reads(1);
    REQUIRE(wait_for([&](const LedgerStats& stats) { return stats.log_scrubs >= scrubs + 2; }));
    CHECK_FALSE(f.ledger->stats().log_damaged);
  }
  SUBCASE("reads that fail every time") {
    faulty.fail_reads(log::FaultyFileSystem::kUntilDisarmed);
    REQUIRE(wait_for([](const LedgerStats& stats) { return stats.log_damaged; }));
    faulty.disarm();
  }
  f.close();
}

TEST_CASE("a close ends the wait for the next scrub") {
  Fixture f;
  f.options.log_scrub_seconds = 3600;
  f.open();
  f.acquire_ones(10);
  CHECK(f.ledger->stats().log_scrubs == 0);
  f.close();  // not an hour later: the suite's timeout would fail it
}

// The seq of the first snapshot the open ledger writes, waiting up to a minute.
std::uint64_t first_snapshot_seq(Fixture& f) {
  std::uint64_t snapshot_seq = 0;
  for (int wait = 0; wait < 6000 && snapshot_seq == 0; wait++) {
    snapshot_seq = f.ledger->stats().last_snapshot_seq;
    if (snapshot_seq == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return snapshot_seq;
}

TEST_CASE("events logged before the open count towards the next snapshot, with no write after") {
  Fixture f;
  f.options.snapshot_every_events = 0;
  f.open();
  const std::uint64_t last = f.acquire_ones(50);
  f.close();
  SUBCASE("by count") { f.options.snapshot_every_events = 40; }
  SUBCASE("by time") { f.options.snapshot_every_seconds = 1; }
  f.open();
  CHECK(first_snapshot_seq(f) == last);
}

TEST_CASE("a snapshot taken before any read, at a segment's first seq, has the chain before it") {
  // The log's last segment holds no record yet (a crash after a rotation
  // made the segment and before a record reached it): the archivist's
  // tail starts at that segment's first seq, and a snapshot is due at the
  // open, before the tail reads anything.
  Fixture f;
  f.options.snapshot_every_events = 0;
  f.options.segment_size_bytes = log::kSegmentSizeBytesMin;
  f.open();
  f.acquire_ones(3000);
  f.close();
  std::uint64_t last_segment = 0;
  std::map<std::uint64_t, std::uint64_t> checksums;  // by seq
  {
    auto reader = log::LogReader::open(log::posix_file_system(), log_dir(f.options.data_dir), {});
    REQUIRE(reader.ok());
    log::Record record;
    while (*(*reader)->next(&record)) {
      checksums[record.seq] = record.checksum;
      last_segment = record.segment_first_seq;
    }
  }
  REQUIRE(last_segment > 1);
  const std::string path =
      log::join_path(log_dir(f.options.data_dir), log::segment_file_name(last_segment));
  std::string bytes = testing::read_file(path);
  REQUIRE(bytes.size() > log::kSegmentHeaderSize);
  std::fill(bytes.begin() + log::kSegmentHeaderSize, bytes.end(), '\0');
  testing::write_file(path, bytes);

  f.options.snapshot_every_events = 1;
  f.open();
  CHECK(first_snapshot_seq(f) == last_segment - 1);
  f.close();
  const std::vector<snap::SnapshotInfo> infos = list_snapshots(f.options.data_dir);
  REQUIRE(infos.size() == 1);
  CHECK(infos[0].seq == last_segment - 1);
  CHECK(infos[0].chain_checksum == checksums[last_segment - 1]);
  f.open();
  CHECK(f.ledger->stats().snapshot_seq == last_segment - 1);  // the open started from it
}

TEST_CASE("snapshot_now() while another is being written still covers what was acknowledged") {
  // A request made while the archivist writes a snapshot for an earlier
  // one is answered by a snapshot of its own, not by that one, which may
  // not hold the events acknowledged in between.
  Fixture f;
  f.open();
  for (int round = 0; round < 50; round++) {  // a state that takes a while to write
    std::vector<OpRequest> ops;
    for (int op = 0; op < 1000; op++) {
      std::string subject = "s";
      subject += std::to_string(round * 1000 + op);
      ops.push_back(OpRequest::acquire(std::move(subject), "gold", 1));
    }
    f.ok(f.ledger->batch(name("fill", round), std::move(ops)));
  }
  std::atomic<bool> done{false};
  std::thread other([&] {
    while (!done.load()) CHECK(f.ledger->snapshot_now().ok());
  });
  std::mt19937 random(7);
  for (int round = 0; round < 20; round++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(random() % 20));
    const std::uint64_t acknowledged = f.acquire_ones(1, round);
    auto seq = f.ledger->snapshot_now();
    REQUIRE(seq.ok());
    CHECK(*seq >= acknowledged);
  }
  done = true;
  other.join();
}

// For the tests on a disk made slow (FaultyFileSystem::delay_reads): a
// segment whose zeros after the last record take an open a few reads, not
// the 256 windows of 256 KiB of a 64 MiB one.
constexpr std::uint64_t kSlowSegmentBytes = 1 << 20;

TEST_CASE("the history's seq is known from the open on, before the archivist loads its state") {
  log::FaultyFileSystem slow(log::posix_file_system());
  Fixture f;  // the history on, as by default
  f.options.fs = &slow;
  f.options.segment_size_bytes = kSlowSegmentBytes;
  f.open();
  const std::uint64_t last = f.acquire_ones(50);
  REQUIRE(f.ledger->balance("alice", "gold", AsOf::at_seq(last)).ok());  // the index reaches it
  f.close();
  // The archivist's replay of the log now takes a second or more.
  slow.delay_reads(std::chrono::milliseconds(500));
  f.open();
  CHECK(f.ledger->stats().history_seq == last);
  f.close();
  slow.disarm();
}

TEST_CASE("a time trigger of any length waits that long") {
  Fixture f;
  f.options.snapshot_every_events = 0;
  f.options.snapshot_every_seconds = INT64_MAX;  // in ns, past the largest duration
  f.open();
  f.acquire_ones(3);
  // A reader waiting for the last seq has the archivist follow the log there
  // first; a trigger that took INT64_MAX s for a negative time snapshotted
  // on the way.
  REQUIRE(f.ledger->balance("alice", "gold", AsOf::at_seq(f.last_seq())).ok());
  CHECK(f.ledger->stats().history_seq == f.last_seq());
  f.snapshot();
  CHECK(f.ledger->stats().snapshots_written == 1);
}

TEST_CASE("snapshot_due_at_close: close takes the snapshot the count trigger called for") {
  // A log of 2,500 events and no snapshot, opened again with a snapshot
  // due every 1,000 on a disk so slow that the archivist is still loading
  // its copy of the state from the log when close() begins: it stops
  // without a snapshot, unless the option has close() wait for one.
  log::FaultyFileSystem slow(log::posix_file_system());
  Fixture f;
  f.options.fs = &slow;
  f.options.segment_size_bytes = kSlowSegmentBytes;
  f.options.history = false;
  f.open();
  const std::uint64_t last = f.acquire_ones(2500);
  f.close();
  f.options.snapshot_every_events = 1000;
  for (const bool at_close : {false, true}) {
    CAPTURE(at_close);
    f.options.snapshot_due_at_close = at_close;
    slow.delay_reads(std::chrono::milliseconds(500));
    f.open();
    REQUIRE(f.ledger->close().ok());
    // stats() after close() counts the snapshot close() wrote.
    const LedgerStats closed = f.ledger->stats();
    CHECK(closed.snapshots_written == (at_close ? 1 : 0));
    CHECK(closed.last_snapshot_seq == (at_close ? last : 0));
    f.close();
    slow.disarm();
    const std::vector<snap::SnapshotInfo> infos = list_snapshots(f.options.data_dir);
    if (at_close) {
      // Written from the ledger's own state: the state a replay gives.
      REQUIRE(infos.size() == 1);
      CHECK(infos[0].seq == last);
      CHECK(infos[0].digest == brute_force(f.options.data_dir, last)->digest());
    } else {
      CHECK(infos.empty());
    }
  }
  f.options.snapshot_due_at_close = false;
  f.open();
  CHECK(f.ledger->stats().snapshot_seq == last);
  CHECK(f.ledger->stats().events_replayed == 0);
  f.close();
}

TEST_CASE("once close began, the archivist writes no snapshot the count calls for") {
  // Async durability with a sync only at close: the archivist, which reads
  // durable events only, can take no snapshot while the ledger runs. The
  // sync at close wakes it; its read of the log is slow, so stop() begins
  // while the read is in flight. The snapshot that read makes due is left
  // to the next open: a close is not held up for seconds by one.
  log::FaultyFileSystem slow(log::posix_file_system());
  Fixture f;
  f.options.fs = &slow;
  f.options.history = false;
  f.options.durability = Durability::async;
  f.options.sync_interval_ms = 3'600'000;
  f.options.snapshot_every_events = 1000;
  f.open();
  f.acquire_ones(2500);
  CHECK(f.ledger->stats().snapshots_written == 0);
  slow.delay_reads(std::chrono::milliseconds(500));
  f.close();
  slow.disarm();
  CHECK(list_snapshots(f.options.data_dir).empty());
}

TEST_CASE("a due snapshot is taken at once while the history catches up from far behind") {
  // The archivist's copy of the state, loaded from the log, is far ahead of
  // the history then; the history catches up on a tail of its own.
  Fixture f;
  f.options.history = false;
  f.options.snapshot_every_events = 0;
  f.open();
  constexpr int kEvents = 40'000;  // more than one read round
  const std::uint64_t last = f.acquire_ones(kEvents);
  f.close();
  f.options.history = true;
  f.options.snapshot_every_events = 1000;
  f.open();
  CHECK(first_snapshot_seq(f) == last);
  f.close();
  CHECK(indexed_seq(f.options.data_dir) == last);
}

TEST_CASE("a snapshot asked for while the history catches up does not wait for the history") {
  // The history starts from nothing on a log of many small segments, each
  // read of which is slow: it needs seconds to reach the log's end. The
  // state is loaded from the snapshot at the end, and the snapshot asked
  // for reads only the segment after it. Waiting for the history, it came
  // only once the history was flushed to its seq.
  log::FaultyFileSystem slow(log::posix_file_system());
  Fixture f;
  f.options.fs = &slow;
  f.options.segment_size_bytes = log::kSegmentSizeBytesMin;
  f.options.history = false;
  f.open();
  for (int op = 0; op < 30'000; op++) {
    f.ok(f.ledger->acquire(name("k", op), name("s", op % 50), "gold", 1));
  }
  const std::uint64_t loaded = f.snapshot();
  f.close();
  REQUIRE(std::distance(std::filesystem::directory_iterator(log_dir(f.options.data_dir)),
                        std::filesystem::directory_iterator()) >= 40);
  f.options.history = true;
  slow.delay_reads(std::chrono::milliseconds(100));
  f.open();
  f.ok(f.ledger->acquire("after", "alice", "gold", 1));
  const std::uint64_t taken = f.snapshot();
  CHECK(taken == loaded + 1);
  CHECK(f.ledger->stats().history_seq < loaded);
  // Catching up, the history is flushed only when its buffer fills, or at
  // once for a reader waiting for a seq it nears: this one.
  auto early = f.ledger->balance("s1", "gold", AsOf::at_seq(10));
  REQUIRE(early.ok());
  CHECK(f.ledger->stats().history_seq >= 10);
  // Nor does the close wait for it: it gives the history up a second or
  // two later, with what it flushed by then.
  f.close();
  slow.disarm();
  CHECK(indexed_seq(f.options.data_dir) < loaded);
  const std::vector<snap::SnapshotInfo> infos = list_snapshots(f.options.data_dir);
  REQUIRE(!infos.empty());
  CHECK(infos.back().seq == taken);
  CHECK(infos.back().digest == brute_force(f.options.data_dir, taken)->digest());
  CHECK(*early == raw_balance(*brute_force(f.options.data_dir, 10), "s1", "gold"));
  // The next open catches the history up from where it was left.
  f.open();
  f.close();
  CHECK(indexed_seq(f.options.data_dir) == taken);
}

// A ledger of 20 events and a snapshot of them, closed, whose log is then
// lost.
void lose_the_log(Fixture& f) {
  f.open();
  f.acquire_ones(20);
  f.snapshot();
  f.close();
  std::filesystem::remove_all(log_dir(f.options.data_dir));
}

TEST_CASE("a ledger whose log is gone refuses to start over beside its snapshots or history") {
  Fixture f;
  lose_the_log(f);
  for (const std::string& dir : {snapshot_dir(f.options.data_dir), history_dir(f.options.data_dir)}) {
    CAPTURE(dir);
    auto refused = Ledger::open(f.options);
    REQUIRE(refused.code() == ErrorCode::corrupt);
    CHECK(refused.status().message().find("the log is missing") != std::string::npos);
    CHECK(refused.status().message().find("up to seq 20") != std::string::npos);
    std::filesystem::remove_all(dir);
  }
  // With neither left, it is a new ledger.
  f.open();
  CHECK(f.last_seq() == 0);
}

TEST_CASE("a lost log beside damaged stores is refused too: they are set aside, not taken as empty") {
  // The snapshots are set aside before the check, the history after it: the
  // same answer either way, at every open until the operator decides.
  for (const bool snapshots : {true, false}) {
    CAPTURE(snapshots);
    Fixture f;
    lose_the_log(f);
    const std::string data = f.options.data_dir;
    std::filesystem::remove_all(snapshots ? history_dir(data) : snapshot_dir(data));
    const std::string store = snapshots ? snapshot_dir(data) : history_dir(data);
    testing::write_file(store + "/data.mdb", std::string(64 * 1024, 'x'));
    for (int attempt = 0; attempt < 2; attempt++) {
      auto refused = Ledger::open(f.options);
      REQUIRE(refused.code() == ErrorCode::corrupt);
      CHECK(refused.status().message().find(store) != std::string::npos);
      CHECK(refused.status().message().find("may hold events") != std::string::npos);
    }
    std::filesystem::remove_all(store);
    std::filesystem::remove_all(store + ".damaged");
    f.open();
    CHECK(f.last_seq() == 0);
  }
}

TEST_CASE("a log emptied beside its snapshots is a lost log; one cut short goes on from its end") {
  Fixture f;
  f.open();
  f.acquire_ones(20);
  f.snapshot();
  f.acquire_ones(5, 20);
  f.close();
  const std::string segment = log_dir(f.options.data_dir) + "/" + log::segment_file_name(1);
  const std::string saved = f.dir.sub("segment");
  std::filesystem::copy_file(segment, saved);
  // Emptied: the first segment's header is gone too, as if torn as it was made.
  std::filesystem::resize_file(segment, 0);
  auto refused = Ledger::open(f.options);
  REQUIRE(refused.code() == ErrorCode::corrupt);
  CHECK(refused.status().message().find("holds no event") != std::string::npos);
  CHECK(refused.status().message().find("up to seq 25") != std::string::npos);
  // Cut short inside the snapshot's events: they are lost, and the ledger
  // goes on from the log's end, never from the snapshot.
  std::filesystem::copy_file(saved, segment, std::filesystem::copy_options::overwrite_existing);
  std::uint64_t cut_at = 0;
  {
    auto reader = log::LogReader::open(log::posix_file_system(), log_dir(f.options.data_dir));
    REQUIRE(reader.ok());
    log::Record record;
    while (cut_at == 0 && *(*reader)->next(&record)) {
      if (record.seq == 11) cut_at = record.offset;
    }
  }
  REQUIRE(cut_at > 0);
  std::filesystem::resize_file(segment, cut_at);
  f.open();
  CHECK(f.last_seq() == 10);
  CHECK(f.ledger->stats().snapshot_seq == 0);
  // The snapshot past the log's end is gone: its seq will be another event's.
  f.close();
  CHECK(list_snapshots(f.options.data_dir).empty());
  f.open();
  f.ok(f.ledger->acquire("after", "alice", "gold", 1));
  CHECK(f.last_seq() == 11);
  auto balance = f.ledger->balance("alice", "gold");
  REQUIRE(balance.ok());
  CHECK(balance->available == 11);
}

TEST_CASE("with async durability, the archivist indexes only what a sync made durable") {
  Fixture f;
  f.options.durability = Durability::async;
  f.options.sync_interval_ms = 3'600'000;  // no periodic sync during the test
  f.open();
  f.acquire_ones(10);
  // Written and acknowledged, not synced: the archivist, which wakes every
  // 20 ms and flushes the index once a second, must not take them in.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  CHECK(f.ledger->stats().history_seq == 0);
  // Closing syncs, and then the archivist catches up.
  f.close();
  CHECK(indexed_seq(f.options.data_dir) == 10);
}

TEST_CASE("a damaged record of the history index leaves the read to the log") {
  Fixture f;
  // A balance whose bytes are easy to find in the index's file.
  constexpr std::int64_t kMarked = 0x5a5a5a5a5a5a;
  f.open();
  f.ok(f.ledger->acquire("a1", "alice", "gold", kMarked));
  f.ok(f.ledger->acquire("a2", "alice", "gold", 1));
  f.close();
  const std::string data_path = history_dir(f.options.data_dir) + "/data.mdb";
  std::string data = testing::read_file(data_path);
  std::string marked(8, '\0');
  for (int index = 0; index < 8; index++) {
    marked[index] = static_cast<char>((kMarked >> (8 * index)) & 0xff);
  }
  std::size_t flipped = 0;
  // Copy-on-write may leave stale copies in free pages; flip them all.
  for (std::size_t at = data.find(marked); at != std::string::npos; at = data.find(marked, at + 1)) {
    data[at] = static_cast<char>(data[at] ^ 0x01);
    flipped++;
  }
  REQUIRE(flipped >= 1);
  testing::write_file(data_path, data);
  PointInTimeSource source;
  source.data_dir = f.options.data_dir;
  auto history = snap::HistoryStore::open(history_dir(f.options.data_dir), {.read_only = true});
  REQUIRE(history.ok());
  source.history = history->get();
  source.last_seq = 2;
  PointInTimeRead read;
  auto balance = balance_at(source, "alice", "gold", AsOf::at_seq(1), &read);
  REQUIRE_MESSAGE(balance.ok(), balance.status().to_string());
  CHECK(balance->available == kMarked);
  CHECK(read.path == PointInTimePath::replay);
  CHECK(read.index_damage.code() == ErrorCode::corrupt);
  PointInTimeRead listed;
  auto items = list_at(source, "alice", AsOf::at_seq(1), &listed);
  REQUIRE(items.ok());
  REQUIRE(items->size() == 1);
  CHECK((*items)[0].balance.available == kMarked);
  CHECK(listed.index_damage.code() == ErrorCode::corrupt);
  PointInTimeRead exported;
  std::vector<std::pair<std::string, std::int64_t>> all;
  const Status whole = for_each_at(
      source, AsOf::at_seq(1),
      [&](std::string_view subject, std::string_view item, Balance balance) {
        all.emplace_back(std::string(subject) + "/" + std::string(item), balance.available);
      },
      &exported);
  REQUIRE_MESSAGE(whole.ok(), whole.to_string());
  CHECK(all == std::vector<std::pair<std::string, std::int64_t>>{{"alice/gold", kMarked}});
  CHECK(exported.path == PointInTimePath::replay);
  CHECK(exported.index_damage.code() == ErrorCode::corrupt);
  // Through the ledger too (one process opens an LMDB environment once).
  history->reset();
  f.open();
  auto through = f.ledger->balance("alice", "gold", AsOf::at_seq(1));
  REQUIRE(through.ok());
  CHECK(through->available == kMarked);
}

TEST_CASE("a ledger over a history index with a damaged page answers from the log, never crashes") {
  Fixture f;
  f.options.snapshot_every_events = 0;  // every read the history cannot answer replays
  f.open();
  constexpr int kPairs = 1500;
  for (int op = 0; op < kPairs; op++) {
    f.ok(f.ledger->acquire(name("k", op), name("s", op), "gold", op + 1));
  }
  f.close();
  const std::string data_path = history_dir(f.options.data_dir) + "/data.mdb";
  const std::string bytes = testing::read_file(data_path);
  constexpr std::size_t kPage = 4096;
  REQUIRE(bytes.size() >= 16 * kPage);
  // LMDB follows a branch or leaf page's node offsets without a check: the
  // high bit of its lower bound flipped sends it past the page (SIGSEGV).
  constexpr std::size_t kLowerHighByte = 13;
  std::size_t set_aside = 0;
  for (std::size_t page = 2; page < bytes.size() / kPage; page++) {
    CAPTURE(page);
    std::string damaged = bytes;
    damaged[page * kPage + kLowerHighByte] ^= static_cast<char>(0x80);
    std::filesystem::remove_all(history_dir(f.options.data_dir) + ".damaged");
    std::filesystem::remove_all(history_dir(f.options.data_dir));
    std::filesystem::create_directory(history_dir(f.options.data_dir));
    testing::write_file(data_path, damaged);
    f.open();
    for (const int pair : {0, static_cast<int>(page) % kPairs, kPairs - 1}) {
      auto balance = f.ledger->balance(name("s", pair), "gold", AsOf::at_seq(kPairs));
      REQUIRE_MESSAGE(balance.ok(), balance.status().to_string());
      CHECK(balance->available == pair + 1);
    }
    f.close();
    if (std::filesystem::exists(history_dir(f.options.data_dir) + ".damaged")) set_aside++;
  }
  CHECK(set_aside > 0);
}

// Polls `done` for up to a minute.
bool eventually(const std::function<bool()>& done) {
  for (int wait = 0; wait < 6000; wait++) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// Writes `ops` ops of a random workload with neither history nor
// snapshots, and closes the ledger: its last seq.
std::uint64_t write_log_only(Fixture& f, int ops, std::uint32_t seed) {
  f.options.history = false;
  f.options.snapshot_every_events = 0;
  f.open();
  const std::uint64_t last = run_random_workload(f, ops, seed);
  f.close();
  return last;
}

// What an archivist of the closed ledger's directory works on, its log
// committed up to `last`.
ArchivistContext closed_context(const Fixture& f, snap::HistoryStore* history,
                                std::uint64_t last) {
  ArchivistContext context;
  context.data_dir = f.options.data_dir;
  context.history = history;
  context.committed_seq = [last] { return last; };
  return context;
}

TEST_CASE("the history is flushed at once for a reader waiting for it, not only on the interval") {
  Fixture f;
  const std::uint64_t last = write_log_only(f, 300, 5);

  auto history = snap::HistoryStore::open(history_dir(f.options.data_dir), {});
  REQUIRE(history.ok());
  ArchivistContext context = closed_context(f, history->get(), last);
  ArchivistOptions options;
  options.snapshot_every_events = 0;
  options.snapshot_every_seconds = 0;
  // No flush on the interval while the test runs.
  options.flush_interval = std::chrono::hours(1);
  auto archivist = Archivist::start(std::move(context), options);
  REQUIRE(archivist.ok());
  CHECK((*archivist)->wait_history(last, std::chrono::seconds(60)));
  CHECK((*archivist)->stats().history_seq == last);
  // Flushed: what a reader of the index sees.
  auto position = (*history)->position();
  REQUIRE(position.ok());
  CHECK(position->seq == last);
}

TEST_CASE("an archivist stopped by a log that no longer reads back shows in the stats") {
  log::FaultyFileSystem faulty(log::posix_file_system());
  Fixture f;
  f.options.fs = &faulty;
  f.open();
  f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  CHECK_FALSE(f.ledger->stats().archivist_failed);
  // Media corruption: the next record lands with a payload bit flipped,
  // and the write reports success.
  faulty.flip_bit_in_next_write((log::kFrameHeaderSize + 5) * 8 + 3);
  f.ok(f.ledger->acquire("a2", "alice", "gold", 6));
  // The archivist reads that record back and stops on it.
  CHECK(eventually([&] { return f.ledger->stats().archivist_failed; }));
  CHECK(f.ledger->snapshot_now().code() == ErrorCode::corrupt);
  // The ledger itself goes on, from its memory.
  f.ok(f.ledger->acquire("a3", "alice", "gold", 1));
  auto balance = f.ledger->balance("alice", "gold");
  REQUIRE(balance.ok());
  CHECK(balance->available == 12);
  f.close();
}

// While it lives, every write of this process past `bytes` of a file fails
// (EFBIG; SIGXFSZ ignored): a full disk, as LMDB meets it.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(getrlimit(RLIMIT_FSIZE, &saved_) == 0);
    saved_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{bytes, saved_.rlim_max};
    REQUIRE(setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    (void)setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, saved_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_{};
  void (*saved_handler_)(int) = SIG_DFL;
};

// The history and snapshot stores of a closed ledger's directory, for an
// archivist started by hand.
struct Stores {
  std::unique_ptr<snap::HistoryStore> history;
  SharedSnapshots snapshots;

  explicit Stores(const std::string& data_dir) {
    auto opened = snap::HistoryStore::open(history_dir(data_dir), {});
    REQUIRE(opened.ok());
    history = std::move(*opened);
    auto store = snap::SnapshotStore::open(snapshot_dir(data_dir), {});
    REQUIRE(store.ok());
    snapshots.store = std::move(*store);
  }
};

// After an archivist that paused caught up to `last`: its one snapshot
// and its history index both say what a replay of the log says.
void check_caught_up(const std::string& data_dir, snap::HistoryStore& history,
                     std::uint64_t last) {
  const std::unique_ptr<proj::State> truth = brute_force(data_dir, last);
  const std::vector<snap::SnapshotInfo> infos = list_snapshots(data_dir);
  REQUIRE(infos.size() == 1);
  CHECK(infos.back().digest == truth->digest());
  CHECK(history.check_chains().ok());
  CHECK(history.position()->seq == last);
  std::size_t pairs = 0;
  const Status listed = history.for_each_at(
      last, [&](std::string_view subject, std::string_view item, proj::Balance balance) {
        pairs++;
        CHECK(Balance{balance.available, balance.held} == raw_balance(*truth, subject, item));
      });
  CHECK(listed.ok());
  CHECK(pairs > 0);
}

TEST_CASE("a history flush or a snapshot that fails on a full disk is tried again, and catches up") {
  Fixture f;
  const std::uint64_t last = write_log_only(f, 300, 11);
  // Both stores made before the disk fills: their files hold no more
  // than their first pages.
  Stores stores(f.options.data_dir);
  std::uintmax_t largest = 0;
  for (const std::string& dir :
       {history_dir(f.options.data_dir), snapshot_dir(f.options.data_dir)}) {
    largest = std::max(largest, std::filesystem::file_size(dir + "/data.mdb"));
  }
  auto full = std::make_unique<FileSizeLimit>(static_cast<rlim_t>(largest));

  ArchivistContext context = closed_context(f, stores.history.get(), last);
  context.snapshots = &stores.snapshots;
  ArchivistOptions options;
  options.snapshot_every_events = 100;  // due at once: the log holds more since no snapshot
  options.snapshot_every_seconds = 0;
  options.retry_interval = std::chrono::milliseconds(50);
  auto archivist = Archivist::start(std::move(context), options);
  REQUIRE(archivist.ok());
  Archivist& running = **archivist;
  // Both writes fail, and neither stops the archivist.
  CHECK(eventually([&] { return running.stats().retrying.code() == ErrorCode::io_error; }));
  CHECK(running.snapshot_now(std::chrono::seconds(60)).code() == ErrorCode::io_error);
  // A reader does not wait for a history that waits to try again (this
  // returns as the flush fails, long before the timeout).
  CHECK_FALSE(running.wait_history(1, std::chrono::minutes(10)));
  ArchivistStats paused = running.stats();
  CHECK(paused.failure.ok());
  CHECK(paused.history_failure.ok());
  CHECK(paused.snapshot_failure.ok());
  CHECK(paused.history_seq == 0);
  CHECK(paused.snapshots_written == 0);

  // Space again: the next tries succeed.
  full.reset();
  CHECK(eventually([&] { return running.stats().history_seq == last; }));
  CHECK(eventually([&] { return running.stats().snapshots_written > 0; }));
  CHECK(eventually([&] { return running.stats().retrying.ok(); }));
  const ArchivistStats resumed = running.stats();
  CHECK(resumed.failure.ok());
  CHECK(resumed.history_seq == last);
  CHECK(resumed.last_snapshot_seq == last);
  archivist->reset();

  check_caught_up(f.options.data_dir, *stores.history, last);
}

// An archivist of a closed ledger's directory, committed up to `last`,
// that reads the log through `faulty`: snapshots are taken when asked, and
// failed reads are tried again every 50 ms.
struct FaultyReads {
  log::FaultyFileSystem faulty{log::posix_file_system()};
  Stores stores;
  ArchivistContext context;
  ArchivistOptions options;
  const std::uint64_t last;

  FaultyReads(const Fixture& f, std::uint64_t last_in)
      : stores(f.options.data_dir),
        context(closed_context(f, stores.history.get(), last_in)),
        last(last_in) {
    context.fs = &faulty;
    context.snapshots = &stores.snapshots;
    options.snapshot_every_events = UINT64_MAX;  // on, taken when asked
    options.snapshot_every_seconds = 0;
    options.retry_interval = std::chrono::milliseconds(50);
  }

  // Starts the archivist with every read failing from the start: the
  // replay that loads its state cannot read the log.
  std::unique_ptr<Archivist> start_unreadable() {
    faulty.fail_reads(log::FaultyFileSystem::kUntilDisarmed);
    auto started = Archivist::start(context, options);
    REQUIRE(started.ok());
    return std::move(*started);
  }

  // Reads fail now: the archivist waits, stops for none of it, and a
  // snapshot asked for tries at once and is told.
  static void check_paused(Archivist& running) {
    CHECK(eventually([&] { return running.stats().retrying.code() == ErrorCode::io_error; }));
    CHECK(running.snapshot_now(std::chrono::seconds(60)).code() == ErrorCode::io_error);
    const ArchivistStats paused = running.stats();
    CHECK(paused.failure.ok());
    CHECK(paused.history_failure.ok());
    CHECK(paused.snapshot_failure.ok());
  }

  // Disarms the faults: a snapshot asked for then tries at once, whatever
  // the retry interval, and reaches `last`; so does the history. Stops the
  // archivist.
  void check_recovers(const Fixture& f, std::unique_ptr<Archivist> archivist) {
    faulty.disarm();
    auto taken = archivist->snapshot_now(std::chrono::seconds(60));
    REQUIRE(taken.ok());
    CHECK(*taken == last);
    CHECK(eventually([&] { return archivist->stats().history_seq == last; }));
    CHECK(eventually([&] { return archivist->stats().retrying.ok(); }));
    CHECK(archivist->stats().failure.ok());
    archivist.reset();
    check_caught_up(f.options.data_dir, *stores.history, last);
  }
};

TEST_CASE("a read of the log that fails is tried again from where it stood, and catches up") {
  Fixture f;
  // Small segments: the second half of the log is in segments not yet
  // opened when the reads begin to fail.
  f.options.segment_size_bytes = 64 * 1024;
  FaultyReads reads(f, write_log_only(f, 2000, 17));
  const std::uint64_t last = reads.last;
  std::atomic<std::uint64_t> committed{last / 2};
  reads.context.committed_seq = [&committed] { return committed.load(); };
  auto archivist = Archivist::start(reads.context, reads.options);
  REQUIRE(archivist.ok());
  Archivist& running = **archivist;
  REQUIRE(running.wait_history(last / 2, std::chrono::seconds(60)));

  // Reads fail (a process out of descriptors, an unreadable sector the
  // disk retries): a reader of the history does not wait for them.
  reads.faulty.fail_reads(log::FaultyFileSystem::kUntilDisarmed);
  committed = last;
  FaultyReads::check_paused(running);
  CHECK_FALSE(running.wait_history(last, std::chrono::minutes(10)));
  CHECK(running.stats().history_seq < last);
  reads.check_recovers(f, std::move(*archivist));
}

TEST_CASE("a failed load of the state is tried again on a request, and the archivist starts") {
  Fixture f;
  FaultyReads reads(f, write_log_only(f, 300, 19));
  // No try comes of the interval while the test runs: the requests make
  // them.
  reads.options.retry_interval = std::chrono::hours(1);
  std::unique_ptr<Archivist> archivist = reads.start_unreadable();
  FaultyReads::check_paused(*archivist);
  CHECK(archivist->snapshot_now(std::chrono::seconds(60)).code() == ErrorCode::io_error);  // again
  CHECK_FALSE(archivist->wait_history(reads.last, std::chrono::minutes(10)));
  CHECK(archivist->stats().history_seq == 0);
  reads.check_recovers(f, std::move(archivist));
}

TEST_CASE("an archivist refuses options it cannot honour") {
  Fixture f;
  FaultyReads reads(f, write_log_only(f, 10, 29));
  SUBCASE("no snapshot to retain") { reads.options.snapshot_retain = 0; }
  SUBCASE("no wait between tries") { reads.options.retry_interval = std::chrono::milliseconds(0); }
  CHECK(Archivist::start(reads.context, reads.options).code() == ErrorCode::invalid);
}

TEST_CASE("an archivist stopped while a failed load of the state waits stops at once") {
  Fixture f;
  FaultyReads reads(f, write_log_only(f, 50, 23));
  reads.options.retry_interval = std::chrono::hours(1);
  std::unique_ptr<Archivist> archivist = reads.start_unreadable();
  CHECK(eventually([&] { return archivist->stats().retrying.code() == ErrorCode::io_error; }));
  archivist->stop();  // does not wait out the hour
  CHECK(archivist->stats().failure.ok());
  CHECK(archivist->snapshot_now(std::chrono::seconds(1)).code() == ErrorCode::closed);
}

}  // namespace
}  // namespace tally
