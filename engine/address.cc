#include "engine/address.h"

#include <boost/asio/io_context.hpp>

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

}  // namespace tally
