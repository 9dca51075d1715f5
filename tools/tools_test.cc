// Unit tests of the tool's parts that need no ledger: the argument parser,
// the workload and expect file formats, JSON escaping, and the workload
// generator with its reference model; and the audit commands on logs no
// ledger writes, which tests/cli_test.py, running the tool on what a
// ledger wrote, cannot make. tests/cli_test.py covers the commands;
// engine/event_format_test.cc the formatting of `tally log`.
#include <doctest.h>
#include <lmdb.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <thread>

#include "engine/replay.h"
#include "log/event.h"
#include "log/writer.h"
#include "snapshots/format.h"
#include "snapshots/store_edit.h"
#include "tests/testing.h"
#include "tools/args.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/csv.h"
#include "tools/format.h"
#include "tools/progress.h"
#include "tools/workload.h"

namespace tally::cli {
namespace {

using log::OpType;

constexpr FlagSpec kTestFlags[] = {
    {"data", "DIR", "the data directory"},
    {"pipeline", "N", "depth", IntegerRange{1, 100}},
    {"rate", "R", "a rate"},
    {"offset", "N", "signed", IntegerRange{-5, INT64_MAX}},
    {"count", "N", "from zero", IntegerRange{0}},
    {"json", "", "JSON output"},
};
constexpr CommandSpec kTestSpec = {"test", "a test command", "tally test", "", kTestFlags, 1};

Result<Args> parse(std::initializer_list<const char*> argv) {
  return Args::parse(kTestSpec, std::span<const char* const>(argv.begin(), argv.size()));
}

std::string error_of(const Result<Args>& args) { return args.status().message(); }

TEST_CASE("args: flags in both spellings, switches and positionals") {
  auto args = parse({"--data", "d1", "--pipeline=8", "--json", "subject"});
  REQUIRE(args.ok());
  CHECK(args->get("data") == "d1");
  CHECK(args->has("json"));
  CHECK_FALSE(args->has("rate"));
  CHECK(args->positionals() == std::vector<std::string_view>{"subject"});
  auto pipeline = args->integer("pipeline", 1);
  REQUIRE(pipeline.ok());
  CHECK(*pipeline == 8);
  CHECK(*args->number("rate", 0.5, 0, 1) == 0.5);
}

TEST_CASE("args: usage errors name the problem") {
  CHECK(error_of(parse({"--nope", "x"})) == "unknown flag '--nope'");
  CHECK(error_of(parse({"-x", "x"})) == "unknown flag '-x'");
  CHECK(error_of(parse({"x", "--data"})) == "missing value: --data DIR");
  CHECK(error_of(parse({"--data", "a", "--data", "b", "x"})) == "--data given twice");
  CHECK(error_of(parse({"--json=yes", "x"})) == "--json takes no value");
  CHECK(error_of(parse({"--help=1", "x"})) == "--help takes no value");
  // An empty value, an unset shell variable say, is no value at all.
  CHECK(error_of(parse({"--rate", "", "x"})) == "--rate: the value is empty");
  CHECK(error_of(parse({"--data=", "x"})) == "--data: the value is empty");
  CHECK(error_of(parse({})) == "expected 1 positional argument(s), got 0");
  CHECK(parse({"--data", "d"}).code() == ErrorCode::invalid);
}

TEST_CASE("args: --help wins, -- ends flags, numbers are strict") {
  // Anywhere before `--`, whatever else is wrong on the line.
  const auto asks_help = [](const Result<Args>& args) { return args.ok() && args->help(); };
  CHECK(asks_help(parse({"--nope", "--help"})));
  CHECK(asks_help(parse({"--help", "--nope"})));
  CHECK(asks_help(parse({"--data", "a", "--data", "b", "-h"})));
  CHECK(asks_help(parse({"--pipeline", "-h"})));
  auto after_dashes = parse({"--", "--help"});
  REQUIRE(after_dashes.ok());
  CHECK_FALSE(after_dashes->help());
  auto dashed = parse({"--", "--json"});
  REQUIRE(dashed.ok());
  CHECK(dashed->positionals()[0] == "--json");
  CHECK_FALSE(dashed->has("json"));

  // An integer flag's value is checked as the line is parsed.
  for (const char* bad : {"x", "12x", "+3", " 3", "0", "101", "1e2"}) {
    CHECK_MESSAGE(error_of(parse({"--pipeline", bad, "s"})) ==
                      "--pipeline: '" + std::string(bad) + "' is not an integer in [1, 100]",
                  bad);
  }
  // Before the positionals are counted: the slip is in the flag.
  CHECK(error_of(parse({"--pipeline", "s"})) == "--pipeline: 's' is not an integer in [1, 100]");
  // No sign where the range has no negative value; where it has, "-0" is 0.
  CHECK(error_of(parse({"--count", "-0", "s"})) ==
        "--count: '-0' is not an integer in [0, 9223372036854775807]");
  CHECK(*parse({"--offset", "-0", "s"})->integer("offset", 1) == 0);
  CHECK(*parse({"--offset", "-5", "s"})->integer("offset", 1) == -5);
  CHECK_FALSE(parse({"--offset", "-6", "s"}).ok());
  for (const char* bad : {"nan", "-0", "-0.5", "+0.5", "2"}) {
    auto rate = parse({"--rate", bad, "s"});
    REQUIRE(rate.ok());
    CHECK_MESSAGE(!rate->number("rate", 0, 0, 1).ok(), bad);
  }
  CHECK(*parse({"--rate", "-0.5", "s"})->number("rate", 0, -1, 1) == -0.5);
  auto missing = parse({"s"});
  REQUIRE(missing.ok());
  CHECK(missing->required("data").status().message() == "missing --data DIR");
}

TEST_CASE("args: optional positionals and times") {
  constexpr CommandSpec spec = {"pair", "a test command", "tally pair", "", kTestFlags, 2, true};
  auto parse_pair = [&](std::initializer_list<const char*> argv) {
    return Args::parse(spec, std::span<const char* const>(argv.begin(), argv.size()));
  };
  CHECK(parse_pair({}).ok());
  CHECK(parse_pair({"a", "b"}).ok());
  CHECK(error_of(parse_pair({"a"})) == "expected 0 or 2 positional argument(s), got 1");
  auto args = parse_pair({"--data", "2023-11-14T22:13:20Z", "--rate", "x"});
  REQUIRE(args.ok());
  CHECK(*args->time("data", 0) == 1'700'000'000'000'000'000);
  CHECK(*args->time("pipeline", -3) == -3);
  CHECK(args->time("rate", 0).code() == ErrorCode::invalid);
}

TEST_CASE("args: help text lists every flag") {
  std::string help;
  append_help(kTestSpec, &help);
  CHECK(help.find("--data DIR") != std::string::npos);
  CHECK(help.find("--json") != std::string::npos);
  CHECK(help.find("--help") != std::string::npos);
  // An integer flag's range, after its text.
  CHECK(help.find("depth; 1..100\n") != std::string::npos);
  CHECK(help.find("from zero; 0 or more\n") != std::string::npos);
}

// ---- workload CSV ------------------------------------------------------------

std::string header_and(std::string_view lines) {
  return std::string(kWorkloadHeader) + "\n" + std::string(lines);
}

std::string parse_error(std::string_view lines) {
  auto workload = parse_workload(header_and(lines));
  REQUIRE_FALSE(workload.ok());
  CHECK(workload.code() == ErrorCode::invalid);
  return workload.status().message();
}

TEST_CASE("csv: every op parses, and formatting gives the line back") {
  const std::string lines =
      "acquire,k1,s1,i1,500,,,\n"
      "consume,k2,s1,i1,5,,,\n"
      "transfer,k3,s1,i1,5,s2,,\n"
      "hold,k4,s1,i1,5,,3600000,\n"
      "commit,k5,,,,,,k4\n"
      "release,k6,,,,,,k4\n";
  auto workload = parse_workload(header_and(lines));
  REQUIRE(workload.ok());
  const std::vector<WorkloadOp>& ops = (*workload)->ops;
  REQUIRE(ops.size() == 6);
  CHECK(ops[0].type == OpType::acquire);
  CHECK(ops[0].qty == 500);
  CHECK(ops[2].to == "s2");
  CHECK(ops[3].ttl_ms == 3'600'000);
  CHECK(ops[4].type == OpType::commit);
  CHECK(ops[4].hold_key == "k4");
  CHECK(ops[5].type == OpType::release);
  std::string again;
  for (const WorkloadOp& op : ops) append_workload_line(&again, op);
  CHECK(again == lines);
}

TEST_CASE("csv: CRLF and a missing final newline are accepted") {
  auto workload = parse_workload(std::string(kWorkloadHeader) + "\r\nacquire,k1,s1,i1,5,,,");
  REQUIRE(workload.ok());
  CHECK((*workload)->ops.size() == 1);
  auto empty = parse_workload(std::string(kWorkloadHeader) + "\n");
  REQUIRE(empty.ok());
  CHECK((*empty)->ops.empty());
}

TEST_CASE("csv: malformed lines are errors with their line number") {
  CHECK(parse_workload("op,key\nacquire,k1,s1,i1,5,,,\n").status().message().starts_with("line 1:"));
  CHECK(parse_error("acquire,k1,s1,i1,5,,,\nsteal,k2,s1,i1,5,,,\n") == "line 3: unknown op 'steal'");
  CHECK(parse_error("acquire,k1,s1,i1,5,,\n").starts_with("line 2: expected 8"));
  CHECK(parse_error("acquire,k1,s1,i1,5,,,,\n").starts_with("line 2: expected 8"));
  CHECK(parse_error("\nacquire,k1,s1,i1,5,,,\n").starts_with("line 2: expected 8"));
  CHECK(parse_error("acquire,k1,s1,i1,5,s2,,\n") == "line 2: acquire: field 'to' must be empty");
  CHECK(parse_error("commit,k1,,,5,,,k0\n") == "line 2: commit: field 'qty' must be empty");
  CHECK(parse_error("acquire,k1,s1,i1,five,,,\n") == "line 2: qty 'five' is not an int64");
  CHECK(parse_error("acquire,k1,s1,i1,,,,\n") == "line 2: qty '' is not an int64");
  CHECK(parse_error("hold,k1,s1,i1,5,,-1,\n").starts_with("line 2: ttl_ms '-1'"));
  CHECK(parse_error("hold,k1,s1,i1,5,,99999999999999999,\n").starts_with("line 2: ttl_ms"));
}

TEST_CASE("csv: quantities the ledger must judge still parse") {
  // qty <= 0 is the ledger's `invalid`, not a malformed file.
  auto workload = parse_workload(header_and("consume,k1,s1,i1,0,,,\nacquire,k2,s1,i1,-4,,,\n"));
  REQUIRE(workload.ok());
  CHECK((*workload)->ops[1].qty == -4);
}

TEST_CASE("csv: empty keys and names still parse, for the ledger to answer invalid") {
  auto workload = parse_workload(header_and("acquire,,s1,i1,5,,,\ntransfer,k1,s1,i1,5,,,\n"
                                            "commit,k2,,,,,,\n"));
  REQUIRE(workload.ok());
  REQUIRE((*workload)->ops.size() == 3);
  CHECK((*workload)->ops[0].key.empty());
  CHECK((*workload)->ops[1].to.empty());
  CHECK((*workload)->ops[2].hold_key.empty());
}

TEST_CASE("expect: balance lines and outcome counts") {
  auto expectation = parse_expect("s1,i1,10,0\ns2,i1,0,5\n#outcomes ok=3 insufficient=1 "
                                  "hold_unknown=2 retry=4\n");
  REQUIRE(expectation.ok());
  CHECK(expectation->balance_lines == std::vector<std::string>{"s1,i1,10,0", "s2,i1,0,5"});
  CHECK(expectation->counts == OutcomeCounts{3, 1, 2, 4});
  CHECK(expectation->conflicts.empty());
  std::string line;
  append_outcomes_line(&line, *expectation->counts);
  CHECK(line == "#outcomes ok=3 insufficient=1 hold_unknown=2 retry=4\n");

  CHECK_FALSE(parse_expect("s1,i1,ten,0\n#outcomes ok=0 insufficient=0 hold_unknown=0 retry=0\n").ok());
  CHECK_FALSE(parse_expect("#outcomes ok=1 insufficient=0 retry=0\n").ok());
  CHECK_FALSE(parse_expect("#outcomes ok=1 insufficient=0 hold_unknown=0 retry=0 x=1\n").ok());
  // A file cut short, or with lines added after the counts, is a wrong
  // expectation, for bench to report as a difference, not a usage error.
  expectation = parse_expect("s1,i1,10,0\n");
  REQUIRE(expectation.ok());
  CHECK_FALSE(expectation->counts.has_value());
  // The counts alone: every pair holds nothing.
  expectation = parse_expect("#outcomes ok=0 insufficient=0 hold_unknown=0 retry=0\n");
  REQUIRE(expectation.ok());
  CHECK(expectation->balance_lines.empty());
  CHECK(expectation->counts == OutcomeCounts{});
  // No line at all is no expectation.
  for (const std::string_view nothing : {"", "\n", "\n\r\n\n"}) {
    CHECK(parse_expect(nothing).status().message() ==
          "line 1: no balance line and no '#outcomes ...' line");
  }
  expectation = parse_expect("#outcomes ok=0 insufficient=0 hold_unknown=0 retry=0\ns1,i1,1,0\n");
  REQUIRE(expectation.ok());
  CHECK(expectation->balance_lines == std::vector<std::string>{"s1,i1,1,0"});
  CHECK(expectation->counts == OutcomeCounts{});
  expectation = parse_expect("#outcomes ok=0 insufficient=0 hold_unknown=0 retry=0\n"
                             "#outcomes ok=1 insufficient=0 hold_unknown=0 retry=0\n");
  REQUIRE(expectation.ok());
  CHECK(expectation->counts == OutcomeCounts{});
  CHECK(expectation->conflicts ==
        std::vector<std::string>{"line 2: a second '#outcomes ...' line (the first on line 1)"});
  // A subject may begin as the counts line does; its line has commas.
  expectation = parse_expect("#outcomes ok=1,i,5,0\n#outcomes ok=1 insufficient=0 "
                             "hold_unknown=0 retry=0\n");
  REQUIRE(expectation.ok());
  CHECK(expectation->balance_lines == std::vector<std::string>{"#outcomes ok=1,i,5,0"});
  CHECK(expectation->counts == OutcomeCounts{1, 0, 0, 0});
}

TEST_CASE("expect: four fields, each pair once, amounts as numbers") {
  const std::string counts = "#outcomes ok=0 insufficient=0 hold_unknown=0 retry=0\n";
  // No workload name holds a comma: a fifth field is no name "x,10".
  CHECK(parse_expect("s1,i1,1,0\na,x,10,0,5\n" + counts)
            .status()
            .message()
            .starts_with("line 2: expected 'subject,item,available,held'"));
  auto twice = parse_expect("s1,i1,10,0\ns2,i1,1,0\ns1,i1,9,0\n" + counts);
  REQUIRE(twice.ok());
  CHECK(twice->balance_lines == std::vector<std::string>{"s1,i1,10,0", "s2,i1,1,0"});
  CHECK(twice->conflicts ==
        std::vector<std::string>{"line 3: s1,i1 is listed twice (first on line 1)"});
  auto padded = parse_expect("s1,i1,010,00\n" + counts);
  REQUIRE(padded.ok());
  BalanceLine balance;
  REQUIRE(parse_balance_line(padded->balance_lines[0], &balance));
  CHECK(balance.pair == "s1,i1");
  CHECK(balance.available == 10);
  CHECK(balance.held == 0);
  // An export's line splits from the right: a name with a comma stays whole.
  REQUIRE(parse_balance_line("a,b,i1,5,2", &balance));
  CHECK(balance.pair == "a,b,i1");
  CHECK(balance.available == 5);
  CHECK(balance.held == 2);
  for (const std::string_view bad : {"i1,5,0", ",5,0", "s1,i1,5", "s1,i1,5,x", "s1,i1,,0", ""}) {
    CHECK_FALSE(parse_balance_line(bad, &balance));
  }
}

TEST_CASE("csv: a name with a comma, a quote or a line break is quoted; others print as stored") {
  std::string out;
  append_balance_line(&out, "csv-x,y", "z", 1, 0);
  append_balance_line(&out, "csv-x", "y,z", 1, 0);
  append_balance_line(&out, "say \"hi\"", "a\nb", -0, 2);
  append_balance_line(&out, "s 1\t\xff", "i'1", 3, 4);
  CHECK(out ==
        "\"csv-x,y\",z,1,0\n"
        "csv-x,\"y,z\",1,0\n"
        "\"say \"\"hi\"\"\",\"a\nb\",0,2\n"
        "s 1\t\xff,i'1,3,4\n");
}

// ---- output escaping -----------------------------------------------------------

std::string json(std::string_view text) {
  std::string out;
  append_json_string(&out, text);
  return out;
}

TEST_CASE("json strings escape what JSON needs and keep valid UTF-8") {
  CHECK(json("plain") == "\"plain\"");
  CHECK(json("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json("\n\t\r") == "\"\\n\\t\\r\"");
  CHECK(json(std::string_view("\x01\x00\x7f", 3)) == "\"\\u0001\\u0000\\u007f\"");
  CHECK(json("gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80") ==
        "\"gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80\"");
  // Not UTF-8: a lone continuation byte, a truncated sequence, an overlong
  // form, a surrogate.
  CHECK(json("\x80") == "\"\\u0080\"");
  CHECK(json("a\xc3") == "\"a\\u00c3\"");
  CHECK(json("\xc0\xaf") == "\"\\u00c0\\u00af\"");
  CHECK(json("\xed\xa0\x80") == "\"\\u00ed\\u00a0\\u0080\"");
  // Valid, but some readers break lines at them: a C1 control (NEL among
  // them), the line and paragraph separators.
  CHECK(json("a\xc2\x85" "b\xc2\x9f" "c\xe2\x80\xa8" "d\xe2\x80\xa9" "e\xe2\x80\xaa") ==
        "\"a\\u0085b\\u009fc\\u2028d\\u2029e\xe2\x80\xaa\"");
}

TEST_CASE("times print as RFC 3339 over the whole int64 range, hex as 16 digits") {
  std::string out;
  append_rfc3339(&out, 1'700'000'000'123'456'789);
  CHECK(out == "2023-11-14T22:13:20.123456789Z");
  out.clear();
  append_rfc3339(&out, -1);
  CHECK(out == "1969-12-31T23:59:59.999999999Z");
  out.clear();
  append_hex64(&out, 0xabcdef0123456789ull);
  CHECK(out == "abcdef0123456789");
  out.clear();
  append_rfc3339(&out, INT64_MIN);
  CHECK(out == "1677-09-21T00:12:43.145224192Z");
  out.clear();
  append_rfc3339(&out, INT64_MAX);
  CHECK(out == "2262-04-11T23:47:16.854775807Z");
}

std::int64_t time_of(std::string_view text) {
  std::int64_t ns = 12345;
  REQUIRE_MESSAGE(parse_time(text, &ns) == TimeParse::ok, text);
  return ns;
}

TEST_CASE("times parse from RFC 3339 or ns, and print back") {
  CHECK(time_of("2023-11-14T22:13:20.123456789Z") == 1'700'000'000'123'456'789);
  CHECK(time_of("2023-11-14t22:13:20.123456789z") == 1'700'000'000'123'456'789);
  CHECK(time_of("2023-11-15T00:13:20.123456789+02:00") == 1'700'000'000'123'456'789);
  CHECK(time_of("2023-11-14T17:43:20.123456789-04:30") == 1'700'000'000'123'456'789);
  CHECK(time_of("2023-11-14T22:13:20Z") == 1'700'000'000'000'000'000);
  CHECK(time_of("2023-11-14T22:13:20.5Z") == 1'700'000'000'500'000'000);
  CHECK(time_of("1970-01-01T00:00:00Z") == 0);
  CHECK(time_of("1969-12-31T23:59:59.999999999Z") == -1);
  CHECK(time_of("2024-02-29T00:00:00Z") == 1'709'164'800'000'000'000);  // a leap day
  CHECK(time_of("2000-02-29T00:00:00Z") == 951'782'400'000'000'000);
  CHECK(time_of("1700000000123456789") == 1'700'000'000'123'456'789);
  CHECK(time_of("-5") == -5);
  CHECK(time_of("1677-09-21T00:12:43.145224192Z") == INT64_MIN);
  CHECK(time_of("2262-04-11T23:47:16.854775807Z") == INT64_MAX);
  for (const char* bad :
       {"", "x", "2023-11-14", "2023-11-14T22:13:20", "2023-11-14 22:13:20Z",
        "2023-11-14T22:13:20.Z", "2023-11-14T22:13:20.1234567891Z", "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z", "2023-04-31T00:00:00Z", "2023-00-10T00:00:00Z",
        "2023-13-10T00:00:00Z", "2023-11-14T24:00:00Z", "2023-11-14T23:60:00Z",
        "2023-11-14T23:59:60Z", "2023-11-14T22:13:20+2:00", "2023-11-14T22:13:20+24:00",
        "2023-11-14T22:13:20+02", "2023-11-14T22:13:20Z ", "+5", "1.5", "23-11-14T22:13:20Z"}) {
    std::int64_t ns = 7;
    CHECK_MESSAGE(parse_time(bad, &ns) == TimeParse::malformed, bad);
    CHECK(ns == 7);
  }
  // Times well formed but past what an int64 of ns holds.
  for (const char* far : {"2262-04-11T23:47:16.854775808Z", "1677-09-21T00:12:43.145224191Z",
                          "9999-12-31T23:59:59Z", "9223372036854775808",
                          "-9223372036854775809"}) {
    std::int64_t ns = 7;
    CHECK_MESSAGE(parse_time(far, &ns) == TimeParse::out_of_range, far);
    CHECK(ns == 7);
  }
  // Every printed time parses back to itself.
  for (std::int64_t ns : {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1},
                          std::int64_t{951'782'399'999'999'999}, std::int64_t{4'102'444'800'000'000'000},
                          INT64_MIN, INT64_MAX}) {
    std::string printed;
    append_rfc3339(&printed, ns);
    CHECK(time_of(printed) == ns);
  }
  std::uint64_t state = 42;
  for (int sample = 0; sample < 10000; sample++) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const auto ns = static_cast<std::int64_t>(state);
    std::string printed;
    append_rfc3339(&printed, ns);
    REQUIRE_MESSAGE(time_of(printed) == ns, printed);
  }
}

TEST_CASE("integers and changes print as std::to_string would, changes signed") {
  std::string out;
  for (std::int64_t value : {std::int64_t{0}, std::int64_t{7}, std::int64_t{-42}, INT64_MIN, INT64_MAX}) {
    out.clear();
    append_int(&out, value);
    CHECK(out == std::to_string(value));
  }
  out.clear();
  append_signed(&out, 5);
  out += ' ';
  append_signed(&out, -5);
  out += ' ';
  append_signed(&out, 0);
  CHECK(out == "+5 -5 0");
}

TEST_CASE("progress stays quiet when disabled and erases what it drew") {
  std::FILE* file = std::tmpfile();
  REQUIRE(file != nullptr);
  {
    Progress progress("test", 100, file, false);
    for (std::uint64_t done = 0; done < 100'000; done++) progress.update(done);
  }
  CHECK(std::ftell(file) == 0);
  {
    Progress progress("test", 0, file, true);
    progress.finish();  // nothing drawn: nothing to erase
    progress.update(5);
  }
  CHECK(std::ftell(file) == 0);
  std::fclose(file);
}

TEST_CASE("progress counted in large steps draws its unit, and erases the line") {
  std::FILE* file = std::tmpfile();
  REQUIRE(file != nullptr);
  {
    Progress progress("backup", 10, file, true);
    progress.set_unit("MiB");
    // Past the redraw interval since the start: the next update draws.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    progress.update_now(3);
  }
  std::string written(static_cast<std::size_t>(std::ftell(file)), '\0');
  std::rewind(file);
  REQUIRE(std::fread(written.data(), 1, written.size(), file) == written.size());
  std::fclose(file);
  const std::string drawn = "\rtally: backup: 3 / 10 (30%) MiB, 0 s";
  CHECK(written.starts_with(drawn));
  // Then blanks over it, from the start of the line (appended, not "\r" +
  // ...: GCC 12's false -Wrestrict, PR 105651).
  std::string blank(1, '\r');
  blank.append(drawn.size(), ' ');
  blank += '\r';
  CHECK(written.substr(drawn.size()) == blank);
}

// ---- log events ----------------------------------------------------------------
// ---- reference model ---------------------------------------------------------

WorkloadOp op_of(OpType type, std::string_view key, std::string_view subject = {},
                 std::int64_t qty = 0, std::string_view to = {}, std::string_view hold_key = {}) {
  WorkloadOp op;
  op.type = type;
  op.key = key;
  op.subject = subject;
  op.item = subject.empty() ? std::string_view() : "gold";
  op.qty = qty;
  op.to = to;
  op.hold_key = hold_key;
  op.ttl_ms = type == OpType::hold ? 1000 : 0;
  return op;
}

TEST_CASE("model: the format's rules") {
  using Outcome = ReferenceModel::Outcome;
  ReferenceModel model;
  CHECK(model.apply(op_of(OpType::acquire, "k1", "alice", 100)) == Outcome::ok);
  CHECK(model.apply(op_of(OpType::consume, "k2", "alice", 101)) == Outcome::insufficient);
  CHECK(model.apply(op_of(OpType::transfer, "k3", "alice", 30, "bob")) == Outcome::ok);
  CHECK(model.apply(op_of(OpType::hold, "k4", "alice", 60)) == Outcome::ok);
  CHECK(model.apply(op_of(OpType::hold, "k5", "alice", 11)) == Outcome::insufficient);
  CHECK(model.apply(op_of(OpType::hold, "k6", "bob", 10)) == Outcome::ok);
  // A retry changes nothing, whatever it was.
  CHECK(model.apply(op_of(OpType::acquire, "k1", "alice", 100)) == Outcome::retry);
  CHECK(model.apply(op_of(OpType::commit, "k7", {}, 0, {}, "k4")) == Outcome::ok);
  CHECK(model.apply(op_of(OpType::release, "k8", {}, 0, {}, "k4")) == Outcome::hold_unknown);
  CHECK(model.apply(op_of(OpType::release, "k9", {}, 0, {}, "k5")) == Outcome::hold_unknown);
  CHECK(model.apply(op_of(OpType::commit, "k10", {}, 0, {}, "k1")) == Outcome::hold_unknown);
  CHECK(model.apply(op_of(OpType::commit, "k11", {}, 0, {}, "nope")) == Outcome::hold_unknown);
  CHECK(model.apply(op_of(OpType::release, "k12", {}, 0, {}, "k6")) == Outcome::ok);
  CHECK(model.apply(op_of(OpType::hold, "k13", "bob", 5)) == Outcome::ok);
  // alice: 100 - 30 - 60 committed = 10; bob: 30, 5 of it held.
  CHECK(model.balance_lines() == "alice,gold,10,0\nbob,gold,25,5\n");
  CHECK(model.counts() == OutcomeCounts{7, 2, 4, 1});
}

TEST_CASE("model: balance lines sort bytewise and skip zeros") {
  ReferenceModel model;
  CHECK(model.apply(op_of(OpType::acquire, "k1", "s2", 5)) == ReferenceModel::Outcome::ok);
  CHECK(model.apply(op_of(OpType::acquire, "k2", "s10", 5)) == ReferenceModel::Outcome::ok);
  CHECK(model.apply(op_of(OpType::consume, "k3", "s2", 5)) == ReferenceModel::Outcome::ok);
  CHECK(model.apply(op_of(OpType::acquire, "k4", "S", 1)) == ReferenceModel::Outcome::ok);
  CHECK(model.balance_lines() == "S,gold,1,0\ns10,gold,5,0\n");
}

// ---- generator ------------------------------------------------------------------

std::string generate(const WorkloadSpec& spec, std::string* expect = nullptr) {
  WorkloadGenerator generator(spec);
  std::string text;
  WorkloadOp op;
  while (generator.next(&op)) append_workload_line(&text, op);
  if (expect != nullptr) {
    *expect = generator.model().balance_lines();
    append_outcomes_line(expect, generator.model().counts());
  }
  return text;
}

TEST_CASE("random: the same numbers for a seed, everywhere") {
  // Pinned (xoshiro256** seeded by splitmix64 from 1): a generated
  // workload must not change under a new compiler or standard library.
  Random random(1);
  CHECK(random.next() == 0xb3f2af6d0fc710c5ull);
  CHECK(random.next() == 0x853b559647364ceaull);
  CHECK(random.next() == 0x92f89756082a4514ull);
  Random other(2);
  CHECK(other.next() != 0xb3f2af6d0fc710c5ull);
  for (int draw = 0; draw < 1000; draw++) {
    const double unit = random.unit();
    CHECK(unit >= 0.0);
    CHECK(unit < 1.0);
    CHECK(random.below(7) < 7);
  }
}

TEST_CASE("generator: deterministic, well-formed, and its expect matches a replay of its lines") {
  WorkloadSpec spec;
  spec.subjects = 50;
  spec.items = 5;
  spec.ops = 5000;
  spec.seed = 7;
  spec.retry_rate = 0.05;
  std::string expect;
  const std::string text = generate(spec, &expect);
  std::string expect_again;
  CHECK(generate(spec, &expect_again) == text);
  CHECK(expect_again == expect);
  spec.seed = 8;
  CHECK(generate(spec) != text);

  auto workload = parse_workload(std::string(kWorkloadHeader) + "\n" + text);
  REQUIRE(workload.ok());
  const std::vector<WorkloadOp>& ops = (*workload)->ops;
  CHECK(ops.size() > 5000);

  // The model is a function of the lines alone: a fresh one fed the file
  // reaches the generator's expectation.
  ReferenceModel model;
  std::set<OpType> types;
  for (const WorkloadOp& op : ops) {
    model.apply(op);
    types.insert(op.type);
  }
  std::string replayed = model.balance_lines();
  append_outcomes_line(&replayed, model.counts());
  CHECK(replayed == expect);
  CHECK(types.size() == 6);
  const OutcomeCounts& counts = model.counts();
  CHECK(counts.ok + counts.insufficient + counts.hold_unknown + counts.retry ==
        static_cast<std::int64_t>(ops.size()));
  CHECK(counts.retry > 0);
  CHECK(counts.insufficient > 0);
  CHECK(counts.hold_unknown > 0);
  CHECK(counts.ok > counts.insufficient + counts.hold_unknown);
}

TEST_CASE("generator: one subject and no mixed ops") {
  WorkloadSpec spec;
  spec.subjects = 1;
  spec.items = 1;
  spec.ops = 200;
  std::string text = generate(spec);
  CHECK(text.find("transfer") == std::string::npos);
  spec.ops = 0;
  auto workload = parse_workload(std::string(kWorkloadHeader) + "\n" + generate(spec));
  REQUIRE(workload.ok());
  CHECK((*workload)->ops.size() >= 1);
  CHECK((*workload)->ops.size() <= 3);
}

// ---- the audit commands on logs no ledger writes ----------------------------

struct LoggedOp {
  std::int64_t time_ns = 0;
  std::string key;
  OpType type = OpType::acquire;
  std::int64_t qty = 1;
};

// A log of `ops` at seqs 1, 2, ..., each on "alice" "gold", in DATA/log.
void write_log(const std::string& data_dir, const std::vector<LoggedOp>& ops) {
  auto writer = log::LogWriter::open(log::posix_file_system(), log_dir(data_dir), log::LogEnd{});
  REQUIRE(writer.ok());
  log::EventEncoder encoder;
  for (std::size_t index = 0; index < ops.size(); index++) {
    log::Op op;
    op.type = ops[index].type;
    op.subject = "alice";
    op.item = "gold";
    op.qty = ops[index].qty;
    log::Event event;
    event.seq = index + 1;
    event.timestamp_ns = ops[index].time_ns;
    event.key = ops[index].key;
    event.ops = std::span<const log::Op>(&op, 1);
    (*writer)->append(encoder.encode(event));
  }
  REQUIRE((*writer)->write((*writer)->seal(), false).ok());
}

int run(std::initializer_list<const char*> argv) {
  return run_cli(static_cast<int>(argv.size()), std::data(argv));
}

// run(), returning what it printed on stdout; its exit code in *code.
std::string run_printing(std::initializer_list<const char*> argv, int* code) {
  std::FILE* file = std::tmpfile();
  REQUIRE(file != nullptr);
  std::fflush(stdout);
  const int saved = ::dup(STDOUT_FILENO);
  REQUIRE(saved >= 0);
  REQUIRE(::dup2(::fileno(file), STDOUT_FILENO) >= 0);
  *code = run(argv);
  std::fflush(stdout);
  REQUIRE(::dup2(saved, STDOUT_FILENO) >= 0);
  ::close(saved);
  // The two descriptors shared one offset: the end of what was printed.
  REQUIRE(std::fseek(file, 0, SEEK_END) == 0);
  std::string printed(static_cast<std::size_t>(std::ftell(file)), '\0');
  std::rewind(file);
  REQUIRE(std::fread(printed.data(), 1, printed.size(), file) == printed.size());
  std::fclose(file);
  return printed;
}

TEST_CASE("audit: history read from the log refuses a change that takes a balance below zero") {
  testing::TempDir dir;
  const std::string data = dir.sub("data");
  write_log(data, {{1, "a", OpType::acquire, 5}, {2, "b", OpType::consume, 6}});
  CHECK(run({"tally", "history", "--data", data.c_str(), "alice", "gold", "--to-seq", "1"}) == 0);
  CHECK(run({"tally", "history", "--data", data.c_str(), "alice", "gold"}) == 1);
  CHECK(run({"tally", "verify", "--data", data.c_str()}) == 1);
}

TEST_CASE("audit: verify refuses a key decided again at the time of its first decision") {
  testing::TempDir dir;
  const std::string at_once = dir.sub("at-once");
  write_log(at_once, {{1, "a"}, {2, "b"}, {2, "b"}});
  CHECK(run({"tally", "verify", "--data", at_once.c_str()}) == 1);
  // Later, it is a key a shorter window forgot, decided again.
  const std::string later = dir.sub("later");
  write_log(later, {{1, "a"}, {2, "b"}, {3, "b"}});
  CHECK(run({"tally", "verify", "--data", later.c_str()}) == 0);
}

TEST_CASE("audit: a snapshot record that does not verify says nothing of where the log ended") {
  testing::TempDir dir;
  const std::string data = dir.sub("data");
  write_log(data, {{1, "a"}, {2, "b"}});
  REQUIRE(run({"tally", "snapshot", "--data", data.c_str()}) == 0);
  REQUIRE(newest_snapshot_seq(data) == 2);
  // A metadata record under seq 1000 that does not decode, as a flipped
  // byte of a record's key would leave.
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  REQUIRE(mdb_env_set_maxdbs(env, 2) == 0);
  REQUIRE(mdb_env_open(env, snapshot_dir(data).c_str(), 0, 0644) == 0);
  MDB_txn* txn = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
  MDB_dbi meta = 0;
  REQUIRE(mdb_dbi_open(txn, snap::kMetaDbName, 0, &meta) == 0);
  std::array<std::uint8_t, 8> key_bytes{0, 0, 0, 0, 0, 0, 0x03, 0xe8};
  std::array<char, 5> value_bytes{'b', 'o', 'g', 'u', 's'};
  MDB_val key{key_bytes.size(), key_bytes.data()};
  MDB_val value{value_bytes.size(), value_bytes.data()};
  REQUIRE(mdb_put(txn, meta, &key, &value, 0) == 0);
  REQUIRE(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
  // The read tools warned that events after seq 2 were lost.
  CHECK(newest_snapshot_seq(data) == 2);
}

TEST_CASE("audit: a snapshot another version described is listed so and left unchecked, not bad") {
  testing::TempDir dir;
  const std::string data = dir.sub("data");
  write_log(data, {{1, "a"}, {2, "b"}});
  REQUIRE(run({"tally", "snapshot", "--data", data.c_str()}) == 0);
  REQUIRE(run({"tally", "verify", "--data", data.c_str()}) == 0);
  snap::bump_meta_version(snapshot_dir(data), 2);
  CHECK(run({"tally", "verify", "--data", data.c_str()}) == 0);
  int code = -1;
  CHECK(run_printing({"tally", "snapshot", "--data", data.c_str(), "--list"}, &code) ==
        "seq=2 metadata=other-version\n");
  CHECK(code == 0);
  CHECK(run_printing({"tally", "snapshot", "--data", data.c_str(), "--list", "--json"}, &code) ==
        "{\"seq\":2,\"metadata_ok\":false,\"metadata_other_version\":true}\n");
  CHECK(code == 0);
  // Damaged, it is bad.
  snap::edit_record(snapshot_dir(data), snap::kMetaDbName, snap::record_key(2, std::nullopt),
                    [](std::vector<std::uint8_t>* bytes) { (*bytes)[20] ^= 1; });
  CHECK(run({"tally", "verify", "--data", data.c_str()}) == 1);
  CHECK(run_printing({"tally", "snapshot", "--data", data.c_str(), "--list"}, &code) ==
        "seq=2 metadata=bad\n");
  CHECK(run_printing({"tally", "snapshot", "--data", data.c_str(), "--list", "--json"}, &code) ==
        "{\"seq\":2,\"metadata_ok\":false}\n");
}

}  // namespace
}  // namespace tally::cli
