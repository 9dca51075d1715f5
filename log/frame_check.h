// Checking one frame on its own, shared by the reader (log/reader.h) and the
// tail (log/tail.h). Internal to log/.
#pragma once

#include <cstdint>
#include <string>

#include "log/format.h"

namespace tally::log {

// What the bytes at a frame position hold, judged on their own (the chain is
// checked by the caller).
enum class FrameVerdict : std::uint8_t {
  valid,
  zero,         // all zeros: no frame was written here
  truncated,    // the frame would run past the end of the segment's data
  bad_length,
  bad_flags,
  bad_checksum,
  bad_padding,
};

inline std::string describe(FrameVerdict verdict, const FrameHeader& header) {
  switch (verdict) {
    case FrameVerdict::valid: return "valid frame";
    case FrameVerdict::zero: return "zeroed frame";
    case FrameVerdict::truncated: return "frame runs past the end of the segment";
    case FrameVerdict::bad_length: return "frame length " + std::to_string(header.length) + " out of range";
    case FrameVerdict::bad_flags: return "frame flags " + std::to_string(header.flags) + " are not zero";
    case FrameVerdict::bad_checksum: return "frame checksum mismatch";
    case FrameVerdict::bad_padding: return "nonzero padding after the frame's payload";
  }
  return "invalid frame";
}

inline bool all_zero(const std::byte* base, std::uint64_t from, std::uint64_t to) {
  for (std::uint64_t offset = from; offset < to; offset++) {
    if (base[offset] != std::byte{0}) return false;
  }
  return true;
}

// Checks the frame at `offset` on its own: plausible length, inside the
// data, flags zero, checksum, zero padding. This is the replay hot path.
inline FrameVerdict verify_frame(const std::byte* base, std::uint64_t offset,
                                 std::uint64_t data_end, std::uint32_t payload_max,
                                 FrameHeader* header) {
  if (data_end - offset < kFrameHeaderSize) {
    return all_zero(base, offset, data_end) ? FrameVerdict::zero : FrameVerdict::truncated;
  }
  const std::byte* frame = base + offset;
  *header = load_frame_header(frame);
  if (header->length == 0) {
    const bool zero = header->checksum == 0 && header->flags == 0 && header->seq == 0 &&
                      header->prev_checksum == 0;
    return zero ? FrameVerdict::zero : FrameVerdict::bad_length;
  }
  if (header->length > payload_max) return FrameVerdict::bad_length;
  if (frame_size(header->length) > data_end - offset) return FrameVerdict::truncated;
  if (header->flags != 0) return FrameVerdict::bad_flags;
  if (header->checksum != frame_checksum(frame, header->length)) return FrameVerdict::bad_checksum;
  // The checksum stops at the payload's end, so the padding is checked
  // here: in the payload's last word, the bytes past the payload.
  const std::uint32_t tail_bytes = header->length % kFrameAlignment;
  if (tail_bytes != 0) {
    const std::uint64_t last_word =
        load_u64(frame + kFrameHeaderSize + header->length - tail_bytes);
    if ((last_word >> (8 * tail_bytes)) != 0) return FrameVerdict::bad_padding;
  }
  return FrameVerdict::valid;
}

}  // namespace tally::log
