// The state image: the format State::save writes and State::load reads
// (docs/snapshots.md gives the grammar). The constants live here, shared by
// writer and reader; snapshots/ stores the image, it does not parse it.
//
// All integers are little-endian; i64 is two's complement. Version 2:
//
//   header    u32 kStateMagic, u32 kStateFormatVersion, u64 last_seq,
//             i64 last_timestamp_ns, i64 idempotency_window_ns
//   subjects  u32 count, count x name          (ids 1..count, in id order)
//   items     u32 count, count x name
//   balances  u64 count, count x (u32 subject id, u32 item id,
//                                 i64 available, i64 held)
//   open      u64 count, count x hold          (in expiry-heap order)
//   finalized u64 count, count x hold          (in window-queue order)
//   long hold keys  u64 count, count x (u64 hold id, name key)
//                                              (ascending ids; LongHoldKeys)
//   keys      u64 count, count x (name key, u64 fingerprint, u64 seq,
//                                 i64 timestamp_ns, u8 reason,
//                                 u32 failed_index)     (oldest first)
//   trailer   u32 kStateEndMagic
//
//   name: u8 length (1..kNameBytesMax), then the bytes
//   hold: u64 id, u32 subject id, u32 item id, i64 qty, i64 expires_at_ns,
//         u8 state (HoldState's value), i64 finalized_at_ns, i64 committed_qty
//
// Balances are written subject by subject, each subject's item list from
// its tail to its head, so inserting them in file order rebuilds the same
// lists. Opening the holds in heap order rebuilds the same heap array.
// The image has no checksum of its own: the store that keeps it checks its
// bytes (snapshots/format.h), and the loader checks structure and
// invariants, so a damaged image is corrupt, never a crash.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "log/status.h"

namespace tally::proj {

inline constexpr std::uint32_t kStateMagic = 0x41545354;     // "TSTA" read as LE bytes
inline constexpr std::uint32_t kStateEndMagic = 0x444e4554;  // "TEND"
inline constexpr std::uint32_t kStateFormatVersion = 2;
// Where the header's idempotency_window_ns lies: a store that keeps images
// reads it to tell which ledger can load one, without parsing the rest.
inline constexpr std::size_t kStateWindowOffset = 24;
// save() hands the sink chunks of at most this many bytes.
inline constexpr std::size_t kStateChunkBytes = 64 * 1024;

// Receives the image in order, in chunks of 1..kStateChunkBytes bytes. A
// non-ok Status stops save() and is returned by it. The chunk is valid only
// during the call.
class StateSink {
 public:
  virtual ~StateSink() = default;
  virtual Status write(std::span<const std::byte> chunk) = 0;
};

// Yields the image in order. read() fills a prefix of `out` and returns its
// length; 0 means the image ended. A non-ok Status stops load().
class StateSource {
 public:
  virtual ~StateSource() = default;
  virtual Result<std::size_t> read(std::span<std::byte> out) = 0;
  // The image's whole size when known. load() then sizes its tables once
  // for the counts the image gives, as far as that many bytes can hold.
  virtual std::optional<std::uint64_t> size_bytes() const { return std::nullopt; }
  // A second source over the same image, starting at byte `offset` (at most
  // the end), independent of this one and usable from another thread while
  // this one is in use. nullptr where the source cannot: load() then reads
  // the image in one pass instead of two sections at once.
  virtual std::unique_ptr<StateSource> open_at(std::uint64_t offset) const {
    (void)offset;
    return nullptr;
  }
};

// Collects the image in memory (tests, tools).
class BufferSink final : public StateSink {
 public:
  Status write(std::span<const std::byte> chunk) override {
    bytes.insert(bytes.end(), chunk.begin(), chunk.end());
    return Status();
  }
  std::vector<std::byte> bytes;
};

// Reads an image from memory, whole or in pieces (a snapshot's chunks, in
// order). The bytes must outlive the source and every source open_at()
// makes from it.
class SpanSource final : public StateSource {
 public:
  explicit SpanSource(std::span<const std::byte> bytes)
      : SpanSource(std::vector<std::span<const std::byte>>{bytes}) {}
  explicit SpanSource(std::vector<std::span<const std::byte>> pieces, std::uint64_t offset = 0);
  Result<std::size_t> read(std::span<std::byte> out) override;
  std::optional<std::uint64_t> size_bytes() const override { return size_bytes_; }
  std::unique_ptr<StateSource> open_at(std::uint64_t offset) const override;

 private:
  std::vector<std::span<const std::byte>> pieces_;
  std::uint64_t size_bytes_ = 0;  // of all pieces
  std::size_t piece_ = 0;         // the one read next
  std::size_t used_ = 0;          // bytes of it read
};

// Another source's bytes, until `cancel` is set: from then on every read
// fails with closed, so a load stops at its next read (an owner that is
// shutting down). Both pointers are borrowed.
class CancellableSource final : public StateSource {
 public:
  CancellableSource(std::unique_ptr<StateSource> inner, const std::atomic<bool>* cancel)
      : inner_(std::move(inner)), cancel_(cancel) {}
  Result<std::size_t> read(std::span<std::byte> out) override;
  std::optional<std::uint64_t> size_bytes() const override { return inner_->size_bytes(); }
  std::unique_ptr<StateSource> open_at(std::uint64_t offset) const override;

 private:
  std::unique_ptr<StateSource> inner_;
  const std::atomic<bool>* cancel_;
};

}  // namespace tally::proj
