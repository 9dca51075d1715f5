#include "snapshots/history.h"

#include <doctest.h>
#include <fcntl.h>
#include <lmdb.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "log/hash.h"
#include "projections/changes.h"
#include "projections/state_fixture.h"
#include "projections/stream_fixture.h"
#include "snapshots/history_format.h"
#include "tests/testing.h"

namespace tally::proj {

// For doctest's messages.
std::ostream& operator<<(std::ostream& out, const Balance& balance) {
  return out << "{" << balance.available << ", " << balance.held << "}";
}

}  // namespace tally::proj

namespace tally::snap {
namespace {

using proj::acquire_op;
using proj::Balance;
using proj::bal;
using proj::consume_op;
using proj::Feed;
using proj::hold_op;
using proj::kMsNs;
using proj::kStartNs;
using proj::kStoredOnly;
using proj::Listed;
using proj::State;
using proj::StateOptions;
using proj::transfer_op;
using testing::TempDir;

constexpr std::int64_t kWindowNs = 50 * kMsNs;

// The chain value the tests pretend the log has after each seq.
std::uint64_t chain_of(std::uint64_t seq) { return 0x9e3779b97f4a7c15ULL * seq + 0xc4a1; }

// "k<n>", built by appending: GCC 12 warns falsely (-Wrestrict, PR 105651)
// on "k" + std::to_string(n) at -O3.
std::string key_of(std::uint64_t n) {
  std::string key = "k";
  key += std::to_string(n);
  return key;
}

HistoryStoreOptions small_options() {
  HistoryStoreOptions options;
  options.map_size_bytes = 64 * 1024;  // grows several times in most tests
  return options;
}

std::unique_ptr<HistoryStore> open_history(const TempDir& dir,
                                           HistoryStoreOptions options = small_options()) {
  Result<std::unique_ptr<HistoryStore>> store = HistoryStore::open(dir.sub("history"), options);
  REQUIRE_MESSAGE(store.ok(), store.status().to_string());
  return std::move(store).value();
}

// Appends every event the feed applies to the store, and flushes after
// each when asked.
void index_into(Feed* feed, HistoryStore* store, bool flush_each = false) {
  feed->on_applied = [store, flush_each](const log::Event& event) {
    REQUIRE_OK(store->append(event, chain_of(event.seq)));
    if (flush_each) REQUIRE_OK(store->flush());
  };
}

// A history store, and a State whose Feed indexes into it (index_into).
// Bound by name at each use: auto& [store, state, feed] = indexed.
struct Indexed {
  explicit Indexed(const TempDir& dir, HistoryStoreOptions options = small_options(),
                   bool flush_each = false, std::int64_t window_ns = kWindowNs)
      : store(open_history(dir, options)), state(StateOptions{window_ns}), feed({&state}) {
    index_into(&feed, store.get(), flush_each);
  }
  std::unique_ptr<HistoryStore> store;
  State state;
  Feed feed;
};

// How a test indexes: its options, and whether it flushes after every
// event. With epoch_entries_min 1, such a flush also ends the epoch.
struct Indexing {
  const char* name;
  HistoryStoreOptions options;
  bool flush_each = false;
};

std::vector<Indexing> indexings() {
  HistoryStoreOptions one_epoch_each = small_options();
  one_epoch_each.epoch_entries_min = 1;
  HistoryStoreOptions epochs_of_three = small_options();
  epochs_of_three.epoch_entries_min = 3;
  return {{"one epoch", small_options(), false},
          {"an epoch per flush, a flush per event", one_epoch_each, true},
          {"epochs of three entries, a flush per event", epochs_of_three, true}};
}

HistoryPosition position_ok(const HistoryStore& store) {
  Result<HistoryPosition> position = store.position();
  REQUIRE_MESSAGE(position.ok(), position.status().to_string());
  return *position;
}

Balance balance_ok(const HistoryStore& store, std::string_view subject, std::string_view item,
                   std::uint64_t seq) {
  Result<Balance> balance = store.balance_at(subject, item, seq);
  REQUIRE_MESSAGE(balance.ok(), balance.status().to_string());
  return *balance;
}

std::uint64_t seq_at_time_ok(const HistoryStore& store, std::int64_t time_ns) {
  Result<std::uint64_t> seq = store.seq_at_time(time_ns);
  REQUIRE_MESSAGE(seq.ok(), seq.status().to_string());
  return *seq;
}

std::vector<Listed> all_at(const HistoryStore& store, std::uint64_t seq) {
  std::vector<Listed> out;
  REQUIRE_OK(store.for_each_at(seq, [&](std::string_view subject, std::string_view item,
                                        Balance balance) {
    out.push_back({std::string(subject), std::string(item), balance});
  }));
  return out;
}

std::vector<std::pair<std::string, Balance>> list_at(const HistoryStore& store,
                                                     std::string_view subject,
                                                     std::uint64_t seq) {
  std::vector<std::pair<std::string, Balance>> out;
  REQUIRE_OK(store.list_at(subject, seq, [&](std::string_view item, Balance balance) {
    out.emplace_back(std::string(item), balance);
  }));
  return out;
}

// A HistoryEntry that owns its strings.
struct Entry {
  std::uint64_t seq = 0;
  std::int64_t time_ns = 0;
  std::string key;
  std::string op;
  std::int64_t delta_available = 0;
  std::int64_t delta_held = 0;
  Balance after;
};

std::vector<Entry> entries_of(const HistoryStore& store, std::string_view subject,
                              std::string_view item, std::uint64_t from_seq = 0,
                              std::uint64_t to_seq = UINT64_MAX) {
  std::vector<Entry> out;
  REQUIRE_OK(store.entries(subject, item, from_seq, to_seq, [&](const HistoryEntry& entry) {
    out.push_back(Entry{entry.seq, entry.time_ns, std::string(entry.key), std::string(entry.op),
                        entry.delta_available, entry.delta_held, entry.after});
    return true;
  }));
  return out;
}

std::vector<std::uint64_t> seqs_of(const std::vector<Entry>& entries) {
  std::vector<std::uint64_t> seqs;
  for (const Entry& entry : entries) seqs.push_back(entry.seq);
  return seqs;
}

// Every non-zero balance after each seq, as a State replay gives them, and
// the history's answers for all of them.
void check_every_seq(const HistoryStore& store, const std::vector<std::vector<Listed>>& at_seq) {
  for (std::uint64_t seq = 0; seq < at_seq.size(); seq++) {
    CAPTURE(seq);
    CHECK(all_at(store, seq) == at_seq[seq]);
    for (const Listed& listed : at_seq[seq]) {
      CHECK(balance_ok(store, listed.subject, listed.item, seq) == listed.balance);
    }
  }
}

// ---------------------------------------------------------------- basics

TEST_CASE("append, flush and reopen keep the position and the answers") {
  for (const Indexing& indexing : indexings()) {
    CAPTURE(indexing.name);
    TempDir dir;
    State state(StateOptions{kWindowNs});
    Feed feed({&state});
    std::vector<std::vector<Listed>> at_seq = {{}};
    std::unique_ptr<HistoryStore> store = open_history(dir, indexing.options);
    bool flush_each = false;  // not before the first flush's checks
    feed.on_applied = [&](const log::Event& event) {
      REQUIRE_OK(store->append(event, chain_of(event.seq)));
      if (flush_each) REQUIRE_OK(store->flush());
      at_seq.push_back(proj::all_balances(state, kStoredOnly));
    };
    CHECK(position_ok(*store) == HistoryPosition{});
    proj::ScriptHolds holds;
    const std::vector<proj::Step> script = proj::script();
    for (std::size_t step = 0; step < script.size(); step++) {
      REQUIRE_OK(script[step](feed, holds));
      // The first few in one flush, then one flush each when asked.
      if (step == 3) {
        CHECK(position_ok(*store) == HistoryPosition{});  // nothing is visible before the flush
        CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::invalid);
        CHECK(all_at(*store, 0).empty());
        REQUIRE_OK(store->flush());
        flush_each = indexing.flush_each;
      }
    }
    const HistoryPosition last{state.last_seq(), chain_of(state.last_seq()),
                               state.last_timestamp_ns()};
    CHECK(store->appended_position() == last);
    REQUIRE_OK(store->flush());
    CHECK(position_ok(*store) == last);
    check_every_seq(*store, at_seq);
    CHECK(store->balance_at("alice", "gold", last.seq + 1).code() == ErrorCode::invalid);

    store.reset();
    store = open_history(dir, indexing.options);
    CHECK(position_ok(*store) == last);
    CHECK(store->appended_position() == last);
    check_every_seq(*store, at_seq);
    // Appending goes on after the reopen, for a known pair and a new one.
    REQUIRE_OK(feed.one("after-1", acquire_op("alice", "gold", 1)));
    REQUIRE_OK(feed.one("after-2", acquire_op("newcomer", "gold", 2)));
    REQUIRE_OK(store->flush());
    CHECK(position_ok(*store).seq == last.seq + 2);
    check_every_seq(*store, at_seq);
    feed.on_applied = nullptr;
  }
}

TEST_CASE("entries list one pair's changes with their keys, ops and balances, within bounds") {
  for (const Indexing& indexing : indexings()) {
    CAPTURE(indexing.name);
    TempDir dir;
    Indexed indexed(dir, indexing.options, indexing.flush_each);
    auto& [store, state, feed] = indexed;
    REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 10)));
    REQUIRE_OK(feed.one("k2", acquire_op("bob", "gold", 5)));
    REQUIRE_OK(feed.one("k3", hold_op("alice", "gold", 4, 5 * kMsNs)));
    feed.now_ns += kMsNs;
    REQUIRE_OK(feed.one("k4", transfer_op("alice", "bob", "gold", 1)));
    feed.now_ns += 5 * kMsNs;
    REQUIRE_OK(feed.expire(3, "alice", "gold", 4));
    REQUIRE_OK(feed.batch("k6", {consume_op("alice", "gold", 2), acquire_op("alice", "silver", 3),
                                 acquire_op("carol", "gold", 1), consume_op("carol", "gold", 1)}));
    REQUIRE_OK(feed.rejected("k7", proj::Reason::insufficient, {consume_op("alice", "gold", 99)},
                             false, 0));
    REQUIRE_OK(feed.one("k8", consume_op("alice", "gold", 1)));
    REQUIRE_OK(store->flush());

    const std::vector<Entry> gold = entries_of(*store, "alice", "gold");
    REQUIRE(seqs_of(gold) == std::vector<std::uint64_t>{1, 3, 4, 5, 6, 8});
    const auto check_entry = [](const Entry& entry, std::string_view key, std::string_view op,
                                std::int64_t delta_available, std::int64_t delta_held,
                                Balance after) {
      CAPTURE(entry.seq);
      CHECK(entry.key == key);
      CHECK(entry.op == op);
      CHECK(entry.delta_available == delta_available);
      CHECK(entry.delta_held == delta_held);
      CHECK(entry.after == after);
    };
    check_entry(gold[0], "k1", "acquire", 10, 0, bal(10, 0));
    check_entry(gold[1], "k3", "hold", -4, 4, bal(6, 4));
    check_entry(gold[2], "k4", "transfer", -1, 0, bal(5, 4));
    check_entry(gold[3], "", "expire", 4, -4, bal(9, 0));
    check_entry(gold[4], "k6", "batch", -2, 0, bal(7, 0));
    check_entry(gold[5], "k8", "consume", -1, 0, bal(6, 0));
    CHECK(gold[0].time_ns == kStartNs);
    CHECK(gold[2].time_ns == kStartNs + kMsNs);
    CHECK(gold[3].time_ns == kStartNs + 6 * kMsNs);

    CHECK(seqs_of(entries_of(*store, "bob", "gold")) == std::vector<std::uint64_t>{2, 4});
    CHECK(seqs_of(entries_of(*store, "alice", "silver")) == std::vector<std::uint64_t>{6});
    // A batch that changes a pair by zero in all writes no entry for it.
    CHECK(entries_of(*store, "carol", "gold").empty());
    CHECK(entries_of(*store, "nobody", "gold").empty());

    CHECK(seqs_of(entries_of(*store, "alice", "gold", 3, 5)) ==
          std::vector<std::uint64_t>{3, 4, 5});
    CHECK(seqs_of(entries_of(*store, "alice", "gold", 2, 2)).empty());
    CHECK(seqs_of(entries_of(*store, "alice", "gold", 6, UINT64_MAX)) ==
          std::vector<std::uint64_t>{6, 8});
    CHECK(seqs_of(entries_of(*store, "alice", "gold", 7, 7)).empty());
    CHECK(seqs_of(entries_of(*store, "alice", "gold", 9, 100)).empty());
    CHECK(seqs_of(entries_of(*store, "alice", "gold", 5, 3)).empty());
    std::vector<std::uint64_t> first_only;
    REQUIRE_OK(store->entries("alice", "gold", 0, UINT64_MAX, [&](const HistoryEntry& entry) {
      first_only.push_back(entry.seq);
      return false;
    }));
    CHECK(first_only == std::vector<std::uint64_t>{1});
    const auto ignore = [](const HistoryEntry&) { return true; };
    // A range past the index's position ends there, and the read says
    // where that is.
    const Result<HistoryPosition> position = store->position();
    REQUIRE_OK(position.status());
    HistoryPosition found;
    REQUIRE_OK(store->entries("alice", "gold", 0, position->seq + 10, ignore, &found));
    CHECK(found == *position);
    // A time at or after its last event is the index's only where the log
    // ends there too.
    const std::int64_t last_time = position->time_ns;
    CHECK(store->seq_at_time(last_time, position->seq).value() == position->seq);
    CHECK(store->seq_at_time(last_time, position->seq + 1).code() == ErrorCode::not_found);
    CHECK(store->seq_at_time(last_time - 1, position->seq + 1).ok());
    CHECK(store->entries("", "gold", 0, 9, ignore).code() == ErrorCode::invalid);
    CHECK(store->entries("alice", std::string(256, 'x'), 0, 9, ignore).code() ==
          ErrorCode::invalid);
    CHECK(store->entries(std::string("a\0b", 3), "gold", 0, 9, ignore).code() ==
          ErrorCode::invalid);

    // Between entries a pair keeps its balance; before its first it is zero.
    CHECK(balance_ok(*store, "alice", "gold", 7) == bal(7, 0));
    CHECK(balance_ok(*store, "alice", "silver", 5) == bal(0, 0));
    CHECK(balance_ok(*store, "alice", "silver", 8) == bal(3, 0));
    feed.on_applied = nullptr;
  }
}

TEST_CASE("seq_at_time: events sharing a time, a time before the first, at one, after the last") {
  TempDir dir;
  Indexed indexed(dir);
  auto& [store, state, feed] = indexed;
  CHECK(seq_at_time_ok(*store, kStartNs) == 0);
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 1)));
  REQUIRE_OK(feed.one("k2", acquire_op("alice", "gold", 1)));
  REQUIRE_OK(store->flush());
  feed.now_ns = kStartNs + 5;
  REQUIRE_OK(feed.one("k3", acquire_op("alice", "gold", 1)));
  REQUIRE_OK(store->flush());
  // The same time again, after a flush, and a rejected event: both count.
  REQUIRE_OK(feed.rejected("k4", proj::Reason::insufficient, {consume_op("bob", "gold", 1)},
                           false, 0));
  feed.now_ns = kStartNs + 10;
  REQUIRE_OK(feed.one("k5", acquire_op("alice", "gold", 1)));
  REQUIRE_OK(store->flush());

  CHECK(seq_at_time_ok(*store, INT64_MIN) == 0);
  CHECK(seq_at_time_ok(*store, kStartNs - 1) == 0);
  CHECK(seq_at_time_ok(*store, kStartNs) == 2);
  CHECK(seq_at_time_ok(*store, kStartNs + 1) == 2);
  CHECK(seq_at_time_ok(*store, kStartNs + 4) == 2);
  CHECK(seq_at_time_ok(*store, kStartNs + 5) == 4);
  CHECK(seq_at_time_ok(*store, kStartNs + 9) == 4);
  CHECK(seq_at_time_ok(*store, kStartNs + 10) == 5);
  CHECK(seq_at_time_ok(*store, INT64_MAX) == 5);
  // As of a time: the balance after that seq.
  CHECK(balance_ok(*store, "alice", "gold", seq_at_time_ok(*store, kStartNs + 7)) == bal(3, 0));

  // Not flushed: not seen.
  feed.now_ns = kStartNs + 20;
  REQUIRE_OK(feed.one("k6", acquire_op("alice", "gold", 1)));
  CHECK(seq_at_time_ok(*store, kStartNs + 20) == 5);
  feed.on_applied = nullptr;
}

TEST_CASE("seq_at_time orders negative timestamps numerically") {
  TempDir dir;
  Indexed indexed(dir, small_options(), false, 0);
  auto& [store, state, feed] = indexed;
  const std::int64_t times[] = {-5, -5, 0, 3};
  for (const std::int64_t time_ns : times) {
    feed.now_ns = time_ns;
    REQUIRE_OK(feed.one(key_of(feed.next_seq()), acquire_op("a", "b", 1)));
  }
  REQUIRE_OK(store->flush());
  CHECK(seq_at_time_ok(*store, -6) == 0);
  CHECK(seq_at_time_ok(*store, -5) == 2);
  CHECK(seq_at_time_ok(*store, -1) == 2);
  CHECK(seq_at_time_ok(*store, 0) == 3);
  CHECK(seq_at_time_ok(*store, 2) == 3);
  CHECK(seq_at_time_ok(*store, 3) == 4);
  feed.on_applied = nullptr;
}

TEST_CASE("clear removes everything and the index is rebuilt from seq 1") {
  TempDir dir;
  Indexed indexed(dir);
  auto& [store, state, feed] = indexed;
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 7)));
  REQUIRE_OK(feed.one("k2", acquire_op("bob", "gold", 3)));
  REQUIRE_OK(store->flush());
  REQUIRE_OK(feed.one("k3", acquire_op("carol", "gold", 1)));  // buffered, dropped by clear
  REQUIRE_OK(store->clear());
  CHECK(position_ok(*store) == HistoryPosition{});
  CHECK(store->appended_position() == HistoryPosition{});
  CHECK(all_at(*store, 0).empty());
  CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::invalid);
  CHECK(seq_at_time_ok(*store, INT64_MAX) == 0);
  CHECK(entries_of(*store, "alice", "gold").empty());

  // The rebuild: the same log again from seq 1, here with other quantities.
  State rebuilt(StateOptions{kWindowNs});
  Feed again({&rebuilt});
  index_into(&again, store.get());
  REQUIRE_OK(again.one("k1", acquire_op("bob", "gold", 2)));
  REQUIRE_OK(store->flush());
  CHECK(position_ok(*store).seq == 1);
  CHECK(all_at(*store, 1) == std::vector<Listed>{{"bob", "gold", bal(2, 0)}});
  store.reset();
  store = open_history(dir);
  CHECK(all_at(*store, 1) == std::vector<Listed>{{"bob", "gold", bal(2, 0)}});
  feed.on_applied = nullptr;
  again.on_applied = nullptr;
}

// Indexes five acquires and flushes the first three: alice's 1, 2 and 3,
// then, not flushed, alice's 100 and zed's 100.
void index_three_flushed_two_not(Feed* feed, HistoryStore* store) {
  index_into(feed, store);
  for (std::uint64_t seq = 1; seq <= 3; seq++) {
    REQUIRE_OK(feed->one(key_of(seq), acquire_op("alice", "gold", static_cast<std::int64_t>(seq))));
  }
  REQUIRE_OK(store->flush());
  REQUIRE_OK(feed->one("k4", acquire_op("alice", "gold", 100)));
  REQUIRE_OK(feed->one("k5", acquire_op("zed", "gold", 100)));
  CHECK(store->appended_position().seq == 5);
}

TEST_CASE("appends not flushed are gone when the store is destroyed") {
  TempDir dir;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  {
    std::unique_ptr<HistoryStore> store = open_history(dir);
    index_three_flushed_two_not(&feed, store.get());
    feed.on_applied = nullptr;
  }
  std::unique_ptr<HistoryStore> store = open_history(dir);
  CHECK(position_ok(*store).seq == 3);
  CHECK(store->appended_position().seq == 3);
  CHECK(balance_ok(*store, "alice", "gold", 3) == bal(6, 0));
  CHECK(store->balance_at("alice", "gold", 4).code() == ErrorCode::invalid);
  CHECK(entries_of(*store, "zed", "gold").empty());
  CHECK(all_at(*store, 3) == std::vector<Listed>{{"alice", "gold", bal(6, 0)}});
}

TEST_CASE("a cancelled flush writes nothing and keeps the appends for the next") {
  TempDir dir;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  std::unique_ptr<HistoryStore> store = open_history(dir);
  index_three_flushed_two_not(&feed, store.get());
  std::atomic<bool> cancel{true};
  CHECK(store->flush(&cancel).code() == ErrorCode::closed);
  CHECK(position_ok(*store).seq == 3);
  CHECK(store->appended_position().seq == 5);
  CHECK(entries_of(*store, "zed", "gold").empty());
  cancel = false;
  REQUIRE_OK(store->flush(&cancel));
  CHECK(position_ok(*store).seq == 5);
  CHECK(balance_ok(*store, "alice", "gold", 5) == bal(106, 0));
  CHECK(balance_ok(*store, "zed", "gold", 5) == bal(100, 0));
  feed.on_applied = nullptr;
}

TEST_CASE("append refuses what does not follow, and a full buffer, changing nothing") {
  TempDir dir;
  HistoryStoreOptions options = small_options();
  options.pending_bytes_max = 1;  // one event at a time
  std::unique_ptr<HistoryStore> store = open_history(dir, options);
  const std::vector<log::Op> ops = {acquire_op("alice", "gold", 5)};
  log::Event event;
  event.seq = 2;
  event.timestamp_ns = kStartNs;
  event.key = "k";
  event.ops = ops;
  CHECK(store->append(event, 1).code() == ErrorCode::invalid);  // seq 2 before seq 1
  event.seq = 1;
  REQUIRE_OK(store->append(event, 1));
  event.seq = 2;
  event.key = "k2";
  CHECK(store->append(event, 2).code() == ErrorCode::busy);
  CHECK(store->appended_position().seq == 1);
  REQUIRE_OK(store->flush());
  event.timestamp_ns = kStartNs - 1;
  CHECK(store->append(event, 2).code() == ErrorCode::invalid);  // time goes back
  event.timestamp_ns = kStartNs;
  const std::vector<log::Op> too_much = {consume_op("alice", "gold", 6)};
  event.ops = too_much;
  CHECK(store->append(event, 2).code() == ErrorCode::corrupt);  // below zero
  const std::vector<log::Op> nul_name = {acquire_op(std::string_view("a\0b", 3), "gold", 1)};
  event.ops = nul_name;
  CHECK(store->append(event, 2).code() == ErrorCode::invalid);
  event.ops = {};
  CHECK(store->append(event, 2).code() == ErrorCode::invalid);
  const std::string long_key(256, 'k');
  event.ops = ops;
  event.key = long_key;
  CHECK(store->append(event, 2).code() == ErrorCode::invalid);
  CHECK(store->appended_position().seq == 1);
  // A transfer from alice's 5 and a hold of the rest: still accepted whole.
  const std::vector<log::Op> both = {transfer_op("alice", "bob", "gold", 2),
                                     hold_op("alice", "gold", 3, kMsNs)};
  event.ops = both;
  event.batch = true;
  event.key = "k2";
  REQUIRE_OK(store->append(event, 2));
  REQUIRE_OK(store->flush());
  CHECK(balance_ok(*store, "alice", "gold", 2) == bal(0, 3));
  CHECK(balance_ok(*store, "bob", "gold", 2) == bal(2, 0));
  CHECK(balance_ok(*store, "alice", "gold", 1) == bal(5, 0));
}

TEST_CASE("bad options are invalid; a capped map fails the flush and keeps the appends") {
  TempDir dir;
  HistoryStoreOptions options = small_options();
  options.pending_bytes_max = 0;
  CHECK(HistoryStore::open(dir.sub("history"), options).code() == ErrorCode::invalid);
  options = small_options();
  options.epoch_entries_min = 0;
  CHECK(HistoryStore::open(dir.sub("history"), options).code() == ErrorCode::invalid);
  options = small_options();
  options.map_size_bytes_max = options.map_size_bytes / 2;
  CHECK(HistoryStore::open(dir.sub("history"), options).code() == ErrorCode::invalid);

  options = small_options();
  options.map_size_bytes_max = options.map_size_bytes;
  Indexed indexed(dir, options, false, 0);
  auto& [store, state, feed] = indexed;
  for (int index = 0; index < 2000; index++) {
    const std::string name = "a-subject-with-a-rather-long-name-" + std::to_string(index);
    REQUIRE_OK(feed.one(name, acquire_op(name, "gold", 1)));
  }
  CHECK(store->flush().code() == ErrorCode::io_error);
  CHECK(position_ok(*store) == HistoryPosition{});
  CHECK(store->appended_position().seq == 2000);
  feed.on_applied = nullptr;
}

// ---------------------------------------------------------------- random

// Indexes a random stream (flushing at random, and whenever the buffer is
// full), then replays the same stream into a fresh State and compares the
// index with it after every event.
void run_random_history(std::uint64_t seed, int steps, const HistoryStoreOptions& options) {
  TempDir dir;
  std::unique_ptr<HistoryStore> store = open_history(dir, options);
  {
    State state(StateOptions{kWindowNs});
    proj::RandomStream stream(seed, kWindowNs, {&state});
    std::mt19937_64 flushes(seed + 1);
    stream.feed().on_applied = [&](const log::Event& event) {
      Status appended = store->append(event, chain_of(event.seq));
      if (appended.code() == ErrorCode::busy) {
        REQUIRE_OK(store->flush());
        appended = store->append(event, chain_of(event.seq));
      }
      REQUIRE_OK(appended);
      if (flushes() % 64 == 0) {
        REQUIRE_OK(store->flush());
        CHECK(position_ok(*store).seq == event.seq);
      }
    };
    for (int step = 0; step < steps; step++) stream.step(state);
    REQUIRE_OK(store->flush());
    CHECK(position_ok(*store).seq == state.last_seq());
  }

  State replay(StateOptions{kWindowNs});
  proj::RandomStream stream(seed, kWindowNs, {&replay});
  std::mt19937_64 picks(seed + 2);
  std::vector<std::pair<std::string, std::string>> seen;
  std::set<std::pair<std::string, std::string>> seen_set;
  std::vector<proj::PairDelta> deltas;
  stream.feed().on_applied = [&](const log::Event& event) {
    const std::uint64_t seq = event.seq;
    CAPTURE(seq);
    proj::event_deltas(event, &deltas);
    for (const proj::PairDelta& delta : deltas) {
      std::pair<std::string, std::string> pair(delta.subject, delta.item);
      if (seen_set.insert(pair).second) seen.push_back(pair);
      CHECK(balance_ok(*store, delta.subject, delta.item, seq) ==
            replay.balance(delta.subject, delta.item, kStoredOnly));
    }
    // Two pairs this event did not touch, likely.
    for (int pick = 0; pick < 2 && !seen.empty(); pick++) {
      const auto& [subject, item] = seen[picks() % seen.size()];
      CHECK(balance_ok(*store, subject, item, seq) == replay.balance(subject, item, kStoredOnly));
    }
    if (seq % 97 == 0 && !seen.empty()) {
      CHECK(all_at(*store, seq) == proj::all_balances(replay, kStoredOnly));
      const std::string& subject = seen[picks() % seen.size()].first;
      CHECK(list_at(*store, subject, seq) == proj::list_of(replay, subject, kStoredOnly));
    }
  };
  for (int step = 0; step < steps; step++) stream.step(replay);
  CHECK(position_ok(*store).seq == replay.last_seq());
  CHECK(all_at(*store, replay.last_seq()) == proj::all_balances(replay, kStoredOnly));
  REQUIRE_OK(store->check_chains());
  // Each pair's entries chain: the balance after one plus the next change
  // is the balance after the next; the last is the balance now.
  for (const auto& [subject, item] : seen) {
    const std::vector<Entry> entries = entries_of(*store, subject, item);
    Balance balance;
    for (const Entry& entry : entries) {
      balance.available += entry.delta_available;
      balance.held += entry.delta_held;
      CHECK(entry.after == balance);
    }
    CHECK(balance == replay.balance(subject, item, kStoredOnly));
  }
  stream.feed().on_applied = nullptr;
}

TEST_CASE("random streams: balance_at, list_at and for_each_at equal a State replay") {
  run_random_history(5, 3000, small_options());
}

TEST_CASE("random streams with a small buffer and cache: appends read the flushed index") {
  HistoryStoreOptions options = small_options();
  options.pending_bytes_max = 8 * 1024;
  options.pair_cache_max = 8;
  run_random_history(6, 3000, options);
}

TEST_CASE("random streams over many epochs: openings carry the balances a flush leaves") {
  for (const std::uint64_t entries_min : {1, 5, 40}) {
    CAPTURE(entries_min);
    HistoryStoreOptions options = small_options();
    options.epoch_entries_min = entries_min;
    run_random_history(7 + entries_min, 3000, options);
    // Appends that read openings of pairs the cache dropped.
    options.pending_bytes_max = 8 * 1024;
    options.pair_cache_max = 8;
    run_random_history(8 + entries_min, 3000, options);
  }
}

// ---------------------------------------------------------------- damage

// Opens the environment directly (the store must be closed: a process may
// not open an LMDB environment twice) and lets `edit` change one database.
void edit_db(const TempDir& dir, const char* db,
             const std::function<void(MDB_txn*, MDB_dbi)>& edit) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  REQUIRE(mdb_env_set_maxdbs(env, history::kDbNames.size()) == 0);
  // Room for the edit: the store's small maps may be full.
  REQUIRE(mdb_env_set_mapsize(env, std::size_t{16} << 20) == 0);
  REQUIRE(mdb_env_open(env, dir.sub("history").c_str(), 0, 0644) == 0);
  MDB_txn* txn = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
  MDB_dbi dbi = 0;
  REQUIRE(mdb_dbi_open(txn, db, 0, &dbi) == 0);
  edit(txn, dbi);
  REQUIRE(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
}

// Replaces the value of the first key of a database with f(old value).
void rewrite_first(const TempDir& dir, const char* db,
                   const std::function<std::string(const std::string&)>& rewrite) {
  edit_db(dir, db, [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_cursor* cursor = nullptr;
    REQUIRE(mdb_cursor_open(txn, dbi, &cursor) == 0);
    MDB_val key{};
    MDB_val value{};
    REQUIRE(mdb_cursor_get(cursor, &key, &value, MDB_FIRST) == 0);
    std::string changed =
        rewrite(std::string(static_cast<const char*>(value.mv_data), value.mv_size));
    std::string key_copy(static_cast<const char*>(key.mv_data), key.mv_size);
    mdb_cursor_close(cursor);
    MDB_val key_val{key_copy.size(), key_copy.data()};
    MDB_val changed_val{changed.size(), changed.data()};
    REQUIRE(mdb_put(txn, dbi, &key_val, &changed_val, 0) == 0);
  });
}

// What listing every entry of a pair returns.
ErrorCode all_entries_code(const HistoryStore& store, std::string_view subject,
                           std::string_view item) {
  return store.entries(subject, item, 0, UINT64_MAX, [](const HistoryEntry&) { return true; })
      .code();
}

// Every record of a database, in key order: key bytes, value bytes.
std::vector<std::pair<std::string, std::string>> records_of(const TempDir& dir, const char* db) {
  std::vector<std::pair<std::string, std::string>> out;
  edit_db(dir, db, [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_cursor* cursor = nullptr;
    REQUIRE(mdb_cursor_open(txn, dbi, &cursor) == 0);
    MDB_val key{};
    MDB_val value{};
    for (int rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
      out.emplace_back(std::string(static_cast<const char*>(key.mv_data), key.mv_size),
                       std::string(static_cast<const char*>(value.mv_data), value.mv_size));
    }
    mdb_cursor_close(cursor);
  });
  return out;
}

// The u64 at `at` in `bytes`, big-endian (keys) or little-endian (values).
std::uint64_t u64_at(const std::string& bytes, std::size_t at, bool big_endian) {
  std::uint64_t value = 0;
  for (std::size_t index = 0; index < 8; index++) {
    const auto byte = static_cast<std::uint8_t>(bytes.at(at + (big_endian ? index : 7 - index)));
    value = (value << 8) | byte;
  }
  return value;
}

// Indexes into DATA/history what `feed_events` applies, flushing after
// each event, with epochs of at least `entries_min` entries; then lets
// `check` read the index.
void index_flushing_each(const TempDir& dir, std::uint64_t entries_min,
                         const std::function<void(Feed&)>& feed_events,
                         const std::function<void(const HistoryStore&)>& check) {
  HistoryStoreOptions options = small_options();
  options.epoch_entries_min = entries_min;
  Indexed indexed(dir, options, true);
  auto& [store, state, feed] = indexed;
  feed_events(feed);
  feed.on_applied = nullptr;
  check(*store);
}

TEST_CASE("a flush ends an epoch once it holds enough entries; the next opens with the balances") {
  TempDir dir;
  // Epoch 1 opens with nothing and ends at the flush after its 2nd entry;
  // epoch 3 opens with alice's 11 gold and needs max(2, 1) entries; the
  // consume empties alice, so epoch 5 opens with bob's alone.
  index_flushing_each(
      dir, 2,
      [](Feed& feed) {
        REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 5)));
        REQUIRE_OK(feed.one("k2", acquire_op("alice", "gold", 6)));
        REQUIRE_OK(feed.one("k3", acquire_op("bob", "gold", 1)));
        REQUIRE_OK(feed.one("k4", consume_op("alice", "gold", 11)));
      },
      [](const HistoryStore& store) {
        CHECK(balance_ok(store, "alice", "gold", 2) == bal(11, 0));
        CHECK(balance_ok(store, "alice", "gold", 4) == bal(0, 0));
        CHECK(balance_ok(store, "bob", "gold", 4) == bal(1, 0));
      });
  // Epoch records: first seq (key) and opening count (value).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> epochs;
  for (const auto& [key, value] : records_of(dir, history::kEpochsDbName)) {
    epochs.emplace_back(u64_at(key, 0, true), u64_at(value, 0, false));
  }
  CHECK(epochs == std::vector<std::pair<std::uint64_t, std::uint64_t>>{{1, 0}, {3, 1}, {5, 1}});
  // Openings: (epoch, pair id) and the available balance. alice's pair
  // changed first (id 1), bob's second.
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>> openings;
  for (const auto& [key, value] : records_of(dir, history::kOpeningsDbName)) {
    openings.emplace_back(u64_at(key, 0, true), u64_at(key, 8, true), u64_at(value, 0, false));
  }
  CHECK(openings == std::vector<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>>{
                        {3, 1, 11}, {5, 2, 1}});
}

void write_small_index(const TempDir& dir) {
  Indexed indexed(dir);
  auto& [store, state, feed] = indexed;
  REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 5)));
  REQUIRE_OK(feed.one("k2", acquire_op("alice", "gold", 6)));
  REQUIRE_OK(feed.one("k3", acquire_op("bob", "gold", 1)));
  REQUIRE_OK(store->flush());
  feed.on_applied = nullptr;
}

TEST_CASE("pages damaged under an open store fail its next flush and reads as corrupt") {
  // As a disk or another program may damage the file while a ledger runs:
  // LMDB finds it as it opens a tree, without saying so then, and fails the
  // next call as a transaction gone bad (MDB_BAD_TXN).
  TempDir dir;
  Indexed indexed(dir);
  auto& [store, state, feed] = indexed;
  for (std::uint64_t n = 0; n < 300; n++) {
    REQUIRE_OK(feed.one(key_of(n), acquire_op(key_of(n % 50), "gold", 1)));
  }
  REQUIRE_OK(store->flush());
  const std::string path = dir.sub("history") + "/data.mdb";
  const std::size_t bytes = std::filesystem::file_size(path);
  constexpr std::size_t kMetaBytes = 2 * 4096;
  REQUIRE(bytes > kMetaBytes);
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(kMetaBytes));
    const std::string zeros(bytes - kMetaBytes, '\0');
    file.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  // The next append (it reads the position) or its flush finds it.
  Status appended;
  feed.on_applied = [&](const log::Event& event) {
    appended = store->append(event, chain_of(event.seq));
  };
  REQUIRE_OK(feed.one("after", acquire_op("alice", "gold", 1)));
  const Status written = appended.ok() ? store->flush() : appended;
  CHECK_MESSAGE(written.code() == ErrorCode::corrupt, written.to_string());
  CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::corrupt);
  feed.on_applied = nullptr;
}

TEST_CASE("a damaged entry is corrupt for every reader, and its neighbours still read") {
  const std::vector<std::function<std::string(const std::string&)>> damages = {
      [](const std::string& value) {  // a flipped bit in the balance after
        std::string flipped = value;
        flipped.replace(24, 1, 1, static_cast<char>(value.at(24) ^ 0x01));
        return flipped;
      },
      [](const std::string& value) { return value.substr(0, 3); },  // truncated
      [](const std::string& value) { return value + "x"; },  // too long for its key length
      [](const std::string& value) { return std::string(value.size(), '\xff'); },
  };
  for (std::size_t damage = 0; damage < damages.size(); damage++) {
    CAPTURE(damage);
    TempDir dir;
    write_small_index(dir);
    // The first entry is alice's gold at seq 1.
    rewrite_first(dir, history::kEntriesDbName, damages[damage]);
    std::unique_ptr<HistoryStore> store = open_history(dir);
    CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::corrupt);
    CHECK(balance_ok(*store, "alice", "gold", 2) == bal(11, 0));  // the next entry is whole
    CHECK(balance_ok(*store, "bob", "gold", 3) == bal(1, 0));
    CHECK(store->for_each_at(1, [](std::string_view, std::string_view, Balance) {}).code() ==
          ErrorCode::corrupt);
    CHECK(all_entries_code(*store, "alice", "gold") == ErrorCode::corrupt);
  }
}

TEST_CASE("a damaged pair id or position record is corrupt") {
  {
    TempDir dir;
    write_small_index(dir);
    rewrite_first(dir, history::kPairsDbName,
                  [](const std::string&) { return std::string("\x09"); });
    std::unique_ptr<HistoryStore> store = open_history(dir);
    CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::corrupt);
    CHECK(store->list_at("alice", 1, [](std::string_view, Balance) {}).code() ==
          ErrorCode::corrupt);
  }
  {
    TempDir dir;
    write_small_index(dir);
    rewrite_first(dir, history::kPairsDbName, [](const std::string& value) {
      std::string flipped = value;
      flipped[0] = static_cast<char>(flipped[0] ^ 0x02);  // id 3 of 2, the check unchanged
      return flipped;
    });
    std::unique_ptr<HistoryStore> store = open_history(dir);
    CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::corrupt);
    CHECK(store->check_chains().code() == ErrorCode::corrupt);
  }
  {
    TempDir dir;
    write_small_index(dir);
    rewrite_first(dir, history::kMetaDbName, [](const std::string& value) {
      std::string flipped = value;
      flipped.replace(8, 1, 1, static_cast<char>(value.at(8) ^ 0x04));  // the seq
      return flipped;
    });
    CHECK(HistoryStore::open(dir.sub("history"), small_options()).code() == ErrorCode::corrupt);
    HistoryStoreOptions read_only = small_options();
    read_only.read_only = true;
    CHECK(HistoryStore::open(dir.sub("history"), read_only).code() == ErrorCode::corrupt);
  }
}

// Three epochs: seq 1 (alice's gold), seq 2 (bob's gold, with alice's 5
// as an opening balance), and seq 3 on, empty (opening with both).
void write_epochs_index(const TempDir& dir) {
  index_flushing_each(
      dir, 1,
      [](Feed& feed) {
        REQUIRE_OK(feed.one("k1", acquire_op("alice", "gold", 5)));
        REQUIRE_OK(feed.one("k2", acquire_op("bob", "gold", 1)));
      },
      [](const HistoryStore& store) {
        CHECK(balance_ok(store, "alice", "gold", 2) == bal(5, 0));
      });
}

TEST_CASE("a damaged opening balance or epoch record is corrupt where it is read") {
  {
    TempDir dir;
    write_epochs_index(dir);
    // The first opening is alice's gold in epoch 2.
    rewrite_first(dir, history::kOpeningsDbName, [](const std::string& value) {
      std::string flipped = value;
      flipped.replace(0, 1, 1, static_cast<char>(value.at(0) ^ 0x02));
      return flipped;
    });
    std::unique_ptr<HistoryStore> store = open_history(dir);
    // At seq 1 too: with no later entry in epoch 1, the read checks that
    // epoch 2's opening carries alice's balance on.
    CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::corrupt);
    CHECK(store->balance_at("alice", "gold", 2).code() == ErrorCode::corrupt);
    CHECK(balance_ok(*store, "bob", "gold", 2) == bal(1, 0));
    CHECK(store->list_at("alice", 2, [](std::string_view, Balance) {}).code() ==
          ErrorCode::corrupt);
  }
  {
    TempDir dir;
    write_epochs_index(dir);
    rewrite_first(dir, history::kEpochsDbName, [](const std::string& value) {
      std::string changed = value;
      changed.replace(0, 1, 1, '\x07');  // epoch 1's opening count
      return changed;
    });
    std::unique_ptr<HistoryStore> store = open_history(dir);
    CHECK(store->balance_at("alice", "gold", 1).code() == ErrorCode::corrupt);
    CHECK(balance_ok(*store, "bob", "gold", 2) == bal(1, 0));
    CHECK(all_entries_code(*store, "alice", "gold") == ErrorCode::corrupt);
  }
}

TEST_CASE("an index of an older format is corrupt, naming its format, for the writer and readers") {
  // Format 1's position record had 48 bytes, formats 2 and 3 as many as now.
  for (const auto& [format, position_bytes] :
       {std::pair{1, 48}, std::pair{2, 72}, std::pair{3, 72}}) {
    CAPTURE(format);
    TempDir dir;
    write_small_index(dir);
    rewrite_first(dir, history::kMetaDbName, [&](const std::string& value) {
      std::string older = value.substr(0, static_cast<std::size_t>(position_bytes));
      older[4] = static_cast<char>(format);
      return older;
    });
    Result<std::unique_ptr<HistoryStore>> writer =
        HistoryStore::open(dir.sub("history"), small_options());
    CHECK(writer.code() == ErrorCode::corrupt);
    CHECK(writer.status().to_string().find("format " + std::to_string(format)) !=
          std::string::npos);
    HistoryStoreOptions read_only = small_options();
    read_only.read_only = true;
    CHECK(HistoryStore::open(dir.sub("history"), read_only).code() == ErrorCode::corrupt);
  }
}

// ---------------------------------------------------------------- read-only

// ---------------------------------------------------------------- chains

// Forty events over six pairs (acquires, transfers, consumes that the
// balances allow), so that each pair changes several times, in several
// epochs when they are short. The same every time.
void feed_chain_workload(Feed& feed, const State& state) {
  const std::string subjects[] = {"alice", "bob", "carol"};
  const std::string items[] = {"gold", "silver"};
  std::mt19937_64 rng(11);
  for (std::uint64_t step = 0; step < 40; step++) {
    const std::size_t from = rng() % 3;
    const std::string& item = items[rng() % 2];
    const auto qty = static_cast<std::int64_t>(rng() % 5) + 1;
    const std::uint64_t choice = rng() % 3;
    const bool covered = state.balance(subjects[from], item, kStoredOnly).available >= qty;
    if (choice == 1 && covered) {
      const std::string& to = subjects[(from + 1 + rng() % 2) % 3];
      REQUIRE_OK(feed.one(key_of(step), transfer_op(subjects[from], to, item, qty)));
    } else if (choice == 2 && covered) {
      REQUIRE_OK(feed.one(key_of(step), consume_op(subjects[from], item, qty)));
    } else {
      REQUIRE_OK(feed.one(key_of(step), acquire_op(subjects[from], item, qty + 4)));
    }
  }
}

// What the damaged-index checks compare with: every non-zero balance after
// each seq, by a State replay of the same workload, and the pairs' names.
struct ChainFixture {
  std::vector<std::vector<Listed>> at_seq;  // [seq]
  std::map<std::uint64_t, std::pair<std::string, std::string>> pairs;  // by id
};

ChainFixture write_chain_index(const TempDir& dir, const Indexing& indexing) {
  {
    Indexed indexed(dir, indexing.options, indexing.flush_each);
    auto& [store, state, feed] = indexed;
    feed_chain_workload(feed, state);
    REQUIRE_OK(store->flush());
    feed.on_applied = nullptr;
    REQUIRE_OK(store->check_chains());  // a whole index passes
  }
  ChainFixture fixture;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  fixture.at_seq.emplace_back();
  feed.on_applied = [&](const log::Event&) {
    fixture.at_seq.push_back(proj::all_balances(state, kStoredOnly));
  };
  feed_chain_workload(feed, state);
  feed.on_applied = nullptr;
  for (const auto& [key, value] : records_of(dir, history::kPairsDbName)) {
    const std::size_t nul = key.find('\0');
    fixture.pairs[u64_at(value, 0, false)] = {key.substr(0, nul), key.substr(nul + 1)};
  }
  return fixture;
}

Balance expected_at(const ChainFixture& fixture, const std::pair<std::string, std::string>& pair,
                    std::uint64_t seq) {
  for (const Listed& listed : fixture.at_seq[seq]) {
    if (listed.subject == pair.first && listed.item == pair.second) return listed.balance;
  }
  return Balance{};
}

// One record removed from "entries" or "openings" (deleted, or moved under
// its key with one bit flipped, as a damaged page would): the pair it
// belongs to, from which seq on it is lost, a seq where a read of the pair
// must find that out, and whether it is beyond what the chains can show (a
// lost last change of a pair in the newest epoch).
struct LostRecord {
  std::uint64_t pair_id = 0;
  std::uint64_t seq = 0;
  std::uint64_t seq_found = 0;
  bool past_chains = false;
};

// Every read of the damaged index answers what the log says, or corrupt;
// the reads of the lost record's pair at seq_found are corrupt unless it is
// past the chains (then the reads from its seq on may answer the balance
// before it: only verify's comparison with the log sees that).
void check_reads_of_damaged(const HistoryStore& store, const ChainFixture& fixture,
                            const LostRecord& lost) {
  for (std::uint64_t seq = 0; seq < fixture.at_seq.size(); seq++) {
    CAPTURE(seq);
    const bool unseen = lost.past_chains && seq >= lost.seq;
    for (const auto& [id, pair] : fixture.pairs) {
      CAPTURE(pair.first);
      CAPTURE(pair.second);
      Result<Balance> read = store.balance_at(pair.first, pair.second, seq);
      if (read.ok()) {
        if (!(unseen && id == lost.pair_id)) CHECK(*read == expected_at(fixture, pair, seq));
      } else {
        CHECK(read.code() == ErrorCode::corrupt);
      }
      if (id == lost.pair_id && seq == lost.seq_found && !lost.past_chains) CHECK(!read.ok());
    }
    std::vector<Listed> all;
    const Status whole = store.for_each_at(
        seq, [&](std::string_view subject, std::string_view item, Balance balance) {
          all.push_back({std::string(subject), std::string(item), balance});
        });
    if (whole.ok()) {
      if (!unseen) CHECK(all == fixture.at_seq[seq]);
    } else {
      CHECK(whole.code() == ErrorCode::corrupt);
    }
    if (seq == lost.seq_found && !lost.past_chains) CHECK(!whole.ok());
    const std::string& subject = fixture.pairs.at(lost.pair_id).first;
    const Status listed = store.list_at(subject, seq, [](std::string_view, Balance) {});
    CHECK((listed.ok() || listed.code() == ErrorCode::corrupt));
    if (seq == lost.seq_found && !lost.past_chains) CHECK(!listed.ok());
  }
  const auto& [subject, item] = fixture.pairs.at(lost.pair_id);
  if (!lost.past_chains) CHECK(all_entries_code(store, subject, item) == ErrorCode::corrupt);
}

// Removes one record from `db` of a copy of `source`'s index: deleted when
// flip_byte is negative, else moved under its key with bit 0x01 (or 0x80
// at byte 0, an epoch's top bit) of that byte flipped. False when the
// flipped key is taken, and nothing changed.
bool remove_record(const TempDir& source, const TempDir& copy, const char* db,
                   const std::string& key, int flip_byte) {
  std::filesystem::copy(source.sub("history"), copy.sub("history"));
  bool removed = false;
  edit_db(copy, db, [&](MDB_txn* txn, MDB_dbi dbi) {
    std::string key_bytes = key;
    MDB_val key_val{key_bytes.size(), key_bytes.data()};
    MDB_val value{};
    REQUIRE(mdb_get(txn, dbi, &key_val, &value) == 0);
    std::string value_bytes(static_cast<const char*>(value.mv_data), value.mv_size);
    if (flip_byte >= 0) {
      std::string moved = key;
      moved[flip_byte] = static_cast<char>(moved[flip_byte] ^ (flip_byte == 0 ? 0x80 : 0x01));
      MDB_val moved_val{moved.size(), moved.data()};
      MDB_val value_val{value_bytes.size(), value_bytes.data()};
      const int rc = mdb_put(txn, dbi, &moved_val, &value_val, MDB_NOOVERWRITE);
      if (rc == MDB_KEYEXIST) return;
      REQUIRE(rc == 0);
    }
    const int deleted = mdb_del(txn, dbi, &key_val, nullptr);
    REQUIRE_MESSAGE(deleted == 0, mdb_strerror(deleted));
    removed = true;
  });
  return removed;
}

TEST_CASE("a lost entry is corrupt for the reads that pass it, and for check_chains") {
  // Deleted; moved to another seq, pair or epoch (a flipped key bit).
  const int flips[] = {-1, history::kEntryKeyBytes - 1, 15, 0};
  for (const Indexing& indexing : indexings()) {
    CAPTURE(std::string(indexing.name));
    TempDir dir;
    const ChainFixture fixture = write_chain_index(dir, indexing);
    const auto records = records_of(dir, history::kEntriesDbName);
    std::uint64_t newest_epoch = 0;
    for (const auto& [key, value] : records_of(dir, history::kEpochsDbName)) {
      newest_epoch = std::max(newest_epoch, u64_at(key, 0, true));
    }
    int trials = 0;
    for (std::size_t index = 0; index < records.size(); index++) {
      const std::string& key = records[index].first;
      const std::uint64_t seq = u64_at(key, 16, true);
      LostRecord lost{u64_at(key, 8, true), seq, seq, false};
      const bool last_of_pair = index + 1 == records.size() ||
                                records[index + 1].first.compare(0, 16, key, 0, 16) != 0;
      lost.past_chains = last_of_pair && u64_at(key, 0, true) == newest_epoch;
      for (const int flip : flips) {
        CAPTURE(lost.pair_id);
        CAPTURE(lost.seq);
        CAPTURE(flip);
        TempDir copy;
        if (!remove_record(dir, copy, history::kEntriesDbName, key, flip)) continue;
        trials++;
        std::unique_ptr<HistoryStore> store = open_history(copy);
        check_reads_of_damaged(*store, fixture, lost);
        // A lost last change of the newest epoch too: the position counts
        // the newest epoch's entries.
        CHECK(store->check_chains().code() == ErrorCode::corrupt);
      }
    }
    CHECK(trials > 100);
  }
}

TEST_CASE("a lost or damaged time record is corrupt for the times that read it and check_chains") {
  // Two events a time, flushed one by one: a time's record is rewritten.
  TempDir dir;
  {
    Indexed indexed(dir, small_options(), true);
    auto& [store, state, feed] = indexed;
    for (std::uint64_t step = 0; step < 12; step++) {
      feed.now_ns = kStartNs + static_cast<std::int64_t>(10 * (step / 2));
      REQUIRE_OK(feed.one(key_of(step), acquire_op("alice", "gold", 1)));
    }
    REQUIRE_OK(store->check_chains());
    CHECK(seq_at_time_ok(*store, kStartNs + 25) == 6);
  }
  const auto records = records_of(dir, history::kTimesDbName);
  REQUIRE(records.size() == 6);
  for (const auto& [key, value] : records) {
    const auto time_ns = static_cast<std::int64_t>(u64_at(key, 0, true) ^ history::kTimeBias);
    CAPTURE(time_ns);
    // Deleted; moved to another time (a flipped key bit).
    for (const int flip : {-1, static_cast<int>(history::kTimeKeyBytes) - 1, 0}) {
      CAPTURE(flip);
      TempDir copy;
      if (!remove_record(dir, copy, history::kTimesDbName, key, flip)) continue;
      std::unique_ptr<HistoryStore> store = open_history(copy);
      CHECK(store->seq_at_time(time_ns).code() == ErrorCode::corrupt);
      CHECK(store->check_chains().code() == ErrorCode::corrupt);
    }
    // One bit of its seqs flipped.
    for (std::size_t byte = 0; byte < value.size(); byte++) {
      CAPTURE(byte);
      TempDir copy;
      std::filesystem::copy(dir.sub("history"), copy.sub("history"));
      edit_db(copy, history::kTimesDbName, [&](MDB_txn* txn, MDB_dbi dbi) {
        std::string key_bytes = key;
        std::string damaged = value;
        damaged[byte] = static_cast<char>(damaged[byte] ^ 0x01);
        MDB_val key_val{key_bytes.size(), key_bytes.data()};
        MDB_val damaged_val{damaged.size(), damaged.data()};
        REQUIRE(mdb_put(txn, dbi, &key_val, &damaged_val, 0) == 0);
      });
      std::unique_ptr<HistoryStore> store = open_history(copy);
      CHECK(store->seq_at_time(time_ns).code() == ErrorCode::corrupt);
      CHECK(store->check_chains().code() == ErrorCode::corrupt);
    }
  }
}

TEST_CASE("in an index of one epoch, a pair whose entries are all lost is corrupt, not zero") {
  // A damaged branch page can hide every entry of some pairs at once, with
  // nothing after them to break a chain. In the only epoch, no pair may
  // lack entries: it got its id with its first.
  TempDir dir;
  const ChainFixture fixture = write_chain_index(dir, indexings()[0]);
  const auto& [lost_id, pair] = *fixture.pairs.begin();
  edit_db(dir, history::kEntriesDbName, [&](MDB_txn* txn, MDB_dbi dbi) {
    MDB_cursor* cursor = nullptr;
    REQUIRE(mdb_cursor_open(txn, dbi, &cursor) == 0);
    MDB_val key{};
    MDB_val value{};
    int deleted = 0;
    for (int rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
      const std::string key_bytes(static_cast<const char*>(key.mv_data), key.mv_size);
      if (u64_at(key_bytes, 8, true) != lost_id) continue;
      REQUIRE(mdb_cursor_del(cursor, 0) == 0);
      deleted++;
    }
    mdb_cursor_close(cursor);
    REQUIRE(deleted > 0);
  });
  std::unique_ptr<HistoryStore> store = open_history(dir, indexings()[0].options);
  const std::uint64_t last_seq = fixture.at_seq.size() - 1;
  for (std::uint64_t seq = 1; seq <= last_seq; seq++) {
    CAPTURE(seq);
    CHECK(store->balance_at(pair.first, pair.second, seq).code() == ErrorCode::corrupt);
    CHECK(store->list_at(pair.first, seq, [](std::string_view, Balance) {}).code() ==
          ErrorCode::corrupt);
  }
  CHECK(all_entries_code(*store, pair.first, pair.second) == ErrorCode::corrupt);
}

TEST_CASE("a lost opening balance is corrupt for the reads that pass it, and for check_chains") {
  for (const Indexing& indexing : indexings()) {
    CAPTURE(std::string(indexing.name));
    if (!indexing.flush_each) continue;  // one epoch has no openings
    TempDir dir;
    const ChainFixture fixture = write_chain_index(dir, indexing);
    const auto entries = records_of(dir, history::kEntriesDbName);
    const auto openings = records_of(dir, history::kOpeningsDbName);
    REQUIRE(openings.size() > 10);
    std::uint64_t newest_epoch = 0;
    for (const auto& [key, value] : records_of(dir, history::kEpochsDbName)) {
      newest_epoch = std::max(newest_epoch, u64_at(key, 0, true));
    }
    int writes_checked = 0;
    for (const auto& [key, value] : openings) {
      // The epoch's first seq; the last of the epoch before reads the
      // opening to check that the pair's balance carries on.
      const std::uint64_t epoch = u64_at(key, 0, true);
      // Never past the chains: the newest epoch's opening of a pair with no
      // entry after it is checked against the epoch before.
      const LostRecord lost{u64_at(key, 8, true), epoch, epoch - 1, false};
      CAPTURE(lost.pair_id);
      CAPTURE(lost.seq);
      TempDir copy;
      REQUIRE(remove_record(dir, copy, history::kOpeningsDbName, key, -1));
      {
        std::unique_ptr<HistoryStore> store = open_history(copy);
        check_reads_of_damaged(*store, fixture, lost);
        // The epoch before ends with a balance nothing carries on.
        CHECK(store->check_chains().code() == ErrorCode::corrupt);
      }
      const bool changes_after = std::any_of(entries.begin(), entries.end(), [&](const auto& e) {
        return e.first.compare(0, 16, key) == 0;
      });
      if (epoch != newest_epoch || changes_after) continue;
      // The writer reads the pair's balance as it appends a change of it:
      // corrupt too, not a change from zero.
      Indexed indexed(copy, indexing.options);
      auto& [store, state, feed] = indexed;
      feed.on_applied = nullptr;
      feed_chain_workload(feed, state);
      Status appended;
      feed.on_applied = [&](const log::Event& event) {
        appended = store->append(event, chain_of(event.seq));
      };
      const auto& [subject, item] = fixture.pairs.at(lost.pair_id);
      REQUIRE_OK(feed.one("after", acquire_op(subject, item, 1)));
      feed.on_applied = nullptr;
      const Status written = appended.ok() ? store->flush() : appended;
      CHECK_MESSAGE(written.code() == ErrorCode::corrupt, written.to_string());
      writes_checked++;
    }
    CHECK(writes_checked > 0);
  }
}

TEST_CASE("check_chains: a pair id named twice, and entries outside every epoch, are corrupt") {
  {
    TempDir dir;
    write_small_index(dir);
    // alice's gold (id 1) given bob's id 2, with a check that verifies.
    const std::string key = records_of(dir, history::kPairsDbName).front().first;
    REQUIRE(key == std::string("alice\0gold", 10));
    std::string record = key + std::string("\x02\0\0\0\0\0\0\0", 8);
    const auto check = static_cast<std::uint32_t>(XXH3_64bits(record.data(), record.size()));
    record = record.substr(key.size());
    for (int byte = 0; byte < 4; byte++) record.push_back(static_cast<char>(check >> (8 * byte)));
    rewrite_first(dir, history::kPairsDbName, [&](const std::string&) { return record; });
    std::unique_ptr<HistoryStore> store = open_history(dir);
    const Status chains = store->check_chains();
    CHECK(chains.code() == ErrorCode::corrupt);
    CHECK(chains.message().find("two pairs have id 2") != std::string::npos);
  }
  {
    TempDir dir;
    TempDir copy;
    write_small_index(dir);
    // bob's only entry, the last change of the newest epoch, moved under
    // epoch 1 with its top bit set: an epoch there is no record of. No
    // chain shows it; the count of entries does.
    const std::string key = records_of(dir, history::kEntriesDbName).back().first;
    REQUIRE(remove_record(dir, copy, history::kEntriesDbName, key, 0));
    std::unique_ptr<HistoryStore> store = open_history(copy);
    const Status chains = store->check_chains();
    CAPTURE(chains.to_string());
    CHECK(chains.code() == ErrorCode::corrupt);
    CHECK(chains.message().find("the newest epoch is 1 with 2 entries") != std::string::npos);
  }
}

TEST_CASE("a damaged pair name is corrupt wherever its record is read, and for check_chains") {
  TempDir dir;
  TempDir copy;
  write_small_index(dir);
  // "alice\0gold" moved to "amice\0gold" (a flipped bit), its record unchanged.
  REQUIRE(remove_record(dir, copy, history::kPairsDbName, std::string("alice\0gold", 10), 1));
  std::unique_ptr<HistoryStore> store = open_history(copy);
  const auto visit = [](std::string_view, std::string_view, Balance) {};
  const auto list_visit = [](std::string_view, Balance) {};
  CHECK(store->for_each_at(2, visit).code() == ErrorCode::corrupt);
  CHECK(store->list_at("amice", 2, list_visit).code() == ErrorCode::corrupt);
  const Status chains = store->check_chains();
  CHECK(chains.code() == ErrorCode::corrupt);
  CHECK(chains.message().find("does not verify") != std::string::npos);
  // By the lost name: its hashes are still there, so not a zero.
  const Result<Balance> lost = store->balance_at("alice", "gold", 2);
  CHECK(lost.code() == ErrorCode::corrupt);
  CHECK(lost.status().message().find("its name is damaged") != std::string::npos);
  // The subject's walk misses the pair its hashes count.
  const Status listed = store->list_at("alice", 2, list_visit);
  CHECK(listed.code() == ErrorCode::corrupt);
  CHECK(listed.message().find("a name is damaged") != std::string::npos);
  // The other pairs read on; a name that never was is zero.
  CHECK(balance_ok(*store, "bob", "gold", 3) == bal(1, 0));
  CHECK(balance_ok(*store, "alice", "copper", 3) == bal(0, 0));
}

TEST_CASE("a damaged or lost hashes record is corrupt for the walks that count it") {
  for (const bool flipped : {false, true}) {
    CAPTURE(flipped);
    TempDir dir;
    TempDir copy;
    write_small_index(dir);
    // alice's gold's hashes record, deleted or moved by a flipped bit in
    // its first byte (the subject's hash: out of alice's range).
    const std::string key = [&] {
      for (const auto& [hash_key, value] : records_of(dir, history::kHashesDbName)) {
        if (u64_at(hash_key, 16, true) == 1) return hash_key;
      }
      return std::string();
    }();
    REQUIRE(key.size() == history::kHashKeyBytes);
    REQUIRE(remove_record(dir, copy, history::kHashesDbName, key, flipped ? 0 : -1));
    std::unique_ptr<HistoryStore> store = open_history(copy);
    // By name the pair reads as it was.
    CHECK(balance_ok(*store, "alice", "gold", 2) != bal(0, 0));
    const Status listed = store->list_at("alice", 2, [](std::string_view, Balance) {});
    CHECK(listed.code() == ErrorCode::corrupt);
    const Status chains = store->check_chains();
    CHECK(chains.code() == ErrorCode::corrupt);
    CHECK(chains.message().find("pair 1 has no hashes record") != std::string::npos);
  }
}

TEST_CASE("read_only: a missing index is not_found and creates nothing; a written one reads") {
  TempDir dir;
  HistoryStoreOptions options = small_options();
  options.read_only = true;
  CHECK(HistoryStore::open(dir.sub("history"), options).code() == ErrorCode::not_found);
  CHECK_FALSE(std::filesystem::exists(dir.sub("history")));
  std::filesystem::create_directory(dir.sub("history"));
  CHECK(HistoryStore::open(dir.sub("history"), options).code() == ErrorCode::not_found);
  CHECK(std::filesystem::is_empty(dir.sub("history")));

  write_small_index(dir);
  Result<std::unique_ptr<HistoryStore>> opened = HistoryStore::open(dir.sub("history"), options);
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  HistoryStore& store = **opened;
  CHECK(position_ok(store).seq == 3);
  CHECK(store.appended_position().seq == 3);
  CHECK(balance_ok(store, "alice", "gold", 2) == bal(11, 0));
  CHECK(list_at(store, "bob", 3) ==
        std::vector<std::pair<std::string, Balance>>{{"gold", bal(1, 0)}});
  const std::vector<log::Op> ops = {acquire_op("alice", "gold", 1)};
  log::Event event;
  event.seq = 4;
  event.key = "k4";
  event.timestamp_ns = kStartNs;
  event.ops = ops;
  CHECK(store.append(event, 4).code() == ErrorCode::invalid);
  CHECK(store.flush().code() == ErrorCode::invalid);
  CHECK(store.clear().code() == ErrorCode::invalid);
}

// ---------------------------------------------------------------- processes

// An index of 3000 acquires over 300 pairs, flushed: dozens of pages.
void write_many_pairs_index(const TempDir& dir) {
  Indexed indexed(dir);
  auto& [store, state, feed] = indexed;
  for (std::uint64_t step = 0; step < 3000; step++) {
    REQUIRE_OK(feed.one(key_of(step), acquire_op(key_of(step % 300), "gold", 1)));
  }
  REQUIRE_OK(store->flush());
}

TEST_CASE("a writer that meets a page LMDB asserts on moves its index aside first") {
  // LMDB asserts on some damaged pages (where it is built with assertions)
  // and the process ends; a writer moves its store aside before, so that
  // the next open begins a new one instead of ending the same way. Zero one
  // page after another until a child that opens the index for writing and
  // walks it ends with SIGABRT.
  TempDir dir;
  write_many_pairs_index(dir);
  const std::string path = dir.sub("history");
  const std::string data_path = path + "/data.mdb";
  const std::string bytes = testing::read_file(data_path);
  constexpr std::size_t kPage = 4096;
  const std::string said = dir.sub("stderr");
  for (std::size_t page = 2; page < bytes.size() / kPage; page++) {
    std::string damaged = bytes;
    std::fill_n(damaged.begin() + static_cast<std::ptrdiff_t>(page * kPage), kPage, '\0');
    testing::write_file(data_path, damaged);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // LMDB's abort() ends the child as it would a server: not in the test
      // framework's handler. Its note goes to a file (stderr unbuffered).
      std::signal(SIGABRT, SIG_DFL);
      const int fd = ::open(said.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || ::dup2(fd, STDERR_FILENO) < 0) ::_exit(99);
      auto store = HistoryStore::open(path, small_options());
      if (store) (void)(*store)->check_chains();
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    if (WIFEXITED(status)) {
      REQUIRE(WEXITSTATUS(status) == 0);
      continue;
    }
    CAPTURE(page);
    REQUIRE(WTERMSIG(status) == SIGABRT);
    const std::string message = testing::read_file(said);
    CHECK(message.find("tally: " + path + " is damaged (LMDB: ") != std::string::npos);
    CHECK(message.find("moved it to " + path + ".damaged") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK(std::filesystem::exists(path + ".damaged/data.mdb"));
    std::unique_ptr<HistoryStore> renewed = open_history(dir);
    CHECK(position_ok(*renewed).seq == 0);
    return;
  }
  MESSAGE("no page made LMDB assert: it is built without assertions");
}

TEST_CASE("with every page checked at open, damage to any page is corrupt or read, never a crash") {
  TempDir dir;
  write_many_pairs_index(dir);
  const std::string path = dir.sub("history");
  const std::string data_path = path + "/data.mdb";
  const std::string bytes = testing::read_file(data_path);
  REQUIRE(bytes.size() >= 8 * 4096);
  HistoryStoreOptions options = small_options();
  options.read_only = true;
  options.check_all_pages = true;
  // What opens reads whole (check_chains reads every record), or is corrupt.
  std::size_t found_at_open = 0;
  testing::for_each_page_damage(bytes, [&](std::size_t page, const std::string& damaged) {
    CAPTURE(page);
    testing::write_file(data_path, damaged);
    auto store = HistoryStore::open(path, options);
    if (!store.ok()) {
      CHECK(store.code() == ErrorCode::corrupt);
      found_at_open++;
      return;
    }
    const Status read = (*store)->check_chains();
    CHECK((read.ok() || read.code() == ErrorCode::corrupt));
  });
  CHECK(found_at_open > 0);
}

TEST_CASE("check_pages finds in an open index the damage a check at open finds") {
  TempDir dir;
  write_many_pairs_index(dir);
  const std::string path = dir.sub("history");
  const std::string data_path = path + "/data.mdb";
  const std::string bytes = testing::read_file(data_path);
  HistoryStoreOptions unchecked = small_options();
  unchecked.read_only = true;
  HistoryStoreOptions checked = unchecked;
  checked.check_all_pages = true;
  std::size_t found_later = 0;
  testing::for_each_page_damage(bytes, [&](std::size_t page, const std::string& damaged) {
    CAPTURE(page);
    testing::write_file(data_path, damaged);
    // One open of the environment at a time in a process.
    const ErrorCode at_open = HistoryStore::open(path, checked).code();
    auto store = HistoryStore::open(path, unchecked);
    const ErrorCode later = store ? (*store)->check_pages().code() : store.code();
    CHECK(later == at_open);
    if (store && later != ErrorCode::ok) found_later++;
  });
  CHECK(found_later > 0);
}

TEST_CASE("check_pages stops reading once cancelled") {
  TempDir dir;
  write_many_pairs_index(dir);
  HistoryStoreOptions options = small_options();
  options.read_only = true;
  auto store = HistoryStore::open(dir.sub("history"), options);
  REQUIRE_OK(store.status());
  std::atomic<bool> cancelled{false};
  REQUIRE_OK((*store)->check_pages(&cancelled));
  cancelled = true;
  CHECK((*store)->check_pages(&cancelled).code() == ErrorCode::closed);
}

TEST_CASE("a second writer's flush is locked, and the index keeps the first's") {
  TempDir dir;
  std::unique_ptr<HistoryStore> store = open_history(dir);
  const std::vector<log::Op> ops = {acquire_op("alice", "gold", 1)};
  log::Event event;
  event.seq = 1;
  event.key = "k1";
  event.timestamp_ns = kStartNs;
  event.ops = ops;
  REQUIRE_OK(store->append(event, 8));  // buffered when the other writes
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Another process writes the same directory, through its own
    // environment (the parent's may not be used after fork).
    int code = 1;
    Result<std::unique_ptr<HistoryStore>> other =
        HistoryStore::open(dir.sub("history"), small_options());
    if (other.ok() && (*other)->append(event, 7).ok() && (*other)->flush().ok()) code = 0;
    _exit(code);
  }
  int wait_status = 0;
  REQUIRE(waitpid(child, &wait_status, 0) == child);
  REQUIRE(WIFEXITED(wait_status));
  REQUIRE(WEXITSTATUS(wait_status) == 0);
  CHECK(store->flush().code() == ErrorCode::locked);
  CHECK(position_ok(*store) == HistoryPosition{1, 7, kStartNs});
  CHECK(balance_ok(*store, "alice", "gold", 1) == bal(1, 0));
  // An append that reads the index notices too.
  const std::vector<log::Op> more = {acquire_op("bob", "gold", 1)};
  event.seq = 2;
  event.key = "k2";
  event.ops = more;
  CHECK(store->append(event, 9).code() == ErrorCode::locked);
}

TEST_CASE("a reader adopts the map another process grew") {
  TempDir dir;
  write_small_index(dir);
  HistoryStoreOptions options = small_options();
  options.read_only = true;
  Result<std::unique_ptr<HistoryStore>> opened = HistoryStore::open(dir.sub("history"), options);
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  HistoryStore& reader = **opened;
  CHECK(position_ok(reader).seq == 3);
  constexpr std::uint64_t kEvents = 3000;
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int code = 1;
    Result<std::unique_ptr<HistoryStore>> writer =
        HistoryStore::open(dir.sub("history"), small_options());
    if (writer.ok()) {
      code = 0;
      // Long names, so the map grows well past the reader's.
      for (std::uint64_t seq = 4; seq <= 3 + kEvents && code == 0; seq++) {
        std::string subject(200, 's');
        subject += std::to_string(seq);
        const std::vector<log::Op> ops = {acquire_op(subject, "gold", 1)};
        log::Event event;
        event.seq = seq;
        event.timestamp_ns = kStartNs + static_cast<std::int64_t>(seq);
        event.ops = ops;
        if (!(*writer)->append(event, seq).ok()) code = 2;
      }
      if (code == 0 && !(*writer)->flush().ok()) code = 3;
    }
    _exit(code);
  }
  int wait_status = 0;
  REQUIRE(waitpid(child, &wait_status, 0) == child);
  REQUIRE(WIFEXITED(wait_status));
  REQUIRE(WEXITSTATUS(wait_status) == 0);
  CHECK(std::filesystem::file_size(dir.sub("history") + "/data.mdb") > 4 * 64 * 1024);
  CHECK(position_ok(reader).seq == 3 + kEvents);
  std::string last(200, 's');
  last += std::to_string(3 + kEvents);
  CHECK(balance_ok(reader, last, "gold", 3 + kEvents) == bal(1, 0));
  CHECK(all_at(reader, 3 + kEvents).size() == 2 + kEvents);
}

// ---------------------------------------------------------------- threads

// Subject j's balance after seq, when event k acquires 1 for subject k % n.
std::int64_t expected_count(std::uint64_t subject, std::uint64_t seq, std::uint64_t subjects) {
  if (subject == 0) return static_cast<std::int64_t>(seq / subjects);
  if (seq < subject) return 0;
  return static_cast<std::int64_t>((seq - subject) / subjects + 1);
}

TEST_CASE("readers on other threads see whole flushes while the writer appends and grows the map") {
  TempDir dir;
  std::unique_ptr<HistoryStore> store = open_history(dir);  // 64 KiB: grows under the readers
  constexpr std::uint64_t kSubjects = 100;
  constexpr std::uint64_t kEvents = 20'000;
  std::vector<std::string> names;
  for (std::uint64_t subject = 0; subject < kSubjects; subject++) {
    names.push_back("subject-" + std::to_string(subject));
  }
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> failures{0};
  const auto reader = [&](std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    // Each pass reads once; the writer's end stops the loop.
    while (!done.load()) {
      Result<HistoryPosition> position = store->position();
      if (!position) {
        failures++;
        continue;
      }
      const std::uint64_t subject = rng() % kSubjects;
      Result<Balance> balance = store->balance_at(names[subject], "gold", position->seq);
      if (!balance || balance->available != expected_count(subject, position->seq, kSubjects)) {
        failures++;
      }
      if (rng() % 16 == 0) {
        std::int64_t total = 0;
        const Status walked = store->for_each_at(
            position->seq,
            [&](std::string_view, std::string_view, Balance b) { total += b.available; });
        if (!walked.ok() || total != static_cast<std::int64_t>(position->seq)) failures++;
      }
      reads++;
    }
  };
  std::thread first(reader, 1);
  std::thread second(reader, 2);
  State state(StateOptions{0});
  Feed feed({&state});
  index_into(&feed, store.get());
  for (std::uint64_t seq = 1; seq <= kEvents; seq++) {
    feed.now_ns += 1000;
    REQUIRE_OK(feed.one(key_of(seq), acquire_op(names[seq % kSubjects], "gold", 1)));
    if (seq % 250 == 0) REQUIRE_OK(store->flush());
  }
  done = true;
  first.join();
  second.join();
  feed.on_applied = nullptr;
  CHECK(failures.load() == 0);
  CHECK(reads.load() > 0);
  CHECK(position_ok(*store).seq == kEvents);
  CHECK(std::filesystem::file_size(dir.sub("history") + "/data.mdb") > 64 * 1024);
}

}  // namespace
}  // namespace tally::snap
