// What an applied event does to balances, pair by pair: the input of the
// history projection (snapshots/history.h), which records each change with
// the balance after it.
//
// Pure functions of the event: no State is consulted. An applied commit,
// release or expire carries its hold's subject, item and quantities
// (log/event.h), so its change is known from the event alone.
//
// Thread safety: none needed; the functions keep no state.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "log/event.h"

namespace tally::proj {

// One pair's balance change made by an applied event. The names view the
// event's strings and are valid while they are.
struct PairDelta {
  std::string_view subject;
  std::string_view item;
  std::int64_t available = 0;
  std::int64_t held = 0;
  bool operator==(const PairDelta&) const = default;
};

// The changes an event makes, one per pair it touches: the ops of a batch
// on one pair are summed (a pair a batch touches may come to zero), and the
// pairs appear in the order the ops first touch them (a transfer touches
// its source, then its destination). A rejected event (event.rejected !=
// Reason::none) makes none. Per op, as State::apply does it:
//   acquire  available += qty          consume  available -= qty
//   transfer subject.available -= qty, to.available += qty
//   hold     available -= qty, held += qty
//   commit   held -= qty + released, available += released
//   release, expire   held -= qty, available += qty
// Clears *out first; its capacity is reused. The event is trusted to be one
// State::apply accepts, where no sum overflows; if one did, it wraps (a
// defined value, never undefined behaviour).
void event_deltas(const log::Event& event, std::vector<PairDelta>* out);

// The name of an event's operation for people and audit tools: the op
// type's name (log::op_type_name) for a single-op event, kBatchOpName for a
// batch. Static storage.
inline constexpr std::string_view kBatchOpName = "batch";
std::string_view event_op_name(const log::Event& event);

}  // namespace tally::proj
