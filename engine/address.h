// What a "host:port" address names (server.h's parse_host_port splits it):
// the endpoints the server listens on and the client connects to.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "log/status.h"

namespace tally {

// The endpoints of `host` at `port`: the address itself when host is an IP
// address, else what the system's resolver (getaddrinfo) gives for the name,
// in its order. io_error when the name does not resolve (which may pass: a
// client retries it). Blocks while the resolver does.
Result<std::vector<boost::asio::ip::tcp::endpoint>> resolve_endpoints(const std::string& host,
                                                                      std::uint16_t port);

// resolve_endpoints, waiting for a name's resolution until `deadline` at
// most: the system's resolver has timeouts of its own (seconds per name
// server), longer than a client's attempt to connect. The resolution runs
// on a thread of its own; one that outlives the deadline (io_error, "no
// answer") finishes there and is dropped. `resolve` stands in for
// resolve_endpoints (tests).
using ResolveFunction = std::function<Result<std::vector<boost::asio::ip::tcp::endpoint>>(
    const std::string& host, std::uint16_t port)>;
Result<std::vector<boost::asio::ip::tcp::endpoint>> resolve_endpoints_until(
    const std::string& host, std::uint16_t port, std::chrono::steady_clock::time_point deadline,
    ResolveFunction resolve = resolve_endpoints);

}  // namespace tally
