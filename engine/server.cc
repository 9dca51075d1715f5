// The server: listeners, the shared Core, and the binary protocol's
// connections (HTTP is in engine/http.cc).
#include "engine/server.h"

#include <cstdio>
#include <deque>
#include <thread>
#include <vector>

#include "engine/server_impl.h"
#include "engine/wire.h"

namespace tally {

namespace asio = boost::asio;
using server_detail::Core;
using server_detail::Session;
using server_detail::tcp;

namespace server_detail {

std::int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Core::Core(Ledger* ledger, ServerOptions options)
    : ledger_(ledger), options_(std::move(options)), feed_(ledger), read_pool_(options_.read_threads) {}

void Core::log(std::string_view message) const {
  if (options_.log) return options_.log(message);
  std::fprintf(stderr, "tally serve: %.*s\n", static_cast<int>(message.size()), message.data());
}

bool Core::token_ok(std::string_view presented) const {
  return options_.token.empty() || constant_time_equal(presented, options_.token);
}

bool Core::add_session(const std::shared_ptr<Session>& session, std::uint64_t* id) {
  std::lock_guard<std::mutex> guard(mu_);
  if (stopping() || sessions_.size() >= options_.connections_max) return false;
  *id = next_session_id_++;
  sessions_.emplace(*id, session);
  return true;
}

void Core::remove_session(std::uint64_t id) {
  std::lock_guard<std::mutex> guard(mu_);
  sessions_.erase(id);
  if (sessions_.empty()) sessions_cv_.notify_all();
}

void Core::submit(Command command, std::function<void(Result<Receipt>)> done) {
  const Metrics::Op op = Metrics::op_of(command);
  metrics_.inflight_add(1);
  const std::int64_t start_ns = steady_now_ns();
  ledger_->submit(std::move(command),
                  [this, op, start_ns, done = std::move(done)](Result<Receipt> result) mutable {
                    metrics_.record(op, result ? Metrics::outcome_slot(result->outcome)
                                               : Metrics::error_slot(result.code()),
                                    steady_now_ns() - start_ns);
                    {
                      // `done` may hold the last reference to its session:
                      // destroy it here, while Server::stop() still waits
                      // for this request, not later on a ledger thread.
                      auto finish = std::move(done);
                      finish(std::move(result));
                    }
                    metrics_.inflight_add(-1);
                  });
}

void Core::for_each_session(void (Session::*method)()) {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> guard(mu_);
    for (const auto& [id, weak] : sessions_) {
      if (auto session = weak.lock()) live.push_back(std::move(session));
    }
  }
  // Session methods run on their strands; the session's executor is not
  // reachable through the base class, so each implementation posts itself.
  for (const auto& session : live) ((*session).*method)();
}

void Core::begin_stop() {
  stopping_.store(true, std::memory_order_release);
  // Long polls and follow streams waiting for a commit end now; their
  // sessions answer and close like the others.
  feed_.stop();
  for_each_session(&Session::begin_shutdown);
}

void Core::close_sessions_now() { for_each_session(&Session::close_now); }

bool Core::wait_sessions(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> guard(mu_);
  return sessions_cv_.wait_until(guard, deadline, [&] { return sessions_.empty(); });
}

namespace {

// One binary-protocol connection: reads frames, submits them, writes the
// responses in completion order (so they may overtake each other). At most
// inflight_per_connection_max requests are in flight; beyond that it stops
// reading, which is the client's backpressure.
class BinarySession final : public Session, public std::enable_shared_from_this<BinarySession> {
 public:
  BinarySession(Core& core, tcp::socket socket)
      : core_(core), socket_(std::move(socket)), idle_timer_(socket_.get_executor()),
        authenticated_(core.options().token.empty()) {}
  ~BinarySession() override {
    if (id_ != 0) core_.remove_session(id_);
    core_.metrics().connection_closed(Metrics::Protocol::binary);
  }

  void start(std::uint64_t id) {
    id_ = id;
    touch();
    arm_idle_timer();
    read_head();
  }

  void begin_shutdown() override {
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      // Makes a pending read end (EOF) without cancelling pending writes.
      boost::system::error_code ignored;
      self->socket_.shutdown(tcp::socket::shutdown_receive, ignored);
      self->maybe_finish();
    });
  }

  void close_now() override {
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->close(); });
  }

 private:
  std::byte* frame_bytes() { return reinterpret_cast<std::byte*>(frame_.data()); }
  void touch() { last_activity_ns_ = steady_now_ns(); }

  void read_head() {
    if (closed_ || stopping_ || read_closed_) return;
    if (inflight_ >= core_.options().inflight_per_connection_max) return;  // resumes in answer()
    reading_ = true;
    frame_.assign(wire::kFirstBytes / sizeof(std::uint64_t), 0);
    asio::async_read(socket_, asio::buffer(frame_bytes(), wire::kFirstBytes),
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       self->on_head(ec);
                     });
  }

  void on_head(boost::system::error_code ec) {
    if (ec) return on_read_error(ec);
    touch();
    auto table = wire::table_bytes(std::span(frame_bytes(), wire::kFirstBytes));
    if (!table) return malformed(table.status().message());
    frame_.resize(*table / sizeof(std::uint64_t));
    read_more(wire::kFirstBytes, *table, [self = shared_from_this()] { self->on_table(); });
  }

  void on_table() {
    const std::size_t table = frame_.size() * sizeof(std::uint64_t);
    auto total = wire::frame_bytes(std::span(frame_bytes(), table), core_.options().frame_bytes_max);
    if (!total) return malformed(total.status().message());
    frame_.resize(*total / sizeof(std::uint64_t));
    read_more(table, *total, [self = shared_from_this()] { self->on_frame(); });
  }

  // Reads bytes [from, to) of the frame, then calls `next`.
  template <class Next>
  void read_more(std::size_t from, std::size_t to, Next next) {
    if (from == to) return next();
    asio::async_read(socket_, asio::buffer(frame_bytes() + from, to - from),
                     [self = shared_from_this(), next](boost::system::error_code ec, std::size_t) {
                       if (ec) return self->on_read_error(ec);
                       self->touch();
                       next();
                     });
  }

  void on_read_error(boost::system::error_code ec) {
    reading_ = false;
    read_closed_ = true;
    if (ec != asio::error::eof && ec != asio::error::operation_aborted && !stopping_) {
      core_.log("binary connection: read failed: " + ec.message());
    }
    maybe_finish();
  }

  void malformed(std::string_view reason) {
    core_.metrics().malformed();
    core_.log("binary connection: closing: " + std::string(reason));
    close();
  }

  void on_frame() {
    reading_ = false;
    auto request = wire::decode_request(frame_);
    if (!request) return malformed(request.status().message());
    if (!authenticated_ && request->kind != wire::Request::Kind::hello) {
      return refuse(request->id, "the first request must be a hello with the token");
    }
    dispatch(std::move(*request));
    read_head();
  }

  // Answers unauthorized and closes once the answer is written.
  void refuse(std::uint64_t id, std::string message) {
    wire::Response response;
    response.id = id;
    response.kind = wire::Response::Kind::error;
    response.unauthorized = true;
    response.error = Status(ErrorCode::invalid, std::move(message));
    read_closed_ = true;
    send(wire::encode_response(response));
  }

  void dispatch(wire::Request request) {
    using Kind = wire::Request::Kind;
    if (request.kind == Kind::hello) return hello(request);
    inflight_++;
    auto self = shared_from_this();
    const std::uint64_t id = request.id;
    switch (request.kind) {
      case Kind::mutation:
        core_.submit(std::move(request.command), [self, id](Result<Receipt> result) {
          self->answer_later(id, std::move(result));
        });
        return;
      case Kind::balance:
        core_.read<Balance>(
            Metrics::Op::balance,
            [this, subject = std::move(request.subject), item = std::move(request.item)] {
              return core_.ledger().balance(subject, item);
            },
            [self, id](Result<Balance> result) { self->answer_later(id, std::move(result)); });
        return;
      case Kind::list:
        core_.read<std::vector<ItemBalance>>(
            Metrics::Op::list,
            [this, subject = std::move(request.subject)] { return core_.ledger().list(subject); },
            [self, id](Result<std::vector<ItemBalance>> result) {
              self->answer_later(id, std::move(result));
            });
        return;
      case Kind::hold_info:
        core_.read<HoldView>(
            Metrics::Op::hold_info, [this, hold = request.hold] { return core_.ledger().hold_info(hold); },
            [self, id](Result<HoldView> result) { self->answer_later(id, std::move(result)); });
        return;
      case Kind::hello: break;
    }
    TALLY_ASSERT(false);
  }

  void hello(const wire::Request& request) {
    if (!core_.token_ok(request.token)) {
      core_.log("binary connection: closing: wrong token");
      return refuse(request.id, "wrong token");
    }
    wire::Response response;
    response.id = request.id;
    if (request.version != wire::kProtocolVersion) {
      response.kind = wire::Response::Kind::error;
      response.error = Status(ErrorCode::invalid, "protocol version " +
                                                      std::to_string(request.version) +
                                                      " is not supported");
      read_closed_ = true;
    } else {
      authenticated_ = true;
      response.kind = wire::Response::Kind::hello;
    }
    send(wire::encode_response(response));
  }

  template <class T>
  void answer_later(std::uint64_t id, Result<T> result) {
    // Called on a ledger or read-pool thread: hop onto the strand.
    asio::post(socket_.get_executor(),
               [self = shared_from_this(), id, result = std::move(result)]() mutable {
                 self->answer(id, std::move(result));
               });
  }

  template <class T>
  void answer(std::uint64_t id, Result<T> result) {
    TALLY_ASSERT(inflight_ > 0);
    inflight_--;
    wire::Response response;
    response.id = id;
    if (!result) {
      response.kind = wire::Response::Kind::error;
      response.error = result.status();
    } else if constexpr (std::is_same_v<T, Receipt>) {
      response.kind = wire::Response::Kind::receipt;
      response.receipt = std::move(*result);
    } else if constexpr (std::is_same_v<T, Balance>) {
      response.kind = wire::Response::Kind::balance;
      response.balance = *result;
    } else if constexpr (std::is_same_v<T, HoldView>) {
      response.kind = wire::Response::Kind::hold_info;
      response.hold = std::move(*result);
    } else {
      response.kind = wire::Response::Kind::list;
      response.items = std::move(*result);
    }
    send(wire::encode_response(response));
    if (!reading_) read_head();
  }

  void send(std::string bytes) {
    if (closed_) return;
    writes_.push_back(std::move(bytes));
    if (!writing_) write_next();
  }

  // Sends every answer queued so far in one gathered write: a pipelining
  // client then costs one syscall per batch of answers, not per answer.
  void write_next() {
    writing_ = true;
    gather_.clear();
    for (const std::string& bytes : writes_) gather_.push_back(asio::buffer(bytes));
    asio::async_write(socket_, gather_,
                      [self = shared_from_this(), count = writes_.size()](
                          boost::system::error_code ec, std::size_t) { self->on_written(ec, count); });
  }

  void on_written(boost::system::error_code ec, std::size_t count) {
    writing_ = false;
    writes_.erase(writes_.begin(), writes_.begin() + static_cast<std::ptrdiff_t>(count));
    if (ec) {
      if (!closed_) core_.log("binary connection: write failed: " + ec.message());
      return close();
    }
    touch();
    if (!writes_.empty()) return write_next();
    maybe_finish();
  }

  // After the peer stopped sending (or the server is stopping): close once
  // every request read has been answered and written.
  void maybe_finish() {
    if (closed_) return;
    if (!read_closed_ && !stopping_) return;
    if (reading_ && !read_closed_) return;  // the shutdown's EOF is on its way
    if (inflight_ > 0 || writing_ || !writes_.empty()) return;
    close();
  }

  void arm_idle_timer() {
    idle_timer_.expires_after(std::chrono::milliseconds(core_.options().idle_timeout_ms));
    idle_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->closed_) return;
      const std::int64_t idle_ns = steady_now_ns() - self->last_activity_ns_;
      const bool busy = self->inflight_ > 0 || self->writing_;
      if (!busy && idle_ns >= core_idle_ns(self->core_)) {
        self->core_.log("binary connection: closing: idle timeout");
        return self->close();
      }
      self->arm_idle_timer();
    });
  }

  static std::int64_t core_idle_ns(const Core& core) {
    return core.options().idle_timeout_ms * 1'000'000;
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    idle_timer_.cancel();
  }

  Core& core_;
  tcp::socket socket_;
  asio::steady_timer idle_timer_;
  std::uint64_t id_ = 0;
  bool authenticated_;
  wire::FrameWords frame_;
  std::deque<std::string> writes_;  // bounded by inflight_per_connection_max + 1
  std::vector<asio::const_buffer> gather_;  // the buffers of the write in progress
  std::size_t inflight_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool read_closed_ = false;
  bool stopping_ = false;
  bool closed_ = false;
  std::int64_t last_activity_ns_ = 0;
};

}  // namespace

void start_binary_session(Core& core, tcp::socket socket) {
  start_session<BinarySession>(core, std::move(socket), Metrics::Protocol::binary);
}

}  // namespace server_detail

// ---- listeners and the Server ----------------------------------------------

Status parse_host_port(std::string_view text, std::string* host, std::uint16_t* port) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Status(ErrorCode::invalid, "expected HOST:PORT, got '" + std::string(text) + "'");
  }
  std::string_view host_part = text.substr(0, colon);
  if (host_part.size() >= 2 && host_part.front() == '[' && host_part.back() == ']') {
    host_part = host_part.substr(1, host_part.size() - 2);
  }
  const std::string_view port_part = text.substr(colon + 1);
  unsigned value = 0;
  if (port_part.empty() || port_part.size() > 5) {
    return Status(ErrorCode::invalid, "bad port in '" + std::string(text) + "'");
  }
  for (const char c : port_part) {
    if (c < '0' || c > '9') return Status(ErrorCode::invalid, "bad port in '" + std::string(text) + "'");
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535) return Status(ErrorCode::invalid, "bad port in '" + std::string(text) + "'");
  *host = std::string(host_part);
  *port = static_cast<std::uint16_t>(value);
  return Status();
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Every byte of `a` is compared, so the time depends on the lengths only.
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (std::size_t index = 0; index < a.size(); index++) {
    const unsigned char other = b.empty() ? 0 : static_cast<unsigned char>(b[index % b.size()]);
    diff |= static_cast<unsigned char>(a[index]) ^ other;
  }
  return diff == 0;
}

namespace {

using StartSession = void (*)(Core&, tcp::socket);

class Listener {
 public:
  Listener(asio::io_context& io, Core& core, StartSession start_session)
      : io_(io), core_(core), acceptor_(asio::make_strand(io)), start_session_(start_session) {}

  Status open(std::string_view address) {
    std::string host;
    std::uint16_t port = 0;
    TALLY_TRY(parse_host_port(address, &host, &port));
    boost::system::error_code ec;
    const auto ip = asio::ip::make_address(host, ec);
    if (ec) return Status(ErrorCode::invalid, "bad address '" + host + "': " + ec.message());
    if (!ip.is_loopback() && core_.options().token.empty()) {
      return Status(ErrorCode::invalid, "listening on " + std::string(address) +
                                            " (not loopback) requires a token (--token-file)");
    }
    const tcp::endpoint endpoint(ip, port);
    if (acceptor_.open(endpoint.protocol(), ec) ||
        acceptor_.set_option(tcp::acceptor::reuse_address(true), ec) ||
        acceptor_.bind(endpoint, ec) || acceptor_.listen(asio::socket_base::max_listen_connections, ec)) {
      return Status(ErrorCode::io_error, "cannot listen on " + std::string(address) + ": " + ec.message());
    }
    port_ = acceptor_.local_endpoint(ec).port();
    return Status();
  }

  std::uint16_t port() const { return port_; }

  void accept() {
    acceptor_.async_accept(asio::make_strand(io_), [this](boost::system::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (ec) {
        core_.log("accept failed: " + ec.message());
      } else {
        socket.set_option(tcp::no_delay(true), ec);
        start_session_(core_, std::move(socket));
      }
      accept();
    });
  }

  void close() {
    asio::post(acceptor_.get_executor(), [this] {
      boost::system::error_code ignored;
      acceptor_.close(ignored);
    });
  }

 private:
  asio::io_context& io_;
  Core& core_;
  tcp::acceptor acceptor_;
  StartSession start_session_;
  std::uint16_t port_ = 0;
};

}  // namespace

struct Server::Impl {
  Impl(Ledger* ledger, ServerOptions options)
      : core(ledger, std::move(options)), io(static_cast<int>(core.options().io_threads)),
        work(asio::make_work_guard(io)) {}

  // Declared first, destroyed last: sessions reach it until the io_context
  // (below) is gone.
  Core core;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::vector<std::unique_ptr<Listener>> listeners;
  std::uint16_t binary_port = 0;
  std::uint16_t http_port = 0;
  std::vector<std::thread> threads;
  bool stopped = false;
};

Result<std::unique_ptr<Server>> Server::start(Ledger* ledger, ServerOptions options) {
  TALLY_ASSERT(ledger != nullptr);
  if (options.io_threads == 0 || options.read_threads == 0 || options.connections_max == 0 ||
      options.inflight_per_connection_max == 0 || options.idle_timeout_ms <= 0) {
    return Status(ErrorCode::invalid, "server limits must be positive");
  }
  if (options.token.size() > wire::kTokenBytesMax) {
    return Status(ErrorCode::invalid, "the token is longer than " +
                                          std::to_string(wire::kTokenBytesMax) + " bytes");
  }
  auto impl = std::make_unique<Impl>(ledger, std::move(options));
  const ServerOptions& opts = impl->core.options();
  if (!opts.binary_listen.empty()) {
    auto listener = std::make_unique<Listener>(impl->io, impl->core, &server_detail::start_binary_session);
    TALLY_TRY(listener->open(opts.binary_listen));
    impl->binary_port = listener->port();
    impl->listeners.push_back(std::move(listener));
  }
  if (!opts.http_listen.empty()) {
    auto listener = std::make_unique<Listener>(impl->io, impl->core, &server_detail::start_http_session);
    TALLY_TRY(listener->open(opts.http_listen));
    impl->http_port = listener->port();
    impl->listeners.push_back(std::move(listener));
  }
  for (auto& listener : impl->listeners) listener->accept();
  for (std::size_t index = 0; index < opts.io_threads; index++) {
    impl->threads.emplace_back([io = &impl->io] { io->run(); });
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(); }

std::uint16_t Server::binary_port() const { return impl_->binary_port; }
std::uint16_t Server::http_port() const { return impl_->http_port; }

void Server::stop() {
  Impl& impl = *impl_;
  if (impl.stopped) return;
  impl.stopped = true;
  for (auto& listener : impl.listeners) listener->close();
  impl.core.begin_stop();
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(impl.core.options().shutdown_grace_ms);
  if (!impl.core.wait_sessions(deadline)) {
    impl.core.log("shutdown: grace period over; closing the remaining connections");
    impl.core.close_sessions_now();
  }
  // Requests already in the Ledger complete there (and are durable) even if
  // their connection is gone; wait for their completions so that none runs
  // against a destroyed io_context.
  while (impl.core.metrics().inflight() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl.work.reset();
  impl.io.stop();
  for (auto& thread : impl.threads) thread.join();
  impl.core.join_reads();
}

}  // namespace tally
