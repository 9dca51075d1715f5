#include "projections/changes.h"

namespace tally::proj {

namespace {

// a + b with two's complement wrapping: defined even for an untrusted event.
std::int64_t wrapping_add(std::int64_t a, std::int64_t b) {
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(a) + static_cast<std::uint64_t>(b));
}
std::int64_t wrapping_neg(std::int64_t a) {
  return static_cast<std::int64_t>(std::uint64_t{0} - static_cast<std::uint64_t>(a));
}

// Adds a change to the pair's delta, appending the pair on first touch. The
// search is linear: an event has at most kBatchOpsMax ops, so at most twice
// as many pairs, and most events touch one or two.
void add(std::vector<PairDelta>* out, std::string_view subject, std::string_view item,
         std::int64_t available, std::int64_t held) {
  for (PairDelta& delta : *out) {
    if (delta.subject == subject && delta.item == item) {
      delta.available = wrapping_add(delta.available, available);
      delta.held = wrapping_add(delta.held, held);
      return;
    }
  }
  out->push_back(PairDelta{subject, item, available, held});
}

void add_op(std::vector<PairDelta>* out, const log::Op& op) {
  switch (op.type) {
    case log::OpType::acquire: add(out, op.subject, op.item, op.qty, 0); return;
    case log::OpType::consume: add(out, op.subject, op.item, wrapping_neg(op.qty), 0); return;
    case log::OpType::transfer:
      add(out, op.subject, op.item, wrapping_neg(op.qty), 0);
      add(out, op.to, op.item, op.qty, 0);
      return;
    case log::OpType::hold: add(out, op.subject, op.item, wrapping_neg(op.qty), op.qty); return;
    case log::OpType::commit:
      add(out, op.subject, op.item, op.released, wrapping_neg(wrapping_add(op.qty, op.released)));
      return;
    case log::OpType::release:
    case log::OpType::expire: add(out, op.subject, op.item, op.qty, wrapping_neg(op.qty)); return;
  }
}

}  // namespace

void event_deltas(const log::Event& event, std::vector<PairDelta>* out) {
  out->clear();
  if (event.rejected != log::Reason::none) return;
  for (const log::Op& op : event.ops) add_op(out, op);
}

std::string_view event_op_name(const log::Event& event) {
  if (event.batch) return kBatchOpName;
  // A decoded or applied event has one op when it is not a batch; the guard
  // keeps a malformed one from reading past its span.
  if (event.ops.empty()) return "unknown";
  return log::op_type_name(event.ops[0].type);
}

}  // namespace tally::proj
