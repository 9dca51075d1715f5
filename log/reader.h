// LogReader: iterates the records of a log directory in seq order, verifying
// every checksum and the chain, without copying payloads.
//
// Ending a scan (docs/log-format.md, "Recovery"):
//   - zeros where the next frame would start, with nothing valid after them
//     in the segment, are the clean end of the log;
//   - an invalid frame in the last segment that no valid frame follows is a
//     torn tail: the last write did not finish. next() returns false and
//     end().torn is set; LogWriter::open zeroes it before appending;
//   - a last segment whose header does not verify, with no valid frame after
//     it, is a torn header (a crash while creating it): end().torn_header is
//     set and LogWriter::open recreates that segment (on a full disk, the
//     first write after it does);
//   - an invalid frame followed by a valid one, a chain break (seq or
//     prev_checksum not the expected one), a damaged segment header, a gap
//     between segments (or a log not starting at seq 1), or a bad frame in
//     any segment but the last is corruption: next() returns a corrupt
//     Status whose message starts with "segment <file name> offset <byte
//     offset>: ", e.g. "segment 0000000000000001.seg offset 4160: ", and
//     then says why. Such a Status is sticky: next() keeps returning it.
//
// Thread safety: none; one thread uses a reader. The reader reads a segment
// with pread, a window of its bytes at a time, and maps the segment only to
// judge bytes after its frames that are not zeros (a torn tail, damage); a
// Record's payload stays valid until the next call to next().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "log/event.h"
#include "log/file.h"
#include "log/format.h"
#include "log/status.h"

namespace tally::log {

struct Record {
  std::uint64_t seq = 0;
  std::uint64_t checksum = 0;
  std::span<const std::byte> payload;  // 8-byte aligned
  std::uint64_t segment_first_seq = 0; // names the segment file
  std::uint64_t offset = 0;            // of the frame within its segment
};

// Where a scan of the whole log stopped; LogWriter::open continues from it.
struct LogEnd {
  std::uint64_t next_seq = 1;           // the seq the next record gets
  std::uint64_t last_checksum = kChainSeed;
  bool has_segment = false;             // false: the log is empty, no segment yet
  std::uint64_t segment_first_seq = 0;  // the last segment
  std::uint64_t segment_size_bytes = 0; // its preallocated size (0 when torn_header)
  std::uint64_t offset = 0;             // end of its valid frames
  bool torn = false;                    // a torn tail starts at offset
  std::uint64_t torn_end = 0;           // offset past the last nonzero byte of it
  // The last segment's header itself is torn; the segment holds no frames
  // and is named next_seq.
  bool torn_header = false;
  // The last segment's file is shorter than its header's size and its
  // frames (or a torn tail) run to the file's end, or (torn_header) it is
  // not empty but shorter than a header, or shorter than any segment with
  // header bytes written: it was cut short after it was made (the writer
  // preallocates the whole size before it writes the header), so
  // acknowledged records past `offset` may be lost.
  bool cut_short = false;
  std::uint64_t file_bytes = 0;         // the last segment's file size

  // How a cut_short torn_header segment was cut: inside its header, or
  // after a header was written (shorter than any segment).
  bool cut_inside_header() const { return torn_header && file_bytes < kSegmentHeaderSize; }
};

// A corrupt Status naming where a cut_short log ends and what it may have
// lost.
Status cut_short_status(const LogEnd& end);

struct LogReaderOptions {
  // Records with a smaller seq are verified but not returned; whole segments
  // before the one holding from_seq are skipped unread (so the chain into
  // the first segment read is taken from its header).
  std::uint64_t from_seq = 1;
  // Another process may be appending to the log as it is read (a tool
  // beside `tally serve`). A frame it is still writing can then read as
  // damaged with whole frames after it (the mapped segment shows the page
  // cache as the writer fills it), so such a frame in the last segment is
  // read again, for up to a quarter of a second, before it is corruption.
  bool writer_may_be_live = false;
};

// Decodes a record's payload into *event: corrupt, at the record's segment
// and offset, when it is not a valid event or the event's seq is not its
// frame's (a frame copied whole from elsewhere verifies on its own).
Status decode_record(EventDecoder& decoder, const Record& record, Event* event);

// Makes the records of the log in `dir` through `seq` durable, whoever
// wrote them: syncs each segment that may hold one (those beginning at or
// before seq), then the directory. For a process that reads beside a live
// writer and keeps what it read (`tally snapshot`): a writer with async
// durability may not have synced those records yet, and what the reader
// keeps must not outlive them in a power loss.
Status sync_log(FileSystem& fs, const std::string& dir, std::uint64_t seq);

// The header of segment `first_seq` of the log in `dir`, and the size of
// its file in *file_bytes when given; corrupt unless the header is that
// segment's. For a header's sizes and creation time (created_ns is
// informative: for estimates only).
Result<SegmentHeader> read_segment_header(FileSystem& fs, const std::string& dir,
                                          std::uint64_t first_seq,
                                          std::uint64_t* file_bytes = nullptr);

// The log's identity: the checksum of its first segment's header, which
// holds the time the log was created. A copy of the log (a backup, a
// restore) has the same; another log, all but certainly, another.
Result<std::uint64_t> read_log_id(FileSystem& fs, const std::string& dir);

class LogReader {
 public:
  // `dir` is the log directory (DATA/log). A missing or empty directory is
  // an empty log. Errors: io_error; corrupt for a misnamed segment file.
  static Result<std::unique_ptr<LogReader>> open(FileSystem& fs, const std::string& dir,
                                                 LogReaderOptions options = {});
  ~LogReader();

  // True with *record set; false at the end of the log (see end()).
  Result<bool> next(Record* record);

  // Valid after next() returned false.
  const LogEnd& end() const;

  // Names of the segment files, in seq order.
  const std::vector<std::uint64_t>& segment_first_seqs() const;
  // The segment being read (0 when there is none): after next() failed,
  // the one the failure lies in, as its Status names it.
  std::uint64_t segment_first_seq() const;

 private:
  struct Impl;
  explicit LogReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::log
