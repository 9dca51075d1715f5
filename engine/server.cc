// The server: listeners, the shared Core, and the binary protocol's
// connections (HTTP is in engine/http.cc).
#include "engine/server.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "engine/address.h"
#include "engine/clock.h"
#include "engine/server_impl.h"
#include "engine/wire.h"
#include "log/text.h"
#include "log/thread.h"

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

std::optional<std::string> AcceptNotes::failed(std::int64_t now_ns, const std::string& why,
                                               std::chrono::milliseconds retry) {
  if (said_ns_ && now_ns - *said_ns_ < kIntervalNs) {
    unsaid_++;
    return std::nullopt;
  }
  std::string line = "accept failed: " + why + " (trying again every " +
                     std::to_string(retry.count()) + " ms; said once a minute at most";
  if (unsaid_ > 0) {
    line += "; ";
    line += std::to_string(unsaid_);
    line += " more failed since the last such line";
  }
  line += ")";
  failing_ = true;
  said_ns_ = now_ns;
  unsaid_ = 0;
  return line;
}

bool AcceptNotes::accepted() { return std::exchange(failing_, false); }

Core::Core(ServerOptions options)
    : options_(std::move(options)),
      read_pool_(options_.read_threads),
      point_in_time_pool_(options_.read_threads) {}

void Core::serve(Ledger* ledger) {
  TALLY_ASSERT(ledger != nullptr && !serving() && !stopping());
  feed_.emplace(ledger);
  ledger_.store(ledger, std::memory_order_release);
}

Status Core::starting() {
  return Status(ErrorCode::busy, "the server is starting: its log is being opened; retry");
}

std::string peer_of(const tcp::endpoint& peer) {
  const std::string host = peer.address().to_string();
  return (peer.address().is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(peer.port());
}

// TCP keepalive on an accepted connection: probes after 60 s without a
// byte either way, every 10 s, 6 unanswered ones end it (about 2 minutes).
// A connection the idle timeout leaves open (an open follow, a long poll)
// whose peer vanished without a FIN (its host crashed, a NAT forgot it)
// then ends with a read error and frees its place, instead of holding one
// of the connections_max for good.
void keep_alive(tcp::socket& socket) {
  // A failure leaves the connection as it was without keepalive.
  const auto set = [&](int level, int name, int value) {
    (void)::setsockopt(socket.native_handle(), level, name, &value, sizeof value);
  };
  set(SOL_SOCKET, SO_KEEPALIVE, 1);
  set(IPPROTO_TCP, TCP_KEEPIDLE, 60);
  set(IPPROTO_TCP, TCP_KEEPINTVL, 10);
  set(IPPROTO_TCP, TCP_KEEPCNT, 6);
}

void close_abortively(tcp::socket& socket) {
  boost::system::error_code ignored;
  socket.set_option(asio::socket_base::linger(true, 0), ignored);
  socket.close(ignored);
}

std::int64_t unsent_bytes(tcp::socket& socket) {
  int unsent = 0;
  if (::ioctl(socket.native_handle(), SIOCOUTQ, &unsent) != 0) return -1;
  return unsent;
}

DrainWatch::Seen DrainWatch::look(std::int64_t unsent, std::int64_t now_ns,
                                  std::int64_t written_ns) {
  const bool compares = unsent_ >= 0 && looked_ns_ >= written_ns;
  const std::int64_t before = unsent_;
  unsent_ = unsent;
  looked_ns_ = now_ns;
  if (unsent < 0) return Seen::unknown;
  if (unsent == 0) return Seen::empty;
  if (!compares) return Seen::first;
  return unsent < before ? Seen::took : Seen::none;
}

std::int64_t drain_probe_ns(std::int64_t idle_ns) {
  constexpr std::int64_t kDrainProbeNs = 10'000'000'000;
  return std::min(kDrainProbeNs, idle_ns);
}

std::int64_t look_at_write(DrainWatch& drain, std::int64_t unsent, std::int64_t now_ns,
                           std::int64_t idle_ns, std::int64_t* moved_ns) {
  const DrainWatch::Seen seen = drain.look(unsent, now_ns, *moved_ns);
  // Taken, or all taken: the write's next piece has room, or soon will.
  if (seen == DrainWatch::Seen::took || seen == DrainWatch::Seen::empty) *moved_ns = now_ns;
  const std::int64_t left_ns = idle_ns - (now_ns - *moved_ns);
  // A first look, often made just before the deadline, compares with none:
  // the next one, a probe later, does.
  if (seen == DrainWatch::Seen::first) return std::max(left_ns, drain_probe_ns(idle_ns));
  return std::max<std::int64_t>(left_ns, 0);
}

std::int64_t look_when_idle(DrainWatch& drain, std::int64_t unsent, std::int64_t now_ns,
                            std::int64_t idle_ns, std::int64_t* active_ns) {
  const std::int64_t left_ns = idle_ns - (now_ns - *active_ns);
  if (left_ns > 0) return left_ns;
  switch (drain.look(unsent, now_ns, *active_ns)) {
    case DrainWatch::Seen::took:
      *active_ns = now_ns;  // the look's time: the next look compares
      return idle_ns;
    case DrainWatch::Seen::first:
      return drain_probe_ns(idle_ns);
    case DrainWatch::Seen::none:
      return -1;
    case DrainWatch::Seen::unknown:
    case DrainWatch::Seen::empty:
      break;
  }
  return 0;
}

std::string stuck_reason(std::string_view what, std::int64_t idle_ms) {
  return "closing: no answer bytes " + std::string(what) + " for " + std::to_string(idle_ms) +
         " ms (the peer reads none)";
}

void Core::log_connection(std::string_view protocol, std::string_view peer,
                          std::string_view what) {
  static constexpr std::int64_t kMinuteNs = 60'000'000'000;
  std::lock_guard<std::mutex> guard(log_mu_);
  const std::int64_t now_ns = steady_now_ns();
  if (connection_minute_ns_ == 0 || now_ns - connection_minute_ns_ >= kMinuteNs) {
    if (connection_lines_left_out_ > 0) {
      log("connection lines: " + std::to_string(connection_lines_left_out_) +
          " more were left out after the limit of " + std::to_string(kConnectionLinesPerMinute) +
          " a minute");
    }
    connection_minute_ns_ = now_ns;
    connection_lines_ = 0;
    connection_lines_left_out_ = 0;
  }
  if (connection_lines_ >= kConnectionLinesPerMinute) {
    connection_lines_left_out_++;
    return;
  }
  std::string line = std::string(protocol) + " connection: ";
  append_escaped(&line, what.substr(0, kConnectionNoteBytesMax), '\\');
  if (what.size() > kConnectionNoteBytesMax) {
    line += "... (" + std::to_string(what.size()) + " bytes)";
  }
  log(line + " (peer " + std::string(peer) + ")");
  if (++connection_lines_ == kConnectionLinesPerMinute) {
    log("connection lines: " + std::to_string(kConnectionLinesPerMinute) +
        " this minute, the most logged; the rest of this minute's are left out"
        " (the metrics still count them)");
  }
}

void Core::log(std::string_view message) const {
  if (options_.log) return options_.log(message);
  std::fprintf(stderr, "tally serve: %.*s\n", static_cast<int>(message.size()), message.data());
}

bool Core::token_ok(std::string_view presented) const {
  return options_.token.empty() || constant_time_equal(presented, options_.token);
}

Core::Admission Core::add_session(const std::shared_ptr<Session>& session,
                                  Metrics::Protocol protocol, std::uint64_t* id) {
  std::string refused_line;
  // Closed outside the lock: its last reference may go with it, and a
  // session's destructor removes it (remove_session()).
  std::shared_ptr<Session> evicted;
  Admission admission = Admission::refused;
  {
    std::lock_guard<std::mutex> guard(mu_);
    if (stopping()) {
      metrics_.connection_rejected();
      return Admission::refused;
    }
    std::size_t& open = open_[static_cast<std::size_t>(protocol)];
    // Over the probes' places too, the oldest probe that has sent no
    // request makes room: connections that only hold a place must not keep
    // a supervisor's check out for the probes' timeout.
    if (open < options_.connections_max) {
      open++;
      admission = Admission::served;
    } else if (protocol == Metrics::Protocol::http &&
               (probes_open_ < kProbeConnectionsMax || (evicted = idle_probe_locked()))) {
      probes_open_++;
      admission = Admission::probe;
      // The probe closed to make room is refused in the newcomer's stead.
      if (evicted) refused_line = count_refused_locked(protocol, true);
    }
    if (admission != Admission::refused) {
      *id = next_session_id_++;
      sessions_.emplace(*id, Registered{session, protocol, admission == Admission::probe});
    } else {
      refused_line = count_refused_locked(protocol);
    }
  }
  if (evicted) evicted->close_now();
  if (!refused_line.empty()) log(refused_line);
  return admission;
}

std::shared_ptr<Session> Core::idle_probe_locked() {
  Registered* oldest = nullptr;
  std::uint64_t oldest_id = 0;
  for (auto& [id, registered] : sessions_) {
    if (!registered.probe || !registered.idle || (oldest != nullptr && id > oldest_id)) continue;
    if (registered.session.expired()) continue;
    oldest = &registered;
    oldest_id = id;
  }
  if (oldest == nullptr) return nullptr;
  oldest->idle = false;
  return oldest->session.lock();
}

void Core::probe_asked(std::uint64_t id) {
  std::lock_guard<std::mutex> guard(mu_);
  const auto found = sessions_.find(id);
  if (found != sessions_.end()) found->second.idle = false;
}

void Core::refuse_probe() {
  std::string refused_line;
  {
    std::lock_guard<std::mutex> guard(mu_);
    refused_line = count_refused_locked(Metrics::Protocol::http);
  }
  if (!refused_line.empty()) log(refused_line);
}

std::string Core::count_refused_locked(Metrics::Protocol protocol, bool probe_admitted) {
  metrics_.connection_rejected();
  // Said once a minute at most while it lasts: a flood must not flood.
  // Each protocol's on its own: a line names the protocol and counts its
  // refusals only.
  std::uint64_t& refused = refused_[static_cast<std::size_t>(protocol)];
  std::int64_t& noted_ns = refused_noted_ns_[static_cast<std::size_t>(protocol)];
  refused++;
  const std::int64_t now_ns = steady_now_ns();
  if (noted_ns != 0 && now_ns - noted_ns < kRefusedNoteNs) return {};
  const bool http = protocol == Metrics::Protocol::http;
  std::string line = std::string("refusing connections over connections_max (") +
                     std::to_string(options_.connections_max) + " " +
                     (http ? "HTTP" : "binary") + " connections); " + std::to_string(refused) +
                     " refused since the last such line";
  if (http && (probe_admitted || probes_open_ < kProbeConnectionsMax)) {
    line += "; GET /health and GET /metrics are still answered";
  }
  noted_ns = now_ns;
  refused = 0;
  return line;
}

void Core::remove_session(std::uint64_t id) {
  std::lock_guard<std::mutex> guard(mu_);
  const auto found = sessions_.find(id);
  if (found == sessions_.end()) return;
  if (found->second.probe) {
    probes_open_--;
  } else {
    open_[static_cast<std::size_t>(found->second.protocol)]--;
  }
  sessions_.erase(found);
  if (sessions_.empty()) sessions_cv_.notify_all();
}

void Core::submit(Command command, std::function<void(Result<Receipt>)> done) {
  const Metrics::Op op = Metrics::op_of(command);
  ledger().submit(std::move(command), track(op, std::move(done)));
}

void Core::balance(std::string subject, std::string item, std::optional<AsOf> at,
                   std::function<void(Result<Balance>)> done) {
  if (at) {
    return read<Balance>(
        Metrics::Op::balance,
        [this, subject = std::move(subject), item = std::move(item), at] {
          return ledger().balance(subject, item, *at);
        },
        std::move(done), ReadPool::point_in_time);
  }
  query<Balance>(
      Metrics::Op::balance,
      [this, subject = std::move(subject), item = std::move(item)](auto answer) mutable {
        ledger().submit_balance(std::move(subject), std::move(item), std::move(answer));
      },
      std::move(done));
}

void Core::list(std::string subject, std::optional<AsOf> at,
                std::function<void(Result<std::vector<ItemBalance>>, ListPass)> done) {
  using Items = std::vector<ItemBalance>;
  // Counted (track()) from now: a list waiting for its turn is in flight.
  auto pass = std::make_shared<ListPass>();  // set once the list starts
  auto answer = track<Items>(Metrics::Op::list,
                             [done = std::move(done), pass](Result<Items> result) {
                               done(std::move(result), std::move(*pass));
                             });
  lists_.enter([this, subject = std::move(subject), at, answer = std::move(answer),
                pass](ListPass granted) mutable {
    // No place: the server is stopping (ListGate::stop).
    if (granted == nullptr) return answer(Status(ErrorCode::closed, "the server is stopping"));
    *pass = std::move(granted);
    if (at) {
      return run_read<Items>(
          ReadPool::point_in_time,
          [this, subject = std::move(subject), at] { return ledger().list(subject, *at); },
          std::move(answer));
    }
    ledger().submit_list(std::move(subject), std::move(answer));
  });
}

struct ListGate::Places {
  std::mutex mu;
  std::size_t unused = 0;                              // under mu
  std::deque<std::function<void(ListPass)>> waiting;  // under mu
  bool stopped = false;                                // under mu

  // A pass whose last copy, destroyed, frees its place: to the list that
  // waited longest, if any.
  static ListPass pass(std::shared_ptr<Places> places) {
    struct Held {
      std::shared_ptr<Places> places;
      ~Held() { leave(places); }
    };
    auto held = std::make_shared<Held>();
    held->places = std::move(places);
    return held;
  }

  static void leave(const std::shared_ptr<Places>& places) {
    std::function<void(ListPass)> next;
    {
      std::lock_guard<std::mutex> guard(places->mu);
      if (places->waiting.empty()) {
        places->unused++;
        return;
      }
      next = std::move(places->waiting.front());
      places->waiting.pop_front();
    }
    next(pass(places));
  }
};

ListGate::ListGate(std::size_t places) : places_(std::make_shared<Places>()) {
  places_->unused = places;
}

void ListGate::enter(std::function<void(ListPass)> start) {
  {
    std::unique_lock<std::mutex> guard(places_->mu);
    if (places_->stopped) {
      guard.unlock();
      return start(nullptr);
    }
    if (places_->unused == 0) return places_->waiting.push_back(std::move(start));
    places_->unused--;
  }
  start(Places::pass(places_));
}

void ListGate::stop() {
  std::deque<std::function<void(ListPass)>> waiting;
  {
    std::lock_guard<std::mutex> guard(places_->mu);
    places_->stopped = true;
    waiting.swap(places_->waiting);
  }
  for (auto& start : waiting) start(nullptr);
}

void Core::hold_info(HoldId hold, std::optional<AsOf> at,
                     std::function<void(Result<HoldView>)> done) {
  if (at) {
    return read<HoldView>(
        Metrics::Op::hold_info, [this, hold, at] { return ledger().hold_info(hold, *at); },
        std::move(done), ReadPool::point_in_time);
  }
  query<HoldView>(
      Metrics::Op::hold_info,
      [this, hold](auto answer) { ledger().submit_hold_info(hold, std::move(answer)); },
      std::move(done));
}

void Core::for_each_session(void (Session::*method)()) {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> guard(mu_);
    for (const auto& [id, registered] : sessions_) {
      if (auto session = registered.session.lock()) live.push_back(std::move(session));
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
  if (feed_) feed_->stop();
  lists_.stop();
  for_each_session(&Session::begin_shutdown);
}

void Core::close_sessions_now() { for_each_session(&Session::close_now); }

bool Core::wait_sessions(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> guard(mu_);
  return sessions_cv_.wait_until(guard, deadline, [&] { return sessions_.empty(); });
}

namespace {

// How long a stopping binary session waits for its peer to close once it
// has sent every answer (BinarySession::linger()).
constexpr std::int64_t kLingerMs = 2000;
constexpr std::size_t kDrainBytes = 16 * 1024;
// The most a message may take before a hello with the token is accepted: a
// hello, its token at most 256 bytes, takes under 512. A peer that has not
// shown the token cannot make the server buffer a 1 MiB message.
constexpr std::size_t kHelloBytesMax = 4096;
// The most one piece of a binary session's write hands the socket (what
// asio::transfer_all() allows): progress is marked after each piece.
constexpr std::size_t kWritePieceBytesMax = 64 * 1024;
// Answers queued and not yet written, in bytes, past which a connection is
// read no further. A list answer may be far larger than its request (a
// subject's every item, up to wire::kAnswerBytesMax), so lists also run
// one at a time per connection, each once the answer of the one before is
// written: a peer that pipelines lists and reads no answers holds at most
// this plus one list's answer, not thousands, and one ListGate place.
constexpr std::size_t kUnwrittenBytesMax = 8u << 20;
// Point-in-time reads of one binary connection on the read pool at once:
// the pool serves in order, and such a read may replay the log, so a peer
// that pipelines thousands would hold everyone else's behind them. Its
// others wait in line, its other requests go on.
constexpr std::size_t kPointInTimeReadsPerConnection = 2;

// A follow stream of a binary connection (docs/protocol.md): batches of
// committed events pushed under the follow request's id. Its cycle: wait in
// the EventFeed for a commit past the cursor, read a batch on the read
// pool, write it, and wait again only once it is written, so a slow reader
// holds at most one batch here. Every field is touched on the session's
// strand, except `cursor`, which the read in flight owns.
struct Follow {
  std::uint64_t id = 0;  // the follow request's id
  FeedCursor cursor;
  FeedLimits limits;
  EventFeed::WaiterId waiter = 0;
  bool waiting = false;    // in the feed, for a commit
  bool reading = false;    // a batch is being read
  bool queued = false;     // a commit came; waits for its connection's batch slot
  bool unwritten = false;  // its last batch is queued or being written
  bool ending = false;     // ends once none of the above holds
  Status end_status;       // ok: a last batch with `end`; else this error
};

// A batch read for a follow: the encoded response, and how many events.
struct FollowBatch {
  std::string frame;
  std::size_t count = 0;
};

// Reads the follow's next batch (on the read pool) and encodes it.
Result<FollowBatch> read_follow_batch(EventFeed& feed, Follow& follow) {
  wire::Response response;
  response.id = follow.id;
  response.kind = wire::Response::Kind::events;
  auto count = feed.read(&follow.cursor, follow.limits, [&](const log::Record& record) {
    response.events.append(record.payload);
    return Status();
  });
  if (!count) return count.status();
  FollowBatch batch;
  batch.count = *count;
  response.next_seq = follow.cursor.next_seq;
  if (batch.count > 0) batch.frame = wire::encode_response(response);
  return batch;
}

// One binary-protocol connection: reads frames, submits them, writes the
// responses in completion order (so they may overtake each other). At most
// inflight_per_connection_max requests are in flight (read, and not yet
// answered and written out); beyond that it stops reading, which is the
// client's backpressure. Follow streams (at most
// follows_per_connection_max) are not requests in flight: they last until
// cancelled, and end when the peer closes or the server stops.
class BinarySession final : public Session, public std::enable_shared_from_this<BinarySession> {
  // Frames to write: answers, or a follow's batch.
  struct Outgoing {
    std::string bytes;
    std::shared_ptr<Follow> follow;  // a follow's batch, or nullptr
    ListPass pass;                   // a list's answer: its pass, held until written
    std::size_t frames = 1;          // answers of one burst share their bytes
  };

 public:
  BinarySession(Core& core, tcp::socket socket, std::string peer)
      : peer_(std::move(peer)), core_(core), socket_(std::move(socket)),
        idle_timer_(socket_.get_executor()),
        authenticated_(core.options().token.empty()),
        reader_(authenticated_ ? core.options().frame_bytes_max
                               : std::min(kHelloBytesMax, core.options().frame_bytes_max)) {}
  ~BinarySession() override {
    if (id_ != 0) core_.remove_session(id_);
    core_.metrics().connection_closed(Metrics::Protocol::binary);
  }

  // Binary connections are never probes (Core::add_session).
  void start(std::uint64_t id, bool probe) {
    TALLY_ASSERT(!probe);
    id_ = id;
    touch();
    arm_idle_timer();
    read_frames();
  }

  void begin_shutdown() override {
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      self->end_follows(Status(ErrorCode::closed, "the server is shutting down"));
      self->maybe_finish();
    });
  }

  void close_now() override {
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->close(); });
  }

 private:
  // Activity that keeps the connection from idling out: a whole request
  // taken, or answers wholly written. Bytes of a frame not yet whole do not
  // count, or a peer trickling one byte now and then would hold the
  // connection (and its buffer) for ever.
  void touch() { last_activity_ns_ = steady_now_ns(); }

  // Handles the frames read so far, then reads more: one read takes in
  // every request a pipelining client has sent.
  void read_frames() {
    while (!closed_ && !reading_) {
      // Stopping or at EOF, it reads no more: close once all is answered.
      if (stopping_ || read_closed_) return maybe_finish();
      // Requests read and not yet written out count, answered or not: a
      // peer that does not read its answers stops being read. Resumes in
      // send_answered() or on_written().
      if (inflight_ + unwritten_frames_ >= core_.options().inflight_per_connection_max) return;
      if (unwritten_bytes_ >= kUnwrittenBytesMax || waiting_list_) return;
      auto frame = reader_.next();
      if (!frame) {
        // Over kHelloBytesMax before the hello: no hello, and too large to
        // be read to say so.
        const char* before = authenticated_ ? "" : "before the hello: ";
        return malformed(before + frame.status().message());
      }
      if (frame->empty()) return read_some();
      touch();
      on_frame(*frame);
    }
  }

  void read_some() {
    reading_ = true;
    const std::span<std::byte> space = reader_.space();
    socket_.async_read_some(asio::buffer(space.data(), space.size()),
                            [self = shared_from_this()](boost::system::error_code ec, std::size_t bytes) {
                              self->reading_ = false;
                              if (ec) return self->on_read_error(ec);
                              if (self->lingering_) return self->drain();  // dropped
                              self->reader_.commit(bytes);
                              self->read_frames();
                            });
  }

  void on_read_error(boost::system::error_code ec) {
    if (ec == asio::error::eof && reader_.buffered_bytes() > 0) {
      // The peer ended its side in the middle of a frame: said, though the
      // requests read before it are still answered. Not counted malformed:
      // a client that crashed or gave up while sending is gone, as an HTTP
      // one is, and sent nothing that is not the protocol.
      note("closing: the stream ended inside a frame (" +
           std::to_string(reader_.buffered_bytes()) + " bytes of it read)");
    } else if (ec != asio::error::eof && ec != asio::error::operation_aborted && !stopping_) {
      note("read failed: " + ec.message());
    }
    read_closed_ = true;
    // The peer sends no more, so it can cancel nothing: its follows end.
    end_follows(Status());
    maybe_finish();
  }

  // Reads nothing more, before the peer's end: the bytes it may still send
  // are left unread, so the close lingers (linger()). A follow kept open
  // would keep the connection open for good: its follows end, `why` their
  // last message.
  void stop_reading(const Status& why) {
    read_closed_ = true;
    unread_ = true;
    end_follows(why);
  }

  // Reads no more, but answers the requests read before: they may be
  // applied already, and their callers wait to hear the outcome. Then ends
  // as a stopping server does (linger()), since the peer may still send.
  void malformed(std::string_view reason) {
    core_.metrics().malformed();
    note("closing: " + std::string(reason));
    stop_reading(Status(ErrorCode::invalid, "closing: " + std::string(reason)));
    maybe_finish();
  }

  void on_frame(wire::FrameView frame) {
    auto request = wire::decode_request(frame);
    if (!request) return malformed(request.status().message());
    if (!authenticated_) {
      if (request->kind != wire::Request::Kind::hello || request->unknown_kind) {
        return refuse(request->id, "the first request must be a hello with the token");
      }
      // A hello refused as it was decoded: its token is too long to be one.
      if (!request->refused.ok()) return refuse(request->id, request->refused.message());
      // Before the starting check, as HTTP answers 401 before 503: a client
      // with a wrong token is told so, not to wait for the open.
      if (const char* why = token_refused(*request)) return refuse(request->id, why);
    }
    if (!core_.serving()) {
      // Whatever the request (a hello, or a first request without one):
      // the client connects again, and tally::Client counts these apart
      // from its retries, since a server opening a long log is on its way.
      // Counted under its op, as HTTP counts its requests turned away.
      const bool asks = request->refused.ok() || request->refused_asks;
      if (const Metrics::Op op = op_of(*request); asks && op != Metrics::Op::count) {
        core_.metrics().record(op, Metrics::error_slot(ErrorCode::busy), 0);
      }
      send_error(request->id, Core::starting());
      return stop_reading(Status(ErrorCode::busy, "closing: the server is starting"));
    }
    if (!request->refused.ok()) {
      count_refused(*request);
      return send_error(request->id, request->refused);
    }
    dispatch(std::move(*request));
  }

  // A request refused as it was decoded counts as an answer to what it
  // asked for, as an HTTP request refused for its body does; one that does
  // not say (an unknown kind or op) counts nowhere, as an unknown route.
  // It is answered at once, at no cost a clock read per frame would be
  // worth: 0 ns, in the first latency bucket (under 100 µs) as any
  // measured time of it would be.
  void count_refused(const wire::Request& request) {
    if (!request.refused_asks) return;
    core_.metrics().record(op_of(request), Metrics::error_slot(request.refused.code()), 0);
  }

  // The op tally_ops_total counts a request under; count for a hello or a
  // cancel, which ask for none.
  static Metrics::Op op_of(const wire::Request& request) {
    using Kind = wire::Request::Kind;
    switch (request.kind) {
      case Kind::mutation: return Metrics::op_of(request.command);
      case Kind::balance: return Metrics::Op::balance;
      case Kind::list: return Metrics::Op::list;
      case Kind::hold_info: return Metrics::Op::hold_info;
      case Kind::follow: return Metrics::Op::events;
      case Kind::hello:
      case Kind::cancel: break;
    }
    return Metrics::Op::count;
  }

  // Answers unauthorized (counted, and logged with `message`) and closes
  // once the answer is written.
  void refuse(std::uint64_t id, std::string message) {
    core_.metrics().unauthorized(Metrics::Protocol::binary);
    note("closing: " + message);
    wire::Response response;
    response.id = id;
    response.kind = wire::Response::Kind::error;
    response.unauthorized = true;
    response.error = Status(ErrorCode::invalid, std::move(message));
    send(wire::encode_response(response));
    stop_reading(Status(ErrorCode::invalid, "closing: " + response.error.message()));
  }

  void dispatch(wire::Request&& request) {
    using Kind = wire::Request::Kind;
    if (request.kind == Kind::hello) return hello(request);
    if (request.kind == Kind::follow) return start_follow(request);
    if (request.kind == Kind::cancel) return cancel_follow(request.follow_id);
    if (request.kind == Kind::list && list_unwritten_) {
      // Read on once it starts (resume()).
      waiting_list_ = std::move(request);
      return;
    }
    inflight_++;
    if (request.kind == Kind::list) list_unwritten_ = true;
    // In flight while it waits: the requests in flight bound the line.
    if (request.as_of && point_in_time_reads_ >= kPointInTimeReadsPerConnection) {
      reads_waiting_.push_back(std::move(request));
      return;
    }
    start(std::move(request));
  }

  // Sends a request (counted in flight) on to the ledger or the read pool.
  void start(wire::Request&& request) {
    using Kind = wire::Request::Kind;
    auto self = shared_from_this();
    const std::uint64_t id = request.id;
    // Counted out as it is answered, on the thread that answers.
    const bool counted = request.as_of.has_value();
    if (counted) point_in_time_reads_++;
    // A read's answer: its result (and a list's pass) sent on.
    auto answer = [self, id, counted](auto&& result, auto... pass) {
      if (counted) self->point_in_time_reads_--;
      self->answer_later(id, std::forward<decltype(result)>(result), std::move(pass)...);
    };
    switch (request.kind) {
      case Kind::mutation:
        core_.submit(std::move(request.command), [self, id](Result<Receipt> result) {
          self->answer_later(id, std::move(result));
        });
        return;
      case Kind::balance:
        core_.balance(std::move(request.subject), std::move(request.item), request.as_of,
                      std::move(answer));
        return;
      case Kind::list:
        core_.list(std::move(request.subject), request.as_of, std::move(answer));
        return;
      case Kind::hold_info:
        core_.hold_info(request.hold, request.as_of, std::move(answer));
        return;
      case Kind::hello:
      case Kind::follow:
      case Kind::cancel: break;
    }
    TALLY_ASSERT(false);
  }

  // ---- follow streams ----------------------------------------------------------

  void start_follow(const wire::Request& request) {
    // Its answers could not be told from the open follow's, whose end the
    // client would then wait for in vain: closed as a malformed frame is,
    // every follow (that one too) ending with one last message.
    if (follows_.count(request.id) != 0) return malformed("a follow with this id is open");
    if (follows_.size() >= core_.options().follows_per_connection_max) {
      return send_error(request.id, Status(ErrorCode::invalid, "too many follows on this connection"));
    }
    auto follow = std::make_shared<Follow>();
    follow->id = request.id;
    follow->cursor.next_seq = std::max<std::uint64_t>(request.from_seq, 1);
    if (request.max_events != 0) follow->limits.events_max = std::min<std::size_t>(request.max_events, kFeedEventsMax);
    follows_.emplace(follow->id, follow);
    pump(follow);
  }

  void cancel_follow(std::uint64_t id) {
    auto entry = follows_.find(id);
    if (entry == follows_.end()) return;  // ended already, or never was
    end_follow(entry->second, Status());
  }

  void end_follows(const Status& why) {
    std::vector<std::shared_ptr<Follow>> open;
    for (const auto& [id, follow] : follows_) open.push_back(follow);
    for (const auto& follow : open) end_follow(follow, why);
  }

  void end_follow(const std::shared_ptr<Follow>& follow, Status why) {
    mark_ending(*follow, std::move(why));
    pump(follow);
  }

  // The first reason a follow ends is the one its last message gives.
  static void mark_ending(Follow& follow, Status why) {
    if (follow.ending) return;
    follow.ending = true;
    follow.end_status = std::move(why);
  }

  // Moves a follow on: waits for a commit once its last batch is written;
  // when ending, stops its wait and sends its last message once nothing of
  // it is in flight.
  void pump(const std::shared_ptr<Follow>& follow) {
    if (closed_ || follow->reading || follow->queued || follow->unwritten) return;
    if (stopping_ || core_.stopping()) {
      mark_ending(*follow, Status(ErrorCode::closed, "the server is shutting down"));
    }
    if (follow->waiting) {
      // Its Ready runs now and pumps again once it is back on the strand.
      if (follow->ending) core_.feed().cancel(follow->waiter);
      return;
    }
    if (follow->ending) return finish_follow(follow);
    follow->waiting = true;
    auto self = shared_from_this();
    follow->waiter = core_.feed().wait(follow->cursor.next_seq - 1, EventFeed::Deadline::max(),
                                       [self, follow](std::uint64_t) {
                                         asio::post(self->socket_.get_executor(), [self, follow] {
                                           self->on_follow_ready(follow);
                                         });
                                       });
  }

  void on_follow_ready(const std::shared_ptr<Follow>& follow) {
    follow->waiting = false;
    follow->waiter = 0;
    if (closed_) return;
    if (follow->ending || stopping_ || core_.stopping()) return pump(follow);
    follow->queued = true;
    follows_queued_.push_back(follow);
    next_follow_batch();
  }

  // A connection reads or writes one follow batch at a time, and none while
  // its answers queued pass kUnwrittenBytesMax: a peer that follows large
  // events from many follows and reads nothing holds one batch here, not
  // one per follow (each may be as large as an event).
  void next_follow_batch() {
    while (!closed_ && !follow_batch_out_ && unwritten_bytes_ < kUnwrittenBytesMax &&
           !follows_queued_.empty()) {
      std::shared_ptr<Follow> follow = std::move(follows_queued_.front());
      follows_queued_.pop_front();
      follow->queued = false;
      if (follow->ending || stopping_ || core_.stopping()) {
        pump(follow);
        continue;
      }
      follow_batch_out_ = true;
      follow->reading = true;
      auto self = shared_from_this();
      core_.read<FollowBatch>(
          Metrics::Op::events, [this, follow] { return read_follow_batch(core_.feed(), *follow); },
          [self, follow](Result<FollowBatch> batch) {
            asio::post(self->socket_.get_executor(),
                       [self, follow, batch = std::move(batch)]() mutable {
                         self->on_follow_read(follow, std::move(batch));
                       });
          });
    }
  }

  void on_follow_read(const std::shared_ptr<Follow>& follow, Result<FollowBatch> batch) {
    follow->reading = false;
    if (closed_) return;
    if (!batch || batch->count == 0) {
      follow_batch_out_ = false;
      // Woken without a new event: only a closed ledger does that.
      const Status why = batch ? Status(ErrorCode::closed, "the ledger is closed") : batch.status();
      if (!batch) note("a follow failed: " + why.to_string());
      end_follow(follow, why);
      return next_follow_batch();
    }
    // Sent even when the follow is ending: it was read, and the cursor is past it.
    follow->unwritten = true;
    send(std::move(batch->frame), follow);
  }

  void finish_follow(const std::shared_ptr<Follow>& follow) {
    follows_.erase(follow->id);
    if (!follow->end_status.ok()) return send_error(follow->id, follow->end_status);
    wire::Response response;
    response.id = follow->id;
    response.kind = wire::Response::Kind::events;
    response.next_seq = follow->cursor.next_seq;
    response.end = true;
    send(wire::encode_response(response));
  }

  static wire::Response error_response(std::uint64_t id, Status status) {
    wire::Response response;
    response.id = id;
    response.kind = wire::Response::Kind::error;
    response.error = std::move(status);
    return response;
  }

  void send_error(std::uint64_t id, Status status) {
    send(wire::encode_response(error_response(id, std::move(status))));
  }

  // Why a hello's token is refused; nullptr when it passes.
  const char* token_refused(const wire::Request& request) const {
    if (core_.token_ok(request.token)) return nullptr;
    return request.token.empty() ? "no token (the server requires one)" : "wrong token";
  }

  void hello(const wire::Request& request) {
    if (const char* why = token_refused(request)) return refuse(request.id, why);
    if (request.version != wire::kProtocolVersion) {
      const std::string why =
          "protocol version " + std::to_string(request.version) + " is not supported";
      send_error(request.id, Status(ErrorCode::invalid, why));
      return stop_reading(Status(ErrorCode::invalid, "closing: " + why));
    }
    authenticated_ = true;
    reader_.set_frame_bytes_max(core_.options().frame_bytes_max);
    wire::Response response;
    response.id = request.id;
    response.kind = wire::Response::Kind::hello;
    response.ledger_id = core_.ledger().ledger_id();
    send(wire::encode_response(response));
  }

  // Called on a ledger or read-pool thread with the answer to request `id`.
  // A list's answer, which may be tens of MB, is encoded on the strand: on
  // the ledger's thread every client's writes would wait for it. Its pass
  // goes with it until it is written.
  template <class T>
  void answer_later(std::uint64_t id, Result<T> result, ListPass pass = nullptr) {
    if constexpr (std::is_same_v<T, std::vector<ItemBalance>>) {
      asio::post(socket_.get_executor(), [self = shared_from_this(), id, result = std::move(result),
                                          pass = std::move(pass)]() mutable {
        self->queue_answer(id, std::move(result), std::move(pass));
      });
    } else {
      queue_answer(id, std::move(result));
    }
  }

  // Encodes the answer to request `id` on the calling thread, and hops onto
  // the strand once for every burst of answers (a group commit answers many
  // at once), not once per answer.
  //
  // A burst's answers other than lists are appended to one string, each
  // encoded first into this thread's own: a string per answer, allocated
  // here and freed on the strand's thread, kept glibc's malloc off its
  // thread cache (a fifth of the ledger I/O thread's time went to malloc).
  template <class T>
  void queue_answer(std::uint64_t id, Result<T> result, ListPass pass = nullptr) {
    if constexpr (std::is_same_v<T, std::vector<ItemBalance>>) {
      // On the strand (answer_later()): the answer of a connection closed
      // meanwhile is not encoded, only counted out. A list's frame, which
      // may be tens of MB, goes out in a string of its own.
      std::string frame;
      if (!closed_) encode_answer(id, std::move(result), &frame);
      return queue_answered(Outgoing{std::move(frame), nullptr, std::move(pass)});
    } else {
      thread_local std::string frame;
      encode_answer(id, std::move(result), &frame);
      bool first = false;
      {
        std::lock_guard<std::mutex> guard(answered_mu_);
        first = answered_count_ == 0;
        answered_count_++;
        // Not reserved ahead: a peer that reads nothing holds a burst's
        // buffer per answer it was sent one at a time, and the bound on
        // unwritten bytes counts what they hold, not room.
        if (answered_.empty() || answered_.back().pass) {
          answered_.push_back(Outgoing{});
          answered_.back().frames = 0;
        }
        answered_.back().bytes += frame;
        answered_.back().frames++;
      }
      if (first) post_answered();
    }
  }

  void queue_answered(Outgoing outgoing) {
    bool first = false;
    {
      std::lock_guard<std::mutex> guard(answered_mu_);
      first = answered_count_ == 0;
      answered_count_ += outgoing.frames;
      answered_.push_back(std::move(outgoing));
    }
    if (first) post_answered();
  }

  void post_answered() {
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->send_answered(); });
  }

  // Into *frame: the frame of the answer to request `id`, or of an
  // `invalid` error when the answer would pass kAnswerBytesMax.
  template <class T>
  static void encode_answer(std::uint64_t id, Result<T> result, std::string* frame) {
    std::size_t bytes_min = 0;
    if constexpr (std::is_same_v<T, std::vector<ItemBalance>>) {
      if (result) bytes_min = wire::list_answer_bytes_min(*result);
    }
    frame->clear();
    if (bytes_min <= wire::kAnswerBytesMax) {
      wire::encode_response_into(response_of(id, std::move(result)), frame);
    }
    if (bytes_min <= wire::kAnswerBytesMax && frame->size() <= wire::kAnswerBytesMax) return;
    const std::string size =
        frame->empty() ? "at least " + std::to_string(bytes_min) : std::to_string(frame->size());
    const Status too_large(ErrorCode::invalid, "the answer is " + size +
                                                   " bytes, over the protocol's limit of " +
                                                   std::to_string(wire::kAnswerBytesMax));
    wire::encode_response_into(error_response(id, too_large), frame);
  }

  template <class T>
  static wire::Response response_of(std::uint64_t id, Result<T> result) {
    if (!result) return error_response(id, result.status());
    wire::Response response;
    response.id = id;
    if constexpr (std::is_same_v<T, Receipt>) {
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
    return response;
  }

  void send_answered() {
    std::vector<Outgoing> frames;
    std::size_t answers = 0;
    {
      std::lock_guard<std::mutex> guard(answered_mu_);
      frames.swap(answered_);
      answers = std::exchange(answered_count_, 0);
    }
    TALLY_ASSERT(inflight_ >= answers);
    inflight_ -= answers;
    if (!closed_) {
      for (Outgoing& frame : frames) queue_write(std::move(frame));
      if (!writing_) write_next();
    }
    resume();
  }

  // Starts the point-in-time reads waiting for a place on the read pool,
  // and a list that waited for the answer of the one before it to be
  // written once the answers queued have room, then reads on.
  void resume() {
    if (closed_) return;  // close() dropped the waiting requests: stop() may be past
    while (!reads_waiting_.empty() && point_in_time_reads_ < kPointInTimeReadsPerConnection) {
      wire::Request read = std::move(reads_waiting_.front());
      reads_waiting_.pop_front();
      start(std::move(read));
    }
    if (waiting_list_ && !list_unwritten_ && unwritten_bytes_ < kUnwrittenBytesMax) {
      wire::Request list = std::move(*waiting_list_);
      waiting_list_.reset();
      dispatch(std::move(list));
    }
    read_frames();
  }

  // Queues a frame; `follow`: the batch of that follow, which reads its
  // next one only once this one is written.
  void send(std::string bytes, std::shared_ptr<Follow> follow = nullptr) {
    if (closed_) return;
    queue_write(Outgoing{std::move(bytes), std::move(follow), nullptr});
    if (!writing_) write_next();
  }

  void queue_write(Outgoing outgoing) {
    unwritten_bytes_ += outgoing.bytes.size();
    unwritten_frames_ += outgoing.frames;
    writes_.push_back(std::move(outgoing));
  }

  // Sends every answer queued so far in one gathered write: a pipelining
  // client then costs one syscall per batch of answers, not per answer.
  // The completion condition runs (on the strand) as the write starts and
  // after each piece of it goes out: it marks the progress that the idle
  // timer checks, so that a peer that reads slowly keeps the connection
  // and one that reads nothing does not.
  void write_next() {
    writing_ = true;
    gather_.clear();
    for (const Outgoing& outgoing : writes_) gather_.push_back(asio::buffer(outgoing.bytes));
    asio::async_write(
        socket_, gather_,
        [self = shared_from_this()](boost::system::error_code ec, std::size_t) -> std::size_t {
          self->write_progress_ns_ = steady_now_ns();
          return ec ? 0 : kWritePieceBytesMax;
        },
        [self = shared_from_this(), count = writes_.size()](boost::system::error_code ec,
                                                             std::size_t) {
          self->on_written(ec, count);
        });
  }

  void on_written(boost::system::error_code ec, std::size_t count) {
    writing_ = false;
    std::vector<std::shared_ptr<Follow>> written;
    for (std::size_t index = 0; index < count; index++) {
      unwritten_bytes_ -= writes_[index].bytes.size();
      unwritten_frames_ -= writes_[index].frames;
      if (writes_[index].follow) written.push_back(std::move(writes_[index].follow));
      if (writes_[index].pass) list_unwritten_ = false;
    }
    writes_.erase(writes_.begin(), writes_.begin() + static_cast<std::ptrdiff_t>(count));
    if (ec || closed_) {
      if (ec && !closed_) note("write failed: " + ec.message());
      close();
      return drop_writes();
    }
    touch();
    for (const auto& follow : written) {
      follow->unwritten = false;
      follow_batch_out_ = false;
      pump(follow);
    }
    next_follow_batch();
    resume();
    if (!writing_ && !writes_.empty()) return write_next();
    maybe_finish();
  }

  // After the peer stopped sending (or the server is stopping): close once
  // every request read has been answered and written.
  void maybe_finish() {
    if (closed_) return;
    if (!read_closed_ && !stopping_) return;
    if (inflight_ > 0 || waiting_list_ || writing_ || !writes_.empty() || !follows_.empty()) {
      return;
    }
    if (read_closed_ && !unread_) return close();  // nothing the peer sent is left unread
    linger();
  }

  // The server stops while the peer may still be sending requests, which
  // get no answer (they were never read). Closing with bytes unread would
  // reset the connection, and a reset makes the peer's system drop the
  // answers it has received but the peer has not read yet. So: end the
  // answers with a FIN, then read and drop what the peer still sends until
  // it closes too, for kLingerMs at most.
  void linger() {
    if (lingering_) return;
    lingering_ = true;
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    idle_timer_.expires_after(std::chrono::milliseconds(kLingerMs));
    idle_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec != asio::error::operation_aborted) self->close();
    });
    if (!reading_) drain();
  }

  void drain() {
    reading_ = true;
    // Not the frame reader's space: it may be full of frames never handled.
    drained_.resize(kDrainBytes);
    socket_.async_read_some(asio::buffer(drained_),
                            [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                              self->reading_ = false;
                              if (ec || self->closed_) return self->close();
                              self->drain();
                            });
  }

  // Checks again after `wait_ns` (the whole idle timeout by default): at the
  // moment the connection would have been idle, or its write stalled, that
  // long.
  void arm_idle_timer(std::int64_t wait_ns = 0) {
    if (wait_ns <= 0) wait_ns = core_idle_ns(core_);
    idle_timer_.expires_after(std::chrono::nanoseconds(wait_ns));
    idle_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->closed_) return;
      if (self->writing_) return self->check_write_progress();
      // An open follow is a connection in use, however quiet the ledger;
      // but not one whose peer takes none of what was written to it.
      if (self->inflight_ > 0 || !self->follows_.empty()) {
        if (unsent_bytes(self->socket_) > 0) return self->check_write_progress("taken");
        return self->arm_idle_timer();
      }
      const std::int64_t next_ns =
          look_when_idle(self->drain_, unsent_bytes(self->socket_), steady_now_ns(),
                         core_idle_ns(self->core_), &self->last_activity_ns_);
      if (next_ns > 0) return self->arm_idle_timer(next_ns);
      if (next_ns < 0) return self->close_stuck("taken");
      self->note("closing: idle timeout");
      self->close();
    });
  }

  // A write in progress keeps the connection open while it moves
  // (look_at_write). One that has sent nothing for the idle timeout has a
  // peer that reads nothing: waiting on it would hold the connection, its
  // answers and its follows for ever. The same for bytes written whole
  // that the peer does not take (`stuck` "taken"), while a follow or a
  // request keeps the connection from being idle.
  void check_write_progress(const char* stuck = "written") {
    const std::int64_t wait_ns = look_at_write(drain_, unsent_bytes(socket_), steady_now_ns(),
                                               core_idle_ns(core_), &write_progress_ns_);
    if (wait_ns > 0) return arm_idle_timer(wait_ns);
    close_stuck(stuck);
  }

  // Resets a connection whose peer took no answer bytes for the idle
  // timeout: `what` the server's side did not do with them.
  void close_stuck(const char* what) {
    note(stuck_reason(what, core_.options().idle_timeout_ms));
    close_abortively(socket_);
    close();
  }

  static std::int64_t core_idle_ns(const Core& core) {
    return core.options().idle_timeout_ms * 1'000'000;
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    waiting_list_.reset();  // never sent to the ledger
    reads_waiting_.clear();
    if (!writing_) drop_writes();  // else on_written() drops them
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    idle_timer_.cancel();
    // Waiting follows hold this session in the feed: release them now.
    // Their Ready and their reads in flight find the session closed.
    std::vector<EventFeed::WaiterId> waiters;
    for (const auto& [id, follow] : follows_) {
      if (follow->waiting) waiters.push_back(follow->waiter);
    }
    follows_.clear();
    follows_queued_.clear();
    for (const EventFeed::WaiterId waiter : waiters) core_.feed().cancel(waiter);
  }

  // Once closed: what was never written goes now, and with it the places
  // of the lists it answered (ListGate), not when the session is destroyed.
  void drop_writes() {
    writes_.clear();
    unwritten_bytes_ = 0;
    unwritten_frames_ = 0;
  }

  void note(const std::string& what) { core_.log_connection("binary", peer_, what); }

  const std::string peer_;
  Core& core_;
  tcp::socket socket_;
  asio::steady_timer idle_timer_;
  std::uint64_t id_ = 0;
  bool authenticated_;

  wire::FrameReader reader_;
  // Answers encoded on ledger threads, waiting for send_answered().
  std::mutex answered_mu_;
  std::vector<Outgoing> answered_;
  std::size_t answered_count_ = 0;  // the frames in answered_
  // Bounded by inflight_per_connection_max (read_frames()) plus one follow
  // batch (next_follow_batch()) and one last message per follow.
  std::deque<Outgoing> writes_;
  std::map<std::uint64_t, std::shared_ptr<Follow>> follows_;  // by request id
  std::deque<std::shared_ptr<Follow>> follows_queued_;       // for the batch slot
  bool follow_batch_out_ = false;  // a follow batch is being read, or is unwritten
  std::vector<asio::const_buffer> gather_;  // the buffers of the write in progress
  std::size_t inflight_ = 0;
  // A list read whose answer is not written yet: one at most (dispatch()),
  // so that a connection holds one ListGate place at most.
  bool list_unwritten_ = false;
  std::optional<wire::Request> waiting_list_;  // read, and waiting for the list before it
  // Point-in-time reads in flight, waiting for one of the connection's
  // kPointInTimeReadsPerConnection places on the read pool.
  std::deque<wire::Request> reads_waiting_;
  std::atomic<std::size_t> point_in_time_reads_{0};  // on the read pool
  std::size_t unwritten_bytes_ = 0;            // of writes_
  std::size_t unwritten_frames_ = 0;           // of writes_
  bool reading_ = false;
  bool writing_ = false;
  bool read_closed_ = false;
  bool unread_ = false;  // read_closed_ before the peer's end, with bytes perhaps unread
  bool stopping_ = false;
  bool lingering_ = false;  // linger(): reads only to drop, into drained_
  std::vector<std::byte> drained_;
  bool closed_ = false;
  std::int64_t last_activity_ns_ = 0;
  std::int64_t write_progress_ns_ = 0;  // the write in progress last sent bytes (or began)
  DrainWatch drain_;                    // whether the peer takes what the system holds
};

}  // namespace

void start_binary_session(Core& core, tcp::socket socket, std::string peer) {
  start_session<BinarySession>(core, std::move(socket), std::move(peer),
                               Metrics::Protocol::binary);
}

}  // namespace server_detail

// ---- listeners and the Server ----------------------------------------------

std::size_t io_threads_default() {
  return std::max<std::size_t>(1, std::thread::hardware_concurrency() / 2);
}

Status parse_host_port(std::string_view text, std::string* host, std::uint16_t* port) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Status(ErrorCode::invalid, "expected HOST:PORT, got '" + std::string(text) + "'");
  }
  std::string_view host_part = text.substr(0, colon);
  if (host_part.size() >= 2 && host_part.front() == '[' && host_part.back() == ']') {
    host_part = host_part.substr(1, host_part.size() - 2);
  }
  // "[::1" (host "[:"), "[]:7420": no host a resolver could take.
  if (host_part.empty() || host_part.find_first_of("[]") != std::string_view::npos) {
    return Status(ErrorCode::invalid, "expected HOST:PORT ([::1]:7420 for IPv6), got '" +
                                          std::string(text) + "'");
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

// Loopback, counting an IPv4 loopback address written as IPv6
// (::ffff:127.0.0.1), which Asio's is_loopback() does not.
bool is_loopback(const asio::ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6()).is_loopback();
  }
  return address.is_loopback();
}

// Where `address` ("host:port") listens: every address it names, each once
// (a name may resolve to 127.0.0.1 and ::1, and a client may try either
// first); invalid when it is malformed, does not resolve, or names an
// address off loopback while no token is required.
Result<std::vector<tcp::endpoint>> listen_endpoints(std::string_view address, bool has_token) {
  std::string host;
  std::uint16_t port = 0;
  TALLY_TRY(parse_host_port(address, &host, &port));
  auto resolved = resolve_endpoints(host, port);
  if (!resolved) return Status(ErrorCode::invalid, resolved.status().message());
  std::vector<tcp::endpoint> endpoints;
  for (const tcp::endpoint& endpoint : *resolved) {
    if (!is_loopback(endpoint.address()) && !has_token) {
      return Status(ErrorCode::invalid, "listening on " + std::string(address) +
                                            " (not loopback) requires a token (--token-file)");
    }
    if (std::find(endpoints.begin(), endpoints.end(), endpoint) == endpoints.end()) {
      endpoints.push_back(endpoint);
    }
  }
  return endpoints;
}

using StartSession = void (*)(Core&, tcp::socket, std::string);

// The acceptors of one listen address, one per address it names, all on
// one port.
class Listener {
 public:
  Listener(asio::io_context& io, Core& core, StartSession start_session)
      : io_(io), core_(core), start_session_(start_session) {}

  // `endpoints`: what listen_endpoints(address) gave.
  Status open(std::string_view address, const std::vector<tcp::endpoint>& endpoints) {
    // Port 0 lets the first bind pick a port, which the other addresses may
    // have taken: pick again then.
    constexpr int kPortPicksMax = 8;
    const bool pick = endpoints.front().port() == 0;
    Status opened;
    for (int picks = 0; picks < kPortPicksMax; picks++) {
      opened = open_all(address, endpoints);
      if (opened.ok() || !pick || !port_in_use_) break;
    }
    return opened;
  }

  std::uint16_t port() const { return port_; }

  void accept() {
    for (Accepting& accepting : acceptors_) accept_on(accepting);
  }

  void close() {
    for (Accepting& accepting : acceptors_) {
      asio::post(accepting.acceptor.get_executor(), [&accepting] {
        boost::system::error_code ignored;
        accepting.acceptor.close(ignored);
        accepting.retry.cancel();
      });
    }
  }

 private:
  // Binds every endpoint, on the port the first one got. An address this
  // host cannot take (a name's ::1 where IPv6 is off) is skipped, with a
  // logged line, as long as another one is bound.
  Status open_all(std::string_view address, const std::vector<tcp::endpoint>& endpoints) {
    acceptors_.clear();
    port_ = 0;
    port_in_use_ = false;
    for (tcp::endpoint endpoint : endpoints) {
      if (port_ != 0) endpoint.port(port_);
      Accepting& accepting = acceptors_.emplace_back(io_);
      tcp::acceptor& acceptor = accepting.acceptor;
      boost::system::error_code ec;
      if (!acceptor.open(endpoint.protocol(), ec) &&
          !acceptor.set_option(tcp::acceptor::reuse_address(true), ec) &&
          endpoint.address().is_v6() && endpoints.size() > 1) {
        acceptor.set_option(asio::ip::v6_only(true), ec);  // its IPv4 twin has its own
      }
      if (!ec && !acceptor.bind(endpoint, ec)) {
        acceptor.listen(asio::socket_base::max_listen_connections, ec);
      }
      if (!ec) {
        const tcp::endpoint bound = acceptor.local_endpoint(ec);
        port_ = bound.port();
        std::ostringstream where;
        where << bound;
        accepting.prefix = "listening on " + where.str() + ": ";
        continue;
      }
      namespace errc = boost::system::errc;
      const bool unavailable = ec == errc::address_not_available ||
                               ec == errc::address_family_not_supported;
      const std::string where = std::string(address) + " (" + endpoint.address().to_string() + ")";
      acceptors_.pop_back();
      if (unavailable && endpoints.size() > 1) {
        core_.log("not listening on " + where + ": " + ec.message());
        continue;
      }
      port_in_use_ = ec == asio::error::address_in_use && port_ != 0;
      acceptors_.clear();
      return Status(ErrorCode::io_error, "cannot listen on " + where + ": " + ec.message());
    }
    if (acceptors_.empty()) {
      return Status(ErrorCode::io_error, "cannot listen on " + std::string(address) +
                                             ": none of its addresses could be bound");
    }
    return Status();
  }

  // An acceptor, and what it does when accepting fails.
  struct Accepting {
    explicit Accepting(asio::io_context& io)
        : acceptor(asio::make_strand(io)), retry(acceptor.get_executor()) {}
    tcp::acceptor acceptor;
    asio::steady_timer retry;  // the pause after a failed accept
    server_detail::AcceptNotes notes;
    tcp::endpoint peer;  // of the connection being accepted
    // "listening on HOST:PORT: ", before its lines: each listener says its
    // own, and they must not read as one said twice.
    std::string prefix;
  };

  // Out of descriptors (EMFILE) or memory, an accept fails again at once
  // for as long as it lasts: the next waits a while.
  static constexpr std::chrono::milliseconds kAcceptRetry{100};

  void accept_on(Accepting& accepting) {
    accepting.acceptor.async_accept(
        asio::make_strand(io_), accepting.peer,
        [this, &accepting](boost::system::error_code ec, tcp::socket socket) {
          tcp::acceptor& acceptor = accepting.acceptor;
          if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
          if (!ec) {
            if (accepting.notes.accepted()) {
              core_.log(accepting.prefix + "accepting connections again");
            }
            socket.set_option(tcp::no_delay(true), ec);
            server_detail::keep_alive(socket);
            start_session_(core_, std::move(socket), server_detail::peer_of(accepting.peer));
            return accept_on(accepting);
          }
          // A peer that left before it was accepted is nobody's concern.
          if (ec == asio::error::connection_aborted) return accept_on(accepting);
          core_.metrics().accept_failed();
          const std::int64_t now_ns = server_detail::steady_now_ns();
          if (auto line = accepting.notes.failed(now_ns, ec.message(), kAcceptRetry)) {
            core_.log(accepting.prefix + *line);
          }
          accepting.retry.expires_after(kAcceptRetry);
          accepting.retry.async_wait([this, &accepting](boost::system::error_code wait_ec) {
            if (!wait_ec && accepting.acceptor.is_open()) accept_on(accepting);
          });
        });
  }

  asio::io_context& io_;
  Core& core_;
  std::deque<Accepting> acceptors_;  // a deque: accept_on() holds references
  StartSession start_session_;
  std::uint16_t port_ = 0;
  bool port_in_use_ = false;  // open_all() failed on a port an earlier address picked
};

}  // namespace

struct Server::Impl {
  explicit Impl(ServerOptions options)
      : core(std::move(options)), io(static_cast<int>(core.options().io_threads)),
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

namespace {

// Where each listener binds; empty: that listener is off.
struct ListenPlan {
  std::vector<tcp::endpoint> binary;
  std::vector<tcp::endpoint> http;
};

// What bind() checks before it binds anything (limits, token size,
// addresses), and the addresses it then binds.
Result<ListenPlan> check_options(const ServerOptions& options) {
  if (options.io_threads == 0 || options.read_threads == 0 || options.connections_max == 0 ||
      options.inflight_per_connection_max == 0 || options.follows_per_connection_max == 0 ||
      options.idle_timeout_ms <= 0) {
    return Status(ErrorCode::invalid, "server limits must be positive");
  }
  if (options.token.size() > wire::kTokenBytesMax) {
    return Status(ErrorCode::invalid, "the token is longer than " +
                                          std::to_string(wire::kTokenBytesMax) + " bytes");
  }
  ListenPlan plan;
  for (auto [address, endpoints] : {std::pair{&options.binary_listen, &plan.binary},
                                    std::pair{&options.http_listen, &plan.http}}) {
    if (address->empty()) continue;  // that listener is off
    auto resolved = listen_endpoints(*address, !options.token.empty());
    if (!resolved) return resolved.status();
    *endpoints = std::move(*resolved);
  }
  return plan;
}

}  // namespace

Result<std::unique_ptr<Server>> Server::bind(ServerOptions options) {
  auto plan = check_options(options);
  if (!plan) return plan.status();
  bound_waits_ms({&options.idle_timeout_ms, &options.shutdown_grace_ms});
  std::unique_ptr<Impl> impl;
  try {
    // The read pool starts threads as it is built, and the io_context opens
    // an epoll descriptor: Asio and std::thread report failures by
    // throwing, which must not cross the API.
    impl = std::make_unique<Impl>(std::move(options));
  } catch (const std::exception& error) {
    return Status(ErrorCode::io_error, std::string("starting the server: ") + error.what());
  }
  const ServerOptions& opts = impl->core.options();
  if (!opts.binary_listen.empty()) {
    auto listener = std::make_unique<Listener>(impl->io, impl->core, &server_detail::start_binary_session);
    TALLY_TRY(listener->open(opts.binary_listen, plan->binary));
    impl->binary_port = listener->port();
    impl->listeners.push_back(std::move(listener));
  }
  if (!opts.http_listen.empty()) {
    auto listener = std::make_unique<Listener>(impl->io, impl->core, &server_detail::start_http_session);
    TALLY_TRY(listener->open(opts.http_listen, plan->http));
    impl->http_port = listener->port();
    impl->listeners.push_back(std::move(listener));
  }
  for (auto& listener : impl->listeners) listener->accept();
  // ~Server stops what started if a thread fails to.
  std::unique_ptr<Server> server(new Server(std::move(impl)));
  Impl& started = *server->impl_;
  for (std::size_t index = 0; index < opts.io_threads; index++) {
    auto thread = start_thread("tally-net", [io = &started.io] { io->run(); });
    if (!thread) return thread.status();
    started.threads.push_back(std::move(*thread));
  }
  return server;
}

Status Server::serve(Ledger* ledger) {
  TALLY_ASSERT(ledger != nullptr && !impl_->stopped);
  try {
    impl_->core.serve(ledger);  // the event feed's watcher thread
  } catch (const std::exception& error) {
    return Status(ErrorCode::io_error, std::string("starting the server: ") + error.what());
  }
  return Status();
}

Result<std::unique_ptr<Server>> Server::start(Ledger* ledger, ServerOptions options) {
  TALLY_ASSERT(ledger != nullptr);
  auto server = bind(std::move(options));
  if (!server) return server.status();
  TALLY_TRY((*server)->serve(ledger));
  return server;
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
  // against a destroyed io_context. A wait that lasts (a disk whose syncs
  // hang) says so every 10 s.
  constexpr auto kSayEvery = std::chrono::seconds(10);
  auto said = std::chrono::steady_clock::now();
  for (std::int64_t left; (left = impl.core.completing()) > 0;) {
    if (std::chrono::steady_clock::now() - said >= kSayEvery) {
      impl.core.log("shutdown: waiting for " + std::to_string(left) +
                    " requests in flight in the ledger to complete");
      said = std::chrono::steady_clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl.work.reset();
  impl.io.stop();
  for (auto& thread : impl.threads) thread.join();
  impl.core.join_reads();
}

}  // namespace tally
