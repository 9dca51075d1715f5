// EventFeed against a real Ledger with small segments: reads cover every
// committed event once, in order, across rotations; poll() resumes from its
// cache; waits end on a commit, a deadline, cancel() and stop(). No timed
// assertions: waits are awaited, never measured.
#include "engine/feed.h"

#include <doctest.h>

#include <filesystem>
#include <future>
#include <vector>

#include "engine/replay.h"
#include "log/event.h"
#include "tests/testing.h"

namespace tally {
namespace {

constexpr auto kFarAway = std::chrono::hours(1);

std::string key_of(int index) {
  std::string key = "k";
  key += std::to_string(index);
  return key;
}

// A ledger whose segments hold a few dozen events each.
struct Fixture {
  testing::TempDir dir;
  std::unique_ptr<Ledger> ledger;

  Fixture() {
    LedgerOptions options;
    options.data_dir = dir.sub("data");
    options.durability = Durability::none;
    options.segment_size_bytes = log::kSegmentSizeBytesMin;
    auto opened = Ledger::open(options);
    REQUIRE(opened.ok());
    ledger = std::move(*opened);
  }
  ~Fixture() { CHECK(ledger->close().ok()); }

  // Acquires keyed k<first>..k<first+count-1>, each with 1 KiB of metadata.
  void append(int first, int count) {
    const Metadata meta{std::string(1000, 'r'), {}, {}};
    for (int index = first; index < first + count; index++) {
      auto receipt = ledger->acquire(key_of(index), "alice", "gold", 1, meta);
      REQUIRE(receipt.ok());
      REQUIRE(receipt->seq == static_cast<std::uint64_t>(index) + 1);
    }
  }

  std::size_t segments() const {
    std::size_t count = 0;
    for (const auto& entry : std::filesystem::directory_iterator(log_dir(ledger->data_dir()))) {
      count += entry.path().extension() == ".seg" ? 1 : 0;
    }
    return count;
  }
};

// Collects what a read visits, checking each payload decodes to its seq.
struct Collector {
  log::EventDecoder decoder;
  std::vector<std::uint64_t> seqs;
  std::vector<std::string> keys;

  EventFeed::Visit visit() {
    return [this](const log::Record& record) {
      log::Event event;
      TALLY_TRY(decoder.decode(record.payload, &event));
      CHECK(event.seq == record.seq);
      seqs.push_back(record.seq);
      keys.emplace_back(event.key);
      return Status();
    };
  }
};

std::vector<std::uint64_t> range(std::uint64_t first, std::uint64_t last) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t seq = first; seq <= last; seq++) out.push_back(seq);
  return out;
}

TEST_CASE("feed: a cursor reads every committed event once, in order, across rotations") {
  Fixture fx;
  fx.append(0, 300);
  CHECK(fx.segments() >= 3);
  EventFeed feed(fx.ledger.get());
  Collector seen;
  FeedCursor cursor;
  FeedLimits limits;
  limits.events_max = 7;
  for (;;) {
    auto count = feed.read(&cursor, limits, seen.visit());
    REQUIRE(count.ok());
    if (*count == 0) break;
    CHECK(*count <= 7);
  }
  CHECK(seen.seqs == range(1, 300));
  CHECK(seen.keys[41] == key_of(41));
  CHECK(cursor.next_seq == 301);

  // Appends after the reader caught up; one byte per read: one event each.
  fx.append(300, 80);
  limits.bytes_max = 1;
  for (;;) {
    auto count = feed.read(&cursor, limits, seen.visit());
    REQUIRE(count.ok());
    if (*count == 0) break;
    CHECK(*count == 1);
  }
  CHECK(seen.seqs == range(1, 380));
  // Only the first read scanned a segment; every later one resumed.
  CHECK(feed.stats().tails_opened == 1);
}

TEST_CASE("feed: a read's events stay within its bytes, unless one alone is larger") {
  Fixture fx;
  fx.append(0, 100);
  EventFeed feed(fx.ledger.get());
  std::size_t event_bytes = 0;  // the payload of every event here, within 8 bytes
  {
    FeedCursor first;
    const FeedLimits one{1, kFeedBytesMaxDefault};
    REQUIRE(feed.read(&first, one, [&](const log::Record& record) {
                  event_bytes = record.payload.size();
                  return Status();
                }).ok());
  }
  REQUIRE(event_bytes > 16);
  // Room for two and a half: two each time, the third the next read's.
  FeedLimits limits;
  limits.bytes_max = event_bytes * 5 / 2;
  FeedCursor cursor;
  std::vector<std::uint64_t> seqs;
  for (;;) {
    std::size_t bytes = 0;
    auto count = feed.read(&cursor, limits, [&](const log::Record& record) {
      seqs.push_back(record.seq);
      bytes += record.payload.size();
      return Status();
    });
    REQUIRE(count.ok());
    if (*count == 0) break;
    CHECK(*count == 2);
    CHECK(bytes <= limits.bytes_max);
  }
  CHECK(seqs == range(1, 100));
  // Less than one event: one each time, however large.
  limits.bytes_max = event_bytes / 2;
  FeedCursor again;
  auto count = feed.read(&again, limits, [](const log::Record&) { return Status(); });
  REQUIRE(count.ok());
  CHECK(*count == 1);
}

TEST_CASE("feed: poll resumes where the last answer ended, from its cache") {
  Fixture fx;
  fx.append(0, 200);
  EventFeed feed(fx.ledger.get());
  Collector seen;
  FeedLimits limits;
  limits.events_max = 50;
  std::uint64_t next_seq = 1;
  for (int page = 0; page < 4; page++) {
    auto count = feed.poll(&next_seq, limits, seen.visit());
    REQUIRE(count.ok());
    CHECK(*count == 50);
  }
  CHECK(next_seq == 201);
  CHECK(seen.seqs == range(1, 200));
  CHECK(feed.stats().tails_opened == 1);
  CHECK(feed.stats().tails_resumed == 3);

  // Nothing new: no tail at all, and the position stays.
  auto none = feed.poll(&next_seq, limits, seen.visit());
  REQUIRE(none.ok());
  CHECK(*none == 0);
  CHECK(next_seq == 201);
  // Two consumers at the same place share the cached position.
  std::uint64_t other = 101;
  REQUIRE(feed.poll(&other, limits, seen.visit()).ok());
  CHECK(other == 151);
  CHECK(feed.stats().tails_opened == 1);
  // A seq nobody ended at is opened (scanning its segment).
  std::uint64_t elsewhere = 77;
  REQUIRE(feed.poll(&elsewhere, limits, seen.visit()).ok());
  CHECK(elsewhere == 127);
  CHECK(feed.stats().tails_opened == 2);
}

TEST_CASE("feed: nothing past the committed seq; a visitor's error ends the read") {
  Fixture fx;
  EventFeed feed(fx.ledger.get());
  Collector seen;
  std::uint64_t next_seq = 1;
  auto empty = feed.poll(&next_seq, {}, seen.visit());
  REQUIRE(empty.ok());
  CHECK(*empty == 0);
  fx.append(0, 3);
  std::uint64_t ahead = 9;
  auto beyond = feed.poll(&ahead, {}, seen.visit());
  REQUIRE(beyond.ok());
  CHECK(*beyond == 0);
  CHECK(ahead == 9);
  CHECK(seen.seqs.empty());

  FeedCursor cursor;
  auto failed = feed.read(&cursor, {}, [](const log::Record&) { return Status(ErrorCode::busy, "no"); });
  CHECK(failed.code() == ErrorCode::busy);
  CHECK(cursor.next_seq == 1);
  REQUIRE(feed.read(&cursor, {}, seen.visit()).ok());
  CHECK(seen.seqs == range(1, 3));
}

TEST_CASE("feed: a damaged record or a visitor's error ends a read after the events before it") {
  Fixture fx;
  fx.append(0, 8);
  REQUIRE(fx.segments() == 1);
  EventFeed feed(fx.ledger.get());

  FeedCursor refused;
  Collector seen;
  auto until_refused = feed.read(&refused, {}, [&](const log::Record& record) {
    return record.seq == 3 ? Status(ErrorCode::busy, "no") : seen.visit()(record);
  });
  REQUIRE(until_refused.ok());
  CHECK(*until_refused == 2);
  CHECK(refused.next_seq == 3);

  // Flips a byte of the 5th event's metadata, the 5th run of 1000 r's.
  std::filesystem::path segment;
  for (const auto& entry : std::filesystem::directory_iterator(log_dir(fx.ledger->data_dir()))) {
    if (entry.path().extension() == ".seg") segment = entry.path();
  }
  std::string bytes = testing::read_file(segment);
  std::size_t at = 0;
  for (int run = 0; run < 5; run++) {
    at = bytes.find(std::string(1000, 'r'), run == 0 ? 0 : at + 1000);
  }
  REQUIRE(at != std::string::npos);
  bytes[at + 500] = 's';
  testing::write_file(segment, bytes);

  FeedCursor cursor;
  Collector before;
  auto first = feed.read(&cursor, {}, before.visit());
  REQUIRE(first.ok());
  CHECK(before.seqs == range(1, 4));
  CHECK(cursor.next_seq == 5);
  auto damaged = feed.read(&cursor, {}, before.visit());
  CHECK(damaged.code() == ErrorCode::corrupt);
  CHECK(cursor.next_seq == 5);
  std::uint64_t next_seq = 5;
  CHECK(feed.poll(&next_seq, {}, before.visit()).code() == ErrorCode::corrupt);
  CHECK(before.seqs == range(1, 4));
}

// A Ready that fulfils a promise, for waiting on it without timing.
struct Awaited {
  std::promise<std::uint64_t> promise;
  std::future<std::uint64_t> future = promise.get_future();
  EventFeed::Ready ready() {
    return [this](std::uint64_t committed) { promise.set_value(committed); };
  }
  bool done() { return future.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
};

TEST_CASE("feed: a wait ends on a commit, a deadline, cancel and stop") {
  Fixture fx;
  fx.append(0, 2);
  EventFeed feed(fx.ledger.get());
  const auto far = std::chrono::steady_clock::now() + kFarAway;

  Awaited commit;
  CHECK(feed.wait(2, far, commit.ready()) != 0);
  CHECK_FALSE(commit.done());  // nothing was committed, the deadline is an hour away
  fx.append(2, 1);
  CHECK(commit.future.get() == 3);

  Awaited already;
  CHECK(feed.wait(1, far, already.ready()) == 0);  // seq 2 is committed: at once
  CHECK(already.done());

  Awaited deadline;
  feed.wait(3, std::chrono::steady_clock::now() + std::chrono::milliseconds(20), deadline.ready());
  CHECK(deadline.future.get() == 3);

  Awaited cancelled;
  const EventFeed::WaiterId id = feed.wait(3, far, cancelled.ready());
  feed.cancel(id);
  CHECK(cancelled.done());
  feed.cancel(id);  // ran already: nothing

  Awaited stopped;
  feed.wait(3, far, stopped.ready());
  feed.stop();
  CHECK(stopped.done());
  Awaited after_stop;
  CHECK(feed.wait(3, far, after_stop.ready()) == 0);
  CHECK(after_stop.done());
}

TEST_CASE("feed: under async durability, an event is read once a sync covers it, not at its ack") {
  testing::TempDir dir;
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  options.durability = Durability::async;
  options.sync_interval_ms = 3'600'000;  // no periodic sync within the test: close() syncs
  options.history = false;
  options.snapshot_every_events = 0;
  options.snapshot_every_seconds = 0;
  auto opened = Ledger::open(options);
  REQUIRE(opened.ok());
  std::unique_ptr<Ledger> ledger = std::move(*opened);
  EventFeed feed(ledger.get());
  REQUIRE(ledger->acquire("k1", "alice", "gold", 1).ok());
  CHECK(ledger->committed_seq() == 1);
  CHECK(ledger->durable_seq() == 0);
  Collector seen;
  std::uint64_t next_seq = 1;
  auto before = feed.poll(&next_seq, {}, seen.visit());
  REQUIRE(before.ok());
  CHECK(*before == 0);
  Awaited synced;
  CHECK(feed.wait(0, std::chrono::steady_clock::now() + kFarAway, synced.ready()) != 0);
  CHECK_FALSE(synced.done());
  REQUIRE(ledger->close().ok());  // its last sync makes seq 1 durable
  CHECK(synced.future.get() == 1);
  auto after = feed.poll(&next_seq, {}, seen.visit());
  REQUIRE(after.ok());
  CHECK(seen.seqs == range(1, 1));
  feed.stop();
}

TEST_CASE("feed: deadlines under a millisecond away never make an open ledger look closed") {
  Fixture fx;
  fx.append(0, 1);
  EventFeed feed(fx.ledger.get());
  const auto far = std::chrono::steady_clock::now() + kFarAway;
  for (int trial = 0; trial < 400; trial++) {
    CAPTURE(trial);
    Awaited soon;
    const auto delay = std::chrono::nanoseconds(500 + (trial % 400) * 2500);  // 0.5 µs .. 1 ms
    feed.wait(1, std::chrono::steady_clock::now() + delay, soon.ready());
    CHECK(soon.future.get() == 1);
    // Nothing was committed: a wait without a near deadline must go on.
    Awaited open;
    const EventFeed::WaiterId id = feed.wait(1, far, open.ready());
    REQUIRE(id != 0);
    REQUIRE_FALSE(open.done());
    feed.cancel(id);
  }
  // Closing ends every wait.
  Awaited closing;
  feed.wait(1, far, closing.ready());
  REQUIRE(fx.ledger->close().ok());
  CHECK(closing.future.get() == 1);
  Awaited after_close;
  CHECK(feed.wait(1, far, after_close.ready()) == 0);
}

}  // namespace
}  // namespace tally
