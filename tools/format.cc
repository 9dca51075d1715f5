#include "tools/format.h"

#include <charconv>

#include "engine/json.h"

namespace tally::cli {

void append_json_string(std::string* out, std::string_view text) {
  json::append_string(out, text);
}

void append_int(std::string* out, std::int64_t value) {
  char text[24];
  auto [end, error] = std::to_chars(text, text + sizeof text, value);
  (void)error;  // 24 bytes hold every int64
  out->append(text, end);
}

void append_signed(std::string* out, std::int64_t value) {
  if (value > 0) out->push_back('+');
  append_int(out, value);
}

void Output::end_line() {
  buffer_.push_back('\n');
  flush_if_large();
}

void Output::flush_if_large() {
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
