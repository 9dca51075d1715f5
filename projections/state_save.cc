// State::save and State::load: the state image of projections/state_format.h.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "log/thread.h"
#include "projections/state.h"
#include "projections/state_digest.h"
#include "projections/state_format.h"
#include "projections/state_impl.h"

namespace tally::proj {

SpanSource::SpanSource(std::vector<std::span<const std::byte>> pieces, std::uint64_t offset)
    : pieces_(std::move(pieces)) {
  for (const std::span<const std::byte> piece : pieces_) size_bytes_ += piece.size();
  // Skip whole pieces, then part of one: each pass moves to the next piece.
  while (piece_ < pieces_.size() && offset >= pieces_[piece_].size()) {
    offset -= pieces_[piece_].size();
    piece_++;
  }
  if (piece_ < pieces_.size()) used_ = static_cast<std::size_t>(offset);
}

Result<std::size_t> SpanSource::read(std::span<std::byte> out) {
  // Fills from the current piece; an exhausted one moves to the next.
  while (piece_ < pieces_.size() && used_ == pieces_[piece_].size()) {
    piece_++;
    used_ = 0;
  }
  if (piece_ == pieces_.size()) return std::size_t{0};
  const std::span<const std::byte> rest = pieces_[piece_].subspan(used_);
  const std::size_t size = std::min(out.size(), rest.size());
  if (size > 0) std::memcpy(out.data(), rest.data(), size);
  used_ += size;
  return size;
}

std::unique_ptr<StateSource> SpanSource::open_at(std::uint64_t offset) const {
  return std::make_unique<SpanSource>(pieces_, offset);
}

Result<std::size_t> CancellableSource::read(std::span<std::byte> out) {
  if (cancel_->load(std::memory_order_relaxed)) {
    return Status(ErrorCode::closed, "loading the state was cancelled");
  }
  return inner_->read(out);
}

std::unique_ptr<StateSource> CancellableSource::open_at(std::uint64_t offset) const {
  std::unique_ptr<StateSource> inner = inner_->open_at(offset);
  if (inner == nullptr) return nullptr;
  return std::make_unique<CancellableSource>(std::move(inner), cancel_);
}

namespace {

Status bad_image(const std::string& what) {
  return Status(ErrorCode::corrupt, "state image: " + what);
}

// Buffers little-endian fields and hands the sink full chunks.
class ImageWriter {
 public:
  explicit ImageWriter(StateSink* sink) : sink_(sink) {}

  void u8(std::uint8_t value) { put(&value, 1); }
  void u32(std::uint32_t value) { le(value, 4); }
  void u64(std::uint64_t value) { le(value, 8); }
  void i64(std::int64_t value) { u64(static_cast<std::uint64_t>(value)); }
  void name(std::string_view text) {
    TALLY_ASSERT(!text.empty());
    TALLY_ASSERT(text.size() <= kNameBytesMax);
    u8(static_cast<std::uint8_t>(text.size()));
    put(text.data(), text.size());
  }
  // The sink's first error; later writes are dropped once one failed.
  Status finish() {
    flush();
    return status_;
  }

 private:
  void le(std::uint64_t value, std::size_t width) {
    std::array<std::uint8_t, 8> bytes{};
    for (std::size_t index = 0; index < width; index++) {
      bytes[index] = static_cast<std::uint8_t>(value >> (8 * index));
    }
    put(bytes.data(), width);
  }
  void put(const void* data, std::size_t size) {
    const auto* bytes = static_cast<const std::byte*>(data);
    // A field is at most 256 bytes, so this loops at most twice.
    while (size > 0) {
      if (used_ == buffer_.size()) flush();
      const std::size_t part = std::min(size, buffer_.size() - used_);
      std::memcpy(buffer_.data() + used_, bytes, part);
      used_ += part;
      bytes += part;
      size -= part;
    }
  }
  void flush() {
    if (used_ > 0 && status_.ok()) status_ = sink_->write(std::span(buffer_.data(), used_));
    used_ = 0;
  }

  StateSink* sink_;
  std::vector<std::byte> buffer_ = std::vector<std::byte>(kStateChunkBytes);
  std::size_t used_ = 0;
  Status status_;
};

// The little-endian unsigned integer of `width` (at most 8) bytes at `at`.
std::uint64_t decode_le(const std::byte* at, std::size_t width) {
  std::uint64_t value = 0;
  for (std::size_t index = 0; index < width; index++) {
    value |= std::uint64_t{std::to_integer<std::uint8_t>(at[index])} << (8 * index);
  }
  return value;
}

// Reads fields from a source through a buffer. Every read checks for the
// end of the image; a short image is corrupt.
class ImageReader {
 public:
  // `start`: where in the image the source begins.
  explicit ImageReader(StateSource* source, std::uint64_t start = 0)
      : source_(source), start_(start) {}

  // Where in the image the next field begins.
  std::uint64_t offset() const { return start_ + source_bytes_ - (filled_ - used_); }

  Result<std::uint8_t> u8() {
    std::uint8_t value = 0;
    TALLY_TRY(take(&value, 1));
    return value;
  }
  Result<std::uint32_t> u32() {
    Result<std::uint64_t> value = le(4);
    if (!value) return value.status();
    return static_cast<std::uint32_t>(*value);
  }
  Result<std::uint64_t> u64() { return le(8); }
  Result<std::int64_t> i64() {
    Result<std::uint64_t> value = le(8);
    if (!value) return value.status();
    return static_cast<std::int64_t>(*value);
  }
  // A view into `scratch`, valid until the next name().
  Result<std::string_view> name(std::string* scratch) {
    Result<std::uint8_t> size = u8();
    if (!size) return size.status();
    if (*size == 0) return bad_image("empty name");
    scratch->resize(*size);
    TALLY_TRY(take(scratch->data(), *size));
    return std::string_view(*scratch);
  }
  // The next out.size() bytes, for a caller that decodes several fields
  // at once (decode_le).
  Status bytes(std::span<std::byte> out) { return take(out.data(), out.size()); }
  std::optional<std::uint64_t> source_size_bytes() const { return source_->size_bytes(); }

  // ok when the image ends here.
  Status expect_end() {
    if (used_ < filled_) return bad_image("bytes after the trailer");
    Result<std::size_t> more = source_->read(std::span(buffer_.data(), buffer_.size()));
    if (!more) return more.status();
    if (*more != 0) return bad_image("bytes after the trailer");
    return Status();
  }

 private:
  Result<std::uint64_t> le(std::size_t width) {
    std::array<std::byte, 8> bytes{};
    TALLY_TRY(take(bytes.data(), width));
    return decode_le(bytes.data(), width);
  }
  Status take(void* data, std::size_t size) {
    if (filled_ - used_ >= size) {  // nearly always: the field is buffered whole
      std::memcpy(data, buffer_.data() + used_, size);
      used_ += size;
      return Status();
    }
    return take_across(data, size);
  }
  Status take_across(void* data, std::size_t size) {
    auto* out = static_cast<std::byte*>(data);
    // Each pass consumes buffered bytes or refills; a refill of 0 ends it.
    while (size > 0) {
      if (used_ == filled_) {
        Result<std::size_t> got = source_->read(std::span(buffer_.data(), buffer_.size()));
        if (!got) return got.status();
        if (*got == 0) return bad_image("truncated");
        TALLY_ASSERT(*got <= buffer_.size());
        source_bytes_ += *got;
        filled_ = *got;
        used_ = 0;
      }
      const std::size_t part = std::min(size, filled_ - used_);
      std::memcpy(out, buffer_.data() + used_, part);
      used_ += part;
      out += part;
      size -= part;
    }
    return Status();
  }

  StateSource* source_;
  std::uint64_t start_;
  std::uint64_t source_bytes_ = 0;  // read from the source so far
  std::vector<std::byte> buffer_ = std::vector<std::byte>(kStateChunkBytes);
  std::size_t filled_ = 0;
  std::size_t used_ = 0;
};

// Bytes per entry of the fixed-size sections, as save() writes them.
constexpr std::uint64_t kBalanceEntryBytes = 4 + 4 + 8 + 8;
constexpr std::uint64_t kHoldEntryBytes = 8 + 4 + 4 + 8 + 8 + 1 + 8 + 8;

// Assigns `*out` from a Result, or returns its error from the caller.
#define TALLY_READ(out, expr)                     \
  do {                                            \
    auto tally_read_ = (expr);                    \
    if (!tally_read_) return tally_read_.status(); \
    (out) = *tally_read_;                         \
  } while (0)

void write_hold(ImageWriter* out, const HoldRecord& hold) {
  out->u64(hold.id);
  out->u32(hold.subject);
  out->u32(hold.item);
  out->i64(hold.qty);
  out->i64(hold.expires_at_ns);
  out->u8(static_cast<std::uint8_t>(hold.state));
  out->i64(hold.finalized_at_ns);
  out->i64(hold.committed_qty);
}

void write_names(ImageWriter* out, const NameTable& names) {
  TALLY_ASSERT(names.size() < UINT32_MAX);
  out->u32(static_cast<std::uint32_t>(names.size()));
  for (std::size_t id = 1; id <= names.size(); id++) {
    out->name(names.view(static_cast<std::uint32_t>(id)));
  }
}

}  // namespace

// ---------------------------------------------------------------- save

Status State::save(StateSink& sink) const {
  const Impl& impl = *impl_;
  TALLY_ASSERT(impl.keys_waiting.empty());
  ImageWriter out(&sink);
  out.u32(kStateMagic);
  out.u32(kStateFormatVersion);
  out.u64(impl.last_seq);
  out.i64(impl.last_timestamp_ns);
  out.i64(impl.options.idempotency_window_ns);
  write_names(&out, impl.subjects);
  write_names(&out, impl.items);
  out.u64(impl.balances.size());
  std::vector<const BalanceSlot*> list;  // one subject's items, head first
  std::size_t written = 0;
  for (std::uint32_t subject = 1; subject < impl.subject_heads.size(); subject++) {
    list.clear();
    for (std::uint32_t item = impl.subject_heads[subject]; item != 0;) {
      TALLY_ASSERT(list.size() < impl.balances.size());
      list.push_back(impl.find_balance(subject, item));
      TALLY_ASSERT(list.back() != nullptr);
      item = list.back()->next_item;
    }
    // Tail first: loading inserts each at the head of the list.
    for (auto it = list.rbegin(); it != list.rend(); ++it) {
      out.u32(subject_of((*it)->pair));
      out.u32(item_of((*it)->pair));
      out.i64((*it)->available);
      out.i64((*it)->held);
    }
    written += list.size();
  }
  TALLY_ASSERT(written == impl.balances.size());
  out.u64(impl.holds.open_count());
  impl.holds.for_each_open([&](const HoldRecord& hold) { write_hold(&out, hold); });
  out.u64(impl.holds.finalized_count());
  impl.holds.for_each_finalized([&](const HoldRecord& hold) { write_hold(&out, hold); });
  out.u64(impl.long_hold_keys.size());
  for (const auto& [id, key] : impl.long_hold_keys.entries()) {
    out.u64(id);
    out.name(key);
  }
  out.u64(impl.keys.size());
  impl.keys.for_each([&](std::string_view key, const KeyRecord& record) {
    out.name(key);
    out.u64(record.fingerprint);
    out.u64(record.seq);
    out.i64(record.timestamp_ns);
    out.u8(static_cast<std::uint8_t>(record.reason));
    out.u32(record.failed_index);
  });
  out.u32(kStateEndMagic);
  return out.finish();
}

// ---------------------------------------------------------------- load

// A nested class of State, so it may reach the Impl it fills.
struct State::Loader {
 public:
  // Entries are read a batch at a time and their table slots prefetched
  // before any is inserted, so that the cache misses of a batch overlap.
  static constexpr std::size_t kBatch = 32;

  Loader(ImageReader* in, State::Impl* impl) : in_(in), impl_(impl) {}

  Status header(const StateOptions& options);
  Status names(NameTable* names, bool subjects);
  Status balances();
  Status holds(bool open);
  Status long_hold_keys();
  Status keys();
  // keys(), then the trailer and the end of the image.
  Status keys_to_end();

  StateDigest digest;  // of every entry read so far

 private:
  Result<HoldRecord> hold();
  // Reads the next min(kBatch, left) holds into `batch` and prefetches
  // their slots and subjects' locs; returns how many.
  Result<std::size_t> read_holds(std::span<HoldRecord, kBatch> batch, std::uint64_t left);
  bool known_pair(std::uint32_t subject, std::uint32_t item) const {
    return subject != 0 && subject <= impl_->subjects.size() && item != 0 &&
           item <= impl_->items.size();
  }

  // How many of `count` entries to size a table for: no more than the rest
  // of the image can hold at `entry_bytes_min` each.
  std::uint64_t reserve_count(std::uint64_t count, std::uint64_t entry_bytes_min) const {
    const std::optional<std::uint64_t> size = in_->source_size_bytes();
    return size ? std::min(count, *size / entry_bytes_min) : 0;
  }

  ImageReader* in_;
  State::Impl* impl_;
  std::string scratch_;
};

Status State::Loader::header(const StateOptions& options) {
  std::uint32_t magic = 0;
  std::uint32_t version = 0;
  std::int64_t saved_window_ns = 0;
  TALLY_READ(magic, in_->u32());
  if (magic != kStateMagic) return bad_image("bad magic");
  TALLY_READ(version, in_->u32());
  if (version != kStateFormatVersion) {
    return bad_image("format version " + std::to_string(version) + ", this build reads " +
                     std::to_string(kStateFormatVersion));
  }
  TALLY_READ(impl_->last_seq, in_->u64());
  TALLY_READ(impl_->last_timestamp_ns, in_->i64());
  TALLY_READ(saved_window_ns, in_->i64());
  if (impl_->last_seq > log::kHoldSeqMask) return bad_image("last seq past the HoldId range");
  if (options.window_from_image) {
    if (saved_window_ns < 0) return bad_image("negative idempotency window");
    impl_->options.idempotency_window_ns = saved_window_ns;
  } else if (saved_window_ns != options.idempotency_window_ns) {
    return Status(ErrorCode::invalid,
                  "state image: saved with an idempotency window of " +
                      std::to_string(saved_window_ns) + " ns, the options say " +
                      std::to_string(options.idempotency_window_ns));
  }
  return Status();
}

Status State::Loader::names(NameTable* names, bool subjects) {
  std::uint32_t count = 0;
  TALLY_READ(count, in_->u32());
  if (count == UINT32_MAX) return bad_image("too many names");
  // length and at least one byte
  names->reserve(reserve_count(count, 2));
  struct Entry {
    std::array<char, kNameBytesMax> bytes;
    std::uint8_t size = 0;
    std::uint32_t hash = 0;
  };
  std::array<Entry, kBatch> batch;
  // Each pass reads a name (or fails), so the image's length bounds it.
  for (std::uint32_t done = 0; done < count;) {
    const std::uint32_t size = std::min<std::uint32_t>(kBatch, count - done);
    for (std::uint32_t index = 0; index < size; index++) {
      Entry& entry = batch[index];
      std::string_view name;
      TALLY_READ(name, in_->name(&scratch_));
      std::memcpy(entry.bytes.data(), name.data(), name.size());
      entry.size = static_cast<std::uint8_t>(name.size());
      entry.hash = NameTable::hash_of(name);
      names->prefetch(entry.hash);
    }
    for (std::uint32_t index = 0; index < size; index++) {
      const Entry& entry = batch[index];
      const std::string_view name(entry.bytes.data(), entry.size);
      const std::uint32_t id = done + index + 1;
      // An older id when the name was interned before.
      const std::uint32_t interned =
          subjects ? impl_->intern_subject(name, entry.hash) : names->intern(name, entry.hash);
      if (interned != id) return bad_image("name interned twice");
    }
    done += size;
  }
  return Status();
}

Status State::Loader::balances() {
  std::uint64_t count = 0;
  TALLY_READ(count, in_->u64());
  impl_->balances.reserve(reserve_count(count, kBalanceEntryBytes));
  struct Entry {
    std::uint32_t subject = 0;
    std::uint32_t item = 0;
    std::int64_t available = 0;
    std::int64_t held = 0;
  };
  std::array<Entry, kBatch> batch;
  for (std::uint64_t done = 0; done < count;) {
    const std::size_t size = static_cast<std::size_t>(std::min<std::uint64_t>(kBatch, count - done));
    for (std::size_t index = 0; index < size; index++) {
      Entry& entry = batch[index];
      std::array<std::byte, kBalanceEntryBytes> fields;
      TALLY_TRY(in_->bytes(fields));
      entry.subject = static_cast<std::uint32_t>(decode_le(&fields[0], 4));
      entry.item = static_cast<std::uint32_t>(decode_le(&fields[4], 4));
      entry.available = static_cast<std::int64_t>(decode_le(&fields[8], 8));
      entry.held = static_cast<std::int64_t>(decode_le(&fields[16], 8));
      if (!known_pair(entry.subject, entry.item)) return bad_image("balance of an unknown name id");
      if (entry.available < 0 || entry.held < 0) return bad_image("negative balance");
      if (entry.available == 0 && entry.held == 0) return bad_image("zero balance stored");
      impl_->balances.prefetch(mix64(pair_of(entry.subject, entry.item)));
    }
    for (std::size_t index = 0; index < size; index++) {
      const Entry& entry = batch[index];
      BalanceSlot* slot = impl_->upsert_balance(entry.subject, entry.item);
      // A slot found rather than inserted holds the non-zero balance of an
      // earlier entry.
      if (slot->available != 0 || slot->held != 0) return bad_image("balance stored twice");
      slot->available = entry.available;
      slot->held = entry.held;
      digest.balance(impl_->subjects.view(entry.subject), impl_->items.view(entry.item),
                     entry.available, entry.held);
    }
    done += size;
  }
  return Status();
}

Result<HoldRecord> State::Loader::hold() {
  HoldRecord hold;
  // id, subject, item, qty, expires_at, state, finalized_at, committed_qty:
  // read at once, this runs for every hold.
  std::array<std::byte, kHoldEntryBytes> fields;
  TALLY_TRY(in_->bytes(fields));
  hold.id = decode_le(&fields[0], 8);
  hold.subject = static_cast<std::uint32_t>(decode_le(&fields[8], 4));
  hold.item = static_cast<std::uint32_t>(decode_le(&fields[12], 4));
  hold.qty = static_cast<std::int64_t>(decode_le(&fields[16], 8));
  hold.expires_at_ns = static_cast<std::int64_t>(decode_le(&fields[24], 8));
  const auto state = static_cast<std::uint8_t>(decode_le(&fields[32], 1));
  hold.finalized_at_ns = static_cast<std::int64_t>(decode_le(&fields[33], 8));
  hold.committed_qty = static_cast<std::int64_t>(decode_le(&fields[41], 8));
  if (hold.id == 0) return bad_image("hold id 0");
  if (log::hold_id_seq(hold.id) > impl_->last_seq) return bad_image("hold from the future");
  if (!known_pair(hold.subject, hold.item)) return bad_image("hold of an unknown name id");
  if (hold.qty <= 0) return bad_image("hold qty not positive");
  if (state > static_cast<std::uint8_t>(HoldState::expired)) return bad_image("bad hold state");
  hold.state = static_cast<HoldState>(state);
  return hold;
}

Result<std::size_t> State::Loader::read_holds(std::span<HoldRecord, kBatch> batch,
                                              std::uint64_t left) {
  const auto size = static_cast<std::size_t>(std::min<std::uint64_t>(kBatch, left));
  for (std::size_t index = 0; index < size; index++) {
    TALLY_READ(batch[index], hold());
    impl_->holds.prefetch(batch[index].id);
    impl_->subjects.prefetch_loc(batch[index].subject);
  }
  return size;
}

Status State::Loader::holds(bool open) {
  std::uint64_t count = 0;
  TALLY_READ(count, in_->u64());
  impl_->holds.reserve(impl_->holds.open_count() + impl_->holds.finalized_count() +
                       reserve_count(count, kHoldEntryBytes));
  // The holds' subjects come in no order, and the digest's view of a
  // subject's name waits on two misses, one after the other: its loc, then
  // its record. So two batches are in flight: one is read, with its hold
  // slots and subject locs prefetched, between the prefetch of the subject
  // records of the batch before and its insertion.
  std::array<std::array<HoldRecord, kBatch>, 2> batches;
  std::uint64_t left = count;
  std::size_t size = 0;
  TALLY_READ(size, read_holds(batches[0], left));
  for (std::size_t current = 0; size > 0; current ^= 1) {
    const std::span<const HoldRecord> batch(batches[current].data(), size);
    for (const HoldRecord& hold : batch) impl_->subjects.prefetch_record(hold.subject);
    left -= size;
    // A problem in the batch read ahead is reported after those before it.
    const Result<std::size_t> next = read_holds(batches[current ^ 1], left);
    for (const HoldRecord& hold : batch) {
      if (impl_->holds.find(hold.id) != nullptr) return bad_image("hold stored twice");
      digest.hold(hold, impl_->subjects.view(hold.subject), impl_->items.view(hold.item));
      if (open) {
        if (hold.state != HoldState::open) return bad_image("finalized hold among the open");
        impl_->holds.open(hold);
        continue;
      }
      if (hold.state == HoldState::open) return bad_image("open hold among the finalized");
      if (hold.finalized_at_ns < impl_->holds.last_finalized_at_ns() ||
          hold.finalized_at_ns > impl_->last_timestamp_ns) {
        return bad_image("finalized holds out of order");
      }
      impl_->holds.restore_finalized(hold);
    }
    TALLY_READ(size, next);
  }
  return Status();
}

Status State::Loader::long_hold_keys() {
  std::uint64_t count = 0;
  TALLY_READ(count, in_->u64());
  HoldId previous = 0;
  // Each pass reads an entry (or fails), so the image's length bounds it.
  for (std::uint64_t done = 0; done < count; done++) {
    HoldId id = 0;
    std::string_view key;
    TALLY_READ(id, in_->u64());
    TALLY_READ(key, in_->name(&scratch_));
    if (id <= previous) return bad_image("long holds' keys out of order");
    previous = id;
    if (impl_->holds.find(id) == nullptr) return bad_image("key of an unknown hold");
    if (impl_->long_hold_keys.find(key) != 0) return bad_image("a long hold's key stored twice");
    impl_->long_hold_keys.add(id, key);
    digest.long_hold_key(id, key);
  }
  return Status();
}

Status State::Loader::keys() {
  std::uint64_t count = 0;
  TALLY_READ(count, in_->u64());
  // key length and at least one byte, fingerprint, seq, time, reason, failed index
  constexpr std::uint64_t kKeyBytesMin = 1 + 1 + 8 + 8 + 8 + 1 + 4;
  impl_->keys.reserve(reserve_count(count, kKeyBytesMin));
  // Indexed a million at a time, grouped by where their slots lie
  // (KeyIndex::index_added): the index fills a region at a time instead of
  // at random, and the keys waiting cost at most 16 MB (and as much scratch),
  // fewer when the image is too small to hold a million.
  constexpr std::uint64_t kIndexEvery = std::uint64_t{1} << 20;
  const std::uint64_t count_max =
      in_->source_size_bytes() ? reserve_count(count, kKeyBytesMin) : count;
  const auto run_max =
      static_cast<std::size_t>(std::clamp<std::uint64_t>(count_max, 1, kIndexEvery));
  std::vector<KeyIndex::Added> added;
  added.reserve(run_max);
  const auto scratch = std::make_unique_for_overwrite<KeyIndex::Added[]>(run_max);
  std::int64_t previous_ns = INT64_MIN;
  for (std::uint64_t done = 0; done < count; done++) {
    std::string_view key;
    KeyRecord record;
    TALLY_READ(key, in_->name(&scratch_));
    // fingerprint, seq, timestamp_ns, reason, failed_index: read at once,
    // this loop runs for every remembered key.
    std::array<std::byte, 8 + 8 + 8 + 1 + 4> fields;
    TALLY_TRY(in_->bytes(fields));
    record.fingerprint = decode_le(&fields[0], 8);
    record.seq = decode_le(&fields[8], 8);
    record.timestamp_ns = static_cast<std::int64_t>(decode_le(&fields[16], 8));
    const auto reason = static_cast<std::uint8_t>(decode_le(&fields[24], 1));
    record.failed_index = static_cast<std::uint32_t>(decode_le(&fields[25], 4));
    if (reason > static_cast<std::uint8_t>(log::Reason::hold_finalized)) {
      return bad_image("bad key reason");
    }
    record.reason = static_cast<log::Reason>(reason);
    if (record.seq == 0 || record.seq > impl_->last_seq) return bad_image("key from the future");
    if (record.timestamp_ns < previous_ns || record.timestamp_ns > impl_->last_timestamp_ns) {
      return bad_image("keys out of order");
    }
    previous_ns = record.timestamp_ns;
    added.push_back(impl_->keys.add_unindexed(key, KeyIndex::hash_of(key), record));
    digest.key(key, record);
    if (added.size() == run_max || done + 1 == count) {
      if (!impl_->keys.index_added(added, std::span(scratch.get(), run_max),
                                   KeyIndex::Repeats::refused)) {
        return bad_image("key stored twice");
      }
      added.clear();
    }
  }
  return Status();
}

Status State::Loader::keys_to_end() {
  TALLY_TRY(keys());
  std::uint32_t end = 0;
  TALLY_READ(end, in_->u32());
  if (end != kStateEndMagic) return bad_image("bad trailer");
  return in_->expect_end();
}

namespace {

// Where the keys section begins, for an image whose names start at
// `offset`: the names are skimmed (only their lengths matter) and the
// fixed-size sections skipped by their counts, through sources of their
// own. nullopt when the source cannot be read from other places, or the
// image does not add up (the load in one pass then says how).
std::optional<std::uint64_t> find_keys_offset(const StateSource& source, std::uint64_t offset) {
  std::unique_ptr<StateSource> names_source = source.open_at(offset);
  if (names_source == nullptr) return std::nullopt;
  ImageReader names(names_source.get(), offset);
  std::string scratch;
  for (int table = 0; table < 2; table++) {  // subjects, items
    Result<std::uint32_t> count = names.u32();
    if (!count) return std::nullopt;
    for (std::uint32_t index = 0; index < *count; index++) {
      if (!names.name(&scratch)) return std::nullopt;
    }
  }
  offset = names.offset();
  const std::uint64_t size = source.size_bytes().value_or(0);
  for (const std::uint64_t entry_bytes : {kBalanceEntryBytes, kHoldEntryBytes, kHoldEntryBytes}) {
    std::unique_ptr<StateSource> section = source.open_at(offset);
    ImageReader in(section.get(), offset);
    Result<std::uint64_t> count = in.u64();
    if (!count || *count > size / entry_bytes) return std::nullopt;
    offset += 8 + *count * entry_bytes;
  }
  // The long holds' keys: few, skimmed like the names.
  std::unique_ptr<StateSource> long_hold_keys_source = source.open_at(offset);
  ImageReader long_hold_keys(long_hold_keys_source.get(), offset);
  Result<std::uint64_t> count = long_hold_keys.u64();
  if (!count) return std::nullopt;
  for (std::uint64_t index = 0; index < *count; index++) {
    if (!long_hold_keys.u64() || !long_hold_keys.name(&scratch)) return std::nullopt;
  }
  return long_hold_keys.offset();
}

}  // namespace

Result<std::unique_ptr<State>> State::load(StateSource& source, StateOptions options,
                                           std::uint64_t* digest,
                                           const std::function<Status()>& check) {
  if (options.idempotency_window_ns < 0) {
    return Status(ErrorCode::invalid, "negative idempotency window");
  }
  auto state = std::make_unique<State>(options);
  Impl* impl = state->impl_.get();
  ImageReader in(&source);
  Loader loader(&in, impl);
  const Status header = loader.header(options);
  if (!header.ok()) {
    // A failed check first, as below: damage can fail the header in any
    // way, a window that differs too, and the image must not pass for
    // sound but saved with another window.
    if (check) TALLY_TRY(check());
    return header;
  }
  // The idempotency keys, half of a large image, need nothing loaded before
  // them: where the source can be read from two places, a second thread
  // loads them (into the key index only) while this one loads the rest.
  const std::optional<std::uint64_t> keys_offset = find_keys_offset(source, in.offset());
  std::unique_ptr<StateSource> keys_source =
      keys_offset ? source.open_at(*keys_offset) : nullptr;
  std::optional<ImageReader> keys_in;
  std::optional<Loader> keys_loader;
  // The check runs on whichever loading thread is done with its part first
  // (which one that is depends on the state's shape: keys or balances).
  Status checked;
  std::atomic<bool> check_taken{!check};
  const auto take_check = [&] {
    if (!check_taken.exchange(true)) checked = check();
  };
  Status keys_status;
  std::thread keys_thread;
  if (keys_source != nullptr) {
    keys_in.emplace(keys_source.get(), *keys_offset);
    keys_loader.emplace(&*keys_in, impl);
    auto started = start_thread("tally-keys", [&] {
      keys_status = keys_loader->keys_to_end();
      take_check();
    });
    // Without a second thread, this one loads the keys after the rest.
    if (started) keys_thread = std::move(*started);
  }
  if (!keys_thread.joinable()) {
    take_check();  // first: no thread runs beside this one
    TALLY_TRY(checked);
  }
  Status rest = [&]() -> Status {
    TALLY_TRY(loader.names(&impl->subjects, true));
    TALLY_TRY(loader.names(&impl->items, false));
    TALLY_TRY(loader.balances());
    TALLY_TRY(loader.holds(true));
    TALLY_TRY(loader.holds(false));
    TALLY_TRY(loader.long_hold_keys());
    if (keys_source == nullptr) return loader.keys_to_end();
    if (in.offset() != *keys_offset) return bad_image("sections do not line up");
    return Status();
  }();
  // held must equal the open holds of each pair; the image could agree
  // with itself field by field and still not add up. The rest of
  // check_invariants() holds by construction: balances() refused negative,
  // zero and repeated entries, and linked each pair into its subject's list
  // as it inserted it; holds() refused repeated ids and finalized holds out
  // of order, and the hold table keeps its own structures in step (checking
  // them probed the index once per hold: 0.1 s of a 1.4 M-hold image). The
  // part that needs no keys runs while they load.
  const Status held = rest.ok() ? impl->check_held() : Status();
  if (keys_thread.joinable()) {
    take_check();
    keys_thread.join();
  } else if (keys_loader && rest.ok()) {
    keys_status = keys_loader->keys_to_end();
  }
  // A failed check first; then the earlier problem in the image.
  TALLY_TRY(checked);
  TALLY_TRY(rest);
  TALLY_TRY(keys_status);
  for (const Status& invariants : {held, impl->check_long_hold_keys()}) {
    if (!invariants.ok()) return bad_image(invariants.message());
  }
  if (keys_loader) loader.digest.add(keys_loader->digest);
  if (digest != nullptr) *digest = loader.digest.finish(impl->last_seq, impl->last_timestamp_ns);
  return state;
}

#undef TALLY_READ

}  // namespace tally::proj
