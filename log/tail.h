// LogTail: reads a live log's records as they are appended, from a given
// seq, up to a bound the caller knows is complete: the writer's committed
// seq (engine/ledger.h). It feeds the snapshot and history followers and the
// event feeds of `tally serve` without copying from the writer or rereading
// whole segments: it reads the segment it is in, from where it stopped, in
// windows of a few hundred kilobytes.
//
// Every record returned is verified like LogReader does (checksum, seq,
// chain to the previous record). Records at or below the bound must be
// there: anything else (zeros, a torn or damaged frame, a missing segment,
// a chain break) is corrupt, naming the segment and offset. Records past the
// bound are not looked at; the bytes after them may still be in flight.
//
// Thread safety: none; one thread uses a tail. Record payloads stay valid
// until the next call to next().
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "log/file.h"
#include "log/reader.h"
#include "log/status.h"

namespace tally::log {

// Where a tail stands: enough to resume() without rescanning a segment.
struct TailPosition {
  std::uint64_t next_seq = 1;
  std::uint64_t segment_first_seq = 1;  // the segment holding next_seq
  std::uint64_t offset = 0;             // of next_seq's frame in it; 0: before the header
  std::uint64_t prev_checksum = kChainSeed;
};

class LogTail {
 public:
  // Positions the tail at from_seq (>= 1), which must be at most the bound
  // of the first next() call plus one. The records before it in the segment
  // of record from_seq - 1 are read and verified on the way, so position()
  // gives that record's checksum at once, even when from_seq begins the
  // next segment. `dir` is the log directory (DATA/log).
  static Result<std::unique_ptr<LogTail>> open(FileSystem& fs, const std::string& dir,
                                               std::uint64_t from_seq);
  // Continues from a position an earlier tail of the same log reported.
  static Result<std::unique_ptr<LogTail>> resume(FileSystem& fs, const std::string& dir,
                                                 const TailPosition& position);
  ~LogTail();
  LogTail(const LogTail&) = delete;
  LogTail& operator=(const LogTail&) = delete;

  // The next record, if its seq is <= max_seq: true with *record set, false
  // when the next record is past max_seq. Damage (corrupt) is sticky. After
  // an io_error (a read that failed, a segment that could not be opened:
  // out of descriptors, say) the tail stands where it stood before the
  // call, and the call may be tried again.
  Result<bool> next(Record* record, std::uint64_t max_seq);

  TailPosition position() const;

 private:
  struct Impl;
  explicit LogTail(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::log
