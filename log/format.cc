#include "log/format.h"

#include <algorithm>

#include "log/hash.h"
#include "log/status.h"

namespace tally::log {

namespace {

constexpr std::string_view kSegmentSuffix = ".seg";

}  // namespace

void encode_segment_header(const SegmentHeader& header,
                           std::span<std::byte, kSegmentHeaderSize> out) {
  std::fill(out.begin(), out.end(), std::byte{0});
  std::byte* p = out.data();
  store_u64(p + kSegMagicOffset, kSegmentMagic);
  store_u32(p + kSegVersionOffset, kFormatVersion);
  store_u32(p + kSegHeaderSizeOffset, static_cast<std::uint32_t>(kSegmentHeaderSize));
  store_u64(p + kSegFirstSeqOffset, header.first_seq);
  store_u64(p + kSegPrevChecksumOffset, header.prev_checksum);
  store_u64(p + kSegSizeOffset, header.size_bytes);
  store_u64(p + kSegCreatedOffset, static_cast<std::uint64_t>(header.created_ns));
  store_u64(p + kSegReservedOffset, 0);
  store_u64(p + kSegChecksumOffset, segment_header_checksum(out));
}

std::uint64_t segment_header_checksum(std::span<const std::byte, kSegmentHeaderSize> bytes) {
  return XXH3_64bits(bytes.data(), kSegChecksumOffset);
}

std::string decode_segment_header(std::span<const std::byte, kSegmentHeaderSize> bytes,
                                  SegmentHeader* header) {
  const std::byte* p = bytes.data();
  if (load_u64(p + kSegChecksumOffset) != segment_header_checksum(bytes)) {
    return "segment header checksum mismatch";
  }
  // The checksum verified, so these describe a complete header that is not
  // one this build can read: a foreign file or a future format.
  if (load_u64(p + kSegMagicOffset) != kSegmentMagic) return "not a tally segment (bad magic)";
  const std::uint32_t version = load_u32(p + kSegVersionOffset);
  if (version != kFormatVersion) {
    return "unsupported segment format version " + std::to_string(version);
  }
  if (load_u32(p + kSegHeaderSizeOffset) != kSegmentHeaderSize) return "bad segment header size";
  if (load_u64(p + kSegReservedOffset) != 0) return "nonzero reserved field in segment header";
  header->first_seq = load_u64(p + kSegFirstSeqOffset);
  header->prev_checksum = load_u64(p + kSegPrevChecksumOffset);
  header->size_bytes = load_u64(p + kSegSizeOffset);
  header->created_ns = static_cast<std::int64_t>(load_u64(p + kSegCreatedOffset));
  if (header->size_bytes < kSegmentSizeBytesMin || header->size_bytes > kSegmentSizeBytesMax ||
      header->size_bytes % kFrameAlignment != 0) {
    return "segment size " + std::to_string(header->size_bytes) + " out of range";
  }
  if (header->first_seq == 0 || header->first_seq > kSeqMax) return "first seq out of range";
  return std::string();
}

std::uint64_t frame_checksum(const std::byte* frame, std::uint32_t length) {
  return XXH3_64bits(frame + kFrameChecksummedFrom,
                     kFrameHeaderSize - kFrameChecksummedFrom + length);
}

std::uint64_t encode_frame(std::byte* out, std::uint64_t seq, std::uint64_t prev_checksum,
                           std::span<const std::byte> payload) {
  TALLY_ASSERT(!payload.empty());
  TALLY_ASSERT(payload.size() <= kRecordPayloadBytesMax);
  const auto length = static_cast<std::uint32_t>(payload.size());
  store_u32(out + kFrameLengthOffset, length);
  store_u32(out + kFrameFlagsOffset, 0);
  store_u64(out + kFrameSeqOffset, seq);
  store_u64(out + kFramePrevOffset, prev_checksum);
  std::memcpy(out + kFrameHeaderSize, payload.data(), payload.size());
  const std::size_t padding_bytes = frame_size(payload.size()) - kFrameHeaderSize - payload.size();
  std::memset(out + kFrameHeaderSize + payload.size(), 0, padding_bytes);
  const std::uint64_t checksum = frame_checksum(out, length);
  store_u64(out + kFrameChecksumOffset, checksum);
  return checksum;
}

std::string segment_file_name(std::uint64_t first_seq) {
  TALLY_ASSERT(first_seq <= kSeqMax);
  std::string name(kSegmentNameDigits, '0');
  for (std::size_t digit_index = kSegmentNameDigits; digit_index > 0 && first_seq > 0;
       digit_index--) {
    name[digit_index - 1] = static_cast<char>('0' + first_seq % 10);
    first_seq /= 10;
  }
  name += kSegmentSuffix;
  return name;
}

std::string log_position(std::uint64_t segment_first_seq, std::uint64_t offset) {
  return "segment " + segment_file_name(segment_first_seq) + " offset " + std::to_string(offset);
}

Status corrupt_at(std::uint64_t segment_first_seq, std::uint64_t offset, std::string_view why) {
  std::string message = log_position(segment_first_seq, offset);
  message += ": ";
  message += why;
  return Status(ErrorCode::corrupt, std::move(message));
}

Status check_segment_size(std::uint64_t size_bytes) {
  if (size_bytes >= kSegmentSizeBytesMin && size_bytes <= kSegmentSizeBytesMax &&
      size_bytes % kFrameAlignment == 0) {
    return Status();
  }
  return Status(ErrorCode::invalid, "segment size " + std::to_string(size_bytes) +
                                        " must be a multiple of 8 from " +
                                        std::to_string(kSegmentSizeBytesMin) + " to " +
                                        std::to_string(kSegmentSizeBytesMax));
}

bool parse_segment_file_name(const std::string& name, std::uint64_t* first_seq) {
  if (name.size() != kSegmentNameDigits + kSegmentSuffix.size()) return false;
  if (std::string_view(name).substr(kSegmentNameDigits) != kSegmentSuffix) return false;
  std::uint64_t value = 0;
  for (std::size_t digit_index = 0; digit_index < kSegmentNameDigits; digit_index++) {
    const char c = name[digit_index];
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  *first_seq = value;
  return true;
}

}  // namespace tally::log
