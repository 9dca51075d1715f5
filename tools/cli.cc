#include "tools/cli.h"

#include <array>
#include <cstdio>
#include <string>

#include "tools/format.h"

#ifndef TALLY_VERSION
#define TALLY_VERSION "unknown"
#endif

namespace tally::cli {

namespace {

constexpr std::array<const CliCommand*, 12> kCommands = {
    &kApply, &kBench,  &kExport,   &kBalance, &kList,     &kHistory,
    &kLog,   &kVerify, &kSnapshot, &kBackup,  &kWorkload, &kServe,
};

const CliCommand* find_command(std::string_view name) {
  for (const CliCommand* command : kCommands) {
    if (command->spec->name == name) return command;
  }
  return nullptr;
}

void print_overview(std::FILE* file) {
  std::string text =
      "usage: tally COMMAND [flags]\n"
      "\n"
      "tally is an event-sourced ledger engine; this tool applies workloads to a\n"
      "data directory and audits it.\n"
      "\n"
      "commands:\n";
  for (const CliCommand* command : kCommands) {
    text += "  " + std::string(command->spec->name);
    text += std::string(10 - command->spec->name.size(), ' ');
    text += command->spec->summary;
    text += "\n";
  }
  text +=
      "\n"
      "`tally COMMAND --help` describes a command. Exit codes: 0 ok, 1 a check or\n"
      "operation failed or the data is corrupt, 2 usage error.\n";
  std::fputs(text.c_str(), file);
}

int print_help(const CommandSpec& spec) {
  std::string text;
  append_help(spec, &text);
  std::fputs(text.c_str(), stdout);
  return kExitOk;
}

}  // namespace

int usage_error(std::string_view command, std::string_view message) {
  std::fprintf(stderr, "tally: %.*s\n", static_cast<int>(message.size()), message.data());
  std::fprintf(stderr, "tally: see 'tally %.*s --help'\n", static_cast<int>(command.size()),
               command.data());
  return kExitUsage;
}

int failure(const Status& status) {
  std::fprintf(stderr, "tally: %s\n", status.to_string().c_str());
  return kExitFailed;
}

namespace {

// Runs what the command line asks for: help, the version or a command.
int dispatch(std::span<const char* const> args) {
  if (args.size() < 2) {
    std::fputs("tally: missing command\n", stderr);
    print_overview(stderr);
    return kExitUsage;
  }
  const std::string_view name = args[1];
  const auto unknown = [](std::string_view unknown_name) {
    std::fprintf(stderr, "tally: unknown command '%.*s'\n", static_cast<int>(unknown_name.size()),
                 unknown_name.data());
    std::fprintf(stderr, "tally: see 'tally --help'\n");
    return kExitUsage;
  };
  const auto asks_help = [](std::string_view word) {
    return word == "--help" || word == "-h" || word == "help";
  };
  // `help COMMAND` (or --help, -h) takes one word; --version none.
  const std::size_t words_max = name == "--version" ? 2 : 3;
  if ((asks_help(name) || name == "--version") && args.size() > words_max) {
    std::fprintf(stderr, "tally: unexpected argument '%s' after '%s'\n", args[words_max],
                 args[words_max - 1]);
    std::fprintf(stderr, "tally: see 'tally --help'\n");
    return kExitUsage;
  }
  if (asks_help(name)) {
    // `help --help` is help about help: the overview.
    if (args.size() > 2 && !asks_help(args[2])) {
      const CliCommand* command = find_command(args[2]);
      if (command == nullptr) return unknown(args[2]);
      return print_help(*command->spec);
    }
    print_overview(stdout);
    return kExitOk;
  }
  if (name == "--version") {
    std::printf("tally %s\n", TALLY_VERSION);
    return kExitOk;
  }
  const CliCommand* command = find_command(name);
  if (command == nullptr) return unknown(name);
  auto parsed = Args::parse(*command->spec, args.subspan(2));
  if (!parsed) return usage_error(name, parsed.status().message());
  if (parsed->help()) return print_help(*command->spec);
  return command->run(*parsed);
}

}  // namespace

int run_cli(int argc, const char* const* argv) {
  const int exit_code =
      dispatch(std::span<const char* const>(argv, static_cast<std::size_t>(argc)));
  // A full disk or a closed stdout must not pass for success, help included.
  if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
    std::fprintf(stderr, "tally: error writing the output\n");
    return kExitFailed;
  }
  return exit_code;
}

}  // namespace tally::cli
