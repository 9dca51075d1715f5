// LogWriter: appends framed records to a log directory with group commit.
//
// Two sides, each used by one thread (they may be the same thread):
//   - the appending side frames records into the open batch in memory:
//     append(), has_room(), next_seq(), seal();
//   - the I/O side writes a sealed batch with one write per segment it
//     touches and, when asked, one fdatasync: write(), sync().
// The caller orders the two: seal() may be called again only after write()
// (or drop()) returned for the batch the previous seal() handed out. Two batch buffers
// are allocated at open and alternate, so appending never allocates.
//
// Segments are preallocated to segment_size_bytes and rotated when the next
// record does not fit; the old segment is synced before the new one is
// created, so a later segment's existence proves its predecessors complete;
// a new segment's size is synced before its header is written, and its
// header before any frame is. So a write() with sync that rotates costs four
// fdatasyncs, not one.
//
// Errors: a failed write or sync is sticky (a segment's file that cannot
// be created, or its directory opened, for want of descriptors is tried
// again first: LogWriterOptions::create_retry_max).
// The writer refuses everything after it (io_error), since the file's
// contents are then unknown; the owner reopens the log to go on.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "log/file.h"
#include "log/format.h"
#include "log/histogram.h"
#include "log/reader.h"
#include "log/status.h"

namespace tally::log {

// open() refuses (invalid) a segment size outside [kSegmentSizeBytesMin,
// kSegmentSizeBytesMax] or not a multiple of 8, and a batch that could not
// hold the largest record the segment size allows.
struct LogWriterOptions {
  // For segments this writer creates; the segment it continues keeps its own.
  std::uint64_t segment_size_bytes = kSegmentSizeBytesDefault;
  // Capacity of each of the two batch buffers.
  std::size_t batch_bytes_max = 8u << 20;
  // Clock for the informative creation time in segment headers.
  std::int64_t (*now_ns)() = nullptr;
  // Creating a segment's file, or opening its directory to sync the new
  // name, that fails for want of file descriptors or memory (in a process
  // whose sockets come and go, say) is tried again for up to this long
  // each, waiting 1 ms, then twice as long each time up to 256 ms: no
  // frame was written yet, so a passing shortage need not fail the writer
  // for good. The write waits meanwhile.
  std::chrono::milliseconds create_retry_max{5000};
};

class WriteBatch;

// Bucket bounds of LogWriterStats' histograms.
inline constexpr std::array<std::uint64_t, 13> kSyncBoundsNs = {
    50'000,     100'000,    250'000,    500'000,     1'000'000,   2'500'000,
    5'000'000, 10'000'000, 25'000'000, 50'000'000, 100'000'000, 250'000'000, 1'000'000'000};
inline constexpr std::array<std::uint64_t, 12> kWriteRecordsBounds = {
    1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};

struct LogWriterStats {
  std::uint64_t syncs = 0;         // fdatasync calls on segments (returned): sync_ns.count()
  std::uint64_t writes = 0;        // write calls
  std::uint64_t bytes_written = 0;
  std::uint64_t segments_created = 0;
  HistogramSnapshot sync_ns;        // how long each fdatasync took
  HistogramSnapshot write_records;  // records per write() of a batch: group commit sizes
};

class LogWriter {
 public:
  // Continues the log in `dir` from `end`, the result of a LogReader scan of
  // the same directory. Zeroes a torn tail first, then syncs the last
  // segment and the directory (the scan may have read frames of a crashed
  // writer that no sync made durable); creates the directory and the first
  // segment when the log is empty. A torn header's segment is made again,
  // or, where the disk has no room for it, removed: the first write then
  // makes it (or fails as writes on a full disk do).
  static Result<std::unique_ptr<LogWriter>> open(FileSystem& fs, const std::string& dir,
                                                 const LogEnd& end, LogWriterOptions options = {});
  ~LogWriter();

  // ---- appending side ----
  // The seq the next appended record gets.
  std::uint64_t next_seq() const;
  // The chain value after the last appended record (its checksum): what a
  // snapshot of the state after it records.
  std::uint64_t last_checksum() const;
  // Whether the open batch can take a record of payload_bytes.
  bool has_room(std::size_t payload_bytes) const;
  // Frames `payload` as record next_seq() into the open batch and returns its
  // seq. Preconditions: has_room(payload.size()), 0 < payload.size() <=
  // payload_bytes_max(segment size), payload.size() % 8 == 0.
  std::uint64_t append(std::span<const std::byte> payload);
  // True when nothing was appended since the last seal().
  bool batch_empty() const;
  // Hands the open batch to the I/O side and opens an empty one.
  WriteBatch* seal();

  // ---- I/O side ----
  // Writes a sealed batch and, when sync is true, makes it durable. When
  // not, syncs once 4 MiB of the segment are written and not yet synced.
  Status write(WriteBatch* batch, bool sync);
  // Hands a sealed batch back unwritten, in write()'s place: after a
  // failure, when what it holds must not reach the log (it was decided on
  // a state holding events that may never have).
  void drop(WriteBatch* batch);
  // fdatasync of the segment being written (for timed async durability).
  Status sync();
  // Snapshot of counters; safe from any thread.
  LogWriterStats stats() const;

 private:
  struct Impl;
  explicit LogWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::log
