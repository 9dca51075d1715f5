// start_thread: a std::thread whose failure to start is a Status.
//
// std::thread reports that it could not start a thread (EAGAIN: the process
// or its cgroup is out of threads, or out of memory) by throwing
// std::system_error, and no exception crosses tally's API. Every thread the
// library starts goes through here, so that opening a ledger, a client or a
// server on a starved machine returns an io_error instead of terminating.
#pragma once

#include <pthread.h>

#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "log/status.h"

namespace tally {

// Runs body() on a new thread named `name` (a string literal of at most 15
// characters, the kernel's limit).
template <class Body>
Result<std::thread> start_thread(const char* name, Body body) {
  try {
    return std::thread([name, body = std::move(body)]() mutable {
      pthread_setname_np(pthread_self(), name);
      body();
    });
  } catch (const std::system_error& error) {
    return Status(ErrorCode::io_error,
                  std::string("starting thread ") + name + ": " + error.what());
  }
}

}  // namespace tally
