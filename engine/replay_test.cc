// replay() reads ahead of the event it applies (engine/replay.cc); these
// tests check it against the plainest possible replay: every record of the
// log decoded and applied one at a time, on a log of many small segments.
#include <doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "engine/ledger.h"
#include "engine/replay.h"
#include "log/event.h"
#include "log/format.h"
#include "log/writer.h"
#include "log/reader.h"
#include "projections/state.h"
#include "tests/testing.h"

namespace tally {
namespace {

constexpr std::int64_t kMs = 1'000'000;
constexpr std::int64_t kStart = 1'700'000'000'000 * kMs;

// After each seq of the log: its timestamp and the digest of the state.
struct Reference {
  std::vector<std::int64_t> timestamps{0};  // [seq]; seq 0 is the empty state
  std::vector<std::uint64_t> digests;
  std::vector<std::uint64_t> segments;      // first seq of each
  std::vector<log::Record> records{{}};     // [seq]; payloads dangle, sizes hold
};

Reference one_at_a_time(const std::string& data_dir) {
  Reference out;
  proj::State state{proj::StateOptions{}};
  out.digests.push_back(state.digest());
  auto reader = log::LogReader::open(log::posix_file_system(), log_dir(data_dir));
  REQUIRE(reader.ok());
  out.segments = (*reader)->segment_first_seqs();
  log::EventDecoder decoder;
  log::Record record;
  log::Event event;
  for (;;) {
    auto more = (*reader)->next(&record);
    REQUIRE(more.ok());
    if (!*more) break;
    REQUIRE(decoder.decode(record.payload, &event).ok());
    REQUIRE(state.apply(event).ok());
    out.timestamps.push_back(event.timestamp_ns);
    out.records.push_back(record);
    out.digests.push_back(state.digest());
  }
  return out;
}

// Options for a ledger in DIR/data on `clock` that writes only its log, on
// segments of `segment_bytes`.
LedgerOptions log_only(const testing::TempDir& dir, ManualClock* clock,
                       std::uint64_t segment_bytes) {
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  options.durability = Durability::none;
  options.clock = clock;
  options.segment_size_bytes = segment_bytes;
  options.history = false;
  options.snapshot_every_events = UINT64_MAX;
  options.snapshot_every_seconds = 0;
  return options;
}

// A ledger on 64 KiB segments, given a few thousand commands of every kind
// with the clock a millisecond apart (and a run of large batches), and
// snapshots at two points.
std::string write_log(const testing::TempDir& dir,
                      std::int64_t idempotency_window_ns = LedgerOptions{}.idempotency_window_ns) {
  ManualClock clock{kStart};
  LedgerOptions options = log_only(dir, &clock, log::kSegmentSizeBytesMin);
  options.idempotency_window_ns = idempotency_window_ns;
  auto opened = Ledger::open(options);
  REQUIRE(opened.ok());
  Ledger& ledger = **opened;
  std::mt19937_64 random(7);
  const auto pick = [&](int n) { return static_cast<int>(random() % static_cast<unsigned>(n)); };
  const auto subject = [&](int not_this = -1) {
    int n = pick(40);
    if (n == not_this) n = (n + 1) % 40;
    return n;
  };
  // Not "s" + std::to_string(n): GCC 12 warns about that (-Wrestrict) at -O3.
  const auto numbered = [](char prefix, int n) {
    std::string out(1, prefix);
    out += std::to_string(n);
    return out;
  };
  const auto name = [&](int n) { return numbered('s', n); };
  const auto item = [&] { return numbered('i', pick(3)); };
  std::vector<HoldId> holds;
  const auto some_hold = [&] { return holds[static_cast<std::size_t>(pick(static_cast<int>(holds.size())))]; };
  for (int n = 0; n < 3000; n++) {
    clock.advance_ns(kMs);
    const std::string key = numbered('k', n);
    std::optional<Result<Receipt>> done;
    if (n >= 1500 && n < 1560) {
      // Events of about 16 KiB: segments of four records or fewer.
      std::vector<OpRequest> ops;
      for (int op = 0; op < 30; op++) {
        ops.push_back(OpRequest::acquire(std::string(200, 'a') + name(op), item(), 1));
      }
      const Metadata meta{std::string(1000, 'r'), std::string(1000, 'f'), std::string(1000, 'w')};
      REQUIRE(ledger.batch(key, std::move(ops), meta).ok());
      continue;
    }
    switch (pick(7)) {
      case 0:
      case 1: done = ledger.acquire(key, name(subject()), item(), 1 + pick(50)); break;
      case 2: done = ledger.consume(key, name(subject()), item(), 1 + pick(30)); break;
      case 3: {
        const int from = subject();
        done = ledger.transfer(key, name(from), name(subject(from)), item(), 1 + pick(30));
        break;
      }
      case 4:
        done = ledger.hold(key, name(subject()), item(), 1 + pick(20), (1 + pick(40)) * kMs);
        if (done->ok() && (*done)->hold != 0) holds.push_back((*done)->hold);
        break;
      case 5:
        if (holds.empty()) continue;
        done = pick(2) == 0 ? ledger.commit(key, some_hold()) : ledger.release(key, some_hold());
        break;
      case 6: REQUIRE(ledger.expire_due().ok()); continue;
    }
    // Rejections (insufficient, a settled hold, ...) are outcomes, not errors.
    REQUIRE_MESSAGE(done->ok(), done->status().to_string());
    if (n == 1000 || n == 2200) REQUIRE(ledger.snapshot_now().ok());
  }
  REQUIRE(ledger.close().ok());
  return options.data_dir;
}

// step_by_step: with an `applied` callback, which makes replay remember
// each key in step with its ops instead of on the reading thread.
Replayed replay_to(const std::string& data_dir, std::uint64_t to_seq, std::int64_t to_time_ns,
                   bool use_snapshots, bool step_by_step = false) {
  ReplayOptions options;
  std::uint64_t applied = 0;
  if (step_by_step) {
    options.applied = [&](const proj::State& state, const log::Record& record) {
      CHECK(state.last_seq() == record.seq);
      applied++;
      return Status();
    };
  }
  options.data_dir = data_dir;
  options.to_seq = to_seq;
  options.to_time_ns = to_time_ns;
  options.use_snapshots = use_snapshots;
  std::uint64_t visited = 0;
  bool in_order = true;
  std::uint64_t previous = 0;
  options.visit = [&](const log::Event& event, const log::Record& record) {
    in_order = in_order && event.seq == record.seq && (previous == 0 || event.seq == previous + 1);
    previous = event.seq;
    visited++;
  };
  auto replayed = replay(options);
  REQUIRE_MESSAGE(replayed.ok(), replayed.status().to_string());
  CHECK(in_order);
  CHECK(visited == replayed->report.events);
  if (step_by_step) CHECK(applied == replayed->report.events);
  return std::move(*replayed);
}

TEST_CASE("replay across many segments stops exactly at its seq and time bounds") {
  testing::TempDir dir;
  const std::string data_dir = write_log(dir);
  const Reference reference = one_at_a_time(data_dir);
  const std::uint64_t last = reference.digests.size() - 1;
  REQUIRE(reference.segments.size() >= 5);
  // Some segments hold fewer records than replay reads ahead.
  std::uint64_t fewest = UINT64_MAX;
  for (std::size_t index = 0; index + 1 < reference.segments.size(); index++) {
    fewest = std::min(fewest, reference.segments[index + 1] - reference.segments[index]);
  }
  CHECK(fewest < 8);

  // Every segment's edges, the snapshots' neighbourhoods and some others.
  std::set<std::uint64_t> seqs{1, 2, last - 1, last};
  for (std::uint64_t first : reference.segments) {
    for (std::uint64_t seq : {first - 1, first, first + 1}) {
      if (seq >= 1 && seq <= last) seqs.insert(seq);
    }
  }
  for (std::uint64_t seq = 97; seq < last; seq += 211) seqs.insert(seq);

  for (std::uint64_t seq : seqs) {
    CAPTURE(seq);
    for (bool use_snapshots : {false, true}) {
      CAPTURE(use_snapshots);
      const Replayed replayed = replay_to(data_dir, seq, INT64_MAX, use_snapshots);
      CHECK(replayed.state->last_seq() == seq);
      CHECK(replayed.state->digest() == reference.digests[seq]);
      CHECK(replayed.report.events == seq - replayed.report.snapshot_seq);
      // A bounded replay never reads past its bound (on a live log the
      // bytes after it may be in flight), so it does not see the end.
      CHECK_FALSE(replayed.report.reached_end);
    }
  }

  // As of time T: every event stamped <= T, none after.
  for (std::uint64_t seq : seqs) {
    const std::int64_t t = reference.timestamps[seq];
    const auto after = std::upper_bound(reference.timestamps.begin() + 1, reference.timestamps.end(), t);
    const auto expected = static_cast<std::uint64_t>(after - reference.timestamps.begin()) - 1;
    CAPTURE(t);
    for (bool use_snapshots : {false, true}) {
      const Replayed replayed = replay_to(data_dir, UINT64_MAX, t, use_snapshots);
      CHECK(replayed.state->last_seq() == expected);
      CHECK(replayed.state->digest() == reference.digests[expected]);
    }
  }

  // The whole log, from a snapshot and from the start, with the keys
  // remembered on the reading thread and in step.
  for (bool use_snapshots : {false, true}) {
    for (bool step_by_step : {false, true}) {
      CAPTURE(step_by_step);
      const Replayed replayed =
          replay_to(data_dir, UINT64_MAX, INT64_MAX, use_snapshots, step_by_step);
      CHECK((replayed.report.snapshot_seq != 0) == use_snapshots);
      CHECK(replayed.report.reached_end);
      CHECK(replayed.state->digest() == reference.digests[last]);
    }
  }
  for (std::uint64_t seq = 1; seq <= last; seq += 97) {
    const Replayed replayed = replay_to(data_dir, seq, INT64_MAX, false, true);
    CHECK(replayed.state->digest() == reference.digests[seq]);
  }
}

TEST_CASE("events of hundreds of KiB replay as they were, between small ones") {
  // Batches of the most ops, each op naming the longest subject and item
  // (over 500 KiB an event), among small events: the replay's ring of
  // payloads holds a few such at a time, and wraps round again and again.
  testing::TempDir dir;
  ManualClock clock{kStart};
  const LedgerOptions options = log_only(dir, &clock, std::uint64_t{4} << 20);
  {
    auto opened = Ledger::open(options);
    REQUIRE(opened.ok());
    Ledger& ledger = **opened;
    for (int n = 0; n < 400; n++) {
      clock.advance_ns(kMs);
      std::string key(1, 'k');  // not "k" + ...: GCC 12 warns (-Wrestrict) at -O3
      key += std::to_string(n);
      if (n % 13 == 5) {
        std::vector<OpRequest> ops;
        for (std::size_t op = 0; op < kBatchOpsMax; op++) {
          std::string subject(kIdBytesMax, 's');
          subject.replace(0, 8, std::to_string(10'000'000 + n * 1000 + op));
          ops.push_back(OpRequest::acquire(subject, std::string(kIdBytesMax, 'i'), 1));
        }
        REQUIRE(ledger.batch(key, std::move(ops)).ok());
        continue;
      }
      std::string subject(1, 's');
      subject += std::to_string(n % 7);
      REQUIRE(ledger.acquire(key, subject, "gold", 1 + n).ok());
    }
    REQUIRE(ledger.close().ok());
  }
  const Reference reference = one_at_a_time(options.data_dir);
  const std::uint64_t last = reference.digests.size() - 1;
  REQUIRE(last == 400);
  REQUIRE(reference.records[6].payload.size() > 500 * 1024);
  REQUIRE(reference.segments.size() > 3);
  for (bool step_by_step : {false, true}) {
    CAPTURE(step_by_step);
    for (const std::uint64_t seq : {std::uint64_t{6}, std::uint64_t{7}, std::uint64_t{200}, last}) {
      const Replayed replayed = replay_to(options.data_dir, seq, INT64_MAX, false, step_by_step);
      CHECK(replayed.state->last_seq() == seq);
      CHECK(replayed.state->digest() == reference.digests[seq]);
    }
  }
}

TEST_CASE("a replay that takes the window from the image starts from a snapshot of any window") {
  testing::TempDir dir;
  // Remembers keys forever; its log spans seconds, so its states' digests
  // are those of the default window's too.
  constexpr std::int64_t kLedgerWindowNs = 0;
  const std::string data_dir = write_log(dir, kLedgerWindowNs);
  const Reference reference = one_at_a_time(data_dir);
  const std::uint64_t last = reference.digests.size() - 1;
  const std::int64_t other_window_ns = proj::StateOptions{}.idempotency_window_ns;
  const auto replay_with = [&](bool from_image, std::uint64_t to_seq) {
    ReplayOptions options;
    options.data_dir = data_dir;
    options.to_seq = to_seq;
    options.state_options.idempotency_window_ns = other_window_ns;  // not the ledger's
    options.state_options.window_from_image = from_image;
    auto replayed = replay(options);
    REQUIRE_MESSAGE(replayed.ok(), replayed.status().to_string());
    return std::move(*replayed);
  };

  Replayed replayed = replay_with(true, UINT64_MAX);
  CHECK(replayed.report.snapshot_seq != 0);
  CHECK(replayed.report.skipped.empty());
  CHECK(replayed.state->idempotency_window_ns() == kLedgerWindowNs);
  CHECK(replayed.state->digest() == reference.digests[last]);
  // Below every snapshot: no image to take it from, so the newest
  // snapshot's window, not the one asked for.
  replayed = replay_with(true, 10);
  CHECK(replayed.report.snapshot_seq == 0);
  CHECK(replayed.state->idempotency_window_ns() == kLedgerWindowNs);
  CHECK(replayed.state->digest() == reference.digests[10]);

  // Without the flag each snapshot is of another window: passed over, and
  // the whole log replayed under the window asked for.
  replayed = replay_with(false, UINT64_MAX);
  CHECK(replayed.report.snapshot_seq == 0);
  CHECK(replayed.report.skipped.size() == 2);
  CHECK(replayed.state->idempotency_window_ns() == other_window_ns);
  CHECK(replayed.state->last_seq() == last);
}

TEST_CASE("applied at chosen seqs sees the state exactly there, keys included") {
  // The keys are remembered ahead of the ops except across these seqs.
  testing::TempDir dir;
  const std::string data_dir = write_log(dir);
  const Reference reference = one_at_a_time(data_dir);
  const std::uint64_t last = reference.digests.size() - 1;
  REQUIRE(last > 2000);
  // 64 and 1024 end a chunk of the ring (32 slots) when replay starts from
  // the first seq: handed over at once, with every key up to them indexed.
  const std::vector<std::uint64_t> seqs = {1,    2,    3,    40,   41,  64,
                                           700,  1024, 1200, 1201, 2100, last, last + 5};
  for (const bool use_snapshots : {false, true}) {
    ReplayOptions options;
    options.data_dir = data_dir;
    options.use_snapshots = use_snapshots;
    options.applied_seqs = seqs;
    std::vector<std::uint64_t> seen;
    options.applied = [&](const proj::State& state, const log::Record& record) {
      CHECK(state.last_seq() == record.seq);
      CHECK(state.digest() == reference.digests[record.seq]);
      seen.push_back(record.seq);
      return Status();
    };
    auto replayed = replay(options);
    REQUIRE_MESSAGE(replayed.ok(), replayed.status().to_string());
    CHECK(replayed->state->digest() == reference.digests[last]);
    std::vector<std::uint64_t> expected;
    for (const std::uint64_t seq : seqs) {
      if (seq > replayed->report.snapshot_seq && seq <= last) expected.push_back(seq);
    }
    CHECK(seen == expected);
    if (use_snapshots) CHECK(replayed->report.snapshot_seq > 0);
  }
}

TEST_CASE("a replay stops with closed once its cancel flag is set, and only then") {
  testing::TempDir dir;
  const std::string data_dir = write_log(dir);
  std::atomic<bool> cancel{false};
  ReplayOptions options;
  options.data_dir = data_dir;
  options.use_snapshots = false;
  options.cancel = &cancel;
  std::uint64_t visited = 0;
  options.visit = [&](const log::Event&, const log::Record&) {
    if (++visited == 100) cancel.store(true);
  };
  auto cancelled = replay(options);
  CHECK(cancelled.code() == ErrorCode::closed);
  CHECK(visited == 100);  // checked before each event: none after the one that set it
  cancel.store(false);
  visited = 0;
  options.visit = [&](const log::Event&, const log::Record&) { visited++; };
  auto whole = replay(options);
  REQUIRE(whole.ok());
  CHECK(visited == whole->report.events);
  CHECK(whole->report.reached_end);
}

// The whole log, without snapshots, its keys remembered ahead of the ops
// (as an open replays) or, `step_by_step`, with each event (as a caller
// that looks after every event does).
Result<Replayed> replay_whole_log(const std::string& data_dir, bool step_by_step) {
  ReplayOptions options;
  options.data_dir = data_dir;
  options.use_snapshots = false;
  if (step_by_step) {
    options.applied = [](const proj::State&, const log::Record&) { return Status(); };
  }
  return replay(options);
}

TEST_CASE("a key decided again in the log, as under a shorter window, replays its later decision") {
  testing::TempDir dir;
  const std::string data_dir = dir.sub("data");
  // Far more events than replay reads ahead; the repeat is deep inside.
  constexpr std::uint64_t kEvents = 3000;
  constexpr std::uint64_t kRepeatAt = 2100;
  {
    auto writer = log::LogWriter::open(log::posix_file_system(), log_dir(data_dir), log::LogEnd{});
    REQUIRE(writer.ok());
    log::EventEncoder encoder;
    for (std::uint64_t seq = 1; seq <= kEvents; seq++) {
      log::Op op;
      op.subject = "alice";
      op.item = "gold";
      op.qty = 1;
      std::string key(1, 'k');
      key += std::to_string(seq == kRepeatAt ? 7 : seq);
      log::Event event;
      event.seq = seq;
      event.timestamp_ns = kStart + static_cast<std::int64_t>(seq) * kMs;
      event.key = key;
      event.ops = std::span<const log::Op>(&op, 1);
      REQUIRE((*writer)->has_room(encoder.encode(event).size()));
      (*writer)->append(encoder.encode(event));
      if (seq % 500 == 0 || seq == kEvents) {
        REQUIRE((*writer)->write((*writer)->seal(), false).ok());
      }
    }
  }
  std::optional<std::uint64_t> digest;
  for (bool step_by_step : {false, true}) {
    CAPTURE(step_by_step);
    auto replayed = replay_whole_log(data_dir, step_by_step);
    REQUIRE_MESSAGE(replayed.ok(), replayed.status().to_string());
    const proj::State& state = *replayed->state;
    REQUIRE(state.find_key("k7") != nullptr);
    CHECK(state.find_key("k7")->seq == kRepeatAt);
    CHECK(state.counts().keys == kEvents - 1);
    CHECK(state.balance("alice", "gold", proj::kStoredOnly).available ==
          static_cast<std::int64_t>(kEvents));
    // Keys indexed in runs ahead of the ops, or one by one in step: the same.
    if (digest) CHECK(state.digest() == *digest);
    digest = state.digest();
  }
}

TEST_CASE("a key decided again at the time of its decision is refused before a later problem") {
  testing::TempDir dir;
  const std::string data_dir = dir.sub("data");
  // Seq 2001 decides k2000 again, at its time; seq 2003 overdraws. Keys
  // are remembered ahead and the repeat is found only as its run is
  // indexed, but it is the first problem, and the one reported.
  {
    auto writer = log::LogWriter::open(log::posix_file_system(), log_dir(data_dir), log::LogEnd{});
    REQUIRE(writer.ok());
    log::EventEncoder encoder;
    for (std::uint64_t seq = 1; seq <= 3000; seq++) {
      log::Op op;
      op.type = seq == 2003 ? log::OpType::consume : log::OpType::acquire;
      op.subject = "alice";
      op.item = "gold";
      op.qty = seq == 2003 ? 1'000'000 : 1;
      const std::uint64_t named = seq == 2001 ? 2000 : seq;
      std::string key(1, 'k');
      key += std::to_string(named);
      log::Event event;
      event.seq = seq;
      event.timestamp_ns = kStart + static_cast<std::int64_t>(named) * kMs;
      event.key = key;
      event.ops = std::span<const log::Op>(&op, 1);
      (*writer)->append(encoder.encode(event));
    }
    REQUIRE((*writer)->write((*writer)->seal(), false).ok());
  }
  for (bool step_by_step : {false, true}) {
    CAPTURE(step_by_step);
    auto replayed = replay_whole_log(data_dir, step_by_step);
    REQUIRE_FALSE(replayed.ok());
    CHECK(replayed.status().code() == ErrorCode::corrupt);
    CHECK(replayed.status().message().find(
              "seq 2001: key 'k2000', decided at seq 2000, decided again at the same time") !=
          std::string::npos);
  }
}

TEST_CASE("a damaged record stops replay at its segment and offset, after every record before it") {
  testing::TempDir dir;
  const std::string data_dir = write_log(dir);
  const Reference reference = one_at_a_time(data_dir);
  // A record well inside a segment in the middle of the log.
  std::size_t index = reference.segments.size() / 2;
  while (index + 1 < reference.segments.size() &&
         reference.segments[index + 1] - reference.segments[index] < 40) {
    index++;
  }
  REQUIRE(index + 1 < reference.segments.size());
  const std::uint64_t seq = reference.segments[index] + 20;
  const log::Record& damaged = reference.records[seq];
  REQUIRE(testing::flip_byte(
      log::join_path(log_dir(data_dir), log::segment_file_name(damaged.segment_first_seq)),
      damaged.offset + log::kFrameHeaderSize + damaged.payload.size() / 2, 0x20));

  ReplayOptions options;
  options.data_dir = data_dir;
  options.use_snapshots = false;
  std::uint64_t visited = 0;
  options.visit = [&](const log::Event&, const log::Record&) { visited++; };
  auto replayed = replay(options);
  REQUIRE(replayed.code() == ErrorCode::corrupt);
  CHECK(replayed.status().message().starts_with(
      "segment " + log::segment_file_name(damaged.segment_first_seq) + " offset " +
      std::to_string(damaged.offset) + ": "));
  CHECK(visited == seq - 1);

  // A replay bounded before the damage never reads it.
  options.to_seq = seq - 1;
  replayed = replay(options);
  REQUIRE_MESSAGE(replayed.ok(), replayed.status().to_string());
  CHECK(replayed->state->digest() == reference.digests[seq - 1]);
}

// A segment file of its header alone: all keys_expected() reads of it.
void write_segment_header(const std::string& log_dir, std::uint64_t first_seq,
                          std::int64_t created_ns) {
  std::array<std::byte, log::kSegmentHeaderSize> bytes{};
  log::encode_segment_header({.first_seq = first_seq,
                              .size_bytes = log::kSegmentSizeBytesMin,
                              .created_ns = created_ns},
                             bytes);
  testing::write_file(log::join_path(log_dir, log::segment_file_name(first_seq)),
                      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

TEST_CASE("a replay expects the keys of the segments it reads that the window keeps") {
  testing::TempDir dir;
  const std::string log_dir = dir.sub("log");
  std::filesystem::create_directories(log_dir);
  constexpr std::int64_t kSecond = 1000 * kMs;
  // Segments of 100 events, created 10 s apart; the last, still being
  // written, counts as an average one.
  const std::vector<std::uint64_t> first_seqs{1, 101, 201, 301};
  for (std::size_t index = 0; index < first_seqs.size(); index++) {
    write_segment_header(log_dir, first_seqs[index],
                         kStart + static_cast<std::int64_t>(index) * 10 * kSecond);
  }
  log::FileSystem& fs = log::posix_file_system();
  const auto expected = [&](std::uint64_t after, std::uint64_t to_seq, std::int64_t window_ns) {
    return keys_expected(fs, log_dir, first_seqs, after, to_seq, window_ns);
  };

  // A window of 0 remembers every key.
  CHECK(expected(0, UINT64_MAX, 0) == 400);
  CHECK(expected(150, UINT64_MAX, 0) == 250);  // from inside a segment
  CHECK(expected(0, 250, 0) == 250);           // to inside one
  CHECK(expected(120, 350, 0) == 230);
  CHECK(expected(0, 100, 0) == 100);
  // A replay that starts in the segment it ends in grows the index little.
  CHECK(expected(210, 250, 0) == 0);
  CHECK(expected(310, UINT64_MAX, 0) == 0);
  CHECK(keys_expected(fs, log_dir, {1}, 0, UINT64_MAX, 0) == 0);
  CHECK(keys_expected(fs, log_dir, {}, 0, UINT64_MAX, 0) == 0);

  // A segment is left out once its successor was created more than a
  // window before the segment the replay ends in.
  CHECK(expected(0, UINT64_MAX, 25 * kSecond) == 400);
  CHECK(expected(0, UINT64_MAX, 20 * kSecond) == 400);  // no more than a window
  CHECK(expected(0, UINT64_MAX, 15 * kSecond) == 300);
  CHECK(expected(0, UINT64_MAX, 5 * kSecond) == 200);
  CHECK(expected(0, 250, 5 * kSecond) == 150);
  CHECK(expected(150, UINT64_MAX, 5 * kSecond) == 200);

  // A stray segment named far past the others counts no more events than
  // its size holds frames, nor does the one before it.
  const std::uint64_t frames_max = (log::kSegmentSizeBytesMin - log::kSegmentHeaderSize) /
                                   log::frame_size(log::kFrameAlignment);
  REQUIRE(frames_max < 100'000);
  std::vector<std::uint64_t> stray = first_seqs;
  stray.push_back(1'000'001);
  write_segment_header(log_dir, stray.back(), kStart + 40 * kSecond);
  CHECK(keys_expected(fs, log_dir, stray, 0, UINT64_MAX, 0) == 300 + 2 * frames_max);

  // A header that cannot be read: no estimate (the replay finds why).
  testing::write_file(log::join_path(log_dir, log::segment_file_name(201)), "cut");
  CHECK(expected(0, UINT64_MAX, 0) == 0);
  CHECK(expected(0, 150, 0) == 150);  // not read by a replay that ends before it
}

}  // namespace
}  // namespace tally
