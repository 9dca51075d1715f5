// Output helpers shared by the commands: JSON and text escaping of byte
// strings, numbers, times (printed, and parsed from the command line), and a
// buffered writer for stdout.
//
// Subjects, items and keys are arbitrary bytes (DESIGN.md §1), so every
// place that prints one escapes it through here.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace tally::cli {

// Appends `text` as a JSON string literal, quotes included. Quotes,
// backslashes and control characters are escaped; valid UTF-8 is copied;
// a byte that is not part of valid UTF-8 becomes \u00XX (the byte's value
// as a code point), so the output is always valid JSON.
void append_json_string(std::string* out, std::string_view text);

// Appends `text` for people, on one line: control characters, DEL, space
// and backslash become \xNN (backslash: \\); everything else is copied, so
// UTF-8 stays readable and a field never splits at a space.
void append_text_escaped(std::string* out, std::string_view text);

// "2024-05-01T10:00:00.123456789Z" for ns since the Unix epoch. Pure
// arithmetic (no gmtime, no printf): `tally history` prints a million a
// second.
void append_rfc3339(std::string* out, std::int64_t time_ns);

// A point in time as the command line gives it (--at-time, --since,
// --until), in ns since the Unix epoch. Either
//   - an RFC 3339 date-time with an offset: "2026-03-31T23:59:59.999999999Z",
//     "2026-04-01T01:59:59+02:00"; 'T' and 'Z' in either case; 0 to 9
//     fraction digits; seconds 00..59 (no leap second); or
//   - an integer of ns since the epoch: "1774994399999999999", "-5".
// The time must fit an int64 of ns (1677-09-21 to 2262-04-11). False on
// anything else, *out unchanged. append_rfc3339's output parses back to the
// same value.
bool parse_time(std::string_view text, std::int64_t* out_ns);

// Decimal, as std::to_string prints it, without a temporary string.
void append_int(std::string* out, std::int64_t value);
// A change: "+5", "-5", or "0".
void append_signed(std::string* out, std::int64_t value);

// 16 lower-case hex digits.
void append_hex64(std::string* out, std::uint64_t value);

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
