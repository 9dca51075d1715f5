// Command decisions: validation, request fingerprints, and deciding a
// command against the projection. Pure functions over State; the writer
// thread (engine/ledger.cc) calls them, nothing here touches the log.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/types.h"
#include "log/event.h"
#include "log/status.h"
#include "projections/state.h"

namespace tally::detail {

struct Limits {
  // 0: not known here (a remote client): a hold's ttl is left to the
  // server, whose limit it is, to check and to name in its refusal; so are
  // the ops of a batch after such a hold, since the server's answer may be
  // that the hold came first.
  std::int64_t hold_ttl_ns_max = 0;
  // With hold_ttl_ns_max 0: check the ops after such a hold as well (a
  // Client whose request could not reach the server otherwise, and the
  // writer, which checks ttls apart: check_ttls).
  bool ops_after_hold = false;
};

// invalid, naming the offending field, when the command is malformed.
Status validate(const Command& command, const Limits& limits);

// invalid when a hold of `command` has a ttl outside [kHoldTtlNsMin,
// ttl_ns_max], named as validate() names it. The one check that depends on
// the ledger's options: the writer makes it only once it found the key new,
// so that a decided key's retry answers what was decided, whatever the
// limit is now.
Status check_ttls(const Command& command, std::int64_t ttl_ns_max);

// The refusal of a commit or release that names its hold both ways. HTTP
// gives it for any "hold_id" beside a "hold_key", 0 included.
inline constexpr std::string_view kHoldNamedTwice =
    "name the hold by hold id or by hold_key, not both";

// invalid ("<what> is empty", "... is longer than 255 bytes", "... contains
// NUL") unless `id` is a valid key, subject or item: what a mutation may
// write, and so what a read may name.
Status check_id(std::string_view what, std::string_view id);
// The names a balance or list read gives: a name no mutation can write
// would read as a zero balance, so it is refused as check_id() refuses it.
Status check_subject(std::string_view subject);
Status check_pair(std::string_view subject, std::string_view item);

// Whether a command fits a segment must not depend on the state it is
// decided against: the Ledger measures the largest event it can be logged
// as, whatever the state. That is its rejection (the ops as requested, in a
// wrapper), with each commit and release carrying the longest subject and
// item a hold can have, as an applied one carries its hold's.
// largest_event_ops() gives those ops; event_growth_bytes_max() how many
// bytes that event can exceed the one decide() made, so that only a command
// near the limit need be measured twice.
void largest_event_ops(const Command& command, std::vector<log::Op>* ops);
std::size_t event_growth_bytes_max(const Command& command);

// invalid: a batch of more than kBatchOpsMax ops (validate's message, for
// the decoders that meet one first).
Status batch_too_large();

// invalid: a blocking call of a Ledger or a Client from one of its own
// threads (a completion), which would wait for itself.
Status blocking_in_completion();

// XXH3-64 of the command's canonical encoding (docs/architecture.md): the
// ops and the batch flag, not the key or the metadata. `scratch` is reused.
std::uint64_t fingerprint(const Command& command, std::string* scratch);

// A decided command: the reason (none = applied), the failing op of a batch,
// and in `ops` the ops to log: resolved (commit/release carry the hold's
// subject, item and quantities) when applied, as requested when rejected.
struct Decision {
  log::Reason reason = log::Reason::none;
  std::uint32_t failed_index = 0;
};

// Working memory for decide(), reused across commands.
struct DecideScratch {
  struct PairDelta {
    std::string_view subject;
    std::string_view item;
    std::int64_t available = 0;
    std::int64_t held = 0;
  };
  std::vector<PairDelta> deltas;   // a batch's effects so far
  std::vector<HoldId> settled;     // holds a batch already settled
};

// Decides `command` (already validated) against `state`, in which no hold is
// due, for an event stamped `timestamp_ns`. Fills *ops. invalid when a
// commit asks for more than its hold, or a hold would expire past the
// largest timestamp.
Result<Decision> decide(const Command& command, const proj::State& state,
                        std::int64_t timestamp_ns, std::vector<log::Op>* ops,
                        DecideScratch* scratch);

// The receipt of `command` whose outcome was recorded by event `seq`: just
// now (replay false), or for an earlier request with the same key.
Receipt make_receipt(const Decision& decision, const Command& command, std::uint64_t seq,
                     std::int64_t timestamp_ns, bool replay);

}  // namespace tally::detail
