// The tally command line: the commands main() dispatches to, and the exit
// codes and error reporting they share (docs/cli.md is the user's contract).
//
// Every command reads its arguments (after the command name), prints its
// output to stdout and its errors to stderr as "tally: <message>", and
// returns its exit code.
#pragma once

#include <span>
#include <string_view>

#include "log/status.h"
#include "tools/args.h"

namespace tally::cli {

inline constexpr int kExitOk = 0;
// A check failed, the data is corrupt, or an operation the command needed failed.
inline constexpr int kExitFailed = 1;
// The command line or an input file named on it is wrong.
inline constexpr int kExitUsage = 2;

// Prints "tally: <message>" and a hint to --help; returns kExitUsage.
int usage_error(std::string_view command, std::string_view message);
// Prints "tally: <code>: <message>"; returns kExitFailed.
int failure(const Status& status);

// The token in a --token-file: the file's content without surrounding
// whitespace. invalid when it cannot be read, is empty or is too large.
Result<std::string> read_token(std::string_view path);

// Runs `tally <command> ...`; returns the process's exit code.
int run_cli(int argc, const char* const* argv);

// One command: its help text and flags, and the function that runs it with
// the parsed arguments.
struct CliCommand {
  const CommandSpec* spec;
  int (*run)(const Args& args);
};

// apply and bench (tools/cli_apply.cc).
extern const CliCommand kApply;
extern const CliCommand kBench;
// Read-only audit commands (tools/cli_read.cc, tools/cli_log.cc,
// tools/cli_verify.cc, tools/cli_history.cc; history --rebuild writes the
// history index).
extern const CliCommand kExport;
extern const CliCommand kBalance;
extern const CliCommand kList;
extern const CliCommand kHistory;
extern const CliCommand kLog;
extern const CliCommand kVerify;
// Snapshots: take one now, or list them (tools/cli_snapshot.cc).
extern const CliCommand kSnapshot;
// A copy of a data directory beside a live writer (tools/cli_backup.cc).
extern const CliCommand kBackup;
// The workload generator (tools/workload.cc).
extern const CliCommand kWorkload;
// The server (tools/cli_serve.cc).
extern const CliCommand kServe;

}  // namespace tally::cli
