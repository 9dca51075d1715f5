#include "tools/format.h"

#include "engine/json.h"

#include <ctime>

namespace tally::cli {

namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

void append_byte_hex(std::string* out, unsigned char byte) {
  out->push_back(kHexDigits[byte >> 4]);
  out->push_back(kHexDigits[byte & 0xf]);
}

}  // namespace

void append_json_string(std::string* out, std::string_view text) {
  json::append_string(out, text);
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
