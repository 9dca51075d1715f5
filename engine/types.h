// Value types of the public API: requests, receipts, balances, options.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "log/event.h"
#include "log/status.h"

namespace tally {

using HoldId = std::uint64_t;
using OpType = log::OpType;

// The outcome of a decided mutation. ok or a state rejection; rejections are
// values, not errors: they are durable and a retry gets them back.
enum class Outcome : std::uint8_t {
  ok,
  insufficient,    // not enough available
  overflow,        // the balance would exceed INT64_MAX
  hold_unknown,    // no such hold (never existed, or forgotten)
  hold_expired,    // the hold expired before this request
  hold_finalized,  // the hold was already committed or released
};
std::string_view outcome_name(Outcome outcome);

// Validation limits: requests outside them are `invalid` and write nothing.
inline constexpr std::size_t kIdBytesMax = 255;        // subject, item, key
inline constexpr std::size_t kMetaBytesMax = 1024;     // reason, reference, actor each
inline constexpr std::size_t kBatchOpsMax = log::kBatchOpsMax;
inline constexpr std::int64_t kHoldTtlNsMin = 1'000'000;  // 1 ms
// LedgerOptions::hold_ttl_ns_max's default: 30 days.
inline constexpr std::int64_t kHoldTtlNsMaxDefault = 30ll * 24 * 3600 * 1'000'000'000;

// Optional audit metadata stored with a mutation's event.
struct Metadata {
  std::string reason;     // damage, restock, order, ...
  std::string reference;  // order id, purchase order, ...
  std::string actor;      // who did it
};

// One operation. Fields a type does not use stay empty or zero: a command
// setting one is invalid (so is a commit or release naming its hold both by
// id and by key). A batch may settle one hold twice: its ops apply in order,
// so the second finds the hold finalized: the batch is decided hold_finalized.
struct OpRequest {
  OpType type = OpType::acquire;
  std::string subject;  // transfer: the source
  std::string item;
  std::string to;       // transfer: the destination
  std::int64_t qty = 0; // commit: 0 = the whole hold
  std::int64_t ttl_ns = 0;
  HoldId hold = 0;
  // commit, release: names the hold by the idempotency key of the request
  // that created it instead of by id (then `hold` stays 0). Lets a caller
  // pipeline a commit right behind its hold, or settle a hold whose id it
  // lost in a crash. The key names the hold while the key is remembered (the
  // idempotency window), and past it while the hold is known if its ttl is
  // at least the window (docs/snapshots.md, "Long holds' keys").
  std::string hold_key;

  static OpRequest acquire(std::string subject, std::string item, std::int64_t qty);
  static OpRequest consume(std::string subject, std::string item, std::int64_t qty);
  static OpRequest transfer(std::string from, std::string to, std::string item, std::int64_t qty);
  static OpRequest hold_of(std::string subject, std::string item, std::int64_t qty,
                           std::int64_t ttl_ns);
  // qty 0: the whole hold.
  static OpRequest commit(HoldId hold, std::int64_t qty = 0);
  static OpRequest release(HoldId hold);
  static OpRequest commit_key(std::string hold_key, std::int64_t qty = 0);
  static OpRequest release_key(std::string hold_key);
};

// A keyed mutation: one op, or an all-or-nothing batch of ops.
struct Command {
  std::string key;
  Metadata meta;
  bool batch = false;
  OpRequest op;                 // when !batch
  std::vector<OpRequest> ops;   // when batch
};

// The answer to a mutation that was decided (now or before).
struct Receipt {
  Outcome outcome = Outcome::ok;
  bool replay = false;         // the key was decided before; this is that outcome
  std::uint64_t seq = 0;       // the event that recorded the outcome
  std::int64_t timestamp_ns = 0;
  HoldId hold = 0;             // a successful hold: its id
  std::uint32_t failed_index = 0;  // a rejected batch: the failing op
  // A successful batch: the ids of its holds, in op order.
  std::vector<HoldId> holds;
};

struct Balance {
  std::int64_t available = 0;
  std::int64_t held = 0;
  bool operator==(const Balance&) const = default;
};

// A point in the log's history, for point-in-time reads: after the event
// with seq `seq`, or after every event stamped at or before `time_ns`.
// Point-in-time balances: as of a seq, what the log's events up to it say
// (a hold is held until its commit, release or expire event); as of a time
// T, the events stamped at or before T read at T, every hold due by T
// released, as reads never show a due hold as held (docs/snapshots.md).
struct AsOf {
  enum class Kind : std::uint8_t { seq, time };
  Kind kind = Kind::seq;
  std::uint64_t seq = 0;
  std::int64_t time_ns = 0;

  static AsOf at_seq(std::uint64_t seq) { return AsOf{Kind::seq, seq, 0}; }
  static AsOf at_time(std::int64_t time_ns) { return AsOf{Kind::time, 0, time_ns}; }
};

struct ItemBalance {
  std::string item;
  Balance balance;
};

enum class HoldStatus : std::uint8_t { open, committed, released, expired };
std::string_view hold_status_name(HoldStatus status);

struct HoldView {
  HoldId id = 0;
  std::string subject;
  std::string item;
  std::int64_t qty = 0;
  std::int64_t expires_at_ns = 0;
  HoldStatus status = HoldStatus::open;
  std::int64_t committed_qty = 0;
};

enum class Durability : std::uint8_t {
  sync,   // fdatasync before the caller hears the outcome (default)
  async,  // acknowledged after write(); fdatasync once sync_interval_ms passed since the last
  none,   // written; synced every 4 MiB, at a segment's end, at close(): tests, throwaway ledgers
};
std::string_view durability_name(Durability durability);
bool parse_durability(std::string_view text, Durability* out);

// How far an open is (LedgerOptions::open_progress), for a caller that says
// so while it waits: the seq of the snapshot it loads, then of the one it
// started from (0: none, the whole log is replayed), and the events it has
// replayed from the log after that (every 4096, and at the end).
struct OpenProgress {
  std::atomic<std::uint64_t> snapshot_seq{0};
  std::atomic<std::uint64_t> events{0};
};

}  // namespace tally
