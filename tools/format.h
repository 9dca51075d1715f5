// Output helpers shared by the commands: JSON escaping of byte strings,
// numbers, and a buffered writer for stdout. Text escaping, hex and whole
// events are in engine/event_format.h, which the server's event feed
// shares; printing and parsing times in engine/time_text.h.
//
// Subjects, items and keys are arbitrary bytes (docs/architecture.md, "Names"), so every
// place that prints one escapes it through here or through
// engine/event_format.h.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "engine/event_format.h"

namespace tally::cli {

// Appends `text` as a JSON string literal, quotes included. Quotes,
// backslashes and control characters are escaped; valid UTF-8 is copied;
// a byte that is not part of valid UTF-8 becomes \u00XX (the byte's value
// as a code point), so the output is always valid JSON.
void append_json_string(std::string* out, std::string_view text);

// Decimal, as std::to_string prints it, without a temporary string.
void append_int(std::string* out, std::int64_t value);
// A change: "+5", "-5", or "0".
void append_signed(std::string* out, std::int64_t value);

// Collects output and writes it to a FILE in large pieces. flush_line()
// makes each line visible at once where a reader depends on that.
class Output {
 public:
  explicit Output(std::FILE* file) : file_(file) {}
  ~Output() { flush(); }
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;

  std::string& buffer() { return buffer_; }
  // Ends a line; writes the buffer once it is large.
  void end_line();
  // Writes the buffer once it is large, for a caller that ended its lines
  // itself.
  void flush_if_large();
  // Ends a line and writes it (and anything before it) now.
  void flush_line();
  void flush();

 private:
  static constexpr std::size_t kBufferBytesMax = 1u << 16;
  std::FILE* file_;
  std::string buffer_;
};

}  // namespace tally::cli
