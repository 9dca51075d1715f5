#include "engine/time_text.h"

#include <charconv>
#include <system_error>

namespace tally {

namespace {

constexpr std::int64_t kNsPerSecond = 1'000'000'000;
constexpr std::int64_t kSecondsPerDay = 86'400;
constexpr int kFractionDigitsMax = 9;

// Days since 1970-01-01 of a date in the proleptic Gregorian calendar, and
// back (Howard Hinnant's days_from_civil and civil_from_days: exact for
// every date an int64 of ns can reach, with no table and no time zone).
std::int64_t days_from_civil(std::int64_t year, unsigned month, unsigned day) {
  year -= month <= 2 ? 1 : 0;
  const std::int64_t era = (year >= 0 ? year : year - 399) / 400;
  const auto year_of_era = static_cast<unsigned>(year - era * 400);
  const unsigned day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
  const unsigned day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + static_cast<std::int64_t>(day_of_era) - 719468;
}

struct CivilDate {
  std::int64_t year;
  unsigned month;  // 1..12
  unsigned day;    // 1..31
};

CivilDate civil_from_days(std::int64_t days) {
  days += 719468;
  const std::int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const auto day_of_era = static_cast<unsigned>(days - era * 146097);
  const unsigned year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  const unsigned day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const unsigned month_index = (5 * day_of_year + 2) / 153;  // March = 0
  const unsigned day = day_of_year - (153 * month_index + 2) / 5 + 1;
  const unsigned month = month_index < 10 ? month_index + 3 : month_index - 9;
  return CivilDate{static_cast<std::int64_t>(year_of_era) + era * 400 + (month <= 2 ? 1 : 0),
                   month, day};
}

bool leap_year(std::int64_t year) {
  return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

unsigned days_in_month(std::int64_t year, unsigned month) {
  constexpr unsigned kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return month == 2 && leap_year(year) ? 29 : kDays[month - 1];
}

// Writes `value` as exactly `digits` decimal digits (value fits them).
void append_digits(std::string* out, std::uint64_t value, int digits) {
  char text[20];
  for (int index = digits - 1; index >= 0; index--) {
    text[index] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
  out->append(text, static_cast<std::size_t>(digits));
}

// Reads the text's next `digits` characters as a decimal number; false if
// any is not a digit or the text is shorter.
bool take_digits(std::string_view* text, int digits, std::int64_t* out) {
  if (text->size() < static_cast<std::size_t>(digits)) return false;
  std::int64_t value = 0;
  for (int index = 0; index < digits; index++) {
    const char c = (*text)[static_cast<std::size_t>(index)];
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  *out = value;
  text->remove_prefix(static_cast<std::size_t>(digits));
  return true;
}

bool take_char(std::string_view* text, char expected) {
  if (text->empty() || (*text)[0] != expected) return false;
  text->remove_prefix(1);
  return true;
}

bool take_either(std::string_view* text, char upper) {
  return take_char(text, upper) || take_char(text, static_cast<char>(upper - 'A' + 'a'));
}

// The fields of an RFC 3339 date-time, checked for range.
struct DateTime {
  std::int64_t year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  std::int64_t fraction_ns = 0;
  std::int64_t offset_seconds = 0;  // local time minus UTC
};

bool parse_fraction(std::string_view* text, std::int64_t* fraction_ns) {
  *fraction_ns = 0;
  if (!take_char(text, '.')) return true;
  int digits = 0;
  while (!text->empty() && (*text)[0] >= '0' && (*text)[0] <= '9') {
    if (++digits > kFractionDigitsMax) return false;  // finer than the log's ns
    *fraction_ns = *fraction_ns * 10 + ((*text)[0] - '0');
    text->remove_prefix(1);
  }
  if (digits == 0) return false;
  for (int scale = digits; scale < kFractionDigitsMax; scale++) *fraction_ns *= 10;
  return true;
}

bool parse_offset(std::string_view* text, std::int64_t* offset_seconds) {
  if (take_either(text, 'Z')) {
    *offset_seconds = 0;
    return true;
  }
  const bool negative = !text->empty() && (*text)[0] == '-';
  if (!take_char(text, '+') && !take_char(text, '-')) return false;
  std::int64_t hours = 0;
  std::int64_t minutes = 0;
  if (!take_digits(text, 2, &hours) || !take_char(text, ':') || !take_digits(text, 2, &minutes)) {
    return false;
  }
  if (hours > 23 || minutes > 59) return false;
  *offset_seconds = (negative ? -1 : 1) * (hours * 3600 + minutes * 60);
  return true;
}

bool parse_date_time(std::string_view text, DateTime* out) {
  DateTime t;
  const bool fields = take_digits(&text, 4, &t.year) && take_char(&text, '-') &&
                      take_digits(&text, 2, &t.month) && take_char(&text, '-') &&
                      take_digits(&text, 2, &t.day) && take_either(&text, 'T') &&
                      take_digits(&text, 2, &t.hour) && take_char(&text, ':') &&
                      take_digits(&text, 2, &t.minute) && take_char(&text, ':') &&
                      take_digits(&text, 2, &t.second) && parse_fraction(&text, &t.fraction_ns) &&
                      parse_offset(&text, &t.offset_seconds);
  if (!fields || !text.empty()) return false;
  if (t.month < 1 || t.month > 12) return false;
  if (t.day < 1 || t.day > days_in_month(t.year, static_cast<unsigned>(t.month))) return false;
  if (t.hour > 23 || t.minute > 59 || t.second > 59) return false;
  *out = t;
  return true;
}

}  // namespace

TimeParse parse_time(std::string_view text, std::int64_t* out_ns) {
  std::int64_t ns = 0;
  const char* end = text.data() + text.size();
  auto [ptr, error] = std::from_chars(text.data(), end, ns);
  if (!text.empty() && ptr == end) {
    if (error == std::errc::result_out_of_range) return TimeParse::out_of_range;
    if (error == std::errc()) {
      *out_ns = ns;
      return TimeParse::ok;
    }
  }
  DateTime t;
  if (!parse_date_time(text, &t)) return TimeParse::malformed;
  const std::int64_t days =
      days_from_civil(t.year, static_cast<unsigned>(t.month), static_cast<unsigned>(t.day));
  // At most 10^7 days from a 4-digit year: the seconds cannot overflow; the
  // ns can, and then the time is out of range.
  std::int64_t seconds =
      days * kSecondsPerDay + t.hour * 3600 + t.minute * 60 + t.second - t.offset_seconds;
  std::int64_t fraction_ns = t.fraction_ns;
  if (seconds < 0 && fraction_ns > 0) {
    // Toward zero first, so that times just above INT64_MIN ns do not
    // overflow on the way.
    seconds++;
    fraction_ns -= kNsPerSecond;
  }
  std::int64_t whole_ns = 0;
  if (__builtin_mul_overflow(seconds, kNsPerSecond, &whole_ns) ||
      __builtin_add_overflow(whole_ns, fraction_ns, &ns)) {
    return TimeParse::out_of_range;
  }
  *out_ns = ns;
  return TimeParse::ok;
}

void append_rfc3339(std::string* out, std::int64_t time_ns) {
  std::int64_t seconds = time_ns / kNsPerSecond;
  std::int64_t fraction_ns = time_ns % kNsPerSecond;
  if (fraction_ns < 0) {  // times before 1970 round toward the past
    fraction_ns += kNsPerSecond;
    seconds--;
  }
  std::int64_t days = seconds / kSecondsPerDay;
  std::int64_t second_of_day = seconds % kSecondsPerDay;
  if (second_of_day < 0) {
    second_of_day += kSecondsPerDay;
    days--;
  }
  const CivilDate date = civil_from_days(days);
  // An int64 of ns spans the years 1677..2262: always four digits.
  append_digits(out, static_cast<std::uint64_t>(date.year), 4);
  out->push_back('-');
  append_digits(out, date.month, 2);
  out->push_back('-');
  append_digits(out, date.day, 2);
  out->push_back('T');
  append_digits(out, static_cast<std::uint64_t>(second_of_day / 3600), 2);
  out->push_back(':');
  append_digits(out, static_cast<std::uint64_t>(second_of_day / 60 % 60), 2);
  out->push_back(':');
  append_digits(out, static_cast<std::uint64_t>(second_of_day % 60), 2);
  out->push_back('.');
  append_digits(out, static_cast<std::uint64_t>(fraction_ns), kFractionDigitsMax);
  out->push_back('Z');
}

}  // namespace tally
