#include "log/tail.h"

#include <algorithm>
#include <vector>

#include "log/frame_check.h"

namespace tally::log {

namespace {

// Bytes read per window; a frame larger than this gets a window of its own.
constexpr std::size_t kWindowBytes = 256 * 1024;

}  // namespace

struct LogTail::Impl {
  FileSystem& fs;
  std::string dir;

  // The segment being read; file == nullptr until it is opened.
  std::unique_ptr<File> file;
  std::uint64_t segment_first_seq = 1;
  std::uint64_t data_end = 0;  // frames end by here: the segment's declared size
  std::uint32_t payload_max = 0;

  // Bytes [window_begin, window_begin + window_bytes) of the segment.
  std::vector<std::uint64_t> window;
  std::uint64_t window_begin = 0;
  std::uint64_t window_bytes = 0;

  std::uint64_t pos = 0;  // of the next frame; 0 until the header is read
  std::uint64_t expected_seq = 1;
  std::uint64_t expected_prev = kChainSeed;
  // false while the chain values are still to be taken from the header of
  // the segment open() started in.
  bool chained = true;
  Status error;

  Impl(FileSystem& fs_in, std::string dir_in) : fs(fs_in), dir(std::move(dir_in)) {}

  const std::byte* bytes() const { return reinterpret_cast<const std::byte*>(window.data()); }
  Status corrupt(std::uint64_t offset, const std::string& why) const {
    return corrupt_at(segment_first_seq, offset, why);
  }

  Status open_segment(std::uint64_t first_seq, std::uint64_t offset);
  Result<bool> fill(std::uint64_t offset, std::size_t need);
  Result<bool> step(Record* record, std::uint64_t max_seq);
};

// Opens the segment named first_seq and checks its header against the
// chain; reading continues at `offset` (0: the first frame).
Status LogTail::Impl::open_segment(std::uint64_t first_seq, std::uint64_t offset) {
  segment_first_seq = first_seq;
  window_bytes = 0;
  const std::string path = join_path(dir, segment_file_name(first_seq));
  auto opened = fs.open(path, FileSystem::Mode::read_only);
  if (!opened) {
    if (opened.code() != ErrorCode::not_found) return opened.status();
    return corrupt(0, "segment missing: the log continues at seq " + std::to_string(first_seq));
  }
  file = std::move(*opened);
  // A committed record is in it, so its header was written whole before.
  auto size = file->size();
  if (!size) return size.status();
  if (*size < kSegmentHeaderSize) {
    return corrupt(0, "segment shorter than its header (" + std::to_string(*size) + " bytes)");
  }
  std::vector<std::byte> raw(kSegmentHeaderSize);
  TALLY_TRY(file->read_at(0, raw));
  const auto header_bytes = std::span<const std::byte, kSegmentHeaderSize>(raw.data(), kSegmentHeaderSize);
  if (load_u64(raw.data() + kSegChecksumOffset) != segment_header_checksum(header_bytes)) {
    return corrupt(0, "segment header checksum mismatch");
  }
  SegmentHeader header;
  const std::string why = decode_segment_header(header_bytes, &header);
  if (!why.empty()) return corrupt(0, why);
  if (header.first_seq != first_seq) return corrupt(0, "header names another first seq");
  if (!chained) {
    expected_seq = header.first_seq;
    expected_prev = header.prev_checksum;
    chained = true;
  } else if (offset == 0 && header.prev_checksum != expected_prev) {
    return corrupt(0, "chain break: the header's prev_checksum is not the previous frame's checksum");
  }
  payload_max = static_cast<std::uint32_t>(payload_bytes_max(header.size_bytes));
  data_end = header.size_bytes;
  pos = offset == 0 ? kSegmentHeaderSize : offset;
  return Status();
}

// Reads a fresh window at `offset` holding at least `need` bytes, or as
// many as the file has up to data_end; false when fewer than `need`.
Result<bool> LogTail::Impl::fill(std::uint64_t offset, std::size_t need) {
  auto size = file->size();
  if (!size) return size.status();
  const std::uint64_t end = std::min(*size, data_end);
  const std::uint64_t have = end > offset ? end - offset : 0;
  const std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(have, std::max(need, kWindowBytes)));
  const std::size_t words = (length + 7) / 8;
  if (window.size() < words) window.resize(words);
  if (words > 0) window[words - 1] = 0;
  TALLY_TRY(file->read_at(offset, std::span(reinterpret_cast<std::byte*>(window.data()), length)));
  window_begin = offset;
  window_bytes = length;
  return length >= need;
}

Result<bool> LogTail::Impl::step(Record* record, std::uint64_t max_seq) {
  if (expected_seq > max_seq) return false;
  if (file == nullptr) TALLY_TRY(open_segment(segment_first_seq, pos));
  // The bytes the last window read for this frame was asked to hold; 0:
  // none read for it yet.
  std::size_t asked = 0;
  for (;;) {
    const bool in_window = pos >= window_begin && pos < window_begin + window_bytes;
    FrameHeader frame;
    FrameVerdict verdict = FrameVerdict::zero;
    if (in_window) {
      verdict = verify_frame(bytes(), pos - window_begin, window_bytes, payload_max, &frame);
    }
    const std::size_t need = verdict == FrameVerdict::truncated ? frame_size(frame.length)
                                                                : kFrameHeaderSize;
    if (verdict != FrameVerdict::valid && need > asked) {
      // The window may predate this frame, or end inside it (a frame larger
      // than a window is read whole once its header is): read again.
      auto filled = fill(pos, need);
      if (!filled) return filled.status();
      asked = need;
      continue;
    }
    if (verdict == FrameVerdict::zero) {
      // Record expected_seq is committed but not here: the writer rotated.
      TALLY_TRY(open_segment(expected_seq, 0));
      asked = 0;
      continue;
    }
    if (verdict != FrameVerdict::valid) return corrupt(pos, describe(verdict, frame));
    if (frame.seq != expected_seq || frame.prev_checksum != expected_prev) {
      return corrupt(pos, "chain break: frame seq " + std::to_string(frame.seq) + ", expected " +
                              std::to_string(expected_seq));
    }
    record->seq = frame.seq;
    record->checksum = frame.checksum;
    record->payload = std::span(bytes() + (pos - window_begin) + kFrameHeaderSize, frame.length);
    record->segment_first_seq = segment_first_seq;
    record->offset = pos;
    pos += frame_size(frame.length);
    expected_seq++;
    expected_prev = frame.checksum;
    return true;
  }
}

LogTail::LogTail(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogTail::~LogTail() = default;

Result<std::unique_ptr<LogTail>> LogTail::open(FileSystem& fs, const std::string& dir,
                                               std::uint64_t from_seq) {
  if (from_seq == 0) return Status(ErrorCode::invalid, "from_seq must be at least 1");
  auto impl = std::make_unique<Impl>(fs, dir);
  auto names = fs.list(dir);
  if (!names && names.code() != ErrorCode::not_found) return names.status();
  // The tail starts in the segment of record from_seq - 1, whose checksum
  // the chain goes on from, even when from_seq begins a segment: that
  // segment's header holds the same value, but nothing says it is written
  // whole before record from_seq is committed (the writer may be rotating),
  // and position() must give it before next() reads anything.
  const std::uint64_t last_before = std::max<std::uint64_t>(from_seq - 1, 1);
  std::uint64_t start = 0;
  if (names) {
    for (const std::string& name : *names) {
      std::uint64_t first_seq = 0;
      if (parse_segment_file_name(name, &first_seq) && first_seq <= last_before) {
        start = std::max(start, first_seq);
      }
    }
  }
  if (start == 0 && from_seq > 1) {
    return Status(ErrorCode::not_found,
                  "the log has no segment holding seq " + std::to_string(last_before));
  }
  if (start != 0) {
    impl->segment_first_seq = start;
    impl->expected_seq = start;
    impl->chained = false;
  }
  auto tail = std::unique_ptr<LogTail>(new LogTail(std::move(impl)));
  Record record;
  for (;;) {
    auto more = tail->next(&record, from_seq - 1);
    if (!more) return more.status();
    if (!*more) break;
  }
  return tail;
}

Result<std::unique_ptr<LogTail>> LogTail::resume(FileSystem& fs, const std::string& dir,
                                                 const TailPosition& position) {
  auto impl = std::make_unique<Impl>(fs, dir);
  impl->segment_first_seq = position.segment_first_seq;
  impl->pos = position.offset;
  impl->expected_seq = position.next_seq;
  impl->expected_prev = position.prev_checksum;
  return std::unique_ptr<LogTail>(new LogTail(std::move(impl)));
}

Result<bool> LogTail::next(Record* record, std::uint64_t max_seq) {
  Impl& s = *impl_;
  if (!s.error.ok()) return s.error;
  const TailPosition before = position();
  const bool chained_before = s.chained;
  auto more = s.step(record, max_seq);
  if (more) return more;
  if (more.code() != ErrorCode::io_error) {
    s.error = more.status();
    return more;
  }
  // As resume() does: the segment is opened again at the next try, and a
  // window the failed read may have written into is not trusted.
  s.file.reset();
  s.window_bytes = 0;
  s.segment_first_seq = before.segment_first_seq;
  s.pos = before.offset;
  s.expected_seq = before.next_seq;
  s.expected_prev = before.prev_checksum;
  s.chained = chained_before;
  return more;
}

TailPosition LogTail::position() const {
  const Impl& s = *impl_;
  return TailPosition{s.expected_seq, s.segment_first_seq, s.pos, s.expected_prev};
}

}  // namespace tally::log
