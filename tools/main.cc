// tally: the command-line tool. Everything but the entry point lives in the
// tools library (tools/cli.cc), so tests can link it.
#include "tools/cli.h"

int main(int argc, char** argv) { return tally::cli::run_cli(argc, argv); }
