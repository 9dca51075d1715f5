#include "tools/args.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "tools/format.h"

namespace tally::cli {

namespace {

Status usage(std::string message) { return Status(ErrorCode::invalid, std::move(message)); }

const FlagSpec* find_flag(const CommandSpec& spec, std::string_view name) {
  for (const FlagSpec& flag : spec.flags) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

std::string flag_text(const FlagSpec& flag) {
  std::string text = "--";
  text += flag.name;
  if (!flag.placeholder.empty()) {
    text += ' ';
    text += flag.placeholder;
  }
  return text;
}

// "; 1..1048576", "; 0 or more": what --help adds to an integer flag's line.
std::string range_text(const IntegerRange& range) {
  std::string text = "; " + std::to_string(range.min);
  if (range.max == INT64_MAX) return text + " or more";
  text += "..";
  text += std::to_string(range.max);
  return text;
}

}  // namespace

bool parse_int64(std::string_view text, std::int64_t* out) {
  // from_chars accepts no '+' and no spaces, which is the strictness wanted.
  const char* end = text.data() + text.size();
  auto [ptr, error] = std::from_chars(text.data(), end, *out);
  return !text.empty() && error == std::errc() && ptr == end;
}

bool parse_double(std::string_view text, double* out) {
  const char* end = text.data() + text.size();
  auto [ptr, error] = std::from_chars(text.data(), end, *out);
  return !text.empty() && error == std::errc() && ptr == end && std::isfinite(*out);
}

void append_help(const CommandSpec& spec, std::string* out) {
  *out += "usage: ";
  *out += spec.usage;
  *out += "\n\n";
  *out += spec.summary;
  *out += "\n";
  if (!spec.details.empty()) {
    *out += "\n";
    *out += spec.details;
  }
  *out += "\nflags:\n";
  std::size_t width = 6;  // "--help"
  for (const FlagSpec& flag : spec.flags) width = std::max(width, flag_text(flag).size());
  auto line = [&](const std::string& left, const std::string& help) {
    *out += "  " + left + std::string(width - left.size() + 2, ' ');
    *out += help;
    *out += "\n";
  };
  for (const FlagSpec& flag : spec.flags) {
    line(flag_text(flag), flag.range ? std::string(flag.help) + range_text(*flag.range)
                                     : std::string(flag.help));
  }
  line("--help", "print this help and exit");
}

Result<Args> Args::parse(const CommandSpec& spec, std::span<const char* const> argv) {
  Args args(&spec);
  // Help anywhere before `--` wins over every other problem on the line,
  // before or after it, so that a user who asks for it gets it.
  for (const std::string_view arg : argv) {
    if (arg == "--") break;
    if (arg == "--help" || arg == "-h") {
      args.help_ = true;
      return args;
    }
  }
  bool flags_ended = false;
  for (std::size_t arg_index = 0; arg_index < argv.size(); arg_index++) {
    const std::string_view arg = argv[arg_index];
    if (flags_ended || arg == "-" || !arg.starts_with("-")) {
      args.positionals_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    if (!arg.starts_with("--")) return usage("unknown flag '" + std::string(arg) + "'");
    std::string_view name = arg.substr(2);
    std::string_view value;
    const std::size_t equals = name.find('=');
    const bool inline_value = equals != std::string_view::npos;
    if (inline_value) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    }
    // --help is every command's switch, outside the flag table.
    if (name == "help") return usage("--help takes no value");
    const FlagSpec* flag = find_flag(spec, name);
    if (flag == nullptr) return usage("unknown flag '--" + std::string(name) + "'");
    if (flag->placeholder.empty()) {
      if (inline_value) return usage("--" + std::string(name) + " takes no value");
    } else if (!inline_value) {
      if (arg_index + 1 >= argv.size()) return usage("missing value: " + flag_text(*flag));
      value = argv[++arg_index];
    }
    // No flag takes an empty value: one is a slip (an unset shell variable,
    // say), which must not pass for the flag left out.
    if (!flag->placeholder.empty() && value.empty()) {
      return usage("--" + std::string(name) + ": the value is empty");
    }
    TALLY_TRY(args.add_flag(name, value));
    // An integer flag's value is checked here, before the positionals are
    // counted: `--at-seq s0 i1` is a slip in the flag, which the message
    // should name, not a missing positional.
    if (flag->range) TALLY_TRY(args.integer(name, 0).status());
  }
  const std::size_t count = args.positionals_.size();
  if (count != spec.positional_count && !(spec.positionals_optional && count == 0)) {
    return usage("expected " + std::string(spec.positionals_optional ? "0 or " : "") +
                 std::to_string(spec.positional_count) + " positional argument(s), got " +
                 std::to_string(count));
  }
  return args;
}

Status Args::add_flag(std::string_view name, std::string_view value) {
  if (has(name)) return usage("--" + std::string(name) + " given twice");
  values_.emplace_back(name, value);
  return Status();
}

bool Args::has(std::string_view flag) const {
  for (const auto& [name, value] : values_) {
    if (name == flag) return true;
  }
  return false;
}

std::string_view Args::get(std::string_view flag, std::string_view fallback) const {
  for (const auto& [name, value] : values_) {
    if (name == flag) return value;
  }
  return fallback;
}

Result<std::string_view> Args::required(std::string_view flag) const {
  if (!has(flag)) {
    const FlagSpec* spec = find_flag(*spec_, flag);
    TALLY_ASSERT(spec != nullptr);
    return usage("missing " + flag_text(*spec));
  }
  return get(flag);
}

Result<std::int64_t> Args::integer(std::string_view flag, std::int64_t fallback) const {
  const FlagSpec* spec = find_flag(*spec_, flag);
  TALLY_ASSERT(spec != nullptr && spec->range.has_value());
  if (!has(flag)) return fallback;
  const auto [min, max] = *spec->range;
  std::int64_t value = 0;
  const std::string_view text = get(flag);
  // A flag that cannot be negative takes no sign at all: "-0" is a slip.
  const bool sign_unwanted = min >= 0 && text.starts_with('-');
  if (sign_unwanted || !parse_int64(text, &value) || value < min || value > max) {
    return usage("--" + std::string(flag) + ": '" + std::string(text) +
                 "' is not an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                 "]");
  }
  return value;
}

Result<std::int64_t> Args::required_integer(std::string_view flag) const {
  auto present = required(flag);
  if (!present) return present.status();
  return integer(flag, 0);
}

Result<double> Args::number(std::string_view flag, double fallback, double min,
                            double max) const {
  if (!has(flag)) return fallback;
  double value = 0;
  const std::string_view text = get(flag);
  const bool sign_unwanted = min >= 0 && text.starts_with('-');
  if (sign_unwanted || !parse_double(text, &value) || value < min || value > max) {
    char range[64];
    std::snprintf(range, sizeof range, "[%g, %g]", min, max);
    return usage("--" + std::string(flag) + ": '" + std::string(text) +
                 "' is not a number in " + range);
  }
  return value;
}

Result<std::int64_t> Args::time(std::string_view flag, std::int64_t fallback) const {
  if (!has(flag)) return fallback;
  std::int64_t value = 0;
  const std::string_view text = get(flag);
  const TimeParse parsed = parse_time(text, &value);
  if (parsed == TimeParse::ok) return value;
  const std::string named = "--" + std::string(flag) + ": '" + std::string(text) + "' ";
  if (parsed == TimeParse::out_of_range) return usage(named + std::string(kTimeOutOfRange));
  return usage(named +
               "is not a time: give RFC 3339 with an offset "
               "(2026-03-31T23:59:59.999999999Z, 2026-04-01T01:59:59+02:00) or ns since the epoch");
}

}  // namespace tally::cli
