// Times as people and protocols write them: RFC 3339, and ns since the
// Unix epoch. The CLI (--at-time, --since, --until, every printed time) and
// the HTTP API (?at_time=, event times) share these.
//
// Thread safety: plain functions of their arguments.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tally {

// "2024-05-01T10:00:00.123456789Z" for ns since the Unix epoch. Pure
// arithmetic (no gmtime, no printf): `tally history` prints a million a
// second.
void append_rfc3339(std::string* out, std::int64_t time_ns);

// A point in time as a person gives it, in ns since the Unix epoch. Either
//   - an RFC 3339 date-time with an offset: "2026-03-31T23:59:59.999999999Z",
//     "2026-04-01T01:59:59+02:00"; 'T' and 'Z' in either case; 0 to 9
//     fraction digits; seconds 00..59 (no leap second); or
//   - an integer of ns since the epoch: "1774994399999999999", "-5".
// The time must fit an int64 of ns (1677-09-21 to 2262-04-11). Unless ok, *out is
// unchanged. append_rfc3339's output parses back to the same value.
enum class TimeParse : std::uint8_t {
  ok,
  malformed,     // neither form
  out_of_range,  // one of them, outside kTimeRange
};
TimeParse parse_time(std::string_view text, std::int64_t* out_ns);
// What a message says of a time out_of_range, after naming it.
inline constexpr std::string_view kTimeOutOfRange =
    "is outside the times a ledger can hold, 1677-09-21T00:12:43.145224192Z to "
    "2262-04-11T23:47:16.854775807Z";

}  // namespace tally
