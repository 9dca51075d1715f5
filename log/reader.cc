#include "log/reader.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <thread>

#include "log/frame_check.h"

namespace tally::log {

namespace {

std::string hex(std::uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%016" PRIx64, value);
  return text;
}

// The bytes zero_block() looks at: 8 words, which the compiler ORs in
// vector registers.
constexpr std::uint64_t kZeroBlockBytes = 64;

// Whether the kZeroBlockBytes at `p` (8-byte aligned) are all zero.
bool zero_block(const std::byte* p) {
  std::uint64_t any = 0;
  for (std::uint64_t at = 0; at < kZeroBlockBytes; at += 8) any |= load_u64(p + at);
  return any == 0;
}

// The offset just past the last nonzero byte in [from, to), or `from` when
// the range is all zeros. Scans blocks and words where it can: the range
// can be most of a preallocated segment.
std::uint64_t nonzero_end(const std::byte* base, std::uint64_t from, std::uint64_t to) {
  std::uint64_t end = to;
  while (end > from && end % 8 != 0) {
    if (base[end - 1] != std::byte{0}) return end;
    end--;
  }
  while (end - from >= kZeroBlockBytes && zero_block(base + end - kZeroBlockBytes)) {
    end -= kZeroBlockBytes;
  }
  while (end - from >= 8 && load_u64(base + end - 8) == 0) end -= 8;
  while (end > from) {
    if (base[end - 1] != std::byte{0}) return end;
    end--;
  }
  return from;
}

// The first 8-aligned offset in [from, data_end) holding a frame that
// verifies on its own with seq >= seq_min, or 0 when there is none. This
// tells a torn tail (nothing valid after it) from corruption.
std::uint64_t find_valid_frame(const std::byte* base, std::uint64_t from, std::uint64_t data_end,
                               std::uint32_t payload_max, std::uint64_t seq_min,
                               FrameHeader* found) {
  static_assert(kFrameAlignment == 8 && kFrameLengthOffset % 8 == 0);
  for (std::uint64_t offset = from; offset + kFrameHeaderSize <= data_end;
       offset += kFrameAlignment) {
    // Almost every position here is zeros: skip 8 at a time while the words
    // holding their lengths are all zero (a frame's length is not).
    while (offset + kFrameLengthOffset + kZeroBlockBytes <= data_end &&
           zero_block(base + offset + kFrameLengthOffset)) {
      offset += kZeroBlockBytes;
    }
    if (offset + kFrameHeaderSize > data_end) break;
    // Cheap rejections before the checksum: hashing up to a megabyte at
    // each position would be slow.
    const std::uint32_t length = load_u32(base + offset + kFrameLengthOffset);
    if (length == 0 || length > payload_max) continue;
    if (load_u64(base + offset + kFrameSeqOffset) < seq_min) continue;
    if (verify_frame(base, offset, data_end, payload_max, found) == FrameVerdict::valid) return offset;
  }
  return 0;
}

// Why a segment's header bytes are not those of the segment named for
// `first_seq`, or "" when they are. *checksum_failed tells a header that
// does not verify (in the last segment, maybe a torn creation) from one
// that verifies but says something wrong.
std::string header_problem(std::span<const std::byte, kSegmentHeaderSize> bytes,
                           std::uint64_t first_seq, SegmentHeader* header,
                           bool* checksum_failed) {
  *checksum_failed = load_u64(bytes.data() + kSegChecksumOffset) != segment_header_checksum(bytes);
  if (*checksum_failed) return "segment header checksum mismatch";
  std::string why = decode_segment_header(bytes, header);
  if (!why.empty()) return why;
  if (header->first_seq != first_seq) {
    return "header says first seq " + std::to_string(header->first_seq) +
           ", the file name says otherwise";
  }
  return "";
}

// Why a segment before the last, whose file holds `file_bytes`, is
// corrupt by its size alone, or "" when it is not. The writer preallocates
// a segment's whole size before its header and syncs it whole before the
// next one is made: shorter, it was cut afterwards, maybe with records.
std::string cut_short_problem(std::uint64_t file_bytes, const SegmentHeader& header) {
  if (file_bytes >= header.size_bytes) return "";
  return "the segment's file is cut short (" + std::to_string(file_bytes) + " bytes of the " +
         std::to_string(header.size_bytes) + " its header reserves) in a segment that is not " +
         "the last: records may be lost";
}

}  // namespace

Result<SegmentHeader> read_segment_header(FileSystem& fs, const std::string& dir,
                                          std::uint64_t first_seq, std::uint64_t* file_bytes) {
  auto file = fs.open(join_path(dir, segment_file_name(first_seq)), FileSystem::Mode::read_only);
  if (!file) return file.status();
  auto size = (*file)->size();
  if (!size) return size.status();
  if (file_bytes != nullptr) *file_bytes = *size;
  if (*size < kSegmentHeaderSize) {
    return corrupt_at(first_seq, 0, "damaged segment header: file shorter than the header");
  }
  std::array<std::byte, kSegmentHeaderSize> bytes;
  TALLY_TRY((*file)->read_at(0, bytes));
  SegmentHeader header;
  bool checksum_failed = false;
  const std::string why = header_problem(bytes, first_seq, &header, &checksum_failed);
  if (!why.empty()) {
    return corrupt_at(first_seq, 0, checksum_failed ? "damaged segment header: " + why : why);
  }
  return header;
}

Result<std::uint64_t> read_log_id(FileSystem& fs, const std::string& dir) {
  auto header = read_segment_header(fs, dir, 1);
  if (!header) return header.status();
  // The fields give back the header's every byte, so its checksum too.
  std::array<std::byte, kSegmentHeaderSize> bytes;
  encode_segment_header(*header, bytes);
  return segment_header_checksum(bytes);
}

namespace {

// A read from a seq skips the segments before the one holding it unread,
// but checks their headers and sizes, which costs one small read each: a
// log whose first segment is missing, or whose skipped segments are cut
// short or have damaged headers, is refused by every open, not only by a
// read from the start. Damage inside their frames is found by a full read
// (`tally verify`).
Status check_skipped_headers(FileSystem& fs, const std::string& dir,
                             std::span<const std::uint64_t> first_seqs) {
  for (std::size_t index = 0; index < first_seqs.size(); index++) {
    const std::uint64_t first_seq = first_seqs[index];
    if (index == 0 && first_seq != 1) {
      return corrupt_at(first_seq, 0, "gap: the segment starts at seq " +
                                          std::to_string(first_seq) +
                                          " but the log continues at seq 1");
    }
    std::uint64_t file_bytes = 0;
    auto header = read_segment_header(fs, dir, first_seq, &file_bytes);
    if (!header) return header.status();
    const std::string cut = cut_short_problem(file_bytes, *header);
    if (!cut.empty()) return corrupt_at(first_seq, file_bytes, cut);
    if (index == 0 && header->prev_checksum != kChainSeed) {
      return corrupt_at(first_seq, 0, "chain break: header prev_checksum " +
                                          hex(header->prev_checksum) +
                                          " is not the previous frame's checksum " +
                                          hex(kChainSeed));
    }
  }
  return Status();
}

}  // namespace

// end_of_frames' looks again at a frame in flight: 1 + 2 + ... + 128 ms.
constexpr int kLiveRechecksMax = 8;
constexpr std::chrono::milliseconds kLiveRecheckWait{1};

struct LogReader::Impl {
  FileSystem& fs;
  std::string dir;
  LogReaderOptions options;
  std::vector<std::uint64_t> first_seqs;

  // Progress. `chained`: expected_seq and expected_prev come from the start
  // of the log or a verified predecessor, rather than from the header of the
  // segment a from_seq skip started at.
  std::size_t segment_index = 0;
  bool loaded = false;
  bool chained = true;
  bool done = false;
  Status error;
  std::uint64_t expected_seq = 1;
  std::uint64_t expected_prev = kChainSeed;
  LogEnd end;

  // The loaded segment's file, of file_bytes. Its frames, and the zeros
  // after them, are read through the window: bytes [window_start,
  // window_end) of the file, read with pread into a buffer used again and
  // again. That costs less than reading them through a mapping, which
  // fills and drops a page table entry for every page, and leaves no
  // mapped pages in the process's memory (docs/performance.md, "records
  // read through a window"). The window is 8-byte aligned and zero from
  // window_end to the next multiple of 8, as a FileView is.
  //
  // Bytes at pos that are neither the next frame nor zeros to the end of
  // the data are judged on the whole segment, mapped (`mapped`): a torn
  // tail or damage. The rest of that segment is read there too.
  std::unique_ptr<File> file;
  std::unique_ptr<FileView> mapped;
  std::unique_ptr<std::uint64_t[]> window;
  std::uint64_t window_start = 0;
  std::uint64_t window_end = 0;
  std::uint64_t file_bytes = 0;
  std::uint64_t data_end = 0;  // frames end by here: min(file, declared size)
  std::uint64_t pos = 0;       // of the next frame
  SegmentHeader header;
  std::uint32_t payload_max = 0;
  int live_rechecks = 0;  // end_of_frames' looks again at the frame at pos, of kLiveRechecksMax

  Impl(FileSystem& fs_in, std::string dir_in, LogReaderOptions options_in)
      : fs(fs_in), dir(std::move(dir_in)), options(options_in) {}

  // The mapped segment (map() first).
  const std::byte* bytes() const { return mapped->bytes().data(); }
  const std::byte* window_bytes() const { return reinterpret_cast<const std::byte*>(window.get()); }
  std::uint64_t first_seq() const { return first_seqs[segment_index]; }
  bool last_segment() const { return segment_index + 1 == first_seqs.size(); }

  Status corrupt(std::uint64_t offset, const std::string& why) const {
    return corrupt_at(first_seq(), offset, why);
  }

  Status map();
  Status fill_window(std::uint64_t from, std::uint64_t to);
  Status window_frame();
  Status load_segment();
  Status torn_or_damaged_header(const char* why);
  Status chain_break(const FrameHeader& frame) const;
  Status end_of_frames(FrameVerdict verdict, const FrameHeader& frame);
  Result<bool> zeros_to_data_end();
  Status frames_end();
  void finish(std::uint64_t torn_end);
};

// Bytes a window read takes at least (less at the end of the data).
constexpr std::uint64_t kWindowReadBytes = 256 * 1024;
// The window's buffer: a read, or a whole frame of the largest, and the
// word of zeros after it.
constexpr std::size_t kWindowWords =
    (std::max<std::uint64_t>(kWindowReadBytes, kFrameHeaderSize + kRecordPayloadBytesMax) + 8) / 8;

// Maps the loaded segment's file, unless it is mapped already.
Status LogReader::Impl::map() {
  if (mapped != nullptr) return Status();
  auto view = file->view(file_bytes);
  if (!view) return view.status();
  if ((*view)->bytes().size() != file_bytes) {
    return corrupt(0, "the segment's file changed size while it was read (" +
                          std::to_string(file_bytes) + " bytes, then " +
                          std::to_string((*view)->bytes().size()) + ")");
  }
  mapped = std::move(*view);
  return Status();
}

// Makes the window hold [from, to) of the segment, to <= data_end, and as
// much after it as one read takes; keeps what it holds from `from` on.
Status LogReader::Impl::fill_window(std::uint64_t from, std::uint64_t to) {
  TALLY_ASSERT(from % 8 == 0 && from <= to && to <= data_end);
  if (window == nullptr) window = std::make_unique_for_overwrite<std::uint64_t[]>(kWindowWords);
  auto* buffer = reinterpret_cast<std::byte*>(window.get());
  std::uint64_t kept = 0;
  if (from >= window_start && from < window_end) {
    kept = window_end - from;
    std::memmove(buffer, buffer + (from - window_start), kept);
  }
  const std::uint64_t end = std::min(data_end, std::max(to, from + kWindowReadBytes));
  TALLY_ASSERT(end - from + 8 <= kWindowWords * 8);
  window_start = from;
  window_end = from + kept;  // until the read below succeeds
  TALLY_TRY(file->read_at(from + kept, std::span(buffer + kept, end - from - kept)));
  window_end = end;
  std::memset(buffer + (end - from), 0, (8 - end % 8) % 8);
  return Status();
}

// Makes the window hold the frame at pos: its header, and all of it when
// its length is one a frame can have (within the data).
Status LogReader::Impl::window_frame() {
  const std::uint64_t header_end = std::min(data_end, pos + kFrameHeaderSize);
  if (pos < window_start || header_end > window_end) TALLY_TRY(fill_window(pos, header_end));
  if (header_end - pos < kFrameHeaderSize) return Status();
  const std::uint32_t length = load_u32(window_bytes() + (pos - window_start) + kFrameLengthOffset);
  if (length == 0 || length > payload_max) return Status();
  const std::uint64_t frame_end = std::min<std::uint64_t>(data_end, pos + frame_size(length));
  if (frame_end > window_end) TALLY_TRY(fill_window(pos, frame_end));
  return Status();
}

// Loads the current segment and checks its header against its name and the
// chain so far.
Status LogReader::Impl::load_segment() {
  mapped.reset();
  window_start = window_end = 0;
  const std::string path = join_path(dir, segment_file_name(first_seq()));
  auto opened = fs.open(path, FileSystem::Mode::read_only);
  if (!opened) return opened.status();
  file = std::move(*opened);
  auto size = file->size();
  if (!size) return size.status();
  // No writer makes a file longer than the largest segment, and its bytes
  // past that could be read only by mapping what the file's size decides.
  if (*size > kSegmentSizeBytesMax) {
    return corrupt(kSegmentSizeBytesMax,
                   "the file holds " + std::to_string(*size) + " bytes, more than any segment (" +
                       std::to_string(kSegmentSizeBytesMax) + ")");
  }
  file_bytes = *size;
  if (file_bytes < kSegmentHeaderSize) return torn_or_damaged_header("file shorter than the header");
  std::array<std::byte, kSegmentHeaderSize> header_bytes;
  TALLY_TRY(file->read_at(0, header_bytes));
  bool checksum_failed = false;
  const std::string why = header_problem(header_bytes, first_seq(), &header, &checksum_failed);
  if (checksum_failed) return torn_or_damaged_header(why.c_str());
  if (!why.empty()) return corrupt(0, why);
  if (!chained) {
    expected_seq = header.first_seq;
    expected_prev = header.prev_checksum;
    chained = true;
  } else if (header.first_seq != expected_seq) {
    return corrupt(0, "gap: the segment starts at seq " + std::to_string(header.first_seq) +
                          " but the log continues at seq " + std::to_string(expected_seq));
  } else if (header.prev_checksum != expected_prev) {
    return corrupt(0, "chain break: header prev_checksum " + hex(header.prev_checksum) +
                          " is not the previous frame's checksum " + hex(expected_prev));
  }
  if (!last_segment()) {
    const std::string cut = cut_short_problem(file_bytes, header);
    if (!cut.empty()) return corrupt(file_bytes, cut);
  }
  // The writer never writes past the size it reserved: bytes there are not
  // the log's, and would go unread (and unchecked) for ever.
  if (file_bytes > header.size_bytes) {
    TALLY_TRY(map());
    const std::uint64_t past = nonzero_end(bytes(), header.size_bytes, file_bytes);
    if (past != header.size_bytes) {
      return corrupt(header.size_bytes,
                     "nonzero bytes up to offset " + std::to_string(past) + " past the " +
                         std::to_string(header.size_bytes) + " bytes its header reserves");
    }
  }
  payload_max = static_cast<std::uint32_t>(payload_bytes_max(header.size_bytes));
  data_end = std::min(file_bytes, header.size_bytes);
  pos = kSegmentHeaderSize;
  loaded = true;
  return Status();
}

// A header that does not verify. In the last segment, with nothing valid
// after it, it is torn: the writer syncs a new segment's header before it
// writes any frame there, so a crash while creating the segment is the only
// way to get it. Anywhere else it is damage.
Status LogReader::Impl::torn_or_damaged_header(const char* why) {
  if (!last_segment()) return corrupt(0, std::string("damaged segment header: ") + why);
  if (!chained) {
    // A from_seq skip started here, so the chain value this segment must be
    // recreated with is unknown: start one segment earlier instead.
    TALLY_ASSERT(segment_index > 0);
    segment_index--;
    return load_segment();
  }
  TALLY_TRY(map());
  FrameHeader frame;
  const std::uint64_t found = find_valid_frame(bytes(), kSegmentHeaderSize, file_bytes,
                                               kRecordPayloadBytesMax, expected_seq, &frame);
  if (found != 0) {
    return corrupt(0, std::string("damaged segment header (") + why +
                          ") followed by a valid frame at offset " + std::to_string(found));
  }
  if (first_seq() != expected_seq) {
    return corrupt(0, "gap: the segment is named for seq " + std::to_string(first_seq()) +
                          " but the log continues at seq " + std::to_string(expected_seq));
  }
  end = LogEnd{};
  end.next_seq = expected_seq;
  end.last_checksum = expected_prev;
  end.has_segment = true;
  end.segment_first_seq = first_seq();
  end.offset = kSegmentHeaderSize;
  end.torn_header = true;
  // The writer makes a segment's file whole (preallocated) before it writes
  // the header: a crash leaves it empty or whole, never shorter than the
  // header, nor shorter than any segment with a header written. Such a file
  // was cut short by something else, maybe with frames. (A preallocation
  // the system emulates, a byte written per block where fallocate is
  // missing, grows the file in steps: one cut there still has no header.)
  end.file_bytes = file_bytes;
  const bool header_written =
      nonzero_end(bytes(), 0, std::min(file_bytes, kSegmentHeaderSize)) != 0;
  end.cut_short = file_bytes > 0 && (file_bytes < kSegmentHeaderSize ||
                                     (file_bytes < kSegmentSizeBytesMin && header_written));
  done = true;
  return Status();
}

// A frame that verifies on its own but is not the expected next one: a
// deleted, duplicated or reordered record.
Status LogReader::Impl::chain_break(const FrameHeader& frame) const {
  if (frame.seq != expected_seq) {
    return corrupt(pos, "chain break: frame has seq " + std::to_string(frame.seq) + ", expected " +
                            std::to_string(expected_seq));
  }
  return corrupt(pos, "chain break: frame seq " + std::to_string(frame.seq) +
                          " has prev_checksum " + hex(frame.prev_checksum) +
                          ", the previous frame's checksum is " + hex(expected_prev));
}

// No valid next frame at pos: the end of this segment's frames, a torn tail,
// or corruption (docs/log-format.md, "Recovery").
Status LogReader::Impl::end_of_frames(FrameVerdict verdict, const FrameHeader& frame) {
  if (mapped == nullptr) {
    // Zeros up to the end of the data, the usual end of a segment's frames,
    // are read through the window. Anything else is judged on the mapped
    // segment, where next() reads the frame again first: the window may
    // hold an older copy of the bytes than the file does now (beside a
    // live writer).
    if (verdict == FrameVerdict::zero) {
      auto zeros = zeros_to_data_end();
      if (!zeros) return zeros.status();
      if (*zeros) return frames_end();
    }
    return map();
  }
  FrameHeader later;
  const std::uint64_t found = find_valid_frame(bytes(), pos + kFrameAlignment, data_end,
                                               payload_max, expected_seq, &later);
  // Beside a live writer (LogReaderOptions::writer_may_be_live), the
  // reader may have read the frame's page before the writer filled it, and
  // the pages after it once it had. Look again a few times, waiting longer
  // each time, before calling it damage; a frame that was in flight is
  // whole by then (next() reads it again at pos).
  if (found != 0 && options.writer_may_be_live && last_segment() &&
      live_rechecks < kLiveRechecksMax) {
    std::this_thread::sleep_for(kLiveRecheckWait * (1 << live_rechecks));
    live_rechecks++;
    return Status();
  }
  if (found != 0) {
    return corrupt(pos, describe(verdict, frame) + ", followed by a valid frame at offset " +
                            std::to_string(found) + " (seq " + std::to_string(later.seq) + ")");
  }
  const std::uint64_t torn_end = nonzero_end(bytes(), pos, data_end);
  if (last_segment()) {
    finish(torn_end);
    return Status();
  }
  // A segment before the last was synced whole before its successor was
  // created, so it cannot have a torn tail.
  if (verdict != FrameVerdict::zero) {
    return corrupt(pos, describe(verdict, frame) + " in a segment that is not the last");
  }
  if (torn_end != pos) {
    return corrupt(pos, "nonzero bytes up to offset " + std::to_string(torn_end) +
                            " after the last frame of a segment that is not the last");
  }
  return frames_end();
}

// Whether the segment's bytes from pos to the end of its data are all
// zeros, read through the window.
Result<bool> LogReader::Impl::zeros_to_data_end() {
  for (std::uint64_t from = pos; from < data_end; from = window_end) {
    TALLY_TRY(fill_window(from, std::min(data_end, from + kWindowReadBytes)));
    if (nonzero_end(window_bytes(), 0, window_end - window_start) != 0) return false;
  }
  return true;
}

// The segment's frames end at pos, with only zeros after them: the end of
// the log in the last segment, else on to the next.
Status LogReader::Impl::frames_end() {
  if (last_segment()) {
    finish(pos);
  } else {
    loaded = false;
    segment_index++;
  }
  return Status();
}

void LogReader::Impl::finish(std::uint64_t torn_end) {
  end = LogEnd{};
  end.next_seq = expected_seq;
  end.last_checksum = expected_prev;
  end.has_segment = true;
  end.segment_first_seq = first_seq();
  end.segment_size_bytes = header.size_bytes;
  end.offset = pos;
  end.torn = torn_end > pos;
  end.torn_end = end.torn ? torn_end : 0;
  end.file_bytes = file_bytes;
  // Zeros after the frames up to the file's end say no frame was cut off.
  end.cut_short =
      file_bytes < header.size_bytes && (end.torn || file_bytes - pos < kFrameAlignment);
  done = true;
}

Status decode_record(EventDecoder& decoder, const Record& record, Event* event) {
  Status decoded = decoder.decode(record.payload, event);
  if (decoded.ok() && event->seq != record.seq) {
    decoded = Status(ErrorCode::corrupt, "event seq differs from its frame");
  }
  if (decoded.ok()) return decoded;
  return corrupt_at(record.segment_first_seq, record.offset, decoded.message());
}

Status cut_short_status(const LogEnd& end) {
  std::string size = std::to_string(end.file_bytes) + " bytes";
  if (!end.torn_header) {
    size += " of the " + std::to_string(end.segment_size_bytes) + " its header reserves";
  } else if (end.cut_inside_header()) {
    size += ", shorter than its header";
  } else {
    size += " with a damaged header, shorter than any segment";
  }
  return corrupt_at(end.segment_first_seq, end.torn_header ? 0 : end.offset,
                    "the segment's file is cut short (" + size + "): records after seq " +
                        std::to_string(end.next_seq - 1) + " may be lost");
}

LogReader::LogReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogReader::~LogReader() = default;

Result<std::unique_ptr<LogReader>> LogReader::open(FileSystem& fs, const std::string& dir,
                                                   LogReaderOptions options) {
  auto impl = std::make_unique<Impl>(fs, dir, options);
  auto names = fs.list(dir);
  if (!names && names.code() != ErrorCode::not_found) return names.status();
  if (names) {
    for (const std::string& name : *names) {
      // Other files (an editor's backup, a note) are not the log's business.
      if (!name.ends_with(".seg")) continue;
      std::uint64_t first_seq = 0;
      if (!parse_segment_file_name(name, &first_seq) || first_seq == 0) {
        return Status(ErrorCode::corrupt,
                      "segment " + name + " offset 0: not a valid segment file name");
      }
      impl->first_seqs.push_back(first_seq);
    }
  }
  std::sort(impl->first_seqs.begin(), impl->first_seqs.end());
  // Start at the last segment that begins at or before from_seq.
  for (std::size_t index = 0; index < impl->first_seqs.size(); index++) {
    if (impl->first_seqs[index] <= options.from_seq) impl->segment_index = index;
  }
  impl->chained = impl->segment_index == 0;
  TALLY_TRY(check_skipped_headers(
      fs, dir, std::span<const std::uint64_t>(impl->first_seqs.data(), impl->segment_index)));
  // Private constructor: make_unique cannot reach it.
  return std::unique_ptr<LogReader>(new LogReader(std::move(impl)));
}

Result<bool> LogReader::next(Record* record) {
  Impl& s = *impl_;
  while (true) {
    if (!s.error.ok()) return s.error;
    if (s.done) return false;
    if (!s.loaded) {
      if (s.first_seqs.empty()) {
        s.done = true;  // an empty log: the default LogEnd describes it
        continue;
      }
      s.error = s.load_segment();
      continue;
    }
    // The bytes from pos on: the window's, or the mapped segment's.
    const std::byte* at = nullptr;
    std::uint64_t data_bytes = 0;
    if (s.mapped == nullptr) {
      s.error = s.window_frame();
      if (!s.error.ok()) continue;
      at = s.window_bytes() + (s.pos - s.window_start);
      data_bytes = s.window_end - s.pos;
    } else {
      at = s.bytes() + s.pos;
      data_bytes = s.data_end - s.pos;
    }
    FrameHeader frame;
    const FrameVerdict verdict = verify_frame(at, 0, data_bytes, s.payload_max, &frame);
    if (verdict == FrameVerdict::valid && frame.seq == s.expected_seq &&
        frame.prev_checksum == s.expected_prev) {
      record->seq = frame.seq;
      record->checksum = frame.checksum;
      record->payload = std::span(at + kFrameHeaderSize, frame.length);
      record->segment_first_seq = s.header.first_seq;
      record->offset = s.pos;
      s.pos += frame_size(frame.length);
      s.expected_seq++;
      s.expected_prev = frame.checksum;
      s.live_rechecks = 0;  // the looks again are each frame's
      if (frame.seq < s.options.from_seq) continue;
      return true;
    }
    s.error = verdict == FrameVerdict::valid ? s.chain_break(frame) : s.end_of_frames(verdict, frame);
  }
}

Status sync_log(FileSystem& fs, const std::string& dir, std::uint64_t seq) {
  auto names = fs.list(dir);
  if (!names) return names.status();
  for (const std::string& name : *names) {
    std::uint64_t first_seq = 0;
    if (!parse_segment_file_name(name, &first_seq) || first_seq > seq) continue;
    auto file = fs.open(join_path(dir, name), FileSystem::Mode::read_only);
    if (!file) return file.status();
    TALLY_TRY((*file)->sync());
  }
  return fs.sync_dir(dir);
}

const LogEnd& LogReader::end() const { return impl_->end; }

const std::vector<std::uint64_t>& LogReader::segment_first_seqs() const {
  return impl_->first_seqs;
}

std::uint64_t LogReader::segment_first_seq() const {
  return impl_->first_seqs.empty() ? 0 : impl_->first_seq();
}

}  // namespace tally::log
