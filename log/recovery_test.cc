// Recovery: torn tails are repaired, corruption is reported with its segment
// and offset (docs/log-format.md, "Recovery").
#include <doctest.h>

#include <algorithm>
#include <chrono>
#include <span>
#include <string>
#include <thread>

#include <unistd.h>

#include "log/faulty_file.h"
#include "log/file.h"
#include "log/format.h"
#include "log/log_test_util.h"
#include "log/reader.h"
#include "log/writer.h"

namespace tally::log::test {
namespace {

FileSystem& posix() { return posix_file_system(); }

// A one-segment log of `count` records and where each frame is.
struct OneSegment {
  std::string path;
  std::vector<std::byte> pristine;
  std::vector<std::uint64_t> offsets;  // by seq - 1
  std::vector<std::size_t> frame_bytes;

  // The segment's bytes with frame `index` (seq index + 1) zeroed.
  std::vector<std::byte> with_frame_zeroed(std::size_t index) const {
    std::vector<std::byte> bytes = pristine;
    const auto begin = bytes.begin() + static_cast<std::ptrdiff_t>(offsets[index]);
    std::fill(begin, begin + static_cast<std::ptrdiff_t>(frame_bytes[index]), std::byte{0});
    return bytes;
  }
};

OneSegment make_one_segment(const TempDir& dir, std::uint64_t count) {
  auto writer = open_writer(posix(), dir.log_dir());
  append_records(*writer, count, 3);
  writer.reset();
  OneSegment log;
  log.path = segment_path(dir.log_dir(), 1);
  log.pristine = read_bytes(log.path);
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  REQUIRE(back.records.size() == count);
  for (const Record& record : back.records) {
    REQUIRE(record.segment_first_seq == 1);
    log.offsets.push_back(record.offset);
    log.frame_bytes.push_back(frame_size(record.payload.size()));
  }
  return log;
}

// A log of several small segments.
std::vector<std::uint64_t> make_segments(const TempDir& dir, std::uint64_t count) {
  auto writer = open_writer(posix(), dir.log_dir());
  append_records(*writer, count, 17);
  writer.reset();
  auto reader = LogReader::open(posix(), dir.log_dir());
  REQUIRE(reader.ok());
  REQUIRE((*reader)->segment_first_seqs().size() >= 4);
  return (*reader)->segment_first_seqs();
}

std::string prefix(std::uint64_t segment_first_seq, std::uint64_t offset) {
  return log_position(segment_first_seq, offset) + ": ";
}

bool starts_with(const std::string& text, const std::string& start) {
  return text.compare(0, start.size(), start) == 0;
}

void require_corrupt(const ReadBack& back, const std::string& expected_prefix) {
  INFO(back.status.to_string());
  REQUIRE(back.status.code() == ErrorCode::corrupt);
  REQUIRE(starts_with(back.status.message(), expected_prefix));
}

// Offset just past the last nonzero byte of bytes[from, to), or from.
std::uint64_t nonzero_end(const std::vector<std::byte>& bytes, std::uint64_t from, std::uint64_t to) {
  for (std::uint64_t end = std::min<std::uint64_t>(to, bytes.size()); end > from; end--) {
    if (bytes[end - 1] != std::byte{0}) return end;
  }
  return from;
}

// Reads a damaged log whose last record is torn, repairs it by opening a
// writer, appends two records and reads everything back.
void check_torn_and_repair(const TempDir& dir, const OneSegment& log,
                           const std::vector<std::byte>& damaged) {
  const std::uint64_t count = log.offsets.size();
  const std::uint64_t last_offset = log.offsets.back();
  write_bytes(log.path, damaged);

  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  REQUIRE(back.records.size() == count - 1);
  check_records(back, 0, 1, count - 1, 0);
  const std::uint64_t torn_end = nonzero_end(damaged, last_offset, last_offset + log.frame_bytes.back());
  CHECK(back.end.next_seq == count);
  CHECK(back.end.offset == last_offset);
  CHECK(back.end.torn == (torn_end > last_offset));
  if (back.end.torn) CHECK(back.end.torn_end == torn_end);
  CHECK(!back.end.torn_header);
  // A file shorter than it was made may have lost records past its end.
  CHECK(back.end.cut_short == (damaged.size() < log.pristine.size()));
  CHECK(back.end.file_bytes == damaged.size());

  auto writer = open_writer(posix(), dir.log_dir());
  append_records(*writer, 2, 2, 1);
  writer.reset();
  ReadBack after = read_log(posix(), dir.log_dir());
  REQUIRE_MESSAGE(after.status.ok(), after.status.to_string());
  REQUIRE(after.records.size() == count + 1);
  check_records(after, 0, 1, count - 1, 0);
  check_records(after, count - 1, count, 2, 1);
  CHECK(!after.end.torn);
  CHECK(!after.end.cut_short);  // the writer gave the file its size back
}

TEST_CASE("a truncated last record, cut at every byte offset, is a torn tail that open repairs") {
  TempDir dir;
  // Each repair of a cut file preallocates and syncs it again, which is
  // slow, so this log ends with a record of modest size (200 bytes).
  const OneSegment log = make_one_segment(dir, 100);
  REQUIRE(log.frame_bytes.back() == 200);
  const std::uint64_t last_offset = log.offsets.back();
  for (std::size_t cut = 0; cut < log.frame_bytes.back(); cut++) {
    INFO("cut at byte " << cut << " of the last frame");
    std::vector<std::byte> damaged(log.pristine.begin(),
                                   log.pristine.begin() + static_cast<std::ptrdiff_t>(last_offset + cut));
    check_torn_and_repair(dir, log, damaged);
  }
}

TEST_CASE("a last record zeroed from every byte offset on is a torn tail or the clean end") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 100);
  const std::uint64_t last_offset = log.offsets.back();
  const std::uint64_t last_end = last_offset + log.frame_bytes.back();
  bool saw_clean = false;
  bool saw_torn = false;
  for (std::size_t cut = 0; cut < log.frame_bytes.back(); cut++) {
    INFO("zeroed from byte " << cut << " of the last frame");
    std::vector<std::byte> damaged = log.pristine;
    std::fill(damaged.begin() + static_cast<std::ptrdiff_t>(last_offset + cut),
              damaged.begin() + static_cast<std::ptrdiff_t>(last_end), std::byte{0});
    const bool torn = nonzero_end(damaged, last_offset, last_end) > last_offset;
    (torn ? saw_torn : saw_clean) = true;
    check_torn_and_repair(dir, log, damaged);
  }
  CHECK(saw_clean);
  CHECK(saw_torn);
}

TEST_CASE("a last segment cut short in the zeros after its frames lost nothing") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 100);
  const std::uint64_t end = log.offsets.back() + log.frame_bytes.back();
  for (const std::uint64_t zeros : {std::uint64_t{0}, std::uint64_t{3}, std::uint64_t{8},
                                    std::uint64_t{4096}}) {
    INFO(zeros << " zero bytes kept after the frames");
    write_bytes(log.path, std::vector<std::byte>(log.pristine.begin(),
                                                 log.pristine.begin() +
                                                     static_cast<std::ptrdiff_t>(end + zeros)));
    ReadBack back = read_log(posix(), dir.log_dir());
    REQUIRE(back.status.ok());
    CHECK(back.records.size() == log.offsets.size());
    CHECK(!back.end.torn);
    // Fewer zeros than a frame's first word cannot tell a cut frame apart.
    CHECK(back.end.cut_short == (zeros < kFrameAlignment));
    if (back.end.cut_short) {
      CHECK(cut_short_status(back.end).message() ==
            prefix(1, end) + "the segment's file is cut short (" + std::to_string(end + zeros) +
                " bytes of the " + std::to_string(back.end.segment_size_bytes) +
                " its header reserves): records after seq " +
                std::to_string(log.offsets.size()) + " may be lost");
    }
  }
  write_bytes(log.path, log.pristine);
  CHECK(!read_log(posix(), dir.log_dir()).end.cut_short);
}

TEST_CASE("an open that finds no room to make a cut file whole leaves it as it was") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 100);
  const std::uint64_t last = log.offsets.back();
  const std::uint64_t end = last + log.frame_bytes.back();
  // Cut inside the last record (a torn tail), or just after it.
  for (const std::uint64_t cut : {last + log.frame_bytes.back() / 2, end}) {
    INFO("cut at " << cut);
    const auto cut_at = log.pristine.begin() + static_cast<std::ptrdiff_t>(cut);
    write_bytes(log.path, std::vector<std::byte>(log.pristine.begin(), cut_at));
    ReadBack before = read_log(posix(), dir.log_dir());
    REQUIRE(before.status.ok());
    REQUIRE(before.end.cut_short);
    // Room for the zeros over a torn tail and a page more, not for the
    // file's blocks: the preallocation grows the file by what is left, and
    // fails.
    FaultyFileSystem fs(posix());
    const std::uint64_t torn_bytes = before.end.torn ? before.end.torn_end - before.end.offset : 0;
    fs.fail_writes_after_bytes(torn_bytes + 4096);
    auto writer = LogWriter::open(fs, dir.log_dir(), before.end, small_options());
    REQUIRE_FALSE(writer.ok());
    CHECK(writer.status().message().find("preallocate") != std::string::npos);
    // The next reader still learns that records after the end may be lost.
    CHECK(read_bytes(log.path).size() == cut);
    ReadBack after = read_log(posix(), dir.log_dir());
    REQUIRE(after.status.ok());
    CHECK(after.end.torn == before.end.torn);
    CHECK(after.end.cut_short);
  }
}

TEST_CASE("garbage after the end with nothing valid in it is a torn tail") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 4);
  std::vector<std::byte> damaged = log.pristine;
  // Zeros where the next frame would start, garbage further on: a torn
  // write whose first sectors did not reach the disk.
  const std::uint64_t end = log.offsets.back() + log.frame_bytes.back();
  for (std::uint64_t offset = end + 100; offset < end + 300; offset++) damaged[offset] = std::byte{0x5a};
  write_bytes(log.path, damaged);
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  CHECK(back.records.size() == 4);
  CHECK(back.end.torn);
  CHECK(back.end.offset == end);
  CHECK(back.end.torn_end == end + 300);
  auto writer = open_writer(posix(), dir.log_dir());
  append_records(*writer, 3, 3, 1);
  writer.reset();
  ReadBack after = read_log(posix(), dir.log_dir());
  REQUIRE(after.status.ok());
  check_records(after, 0, 1, 4, 0);
  check_records(after, 4, 5, 3, 1);
  CHECK(!after.end.torn);
}

TEST_CASE("a flipped bit anywhere in a middle record is corruption at its offset") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 9);
  const std::uint64_t middle_offset = log.offsets[4];
  for (std::uint64_t bit = 0; bit < log.frame_bytes[4] * 8; bit++) {
    INFO("bit " << bit);
    const std::uint64_t offset = middle_offset + bit / 8;
    const int bit_in_byte = static_cast<int>(bit % 8);
    REQUIRE(flip_bit(posix(), log.path, offset, bit_in_byte).ok());
    ReadBack back = read_log(posix(), dir.log_dir());
    require_corrupt(back, prefix(1, middle_offset));
    CHECK(back.records.size() == 4);
    REQUIRE(flip_bit(posix(), log.path, offset, bit_in_byte).ok());
  }
  CHECK(read_bytes(log.path) == log.pristine);
}

TEST_CASE("a deleted middle record is a chain break") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 9);
  std::vector<std::byte> damaged = log.pristine;
  const auto begin = damaged.begin() + static_cast<std::ptrdiff_t>(log.offsets[4]);
  damaged.erase(begin, begin + static_cast<std::ptrdiff_t>(log.frame_bytes[4]));
  write_bytes(log.path, damaged);
  ReadBack back = read_log(posix(), dir.log_dir());
  require_corrupt(back, prefix(1, log.offsets[4]));
  CHECK(back.status.message().find("chain break") != std::string::npos);
  CHECK(back.records.size() == 4);
}

TEST_CASE("swapped records are a chain break") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 9);
  std::vector<std::byte> damaged;
  const auto frame = [&](std::size_t index) {
    const auto begin = log.pristine.begin() + static_cast<std::ptrdiff_t>(log.offsets[index]);
    return std::vector<std::byte>(begin, begin + static_cast<std::ptrdiff_t>(log.frame_bytes[index]));
  };
  damaged.assign(log.pristine.begin(), log.pristine.begin() + static_cast<std::ptrdiff_t>(log.offsets[4]));
  for (std::size_t index : {5u, 4u, 6u, 7u, 8u}) {
    const auto bytes = frame(index);
    damaged.insert(damaged.end(), bytes.begin(), bytes.end());
  }
  write_bytes(log.path, damaged);
  ReadBack back = read_log(posix(), dir.log_dir());
  require_corrupt(back, prefix(1, log.offsets[4]));
  CHECK(back.status.message().find("chain break") != std::string::npos);
}

TEST_CASE("a zeroed middle record followed by valid ones is corruption, not the end") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 9);
  write_bytes(log.path, log.with_frame_zeroed(4));
  ReadBack back = read_log(posix(), dir.log_dir());
  require_corrupt(back, prefix(1, log.offsets[4]));
  CHECK(back.status.message().find("followed by a valid frame at offset " +
                                   std::to_string(log.offsets[5])) != std::string::npos);
}

TEST_CASE("a valid record after a long run of zeros is found wherever the run starts") {
  // The search skips zeros a block at a time: runs of every length from one
  // frame to many blocks, from and to every frame boundary.
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 40);
  for (std::size_t first = 1; first < log.offsets.size(); first++) {
    for (std::size_t next = first + 1; next < log.offsets.size(); next++) {
      CAPTURE(first);
      CAPTURE(next);
      std::vector<std::byte> damaged = log.pristine;
      std::fill(damaged.begin() + static_cast<std::ptrdiff_t>(log.offsets[first]),
                damaged.begin() + static_cast<std::ptrdiff_t>(log.offsets[next]), std::byte{0});
      write_bytes(log.path, damaged);
      ReadBack back = read_log(posix(), dir.log_dir());
      require_corrupt(back, prefix(1, log.offsets[first]));
      CHECK(back.status.message().find("followed by a valid frame at offset " +
                                       std::to_string(log.offsets[next])) != std::string::npos);
    }
  }
}

TEST_CASE("beside a live writer, a frame in flight is read again before it is corruption") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 10);
  // Frame 4 still being copied in while frames 5.. already are.
  write_bytes(log.path, log.with_frame_zeroed(4));
  LogReaderOptions live;
  live.writer_may_be_live = true;
  // The writer finishes it while the reader looks again.
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto file = posix().open(log.path, FileSystem::Mode::read_write);
    CHECK((file.ok() && (*file)->write_at(log.offsets[4], std::span(log.pristine).subspan(
                                                              log.offsets[4], log.frame_bytes[4]))
                            .ok()));
  });
  ReadBack back = read_log(posix(), dir.log_dir(), live);
  writer.join();
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  CHECK(back.records.size() == 10);
  // One that stays so is corruption, after the looks.
  write_bytes(log.path, log.with_frame_zeroed(4));
  require_corrupt(read_log(posix(), dir.log_dir(), live), prefix(1, log.offsets[4]));
}

TEST_CASE("beside a live writer, each frame in flight gets its own looks again") {
  TempDir dir;
  const OneSegment log = make_one_segment(dir, 10);
  // Frames 2, 4 and 6 still being copied in, each finished 100 ms after
  // the one before: 300 ms in all, longer than one frame's looks take
  // (255 ms), each far shorter.
  std::vector<std::byte> bytes = log.pristine;
  for (const std::size_t index : {2, 4, 6}) {
    const auto begin = bytes.begin() + static_cast<std::ptrdiff_t>(log.offsets[index]);
    std::fill(begin, begin + static_cast<std::ptrdiff_t>(log.frame_bytes[index]), std::byte{0});
  }
  write_bytes(log.path, bytes);
  LogReaderOptions live;
  live.writer_may_be_live = true;
  std::thread writer([&] {
    auto file = posix().open(log.path, FileSystem::Mode::read_write);
    CHECK(file.ok());
    if (!file.ok()) return;
    for (const std::size_t index : {2, 4, 6}) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const std::span<const std::byte> frame =
          std::span(log.pristine).subspan(log.offsets[index], log.frame_bytes[index]);
      CHECK((*file)->write_at(log.offsets[index], frame).ok());
    }
  });
  ReadBack back = read_log(posix(), dir.log_dir(), live);
  writer.join();
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  CHECK(back.records.size() == 10);
}

// Reads from the last segment's first seq on: the segments before it are
// skipped, their headers checked.
ReadBack read_last_segment(const TempDir& dir, const std::vector<std::uint64_t>& segments) {
  LogReaderOptions options;
  options.from_seq = segments.back();
  return read_log(posix(), dir.log_dir(), options);
}

TEST_CASE("damage in a segment that is not the last is corruption") {
  TempDir dir;
  const std::vector<std::uint64_t> segments = make_segments(dir, 600);
  const std::uint64_t second = segments[1];
  const std::string path = segment_path(dir.log_dir(), second);
  const std::vector<std::byte> pristine = read_bytes(path);

  // A damaged header is found by a read from a later seq too, which
  // reads only the headers of the segments it skips.
  SUBCASE("a flipped bit in its header") {
    std::vector<std::byte> damaged = pristine;
    damaged[kSegFirstSeqOffset] ^= std::byte{1};
    write_bytes(path, damaged);
    require_corrupt(read_log(posix(), dir.log_dir()), prefix(second, 0));
    require_corrupt(read_last_segment(dir, segments), prefix(second, 0) + "damaged segment header");
  }
  SUBCASE("a zeroed header") {
    std::vector<std::byte> damaged = pristine;
    std::fill(damaged.begin(), damaged.begin() + kSegmentHeaderSize, std::byte{0});
    write_bytes(path, damaged);
    require_corrupt(read_log(posix(), dir.log_dir()), prefix(second, 0));
    require_corrupt(read_last_segment(dir, segments), prefix(second, 0) + "damaged segment header");
  }
  SUBCASE("a file shorter than its header") {
    write_bytes(path, std::vector<std::byte>(pristine.begin(), pristine.begin() + 20));
    require_corrupt(read_log(posix(), dir.log_dir()), prefix(second, 0));
    require_corrupt(read_last_segment(dir, segments), prefix(second, 0) + "damaged segment header");
  }
  SUBCASE("a header that verifies but names another seq") {
    std::vector<std::byte> damaged = pristine;
    store_u64(damaged.data() + kSegFirstSeqOffset, second + 1);
    const auto header = std::span<const std::byte, kSegmentHeaderSize>(damaged.data(),
                                                                       kSegmentHeaderSize);
    store_u64(damaged.data() + kSegChecksumOffset, segment_header_checksum(header));
    write_bytes(path, damaged);
    require_corrupt(read_log(posix(), dir.log_dir()), prefix(second, 0));
    require_corrupt(read_last_segment(dir, segments), prefix(second, 0) + "header says first seq");
  }
  SUBCASE("a torn last record") {
    // Only the last segment can have a torn tail; here it is damage.
    ReadBack before = read_log(posix(), dir.log_dir());
    const Record* last = nullptr;
    for (const Record& record : before.records) {
      if (record.segment_first_seq == second) last = &record;
    }
    REQUIRE(last != nullptr);
    std::vector<std::byte> damaged = pristine;
    damaged[last->offset + kFrameHeaderSize + 3] ^= std::byte{0x10};
    write_bytes(path, damaged);
    require_corrupt(read_log(posix(), dir.log_dir()), prefix(second, last->offset));
  }
  SUBCASE("a file cut short, through its records or only in its zeros") {
    // Either way it was cut after it was made whole; a read from a later
    // seq, which reads none of its records, sees that by its size.
    const ReadBack before = read_log(posix(), dir.log_dir());
    std::uint64_t records_end = 0;
    for (const Record& record : before.records) {
      if (record.segment_first_seq == second) {
        records_end = record.offset + frame_size(record.payload.size());
      }
    }
    for (const std::uint64_t size : {records_end - 8, records_end + 8}) {
      CAPTURE(size);
      const auto end = pristine.begin() + static_cast<std::ptrdiff_t>(size);
      write_bytes(path, std::vector<std::byte>(pristine.begin(), end));
      const std::string cut = prefix(second, size) + "the segment's file is cut short (" +
                              std::to_string(size) + " bytes of the " +
                              std::to_string(pristine.size()) + " its header reserves)";
      require_corrupt(read_log(posix(), dir.log_dir()), cut);
      require_corrupt(read_last_segment(dir, segments), cut);
    }
  }
  SUBCASE("a zeroed last record: the next segment does not continue the chain") {
    ReadBack before = read_log(posix(), dir.log_dir());
    const Record* last = nullptr;
    for (const Record& record : before.records) {
      if (record.segment_first_seq == second) last = &record;
    }
    REQUIRE(last != nullptr);
    std::vector<std::byte> damaged = pristine;
    std::fill(damaged.begin() + static_cast<std::ptrdiff_t>(last->offset), damaged.end(), std::byte{0});
    write_bytes(path, damaged);
    ReadBack back = read_log(posix(), dir.log_dir());
    require_corrupt(back, prefix(segments[2], 0));
    CHECK(back.status.message().find("gap") != std::string::npos);
  }
}

TEST_CASE("bytes past the size a segment's header reserves are corruption; zeros there are not") {
  TempDir dir;
  const std::vector<std::uint64_t> segments = make_segments(dir, 600);
  const std::size_t record_count = read_log(posix(), dir.log_dir()).records.size();
  for (const std::uint64_t segment : {segments[1], segments.back()}) {
    CAPTURE(segment);
    const std::string path = segment_path(dir.log_dir(), segment);
    const std::vector<std::byte> pristine = read_bytes(path);
    std::vector<std::byte> longer = pristine;
    longer.resize(pristine.size() + 13);
    write_bytes(path, longer);
    const ReadBack zeros = read_log(posix(), dir.log_dir());
    CHECK(zeros.status.ok());
    CHECK(zeros.records.size() == record_count);
    longer[pristine.size() + 11] = std::byte{1};  // not in a word of its own
    write_bytes(path, longer);
    require_corrupt(read_log(posix(), dir.log_dir()),
                    prefix(segment, pristine.size()) + "nonzero bytes up to offset " +
                        std::to_string(pristine.size() + 12) + " past the " +
                        std::to_string(pristine.size()) + " bytes its header reserves");
    write_bytes(path, pristine);
    // Longer than any segment: what is past the largest size is not read,
    // so the file is refused whatever it holds (here a hole, all zeros).
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(kSegmentSizeBytesMax + 1)) == 0);
    require_corrupt(read_log(posix(), dir.log_dir()),
                    prefix(segment, kSegmentSizeBytesMax) + "the file holds " +
                        std::to_string(kSegmentSizeBytesMax + 1) + " bytes, more than any segment");
    write_bytes(path, pristine);
  }
}

TEST_CASE("a missing segment is a gap") {
  TempDir dir;
  const std::vector<std::uint64_t> segments = make_segments(dir, 600);
  SUBCASE("in the middle") {
    REQUIRE(posix().remove(segment_path(dir.log_dir(), segments[1])).ok());
    ReadBack back = read_log(posix(), dir.log_dir());
    require_corrupt(back, prefix(segments[2], 0));
    CHECK(back.status.message().find("gap") != std::string::npos);
  }
  SUBCASE("at the start") {
    REQUIRE(posix().remove(segment_path(dir.log_dir(), segments[0])).ok());
    require_corrupt(read_log(posix(), dir.log_dir()), prefix(segments[1], 0));
    // A read from a later seq does not read that far, but sees the log
    // does not begin at seq 1.
    require_corrupt(read_last_segment(dir, segments), prefix(segments[1], 0) + "gap");
  }
}

TEST_CASE("a misnamed segment file is corruption; other files are ignored") {
  TempDir dir;
  make_one_segment(dir, 3);
  write_bytes(join_path(dir.log_dir(), "notes.txt"), std::vector<std::byte>(10, std::byte{1}));
  CHECK(read_log(posix(), dir.log_dir()).status.ok());
  write_bytes(join_path(dir.log_dir(), "12.seg"), std::vector<std::byte>(10, std::byte{1}));
  require_corrupt(read_log(posix(), dir.log_dir()), "segment 12.seg offset 0: ");
}

// The last segment as a crash while creating it leaves it (empty, or
// preallocated zeros, whole or in an emulated preallocation's steps), or
// cut short to part of its header or, header written, to less than any
// segment: a torn header, recreated by the next open; cut short, it may
// have lost frames.
void check_torn_header(const TempDir& dir, const std::vector<std::byte>& last_file,
                       LogReaderOptions options) {
  auto reader = LogReader::open(posix(), dir.log_dir());
  REQUIRE(reader.ok());
  const std::uint64_t last = (*reader)->segment_first_seqs().back();
  write_bytes(segment_path(dir.log_dir(), last), last_file);

  ReadBack back = read_log(posix(), dir.log_dir(), options);
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  CHECK(back.end.torn_header);
  CHECK(back.end.next_seq == last);
  CHECK(back.end.segment_first_seq == last);
  const bool header_written =
      std::any_of(last_file.begin(),
                  last_file.begin() + std::min<std::size_t>(last_file.size(), kSegmentHeaderSize),
                  [](std::byte b) { return b != std::byte{0}; });
  const bool part_of_header = !last_file.empty() && last_file.size() < kSegmentHeaderSize;
  const bool cut =
      part_of_header || (last_file.size() < kSegmentSizeBytesMin && header_written);
  CHECK(back.end.cut_short == cut);
  if (cut) {
    CHECK(cut_short_status(back.end).message() ==
          "segment " + segment_file_name(last) + " offset 0: the segment's file is cut short (" +
              std::to_string(last_file.size()) +
              (part_of_header ? " bytes, shorter than its header"
                              : " bytes with a damaged header, shorter than any segment") +
              "): records after seq " + std::to_string(last - 1) + " may be lost");
  }
  if (options.from_seq == 1) check_records(back, 0, 1, last - 1, 0);

  auto writer = open_writer(posix(), dir.log_dir());
  append_records(*writer, 5, 5, 1);
  writer.reset();
  ReadBack after = read_log(posix(), dir.log_dir());
  REQUIRE_MESSAGE(after.status.ok(), after.status.to_string());
  check_records(after, 0, 1, last - 1, 0);
  check_records(after, last - 1, last, 5, 1);
  CHECK(!after.end.torn_header);
}

TEST_CASE("a torn header of the last segment is recreated by open") {
  TempDir dir;
  const std::vector<std::uint64_t> segments = make_segments(dir, 600);
  SUBCASE("empty file") { check_torn_header(dir, {}, {}); }
  SUBCASE("part of a header") {
    const auto pristine = read_bytes(segment_path(dir.log_dir(), segments.back()));
    check_torn_header(dir, std::vector<std::byte>(pristine.begin(), pristine.begin() + 30), {});
  }
  SUBCASE("a damaged header, the file cut to less than any segment") {
    auto pristine = read_bytes(segment_path(dir.log_dir(), segments.back()));
    pristine[kSegFirstSeqOffset] ^= std::byte{1};
    check_torn_header(dir, std::vector<std::byte>(pristine.begin(), pristine.begin() + 100), {});
  }
  SUBCASE("preallocated zeros") {
    check_torn_header(dir, std::vector<std::byte>(kSegmentSizeBytesMin, std::byte{0}), {});
  }
  SUBCASE("zeros of a preallocation emulated block by block, cut by a crash") {
    check_torn_header(dir, std::vector<std::byte>(4096, std::byte{0}), {});
  }
  SUBCASE("preallocated zeros, read from a seq inside that segment") {
    LogReaderOptions options;
    options.from_seq = segments.back();
    check_torn_header(dir, std::vector<std::byte>(kSegmentSizeBytesMin, std::byte{0}), options);
  }
}

TEST_CASE("a damaged header of the last segment with frames after it is corruption") {
  TempDir dir;
  const std::vector<std::uint64_t> segments = make_segments(dir, 600);
  const std::string path = segment_path(dir.log_dir(), segments.back());
  std::vector<std::byte> damaged = read_bytes(path);
  std::fill(damaged.begin(), damaged.begin() + kSegmentHeaderSize, std::byte{0});
  write_bytes(path, damaged);
  require_corrupt(read_log(posix(), dir.log_dir()), prefix(segments.back(), 0));
}

}  // namespace
}  // namespace tally::log::test
