// tally serve: opens a ledger and serves it over the binary protocol and
// HTTP (engine/server.h) until SIGINT or SIGTERM, then shuts down
// gracefully: stop accepting, answer what was accepted, close the log.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/ledger.h"
#include "engine/server.h"
#include "log/thread.h"
#include "tools/cli.h"
#include "tools/ledger_flags.h"

namespace tally::cli {

namespace {

constexpr std::size_t kTokenFileBytesMax = 4096;
constexpr std::int64_t kIoThreadsMax = 256;
constexpr std::int64_t kConnectionsMax = 65536;
// The file descriptors the ledger and the server hold besides their
// connections, with room to spare: segments, the snapshot and history
// stores, the lock, the event loop's, the event feed's reads of the log.
constexpr rlim_t kDescriptorsBesideConnections = 128;

constexpr FlagSpec kServeFlags[] = {
    {"data", "DIR", "the data directory (created when missing)"},
    {"listen", "HOST:PORT", "binary protocol address (default 127.0.0.1:7420)"},
    {"http", "HOST:PORT", "HTTP/JSON address (default 127.0.0.1:7421)"},
    {"durability", "MODE", "sync (default), async or none"},
    {"token-file", "FILE", "require the token in FILE from every client"},
    {"io-threads", "N", "threads serving the connections (default: half the cores, at least 1)",
     IntegerRange{1, kIoThreadsMax}},
    {"connections-max", "N",
     "connections of each protocol served at once (default 256); more are refused",
     IntegerRange{1, kConnectionsMax}},
};

constexpr auto kServeAllFlags = with_ledger_flags(kServeFlags);

constexpr CommandSpec kServeSpec = {
    "serve",
    "Serve a ledger over the binary protocol and HTTP/JSON until SIGINT or SIGTERM.",
    "tally serve --data DIR [--listen 127.0.0.1:7420] [--http 127.0.0.1:7421]\n"
    "                   [--durability M] [--token-file F] [--io-threads N] [--connections-max N]\n"
    "                   [--snapshot-every N] [--snapshot-seconds S] [--snapshot-retain K]\n"
    "                   [--history on|off]\n"
    "                   [--idempotency-window S] [--hold-ttl-max S] [--queue-depth N]\n"
    "                   [--segment-bytes N] [--sync-interval-ms N] [--scrub-seconds S]",
    "Binds both listeners first, then opens DATA: until the log is open,\n"
    "GET /health answers 503 `starting`, GET /metrics the server's own counters\n"
    "with tally_starting 1, and every other request 503 `busy`.\n"
    "Prints `serving binary=HOST:PORT http=HOST:PORT` once it serves the ledger\n"
    "(port 0 picks a free port). A listen address that is not loopback\n"
    "requires --token-file; clients then present the token (HTTP: Authorization:\n"
    "Bearer TOKEN; binary: in the hello). On SIGINT or SIGTERM the server stops\n"
    "accepting, answers every request it has read, closes the log and exits 0\n"
    "(while the log still opens: at once). Over --connections-max HTTP\n"
    "connections, 4 more answer only GET /health and GET /metrics.\n"
    "docs/http-api.md and docs/protocol.md describe the protocols.\n",
    kServeAllFlags,
    0,
};

Result<ServerOptions> server_options(const Args& args) {
  ServerOptions options;
  options.binary_listen = std::string(args.get("listen", "127.0.0.1:7420"));
  options.http_listen = std::string(args.get("http", "127.0.0.1:7421"));
  if (args.has("token-file")) {
    auto token = read_token(args.get("token-file"));
    if (!token) return token.status();
    options.token = std::move(*token);
  }
  auto io_threads = args.integer("io-threads", static_cast<std::int64_t>(options.io_threads));
  if (!io_threads) return io_threads.status();
  options.io_threads = static_cast<std::size_t>(*io_threads);
  auto connections =
      args.integer("connections-max", static_cast<std::int64_t>(options.connections_max));
  if (!connections) return connections.status();
  options.connections_max = static_cast<std::size_t>(*connections);
  return options;
}

// Each connection holds a file descriptor. Out of them for more than the
// writer's retries last (LogWriterOptions::create_retry_max), the ledger
// could not create its next log segment, and would turn read-only. So the soft
// limit on open files is raised, as far as the hard one allows, to what
// connections_max of both protocols, the probes and the ledger need; a
// warning says when the hard limit is lower.
void fit_descriptor_limit(const ServerOptions& options) {
  const rlim_t needed =
      2 * options.connections_max + kProbeConnectionsMax + kDescriptorsBesideConnections;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= needed) return;
  rlimit raised = limit;
  raised.rlim_cur = std::min(limit.rlim_max, needed);  // RLIM_INFINITY is rlim_t's largest
  if (raised.rlim_cur > limit.rlim_cur && ::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
    limit = raised;
  }
  if (limit.rlim_cur >= needed) return;
  std::fprintf(stderr,
               "tally: warning: --connections-max %zu needs about %llu open files, but the "
               "limit is %llu: lower it, or raise the hard limit (LimitNOFILE, ulimit -Hn); "
               "out of them for over 5 s, the ledger turns read-only at its next log segment\n",
               options.connections_max, static_cast<unsigned long long>(needed),
               static_cast<unsigned long long>(limit.rlim_cur));
}

std::string address_of(std::string_view listen, std::uint16_t port) {
  std::string host;
  std::uint16_t ignored = 0;
  if (!parse_host_port(listen, &host, &ignored).ok()) return std::string(listen);
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Ledger::open, cancelled by SIGINT or SIGTERM (blocked in `signals`)
// while it runs: a replay of a long log may take a while, and a server told
// to stop should not finish it first. Sets *signal_number when one came;
// the open may still have succeeded (it came as the open ended).
Result<std::unique_ptr<Ledger>> open_until_signal(LedgerOptions* options, const sigset_t& signals,
                                                   int* signal_number) {
  std::atomic<bool> cancel{false};
  std::atomic<bool> opened{false};
  options->cancel_open = &cancel;
  auto watcher = start_thread("tally-signals", [&] {
    constexpr timespec kSlice{0, 100'000'000};
    while (!opened.load()) {
      const int got = sigtimedwait(&signals, nullptr, &kSlice);
      if (got > 0) {
        *signal_number = got;
        cancel.store(true);
        return;
      }
    }
  });
  if (!watcher) return watcher.status();
  auto ledger = Ledger::open(*options);
  opened.store(true);
  watcher->join();
  options->cancel_open = nullptr;
  return ledger;
}

int run_serve(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("serve", data.status().message());
  Durability durability = Durability::sync;
  if (!parse_durability(args.get("durability", "sync"), &durability)) {
    return usage_error("serve", "--durability must be sync, async or none");
  }
  auto options = server_options(args);
  if (!options) return usage_error("serve", options.status().message());
  fit_descriptor_limit(*options);

  LedgerOptions ledger_options;
  ledger_options.data_dir = std::string(*data);
  ledger_options.durability = durability;
  if (Status tuned = parse_ledger_flags(args, &ledger_options); !tuned.ok()) {
    return usage_error("serve", tuned.message());
  }

  // Block the signals before any thread starts, so every thread inherits the
  // mask and only sigwait() below ever sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Bound before the ledger opens: an address that cannot be bound fails
  // before DATA is created or locked, and while a long log is replayed
  // clients are told the server is starting (and how far the replay is)
  // instead of being refused.
  OpenProgress progress;
  options->starting = &progress;
  ledger_options.open_progress = &progress;
  auto server = Server::bind(*options);
  if (!server) {
    // A bad address or a missing token is the command line's fault.
    if (server.code() == ErrorCode::invalid) return usage_error("serve", server.status().message());
    return failure(server.status());
  }
  int signal_number = 0;
  auto ledger = open_until_signal(&ledger_options, signals, &signal_number);
  const bool cancelled = !ledger && signal_number != 0 && ledger.code() == ErrorCode::closed;
  if (!ledger && !cancelled) return failure(ledger.status());
  if (signal_number == 0) {
    if (Status served = (*server)->serve(ledger->get()); !served.ok()) {
      (*server)->stop();
      ignore_status((*ledger)->close());
      return failure(served);
    }
    std::printf("serving binary=%s http=%s\n",
                address_of(options->binary_listen, (*server)->binary_port()).c_str(),
                address_of(options->http_listen, (*server)->http_port()).c_str());
    std::fflush(stdout);
    sigwait(&signals, &signal_number);
  }
  std::fprintf(stderr, "tally serve: %s: shutting down%s\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM",
               cancelled ? " while the log opened" : "");
  (*server)->stop();
  if (cancelled) return kExitOk;  // nothing was served
  const Status closed = (*ledger)->close();
  if (!closed.ok()) return failure(closed);
  std::printf("stopped\n");
  return kExitOk;
}

}  // namespace

Result<std::string> read_token(std::string_view path_view) {
  const std::string path(path_view);
  const auto cannot_read = [&](int error) {
    return Status(ErrorCode::invalid,
                  "cannot read the token file " + path + ": " + std::strerror(error));
  };
  // Not blocking: a FIFO without a writer reads as empty instead of holding
  // the start for ever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd == -1) return cannot_read(errno);
  struct stat file_stat {};
  int error = ::fstat(fd, &file_stat) == 0 ? 0 : errno;
  if (error == 0 && S_ISDIR(file_stat.st_mode)) error = EISDIR;
  // At most one byte past the limit: a device or a huge file given by
  // mistake is refused without being read whole.
  std::string token(kTokenFileBytesMax + 1, '\0');
  std::size_t got = 0;
  while (error == 0 && got < token.size()) {
    const ssize_t bytes = ::read(fd, token.data() + got, token.size() - got);
    if (bytes > 0) {
      got += static_cast<std::size_t>(bytes);
    } else if (bytes == 0 || errno == EAGAIN) {
      break;
    } else if (errno != EINTR) {
      error = errno;
    }
  }
  ::close(fd);
  if (error != 0) return cannot_read(error);
  if (got > kTokenFileBytesMax) {
    return Status(ErrorCode::invalid, "the token file " + path + " holds more than " +
                                          std::to_string(kTokenFileBytesMax) + " bytes");
  }
  token.resize(got);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  std::size_t start = 0;
  while (start < token.size() && std::isspace(static_cast<unsigned char>(token[start]))) start++;
  token.erase(0, start);
  if (token.empty()) return Status(ErrorCode::invalid, "the token file " + std::string(path) + " is empty");
  // Not refused: mounted secrets are often 0644, readable only inside
  // their container.
  constexpr mode_t kOthers = S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH;
  if ((file_stat.st_mode & kOthers) != 0) {
    std::fprintf(stderr,
                 "tally: warning: other users can read or write the token file %.*s "
                 "(mode %03o); chmod 600 it\n",
                 static_cast<int>(path.size()), path.data(),
                 static_cast<unsigned>(file_stat.st_mode & 0777));
  }
  return token;
}


const CliCommand kServe = {&kServeSpec, run_serve};

}  // namespace tally::cli
