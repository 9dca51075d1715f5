#include "tools/csv.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "tools/args.h"

namespace tally::cli {

namespace {

using log::OpType;

constexpr std::size_t kFieldCount = 8;
enum Field : std::size_t { kOp, kKey, kSubject, kItem, kQty, kTo, kTtlMs, kHoldKey };
constexpr std::array<std::string_view, kFieldCount> kFieldNames = {
    "op", "key", "subject", "item", "qty", "to", "ttl_ms", "hold_key"};

// Which fields each op type has; all others must be empty.
struct OpShape {
  std::string_view name;
  OpType type;
  std::array<bool, kFieldCount> used;
};
constexpr std::array<OpShape, 6> kShapes = {{
    {"acquire", OpType::acquire, {true, true, true, true, true, false, false, false}},
    {"consume", OpType::consume, {true, true, true, true, true, false, false, false}},
    {"transfer", OpType::transfer, {true, true, true, true, true, true, false, false}},
    {"hold", OpType::hold, {true, true, true, true, true, false, true, false}},
    {"commit", OpType::commit, {true, true, false, false, false, false, false, true}},
    {"release", OpType::release, {true, true, false, false, false, false, false, true}},
}};

std::string line_message(std::size_t line_number, const std::string& message) {
  return "line " + std::to_string(line_number) + ": " + message;
}

Status line_error(std::size_t line_number, const std::string& message) {
  return Status(ErrorCode::invalid, line_message(line_number, message));
}

// Splits one line at commas; false when it does not have kFieldCount fields.
bool split_fields(std::string_view line, std::array<std::string_view, kFieldCount>* fields) {
  std::size_t field_index = 0;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = line.find(',', start);
    if (field_index == kFieldCount) return false;
    (*fields)[field_index++] = line.substr(start, comma - start);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return field_index == kFieldCount;
}

Status parse_op_line(std::string_view line, std::size_t line_number, WorkloadOp* op) {
  std::array<std::string_view, kFieldCount> fields;
  if (!split_fields(line, &fields)) {
    return line_error(line_number, "expected " + std::to_string(kFieldCount) +
                                       " comma-separated fields (" + std::string(kWorkloadHeader) +
                                       ")");
  }
  const OpShape* shape = nullptr;
  for (const OpShape& candidate : kShapes) {
    if (candidate.name == fields[kOp]) shape = &candidate;
  }
  if (shape == nullptr) {
    return line_error(line_number, "unknown op '" + std::string(fields[kOp]) + "'");
  }
  // A used field left empty is the ledger's to judge: an empty key or
  // name is the outcome `invalid`, as through the API; an empty number
  // does not parse below.
  for (std::size_t field_index = 0; field_index < kFieldCount; field_index++) {
    if (shape->used[field_index] || fields[field_index].empty()) continue;
    return line_error(line_number, std::string(shape->name) + ": field '" +
                                       std::string(kFieldNames[field_index]) + "' must be empty");
  }
  op->type = shape->type;
  op->key = fields[kKey];
  op->subject = fields[kSubject];
  op->item = fields[kItem];
  op->to = fields[kTo];
  op->hold_key = fields[kHoldKey];
  op->qty = 0;
  op->ttl_ms = 0;
  if (shape->used[kQty] && !parse_int64(fields[kQty], &op->qty)) {
    return line_error(line_number, "qty '" + std::string(fields[kQty]) + "' is not an int64");
  }
  if (shape->used[kTtlMs] &&
      (!parse_int64(fields[kTtlMs], &op->ttl_ms) || op->ttl_ms < 0 || op->ttl_ms > kTtlMsMax)) {
    return line_error(line_number, "ttl_ms '" + std::string(fields[kTtlMs]) +
                                       "' is not an integer in [0, " + std::to_string(kTtlMsMax) +
                                       "]");
  }
  return Status();
}

Status parse_counts(std::string_view line, std::size_t line_number, OutcomeCounts* counts) {
  std::string_view rest = line.substr(std::string_view("#outcomes ").size());
  const std::array<std::pair<std::string_view, std::int64_t*>, 4> names = {{
      {"ok=", &counts->ok},
      {"insufficient=", &counts->insufficient},
      {"hold_unknown=", &counts->hold_unknown},
      {"retry=", &counts->retry},
  }};
  for (const auto& [name, value] : names) {
    const std::size_t space = rest.find(' ');
    const std::string_view word = rest.substr(0, space);
    if (!word.starts_with(name) || !parse_int64(word.substr(name.size()), value) || *value < 0) {
      return line_error(line_number, "expected '#outcomes ok=N insufficient=N hold_unknown=N "
                                     "retry=N'");
    }
    rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
  }
  if (!rest.empty()) return line_error(line_number, "unexpected text after the outcome counts");
  return Status();
}

}  // namespace

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t newline = text.find('\n', start);
    if (newline == std::string_view::npos) newline = text.size();
    std::string_view line = text.substr(start, newline - start);
    // Files edited on Windows end lines with "\r\n"; the '\r' is no data.
    if (line.ends_with('\r')) line.remove_suffix(1);
    lines.push_back(line);
    start = newline + 1;
  }
  return lines;
}

// Blank lines at the end of a file (an editor's, or a script's extra "\n")
// are no data; a blank line between two lines still is a malformed line.
void drop_trailing_blank_lines(std::vector<std::string_view>* lines) {
  while (!lines->empty() && lines->back().empty()) lines->pop_back();
}

Result<std::string> read_file(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return Status(ErrorCode::io_error, path + ": " + std::strerror(errno));
  }
  std::string text;
  char chunk[1 << 16];
  std::size_t got = 0;
  while ((got = std::fread(chunk, 1, sizeof chunk, file)) > 0) text.append(chunk, got);
  const bool failed = std::ferror(file) != 0;
  const int saved_errno = errno;
  std::fclose(file);
  if (failed) return Status(ErrorCode::io_error, path + ": " + std::strerror(saved_errno));
  return text;
}

Result<std::unique_ptr<Workload>> parse_workload(std::string text) {
  auto workload = std::make_unique<Workload>();
  workload->text = std::move(text);
  std::vector<std::string_view> lines = split_lines(workload->text);
  drop_trailing_blank_lines(&lines);
  if (lines.empty() || lines[0] != kWorkloadHeader) {
    return line_error(1, "expected the header '" + std::string(kWorkloadHeader) + "'");
  }
  workload->ops.resize(lines.size() - 1);
  for (std::size_t line_index = 1; line_index < lines.size(); line_index++) {
    TALLY_TRY(parse_op_line(lines[line_index], line_index + 1, &workload->ops[line_index - 1]));
  }
  return workload;
}

Result<std::unique_ptr<Workload>> read_workload(const std::string& path) {
  auto text = read_file(path);
  if (!text) return text.status();
  auto workload = parse_workload(std::move(*text));
  if (!workload) return Status(ErrorCode::invalid, path + ": " + workload.status().message());
  return workload;
}

void append_workload_line(std::string* out, const WorkloadOp& op) {
  const OpShape* shape = nullptr;
  for (const OpShape& candidate : kShapes) {
    if (candidate.type == op.type) shape = &candidate;
  }
  TALLY_ASSERT(shape != nullptr);
  const std::string qty = shape->used[kQty] ? std::to_string(op.qty) : std::string();
  const std::string ttl_ms = shape->used[kTtlMs] ? std::to_string(op.ttl_ms) : std::string();
  const std::array<std::string_view, kFieldCount> fields = {
      shape->name, op.key, op.subject, op.item, qty, op.to, ttl_ms, op.hold_key};
  for (std::size_t field_index = 0; field_index < kFieldCount; field_index++) {
    if (field_index > 0) out->push_back(',');
    out->append(fields[field_index]);
  }
  out->push_back('\n');
}

void append_csv_name(std::string* out, std::string_view name) {
  if (name.find_first_of(",\"\r\n") == std::string_view::npos) {
    out->append(name);
    return;
  }
  out->push_back('"');
  for (const char byte : name) {
    if (byte == '"') out->push_back('"');
    out->push_back(byte);
  }
  out->push_back('"');
}

void append_balance_line(std::string* out, std::string_view subject, std::string_view item,
                         std::int64_t available, std::int64_t held) {
  append_csv_name(out, subject);
  out->push_back(',');
  append_csv_name(out, item);
  out->push_back(',');
  out->append(std::to_string(available));
  out->push_back(',');
  out->append(std::to_string(held));
  out->push_back('\n');
}

std::string outcome_counts_text(const OutcomeCounts& counts) {
  return "ok=" + std::to_string(counts.ok) + " insufficient=" + std::to_string(counts.insufficient) +
         " hold_unknown=" + std::to_string(counts.hold_unknown) +
         " retry=" + std::to_string(counts.retry);
}

void append_outcomes_line(std::string* out, const OutcomeCounts& counts) {
  *out += "#outcomes " + outcome_counts_text(counts) + "\n";
}

bool parse_balance_line(std::string_view line, BalanceLine* out) {
  const std::size_t held_comma = line.rfind(',');
  if (held_comma == std::string_view::npos || held_comma == 0) return false;
  const std::size_t available_comma = line.rfind(',', held_comma - 1);
  if (available_comma == std::string_view::npos) return false;
  const std::string_view pair = line.substr(0, available_comma);
  if (pair.find(',') == std::string_view::npos ||
      !parse_int64(line.substr(available_comma + 1, held_comma - available_comma - 1),
                   &out->available) ||
      !parse_int64(line.substr(held_comma + 1), &out->held)) {
    return false;
  }
  out->pair = pair;
  return true;
}

Result<Expectation> parse_expect(std::string_view text) {
  Expectation expectation;
  std::vector<std::string_view> lines = split_lines(text);
  drop_trailing_blank_lines(&lines);
  // No line at all is no expectation (a generator that failed to write it,
  // most likely), not one that every state differs from.
  if (lines.empty()) return line_error(1, "no balance line and no '#outcomes ...' line");
  std::unordered_map<std::string_view, std::size_t> pair_line_numbers;
  std::size_t counts_line_number = 0;
  for (std::size_t line_index = 0; line_index < lines.size(); line_index++) {
    const std::string_view line = lines[line_index];
    const std::size_t line_number = line_index + 1;
    // A balance line of a subject beginning "#outcomes " has commas; the
    // counts line has none.
    if (line.starts_with("#outcomes ") && line.find(',') == std::string_view::npos) {
      OutcomeCounts counts;
      TALLY_TRY(parse_counts(line, line_number, &counts));
      if (expectation.counts) {
        expectation.conflicts.push_back(
            line_message(line_number, "a second '#outcomes ...' line (the first on line " +
                                          std::to_string(counts_line_number) + ")"));
        continue;
      }
      expectation.counts = counts;
      counts_line_number = line_number;
      continue;
    }
    // Exactly four fields: a fifth would be read from the right as a name
    // with a comma in it, which no workload CSV can hold.
    BalanceLine balance;
    if (!parse_balance_line(line, &balance) ||
        std::count(balance.pair.begin(), balance.pair.end(), ',') != 1) {
      return line_error(line_number, "expected 'subject,item,available,held' (names hold no "
                                     "commas) or '#outcomes ...'");
    }
    // Two lines for one pair cannot both be the state: whatever the ledger
    // does, it differs from the file.
    const auto [first, inserted] = pair_line_numbers.emplace(balance.pair, line_number);
    if (!inserted) {
      expectation.conflicts.push_back(
          line_message(line_number, std::string(balance.pair) + " is listed twice (first on line " +
                                        std::to_string(first->second) + ")"));
      continue;
    }
    expectation.balance_lines.emplace_back(line);
  }
  return expectation;
}

Result<Expectation> read_expect(const std::string& path) {
  auto text = read_file(path);
  if (!text) return text.status();
  auto expectation = parse_expect(*text);
  if (!expectation) return Status(ErrorCode::invalid, path + ": " + expectation.status().message());
  return expectation;
}

}  // namespace tally::cli
