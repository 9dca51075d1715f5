#include "log/event.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include "log/events.capnp.h"

namespace tally::log {

namespace {

namespace s = ::tally::schema;

capnp::Data::Reader data_of(std::string_view text) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(text.data()), text.size());
}

std::string_view view_of(capnp::Data::Reader data) {
  return std::string_view(reinterpret_cast<const char*>(data.begin()), data.size());
}

s::Reason to_schema(Reason reason) {
  switch (reason) {
    case Reason::none: return s::Reason::NONE;
    case Reason::insufficient: return s::Reason::INSUFFICIENT;
    case Reason::overflow: return s::Reason::OVERFLOW;
    case Reason::hold_unknown: return s::Reason::HOLD_UNKNOWN;
    case Reason::hold_expired: return s::Reason::HOLD_EXPIRED;
    case Reason::hold_finalized: return s::Reason::HOLD_FINALIZED;
  }
  TALLY_ASSERT(false);
}

bool from_schema(s::Reason reason, Reason* out) {
  switch (reason) {
    case s::Reason::NONE: *out = Reason::none; return true;
    case s::Reason::INSUFFICIENT: *out = Reason::insufficient; return true;
    case s::Reason::OVERFLOW: *out = Reason::overflow; return true;
    case s::Reason::HOLD_UNKNOWN: *out = Reason::hold_unknown; return true;
    case s::Reason::HOLD_EXPIRED: *out = Reason::hold_expired; return true;
    case s::Reason::HOLD_FINALIZED: *out = Reason::hold_finalized; return true;
  }
  return false;  // an enumerant from a newer schema
}

void fill_amount(s::Amount::Builder b, const Op& op) {
  b.setSubject(data_of(op.subject));
  b.setItem(data_of(op.item));
  b.setQty(op.qty);
}

void fill_transfer(s::Transfer::Builder b, const Op& op) {
  b.setFrom(data_of(op.subject));
  b.setTo(data_of(op.to));
  b.setItem(data_of(op.item));
  b.setQty(op.qty);
}

void fill_hold(s::Hold::Builder b, const Op& op) {
  b.setSubject(data_of(op.subject));
  b.setItem(data_of(op.item));
  b.setQty(op.qty);
  b.setTtlNs(op.ttl_ns);
}

void fill_settle(s::Settle::Builder b, const Op& op) {
  b.setHold(op.hold);
  b.setSubject(data_of(op.subject));
  b.setItem(data_of(op.item));
  b.setQty(op.qty);
  b.setReleased(op.released);
  if (!op.hold_key.empty()) b.setHoldKey(data_of(op.hold_key));
}

void fill_op(s::Op::Builder b, const Op& op) {
  switch (op.type) {
    case OpType::acquire: fill_amount(b.initAcquire(), op); return;
    case OpType::consume: fill_amount(b.initConsume(), op); return;
    case OpType::transfer: fill_transfer(b.initTransfer(), op); return;
    case OpType::hold: fill_hold(b.initHold(), op); return;
    case OpType::commit: fill_settle(b.initCommit(), op); return;
    case OpType::release: fill_settle(b.initRelease(), op); return;
    case OpType::expire: break;  // not an operation a request can carry
  }
  TALLY_ASSERT(op.type != OpType::expire);
}

void fill_ops(capnp::List<s::Op>::Builder list, std::span<const Op> ops) {
  for (std::size_t op_index = 0; op_index < ops.size(); op_index++) {
    fill_op(list[static_cast<unsigned>(op_index)], ops[op_index]);
  }
}

void fill_body(s::Event::Body::Builder body, const Event& event) {
  if (event.rejected != Reason::none) {
    auto rejected = body.initRejected();
    rejected.setReason(to_schema(event.rejected));
    rejected.setIndex(event.failed_index);
    rejected.setBatch(event.batch);
    fill_ops(rejected.initRequest(static_cast<unsigned>(event.ops.size())), event.ops);
    return;
  }
  if (event.batch) {
    fill_ops(body.initBatch(static_cast<unsigned>(event.ops.size())), event.ops);
    return;
  }
  TALLY_ASSERT(event.ops.size() == 1);
  const Op& op = event.ops[0];
  switch (op.type) {
    case OpType::acquire: fill_amount(body.initAcquire(), op); return;
    case OpType::consume: fill_amount(body.initConsume(), op); return;
    case OpType::transfer: fill_transfer(body.initTransfer(), op); return;
    case OpType::hold: fill_hold(body.initHold(), op); return;
    case OpType::commit: fill_settle(body.initCommit(), op); return;
    case OpType::release: fill_settle(body.initRelease(), op); return;
    case OpType::expire: fill_settle(body.initExpire(), op); return;
  }
}

Op read_amount(OpType type, s::Amount::Reader r) {
  Op op;
  op.type = type;
  op.subject = view_of(r.getSubject());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  return op;
}

Op read_transfer(s::Transfer::Reader r) {
  Op op;
  op.type = OpType::transfer;
  op.subject = view_of(r.getFrom());
  op.to = view_of(r.getTo());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  return op;
}

Op read_hold(s::Hold::Reader r) {
  Op op;
  op.type = OpType::hold;
  op.subject = view_of(r.getSubject());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  op.ttl_ns = r.getTtlNs();
  return op;
}

Op read_settle(OpType type, s::Settle::Reader r) {
  Op op;
  op.type = type;
  op.hold = r.getHold();
  op.subject = view_of(r.getSubject());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  op.released = r.getReleased();
  op.hold_key = view_of(r.getHoldKey());
  return op;
}

// False for a union member this build does not know.
bool read_op(s::Op::Reader r, Op* out) {
  switch (r.which()) {
    case s::Op::ACQUIRE: *out = read_amount(OpType::acquire, r.getAcquire()); return true;
    case s::Op::CONSUME: *out = read_amount(OpType::consume, r.getConsume()); return true;
    case s::Op::TRANSFER: *out = read_transfer(r.getTransfer()); return true;
    case s::Op::HOLD: *out = read_hold(r.getHold()); return true;
    case s::Op::COMMIT: *out = read_settle(OpType::commit, r.getCommit()); return true;
    case s::Op::RELEASE: *out = read_settle(OpType::release, r.getRelease()); return true;
  }
  return false;
}

bool read_ops(capnp::List<s::Op>::Reader list, std::vector<Op>* ops) {
  if (list.size() > kBatchOpsMax) return false;
  ops->reserve(list.size());
  for (auto r : list) {
    Op op;
    if (!read_op(r, &op)) return false;
    ops->push_back(op);
  }
  return true;
}

// False when the body is of a kind this build does not know.
bool read_body(s::Event::Body::Reader body, Event* event, std::vector<Op>* ops) {
  switch (body.which()) {
    case s::Event::Body::ACQUIRE: ops->push_back(read_amount(OpType::acquire, body.getAcquire())); return true;
    case s::Event::Body::CONSUME: ops->push_back(read_amount(OpType::consume, body.getConsume())); return true;
    case s::Event::Body::TRANSFER: ops->push_back(read_transfer(body.getTransfer())); return true;
    case s::Event::Body::HOLD: ops->push_back(read_hold(body.getHold())); return true;
    case s::Event::Body::COMMIT: ops->push_back(read_settle(OpType::commit, body.getCommit())); return true;
    case s::Event::Body::RELEASE: ops->push_back(read_settle(OpType::release, body.getRelease())); return true;
    case s::Event::Body::EXPIRE: ops->push_back(read_settle(OpType::expire, body.getExpire())); return true;
    case s::Event::Body::BATCH:
      event->batch = true;
      return read_ops(body.getBatch(), ops);
    case s::Event::Body::REJECTED: {
      auto rejected = body.getRejected();
      event->batch = rejected.getBatch();
      event->failed_index = rejected.getIndex();
      if (!from_schema(rejected.getReason(), &event->rejected)) return false;
      if (event->rejected == Reason::none) return false;
      return read_ops(rejected.getRequest(), ops);
    }
  }
  return false;
}

}  // namespace

std::string_view op_type_name(OpType type) {
  switch (type) {
    case OpType::acquire: return "acquire";
    case OpType::consume: return "consume";
    case OpType::transfer: return "transfer";
    case OpType::hold: return "hold";
    case OpType::commit: return "commit";
    case OpType::release: return "release";
    case OpType::expire: return "expire";
  }
  return "unknown";
}

std::string_view reason_name(Reason reason) {
  switch (reason) {
    case Reason::none: return "ok";
    case Reason::insufficient: return "insufficient";
    case Reason::overflow: return "overflow";
    case Reason::hold_unknown: return "hold_unknown";
    case Reason::hold_expired: return "hold_expired";
    case Reason::hold_finalized: return "hold_finalized";
  }
  return "unknown";
}

// Events are small; the first segment covers all but large batches, so the
// builder allocates nothing on the append path.
struct EventEncoder::Impl {
  static constexpr std::size_t kScratchWords = 1024;
  // Value-initialized: the builder requires a zeroed first segment.
  std::unique_ptr<capnp::word[]> scratch = std::make_unique<capnp::word[]>(kScratchWords);
  std::vector<capnp::word> out;
};

EventEncoder::EventEncoder() : impl_(std::make_unique<Impl>()) {
  impl_->out.reserve(Impl::kScratchWords + 16);
}

EventEncoder::~EventEncoder() = default;

std::span<const std::byte> EventEncoder::encode(const Event& event) {
  // The builder zeroes the scratch it used when it is destroyed, ready for
  // the next event.
  capnp::MallocMessageBuilder message(kj::arrayPtr(impl_->scratch.get(), Impl::kScratchWords));
  auto root = message.initRoot<s::Event>();
  root.setSeq(event.seq);
  root.setTimestamp(event.timestamp_ns);
  root.setKey(data_of(event.key));
  root.setFingerprint(event.fingerprint);
  if (!event.meta.reason.empty() || !event.meta.reference.empty() || !event.meta.actor.empty()) {
    auto meta = root.initMeta();
    meta.setReason(data_of(event.meta.reason));
    meta.setReference(data_of(event.meta.reference));
    meta.setActor(data_of(event.meta.actor));
  }
  fill_body(root.initBody(), event);

  auto segments = message.getSegmentsForOutput();
  impl_->out.resize(capnp::computeSerializedSizeInWords(segments));
  kj::ArrayOutputStream stream(kj::arrayPtr(reinterpret_cast<kj::byte*>(impl_->out.data()),
                                            impl_->out.size() * sizeof(capnp::word)));
  capnp::writeMessage(stream, segments);
  TALLY_ASSERT(stream.getArray().size() == impl_->out.size() * sizeof(capnp::word));
  return std::span<const std::byte>(reinterpret_cast<const std::byte*>(impl_->out.data()),
                                    impl_->out.size() * sizeof(capnp::word));
}

// Room for a single-op event. ops_ grows to the largest batch decoded and
// stays, so a decoder allocates only for a batch larger than any before,
// and one that sees none costs no more: replay keeps hundreds of them
// (engine/replay.cc), and reserving kBatchOpsMax ops each was 100 MB of
// address space and a few thousand page faults per open.
EventDecoder::EventDecoder() { ops_.reserve(1); }
EventDecoder::~EventDecoder() = default;

Status EventDecoder::decode(std::span<const std::byte> payload, Event* event) {
  if (payload.size() % sizeof(capnp::word) != 0 ||
      reinterpret_cast<std::uintptr_t>(payload.data()) % alignof(capnp::word) != 0) {
    return Status(ErrorCode::corrupt, "event payload is not word-aligned");
  }
  ops_.clear();
  *event = Event{};
  bool known = false;
  // The payload passed its checksum, but it is still bytes from disk or a
  // network: decode under explicit limits and catch the one exception type
  // Cap'n Proto throws for malformed input.
  kj::Maybe<kj::Exception> error = kj::runCatchingExceptions([&]() {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = kDecodeTraversalWordsMax;
    options.nestingLimit = kDecodeNestingMax;
    capnp::FlatArrayMessageReader reader(
        kj::arrayPtr(reinterpret_cast<const capnp::word*>(payload.data()),
                     payload.size() / sizeof(capnp::word)),
        options);
    auto root = reader.getRoot<s::Event>();
    event->seq = root.getSeq();
    event->timestamp_ns = root.getTimestamp();
    event->key = view_of(root.getKey());
    event->fingerprint = root.getFingerprint();
    if (root.hasMeta()) {
      auto meta = root.getMeta();
      event->meta.reason = view_of(meta.getReason());
      event->meta.reference = view_of(meta.getReference());
      event->meta.actor = view_of(meta.getActor());
    }
    known = read_body(root.getBody(), event, &ops_);
  });
  KJ_IF_MAYBE(exception, error) {
    return Status(ErrorCode::corrupt,
                  std::string("undecodable event: ") + exception->getDescription().cStr());
  }
  if (!known) {
    return Status(ErrorCode::corrupt, "event of an unknown kind, or a batch of more than " +
                                          std::to_string(kBatchOpsMax) + " ops");
  }
  event->ops = std::span<const Op>(ops_.data(), ops_.size());
  return Status();
}

}  // namespace tally::log
