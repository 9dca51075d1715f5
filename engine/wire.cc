#include "engine/wire.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstring>

#include "engine/decide.h"
#include "engine/protocol.capnp.h"

namespace tally::wire {

namespace {

static_assert(sizeof(capnp::word) == sizeof(std::uint64_t));
static_assert(static_cast<int>(ErrorCode::busy) == static_cast<int>(proto::ErrorCode::BUSY));
static_assert(static_cast<int>(ErrorCode::invalid) == static_cast<int>(proto::ErrorCode::INVALID));
static_assert(static_cast<int>(Outcome::hold_finalized) ==
              static_cast<int>(proto::Outcome::HOLD_FINALIZED));
static_assert(static_cast<int>(OpType::release) == static_cast<int>(proto::OpType::RELEASE));
static_assert(static_cast<int>(HoldStatus::expired) == static_cast<int>(proto::HoldStatus::EXPIRED));

std::uint32_t load_le32(const std::byte* bytes) {
  std::uint32_t value = 0;
  for (int index = 3; index >= 0; index--) {
    value = (value << 8) | std::to_integer<std::uint32_t>(bytes[index]);
  }
  return value;
}

capnp::Data::Reader as_data(std::string_view text) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(text.data()), text.size());
}

std::string as_string(capnp::Data::Reader bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Most messages fit in this, so building one zeroes 512 bytes, not the
// builder's default 8 KiB; a larger one grows into more segments.
constexpr unsigned kFirstSegmentWords = 64;

// The first segment of every message this thread builds, so that building
// one allocates nothing: MallocMessageBuilder takes it zeroed and zeroes
// what it used when destroyed. Builders on one thread never nest here.
kj::ArrayPtr<capnp::word> first_segment() {
  alignas(capnp::word) thread_local std::byte words[kFirstSegmentWords * sizeof(capnp::word)]{};
  return kj::arrayPtr(reinterpret_cast<capnp::word*>(words), kFirstSegmentWords);
}

// The message in stream framing, written straight into *out in place of
// what it held (its capacity kept).
void frame_into(capnp::MessageBuilder& builder, std::string* out) {
  const auto segments = builder.getSegmentsForOutput();
  out->resize(capnp::computeSerializedSizeInWords(segments) * sizeof(capnp::word));
  kj::ArrayOutputStream stream(kj::arrayPtr(reinterpret_cast<kj::byte*>(out->data()), out->size()));
  capnp::writeMessage(stream, segments);
}

std::string frame(capnp::MessageBuilder& builder) {
  std::string out;
  frame_into(builder, &out);
  return out;
}

capnp::ReaderOptions reader_options(FrameView frame) {
  capnp::ReaderOptions options;
  // A frame cannot legitimately point at more than it holds; twice its size
  // leaves room for Cap'n Proto's accounting of list headers.
  options.traversalLimitInWords = 2 * frame.size() + 16;
  options.nestingLimit = kNestingMax;
  return options;
}

kj::ArrayPtr<const capnp::word> words_of(FrameView frame) {
  return kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(frame.data()),
                                         frame.size());
}

void encode_op(const OpRequest& op, proto::Op::Builder out) {
  out.setType(static_cast<proto::OpType>(op.type));
  out.setSubject(as_data(op.subject));
  out.setItem(as_data(op.item));
  out.setTo(as_data(op.to));
  out.setQty(op.qty);
  out.setTtlNs(op.ttl_ns);
  out.setHold(op.hold);
  out.setHoldKey(as_data(op.hold_key));
}

Status decode_op(proto::Op::Reader op, OpRequest* out) {
  const auto type = static_cast<std::uint16_t>(op.getType());
  if (type > static_cast<std::uint16_t>(proto::OpType::RELEASE)) {
    return Status(ErrorCode::invalid, "unknown op type " + std::to_string(type));
  }
  out->type = static_cast<OpType>(type);
  out->subject = as_string(op.getSubject());
  out->item = as_string(op.getItem());
  out->to = as_string(op.getTo());
  out->qty = op.getQty();
  out->ttl_ns = op.getTtlNs();
  out->hold = op.getHold();
  out->hold_key = as_string(op.getHoldKey());
  return Status();
}

void encode_as_of(const AsOf& at, proto::AsOf::Builder out) {
  if (at.kind == AsOf::Kind::seq) {
    out.setSeq(at.seq);
  } else {
    out.setTimeNs(at.time_ns);
  }
}

// A discriminant this version does not know (a later client's kind of
// point) is refused rather than read as one of ours: answering for another
// point than the one asked would be a wrong answer, not an error.
Status decode_as_of(proto::AsOf::Reader in, std::optional<AsOf>* out) {
  switch (in.which()) {
    case proto::AsOf::SEQ: *out = AsOf::at_seq(in.getSeq()); return Status();
    case proto::AsOf::TIME_NS: *out = AsOf::at_time(in.getTimeNs()); return Status();
  }
  return Status(ErrorCode::invalid,
                "unknown asOf kind " + std::to_string(static_cast<unsigned>(in.which())));
}

void encode_mutation(const Command& command, proto::Mutation::Builder out) {
  out.setKey(as_data(command.key));
  out.setReason(as_data(command.meta.reason));
  out.setReference(as_data(command.meta.reference));
  out.setActor(as_data(command.meta.actor));
  out.setBatch(command.batch);
  // A single command's op goes first, then any `ops` it also has: the
  // server's Ledger refuses such a command as an embedded one does ("ops are
  // given but batch is not set"), where dropping them would apply the op.
  const unsigned first = command.batch ? 0 : 1;
  auto ops = out.initOps(static_cast<unsigned>(first + command.ops.size()));
  if (!command.batch) encode_op(command.op, ops[0]);
  for (std::size_t index = 0; index < command.ops.size(); index++) {
    encode_op(command.ops[index], ops[first + static_cast<unsigned>(index)]);
  }
}

Status decode_mutation(proto::Mutation::Reader mutation, Command* out) {
  out->key = as_string(mutation.getKey());
  out->meta.reason = as_string(mutation.getReason());
  out->meta.reference = as_string(mutation.getReference());
  out->meta.actor = as_string(mutation.getActor());
  out->batch = mutation.getBatch();
  const auto ops = mutation.getOps();
  if (ops.size() > kBatchOpsMax) return detail::batch_too_large();
  // A single mutation's first op is its op; more ops are kept as the
  // Command's `ops`, for the Ledger to refuse as it refuses them from an
  // embedded caller (one check, in engine/decide.cc, for both).
  unsigned first = 0;
  if (!out->batch) {
    if (ops.size() == 0) return Status(ErrorCode::invalid, "a single mutation needs one op");
    TALLY_TRY(decode_op(ops[0], &out->op));
    first = 1;
  }
  out->ops.resize(ops.size() - first);
  for (unsigned index = first; index < ops.size(); index++) {
    TALLY_TRY(decode_op(ops[index], &out->ops[index - first]));
  }
  return Status();
}

Status decode_request_fields(proto::Request::Reader in, Request* out) {
  out->id = in.getId();
  switch (in.which()) {
    case proto::Request::HELLO:
      out->kind = Request::Kind::hello;
      out->version = in.getHello().getVersion();
      out->token = as_string(in.getHello().getToken());
      if (out->token.size() > kTokenBytesMax) return Status(ErrorCode::invalid, "token too long");
      return Status();
    case proto::Request::MUTATION:
      out->kind = Request::Kind::mutation;
      return decode_mutation(in.getMutation(), &out->command);
    case proto::Request::BALANCE:
      out->kind = Request::Kind::balance;
      out->subject = as_string(in.getBalance().getSubject());
      out->item = as_string(in.getBalance().getItem());
      if (!in.getBalance().hasAsOf()) return Status();
      return decode_as_of(in.getBalance().getAsOf(), &out->as_of);
    case proto::Request::LIST:
      out->kind = Request::Kind::list;
      out->subject = as_string(in.getList().getSubject());
      if (!in.getList().hasAsOf()) return Status();
      return decode_as_of(in.getList().getAsOf(), &out->as_of);
    case proto::Request::HOLD_INFO:
      out->kind = Request::Kind::hold_info;
      out->hold = in.getHoldInfo();
      return Status();
    case proto::Request::HOLD_INFO_AT:
      out->kind = Request::Kind::hold_info;
      out->hold = in.getHoldInfoAt().getHold();
      if (!in.getHoldInfoAt().hasAsOf()) return Status();
      return decode_as_of(in.getHoldInfoAt().getAsOf(), &out->as_of);
    case proto::Request::FOLLOW:
      out->kind = Request::Kind::follow;
      out->from_seq = in.getFollow().getFromSeq();
      out->max_events = in.getFollow().getMaxEvents();
      return Status();
    case proto::Request::CANCEL:
      out->kind = Request::Kind::cancel;
      out->follow_id = in.getCancel();
      return Status();
  }
  return Status(ErrorCode::invalid, "unknown request kind");
}

void encode_receipt(const Receipt& receipt, proto::Receipt::Builder out) {
  out.setOutcome(static_cast<proto::Outcome>(receipt.outcome));
  out.setReplay(receipt.replay);
  out.setSeq(receipt.seq);
  out.setTimestampNs(receipt.timestamp_ns);
  out.setHold(receipt.hold);
  out.setFailedIndex(receipt.failed_index);
  auto holds = out.initHolds(static_cast<unsigned>(receipt.holds.size()));
  for (unsigned index = 0; index < holds.size(); index++) holds.set(index, receipt.holds[index]);
}

Status decode_receipt(proto::Receipt::Reader in, Receipt* out) {
  const auto outcome = static_cast<std::uint16_t>(in.getOutcome());
  if (outcome > static_cast<std::uint16_t>(proto::Outcome::HOLD_FINALIZED)) {
    return Status(ErrorCode::invalid, "outcome " + std::to_string(outcome));
  }
  out->outcome = static_cast<Outcome>(outcome);
  out->replay = in.getReplay();
  out->seq = in.getSeq();
  out->timestamp_ns = in.getTimestampNs();
  out->hold = in.getHold();
  out->failed_index = in.getFailedIndex();
  for (const std::uint64_t hold : in.getHolds()) out->holds.push_back(hold);
  return Status();
}

void encode_hold_view(const HoldView& hold, proto::HoldView::Builder out) {
  out.setId(hold.id);
  out.setSubject(as_data(hold.subject));
  out.setItem(as_data(hold.item));
  out.setQty(hold.qty);
  out.setExpiresAtNs(hold.expires_at_ns);
  out.setStatus(static_cast<proto::HoldStatus>(hold.status));
  out.setCommittedQty(hold.committed_qty);
}

Status decode_hold_view(proto::HoldView::Reader in, HoldView* out) {
  const auto status = static_cast<std::uint16_t>(in.getStatus());
  if (status > static_cast<std::uint16_t>(proto::HoldStatus::EXPIRED)) {
    return Status(ErrorCode::invalid, "hold status " + std::to_string(status));
  }
  out->id = in.getId();
  out->subject = as_string(in.getSubject());
  out->item = as_string(in.getItem());
  out->qty = in.getQty();
  out->expires_at_ns = in.getExpiresAtNs();
  out->status = static_cast<HoldStatus>(status);
  out->committed_qty = in.getCommittedQty();
  return Status();
}

// The error a request gets for a well-formed answer holding a value this
// version does not know (a newer server's): io_error, as its outcome is
// unknown here, rather than the connection dropped over it.
Status unknown_answer(const std::string& what) {
  return Status(ErrorCode::io_error, "the server answered with " + what +
                                         ", which this version does not know (a newer "
                                         "server?): the outcome is unknown");
}

// Makes `out` the error answer to its request: the answer was `refused`.
Status answer_unknown(const Status& refused, Response* out) {
  const std::uint64_t id = out->id;
  *out = Response();
  out->id = id;
  out->kind = Response::Kind::error;
  out->error = unknown_answer(refused.message());
  out->unknown = true;
  return Status();
}

Status decode_error(proto::Error::Reader in, Response* out) {
  const auto code = static_cast<std::uint16_t>(in.getCode());
  const std::string message(in.getMessage().cStr());
  if (code == static_cast<std::uint16_t>(proto::ErrorCode::UNAUTHORIZED)) {
    out->unauthorized = true;
    out->error = Status(ErrorCode::invalid, "unauthorized: " + message);
    return Status();
  }
  if (code == 0 || code > static_cast<std::uint16_t>(proto::ErrorCode::BUSY)) {
    out->error = unknown_answer("error code " + std::to_string(code) + " (" + message + ")");
    out->unknown = true;
    return Status();
  }
  out->error = Status(static_cast<ErrorCode>(code), message);
  return Status();
}

void encode_event_batch(const Response& response, proto::EventBatch::Builder out) {
  auto events = out.initEvents(static_cast<unsigned>(response.events.size()));
  for (unsigned index = 0; index < events.size(); index++) {
    const std::span<const std::byte> payload = response.events[index];
    events.set(index, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(payload.data()), payload.size()));
  }
  out.setNextSeq(response.next_seq);
  out.setEnd(response.end);
}

Status decode_event_batch(proto::EventBatch::Reader in, Response* out) {
  const auto events = in.getEvents();
  out->next_seq = in.getNextSeq();
  out->end = in.getEnd();
  if (events.size() > out->next_seq) return Status(ErrorCode::invalid, "a batch ends before seq 1");
  if (out->end && events.size() != 0) return Status(ErrorCode::invalid, "a follow's end carries events");
  for (const capnp::Data::Reader event : events) {
    out->events.append(std::span(reinterpret_cast<const std::byte*>(event.begin()), event.size()));
  }
  return Status();
}

Status decode_response_fields(proto::Response::Reader in, Response* out) {
  out->id = in.getId();
  switch (in.which()) {
    case proto::Response::ERROR:
      out->kind = Response::Kind::error;
      return decode_error(in.getError(), out);
    case proto::Response::RECEIPT:
      out->kind = Response::Kind::receipt;
      if (Status known = decode_receipt(in.getReceipt(), &out->receipt); !known.ok()) {
        return answer_unknown(known, out);
      }
      return Status();
    case proto::Response::BALANCE:
      out->kind = Response::Kind::balance;
      out->balance = Balance{in.getBalance().getAvailable(), in.getBalance().getHeld()};
      return Status();
    case proto::Response::LIST:
      out->kind = Response::Kind::list;
      for (const auto item : in.getList()) {
        out->items.push_back(ItemBalance{as_string(item.getItem()),
                                         Balance{item.getAvailable(), item.getHeld()}});
      }
      return Status();
    case proto::Response::HOLD_INFO:
      out->kind = Response::Kind::hold_info;
      if (Status known = decode_hold_view(in.getHoldInfo(), &out->hold); !known.ok()) {
        return answer_unknown(known, out);
      }
      return Status();
    case proto::Response::HELLO:
      out->kind = Response::Kind::hello;
      out->ledger_id = in.getLedgerId();
      return Status();
    case proto::Response::EVENTS:
      out->kind = Response::Kind::events;
      return decode_event_batch(in.getEvents(), out);
  }
  return answer_unknown(Status(ErrorCode::invalid, "a kind of answer"), out);
}

}  // namespace

void EventPayloads::append(std::span<const std::byte> payload) {
  const std::size_t word = words_.size();
  words_.resize(word + (payload.size() + sizeof(std::uint64_t) - 1) / sizeof(std::uint64_t), 0);
  if (!payload.empty()) std::memcpy(words_.data() + word, payload.data(), payload.size());
  spans_.push_back(Span{word, payload.size()});
}

std::span<const std::byte> EventPayloads::operator[](std::size_t index) const {
  TALLY_ASSERT(index < spans_.size());
  const Span& span = spans_[index];
  return std::span(reinterpret_cast<const std::byte*>(words_.data() + span.word), span.bytes);
}

Result<std::size_t> table_bytes(std::span<const std::byte> first) {
  TALLY_ASSERT(first.size() >= kFirstBytes);
  const std::uint64_t segments = std::uint64_t{load_le32(first.data())} + 1;
  if (segments > kSegmentsMax) {
    return Status(ErrorCode::invalid, "frame has " + std::to_string(segments) + " segments");
  }
  // One uint32 for the count, one per segment size, padded to a word.
  return static_cast<std::size_t>((4 + 4 * segments + 7) / 8 * 8);
}

Result<std::size_t> frame_bytes(std::span<const std::byte> table, std::size_t frame_bytes_max) {
  auto table_size = table_bytes(table);
  if (!table_size) return table_size.status();
  TALLY_ASSERT(table.size() >= *table_size);
  const std::uint64_t segments = std::uint64_t{load_le32(table.data())} + 1;
  std::uint64_t total = *table_size;
  for (std::uint64_t segment = 0; segment < segments; segment++) {
    total += std::uint64_t{load_le32(table.data() + 4 + 4 * segment)} * sizeof(capnp::word);
  }
  if (total > frame_bytes_max) {
    return Status(ErrorCode::invalid, "frame of " + std::to_string(total) +
                                          " bytes exceeds the limit of " +
                                          std::to_string(frame_bytes_max));
  }
  return static_cast<std::size_t>(total);
}

std::string encode_request(const Request& request) {
  capnp::MallocMessageBuilder builder(first_segment());
  auto out = builder.initRoot<proto::Request>();
  out.setId(request.id);
  switch (request.kind) {
    case Request::Kind::hello: {
      auto hello = out.initHello();
      hello.setVersion(request.version);
      hello.setToken(as_data(request.token));
      break;
    }
    case Request::Kind::mutation: encode_mutation(request.command, out.initMutation()); break;
    case Request::Kind::balance: {
      auto query = out.initBalance();
      query.setSubject(as_data(request.subject));
      query.setItem(as_data(request.item));
      if (request.as_of) encode_as_of(*request.as_of, query.initAsOf());
      break;
    }
    case Request::Kind::list: {
      auto query = out.initList();
      query.setSubject(as_data(request.subject));
      if (request.as_of) encode_as_of(*request.as_of, query.initAsOf());
      break;
    }
    case Request::Kind::hold_info:
      if (!request.as_of) {
        out.setHoldInfo(request.hold);
        break;
      }
      {
        auto query = out.initHoldInfoAt();
        query.setHold(request.hold);
        encode_as_of(*request.as_of, query.initAsOf());
      }
      break;
    case Request::Kind::follow: {
      auto follow = out.initFollow();
      follow.setFromSeq(request.from_seq);
      follow.setMaxEvents(request.max_events);
      break;
    }
    case Request::Kind::cancel: out.setCancel(request.follow_id); break;
  }
  return frame(builder);
}

std::string encode_response(const Response& response) {
  std::string out;
  encode_response_into(response, &out);
  return out;
}

void encode_response_into(const Response& response, std::string* bytes) {
  capnp::MallocMessageBuilder builder(first_segment());
  auto out = builder.initRoot<proto::Response>();
  out.setId(response.id);
  switch (response.kind) {
    case Response::Kind::error: {
      auto error = out.initError();
      error.setCode(response.unauthorized ? proto::ErrorCode::UNAUTHORIZED
                                          : static_cast<proto::ErrorCode>(response.error.code()));
      error.setMessage(response.error.message());
      break;
    }
    case Response::Kind::receipt: encode_receipt(response.receipt, out.initReceipt()); break;
    case Response::Kind::balance: {
      auto balance = out.initBalance();
      balance.setAvailable(response.balance.available);
      balance.setHeld(response.balance.held);
      break;
    }
    case Response::Kind::list: {
      auto items = out.initList(static_cast<unsigned>(response.items.size()));
      for (unsigned index = 0; index < items.size(); index++) {
        items[index].setItem(as_data(response.items[index].item));
        items[index].setAvailable(response.items[index].balance.available);
        items[index].setHeld(response.items[index].balance.held);
      }
      break;
    }
    case Response::Kind::hold_info: encode_hold_view(response.hold, out.initHoldInfo()); break;
    case Response::Kind::hello:
      out.setHello();
      out.setLedgerId(response.ledger_id);
      break;
    case Response::Kind::events: encode_event_batch(response, out.initEvents()); break;
  }
  frame_into(builder, bytes);
}

std::size_t list_answer_bytes_min(const std::vector<ItemBalance>& items) {
  // Each item: a struct of two data words and a pointer, and its name's
  // bytes rounded up to whole words.
  constexpr std::size_t kWordBytes = sizeof(capnp::word);
  constexpr std::size_t kItemStructBytes = 3 * kWordBytes;
  std::size_t bytes = 0;
  for (const ItemBalance& item : items) {
    bytes += kItemStructBytes + (item.item.size() + kWordBytes - 1) / kWordBytes * kWordBytes;
  }
  return bytes;
}

FrameReader::FrameReader(std::size_t frame_bytes_max, std::size_t buffer_bytes)
    : frame_bytes_max_(frame_bytes_max), buffer_bytes_(std::max(buffer_bytes, std::size_t{1024})),
      words_(buffer_bytes_ / sizeof(std::uint64_t)) {}

std::span<std::byte> FrameReader::space() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    // A large frame grew the buffer; give the memory back once it is gone.
    if (capacity_bytes() > 4 * buffer_bytes_) {
      words_.assign(buffer_bytes_ / sizeof(std::uint64_t), 0);
      words_.shrink_to_fit();
    }
  }
  // Room from begin_ on for a buffer's worth (which holds any segment
  // table), or for twice what came of the frame begun, up to all of it:
  // a peer that announces a large frame and sends little of it costs what
  // it sent, not what it announced.
  const std::size_t wanted =
      std::max(buffer_bytes_, std::min(frame_bytes_, 2 * (end_ - begin_)));
  if (begin_ + wanted > capacity_bytes() || end_ == capacity_bytes()) {
    std::memmove(bytes(), bytes() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    if (wanted > capacity_bytes()) words_.resize((wanted + 7) / 8);
  }
  // Full only if next() was not asked until it wanted more.
  TALLY_ASSERT(end_ < capacity_bytes());
  return std::span(bytes() + end_, capacity_bytes() - end_);
}

void FrameReader::commit(std::size_t bytes) {
  TALLY_ASSERT(end_ + bytes <= capacity_bytes());
  end_ += bytes;
}

Result<FrameView> FrameReader::next() {
  const std::size_t available = end_ - begin_;
  if (frame_bytes_ == 0) {
    if (available < kFirstBytes) return FrameView();
    const std::span<const std::byte> table(bytes() + begin_, available);
    auto table_size = table_bytes(table);
    if (!table_size) return table_size.status();
    if (available < *table_size) return FrameView();
    auto total = frame_bytes(table, frame_bytes_max_);
    if (!total) return total.status();
    frame_bytes_ = *total;
  }
  if (available < frame_bytes_) return FrameView();
  const FrameView frame(words_.data() + begin_ / sizeof(std::uint64_t), frame_bytes_ / sizeof(std::uint64_t));
  begin_ += frame_bytes_;
  frame_bytes_ = 0;
  return frame;
}

// Sets a refused request's `kind`, `command.batch` and `command.op.type`
// where the message tells them, and `refused_asks` when they say what it
// asked for.
void note_what_refused_asks(proto::Request::Reader in, Request* out) {
  switch (in.which()) {
    case proto::Request::MUTATION: {
      out->kind = Request::Kind::mutation;
      const auto mutation = in.getMutation();
      out->command.batch = mutation.getBatch();
      if (out->command.batch) {
        out->refused_asks = true;
        return;
      }
      const auto ops = mutation.getOps();
      if (ops.size() == 0) return;
      const auto type = static_cast<std::uint16_t>(ops[0].getType());
      if (type > static_cast<std::uint16_t>(proto::OpType::RELEASE)) return;
      out->command.op.type = static_cast<OpType>(type);
      out->refused_asks = true;
      return;
    }
    case proto::Request::BALANCE: out->kind = Request::Kind::balance; break;
    case proto::Request::LIST: out->kind = Request::Kind::list; break;
    case proto::Request::HOLD_INFO:
    case proto::Request::HOLD_INFO_AT: out->kind = Request::Kind::hold_info; break;
    // No op of the metrics.
    case proto::Request::HELLO: out->kind = Request::Kind::hello; return;
    case proto::Request::FOLLOW: out->kind = Request::Kind::follow; return;
    case proto::Request::CANCEL: out->kind = Request::Kind::cancel; return;
    default: out->unknown_kind = true; return;
  }
  out->refused_asks = true;
}

// The one place untrusted frames are decoded: kj::Exception is caught here
// and turned into an invalid Status (STYLE.md).
Result<Request> decode_request(FrameView frame) {
  Request request;
  try {
    capnp::FlatArrayMessageReader reader(words_of(frame), reader_options(frame));
    const proto::Request::Reader root = reader.getRoot<proto::Request>();
    Status refused = decode_request_fields(root, &request);
    if (!refused.ok()) {
      Request kept;
      kept.id = request.id;
      kept.refused = std::move(refused);
      note_what_refused_asks(root, &kept);
      request = std::move(kept);
    }
  } catch (const kj::Exception& exception) {
    return Status(ErrorCode::invalid, "malformed request: " +
                                          std::string(exception.getDescription().cStr()));
  }
  return request;
}

Result<Response> decode_response(FrameView frame) {
  Response response;
  try {
    capnp::FlatArrayMessageReader reader(words_of(frame), reader_options(frame));
    TALLY_TRY(decode_response_fields(reader.getRoot<proto::Response>(), &response));
  } catch (const kj::Exception& exception) {
    return Status(ErrorCode::invalid, "malformed response: " +
                                          std::string(exception.getDescription().cStr()));
  }
  return response;
}

}  // namespace tally::wire
