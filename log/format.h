// The on-disk log format: every constant the writer and the reader share.
// docs/log-format.md is the byte-level grammar; this header is its code.
//
// A segment file is `log/<first seq, 16 decimal digits>.seg`:
//
//   SegmentHeader (64 bytes)
//   Frame, Frame, ...             each 8-byte aligned
//   zero bytes to the preallocated size
//
// A frame is a 32-byte FrameHeader followed by the payload (a serialized Cap'n
// Proto message of log/events.capnp) and zero padding to a multiple of 8:
//
//   offset size field
//   0      8    checksum       XXH3-64 of bytes [8, 32 + length) of the frame
//   8      4    length         payload bytes, excluding padding, > 0
//   12     4    flags          0 (reserved; readers reject anything else)
//   16     8    seq            1, 2, 3, ... with no gaps across all segments
//   24     8    prev_checksum  checksum of the previous frame in the log (the
//                              segment header's prev_checksum for the first
//                              frame of a segment): the chain
//
// All integers are little-endian. A frame verifies on its own (checksum over
// header and payload), and the chain links it to its predecessor, so a
// deleted, reordered or altered frame breaks the chain where it happened.
#pragma once

#include <cstddef>
#include <cstdint>
#include <bit>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "log/status.h"

namespace tally::log {

// ---- segment header -------------------------------------------------------

inline constexpr std::uint64_t kSegmentMagic = 0x47455359'4C4C4154ull;  // "TALLYSEG"
inline constexpr std::uint32_t kFormatVersion = 1;
inline constexpr std::size_t kSegmentHeaderSize = 64;

// Layout of the 64-byte segment header.
inline constexpr std::size_t kSegMagicOffset = 0;          // u64 kSegmentMagic
inline constexpr std::size_t kSegVersionOffset = 8;        // u32 kFormatVersion
inline constexpr std::size_t kSegHeaderSizeOffset = 12;    // u32 kSegmentHeaderSize
inline constexpr std::size_t kSegFirstSeqOffset = 16;      // u64 seq of the first frame
inline constexpr std::size_t kSegPrevChecksumOffset = 24;  // u64 chain value before it
inline constexpr std::size_t kSegSizeOffset = 32;          // u64 preallocated file size
inline constexpr std::size_t kSegCreatedOffset = 40;       // i64 ns since epoch, informative
inline constexpr std::size_t kSegReservedOffset = 48;      // u64 zero
inline constexpr std::size_t kSegChecksumOffset = 56;      // u64 XXH3-64 of bytes [0, 56)

// The chain value that precedes the first frame of a log.
inline constexpr std::uint64_t kChainSeed = 0;

// ---- frames ----------------------------------------------------------------

inline constexpr std::size_t kFrameHeaderSize = 32;
inline constexpr std::size_t kFrameChecksumOffset = 0;
inline constexpr std::size_t kFrameLengthOffset = 8;
inline constexpr std::size_t kFrameFlagsOffset = 12;
inline constexpr std::size_t kFrameSeqOffset = 16;
inline constexpr std::size_t kFramePrevOffset = 24;
// The checksum covers everything after the checksum field itself.
inline constexpr std::size_t kFrameChecksummedFrom = kFrameLengthOffset;
inline constexpr std::size_t kFrameAlignment = 8;

// Limits. A record never spans segments, so it must fit an empty one.
inline constexpr std::uint32_t kRecordPayloadBytesMax = 1u << 20;  // 1 MiB
inline constexpr std::uint64_t kSegmentSizeBytesDefault = 64ull << 20;
inline constexpr std::uint64_t kSegmentSizeBytesMin = 64ull << 10;
inline constexpr std::uint64_t kSegmentSizeBytesMax = 1ull << 32;

static_assert(kSegmentHeaderSize % kFrameAlignment == 0);
static_assert(kFrameHeaderSize % kFrameAlignment == 0);
static_assert(kSegChecksumOffset + 8 == kSegmentHeaderSize);
static_assert(kFramePrevOffset + 8 == kFrameHeaderSize);
static_assert(kSegmentSizeBytesMin > kSegmentHeaderSize + kFrameHeaderSize + 4096,
              "the smallest segment must hold ordinary events");
static_assert(kSegmentSizeBytesDefault >=
              kSegmentHeaderSize + kFrameHeaderSize + kRecordPayloadBytesMax);

// Bytes a frame with `payload_bytes` of payload occupies, padding included.
constexpr std::size_t frame_size(std::size_t payload_bytes) {
  return kFrameHeaderSize + (payload_bytes + kFrameAlignment - 1) / kFrameAlignment * kFrameAlignment;
}

// The largest payload a segment of `segment_size_bytes` can hold in one frame.
constexpr std::size_t payload_bytes_max(std::uint64_t segment_size_bytes) {
  const std::uint64_t room = segment_size_bytes - kSegmentHeaderSize - kFrameHeaderSize;
  return room < kRecordPayloadBytesMax ? static_cast<std::size_t>(room) : kRecordPayloadBytesMax;
}

// ---- little-endian helpers ----------------------------------------------

inline std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;  // the formats are little-endian; so is every supported host
}
inline std::uint64_t load_u64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_u32(std::byte* p, std::uint32_t v) { std::memcpy(p, &v, sizeof v); }
inline void store_u64(std::byte* p, std::uint64_t v) { std::memcpy(p, &v, sizeof v); }
static_assert(std::endian::native == std::endian::little, "tally's formats assume a little-endian host");

// ---- encoding and checking (format.cc) -------------------------------------
// The writer, the reader and the tools share these, so the layout is written
// once.

struct SegmentHeader {
  std::uint64_t first_seq = 0;
  std::uint64_t prev_checksum = kChainSeed;
  std::uint64_t size_bytes = 0;
  std::int64_t created_ns = 0;
};

// Writes the 64-byte header, magic, version and checksum included.
void encode_segment_header(const SegmentHeader& header, std::span<std::byte, kSegmentHeaderSize> out);
// The XXH3-64 a segment header's checksum field must hold.
std::uint64_t segment_header_checksum(std::span<const std::byte, kSegmentHeaderSize> bytes);
// Decodes a header whose checksum verifies. Returns an empty string when it
// is a valid header of this format, else why not (bad magic, version, ...).
std::string decode_segment_header(std::span<const std::byte, kSegmentHeaderSize> bytes,
                                  SegmentHeader* header);

struct FrameHeader {
  std::uint64_t checksum = 0;
  std::uint32_t length = 0;
  std::uint32_t flags = 0;
  std::uint64_t seq = 0;
  std::uint64_t prev_checksum = 0;
};

inline FrameHeader load_frame_header(const std::byte* frame) {
  FrameHeader header;
  header.checksum = load_u64(frame + kFrameChecksumOffset);
  header.length = load_u32(frame + kFrameLengthOffset);
  header.flags = load_u32(frame + kFrameFlagsOffset);
  header.seq = load_u64(frame + kFrameSeqOffset);
  header.prev_checksum = load_u64(frame + kFramePrevOffset);
  return header;
}

// XXH3-64 of bytes [kFrameChecksummedFrom, kFrameHeaderSize + length) of the
// frame starting at `frame`.
std::uint64_t frame_checksum(const std::byte* frame, std::uint32_t length);

// Frames `payload` at `out`, which has room for frame_size(payload.size())
// bytes: header, payload, zero padding. Returns the frame's checksum.
std::uint64_t encode_frame(std::byte* out, std::uint64_t seq, std::uint64_t prev_checksum,
                           std::span<const std::byte> payload);

// ---- names -----------------------------------------------------------------

// Segment names have a fixed width so that sorting names sorts seqs.
inline constexpr std::size_t kSegmentNameDigits = 16;
inline constexpr std::uint64_t kSeqMax = 9'999'999'999'999'999ull;  // fits the name
// "0000000000000001.seg" for first seq 1. Precondition: first_seq <= kSeqMax.
std::string segment_file_name(std::uint64_t first_seq);
// Parses a segment file name; false when `name` is not one.
bool parse_segment_file_name(const std::string& name, std::uint64_t* first_seq);
// "segment 0000000000000001.seg offset 4160": how every message names a
// place in the log.
std::string log_position(std::uint64_t segment_first_seq, std::uint64_t offset);
// A corrupt Status "<log_position>: <why>".
Status corrupt_at(std::uint64_t segment_first_seq, std::uint64_t offset, std::string_view why);

// invalid ("segment size N must be a multiple of 8 from 65536 to
// 4294967296": frames are 8-byte aligned) unless a segment may be
// `size_bytes` long.
Status check_segment_size(std::uint64_t size_bytes);

}  // namespace tally::log
