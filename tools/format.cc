#include "tools/format.h"

#include "engine/json.h"

namespace tally::cli {

void append_json_string(std::string* out, std::string_view text) {
  json::append_string(out, text);
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
