// Fuzz target of the text a person hands the tools: workload CSV and expect
// files (tools/csv.h) and times (engine/time_text.h). Whatever parses must
// print back to text that parses to the same thing; anything else must be a
// clean invalid Status (or false), never a crash.
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "engine/time_text.h"
#include "tests/fuzz.h"
#include "tools/csv.h"

namespace tally::fuzz {

namespace {

const std::vector<std::string>& workload_seeds() {
  static const std::vector<std::string> seeds = {
      std::string(cli::kWorkloadHeader) +
          "\nacquire,k1,s1,i1,500,,,\n"
          "consume,k2,s1,i1,5,,,\n"
          "transfer,k3,s1,i1,5,s2,,\n"
          "hold,k4,s1,i1,5,,3600000,\n"
          "commit,k5,,,,,,k4\n"
          "release,k6,,,,,,k4\n"
          "acquire,k1,s1,i1,500,,,\n",
      std::string(cli::kWorkloadHeader) + "\r\nacquire,k,s,i,-9223372036854775808,,,\r\n" +
          "hold,h,s,i,9223372036854775807,,9223372036854,",
      std::string(cli::kWorkloadHeader) + "\n",
  };
  return seeds;
}

const std::vector<std::string>& expect_seeds() {
  static const std::vector<std::string> seeds = {
      "s1,i1,485,5\ns2,i1,5,0\n#outcomes ok=5 insufficient=0 hold_unknown=1 retry=1\n",
      "#outcomes ok=0 insufficient=0 hold_unknown=0 retry=0",
      "a,b,9223372036854775807,0\r\n#outcomes ok=1 insufficient=2 hold_unknown=3 retry=4\r\n",
  };
  return seeds;
}

const std::vector<std::string>& time_seeds() {
  static const std::vector<std::string> seeds = {
      "2026-03-31T23:59:59.999999999Z", "2026-04-01t01:59:59+02:00", "1970-01-01T00:00:00z",
      "1677-09-21T00:12:43.145224192Z", "2262-04-11T23:47:16.854775807Z",
      "2024-02-29T12:00:00.5-11:30",    "1774994399999999999",          "-5",
      "-9223372036854775808",
  };
  return seeds;
}

bool same_op(const cli::WorkloadOp& a, const cli::WorkloadOp& b) {
  return a.type == b.type && a.key == b.key && a.subject == b.subject && a.item == b.item &&
         a.to == b.to && a.hold_key == b.hold_key && a.qty == b.qty && a.ttl_ms == b.ttl_ms;
}

// Each check: whether the input parsed.
bool check_workload(const Context& context, const Bytes& input) {
  auto parsed = cli::parse_workload(std::string(as_text(input)));
  if (!parsed) {
    if (parsed.code() != ErrorCode::invalid) {
      fail(context, "workload: neither parsed nor invalid: " + parsed.status().to_string(),
           input);
    }
    return false;
  }
  std::string printed = std::string(cli::kWorkloadHeader) + "\n";
  for (const cli::WorkloadOp& op : (*parsed)->ops) cli::append_workload_line(&printed, op);
  auto again = cli::parse_workload(printed);
  if (!again) fail(context, "workload: printed back, it does not parse", input);
  const auto& ops = (*parsed)->ops;
  const auto& reparsed = (*again)->ops;
  if (reparsed.size() != ops.size()) fail(context, "workload: printed back, ops lost", input);
  for (std::size_t index = 0; index < ops.size(); index++) {
    if (!same_op(ops[index], reparsed[index])) {
      fail(context, "workload: printed back, line " + std::to_string(index + 2) + " changes",
           input);
    }
  }
  return true;
}

bool check_expect(const Context& context, const Bytes& input) {
  auto parsed = cli::parse_expect(as_text(input));
  if (!parsed) {
    if (parsed.code() != ErrorCode::invalid) {
      fail(context, "expect: neither parsed nor invalid: " + parsed.status().to_string(), input);
    }
    return false;
  }
  std::string printed;
  for (const std::string& line : parsed->balance_lines) printed += line + "\n";
  if (parsed->counts) cli::append_outcomes_line(&printed, *parsed->counts);
  auto again = cli::parse_expect(printed);
  // Printed back, each pair and the counts appear once: no conflicts.
  if (!again || again->balance_lines != parsed->balance_lines ||
      !(again->counts == parsed->counts) || !again->conflicts.empty()) {
    fail(context, "expect: printed back, it reads otherwise", input);
  }
  return true;
}

bool check_time(const Context& context, const Bytes& input) {
  std::int64_t time_ns = 0;
  if (parse_time(as_text(input), &time_ns) != TimeParse::ok) return false;
  std::string printed;
  append_rfc3339(&printed, time_ns);
  std::int64_t again = 0;
  if (parse_time(printed, &again) != TimeParse::ok || again != time_ns) {
    fail(context, "time: " + printed + " does not parse back to " + std::to_string(time_ns),
         input);
  }
  return true;
}

// One or two characters set, inserted or deleted, from those the formats
// give meaning to: text that stays close to valid more often than the
// generic mutations leave it.
Bytes tweak(const Bytes& seed, Rng& rng) {
  static constexpr char kChars[] = "0123456789-+,.:TtZz \r\n#=eE\x00\xff";
  static constexpr std::string_view kAlphabet(kChars, sizeof kChars - 1);  // with the NUL
  Bytes out = seed;
  const std::uint64_t edits = 1 + rng.below(2);
  for (std::uint64_t edit = 0; edit < edits; edit++) {
    const auto at = static_cast<std::ptrdiff_t>(rng.below(out.size() + 1));
    const auto c = static_cast<std::byte>(kAlphabet[rng.below(kAlphabet.size())]);
    const std::uint64_t how = rng.below(3);
    if (how == 0 && at < static_cast<std::ptrdiff_t>(out.size())) {
      out[static_cast<std::size_t>(at)] = c;
    } else if (how == 1) {
      out.insert(out.begin() + at, c);
    } else if (at < static_cast<std::ptrdiff_t>(out.size())) {
      out.erase(out.begin() + at);
    }
  }
  return out;
}

std::vector<Bytes> bytes_of(const std::vector<std::string>& texts) {
  std::vector<Bytes> out;
  for (const std::string& text : texts) out.push_back(to_bytes(text));
  return out;
}

}  // namespace

void fuzz_text(Context& context) {
  using Check = bool (*)(const Context&, const Bytes&);
  struct Kind {
    std::vector<Bytes> seeds;
    Check check;
    std::uint64_t parsed = 0;  // mutated inputs that parsed
  };
  Kind kinds[] = {{bytes_of(workload_seeds()), check_workload},
                  {bytes_of(expect_seeds()), check_expect},
                  {bytes_of(time_seeds()), check_time}};
  // The seeds are valid, so that mutations start from text that parses.
  for (const Kind& kind : kinds) {
    for (const Bytes& seed : kind.seeds) {
      if (!kind.check(context, seed)) fail(context, "a seed does not parse", seed);
    }
  }
  Rng rng(context.seed ^ 0x7e47);
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    Kind& kind = kinds[rng.below(std::size(kinds))];
    const Bytes& seed = kind.seeds[rng.below(kind.seeds.size())];
    const Bytes& other = kind.seeds[rng.below(kind.seeds.size())];
    const Bytes input = rng.one_in(2) ? tweak(seed, rng) : mutate(seed, other, rng);
    if (kind.check(context, input)) kind.parsed++;
    // Any int64 prints as a time that parses back to it.
    std::string printed;
    const auto time_ns = static_cast<std::int64_t>(rng.next());
    append_rfc3339(&printed, time_ns);
    std::int64_t parsed = 0;
    if (parse_time(printed, &parsed) != TimeParse::ok || parsed != time_ns) {
      fail(context, "time: " + printed + " does not parse back to " + std::to_string(time_ns),
           to_bytes(printed));
    }
  }
  if (context.verbose) {
    std::printf("(parsed: %llu workloads, %llu expect files, %llu times) ",
                static_cast<unsigned long long>(kinds[0].parsed),
                static_cast<unsigned long long>(kinds[1].parsed),
                static_cast<unsigned long long>(kinds[2].parsed));
  }
}

}  // namespace tally::fuzz
