#include "engine/client.h"

#include <algorithm>
#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "engine/server.h"
#include "log/thread.h"

namespace tally {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

using ResponseDone = std::function<void(Result<wire::Response>)>;

struct Pending {
  std::string frame;  // the encoded request, sent again after a reconnect
  ResponseDone done;
  int attempts = 0;
  // A follow: `done` runs for each batch and the entry stays until the
  // follow ends; `frame` is re-encoded after each batch, so that a resend
  // continues after the last batch delivered.
  bool follow = false;
  bool cancelled = false;
  // A follow's request; nullptr for the rest, which keep only their frame
  // (a Request is large, and every in-flight mutation has a Pending).
  std::unique_ptr<wire::Request> request;
};

// The response a follow ends with after a cancel.
wire::Response follow_end() {
  wire::Response response;
  response.kind = wire::Response::Kind::events;
  response.end = true;
  return response;
}

Status io_status(std::string_view what, const boost::system::error_code& ec) {
  return Status(ErrorCode::io_error, std::string(what) + ": " + ec.message());
}

// Reads from `socket` until `reader` has a whole frame; decodes it.
Result<wire::Response> read_response(tcp::socket& socket, wire::FrameReader& reader) {
  while (true) {
    auto frame = reader.next();
    if (!frame) return frame.status();
    if (!frame->empty()) return wire::decode_response(*frame);
    const std::span<std::byte> space = reader.space();
    boost::system::error_code ec;
    const std::size_t bytes = socket.read_some(asio::buffer(space.data(), space.size()), ec);
    if (ec) return io_status("read", ec);
    reader.commit(bytes);
  }
}

Result<Receipt> to_receipt(Result<wire::Response>& response) {
  if (!response) return response.status();
  if (response->kind == wire::Response::Kind::error) return response->error;
  if (response->kind != wire::Response::Kind::receipt) {
    return Status(ErrorCode::invalid, "the server answered a mutation with something else");
  }
  return std::move(response->receipt);
}

}  // namespace

struct Client::Impl {
  explicit Impl(ClientOptions options_in) : options(std::move(options_in)) {}

  Status connect_locked();
  Status connect_once_locked();
  // Sends `request` with a fresh id (returned); `follow` marks a stream.
  std::uint64_t send(wire::Request request, ResponseDone done, bool follow = false);
  // Queues frame bytes for the writer thread.
  void write_locked(std::string_view frame);
  // Waits until the writer thread is not writing to the socket.
  void wait_writer_idle_locked(std::unique_lock<std::mutex>& guard);
  void reader_main();
  void writer_main();
  // Hands the answers to one read's frames to their handlers.
  Status deliver(std::vector<wire::Response>* responses);
  bool take_batch(Pending& entry, const wire::Response& response, ResponseDone* deliver);
  void on_connection_lost_locked(std::unique_lock<std::mutex>& guard, std::vector<ResponseDone>* failed);
  void fail(std::vector<ResponseDone> failed, const Status& why);

  ClientOptions options;
  std::string host;
  std::uint16_t port = 0;
  asio::io_context io;
  std::mutex mu;
  std::condition_variable cv;
  std::unique_ptr<tcp::socket> socket;  // replaced only while !connected
  bool connected = false;
  bool closing = false;
  std::uint64_t next_id = 1;
  std::map<std::uint64_t, Pending> pending;  // by id: resent in the order sent
  // Frames queued for the writer thread, which sends all that are queued in
  // one write: a pipelining caller costs one syscall per burst.
  std::string out;
  bool writing = false;  // the writer thread is in a write to *socket
  std::condition_variable writer_cv;
  std::thread reader;
  std::thread writer;
};

Status Client::Impl::connect_once_locked() {
  boost::system::error_code ec;
  const auto ip = asio::ip::make_address(host, ec);
  if (ec) return Status(ErrorCode::invalid, "bad address '" + host + "': " + ec.message());
  auto fresh = std::make_unique<tcp::socket>(io);
  if (fresh->connect(tcp::endpoint(ip, port), ec)) return io_status("connect", ec);
  fresh->set_option(tcp::no_delay(true), ec);
  wire::Request hello;
  hello.id = 0;
  hello.kind = wire::Request::Kind::hello;
  hello.token = options.token;
  asio::write(*fresh, asio::buffer(wire::encode_request(hello)), ec);
  if (ec) return io_status("hello", ec);
  wire::FrameReader reader(options.frame_bytes_max);
  auto response = read_response(*fresh, reader);
  if (!response) return response.status();
  if (response->kind == wire::Response::Kind::error) return response->error;
  socket = std::move(fresh);
  connected = true;
  return Status();
}

// Connects with retries and backoff, then sends every unanswered request
// again. A wrong token or version (an `invalid` answer) is not retried.
Status Client::Impl::connect_locked() {
  Status status;
  std::int64_t backoff_ms = options.retry_backoff_ms;
  for (int attempt = 0; attempt <= options.retries_max && !closing; attempt++) {
    status = connect_once_locked();
    if (status.ok() || status.code() == ErrorCode::invalid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms = std::min(backoff_ms * 2, std::max(options.retry_backoff_max_ms, backoff_ms));
  }
  if (closing) return Status(ErrorCode::closed, "the client is closed");
  if (!status.ok()) return status;
  cv.notify_all();
  // Bytes queued for the old connection are gone with it: send every
  // unanswered request again, in the order sent.
  out.clear();
  for (auto& [id, request] : pending) write_locked(request.frame);
  return Status();
}

void Client::Impl::fail(std::vector<ResponseDone> failed, const Status& why) {
  for (ResponseDone& done : failed) done(why);
}

// Drops the connection; reconnects and resends what survives its retries.
void Client::Impl::on_connection_lost_locked(std::unique_lock<std::mutex>& guard,
                                             std::vector<ResponseDone>* failed) {
  connected = false;
  boost::system::error_code ignored;
  // A write in progress fails at once on a shut down socket; the socket is
  // closed (and replaced) only once the writer is out of it.
  socket->shutdown(tcp::socket::shutdown_both, ignored);
  wait_writer_idle_locked(guard);
  socket->close(ignored);
  for (auto entry = pending.begin(); entry != pending.end();) {
    if (entry->second.cancelled) {
      // The new connection will not know the follow; it is over.
      failed->push_back([done = std::move(entry->second.done)](Result<wire::Response>) { done(follow_end()); });
      entry = pending.erase(entry);
    } else if (++entry->second.attempts > options.retries_max) {
      failed->push_back(std::move(entry->second.done));
      entry = pending.erase(entry);
    } else {
      ++entry;
    }
  }
  if (pending.empty() || closing) return;
  const Status reconnected = connect_locked();
  if (reconnected.ok()) return;
  for (auto& [id, request] : pending) failed->push_back(std::move(request.done));
  pending.clear();
}

void Client::Impl::wait_writer_idle_locked(std::unique_lock<std::mutex>& guard) {
  writer_cv.wait(guard, [&] { return !writing; });
}

void Client::Impl::write_locked(std::string_view frame) {
  const bool was_empty = out.empty();
  out += frame;
  if (was_empty) writer_cv.notify_all();
}

void Client::Impl::writer_main() {
  std::unique_lock<std::mutex> guard(mu);
  std::string batch;
  while (true) {
    writer_cv.wait(guard, [&] { return closing || (connected && !out.empty()); });
    if (closing) return;
    batch.clear();
    batch.swap(out);
    writing = true;
    tcp::socket& current = *socket;
    guard.unlock();
    boost::system::error_code ec;
    asio::write(current, asio::buffer(batch), ec);
    // On a failed write the reader thread notices the broken connection and
    // resends every unanswered request.
    if (ec) current.shutdown(tcp::socket::shutdown_both, ec);
    guard.lock();
    writing = false;
    writer_cv.notify_all();
  }
}

std::uint64_t Client::Impl::send(wire::Request request, ResponseDone done, bool follow) {
  std::unique_lock<std::mutex> guard(mu);
  cv.wait(guard, [&] { return pending.size() < options.inflight_max || closing; });
  if (closing) {
    guard.unlock();
    done(Status(ErrorCode::closed, "the client is closed"));
    return 0;
  }
  request.id = next_id++;
  const std::uint64_t id = request.id;
  Pending entry_value{wire::encode_request(request), std::move(done), 0, follow, false, {}};
  if (follow) entry_value.request = std::make_unique<wire::Request>(std::move(request));
  auto [entry, added] = pending.emplace(id, std::move(entry_value));
  TALLY_ASSERT(added);
  if (!connected) {
    // connect_locked() sends every pending request, this one included.
    const Status status = connect_locked();
    if (status.ok()) return id;
    std::vector<ResponseDone> failed;
    for (auto& [pending_id, request_entry] : pending) failed.push_back(std::move(request_entry.done));
    pending.clear();
    guard.unlock();
    fail(std::move(failed), status);
    return id;
  }
  write_locked(entry->second.frame);
  return id;
}

// A follow's batch that does not end it: the entry stays, and its request
// moves past the batch. *deliver is its handler, or empty once cancelled.
bool Client::Impl::take_batch(Pending& entry, const wire::Response& response, ResponseDone* deliver) {
  if (!entry.follow || response.kind != wire::Response::Kind::events || response.end) return false;
  entry.request->from_seq = response.next_seq;
  entry.frame = wire::encode_request(*entry.request);
  entry.attempts = 0;
  if (!entry.cancelled) *deliver = entry.done;
  return true;
}

// Hands each answer to its handler (outside the lock); a follow's batch
// keeps its entry. invalid: an answer to no request.
Status Client::Impl::deliver(std::vector<wire::Response>* responses) {
  std::vector<std::pair<ResponseDone, wire::Response*>> ready;
  Status status;
  {
    std::lock_guard<std::mutex> guard(mu);
    for (wire::Response& response : *responses) {
      auto entry = pending.find(response.id);
      if (entry == pending.end()) {
        status = Status(ErrorCode::invalid, "response to an unknown request id");
        break;
      }
      ResponseDone done;
      if (!take_batch(entry->second, response, &done)) {
        done = std::move(entry->second.done);
        pending.erase(entry);
      }
      if (done) ready.emplace_back(std::move(done), &response);
    }
    cv.notify_all();
  }
  for (auto& [done, response] : ready) done(std::move(*response));
  return status;
}

void Client::Impl::reader_main() {
  std::unique_lock<std::mutex> guard(mu);
  std::vector<wire::Response> responses;
  while (true) {
    cv.wait(guard, [&] { return connected || closing; });
    if (closing) return;
    // The socket is replaced only after this thread marks the connection
    // lost, so reading it without the lock is safe.
    tcp::socket& current = *socket;
    guard.unlock();
    wire::FrameReader reader(options.frame_bytes_max);
    Status lost;
    while (lost.ok()) {
      // The first answer (reading as needed), then every other whole one
      // the same read brought in: delivered together, under one lock.
      responses.clear();
      auto first = read_response(current, reader);
      if (!first) {
        lost = first.status();
        break;
      }
      responses.push_back(std::move(*first));
      while (true) {
        auto frame = reader.next();
        if (!frame || frame->empty()) {
          if (!frame) lost = frame.status();
          break;
        }
        auto response = wire::decode_response(*frame);
        if (!response) {
          lost = response.status();
          break;
        }
        responses.push_back(std::move(*response));
      }
      const Status delivered = deliver(&responses);
      if (lost.ok()) lost = delivered;
    }
    guard.lock();
    if (closing) return;
    std::vector<ResponseDone> failed;
    on_connection_lost_locked(guard, &failed);
    if (!failed.empty()) {
      guard.unlock();
      fail(std::move(failed), Status(ErrorCode::io_error, "connection lost: " + lost.message()));
      guard.lock();
    }
  }
}

Result<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  TALLY_TRY(parse_host_port(impl->options.address, &impl->host, &impl->port));
  {
    std::lock_guard<std::mutex> guard(impl->mu);
    TALLY_TRY(impl->connect_locked());
  }
  // ~Client closes the connection and stops what started if the rest fails.
  std::unique_ptr<Client> client(new Client(std::move(impl)));
  Impl* raw = client->impl_.get();
  auto reader = start_thread("tally-client-rd", [raw] { raw->reader_main(); });
  if (!reader) return reader.status();
  raw->reader = std::move(*reader);
  auto writer = start_thread("tally-client-wr", [raw] { raw->writer_main(); });
  if (!writer) return writer.status();
  raw->writer = std::move(*writer);
  return client;
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() { close(); }

void Client::close() {
  Impl& impl = *impl_;
  std::vector<ResponseDone> failed;
  {
    std::lock_guard<std::mutex> guard(impl.mu);
    if (impl.closing) return;
    impl.closing = true;
    boost::system::error_code ignored;
    if (impl.socket) impl.socket->shutdown(tcp::socket::shutdown_both, ignored);
    impl.cv.notify_all();
    impl.writer_cv.notify_all();
  }
  if (impl.reader.joinable()) impl.reader.join();
  if (impl.writer.joinable()) impl.writer.join();
  {
    std::lock_guard<std::mutex> guard(impl.mu);
    for (auto& [id, request] : impl.pending) failed.push_back(std::move(request.done));
    impl.pending.clear();
    boost::system::error_code ignored;
    if (impl.socket) impl.socket->close(ignored);
  }
  impl.fail(std::move(failed), Status(ErrorCode::closed, "the client is closed"));
}

void Client::submit(Command command, Completion done) {
  wire::Request request;
  request.kind = wire::Request::Kind::mutation;
  request.command = std::move(command);
  impl_->send(std::move(request), [done = std::move(done)](Result<wire::Response> response) {
    done(to_receipt(response));
  });
}

Result<Receipt> Client::execute(Command command) {
  std::promise<Result<Receipt>> answer;
  auto future = answer.get_future();
  submit(std::move(command), [&answer](Result<Receipt> result) { answer.set_value(std::move(result)); });
  return future.get();
}

namespace {

// A blocking read: sends `request`, waits, extracts the answer of `kind`.
template <class T, class Extract>
Result<T> call(const std::function<void(wire::Request, ResponseDone)>& send,
               wire::Request request, wire::Response::Kind kind, Extract extract) {
  std::promise<Result<wire::Response>> answer;
  auto future = answer.get_future();
  send(std::move(request), [&answer](Result<wire::Response> response) { answer.set_value(std::move(response)); });
  Result<wire::Response> response = future.get();
  if (!response) return response.status();
  if (response->kind == wire::Response::Kind::error) return response->error;
  if (response->kind != kind) return Status(ErrorCode::invalid, "unexpected response kind");
  return extract(*response);
}

}  // namespace

Status EventBatch::for_each(const std::function<void(const log::Event&)>& visit) const {
  log::EventDecoder decoder;
  log::Event event;
  for (std::size_t index = 0; index < events_.size(); index++) {
    const Status decoded = decoder.decode(events_[index], &event);
    if (!decoded.ok()) {
      return Status(ErrorCode::corrupt, "event " + std::to_string(first_seq() + index) + ": " + decoded.message());
    }
    visit(event);
  }
  return Status();
}

FollowId Client::follow(std::uint64_t from_seq, BatchHandler on_batch, EndHandler on_end,
                        FollowOptions options) {
  wire::Request request;
  request.kind = wire::Request::Kind::follow;
  request.from_seq = std::max<std::uint64_t>(from_seq, 1);
  request.max_events = options.batch_events_max;
  auto handlers = std::make_shared<std::pair<BatchHandler, EndHandler>>(std::move(on_batch), std::move(on_end));
  return impl_->send(std::move(request), [handlers](Result<wire::Response> response) {
    if (!response) return handlers->second(response.status());
    if (response->kind == wire::Response::Kind::error) return handlers->second(response->error);
    if (response->kind != wire::Response::Kind::events) {
      return handlers->second(Status(ErrorCode::invalid, "the server answered a follow with something else"));
    }
    if (response->end) return handlers->second(Status());
    handlers->first(EventBatch(std::move(response->events), response->next_seq));
  }, true);
}

void Client::cancel_follow(FollowId follow) {
  Impl& impl = *impl_;
  std::lock_guard<std::mutex> guard(impl.mu);
  auto entry = impl.pending.find(follow);
  if (entry == impl.pending.end() || !entry->second.follow || entry->second.cancelled) return;
  entry->second.cancelled = true;
  if (!impl.connected) return;  // the reconnect ends it (on_connection_lost_locked)
  wire::Request cancel;
  cancel.kind = wire::Request::Kind::cancel;
  cancel.id = impl.next_id++;
  cancel.follow_id = follow;
  impl.write_locked(wire::encode_request(cancel));
}

Result<Balance> Client::balance(std::string_view subject, std::string_view item) {
  return read_balance(subject, item, std::nullopt);
}

Result<Balance> Client::balance(std::string_view subject, std::string_view item, AsOf at) {
  return read_balance(subject, item, at);
}

Result<std::vector<ItemBalance>> Client::list(std::string_view subject) {
  return read_list(subject, std::nullopt);
}

Result<std::vector<ItemBalance>> Client::list(std::string_view subject, AsOf at) {
  return read_list(subject, at);
}

Result<Balance> Client::read_balance(std::string_view subject, std::string_view item,
                                     std::optional<AsOf> at) {
  wire::Request request;
  request.kind = wire::Request::Kind::balance;
  request.subject = std::string(subject);
  request.item = std::string(item);
  request.as_of = at;
  return call<Balance>([this](wire::Request r, ResponseDone d) { impl_->send(std::move(r), std::move(d)); },
                       std::move(request), wire::Response::Kind::balance,
                       [](wire::Response& response) { return response.balance; });
}

Result<std::vector<ItemBalance>> Client::read_list(std::string_view subject, std::optional<AsOf> at) {
  wire::Request request;
  request.kind = wire::Request::Kind::list;
  request.subject = std::string(subject);
  request.as_of = at;
  return call<std::vector<ItemBalance>>(
      [this](wire::Request r, ResponseDone d) { impl_->send(std::move(r), std::move(d)); },
      std::move(request), wire::Response::Kind::list,
      [](wire::Response& response) { return std::move(response.items); });
}

Result<HoldView> Client::hold_info(HoldId hold) {
  wire::Request request;
  request.kind = wire::Request::Kind::hold_info;
  request.hold = hold;
  return call<HoldView>([this](wire::Request r, ResponseDone d) { impl_->send(std::move(r), std::move(d)); },
                        std::move(request), wire::Response::Kind::hold_info,
                        [](wire::Response& response) { return std::move(response.hold); });
}

}  // namespace tally
