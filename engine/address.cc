#include "engine/address.h"

#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

#include "log/thread.h"

namespace tally {

Result<std::vector<boost::asio::ip::tcp::endpoint>> resolve_endpoints(const std::string& host,
                                                                      std::uint16_t port) {
  using boost::asio::ip::tcp;
  boost::system::error_code ec;
  const auto ip = boost::asio::ip::make_address(host, ec);
  if (!ec) return std::vector<tcp::endpoint>{tcp::endpoint(ip, port)};
  boost::asio::io_context io;
  tcp::resolver resolver(io);
  const auto results =
      resolver.resolve(host, std::to_string(port), tcp::resolver::numeric_service, ec);
  if (ec) return Status(ErrorCode::io_error, "cannot resolve '" + host + "': " + ec.message());
  std::vector<tcp::endpoint> endpoints;
  for (const auto& result : results) endpoints.push_back(result.endpoint());
  if (endpoints.empty()) {
    return Status(ErrorCode::io_error, "cannot resolve '" + host + "': no address");
  }
  return endpoints;
}

Result<std::vector<boost::asio::ip::tcp::endpoint>> resolve_endpoints_until(
    const std::string& host, std::uint16_t port, std::chrono::steady_clock::time_point deadline,
    ResolveFunction resolve) {
  using Endpoints = std::vector<boost::asio::ip::tcp::endpoint>;
  boost::system::error_code ec;
  (void)boost::asio::ip::make_address(host, ec);
  if (!ec) return resolve_endpoints(host, port);  // an address: nothing to wait for
  // Shared with the resolving thread, which may outlive this call.
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Result<Endpoints>> result;
  };
  auto pending = std::make_shared<Pending>();
  auto thread = start_thread("tally-resolve", [pending, host, port, resolve = std::move(resolve)] {
    auto resolved = resolve(host, port);
    std::lock_guard<std::mutex> guard(pending->mu);
    pending->result.emplace(std::move(resolved));
    pending->cv.notify_all();
  });
  if (!thread) return thread.status();
  thread->detach();
  std::unique_lock<std::mutex> guard(pending->mu);
  if (!pending->cv.wait_until(guard, deadline, [&] { return pending->result.has_value(); })) {
    return Status(ErrorCode::io_error, "cannot resolve '" + host + "': no answer in time");
  }
  return std::move(*pending->result);
}

}  // namespace tally
