// Fixtures shared by the log/ unit tests: a temporary directory, payloads
// that name their seq, and helpers that write and read back whole logs.
#pragma once

#include <doctest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "log/file.h"
#include "log/format.h"
#include "log/reader.h"
#include "log/writer.h"
#include "tests/testing.h"

namespace tally::log::test {

// A fresh directory, removed with its contents at the end; the log goes in
// DIR/log.
class TempDir : public testing::TempDir {
 public:
  std::string log_dir() const { return sub("log"); }
};

// Payload sizes vary with the seq (8..960 bytes, multiples of 8), so frames
// land at irregular offsets.
std::size_t payload_size_for(std::uint64_t seq);
// Bytes that name `seq` and `generation`, so a test can tell a record written
// before a repair from one written after it.
std::vector<std::byte> payload_for(std::uint64_t seq, std::uint32_t generation = 0,
                                   std::size_t size_bytes = 0);

// Small segments and batches, so tests rotate often and allocate little.
LogWriterOptions small_options();

struct ReadBack {
  Status status;
  std::vector<Record> records;                   // payload views are dangling
  std::vector<std::vector<std::byte>> payloads;  // copies
  LogEnd end;
};
ReadBack read_log(FileSystem& fs, const std::string& dir, LogReaderOptions options = {});

// Scans `dir` and opens a writer after its end; REQUIREs success.
std::unique_ptr<LogWriter> open_writer(FileSystem& fs, const std::string& dir,
                                       LogWriterOptions options = small_options());

// Appends `count` records (payload_for(seq, generation)), writing a batch
// with sync every `group` records and at the end.
void append_records(LogWriter& writer, std::uint64_t count, std::size_t group,
                    std::uint32_t generation = 0);

// Checks that read-back records are seqs first..first+count-1 with the
// payloads of payload_for(seq, generation_of(seq)).
void check_records(const ReadBack& back, std::size_t from_index, std::uint64_t first_seq,
                   std::uint64_t count, std::uint32_t generation);

std::vector<std::byte> read_bytes(const std::string& path);
void write_bytes(const std::string& path, const std::vector<std::byte>& bytes);
std::string segment_path(const std::string& log_dir, std::uint64_t first_seq);

}  // namespace tally::log::test
