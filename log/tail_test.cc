#include "log/tail.h"

#include <doctest.h>

#include <vector>

#include "log/faulty_file.h"
#include "log/log_test_util.h"

namespace tally::log {
namespace {

using test::TempDir;

// Reads every record up to max_seq, checking seqs and payloads from `first`.
std::uint64_t drain(LogTail& tail, std::uint64_t first, std::uint64_t max_seq) {
  Record record;
  std::uint64_t seq = first;
  for (;;) {
    auto more = tail.next(&record, max_seq);
    REQUIRE(more.ok());
    if (!*more) break;
    CHECK(record.seq == seq);
    const std::vector<std::byte> expected = test::payload_for(seq);
    CHECK(std::vector<std::byte>(record.payload.begin(), record.payload.end()) == expected);
    seq++;
  }
  return seq - 1;
}

TEST_CASE("a tail follows appends across rotations, never past the bound") {
  TempDir dir;
  auto writer = test::open_writer(posix_file_system(), dir.log_dir());
  auto tail = LogTail::open(posix_file_system(), dir.log_dir(), 1);
  REQUIRE(tail.ok());
  Record record;
  auto none = (*tail)->next(&record, 0);
  REQUIRE(none.ok());
  CHECK_FALSE(*none);

  std::uint64_t last = 0;
  for (int round = 0; round < 20; round++) {
    test::append_records(*writer, 97, 13);
    // A bound below what is written: the tail stops there.
    CHECK(drain(**tail, last + 1, last + 50) == last + 50);
    last += 97;
    CHECK(drain(**tail, last - 46, last) == last);
    CHECK((*tail)->position().next_seq == last + 1);
  }
  CHECK(test::read_log(posix_file_system(), dir.log_dir()).records.size() == last);
}

TEST_CASE("a tail opens at any seq and resumes from a reported position") {
  TempDir dir;
  auto writer = test::open_writer(posix_file_system(), dir.log_dir());
  test::append_records(*writer, 1500, 31);
  for (std::uint64_t from : {1ull, 2ull, 700ull, 1499ull, 1500ull, 1501ull}) {
    CAPTURE(from);
    auto tail = LogTail::open(posix_file_system(), dir.log_dir(), from);
    REQUIRE(tail.ok());
    CHECK((*tail)->position().next_seq == from);
    CHECK(drain(**tail, from, 1500) == 1500);
  }
  // Every segment's first seq: the tail starts on a segment boundary.
  const auto back = test::read_log(posix_file_system(), dir.log_dir());
  std::uint64_t previous_segment = 0;
  for (const Record& record : back.records) {
    if (record.segment_first_seq == previous_segment) continue;
    previous_segment = record.segment_first_seq;
    auto tail = LogTail::open(posix_file_system(), dir.log_dir(), record.seq);
    REQUIRE(tail.ok());
    CHECK(drain(**tail, record.seq, record.seq + 10) == record.seq + 10);
    auto resumed = LogTail::resume(posix_file_system(), dir.log_dir(), (*tail)->position());
    REQUIRE(resumed.ok());
    CHECK(drain(**resumed, record.seq + 11, 1500) == 1500);
  }
}

TEST_CASE("a tail opened where a segment begins gives the chain before it reads") {
  TempDir dir;
  auto writer = test::open_writer(posix_file_system(), dir.log_dir());
  test::append_records(*writer, 1500, 31);
  const auto back = test::read_log(posix_file_system(), dir.log_dir());
  REQUIRE(back.records.size() == 1500);
  std::vector<std::uint64_t> boundaries;  // first seqs of segments after the first
  for (std::size_t index = 1; index < back.records.size(); index++) {
    if (back.records[index].segment_first_seq != back.records[index - 1].segment_first_seq) {
      boundaries.push_back(back.records[index].seq);
    }
  }
  REQUIRE(boundaries.size() >= 2);
  for (const std::uint64_t from : boundaries) {
    CAPTURE(from);
    auto tail = LogTail::open(posix_file_system(), dir.log_dir(), from);
    REQUIRE(tail.ok());
    const TailPosition position = (*tail)->position();
    CHECK(position.next_seq == from);
    CHECK(position.prev_checksum == back.records[from - 2].checksum);
    auto resumed = LogTail::resume(posix_file_system(), dir.log_dir(), position);
    REQUIRE(resumed.ok());
    CHECK(drain(**resumed, from, 1500) == 1500);
    // A read of the new segment that fails leaves a tail that goes on.
    FaultyFileSystem faulty(posix_file_system());
    auto failing = LogTail::open(faulty, dir.log_dir(), from);
    REQUIRE(failing.ok());
    Record record;
    faulty.fail_reads(1, 1);  // the call's second read: a header's, or a window's after one
    auto failed = (*failing)->next(&record, 1500);
    REQUIRE_FALSE(failed.ok());
    CHECK(failed.code() == ErrorCode::io_error);
    faulty.fail_reads(0);
    CHECK(drain(**failing, from, 1500) == 1500);
  }

  // The writer rotating: the next segment's file is there, its header not
  // yet written. A tail opened at its first seq still knows the chain.
  const std::uint64_t next = back.records.back().seq + 1;
  test::write_bytes(test::segment_path(dir.log_dir(), next), std::vector<std::byte>(4096));
  auto tail = LogTail::open(posix_file_system(), dir.log_dir(), next);
  REQUIRE_MESSAGE(tail.ok(), tail.status().to_string());
  CHECK((*tail)->position().next_seq == next);
  CHECK((*tail)->position().prev_checksum == back.records.back().checksum);
}

TEST_CASE("records larger than a read window are read whole, from anywhere") {
  TempDir dir;
  auto writer = test::open_writer(posix_file_system(), dir.log_dir(), LogWriterOptions{});
  // Around the 256 KiB window, and up to the 1 MiB payload limit.
  const std::vector<std::size_t> sizes = {104, 300 * 1024, 64, 256 * 1024, (1 << 20) - 8, 8};
  for (std::size_t index = 0; index < sizes.size(); index++) {
    const std::uint64_t seq = writer->next_seq();
    const auto payload = test::payload_for(seq, 0, sizes[index]);
    REQUIRE(writer->has_room(payload.size()));
    REQUIRE(writer->append(payload) == seq);
    REQUIRE(writer->write(writer->seal(), true).ok());
  }
  for (std::uint64_t from = 1; from <= sizes.size(); from++) {
    CAPTURE(from);
    auto tail = LogTail::open(posix_file_system(), dir.log_dir(), from);
    REQUIRE(tail.ok());
    Record record;
    for (std::uint64_t seq = from; seq <= sizes.size(); seq++) {
      auto more = (*tail)->next(&record, sizes.size());
      REQUIRE_MESSAGE(more.ok(), more.status().to_string());
      REQUIRE(*more);
      CHECK(record.seq == seq);
      const auto expected = test::payload_for(seq, 0, sizes[seq - 1]);
      CHECK(std::vector<std::byte>(record.payload.begin(), record.payload.end()) == expected);
    }
  }
}

TEST_CASE("a read that fails leaves the tail where it stood: the next call goes on from there") {
  // Two logs: small segments, so that reads fail around rotations too, and
  // records around and above the read window.
  TempDir small_dir;
  test::append_records(*test::open_writer(posix_file_system(), small_dir.log_dir()), 1500, 31);
  TempDir large_dir;
  const std::vector<std::size_t> sizes = {104, 300 * 1024, 64, 256 * 1024, (1 << 20) - 8, 8};
  {
    auto writer = test::open_writer(posix_file_system(), large_dir.log_dir(), LogWriterOptions{});
    for (const std::size_t size : sizes) {
      const std::uint64_t seq = writer->next_seq();
      const auto payload = test::payload_for(seq, 0, size);
      REQUIRE(writer->has_room(payload.size()));
      REQUIRE(writer->append(payload) == seq);
      REQUIRE(writer->write(writer->seal(), true).ok());
    }
  }
  const auto expected_payload = [&](bool large, std::uint64_t seq) {
    return large ? test::payload_for(seq, 0, sizes[seq - 1]) : test::payload_for(seq);
  };
  for (const bool large : {false, true}) {
    const std::string dir = large ? large_dir.log_dir() : small_dir.log_dir();
    const std::uint64_t last = large ? sizes.size() : 1500;
    // The first, second or third read of a call fails: a window's, a
    // segment header's after a rotation, the one after it (a call with
    // that many reads: only the small segments have them).
    for (std::uint64_t after = 0; after < (large ? 2 : 3); after++) {
      CAPTURE(large);
      CAPTURE(after);
      FaultyFileSystem faulty(posix_file_system());
      auto tail = LogTail::open(faulty, dir, 1);
      REQUIRE(tail.ok());
      std::size_t failed = 0;
      Record record;
      for (std::uint64_t seq = 1; seq <= last; seq++) {
        faulty.fail_reads(1, after);
        auto more = (*tail)->next(&record, last);
        if (!more) {
          REQUIRE(more.code() == ErrorCode::io_error);
          failed++;
          faulty.fail_reads(0);
          more = (*tail)->next(&record, last);
        }
        REQUIRE_MESSAGE(more.ok(), more.status().to_string());
        REQUIRE(*more);
        CHECK(record.seq == seq);
        CHECK(std::vector<std::byte>(record.payload.begin(), record.payload.end()) ==
              expected_payload(large, seq));
      }
      faulty.fail_reads(0);
      auto end = (*tail)->next(&record, last);
      REQUIRE(end.ok());
      CHECK_FALSE(*end);
      CHECK(failed > 0);
    }
  }
}

TEST_CASE("a committed record that does not verify is corrupt, with its place") {
  TempDir dir;
  auto writer = test::open_writer(posix_file_system(), dir.log_dir());
  test::append_records(*writer, 40, 40);
  const auto back = test::read_log(posix_file_system(), dir.log_dir());
  const Record& victim = back.records[20];
  const std::string path = test::segment_path(dir.log_dir(), victim.segment_first_seq);
  std::vector<std::byte> bytes = test::read_bytes(path);
  bytes[victim.offset + kFrameHeaderSize] ^= std::byte{0x10};
  test::write_bytes(path, bytes);

  auto tail = LogTail::open(posix_file_system(), dir.log_dir(), 1);
  REQUIRE(tail.ok());
  CHECK(drain(**tail, 1, 20) == 20);
  Record record;
  auto bad = (*tail)->next(&record, 40);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.code() == ErrorCode::corrupt);
  CHECK(bad.status().message().find(log_position(victim.segment_first_seq, victim.offset)) !=
        std::string::npos);
  // Sticky.
  CHECK((*tail)->next(&record, 40).code() == ErrorCode::corrupt);

  // A bound past the end of the log: the missing record is corrupt too.
  TempDir short_dir;
  auto short_writer = test::open_writer(posix_file_system(), short_dir.log_dir());
  test::append_records(*short_writer, 5, 5);
  auto short_tail = LogTail::open(posix_file_system(), short_dir.log_dir(), 1);
  REQUIRE(short_tail.ok());
  CHECK(drain(**short_tail, 1, 5) == 5);
  CHECK((*short_tail)->next(&record, 6).code() == ErrorCode::corrupt);
}

TEST_CASE("a segment cut inside its header is corrupt, with its place") {
  TempDir dir;
  auto writer = test::open_writer(posix_file_system(), dir.log_dir());
  test::append_records(*writer, 200, 20);
  writer.reset();
  const auto back = test::read_log(posix_file_system(), dir.log_dir());
  const std::uint64_t last_segment = back.records.back().segment_first_seq;
  REQUIRE(last_segment > 1);  // a rotation: the tail opens the cut segment on its way
  const std::string path = test::segment_path(dir.log_dir(), last_segment);
  std::vector<std::byte> bytes = test::read_bytes(path);
  bytes.resize(kSegmentHeaderSize / 2);
  test::write_bytes(path, bytes);
  const std::string place = log_position(last_segment, 0);

  auto tail = LogTail::open(posix_file_system(), dir.log_dir(), 1);
  REQUIRE(tail.ok());
  CHECK(drain(**tail, 1, last_segment - 1) == last_segment - 1);
  Record record;
  auto cut = (*tail)->next(&record, 200);
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.code() == ErrorCode::corrupt);
  CHECK(cut.status().message().find(place) != std::string::npos);

  // Opened past its first seq, which it reads on the way: the same.
  auto inside = LogTail::open(posix_file_system(), dir.log_dir(), last_segment + 1);
  REQUIRE_FALSE(inside.ok());
  CHECK(inside.code() == ErrorCode::corrupt);
  CHECK(inside.status().message().find(place) != std::string::npos);
}

}  // namespace
}  // namespace tally::log
