// Args: the command line of one tally command, parsed against its spec.
//
// Grammar (docs/cli.md): flags are `--name value`, `--name=value` or, for a
// switch, `--name`; `--help` (or `-h`) anywhere asks for the help text; `--`
// ends the flags, so later arguments are positional even when they start
// with '-'. Unknown flags, a flag given twice, a missing value and the wrong
// number of positional arguments are usage errors.
//
// Every error here is an `invalid` Status whose message is meant for the
// user; the caller reports it as a usage error (exit 2).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "log/status.h"

namespace tally::cli {

// The values an integer flag takes, both ends included; --help shows them.
struct IntegerRange {
  std::int64_t min = 0;
  std::int64_t max = INT64_MAX;
};

struct FlagSpec {
  // A constructor rather than aggregate initialization: most flags have no
  // range, and -Wmissing-field-initializers would flag every one of them.
  constexpr FlagSpec() = default;
  constexpr FlagSpec(std::string_view name_, std::string_view placeholder_, std::string_view help_,
                     std::optional<IntegerRange> range_ = std::nullopt)
      : name(name_), placeholder(placeholder_), help(help_), range(range_) {}

  std::string_view name;         // without the leading "--"
  std::string_view placeholder;  // "DIR", "N"; empty for a switch without a value
  std::string_view help;
  std::optional<IntegerRange> range;  // an integer flag's, read by Args::integer
};

struct CommandSpec {
  std::string_view name;
  std::string_view summary;      // one line, for `tally --help`
  std::string_view usage;        // "tally apply --data DIR --workload FILE.csv [...]"
  std::string_view details;      // more text for `tally CMD --help`; may be empty
  std::span<const FlagSpec> flags;
  std::size_t positional_count = 0;  // exactly this many...
  // ...or none, when true: the command has a mode without them, chosen by a
  // flag (`tally history --rebuild`), and checks which it got.
  bool positionals_optional = false;
};

// Writes `tally <name> --help` text to *out.
void append_help(const CommandSpec& spec, std::string* out);

class Args {
 public:
  // `argv` excludes the program and command names. The views point into
  // argv, which must outlive the Args.
  static Result<Args> parse(const CommandSpec& spec, std::span<const char* const> argv);

  bool help() const { return help_; }
  const CommandSpec& spec() const { return *spec_; }
  const std::vector<std::string_view>& positionals() const { return positionals_; }

  bool has(std::string_view flag) const;
  // The flag's value, or `fallback` when the flag is absent.
  std::string_view get(std::string_view flag, std::string_view fallback = {}) const;

  // invalid ("missing --data DIR") when the flag is absent. parse() refuses
  // an empty value for any flag.
  Result<std::string_view> required(std::string_view flag) const;
  // A decimal integer in the flag's range (FlagSpec::range, which it must
  // have); `fallback` when the flag is absent. A flag whose range has no
  // negative value takes no sign: "-0" is refused.
  Result<std::int64_t> integer(std::string_view flag, std::int64_t fallback) const;
  Result<std::int64_t> required_integer(std::string_view flag) const;
  // A decimal number in [min, max]; `fallback` when the flag is absent; as
  // integer(), no sign where min >= 0.
  Result<double> number(std::string_view flag, double fallback, double min, double max) const;
  // A point in time, RFC 3339 or ns since the epoch (tools/format.h,
  // parse_time); `fallback` when the flag is absent.
  Result<std::int64_t> time(std::string_view flag, std::int64_t fallback) const;

 private:
  explicit Args(const CommandSpec* spec) : spec_(spec) {}
  Status add_flag(std::string_view name, std::string_view value);

  const CommandSpec* spec_;
  bool help_ = false;
  std::vector<std::pair<std::string_view, std::string_view>> values_;  // flag name, value
  std::vector<std::string_view> positionals_;
};

// Strict decimal parsing shared with the CSV reader: the whole text must be
// the number. False on anything else, including out-of-range values.
bool parse_int64(std::string_view text, std::int64_t* out);
bool parse_double(std::string_view text, double* out);

}  // namespace tally::cli
