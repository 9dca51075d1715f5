// The two file formats of workloads (docs/cli.md, "Workload files"):
//
// Workload CSV: a header line, then one mutation per line.
//
//   op,key,subject,item,qty,to,ttl_ms,hold_key
//   acquire,k1,s1,i1,500,,,
//   consume,k2,s1,i1,5,,,
//   transfer,k3,s1,i1,5,s2,,
//   hold,k4,s1,i1,5,,3600000,
//   commit,k5,,,,,,k4          hold_key: the key of the hold op; the whole hold
//   release,k6,,,,,,k4
//
// A line whose key appeared before is a retry of that line. Fields hold no
// commas, quotes or line breaks; there is no quoting. Each op has exactly
// the fields shown, the others empty.
//
// Expect file: the final state a correct ledger reaches, then the outcome
// counts. Balance lines are `subject,item,available,held` for every
// non-zero pair, sorted bytewise by subject then item (the same lines
// `tally export` prints):
//
//   s1,i1,485,5
//   #outcomes ok=N insufficient=N hold_unknown=N retry=N
//
// A balance line has exactly four fields (names hold no commas, as in a
// workload); amounts are numbers, so `010` is 10. The counts line may stand
// anywhere. A file without it, or naming a pair or the counts twice, is
// read, and each of these is a difference from any state (`bench --expect`
// exits 1); a file with no line at all is malformed.
//
// Outcome classes: every hold_* rejection counts as hold_unknown, and a
// retry counts as retry whatever its outcome.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "log/event.h"
#include "log/status.h"

namespace tally::cli {

inline constexpr std::string_view kWorkloadHeader = "op,key,subject,item,qty,to,ttl_ms,hold_key";

// One line of a workload. The views point into the text it was parsed from
// (or, for a generated op, into the generator's buffers).
struct WorkloadOp {
  log::OpType type = log::OpType::acquire;
  std::string_view key;
  std::string_view subject;
  std::string_view item;
  std::string_view to;
  std::string_view hold_key;
  std::int64_t qty = 0;
  std::int64_t ttl_ms = 0;
};

// A parsed workload file. Not movable: the ops point into `text`.
struct Workload {
  Workload() = default;
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  std::string text;
  std::vector<WorkloadOp> ops;  // in file order; ops[n] is on line n + 2
};

// The largest ttl_ms whose nanoseconds fit an int64.
inline constexpr std::int64_t kTtlMsMax = INT64_MAX / 1'000'000;

// Parses workload CSV text. Errors: invalid, "line N: <what is wrong>".
// Quantities are any int64 and ttl_ms any value in [0, kTtlMsMax]: the
// ledger, not the file format, decides what is valid.
Result<std::unique_ptr<Workload>> parse_workload(std::string text);
// Reads and parses a workload file; errors name the path.
Result<std::unique_ptr<Workload>> read_workload(const std::string& path);

// Appends `op` as a CSV line with its newline: the inverse of parsing.
void append_workload_line(std::string* out, const WorkloadOp& op);

struct OutcomeCounts {
  std::int64_t ok = 0;
  std::int64_t insufficient = 0;
  std::int64_t hold_unknown = 0;
  std::int64_t retry = 0;
  bool operator==(const OutcomeCounts&) const = default;
};

struct Expectation {
  // Without newlines, in file order; each parses with parse_balance_line
  // and names a pair no line before it names.
  std::vector<std::string> balance_lines;
  // Empty when the file has no counts line.
  std::optional<OutcomeCounts> counts;
  // A second line for a pair, or a second counts line, as messages ("line
  // N: ..."): each is a difference, whatever the state.
  std::vector<std::string> conflicts;
};

// A balance line split: `pair` ("subject,item") views the line.
struct BalanceLine {
  std::string_view pair;
  std::int64_t available = 0;
  std::int64_t held = 0;
};

// Splits "subject,item,available,held" from the right, so that a name with
// a comma, which only an export can show, stays in `pair`. False unless the
// pair has a comma and the amounts are int64s (parse_int64).
bool parse_balance_line(std::string_view line, BalanceLine* out);

// Appends a name as a CSV field: as it is, unless it holds a comma, a double
// quote or a line break; then in double quotes, each quote doubled (RFC 4180).
// Workload and expect files never quote: their names hold no comma or line
// break, and a double quote in them is a byte of the name.
void append_csv_name(std::string* out, std::string_view name);
// Appends "subject,item,available,held\n" (the names by append_csv_name):
// one line of an expect file and of `tally export`.
void append_balance_line(std::string* out, std::string_view subject, std::string_view item,
                         std::int64_t available, std::int64_t held);
// Appends "#outcomes ok=N insufficient=N hold_unknown=N retry=N\n".
void append_outcomes_line(std::string* out, const OutcomeCounts& counts);
// Without the "#outcomes " prefix and the newline, for messages.
std::string outcome_counts_text(const OutcomeCounts& counts);

// Errors: invalid, "line N: ...", for a malformed line, or a file with no
// line; a pair or the counts listed twice are Expectation::conflicts.
Result<Expectation> parse_expect(std::string_view text);
Result<Expectation> read_expect(const std::string& path);

// Splits text into lines without their "\n" (or "\r\n"); a final line without one
// still counts. Views point into `text`.
std::vector<std::string_view> split_lines(std::string_view text);

// Reads a whole file. Errors: io_error naming the path.
Result<std::string> read_file(const std::string& path);

}  // namespace tally::cli
