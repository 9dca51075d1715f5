#include "log/event.h"

#include <algorithm>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include "log/events.capnp.h"
#include "log/format.h"

namespace tally::log {

namespace {

namespace s = ::tally::schema;

capnp::Data::Reader data_of(std::string_view text) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(text.data()), text.size());
}

std::string_view view_of(capnp::Data::Reader data) {
  return std::string_view(reinterpret_cast<const char*>(data.begin()), data.size());
}
std::string_view view_of(std::string_view bytes) { return bytes; }

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

// ---- reading plain messages without the library ----------------------------
//
// Cap'n Proto's reader is the costliest part of reading the log: a
// MessageReader with its arena for every message, and a call into the
// library for every field, about a quarter of the replay's reading thread.
// The messages the engine writes are one segment with plain pointers. The
// structs below read those in place, where the schema's layout puts each
// field (`capnp compile -ocapnp log/events.capnp` prints it), with every
// pointer checked against the segment's bounds. Anything else, valid or
// not (a second segment, a far pointer, a list of another encoding, a
// target out of bounds, more words than the traversal limit), and they
// give up: then the library decodes the message, and its answer or its
// error is the one that stands. Where they do not give up, they read what
// the library reads: a field outside its struct's sections is its default,
// as is a null pointer's target.
namespace plain {

constexpr std::uint64_t kStructPointer = 0;
constexpr std::uint64_t kListPointer = 1;
constexpr std::uint64_t kByteElements = 2;
constexpr std::uint64_t kInlineComposite = 7;
constexpr std::uint64_t kSegmentWordsMax = std::uint64_t{1} << 29;
constexpr std::uint64_t kRootChargeWords = 2;

// Where a struct lies in the segment: its first word and the sizes of its
// sections. Eight bytes, so that it travels in a register: the readers
// below are passed by value, as the library's are, and a copy of one just
// stored through memory waits for the store buffer. All zero reads as
// defaults: no sections.
struct Target {
  std::uint32_t start = 0;
  std::uint16_t data_words = 0;
  std::uint16_t pointers = 0;
  std::uint64_t words() const { return std::uint64_t{data_words} + pointers; }
};

// A list of structs: where its first element lies, and how many there are.
struct ListTarget {
  Target first;
  std::uint32_t count = 0;
};

// The one segment of a message; every read of a pointer goes through it.
class Segment {
 public:
  // `message`: the segment table, then the segment. usable() says whether
  // that table is one of a single segment inside `message`.
  explicit Segment(std::span<const std::byte> message) {
    const std::size_t words = message.size() / 8;
    if (words < 2) return;
    const std::uint64_t table = load_u64(message.data());
    const std::uint64_t size = table >> 32;
    // The library refuses a segment of 2^29 words or more.
    if ((table & 0xffffffff) != 0 || size == 0 || size > words - 1 || size >= kSegmentWordsMax) {
      return;
    }
    words_ = message.data() + 8;
    count_ = size;
  }
  bool usable() const { return words_ != nullptr && !gave_up_; }
  bool gave_up() const { return gave_up_; }

  std::uint64_t word(std::size_t index) const { return load_u64(words_ + index * 8); }

  // The target of the struct pointer at `at`; none for a null pointer, or
  // when giving up.
  Target struct_at(std::size_t at) {
    const std::uint64_t bits = word(at);
    if (bits == 0) return Target();
    if ((bits & 3) != kStructPointer) return give_up<Target>();
    Target target;
    target.data_words = static_cast<std::uint16_t>(bits >> 32);
    target.pointers = static_cast<std::uint16_t>(bits >> 48);
    if (!locate(at, bits, target.words(), &target.start)) return Target();
    return target;
  }
  // The bytes of the Data pointer at `at`.
  std::string_view data_at(std::size_t at) {
    const std::uint64_t bits = word(at);
    if (bits == 0) return {};
    if ((bits & 3) != kListPointer || ((bits >> 32) & 7) != kByteElements) {
      return give_up<std::string_view>();
    }
    const std::uint64_t bytes = bits >> 35;
    std::uint32_t start = 0;
    if (!locate(at, bits, (bytes + 7) / 8, &start)) return {};
    return std::string_view(reinterpret_cast<const char*>(words_ + std::size_t{start} * 8), bytes);
  }
  // The list of structs at `at`; none (no elements) for a null pointer, or
  // when giving up.
  ListTarget list_at(std::size_t at) {
    const std::uint64_t bits = word(at);
    if (bits == 0) return ListTarget();
    if ((bits & 3) != kListPointer || ((bits >> 32) & 7) != kInlineComposite) {
      return give_up<ListTarget>();
    }
    const std::uint64_t words = bits >> 35;
    std::uint32_t tag_at = 0;
    if (!locate(at, bits, words + 1, &tag_at)) return ListTarget();
    const std::uint64_t tag = word(tag_at);
    if ((tag & 3) != kStructPointer) return give_up<ListTarget>();
    ListTarget list;
    list.first.start = tag_at + 1;
    list.first.data_words = static_cast<std::uint16_t>(tag >> 32);
    list.first.pointers = static_cast<std::uint16_t>(tag >> 48);
    list.count = static_cast<std::uint32_t>((tag & 0xffffffff) >> 2);
    if (list.count * list.first.words() > words) return give_up<ListTarget>();
    // The library counts an element of no words as one.
    if (!charge(list.count)) return ListTarget();
    return list;
  }

 private:
  template <class T>
  T give_up() {
    gave_up_ = true;
    return T();
  }
  // Counts `words` against the traversal limit, as much as the library
  // does or more: see charged_.
  bool charge(std::uint64_t words) {
    charged_ += words;
    if (charged_ > kDecodeTraversalWordsMax) gave_up_ = true;
    return !gave_up_;
  }
  // The target of the pointer `bits` at `at`, `words` long, in *start;
  // false, giving up, when it is not inside the segment.
  bool locate(std::size_t at, std::uint64_t bits, std::uint64_t words, std::uint32_t* start) {
    const std::int64_t offset = static_cast<std::int32_t>(static_cast<std::uint32_t>(bits)) >> 2;
    const std::int64_t target = static_cast<std::int64_t>(at) + 1 + offset;
    if (target < 0 || static_cast<std::uint64_t>(target) > count_ ||
        words > count_ - static_cast<std::uint64_t>(target)) {
      return give_up<bool>();
    }
    *start = static_cast<std::uint32_t>(target);  // count_ < 2^32
    return charge(words);
  }

  const std::byte* words_ = nullptr;
  std::uint64_t count_ = 0;
  // The library charges two words for the root pointer before it reads
  // anything, then for each object no more than its words (a list's tag
  // included). These charge that much, and each list's elements once more:
  // they give up on every message the library refuses for its limit
  // (log/event_test.cc tries both sides of it).
  std::uint64_t charged_ = kRootChargeWords;
  bool gave_up_ = false;
};

// A struct of the message, or none (default-constructed): fields past its
// sections, and all of none's, read as their defaults (zero, empty).
class Struct {
 public:
  Struct() = default;
  Struct(Segment* segment, Target target) : segment_(segment), target_(target) {}

 protected:
  std::uint64_t word(std::size_t index) const {
    return index < target_.data_words ? segment_->word(target_.start + index) : 0;
  }
  std::int64_t int64_at(std::size_t index) const { return static_cast<std::int64_t>(word(index)); }
  bool has(std::size_t pointer) const {
    return pointer < target_.pointers && segment_->word(pointer_at(pointer)) != 0;
  }
  template <class T>
  T struct_at(std::size_t pointer) const {
    if (pointer >= target_.pointers) return T();
    return T(segment_, segment_->struct_at(pointer_at(pointer)));
  }
  std::string_view data_at(std::size_t pointer) const {
    return pointer < target_.pointers ? segment_->data_at(pointer_at(pointer)) : std::string_view();
  }
  template <class List>
  List list_at(std::size_t pointer) const {
    if (pointer >= target_.pointers) return List();
    return List(segment_, segment_->list_at(pointer_at(pointer)));
  }

 private:
  std::size_t pointer_at(std::size_t pointer) const {
    return std::size_t{target_.start} + target_.data_words + pointer;
  }

  Segment* segment_ = nullptr;
  Target target_;
};

template <class T>
class List {
 public:
  List() = default;
  List(Segment* segment, ListTarget target) : segment_(segment), target_(target) {}
  unsigned size() const { return target_.count; }
  T operator[](unsigned index) const {
    Target element = target_.first;
    // Inside the list: count * words() was checked against its length.
    element.start += static_cast<std::uint32_t>(index * element.words());
    return T(segment_, element);
  }

 private:
  Segment* segment_ = nullptr;
  ListTarget target_;
};

// The schema's structs, with the names of the library's readers.
struct Amount : Struct {
  using Struct::Struct;
  std::string_view getSubject() const { return data_at(0); }
  std::string_view getItem() const { return data_at(1); }
  std::int64_t getQty() const { return int64_at(0); }
};

struct Transfer : Struct {
  using Struct::Struct;
  std::string_view getFrom() const { return data_at(0); }
  std::string_view getTo() const { return data_at(1); }
  std::string_view getItem() const { return data_at(2); }
  std::int64_t getQty() const { return int64_at(0); }
};

struct Hold : Struct {
  using Struct::Struct;
  std::string_view getSubject() const { return data_at(0); }
  std::string_view getItem() const { return data_at(1); }
  std::int64_t getQty() const { return int64_at(0); }
  std::int64_t getTtlNs() const { return int64_at(1); }
};

struct Settle : Struct {
  using Struct::Struct;
  std::uint64_t getHold() const { return word(0); }
  std::string_view getSubject() const { return data_at(0); }
  std::string_view getItem() const { return data_at(1); }
  std::int64_t getQty() const { return int64_at(1); }
  std::int64_t getReleased() const { return int64_at(2); }
  std::string_view getHoldKey() const { return data_at(2); }
};

struct Op : Struct {
  using Struct::Struct;
  s::Op::Which which() const { return static_cast<s::Op::Which>(word(0) & 0xffff); }
  Amount getAcquire() const { return struct_at<Amount>(0); }
  Amount getConsume() const { return struct_at<Amount>(0); }
  Transfer getTransfer() const { return struct_at<Transfer>(0); }
  Hold getHold() const { return struct_at<Hold>(0); }
  Settle getCommit() const { return struct_at<Settle>(0); }
  Settle getRelease() const { return struct_at<Settle>(0); }
};

struct Meta : Struct {
  using Struct::Struct;
  std::string_view getReason() const { return data_at(0); }
  std::string_view getReference() const { return data_at(1); }
  std::string_view getActor() const { return data_at(2); }
};

struct Rejected : Struct {
  using Struct::Struct;
  s::Reason getReason() const { return static_cast<s::Reason>(word(0) & 0xffff); }
  std::uint32_t getIndex() const { return static_cast<std::uint32_t>(word(0) >> 32); }
  bool getBatch() const { return ((word(0) >> 16) & 1) != 0; }
  List<Op> getRequest() const { return list_at<List<Op>>(0); }
};

// Event's body: a group, so fields of Event's own struct.
struct Body : Struct {
  explicit Body(const Struct& event) : Struct(event) {}
  s::Event::Body::Which which() const {
    return static_cast<s::Event::Body::Which>(word(3) & 0xffff);
  }
  Amount getAcquire() const { return struct_at<Amount>(2); }
  Amount getConsume() const { return struct_at<Amount>(2); }
  Transfer getTransfer() const { return struct_at<Transfer>(2); }
  Hold getHold() const { return struct_at<Hold>(2); }
  Settle getCommit() const { return struct_at<Settle>(2); }
  Settle getRelease() const { return struct_at<Settle>(2); }
  Settle getExpire() const { return struct_at<Settle>(2); }
  List<Op> getBatch() const { return list_at<List<Op>>(2); }
  Rejected getRejected() const { return struct_at<Rejected>(2); }
};

struct Event : Struct {
  using Struct::Struct;
  std::uint64_t getSeq() const { return word(0); }
  std::int64_t getTimestamp() const { return int64_at(1); }
  std::string_view getKey() const { return data_at(0); }
  std::uint64_t getFingerprint() const { return word(2); }
  bool hasMeta() const { return has(1); }
  Meta getMeta() const { return struct_at<Meta>(1); }
  Body getBody() const { return Body(*this); }
};

}  // namespace plain

template <class Amount>
Op read_amount(OpType type, Amount r) {
  Op op;
  op.type = type;
  op.subject = view_of(r.getSubject());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  return op;
}

template <class Transfer>
Op read_transfer(Transfer r) {
  Op op;
  op.type = OpType::transfer;
  op.subject = view_of(r.getFrom());
  op.to = view_of(r.getTo());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  return op;
}

template <class Hold>
Op read_hold(Hold r) {
  Op op;
  op.type = OpType::hold;
  op.subject = view_of(r.getSubject());
  op.item = view_of(r.getItem());
  op.qty = r.getQty();
  op.ttl_ns = r.getTtlNs();
  return op;
}

template <class Settle>
Op read_settle(OpType type, Settle r) {
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
template <class OpReader>
bool read_op(OpReader r, Op* out) {
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

template <class List>
bool read_ops(List list, std::vector<Op>* ops) {
  if (list.size() > kBatchOpsMax) return false;
  ops->reserve(list.size());
  for (unsigned index = 0; index < list.size(); index++) {
    Op op;
    if (!read_op(list[index], &op)) return false;
    ops->push_back(op);
  }
  return true;
}

// False when the body is of a kind this build does not know.
template <class Body>
bool read_body(Body body, Event* event, std::vector<Op>* ops) {
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
// stays (until trim()), so a decoder allocates only for a batch larger than
// any before, and one that sees none costs no more: replay keeps thousands
// of them (engine/replay.cc), and reserving kBatchOpsMax ops each was 100 MB
// of address space and a few thousand page faults per open.
EventDecoder::EventDecoder() { ops_.reserve(1); }
EventDecoder::~EventDecoder() = default;

void EventDecoder::trim(std::size_t ops_max) {
  if (ops_.capacity() <= std::max<std::size_t>(ops_max, 1)) return;
  std::vector<Op> room;
  room.reserve(1);
  ops_.swap(room);
}

namespace {

// Reads the event at `root` into *event and *ops; false when it is of a
// kind this build does not know.
template <class Root>
bool read_event(Root root, Event* event, std::vector<Op>* ops) {
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
  return read_body(root.getBody(), event, ops);
}

bool word_aligned(std::span<const std::byte> payload) {
  return payload.size() % sizeof(capnp::word) == 0 &&
         reinterpret_cast<std::uintptr_t>(payload.data()) % alignof(capnp::word) == 0;
}

}  // namespace

Status EventDecoder::decode(std::span<const std::byte> payload, Event* event) {
  ops_.clear();
  *event = Event{};
  plain::Segment segment(payload);
  if (word_aligned(payload) && segment.usable()) {
    const bool known = read_event(plain::Event(&segment, segment.struct_at(0)), event, &ops_);
    if (known && !segment.gave_up()) {
      event->ops = std::span<const Op>(ops_.data(), ops_.size());
      return Status();
    }
  }
  return decode_with_library(payload, event);
}

Status EventDecoder::decode_with_library(std::span<const std::byte> payload, Event* event) {
  if (!word_aligned(payload)) {
    return Status(ErrorCode::corrupt, "event payload is not word-aligned");
  }
  library_decodes_++;
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
    known = read_event(reader.getRoot<s::Event>(), event, &ops_);
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
