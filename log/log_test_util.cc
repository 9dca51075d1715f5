#include "log/log_test_util.h"

namespace tally::log::test {

std::size_t payload_size_for(std::uint64_t seq) { return 8 * (1 + (seq * 7919) % 120); }

std::vector<std::byte> payload_for(std::uint64_t seq, std::uint32_t generation,
                                   std::size_t size_bytes) {
  if (size_bytes == 0) size_bytes = payload_size_for(seq);
  std::vector<std::byte> payload(size_bytes);
  std::uint64_t state = seq * 0x9E3779B97F4A7C15ull + generation + 1;
  for (std::size_t index = 0; index < size_bytes; index++) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    payload[index] = static_cast<std::byte>(state);
  }
  if (size_bytes >= sizeof seq) store_u64(payload.data(), seq);
  return payload;
}

LogWriterOptions small_options() {
  LogWriterOptions options;
  options.segment_size_bytes = kSegmentSizeBytesMin;
  options.batch_bytes_max = 2 * kSegmentSizeBytesMin;
  options.now_ns = [] { return std::int64_t{1'700'000'000'000'000'000}; };
  return options;
}

ReadBack read_log(FileSystem& fs, const std::string& dir, LogReaderOptions options) {
  ReadBack back;
  auto reader = LogReader::open(fs, dir, options);
  if (!reader) {
    back.status = reader.status();
    return back;
  }
  while (true) {
    Record record;
    auto more = (*reader)->next(&record);
    if (!more) {
      back.status = more.status();
      return back;
    }
    if (!*more) break;
    CHECK(reinterpret_cast<std::uintptr_t>(record.payload.data()) % 8 == 0);
    back.payloads.emplace_back(record.payload.begin(), record.payload.end());
    back.records.push_back(record);
  }
  back.end = (*reader)->end();
  return back;
}

std::unique_ptr<LogWriter> open_writer(FileSystem& fs, const std::string& dir,
                                       LogWriterOptions options) {
  ReadBack back = read_log(fs, dir);
  REQUIRE_MESSAGE(back.status.ok(), back.status.to_string());
  auto writer = LogWriter::open(fs, dir, back.end, options);
  REQUIRE_MESSAGE(writer.ok(), writer.status().to_string());
  return std::move(*writer);
}

void append_records(LogWriter& writer, std::uint64_t count, std::size_t group,
                    std::uint32_t generation) {
  std::size_t in_batch = 0;
  for (std::uint64_t index = 0; index < count; index++) {
    const std::uint64_t seq = writer.next_seq();
    const auto payload = payload_for(seq, generation);
    if (!writer.has_room(payload.size()) || in_batch == group) {
      REQUIRE(writer.write(writer.seal(), true).ok());
      in_batch = 0;
    }
    REQUIRE(writer.append(payload) == seq);
    in_batch++;
  }
  REQUIRE(writer.write(writer.seal(), true).ok());
}

void check_records(const ReadBack& back, std::size_t from_index, std::uint64_t first_seq,
                   std::uint64_t count, std::uint32_t generation) {
  REQUIRE(back.records.size() >= from_index + count);
  for (std::uint64_t index = 0; index < count; index++) {
    const std::uint64_t seq = first_seq + index;
    const std::size_t at = from_index + static_cast<std::size_t>(index);
    REQUIRE(back.records[at].seq == seq);
    REQUIRE(back.payloads[at] == payload_for(seq, generation));
  }
}

std::vector<std::byte> read_bytes(const std::string& path) {
  std::uint64_t size_bytes = 0;
  auto words = read_whole_file(posix_file_system(), path, &size_bytes);
  REQUIRE(words.ok());
  const auto* begin = reinterpret_cast<const std::byte*>(words->data());
  return std::vector<std::byte>(begin, begin + size_bytes);
}

void write_bytes(const std::string& path, const std::vector<std::byte>& bytes) {
  auto file = posix_file_system().open(path, FileSystem::Mode::create);
  REQUIRE(file.ok());
  REQUIRE((*file)->truncate(0).ok());
  REQUIRE((*file)->write_at(0, bytes).ok());
}

std::string segment_path(const std::string& log_dir, std::uint64_t first_seq) {
  return join_path(log_dir, segment_file_name(first_seq));
}

}  // namespace tally::log::test
