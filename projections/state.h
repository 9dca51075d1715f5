// State: the in-memory projection of the log — balances, holds and the
// idempotency index — rebuilt by applying events in seq order.
//
// apply() is the one function that turns facts into state, used both by the
// engine's writer (for events it just decided) and by replay, so both reach
// the same state byte for byte (digest()).
//
// Thread safety: none. One thread (the engine's writer, or a tool) owns a
// State. Memory: balances, holds and keys live in open-addressing tables with
// interned subject and item names (docs/performance.md gives the bytes per
// entry).
#pragma once

#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "log/event.h"
#include "log/status.h"
#include "projections/state_format.h"

namespace tally::proj {

using HoldId = std::uint64_t;

// Pass as now_ns to read the balances exactly as the applied events left
// them, without treating any due hold as released.
inline constexpr std::int64_t kStoredOnly = INT64_MIN;

struct Balance {
  std::int64_t available = 0;
  std::int64_t held = 0;
  bool operator==(const Balance&) const = default;
};

// The seq of the event a corrupt Status of State names ("seq N: ..."), if
// it names one: where a caller looks for the event in the log.
std::optional<std::uint64_t> refused_seq(const Status& status);

enum class HoldState : std::uint8_t { open, committed, released, expired };
std::string_view hold_state_name(HoldState state);

// A hold, open or finalized within the idempotency window. The views point
// into the State and stay valid while it lives (names are never freed).
struct HoldInfo {
  HoldId id = 0;
  std::string_view subject;
  std::string_view item;
  std::int64_t qty = 0;              // as held
  std::int64_t expires_at_ns = 0;
  HoldState state = HoldState::open;
  std::int64_t finalized_at_ns = 0;  // timestamp of the finalizing event
  std::int64_t committed_qty = 0;    // for a committed hold
};

// What a key's first request came to: enough to answer a retry exactly.
struct KeyRecord {
  std::uint64_t fingerprint = 0;
  std::uint64_t seq = 0;             // the event that recorded the outcome
  std::int64_t timestamp_ns = 0;
  log::Reason reason = log::Reason::none;
  std::uint32_t failed_index = 0;
};

struct StateOptions {
  // Keys and finalized holds are forgotten once an event stamped this long
  // or longer after them is applied: a key stamped k is remembered by events
  // stamped in [k, k + window) and gone for one stamped k + window.
  // 0 = remember forever.
  std::int64_t idempotency_window_ns = 24ll * 3600 * 1'000'000'000;
  // For State::load only: the state takes the window its image was saved
  // with, instead of refusing an image of another window than
  // idempotency_window_ns. For a reader that does not know the window of
  // the ledger that wrote the image, and learns it from the image.
  bool window_from_image = false;
};

// A request time before every event's: State's lookups as the state stands.
inline constexpr std::int64_t kAsApplied = INT64_MIN;

struct StateCounts {
  std::uint64_t balances = 0;        // pairs with a non-zero balance
  std::uint64_t open_holds = 0;
  std::uint64_t finalized_holds = 0; // remembered
  std::uint64_t keys = 0;            // remembered
  std::uint64_t subjects = 0;        // distinct subject names seen (interned for life)
  std::uint64_t items = 0;           // distinct item names seen (interned for life)
  // Bytes held by the tables and arenas (capacity, not just use); excludes
  // the allocator's own overhead.
  std::uint64_t memory_bytes = 0;
};

// The name hashes an op's lookups need, computed once per op so apply() can
// prefetch the slots and the lookups reuse them.
struct OpHashes {
  std::uint32_t subject = 0;
  std::uint32_t item = 0;
  std::uint32_t to = 0;
  // The names' ids, where State::prefetch_balances(event, ...) found them
  // interned (0: not looked up, or not interned then). A name stays
  // interned for life with the id it got, so apply() takes a found id
  // instead of looking the name up again. The ids are that State's: hashes
  // with ids go to apply() of the State that found them, never another.
  std::uint32_t subject_id = 0;
  std::uint32_t item_id = 0;
  std::uint32_t to_id = 0;
};

// What apply() hashes an event's lookups by: its key and its first op's
// names. State::hash() computes them ahead of apply().
struct EventHashes {
  std::uint32_t key = 0;
  OpHashes first;
};

class State {
 public:
  explicit State(StateOptions options = {});
  ~State();
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Applies the event with seq last_seq() + 1. The event must be consistent
  // with the state (decided by the engine against it, or written by one that
  // was): an applied op that would drive a balance negative, overflow, or
  // name a hold that is not open is a corrupt Status naming the seq, and the
  // state is then unspecified. So are a timestamp before the last one,
  // settle copies (subject, item, qty) that differ from the hold, a commit
  // or release of a hold already due at the event's timestamp, and an
  // expire of one not yet due. A rejected event changes only the key index.
  // A key already remembered takes the event's decision: a log written with
  // a shorter window than this state's decides a key again once that window
  // passed it, and the later decision is the one a retry meets.
  Status apply(const log::Event& event);

  // Look-ahead for a caller with a run of events to apply (replay). hash()
  // computes what apply() would hash; it reads no state, so another thread
  // may run it. For an event some places ahead, prefetch_key() and
  // prefetch() start loading the key, name and hold slots the hashes lead
  // to; a few events later, prefetch_balances() looks the names up (in the
  // cache by then) and starts loading the balance slots of the first op.
  // The misses of several events then overlap instead of following each
  // other. The prefetches
  // change nothing and may be called for events not yet applicable; they
  // are hints, so an answer made stale by the events applied in between
  // costs only a miss.
  static EventHashes hash(const log::Event& event);
  // hash()'s two halves, for a caller that computes them on two threads.
  static std::uint32_t hash_key(const log::Event& event);
  static OpHashes hash_first_op(const log::Event& event);
  void prefetch_key(std::uint32_t key_hash) const;
  void prefetch(const log::Event& event, const EventHashes& hashes) const;
  // prefetch_balances() keeps the ids it finds in hashes->first, for
  // apply() of the same event.
  void prefetch_balances(const log::Event& event, EventHashes* hashes) const;
  // apply() with the hashes hash() returned for this event.
  Status apply(const log::Event& event, const EventHashes& hashes);

  // apply(event, hashes) in two parts, which change disjoint parts of the
  // state: remember_key() the key index, apply_ops() everything else. So
  // replay may run them on two threads, one remembering the keys of events
  // in seq order while the other applies the ops of earlier ones in seq
  // order, provided nothing else uses the state meanwhile (a read, a
  // digest or a prefetch_key() touches the key index). Either part reports
  // what it finds corrupt; the state is then unspecified, as for apply().
  Status remember_key(const log::Event& event, std::uint32_t key_hash);
  Status apply_ops(const log::Event& event, const EventHashes& hashes);

  // remember_key() for replay: the key is stored at once but indexed later,
  // with up to kKeysWaitingMax others, grouped by where their slots lie
  // (KeyIndex::index_added): the index fills a region at a time instead of
  // at random, a cache miss saved per key. A key the idempotency window
  // forgets gets indexed first. Until index_keys(), the key index must not
  // be read (find_key, save, digest, counts: they assert it). A key
  // decided again takes its later decision, as with remember_key(); one
  // decided again at the time of its first decision is corrupt, found by
  // index_keys() (the earliest such seq of the run).
  Status remember_key_batched(const log::Event& event, std::uint32_t key_hash);
  Status index_keys();
  static constexpr std::size_t kKeysWaitingMax = std::size_t{1} << 16;
  // Sizes the key index for `more` keys besides those it holds, for a
  // replay that knows roughly how many it will remember: growing to them
  // instead rehashes every key at each doubling, and writes a table of
  // each size. The index's pages fault in as the keys first reach them:
  // replay sizes it before its reading thread starts, and that thread
  // (which remembers the keys unless a caller looks at the state after
  // every event) has time to spare to fault them in, where the applying
  // one would wait (the index of 11.8 M keys is 192 MiB). Keys already
  // held are copied into the new index here, faulting in what they reach.
  void reserve_keys(std::size_t more);

  std::uint64_t last_seq() const;
  std::int64_t last_timestamp_ns() const;
  // StateOptions::idempotency_window_ns, as it was built with.
  std::int64_t idempotency_window_ns() const;

  // Balance as of the last event. A hold that is due at now_ns (expires_at
  // <= now_ns) but whose expire event is not applied yet counts as released:
  // reads never show a due hold as held.
  Balance balance(std::string_view subject, std::string_view item, std::int64_t now_ns) const;
  // Every non-zero balance of a subject, items sorted bytewise.
  void list(std::string_view subject, std::int64_t now_ns,
            const std::function<void(std::string_view item, Balance)>& visit) const;
  // Every non-zero balance, sorted bytewise by subject then item.
  void for_each_balance(std::int64_t now_ns,
                        const std::function<void(std::string_view subject, std::string_view item,
                                                 Balance)>& visit) const;

  // The lookups below answer as of a request stamped `now_ns`: what the
  // window has passed by then (a key stamped, or a hold finalized, at or
  // before now_ns - window) is forgotten, whether or not an event has been
  // applied since to forget it. So a request gets the same answer whether
  // or not other events came between (a finalized hold's window runs from
  // its finalizing event, whenever that was written), and an event decided
  // by it forgets what it was decided without. kAsApplied: as the state
  // stands.

  // nullptr when the key is not remembered.
  const KeyRecord* find_key(std::string_view key, std::int64_t now_ns = kAsApplied) const;
  // The hold a commit or release naming its hold by key means: the id a
  // successful request with that key would have made as a standalone hold
  // (its event's seq; whether a hold has that id is for find_hold), or the
  // standalone hold with that key whose ttl outlasts the key's window
  // (remembered while the hold is); 0 when neither.
  HoldId hold_of_key(std::string_view key, std::int64_t now_ns = kAsApplied) const;

  // Starts loading the table slots a command with these names (or this
  // hold) will look up, so that a caller working through a queue overlaps
  // the cache misses of the commands ahead with the work on the current
  // one. Empty names and hold 0 are skipped. Changes nothing. Returns the
  // names' hashes, for prefetch_balances().
  OpHashes prefetch(std::string_view key, std::string_view subject, std::string_view item,
                    std::string_view to, HoldId hold = 0) const;
  // The second stage, a few commands later, once prefetch() has brought the
  // name and hold slots in: starts loading the balance slots the command
  // will read. `hashes`: what prefetch() returned for the same names.
  // Changes nothing.
  void prefetch_balances(std::string_view subject, std::string_view item, std::string_view to,
                         HoldId hold, const OpHashes& hashes) const;
  // Open or remembered finalized hold; nullopt when unknown.
  std::optional<HoldInfo> find_hold(HoldId id, std::int64_t now_ns = kAsApplied) const;
  // The open hold that expires first (ties: smaller id) if it is due at t.
  std::optional<HoldInfo> next_due_hold(std::int64_t t_ns) const;
  // The earliest expires_at of any open hold, if there is one.
  std::optional<std::int64_t> next_expiry_ns() const;

  // Checks available >= 0, held >= 0, and held == the sum of the open holds
  // of every pair; corrupt with the first violation.
  Status check_invariants() const;

  // XXH3-based digest of the canonical state: balances, open and remembered
  // finalized holds, remembered keys, last seq and timestamp. Independent of
  // insertion order and table layout.
  std::uint64_t digest() const;

  StateCounts counts() const;

  // Writes the complete state — names in id order, balances, open holds in
  // heap order, finalized holds and keys in window order, last seq and
  // timestamp, and the idempotency window it was built with — as the image
  // of projections/state_format.h, in chunks to `sink`. The state is only
  // read. Returns the sink's first error.
  Status save(StateSink& sink) const;

  // Rebuilds a State from an image written by save(). The result has the
  // same digest(), counts(), reads and name ids, and applies every later
  // event exactly as the saved State would. `options` must carry the window
  // the image was saved with (invalid otherwise: a different window would
  // have remembered different keys, so the state would not be the one a
  // full replay gives), unless options.window_from_image: the state then
  // takes the image's window. The bytes are untrusted: a truncated, malformed or
  // inconsistent image is corrupt, never a crash; the source's own error
  // is returned as is. Tables are sized from the counts in the image only
  // as far as the source's size can hold that many entries.
  //
  // When `digest` is not null, *digest receives the loaded state's digest(),
  // taken from the entries as they are read: one pass in image order instead
  // of a second walk of every table.
  //
  // When `check` is given, it runs once beside the load, on whichever of
  // its two threads is done with its part first (first of all where the
  // load has one thread): a check of the source's bytes as a whole, such
  // as a checksum, that the load need not wait for. Its failure is
  // returned in preference to anything the load finds.
  static Result<std::unique_ptr<State>> load(StateSource& source, StateOptions options,
                                             std::uint64_t* digest = nullptr,
                                             const std::function<Status()>& check = {});

 private:
  friend struct StateTestPeer;  // state_test.cc: corrupts internals on purpose
  struct Impl;
  struct Loader;  // state_save.cc: rebuilds an Impl from an image
  std::unique_ptr<Impl> impl_;
};

// Per-item flow totals counted from the log: acquired, consumed (consume and
// committed holds), for the conservation invariant
//   sum over subjects of (available + held) == acquired - consumed.
class FlowTotals {
 public:
  FlowTotals();
  ~FlowTotals();
  void apply(const log::Event& event);
  // corrupt naming the first item whose balances do not add up.
  Status check(const State& state) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::proj
