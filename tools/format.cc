#include "tools/format.h"

#include <ctime>

namespace tally::cli {

namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

void append_byte_hex(std::string* out, unsigned char byte) {
  out->push_back(kHexDigits[byte >> 4]);
  out->push_back(kHexDigits[byte & 0xf]);
}

// Length of the valid UTF-8 sequence starting text[0], or 0 when it is not
// one (overlong forms, surrogates and code points past U+10FFFF are not).
std::size_t utf8_sequence_bytes(std::string_view text) {
  const auto byte = [&](std::size_t index) { return static_cast<unsigned char>(text[index]); };
  const unsigned char lead = byte(0);
  std::size_t length = 0;
  std::uint32_t code_point = 0;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
    code_point = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    code_point = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    code_point = lead & 0x07;
  } else {
    return 0;
  }
  if (text.size() < length) return 0;
  for (std::size_t index = 1; index < length; index++) {
    if ((byte(index) & 0xc0) != 0x80) return 0;
    code_point = code_point << 6 | (byte(index) & 0x3f);
  }
  const bool overlong = (length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000);
  const bool surrogate = code_point >= 0xd800 && code_point <= 0xdfff;
  if (overlong || surrogate || code_point > 0x10ffff) return 0;
  return length;
}

}  // namespace

void append_json_string(std::string* out, std::string_view text) {
  out->push_back('"');
  std::size_t index = 0;
  while (index < text.size()) {
    const auto byte = static_cast<unsigned char>(text[index]);
    if (byte >= 0x80) {
      const std::size_t length = utf8_sequence_bytes(text.substr(index));
      if (length == 0) {
        *out += "\\u00";
        append_byte_hex(out, byte);
        index++;
      } else {
        out->append(text.substr(index, length));
        index += length;
      }
      continue;
    }
    switch (byte) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (byte < 0x20 || byte == 0x7f) {
          *out += "\\u00";
          append_byte_hex(out, byte);
        } else {
          out->push_back(static_cast<char>(byte));
        }
    }
    index++;
  }
  out->push_back('"');
}

void append_text_escaped(std::string* out, std::string_view text) {
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte == '\\') {
      *out += "\\\\";
    } else if (byte <= 0x20 || byte == 0x7f) {
      *out += "\\x";
      append_byte_hex(out, byte);
    } else {
      out->push_back(c);
    }
  }
}

void append_rfc3339(std::string* out, std::int64_t time_ns) {
  constexpr std::int64_t kNsPerSecond = 1'000'000'000;
  std::int64_t seconds = time_ns / kNsPerSecond;
  std::int64_t fraction_ns = time_ns % kNsPerSecond;
  if (fraction_ns < 0) {  // times before 1970 round toward the past
    fraction_ns += kNsPerSecond;
    seconds--;
  }
  const std::time_t whole = static_cast<std::time_t>(seconds);
  std::tm parts{};
  gmtime_r(&whole, &parts);
  char text[64];
  const int length = std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%09lldZ",
                                   parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                                   parts.tm_hour, parts.tm_min, parts.tm_sec,
                                   static_cast<long long>(fraction_ns));
  out->append(text, static_cast<std::size_t>(length));
}

void append_hex64(std::string* out, std::uint64_t value) {
  for (int shift = 60; shift >= 0; shift -= 4) out->push_back(kHexDigits[(value >> shift) & 0xf]);
}

void Output::end_line() {
  buffer_.push_back('\n');
  if (buffer_.size() >= kBufferBytesMax) flush();
}

void Output::flush_line() {
  buffer_.push_back('\n');
  flush();
}

void Output::flush() {
  if (!buffer_.empty()) std::fwrite(buffer_.data(), 1, buffer_.size(), file_);
  buffer_.clear();
  std::fflush(file_);
}

}  // namespace tally::cli
