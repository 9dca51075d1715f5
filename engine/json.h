// A small, strict JSON reader and writer for the HTTP API (engine/http.cc).
//
// Boost 1.74 has no Boost.JSON, and the API needs little: objects of
// strings and integers, one level of arrays. Numbers keep their literal text
// so that 64-bit ids and quantities convert exactly (a double would round
// HoldIds above 2^53). Input is untrusted: nesting, sizes and counts are
// bounded, and every error is an `invalid` Status naming the byte offset.
// Strict RFC 8259: numbers follow its grammar (no leading zeros, no '+'),
// and an object that repeats a member name is an error, since readers
// disagree on which of the two counts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "log/status.h"

namespace tally::json {

inline constexpr int kDepthMax = 8;
inline constexpr std::size_t kMembersMax = 64;      // per object
// Items kept per array: one past a batch's most ops (log::kBatchOpsMax).
// Those after them are parsed as JSON, counted and dropped (items_dropped),
// so that a batch too long by any count is refused by the batch's rule, with
// its message, and no body makes more than this many Values per array.
inline constexpr std::size_t kItemsMax = 1001;
inline constexpr std::size_t kNumberBytesMax = 32;

struct Value {
  enum class Type : std::uint8_t { null, boolean, number, string, array, object };
  Type type = Type::null;
  bool boolean = false;
  std::string text;  // a string's bytes, or a number's literal
  std::vector<Value> items;
  std::size_t items_dropped = 0;  // an array's items after the first kItemsMax
  std::vector<std::pair<std::string, Value>> members;

  // The member named `key` (parse() admits one at most), or nullptr (also
  // when not an object).
  const Value* find(std::string_view key) const;
};

// Parses exactly one JSON value (surrounding whitespace allowed).
Result<Value> parse(std::string_view text);

// An integer literal without fraction or exponent, in range. False otherwise.
bool to_int64(const Value& value, std::int64_t* out);
bool to_uint64(const Value& value, std::uint64_t* out);

// Appends `text` as a JSON string literal. Bytes that are not valid UTF-8
// become \u00XX, so the output is always valid JSON; the characters of
// line_breaking_utf8() (log/text.h) are escaped too (\u0085, \u2028), so that a line of
// JSON stays one line to every reader.
void append_string(std::string* out, std::string_view text);

}  // namespace tally::json
