// The log layer: format helpers, the POSIX file system, writing and reading
// logs, rotation, group commit, injected faults and the directory lock.
// Recovery from damage is in recovery_test.cc.
#include <doctest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "log/faulty_file.h"
#include "log/file.h"
#include "log/format.h"
#include "log/histogram.h"
#include "log/lock.h"
#include "log/log_test_util.h"
#include "log/reader.h"
#include "log/writer.h"

namespace tally::log::test {
namespace {

FileSystem& posix() { return posix_file_system(); }

TEST_CASE("a Result's value moves out of a temporary") {
  const auto make = [] { return Result<std::unique_ptr<int>>(std::make_unique<int>(7)); };
  const std::unique_ptr<int> taken = *make();  // would not compile as a copy
  REQUIRE(taken != nullptr);
  CHECK(*taken == 7);
}

TEST_CASE("segment file names are 16 digits and parse back") {
  CHECK(segment_file_name(1) == "0000000000000001.seg");
  CHECK(segment_file_name(kSeqMax) == "9999999999999999.seg");
  std::uint64_t seq = 0;
  CHECK(parse_segment_file_name("0000000001234567.seg", &seq));
  CHECK(seq == 1234567);
  CHECK(parse_segment_file_name(segment_file_name(987654321), &seq));
  CHECK(seq == 987654321);
  CHECK_FALSE(parse_segment_file_name("1.seg", &seq));
  CHECK_FALSE(parse_segment_file_name("000000000000000a.seg", &seq));
  CHECK_FALSE(parse_segment_file_name("0000000000000001.sex", &seq));
  CHECK_FALSE(parse_segment_file_name("00000000000000001.seg", &seq));
  CHECK_FALSE(parse_segment_file_name("0000000000000001.seg~", &seq));
}

TEST_CASE("frames and segment headers encode and verify") {
  const auto payload = payload_for(7, 0, 20);  // not a multiple of 8: padded
  std::vector<std::uint64_t> words(frame_size(payload.size()) / 8, ~0ull);
  auto* frame = reinterpret_cast<std::byte*>(words.data());
  const std::uint64_t checksum = encode_frame(frame, 7, 1234, payload);
  const FrameHeader header = load_frame_header(frame);
  CHECK(header.checksum == checksum);
  CHECK(header.length == 20);
  CHECK(header.flags == 0);
  CHECK(header.seq == 7);
  CHECK(header.prev_checksum == 1234);
  CHECK(frame_checksum(frame, 20) == checksum);
  for (std::size_t pad = kFrameHeaderSize + 20; pad < frame_size(20); pad++) {
    CHECK(frame[pad] == std::byte{0});
  }
  // The chain value is covered: the same frame after another predecessor
  // has another checksum.
  CHECK(encode_frame(frame, 7, 1235, payload) != checksum);

  SegmentHeader segment;
  segment.first_seq = 42;
  segment.prev_checksum = 99;
  segment.size_bytes = kSegmentSizeBytesMin;
  segment.created_ns = 5;
  std::array<std::byte, kSegmentHeaderSize> bytes{};
  encode_segment_header(segment, bytes);
  SegmentHeader decoded;
  CHECK(decode_segment_header(bytes, &decoded).empty());
  CHECK(decoded.first_seq == 42);
  CHECK(decoded.prev_checksum == 99);
  CHECK(decoded.size_bytes == kSegmentSizeBytesMin);
  CHECK(decoded.created_ns == 5);
  bytes[kSegFirstSeqOffset] ^= std::byte{1};
  CHECK(decode_segment_header(bytes, &decoded) == "segment header checksum mismatch");
}

// Builds a segment from the spec alone, so the reader is checked against
// docs/log-format.md rather than against the writer. Payload lengths need
// not be multiples of 8 in the format, though the writer only makes those.
std::vector<std::uint64_t> hand_built_segment(const std::vector<std::size_t>& lengths,
                                              std::vector<std::uint64_t>* offsets) {
  std::vector<std::uint64_t> words(kSegmentSizeBytesMin / 8, 0);
  auto* bytes = reinterpret_cast<std::byte*>(words.data());
  SegmentHeader header;
  header.first_seq = 1;
  header.size_bytes = kSegmentSizeBytesMin;
  encode_segment_header(header, std::span<std::byte, kSegmentHeaderSize>(bytes, kSegmentHeaderSize));
  std::uint64_t offset = kSegmentHeaderSize;
  std::uint64_t prev = kChainSeed;
  for (std::size_t index = 0; index < lengths.size(); index++) {
    offsets->push_back(offset);
    const auto payload = payload_for(index + 1, 0, lengths[index]);
    prev = encode_frame(bytes + offset, index + 1, prev, payload);
    offset += frame_size(lengths[index]);
  }
  return words;
}

TEST_CASE("a segment built by hand from the spec reads back; its padding is checked") {
  TempDir dir;
  REQUIRE(posix().make_dirs(dir.log_dir()).ok());
  const std::vector<std::size_t> lengths = {20, 8, 1, 13, 64};
  std::vector<std::uint64_t> offsets;
  std::vector<std::uint64_t> words = hand_built_segment(lengths, &offsets);
  const auto as_file = [&] {
    const auto* begin = reinterpret_cast<const std::byte*>(words.data());
    write_bytes(segment_path(dir.log_dir(), 1), std::vector<std::byte>(begin, begin + words.size() * 8));
  };
  as_file();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  REQUIRE(back.records.size() == lengths.size());
  for (std::size_t index = 0; index < lengths.size(); index++) {
    CHECK(back.records[index].offset == offsets[index]);
    CHECK(back.payloads[index] == payload_for(index + 1, 0, lengths[index]));
  }
  // A nonzero padding byte (not covered by the checksum) in record 4 of 5.
  auto* bytes = reinterpret_cast<std::byte*>(words.data());
  bytes[offsets[3] + kFrameHeaderSize + 13] = std::byte{1};
  as_file();
  back = read_log(posix(), dir.log_dir());
  CHECK(back.status.code() == ErrorCode::corrupt);
  CHECK(back.status.message() == "segment 0000000000000001.seg offset " + std::to_string(offsets[3]) +
                                     ": nonzero padding after the frame's payload, followed by a "
                                     "valid frame at offset " + std::to_string(offsets[4]) + " (seq 5)");
}

TEST_CASE("the POSIX file system") {
  TempDir dir;
  FileSystem& fs = posix();
  const std::string nested = join_path(dir.path(), "a/b/c");
  REQUIRE(fs.make_dirs(nested).ok());
  REQUIRE(fs.make_dirs(nested).ok());  // existing is fine
  // A symlink to nothing where a directory should be is said to be one.
  const std::string dangling = join_path(dir.path(), "dangling");
  REQUIRE(::symlink(join_path(dir.path(), "nothing").c_str(), dangling.c_str()) == 0);
  CHECK(fs.make_dirs(join_path(dangling, "d")).message() ==
        "mkdir " + dangling + ": a symlink to a path that does not exist");
  // A loop is not one: mkdir's own error names it.
  const std::string loop = join_path(dir.path(), "loop");
  REQUIRE(::symlink(loop.c_str(), loop.c_str()) == 0);
  const Status looped = fs.make_dirs(join_path(loop, "d"));
  CHECK(looped.code() == ErrorCode::io_error);
  CHECK(looped.message().find("does not exist") == std::string::npos);
  CHECK(looped.message().starts_with("mkdir " + loop));
  CHECK(join_path("x/", "y") == "x/y");
  CHECK(join_path("x", "y") == "x/y");

  for (const char* name : {"b", "a", "c"}) {
    write_bytes(join_path(nested, name), std::vector<std::byte>(3, std::byte{7}));
  }
  auto names = fs.list(nested);
  REQUIRE(names.ok());
  CHECK(*names == std::vector<std::string>{"a", "b", "c"});
  CHECK(fs.list(join_path(dir.path(), "missing")).code() == ErrorCode::not_found);
  CHECK(fs.open(join_path(dir.path(), "missing"), FileSystem::Mode::read_only).code() ==
        ErrorCode::not_found);

  auto file = fs.open(join_path(nested, "f"), FileSystem::Mode::create);
  REQUIRE(file.ok());
  const auto data = payload_for(1, 0, 4096);
  REQUIRE((*file)->write_at(100, data).ok());
  REQUIRE((*file)->sync().ok());
  CHECK(*(*file)->size() == 4196);
  std::vector<std::byte> back(4096);
  REQUIRE((*file)->read_at(100, back).ok());
  CHECK(back == data);
  const Status short_read = (*file)->read_at(4000, back);
  CHECK(short_read.code() == ErrorCode::io_error);
  CHECK(short_read.message().find(join_path(nested, "f")) != std::string::npos);
  REQUIRE((*file)->preallocate(10000).ok());
  CHECK(*(*file)->size() == 10000);
  REQUIRE((*file)->truncate(50).ok());
  CHECK(*(*file)->size() == 50);

  std::uint64_t size_bytes = 0;
  auto words = read_whole_file(fs, join_path(nested, "a"), &size_bytes);
  REQUIRE(words.ok());
  CHECK(size_bytes == 3);
  CHECK(words->size() == 1);
  CHECK((*words)[0] == 0x070707u);

  REQUIRE(fs.rename(join_path(nested, "a"), join_path(nested, "z")).ok());
  CHECK_FALSE(fs.exists(join_path(nested, "a")));
  CHECK(fs.exists(join_path(nested, "z")));
  REQUIRE(fs.remove(join_path(nested, "z")).ok());
  CHECK(fs.remove(join_path(nested, "z")).code() == ErrorCode::not_found);
  CHECK(fs.sync_dir(nested).ok());
}

TEST_CASE("a file view holds the file's bytes, zeros to the next word, mapped or copied") {
  TempDir dir;
  const std::string path = join_path(dir.path(), "f");
  std::vector<std::byte> data = payload_for(3, 0, 8192);
  data.resize(8189);  // ends inside a word
  write_bytes(path, data);
  FaultyFileSystem faulty(posix());  // its files copy: File::view
  for (FileSystem* fs : {&posix(), &posix_read_through_file_system(),
                         static_cast<FileSystem*>(&faulty)}) {
    CAPTURE(fs == &faulty);
    CAPTURE(fs == &posix_read_through_file_system());
    auto file = fs->open(path, FileSystem::Mode::read_only);
    REQUIRE(file.ok());
    const auto check = [&](std::uint64_t size_bytes, std::size_t expected) {
      CAPTURE(size_bytes);
      auto view = (*file)->view(size_bytes);
      REQUIRE(view.ok());
      const std::span<const std::byte> bytes = (*view)->bytes();
      REQUIRE(bytes.size() == expected);
      CHECK(reinterpret_cast<std::uintptr_t>(bytes.data()) % 8 == 0);
      CHECK(std::equal(bytes.begin(), bytes.end(), data.begin()));
      // Whole words may be read: past the view's end, zeros up to the word.
      for (std::size_t index = bytes.size(); index % 8 != 0; index++) {
        CHECK(bytes.data()[index] == std::byte{0});
      }
    };
    check(UINT64_MAX, data.size());  // at most the file
    check(data.size(), data.size());
    check(4096, 4096);
    check(4093, 4093);  // inside a word, before the end of the file
    check(0, 0);
    // A view outlives its file.
    auto view = (*file)->view(64);
    REQUIRE(view.ok());
    file->reset();
    CHECK(std::equal((*view)->bytes().begin(), (*view)->bytes().end(), data.begin()));
  }
  faulty.tear_next_write(0);
  auto writable = faulty.open(path, FileSystem::Mode::read_write);
  REQUIRE(writable.ok());
  CHECK((*writable)->write_at(0, data).code() == ErrorCode::io_error);
  CHECK((*writable)->view(64).code() == ErrorCode::io_error);  // a crashed process reads nothing
}

TEST_CASE("reads through a cancellable file system stop once cancelled, and read again once not") {
  TempDir dir;
  const std::string path = join_path(dir.path(), "f");
  write_bytes(path, payload_for(5, 0, 1 << 20));
  std::atomic<bool> cancelled{true};
  const std::unique_ptr<FileSystem> fs = make_posix_read_through_file_system(cancelled);
  auto file = fs->open(path, FileSystem::Mode::read_only);
  REQUIRE(file.ok());
  const auto cut = (*file)->view(UINT64_MAX);
  CHECK(cut.code() == ErrorCode::closed);
  CHECK(cut.status().message().find(path) != std::string::npos);
  std::vector<std::byte> some(4096);
  CHECK((*file)->read_at(0, some).code() == ErrorCode::closed);  // so does each read
  cancelled.store(false);
  auto whole = (*file)->view(UINT64_MAX);
  REQUIRE(whole.ok());
  CHECK((*whole)->bytes().size() == std::size_t{1} << 20);
  REQUIRE((*file)->read_at(0, some).ok());
  CHECK(std::equal(some.begin(), some.end(), (*whole)->bytes().begin()));
}

TEST_CASE("frames larger than a window read, and frames across its reads, read back whole") {
  // 4 MiB segments; payloads from 8 bytes to the largest a record may have,
  // so frames straddle the reader's 256 KiB reads and some are longer
  // than one, and segments end after frames of every size.
  TempDir dir;
  LogWriterOptions options = small_options();
  options.segment_size_bytes = std::uint64_t{4} << 20;
  options.batch_bytes_max = std::uint64_t{8} << 20;
  const std::vector<std::size_t> sizes = {8,       4096, 200'000, 300'000, 1'048'576,
                                          262'136, 16,   700'000, 1'000,   262'144};
  std::vector<std::vector<std::byte>> written;
  {
    auto writer = open_writer(posix(), dir.log_dir(), options);
    for (std::size_t round = 0; round < 6; round++) {
      for (const std::size_t size : sizes) {
        const std::uint64_t seq = writer->next_seq();
        written.push_back(payload_for(seq, 0, size));
        if (!writer->has_room(size)) REQUIRE(writer->write(writer->seal(), true).ok());
        REQUIRE(writer->append(written.back()) == seq);
      }
    }
    REQUIRE(writer->write(writer->seal(), true).ok());
  }
  auto reader = LogReader::open(posix(), dir.log_dir());
  REQUIRE(reader.ok());
  REQUIRE((*reader)->segment_first_seqs().size() > 3);
  Record record;
  std::size_t read = 0;
  for (;;) {
    auto more = (*reader)->next(&record);
    REQUIRE(more.ok());
    if (!*more) break;
    REQUIRE(read < written.size());
    CHECK(record.seq == read + 1);
    CHECK(reinterpret_cast<std::uintptr_t>(record.payload.data()) % 8 == 0);
    CHECK(std::equal(record.payload.begin(), record.payload.end(), written[read].begin(),
                     written[read].end()));
    read++;
  }
  CHECK(read == written.size());
  CHECK((*reader)->end().next_seq == written.size() + 1);
  CHECK_FALSE((*reader)->end().torn);
}

TEST_CASE("bytes far past the zeros after the last record are found, past a window's reads") {
  TempDir dir;
  LogWriterOptions options = small_options();
  options.segment_size_bytes = std::uint64_t{4} << 20;
  options.batch_bytes_max = std::uint64_t{8} << 20;
  {
    auto writer = open_writer(posix(), dir.log_dir(), options);
    append_records(*writer, 10, 10);
  }
  const ReadBack clean = read_log(posix(), dir.log_dir());
  REQUIRE(clean.status.ok());
  REQUIRE(clean.records.size() == 10);
  CHECK_FALSE(clean.end.torn);
  // Garbage 3 MiB into the segment: a torn tail there (nothing valid in
  // it), whose end the reader finds.
  const std::string path = segment_path(dir.log_dir(), 1);
  std::vector<std::byte> bytes = read_bytes(path);
  const std::size_t at = std::size_t{3} << 20;
  for (std::size_t index = 0; index < 13; index++) bytes[at + index] = std::byte{0x5a};
  write_bytes(path, bytes);
  const ReadBack torn = read_log(posix(), dir.log_dir());
  REQUIRE(torn.status.ok());
  CHECK(torn.records.size() == 10);
  CHECK(torn.end.offset == clean.end.offset);
  CHECK(torn.end.torn);
  CHECK(torn.end.torn_end == at + 13);
}

TEST_CASE("an empty log, then its first segment") {
  TempDir dir;
  ReadBack empty = read_log(posix(), dir.log_dir());
  REQUIRE(empty.status.ok());
  CHECK(empty.records.empty());
  CHECK_FALSE(empty.end.has_segment);
  CHECK(empty.end.next_seq == 1);
  CHECK(empty.end.last_checksum == kChainSeed);

  auto writer = LogWriter::open(posix(), dir.log_dir(), empty.end, small_options());
  REQUIRE(writer.ok());
  CHECK((*writer)->next_seq() == 1);
  CHECK((*writer)->batch_empty());
  CHECK(posix().exists(segment_path(dir.log_dir(), 1)));
  ReadBack fresh = read_log(posix(), dir.log_dir());
  REQUIRE(fresh.status.ok());
  CHECK(fresh.records.empty());
  CHECK(fresh.end.has_segment);
  CHECK(fresh.end.offset == kSegmentHeaderSize);
  CHECK(fresh.end.segment_size_bytes == kSegmentSizeBytesMin);
  CHECK_FALSE(fresh.end.torn);
}

TEST_CASE("records round-trip across many group writes and a reopen") {
  TempDir dir;
  LogWriterOptions options = small_options();
  options.segment_size_bytes = 8ull << 20;  // one segment
  options.batch_bytes_max = 2u << 20;
  {
    auto writer = open_writer(posix(), dir.log_dir(), options);
    append_records(*writer, 1000, 50);
    CHECK(writer->next_seq() == 1001);
  }
  ReadBack first = read_log(posix(), dir.log_dir());
  REQUIRE(first.status.ok());
  REQUIRE(first.records.size() == 1000);
  check_records(first, 0, 1, 1000, 0);
  std::uint64_t offset = kSegmentHeaderSize;
  for (const Record& record : first.records) {
    CHECK(record.segment_first_seq == 1);
    CHECK(record.offset == offset);
    offset += frame_size(record.payload.size());
  }
  CHECK(first.end.offset == offset);
  CHECK(first.end.next_seq == 1001);
  CHECK(first.end.last_checksum == first.records.back().checksum);

  {
    auto writer = open_writer(posix(), dir.log_dir(), options);
    CHECK(writer->next_seq() == 1001);
    append_records(*writer, 500, 7, 1);
  }
  ReadBack all = read_log(posix(), dir.log_dir());
  REQUIRE(all.status.ok());
  REQUIRE(all.records.size() == 1500);
  check_records(all, 0, 1, 1000, 0);
  check_records(all, 1000, 1001, 500, 1);
}

TEST_CASE("segments rotate when full, and every record reads back") {
  TempDir dir;
  std::uint64_t created = 0;
  {
    auto writer = open_writer(posix(), dir.log_dir());
    append_records(*writer, 3000, 37);
    // A record as large as a segment allows starts a segment of its own.
    const auto big = payload_for(writer->next_seq(), 0, payload_bytes_max(kSegmentSizeBytesMin));
    CHECK(frame_size(big.size()) == kSegmentSizeBytesMin - kSegmentHeaderSize);
    REQUIRE(writer->append(big) == 3001);
    REQUIRE(writer->write(writer->seal(), true).ok());
    created = writer->stats().segments_created;
  }
  auto reader = LogReader::open(posix(), dir.log_dir());
  REQUIRE(reader.ok());
  const std::vector<std::uint64_t> segments = (*reader)->segment_first_seqs();
  CHECK(segments.size() > 10);
  CHECK(created == segments.size());
  CHECK(segments.back() == 3001);

  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  REQUIRE(back.records.size() == 3001);
  check_records(back, 0, 1, 3000, 0);
  // Each segment is named by its first record, and records fill segments in
  // order.
  std::size_t segment_index = 0;
  for (const Record& record : back.records) {
    if (segment_index + 1 < segments.size() && record.seq == segments[segment_index + 1]) {
      segment_index++;
      CHECK(record.offset == kSegmentHeaderSize);
    }
    CHECK(record.segment_first_seq == segments[segment_index]);
  }

  {
    auto writer = open_writer(posix(), dir.log_dir());
    append_records(*writer, 500, 100, 1);
  }
  ReadBack all = read_log(posix(), dir.log_dir());
  REQUIRE(all.status.ok());
  REQUIRE(all.records.size() == 3501);
  check_records(all, 0, 1, 3000, 0);
  check_records(all, 3001, 3002, 500, 1);
}

TEST_CASE("from_seq skips earlier segments and records") {
  TempDir dir;
  {
    auto writer = open_writer(posix(), dir.log_dir());
    append_records(*writer, 1200, 40);
  }
  ReadBack all = read_log(posix(), dir.log_dir());
  REQUIRE(all.status.ok());
  for (std::uint64_t from : {1ull, 2ull, 500ull, 1199ull, 1200ull}) {
    LogReaderOptions options;
    options.from_seq = from;
    ReadBack back = read_log(posix(), dir.log_dir(), options);
    REQUIRE(back.status.ok());
    REQUIRE(back.records.size() == 1200 - from + 1);
    check_records(back, 0, from, 1200 - from + 1, 0);
    CHECK(back.end.next_seq == all.end.next_seq);
    CHECK(back.end.last_checksum == all.end.last_checksum);
    CHECK(back.end.offset == all.end.offset);
  }
  LogReaderOptions past;
  past.from_seq = 5000;
  ReadBack none = read_log(posix(), dir.log_dir(), past);
  REQUIRE(none.status.ok());
  CHECK(none.records.empty());
  CHECK(none.end.next_seq == 1201);
}

TEST_CASE("the two batch buffers alternate: append while the other is written") {
  TempDir dir;
  auto writer = open_writer(posix(), dir.log_dir());
  for (std::uint64_t seq = 1; seq <= 10; seq++) writer->append(payload_for(seq));
  WriteBatch* first = writer->seal();
  CHECK(writer->batch_empty());
  for (std::uint64_t seq = 11; seq <= 20; seq++) writer->append(payload_for(seq));
  REQUIRE(writer->write(first, false).ok());
  WriteBatch* second = writer->seal();
  CHECK(second != first);
  REQUIRE(writer->write(second, true).ok());
  WriteBatch* third = writer->seal();  // empty: writing it only syncs
  REQUIRE(writer->write(third, true).ok());
  writer.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  REQUIRE(back.records.size() == 20);
  check_records(back, 0, 1, 20, 0);
}

TEST_CASE("a histogram counts each value in the first bucket whose bound is >= it") {
  static constexpr std::array<std::uint64_t, 3> kBounds = {1, 10, 100};
  Histogram<kBounds> histogram;
  for (const std::uint64_t value : {0, 1, 2, 10, 11, 100, 101, 5000}) histogram.observe(value);
  const HistogramSnapshot snapshot = histogram.snapshot();
  CHECK(snapshot.upper_bounds == std::vector<std::uint64_t>{1, 10, 100});
  CHECK(snapshot.counts == std::vector<std::uint64_t>{2, 2, 2, 2});
  CHECK(snapshot.count() == 8);
  CHECK(snapshot.sum == 0 + 1 + 2 + 10 + 11 + 100 + 101 + 5000);
}

TEST_CASE("the sync count and the sync histogram agree while a sync is under way") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  writer->append(payload_for(1));
  fs.hold_next_sync();
  auto written =
      std::async(std::launch::async, [&] { return writer->write(writer->seal(), true); });
  REQUIRE(fs.wait_until_sync_held(std::chrono::seconds(30)));
  const LogWriterStats during = writer->stats();
  CHECK(during.syncs == during.sync_ns.count());
  fs.release_sync();
  REQUIRE(written.get().ok());
  const LogWriterStats after = writer->stats();
  CHECK(after.syncs == during.syncs + 1);
  CHECK(after.syncs == after.sync_ns.count());
}

TEST_CASE("group commit: one write and one sync for many appends") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  fs.reset_counters();
  const LogWriterStats before = writer->stats();
  std::uint64_t bytes = 0;
  for (std::uint64_t seq = 1; seq <= 100; seq++) {
    const auto payload = payload_for(seq);
    bytes += frame_size(payload.size());
    writer->append(payload);
  }
  REQUIRE(writer->write(writer->seal(), true).ok());
  CHECK(fs.syncs() == 1);
  CHECK(fs.writes() == 1);
  CHECK(fs.bytes_written() == bytes);
  const LogWriterStats after = writer->stats();
  CHECK(after.syncs - before.syncs == 1);
  CHECK(after.writes - before.writes == 1);
  CHECK(after.bytes_written - before.bytes_written == bytes);
  CHECK(after.sync_ns.count() - before.sync_ns.count() == 1);
  CHECK(after.write_records.count() - before.write_records.count() == 1);
  CHECK(after.write_records.sum - before.write_records.sum == 100);

  // Without sync, nothing is synced until sync() is asked for.
  writer->append(payload_for(101));
  REQUIRE(writer->write(writer->seal(), false).ok());
  CHECK(fs.syncs() == 1);
  REQUIRE(writer->sync().ok());
  CHECK(fs.syncs() == 2);
}

TEST_CASE("unsynced writes are synced every 4 MiB") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir(), LogWriterOptions{});
  fs.reset_counters();
  constexpr std::size_t kPayloadBytes = 64 << 10;
  constexpr int kFramesPerBatch = 16;  // a little over 1 MiB a batch
  const std::uint64_t batch_bytes = kFramesPerBatch * frame_size(kPayloadBytes);
  constexpr std::uint64_t kUnsyncedBytesMax = std::uint64_t{4} << 20;
  REQUIRE(3 * batch_bytes < kUnsyncedBytesMax);
  REQUIRE(4 * batch_bytes >= kUnsyncedBytesMax);
  const auto write_batches = [&](int batches, bool sync) {
    for (int batch = 0; batch < batches; batch++) {
      for (int frame = 0; frame < kFramesPerBatch; frame++) {
        writer->append(payload_for(writer->next_seq(), 0, kPayloadBytes));
      }
      REQUIRE(writer->write(writer->seal(), sync).ok());
    }
  };
  write_batches(8, true);
  CHECK(fs.syncs() == 8);  // one a batch
  write_batches(3, false);  // under 4 MiB
  CHECK(fs.syncs() == 8);
  write_batches(1, false);  // past it: the four batches at once
  CHECK(fs.syncs() == 9);
  write_batches(4, false);
  CHECK(fs.syncs() == 10);
  // A sync covers what was written before it: the count starts again.
  write_batches(2, false);
  REQUIRE(writer->sync().ok());
  CHECK(fs.syncs() == 11);
  write_batches(3, false);
  CHECK(fs.syncs() == 11);
  write_batches(1, false);
  CHECK(fs.syncs() == 12);
  // Reopened, the log counts from its end, which the open synced.
  writer.reset();
  writer = open_writer(fs, dir.log_dir(), LogWriterOptions{});
  const std::uint64_t after_open = fs.syncs();
  write_batches(3, false);
  CHECK(fs.syncs() == after_open);
  write_batches(1, false);
  CHECK(fs.syncs() == after_open + 1);
  writer.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  CHECK(back.records.size() == 26 * kFramesPerBatch);

  // That sync failing fails the writer, as any failed sync does: what it
  // wrote may not be on the disk.
  writer = open_writer(fs, dir.log_dir(), LogWriterOptions{});
  write_batches(3, false);
  fs.fail_sync();
  for (int frame = 0; frame < kFramesPerBatch; frame++) {
    writer->append(payload_for(writer->next_seq(), 0, kPayloadBytes));
  }
  CHECK(writer->write(writer->seal(), false).code() == ErrorCode::io_error);
  writer->append(payload_for(writer->next_seq()));
  CHECK(writer->write(writer->seal(), false).code() == ErrorCode::io_error);
}

TEST_CASE("a reopened log is synced before it goes on: a crashed writer may not have") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  {
    auto writer = open_writer(fs, dir.log_dir());
    writer->append(payload_for(1));
    REQUIRE(writer->write(writer->seal(), /*sync=*/false).ok());
  }  // gone without a sync, as a crashed writer is
  fs.reset_counters();
  // The scan reads the record from the page cache; the open makes it durable
  // before anyone can take it for so, and the segment's name with it.
  auto writer = open_writer(fs, dir.log_dir());
  CHECK(writer->next_seq() == 2);
  CHECK(fs.syncs() == 1);
  CHECK(fs.dir_syncs() == 1);
  CHECK(fs.writes() == 0);
}

TEST_CASE("sync_log syncs each segment that may hold a record through a seq, and the dir") {
  TempDir dir;
  {
    auto writer = open_writer(posix(), dir.log_dir());
    append_records(*writer, 3000, 37);
  }
  auto reader = LogReader::open(posix(), dir.log_dir());
  REQUIRE(reader.ok());
  const std::vector<std::uint64_t> segments = (*reader)->segment_first_seqs();
  REQUIRE(segments.size() > 3);
  FaultyFileSystem fs(posix());
  // The third segment's first record, then its last: the same three segments.
  for (const std::uint64_t seq : {segments[2], segments[3] - 1}) {
    fs.reset_counters();
    REQUIRE(sync_log(fs, dir.log_dir(), seq).ok());
    CHECK(fs.syncs() == 3);
    CHECK(fs.dir_syncs() == 1);
  }
  fs.reset_counters();
  REQUIRE(sync_log(fs, dir.log_dir(), 3000).ok());
  CHECK(fs.syncs() == segments.size());
  CHECK(fs.writes() == 0);
  CHECK(sync_log(fs, dir.sub("none"), 1).code() == ErrorCode::not_found);
}

TEST_CASE("a batch that crosses into a new segment syncs the old one before creating it") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  append_records(*writer, 100, 100);  // fills most of the first segment
  fs.reset_counters();
  const std::uint64_t first_new = writer->next_seq();
  for (int index = 0; index < 100; index++) writer->append(payload_for(writer->next_seq()));
  REQUIRE(writer->write(writer->seal(), true).ok());
  // old segment, new file's size, new header, the batch; and the new name.
  CHECK(fs.syncs() == 4);
  CHECK(fs.dir_syncs() == 1);
  CHECK(writer->stats().segments_created == 2);
  writer.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  CHECK(back.records.size() == 200);
  CHECK(back.records.back().segment_first_seq > first_new);
}

TEST_CASE("a failed sync is sticky until the log is reopened") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  append_records(*writer, 10, 10);
  fs.fail_sync();
  writer->append(payload_for(11));
  const Status failed = writer->write(writer->seal(), true);
  CHECK(failed.code() == ErrorCode::io_error);
  // The disk works again, but the writer does not trust its file any more.
  writer->append(payload_for(12));
  CHECK(writer->write(writer->seal(), false).code() == ErrorCode::io_error);
  CHECK(writer->sync().code() == ErrorCode::io_error);
  writer->append(payload_for(13));
  CHECK(writer->write(writer->seal(), true).code() == ErrorCode::io_error);
  writer.reset();

  auto reopened = open_writer(fs, dir.log_dir());
  const std::uint64_t next = reopened->next_seq();
  CHECK(next >= 11);  // record 11 reached the file; whether it survives a crash is unknown
  append_records(*reopened, 5, 5, 1);
  reopened.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  check_records(back, 0, 1, 10, 0);
  check_records(back, static_cast<std::size_t>(next - 1), next, 5, 1);
}

TEST_CASE("a full disk fails the write; reopening repairs the partial frame") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  append_records(*writer, 10, 10);
  fs.fail_writes_after_bytes(100);
  for (std::uint64_t seq = 11; seq <= 20; seq++) writer->append(payload_for(seq));
  const Status failed = writer->write(writer->seal(), true);
  CHECK(failed.code() == ErrorCode::io_error);
  CHECK(failed.message().find("No space left on device") != std::string::npos);
  writer.reset();
  fs.disarm();

  ReadBack torn = read_log(posix(), dir.log_dir());
  REQUIRE(torn.status.ok());
  auto reopened = open_writer(posix(), dir.log_dir());
  const std::uint64_t next = reopened->next_seq();
  CHECK(next == torn.records.size() + 1);
  append_records(*reopened, 5, 5, 1);
  reopened.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  check_records(back, 0, 1, next - 1, 0);
  check_records(back, static_cast<std::size_t>(next - 1), next, 5, 1);
  CHECK_FALSE(back.end.torn);
}

TEST_CASE("a torn segment header on a disk still full is made again by the first write") {
  TempDir dir;
  {
    auto writer = open_writer(posix(), dir.log_dir());
    append_records(*writer, 10, 10);
  }
  // A crash as the next segment was made leaves its file empty.
  const std::string path = join_path(dir.log_dir(), segment_file_name(11));
  write_bytes(path, {});
  FaultyFileSystem fs(posix());
  fs.fail_writes_after_bytes(0);
  // The open does not need the segment: the log ends before it, and the
  // segment is no longer there.
  auto writer = open_writer(fs, dir.log_dir());
  CHECK(writer->next_seq() == 11);
  CHECK_FALSE(posix().exists(path));
  REQUIRE(writer->sync().ok());  // nothing to sync
  // The first write needs it, and fails as any write on a full disk does.
  writer->append(payload_for(11));
  const Status failed = writer->write(writer->seal(), true);
  CHECK(failed.code() == ErrorCode::io_error);
  CHECK(failed.message().find("preallocate") != std::string::npos);
  CHECK_FALSE(posix().exists(path));
  writer.reset();

  // With room, a reopened writer goes on from seq 11.
  fs.disarm();
  writer = open_writer(fs, dir.log_dir());
  append_records(*writer, 5, 5, 1);
  writer.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  check_records(back, 0, 1, 10, 0);
  check_records(back, 10, 11, 5, 1);
}

TEST_CASE("a segment whose preallocation finds the disk full is removed again") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  append_records(*writer, 10, 10);
  // A record as large as a segment allows starts a segment of its own.
  const std::uint64_t next = writer->next_seq();
  const std::string path = join_path(dir.log_dir(), segment_file_name(next));
  fs.fail_writes_after_bytes(0);
  REQUIRE(writer->append(payload_for(next, 0, payload_bytes_max(kSegmentSizeBytesMin))) == next);
  const Status failed = writer->write(writer->seal(), true);
  CHECK(failed.message().find("preallocate") != std::string::npos);
  CHECK_FALSE(posix().exists(path));
  writer.reset();
  fs.disarm();

  // The log ends where it did, and a reopened writer makes the segment.
  ReadBack back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  check_records(back, 0, 1, 10, 0);
  auto reopened = open_writer(posix(), dir.log_dir());
  CHECK(reopened->next_seq() == next);
  append_records(*reopened, 5, 5, 1);
  reopened.reset();
  back = read_log(posix(), dir.log_dir());
  REQUIRE(back.status.ok());
  check_records(back, 10, next, 5, 1);
}

TEST_CASE("a segment's file that cannot be created for want of descriptors is tried again") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  LogWriterOptions options = small_options();
  options.create_retry_max = std::chrono::milliseconds(200);
  auto writer = open_writer(fs, dir.log_dir(), options);
  append_records(*writer, 10, 10);
  // A record as large as a segment allows starts a segment of its own.
  const auto segment_record = [&] {
    const std::uint64_t seq = writer->next_seq();
    REQUIRE(writer->append(payload_for(seq, 0, payload_bytes_max(kSegmentSizeBytesMin))) == seq);
    return seq;
  };
  SUBCASE("out of descriptors for a few tries: the write goes through") {
    fs.fail_creates(3);
    fs.fail_dir_syncs(3);  // and then to sync the new name
    const std::uint64_t seq = segment_record();
    REQUIRE(writer->write(writer->seal(), true).ok());
    CHECK(writer->stats().segments_created == 2);
    append_records(*writer, 5, 5);
    writer.reset();
    ReadBack back = read_log(posix(), dir.log_dir());
    REQUIRE(back.status.ok());
    check_records(back, 0, 1, 10, 0);
    CHECK(back.records[10].seq == seq);
    CHECK(back.records.size() == 16);
  }
  SUBCASE("out of them for longer than the retries last: the write fails, and sticks") {
    fs.fail_creates(FaultyFileSystem::kUntilDisarmed);
    const std::uint64_t seq = segment_record();
    const Status failed = writer->write(writer->seal(), true);
    CHECK(failed.code() == ErrorCode::io_error);
    CHECK(failed.message().find("Too many open files") != std::string::npos);
    fs.disarm();
    writer->append(payload_for(writer->next_seq()));
    CHECK(writer->write(writer->seal(), true).code() == ErrorCode::io_error);
    writer.reset();
    // Nothing of the record was written: a reopened writer makes the segment.
    auto reopened = open_writer(posix(), dir.log_dir());
    CHECK(reopened->next_seq() == seq);
  }
  SUBCASE("out of them to sync the directory for longer: the write fails, the segment goes") {
    fs.fail_dir_syncs(FaultyFileSystem::kUntilDisarmed);
    const std::uint64_t seq = segment_record();
    const Status failed = writer->write(writer->seal(), true);
    CHECK(failed.code() == ErrorCode::io_error);
    CHECK(failed.message().find("open directory") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(segment_path(dir.log_dir(), seq)));  // removed again
    fs.disarm();
    writer.reset();
    auto reopened = open_writer(posix(), dir.log_dir());
    CHECK(reopened->next_seq() == seq);
  }
  SUBCASE("refused: the write fails at once, though a second try would succeed") {
    fs.fail_creates(1, EACCES);
    segment_record();
    const Status failed = writer->write(writer->seal(), true);
    CHECK(failed.code() == ErrorCode::io_error);
    CHECK(failed.message().find("Permission denied") != std::string::npos);
  }
}

TEST_CASE("a torn batch write and a crash: the complete frames survive, the rest is repaired") {
  // Frame sizes of records 11..20, to know which frames a tear leaves whole.
  std::vector<std::size_t> frame_bytes;
  for (std::uint64_t seq = 11; seq <= 20; seq++) frame_bytes.push_back(frame_size(payload_size_for(seq)));
  for (std::uint64_t keep : {0ull, 1ull, 31ull, 32ull, 200ull, 1000ull, 2000ull, 4000ull}) {
    INFO("keep " << keep << " bytes");
    TempDir dir;
    FaultyFileSystem fs(posix());
    auto writer = open_writer(fs, dir.log_dir());
    append_records(*writer, 10, 10);
    fs.tear_next_write(keep);
    for (std::uint64_t seq = 11; seq <= 20; seq++) writer->append(payload_for(seq));
    CHECK(writer->write(writer->seal(), true).code() == ErrorCode::io_error);
    CHECK(fs.crashed());
    writer.reset();

    std::size_t whole = 0;
    for (std::uint64_t sum = 0; whole < frame_bytes.size() && sum + frame_bytes[whole] <= keep; whole++) {
      sum += frame_bytes[whole];
    }
    ReadBack torn = read_log(posix(), dir.log_dir());
    REQUIRE(torn.status.ok());
    REQUIRE(torn.records.size() == 10 + whole);
    check_records(torn, 0, 1, 10 + whole, 0);
    auto reopened = open_writer(posix(), dir.log_dir());
    append_records(*reopened, 3, 3, 1);
    reopened.reset();
    ReadBack back = read_log(posix(), dir.log_dir());
    REQUIRE(back.status.ok());
    check_records(back, 0, 1, 10 + whole, 0);
    check_records(back, 10 + whole, 11 + whole, 3, 1);
  }
}

TEST_CASE("a bit flipped on its way to disk is caught on read") {
  TempDir dir;
  FaultyFileSystem fs(posix());
  auto writer = open_writer(fs, dir.log_dir());
  std::uint64_t third_offset = kSegmentHeaderSize;
  for (std::uint64_t seq = 1; seq <= 2; seq++) third_offset += frame_size(payload_size_for(seq));
  // Inside the payload of the third record of the batch.
  fs.flip_bit_in_next_write((third_offset - kSegmentHeaderSize + kFrameHeaderSize + 5) * 8 + 3);
  for (std::uint64_t seq = 1; seq <= 6; seq++) writer->append(payload_for(seq));
  REQUIRE(writer->write(writer->seal(), true).ok());
  writer.reset();
  ReadBack back = read_log(posix(), dir.log_dir());
  CHECK(back.status.code() == ErrorCode::corrupt);
  CHECK(back.status.message().rfind("segment 0000000000000001.seg offset " +
                                    std::to_string(third_offset) + ": frame checksum mismatch", 0) == 0);
  CHECK(back.records.size() == 2);
}

TEST_CASE("the writer rejects options it cannot honour") {
  TempDir dir;
  LogWriterOptions options = small_options();
  options.segment_size_bytes = kSegmentSizeBytesMin - 8;
  CHECK(LogWriter::open(posix(), dir.log_dir(), LogEnd{}, options).code() == ErrorCode::invalid);
  options = small_options();
  options.batch_bytes_max = 4096;  // the largest record would never fit
  CHECK(LogWriter::open(posix(), dir.log_dir(), LogEnd{}, options).code() == ErrorCode::invalid);
}

// In a child process: tries to take the lock and reports by exit code.
// 0: refused as expected, naming the directory and `holder`; 1: acquired.
int child_lock_attempt(const std::string& data_dir, pid_t holder) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto lock = DirLock::acquire(data_dir);
    int code = 3;
    if (lock.ok()) {
      code = 1;
    } else if (lock.code() == ErrorCode::locked &&
               lock.status().message().find(data_dir) != std::string::npos &&
               lock.status().message().find("pid " + std::to_string(holder)) != std::string::npos) {
      code = 0;
    } else {
      code = 2;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

TEST_CASE("a second process cannot take the data directory's lock") {
  TempDir dir;
  const std::string data_dir = join_path(dir.path(), "data");  // made by acquire
  auto lock = DirLock::acquire(data_dir);
  REQUIRE_MESSAGE(lock.ok(), lock.status().to_string());
  CHECK(child_lock_attempt(data_dir, ::getpid()) == 0);
  // Within the process too: a second acquire is refused, and says whose.
  const auto again = DirLock::acquire(data_dir);
  CHECK(again.code() == ErrorCode::locked);
  CHECK(again.status().message().find("locked by this process") != std::string::npos);
  // Named absolute however it was spelled, so that every tool names it alike.
  const std::string relative = std::filesystem::relative(data_dir).string();
  REQUIRE(relative.front() != '/');
  const auto spelled = DirLock::acquire(relative);
  // Both the relative path and the working directory are free of links.
  const std::string named = std::filesystem::weakly_canonical(data_dir).string();
  CHECK(spelled.status().message().find("data directory " + named + " is locked") == 0);
  lock.value().reset();  // releases it
  CHECK(child_lock_attempt(data_dir, ::getpid()) == 1);
  CHECK(DirLock::acquire(data_dir).ok());
}

TEST_CASE("a LOCK file removed or replaced while its holder runs lets no second writer in") {
  TempDir dir;
  const std::string data_dir = join_path(dir.path(), "data");
  auto lock = DirLock::acquire(data_dir);
  REQUIRE(lock.ok());
  const std::string lock_path = join_path(data_dir, "LOCK");
  for (const bool replaced : {false, true}) {
    CAPTURE(replaced);
    REQUIRE(::unlink(lock_path.c_str()) == 0);
    if (replaced) {
      const int fd = ::open(lock_path.c_str(), O_CREAT | O_WRONLY, 0644);
      REQUIRE(fd >= 0);
      ::close(fd);
    }
    auto second = DirLock::acquire(data_dir);
    REQUIRE(second.code() == ErrorCode::locked);
    CHECK(second.status().message().find("removed or replaced") != std::string::npos);
  }
  lock.value().reset();
  CHECK(DirLock::acquire(data_dir).ok());
}

TEST_CASE("readers that share the data directory keep writers out, and a writer keeps them out") {
  TempDir dir;
  const std::string data_dir = join_path(dir.path(), "data");
  REQUIRE(posix_file_system().make_dirs(data_dir).ok());
  const auto shared = [&] { return DirFlock::acquire(data_dir, DirFlock::Kind::shared); };
  auto first = shared();
  auto second = shared();
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  const auto writer = DirLock::acquire(data_dir);
  REQUIRE(writer.code() == ErrorCode::locked);
  CHECK(writer.status().message().find("a reader without write access") != std::string::npos);
  CHECK(DirFlock::acquire(data_dir, DirFlock::Kind::exclusive).code() == ErrorCode::locked);
  first.value().reset();
  CHECK(DirLock::acquire(data_dir).code() == ErrorCode::locked);  // the second still reads
  second.value().reset();
  auto lock = DirLock::acquire(data_dir);
  REQUIRE(lock.ok());
  const auto reader = shared();
  REQUIRE(reader.code() == ErrorCode::locked);
  CHECK(reader.status().message() == data_dir + " is locked by another process");
  lock.value().reset();
  auto exclusive = DirFlock::acquire(data_dir, DirFlock::Kind::exclusive);
  REQUIRE(exclusive.ok());
  CHECK(shared().code() == ErrorCode::locked);
  exclusive.value().reset();
  CHECK(shared().ok());
}

}  // namespace
}  // namespace tally::log::test
