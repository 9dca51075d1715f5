// tally: the command-line tool. Everything but the entry point lives in the
// tools library (tools/cli.cc), so tests can link it.
#include "tools/cli.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

namespace {

// A reader of the output that went away (`tally log | head -1`) stops the
// command at once, as SIGPIPE's default action would, but with the exit
// code of an output that could not be written, and nothing to say: the
// reader chose to stop. _exit() is safe in a handler; what the command
// wrote to a ledger is as durable as after any other sudden end. Sockets
// are written with MSG_NOSIGNAL and raise no SIGPIPE.
extern "C" void on_broken_pipe(int) { ::_exit(tally::cli::kExitFailed); }

// A standard stream the caller closed (`tally apply ... >&-`) would be the
// descriptor of the next file opened, a ledger's LOCK say, and the output
// would go there. Each one closed gets /dev/null, opened for reading only,
// so that writing to it still fails as writing to a closed one does.
void hold_standard_descriptors() {
  for (int fd = 0; fd <= 2; fd++) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    // The lowest free descriptor is fd itself: the ones below it are open.
    if (::open("/dev/null", O_RDONLY) != fd) return;  // no /dev/null: as before
  }
}

}  // namespace

int main(int argc, char** argv) {
  hold_standard_descriptors();
  // A write past a file size limit (ulimit -f) fails with EFBIG, reported
  // as any other I/O error, instead of killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  // Only in place of the default: a parent that ignores SIGPIPE (systemd
  // does, for services) keeps a server whose log's reader went away
  // serving, its writes to that log failing.
  struct sigaction inherited {};
  if (::sigaction(SIGPIPE, nullptr, &inherited) == 0 && inherited.sa_handler == SIG_DFL) {
    std::signal(SIGPIPE, on_broken_pipe);
  }
  return tally::cli::run_cli(argc, argv);
}
