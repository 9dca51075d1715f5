#include "log/writer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

#include "log/wall_clock.h"

namespace tally::log {

namespace {

// How many bytes of a segment LogWriter::write leaves written but unsynced
// at most, whatever the durability.
constexpr std::uint64_t kUnsyncedBytesMax = std::uint64_t{4} << 20;

// Whether a failed create (or directory open) may succeed when tried
// again: the process or the system was out of descriptors or memory,
// which other holders give back. An error of unknown origin gets the
// benefit of the doubt; a refusal (a permission, a read-only file system)
// fails at once.
bool may_pass(const Status& status) {
  if (status.code() != ErrorCode::io_error) return false;
  switch (status.os_error()) {
    case 0:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case EAGAIN:
      return true;
    default:
      return false;
  }
}

const Status& status_of(const Status& status) { return status; }
template <class T>
Status status_of(const Result<T>& result) {
  return result.status();
}

}  // namespace

// One batch buffer and the writes it turns into: one part per segment the
// batch touches, in order.
class WriteBatch {
 public:
  struct Part {
    std::uint64_t segment_first_seq = 0;
    bool new_segment = false;                // create the segment before writing
    std::uint64_t header_prev_checksum = 0;  // for the new segment's header
    std::uint64_t file_offset = 0;
    std::size_t begin = 0;                   // byte range in the buffer
    std::size_t length = 0;
  };

  WriteBatch(std::size_t bytes_max, std::size_t parts_max)
      : words_((bytes_max + 7) / 8), bytes_max_(bytes_max) {
    parts_.reserve(parts_max);
  }

  std::byte* data() { return reinterpret_cast<std::byte*>(words_.data()); }
  const std::byte* data() const { return reinterpret_cast<const std::byte*>(words_.data()); }
  std::size_t used_bytes() const { return used_bytes_; }
  std::size_t bytes_max() const { return bytes_max_; }
  const std::vector<Part>& parts() const { return parts_; }
  bool empty() const { return parts_.empty(); }

  std::size_t records() const { return records_; }

  // Room for a frame of frame_bytes at the end of the current part.
  std::byte* extend(std::size_t frame_bytes) {
    TALLY_ASSERT(!parts_.empty());
    TALLY_ASSERT(used_bytes_ + frame_bytes <= bytes_max_);
    std::byte* out = data() + used_bytes_;
    used_bytes_ += frame_bytes;
    records_++;
    parts_.back().length += frame_bytes;
    return out;
  }
  void start_part(const Part& part) {
    // parts_max bounds the parts a full batch can need, so this never
    // allocates on the append path.
    TALLY_ASSERT(parts_.size() < parts_.capacity());
    parts_.push_back(part);
    parts_.back().begin = used_bytes_;
    parts_.back().length = 0;
  }
  void reset() {
    parts_.clear();
    used_bytes_ = 0;
    records_ = 0;
  }

  // Sealed and not yet written. Atomic because the appending side checks
  // it while the I/O side may be finishing the write.
  bool in_flight() const { return in_flight_.load(std::memory_order_acquire); }
  void set_in_flight(bool value) { in_flight_.store(value, std::memory_order_release); }

 private:
  std::atomic<bool> in_flight_{false};
  std::vector<std::uint64_t> words_;  // 8-byte aligned frames
  std::size_t bytes_max_;
  std::size_t used_bytes_ = 0;
  std::size_t records_ = 0;
  std::vector<Part> parts_;
};

struct LogWriter::Impl {
  FileSystem& fs;
  std::string dir;
  LogWriterOptions options;

  // Appending side: where the next frame goes, counting batches not yet
  // written.
  std::uint64_t next_seq = 1;
  std::uint64_t last_checksum = kChainSeed;
  std::uint64_t append_segment_first_seq = 0;
  std::uint64_t append_segment_size_bytes = 0;
  std::uint64_t append_offset = 0;
  std::array<std::unique_ptr<WriteBatch>, 2> batches;
  std::size_t open_batch = 0;

  // I/O side: the segment file being written.
  std::unique_ptr<File> file;
  std::uint64_t file_first_seq = 0;
  // Where its writes end, and where the bytes not yet synced begin.
  std::uint64_t file_written_end = 0;
  std::uint64_t file_synced_end = 0;
  Status failure;  // sticky

  std::atomic<std::uint64_t> writes{0};
  std::atomic<std::uint64_t> bytes_written{0};
  std::atomic<std::uint64_t> segments_created{0};
  Histogram<kSyncBoundsNs> sync_ns;
  Histogram<kWriteRecordsBounds> write_records;

  Impl(FileSystem& fs_in, std::string dir_in, const LogWriterOptions& options_in)
      : fs(fs_in), dir(std::move(dir_in)), options(options_in) {}

  WriteBatch& batch() { return *batches[open_batch]; }
  // The first failure sticks: after a failed write or sync the file's
  // contents are unknown, so nothing more may be written until a reopen
  // scans and repairs the log.
  Status fail(const Status& status) {
    if (failure.ok()) failure = Status(ErrorCode::io_error, "log writer failed: " + status.message());
    return failure;
  }
  Status sync_file();
  Status write_file(std::uint64_t offset, std::span<const std::byte> data);
  Status create_segment(std::uint64_t first_seq, std::uint64_t prev_checksum);
  // op() (returning a Status or a Result), tried again after an error that
  // may pass, for up to LogWriterOptions::create_retry_max: what making a
  // segment does with a descriptor of its own (opening the file, syncing
  // the directory).
  template <class Op>
  auto retrying(const Op& op) -> decltype(op()) {
    constexpr std::chrono::milliseconds kWaitMax{256};
    const auto give_up = std::chrono::steady_clock::now() + options.create_retry_max;
    std::chrono::milliseconds wait{1};
    for (;;) {
      auto result = op();
      if (result.ok() || !may_pass(status_of(result)) ||
          std::chrono::steady_clock::now() + wait > give_up) {
        return result;
      }
      std::this_thread::sleep_for(wait);
      wait = std::min(wait * 2, kWaitMax);
    }
  }
  Status start_segment(std::uint64_t first_seq, std::uint64_t prev_checksum);
  Status open_existing(const LogEnd& end);
  Status zero_range(std::uint64_t from, std::uint64_t to);
  Status write_part(const WriteBatch& batch, const WriteBatch::Part& part);
};

Status LogWriter::Impl::sync_file() {
  // No segment open (open() found no room to make one): nothing written
  // since the last segment was synced whole.
  if (file == nullptr) return Status();
  const auto started = std::chrono::steady_clock::now();
  Status status = file->sync();
  const auto took = std::chrono::steady_clock::now() - started;
  sync_ns.observe(static_cast<std::uint64_t>(std::chrono::nanoseconds(took).count()));
  if (status.ok()) file_synced_end = file_written_end;
  return status;
}

Status LogWriter::Impl::write_file(std::uint64_t offset, std::span<const std::byte> data) {
  TALLY_ASSERT(file != nullptr);
  writes.fetch_add(1, std::memory_order_relaxed);
  TALLY_TRY(file->write_at(offset, data));
  bytes_written.fetch_add(data.size(), std::memory_order_relaxed);
  file_written_end = std::max(file_written_end, offset + data.size());
  return Status();
}

// Creates (or recreates, after a torn header) the segment for first_seq and
// makes its header and its name durable before any frame goes in, so that a
// header that does not verify can only be a torn one (reader.cc).
//
// One that fails is removed again: it holds no frame, and a preallocation
// cut short by a full disk would otherwise keep the room it took (on ext4,
// all that was left) until a reopen.
Status LogWriter::Impl::create_segment(std::uint64_t first_seq, std::uint64_t prev_checksum) {
  const std::string path = join_path(dir, segment_file_name(first_seq));
  auto created = retrying([&] { return fs.open(path, FileSystem::Mode::create); });
  if (!created) return created.status();
  file = std::move(*created);
  file_first_seq = first_seq;
  file_written_end = 0;
  file_synced_end = 0;
  const Status made = start_segment(first_seq, prev_checksum);
  if (!made.ok()) {
    file.reset();
    if (fs.remove(path).ok()) ignore_status(fs.sync_dir(dir));
  }
  return made;
}

// Preallocates the new `file` and makes its header and name durable. The
// size is synced before the header is written, so that a crash leaves the
// file empty or whole wherever it has a header (the reader takes a shorter
// one with a header for cut short): a C library that emulates fallocate
// writes the file a block at a time, and those writes and the header's may
// reach the disk in any order.
Status LogWriter::Impl::start_segment(std::uint64_t first_seq, std::uint64_t prev_checksum) {
  TALLY_TRY(file->truncate(0));
  TALLY_TRY(file->preallocate(options.segment_size_bytes));
  TALLY_TRY(sync_file());
  SegmentHeader header;
  header.first_seq = first_seq;
  header.prev_checksum = prev_checksum;
  header.size_bytes = options.segment_size_bytes;
  header.created_ns = options.now_ns != nullptr ? options.now_ns() : wall_clock_ns();
  std::array<std::byte, kSegmentHeaderSize> bytes;
  encode_segment_header(header, bytes);
  TALLY_TRY(write_file(0, bytes));
  TALLY_TRY(sync_file());
  TALLY_TRY(retrying([&] { return fs.sync_dir(dir); }));
  segments_created.fetch_add(1, std::memory_order_relaxed);
  return Status();
}

// Writes zeros over [from, to). Only open() calls it, while the batch
// buffers are still all zeros from their allocation.
Status LogWriter::Impl::zero_range(std::uint64_t from, std::uint64_t to) {
  const WriteBatch& zeros = *batches[1 - open_batch];
  TALLY_ASSERT(zeros.empty());
  TALLY_ASSERT(zeros.used_bytes() == 0);
  while (from < to) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(to - from, zeros.bytes_max()));
    TALLY_TRY(write_file(from, std::span<const std::byte>(zeros.data(), chunk)));
    from += chunk;
  }
  return Status();
}

// Continues the last segment of a scanned log, repairing a torn tail first.
Status LogWriter::Impl::open_existing(const LogEnd& end) {
  const std::string path = join_path(dir, segment_file_name(end.segment_first_seq));
  auto opened = fs.open(path, FileSystem::Mode::read_write);
  if (!opened) return opened.status();
  file = std::move(*opened);
  file_first_seq = end.segment_first_seq;
  // A file cut short (by a crash or by hand) gets its reserved blocks back,
  // before its torn tail is zeroed: a short file whose frames or torn tail
  // run to its end is what tells a reader that records after it may be
  // lost, so an open that finds the disk too full for the blocks leaves the
  // file as it was, cutting back what a preallocation cut short added (on
  // ext4 it grows the file by what it could take).
  auto size = file->size();
  if (!size) return size.status();
  if (*size < end.segment_size_bytes) {
    const Status grown = file->preallocate(end.segment_size_bytes);
    if (!grown.ok()) {
      ignore_status(file->truncate(*size));
      return grown;
    }
  }
  if (end.torn) {
    TALLY_ASSERT(end.torn_end > end.offset);
    TALLY_TRY(zero_range(end.offset, end.torn_end));
  }
  // Synced whatever the scan found: the repair must be durable before new
  // frames land after it, or a crash could leave old torn bytes behind valid
  // new ones; and the scan read the page cache, which may hold frames a
  // crashed writer wrote but never synced. The ledger takes every scanned
  // record for durable (a retry of its key is answered from it), so they
  // are made so, with the segment's name, before anything is answered.
  TALLY_TRY(sync_file());
  file_written_end = end.offset;  // the zeros of a torn tail are synced
  file_synced_end = end.offset;
  return fs.sync_dir(dir);
}

Status LogWriter::Impl::write_part(const WriteBatch& batch_ref, const WriteBatch::Part& part) {
  if (part.new_segment) {
    // The old segment is complete: make it durable before its successor
    // exists, so that a later segment proves its predecessors whole.
    TALLY_TRY(sync_file());
    TALLY_TRY(create_segment(part.segment_first_seq, part.header_prev_checksum));
  }
  TALLY_ASSERT(part.segment_first_seq == file_first_seq);
  return write_file(part.file_offset,
                    std::span<const std::byte>(batch_ref.data() + part.begin, part.length));
}

LogWriter::LogWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogWriter::~LogWriter() = default;

namespace {

Status check_options(const LogWriterOptions& options) {
  TALLY_TRY(check_segment_size(options.segment_size_bytes));
  // Every record the segment size allows must fit an empty batch, or
  // has_room() would never become true for it.
  const std::size_t frame_bytes_max = frame_size(payload_bytes_max(options.segment_size_bytes));
  if (options.batch_bytes_max < frame_bytes_max || options.batch_bytes_max % kFrameAlignment != 0) {
    return Status(ErrorCode::invalid, "batch size " + std::to_string(options.batch_bytes_max) +
                                          " must be a multiple of 8 and at least " +
                                          std::to_string(frame_bytes_max));
  }
  return Status();
}

// The most parts a full batch can need. A part other than the first and the
// last holds a whole segment's frames, and any two neighbours together hold
// more than one segment's frame area (the second started because the next
// frame did not fit the first).
std::size_t batch_parts_max(const LogWriterOptions& options) {
  const std::uint64_t area = options.segment_size_bytes - kSegmentHeaderSize;
  return static_cast<std::size_t>(2 * (options.batch_bytes_max / area) + 3);
}

}  // namespace

Result<std::unique_ptr<LogWriter>> LogWriter::open(FileSystem& fs, const std::string& dir,
                                                   const LogEnd& end, LogWriterOptions options) {
  TALLY_TRY(check_options(options));
  TALLY_ASSERT(end.next_seq >= 1);
  auto impl = std::make_unique<Impl>(fs, dir, options);
  for (auto& batch : impl->batches) {
    batch = std::make_unique<WriteBatch>(options.batch_bytes_max, batch_parts_max(options));
  }
  impl->next_seq = end.next_seq;
  impl->last_checksum = end.last_checksum;
  if (!end.has_segment || end.torn_header) {
    if (!end.has_segment) {
      TALLY_TRY(fs.make_dirs(dir));
      // The log directory itself may be new: make its name durable too.
      TALLY_TRY(fs.sync_dir(parent_dir(dir)));
    }
    // A torn header is only ever the segment the next record starts.
    TALLY_ASSERT(!end.has_segment || end.segment_first_seq == end.next_seq);
    const Status created = impl->create_segment(end.next_seq, end.last_checksum);
    if (created.ok()) {
      impl->append_segment_size_bytes = options.segment_size_bytes;
      impl->append_offset = kSegmentHeaderSize;
    } else if (end.torn_header && (created.os_error() == ENOSPC || created.os_error() == EDQUOT)) {
      // A crash left the segment half made, and the disk is still full.
      // The open goes on, the log ending before that segment as it did:
      // the first append starts it, and its write makes the file, or fails
      // as any write on a full disk does. No segment is open until then.
      impl->append_segment_size_bytes = 0;
      impl->append_offset = 0;
    } else {
      return created;
    }
  } else {
    TALLY_ASSERT(end.offset >= kSegmentHeaderSize);
    TALLY_ASSERT(end.offset <= end.segment_size_bytes);
    TALLY_TRY(impl->open_existing(end));
    impl->append_segment_size_bytes = end.segment_size_bytes;
    impl->append_offset = end.offset;
  }
  impl->append_segment_first_seq = impl->file_first_seq;
  // Private constructor: make_unique cannot reach it.
  return std::unique_ptr<LogWriter>(new LogWriter(std::move(impl)));
}

std::uint64_t LogWriter::next_seq() const { return impl_->next_seq; }

std::uint64_t LogWriter::last_checksum() const { return impl_->last_checksum; }

bool LogWriter::has_room(std::size_t payload_bytes) const {
  const WriteBatch& batch = *impl_->batches[impl_->open_batch];
  return batch.used_bytes() + frame_size(payload_bytes) <= batch.bytes_max();
}

std::uint64_t LogWriter::append(std::span<const std::byte> payload) {
  Impl& s = *impl_;
  TALLY_ASSERT(!payload.empty());
  TALLY_ASSERT(payload.size() <= payload_bytes_max(s.options.segment_size_bytes));
  TALLY_ASSERT(payload.size() % kFrameAlignment == 0);
  TALLY_ASSERT(has_room(payload.size()));
  TALLY_ASSERT(s.next_seq <= kSeqMax);
  const std::size_t frame_bytes = frame_size(payload.size());
  WriteBatch& batch = s.batch();
  if (s.append_offset + frame_bytes > s.append_segment_size_bytes) {
    // A record never spans segments: this one starts the next segment,
    // which is named by its seq.
    WriteBatch::Part part;
    part.segment_first_seq = s.next_seq;
    part.new_segment = true;
    part.header_prev_checksum = s.last_checksum;
    part.file_offset = kSegmentHeaderSize;
    batch.start_part(part);
    s.append_segment_first_seq = s.next_seq;
    s.append_segment_size_bytes = s.options.segment_size_bytes;
    s.append_offset = kSegmentHeaderSize;
  } else if (batch.empty()) {
    WriteBatch::Part part;
    part.segment_first_seq = s.append_segment_first_seq;
    part.file_offset = s.append_offset;
    batch.start_part(part);
  }
  std::byte* out = batch.extend(frame_bytes);
  s.last_checksum = encode_frame(out, s.next_seq, s.last_checksum, payload);
  s.append_offset += frame_bytes;
  return s.next_seq++;
}

bool LogWriter::batch_empty() const { return impl_->batches[impl_->open_batch]->empty(); }

WriteBatch* LogWriter::seal() {
  Impl& s = *impl_;
  WriteBatch* sealed = s.batches[s.open_batch].get();
  sealed->set_in_flight(true);
  s.open_batch = 1 - s.open_batch;
  // The caller writes each sealed batch before sealing the next one, so
  // the buffer we reopen is free.
  TALLY_ASSERT(!s.batch().in_flight());
  s.batch().reset();
  return sealed;
}

Status LogWriter::write(WriteBatch* batch, bool sync) {
  Impl& s = *impl_;
  TALLY_ASSERT(batch != nullptr);
  TALLY_ASSERT(batch->in_flight());
  if (batch->records() > 0) s.write_records.observe(batch->records());
  Status status = s.failure;
  for (std::size_t part_index = 0; status.ok() && part_index < batch->parts().size(); part_index++) {
    status = s.write_part(*batch, batch->parts()[part_index]);
  }
  // Never synced, a segment's frames would wait in the page cache, and
  // then in the disk's cache, until the sync at its end, which took tens of
  // milliseconds with nothing acknowledged meanwhile. Handing them to the
  // system's write-back early did not shorten it: the disk's cache still
  // held them all (docs/performance.md, "the sync at a segment's end").
  if (status.ok() && (sync || s.file_written_end - s.file_synced_end >= kUnsyncedBytesMax)) {
    status = s.sync_file();
  }
  batch->set_in_flight(false);
  if (!status.ok()) return s.fail(status);
  return Status();
}

void LogWriter::drop(WriteBatch* batch) {
  TALLY_ASSERT(batch != nullptr);
  TALLY_ASSERT(batch->in_flight());
  batch->set_in_flight(false);
}

Status LogWriter::sync() {
  Impl& s = *impl_;
  if (!s.failure.ok()) return s.failure;
  Status status = s.sync_file();
  if (!status.ok()) return s.fail(status);
  return Status();
}

LogWriterStats LogWriter::stats() const {
  LogWriterStats stats;
  stats.writes = impl_->writes.load(std::memory_order_relaxed);
  stats.bytes_written = impl_->bytes_written.load(std::memory_order_relaxed);
  stats.segments_created = impl_->segments_created.load(std::memory_order_relaxed);
  stats.sync_ns = impl_->sync_ns.snapshot();
  // From the same snapshot, so that a reader sees the two agree.
  stats.syncs = stats.sync_ns.count();
  stats.write_records = impl_->write_records.snapshot();
  return stats;
}

}  // namespace tally::log
