// tally: the command-line tool. Everything but the entry point lives in the
// tools library (tools/cli.cc), so tests can link it.
#include "tools/cli.h"

#include <csignal>

int main(int argc, char** argv) {
  // A write past a file size limit (ulimit -f) fails with EFBIG, reported
  // as any other I/O error, instead of killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  return tally::cli::run_cli(argc, argv);
}
