// Ledger: the embedded ledger engine. "Subject owns N of item type X."
//
//   auto ledger = tally::Ledger::open({.data_dir = "data"});
//   if (!ledger) { ... ledger.status() ... }
//   auto receipt = (*ledger)->acquire("order-1", "alice", "gold", 100);
//
// Every mutation carries an idempotency key and is decided by one writer
// thread, appended to the log, made durable (per Durability) together with
// whatever else arrived meanwhile, applied to the projection, and only then
// acknowledged. Opening replays the log.
//
// Errors and outcomes: a call returns Result<Receipt>. An error (invalid,
// idempotency_conflict, read_only, closed, io_error) means nothing was
// decided; a Receipt carries the durable outcome, ok or a state rejection.
//
// Thread safety: every method may be called from any thread. Completions of
// submit() run on a ledger thread, in submission order, and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/clock.h"
#include "engine/types.h"
#include "log/file.h"
#include "log/format.h"
#include "log/status.h"

namespace tally {

struct LedgerOptions {
  std::string data_dir;
  Durability durability = Durability::sync;
  // async durability: the longest a written event waits for fdatasync.
  std::int64_t sync_interval_ms = 10;
  // Keys (and finalized holds) are remembered this long, in log time. 0: forever.
  std::int64_t idempotency_window_ns = 24ll * 3600 * 1'000'000'000;
  std::int64_t hold_ttl_ns_max = 30ll * 24 * 3600 * 1'000'000'000;
  std::uint64_t segment_size_bytes = log::kSegmentSizeBytesDefault;
  // Commands waiting for the writer; submit() waits for room beyond it.
  std::size_t queue_depth_max = 1u << 16;
  // Borrowed; must outlive the Ledger. nullptr: the system clock / POSIX files.
  Clock* clock = nullptr;
  log::FileSystem* fs = nullptr;
};

struct LedgerStats {
  std::uint64_t next_seq = 0;
  std::uint64_t events_replayed = 0;   // at open
  double replay_seconds = 0;
  std::uint64_t syncs = 0;
  std::uint64_t log_bytes_written = 0;
  std::uint64_t groups = 0;            // group commits written
  std::uint64_t balances = 0;
  std::uint64_t open_holds = 0;
  std::uint64_t keys = 0;
  std::uint64_t digest = 0;            // of the state after the last applied event
};

class Ledger {
 public:
  // Takes the data directory's lock, replays the log, resumes appending.
  // Errors: locked (another process has it), corrupt (with segment and
  // offset), io_error, invalid (options).
  static Result<std::unique_ptr<Ledger>> open(const LedgerOptions& options);
  // close(), ignoring its Status.
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // ---- blocking mutations: return once the outcome is durable ----
  Result<Receipt> acquire(std::string_view key, std::string_view subject, std::string_view item,
                          std::int64_t qty, const Metadata& meta = {});
  Result<Receipt> consume(std::string_view key, std::string_view subject, std::string_view item,
                          std::int64_t qty, const Metadata& meta = {});
  Result<Receipt> transfer(std::string_view key, std::string_view from, std::string_view to,
                           std::string_view item, std::int64_t qty, const Metadata& meta = {});
  // Receipt::hold is the new hold's id.
  Result<Receipt> hold(std::string_view key, std::string_view subject, std::string_view item,
                       std::int64_t qty, std::int64_t ttl_ns, const Metadata& meta = {});
  // qty: commit part and release the rest; nullopt commits the whole hold.
  Result<Receipt> commit(std::string_view key, HoldId hold, std::optional<std::int64_t> qty = {},
                         const Metadata& meta = {});
  Result<Receipt> release(std::string_view key, HoldId hold, const Metadata& meta = {});
  Result<Receipt> batch(std::string_view key, std::vector<OpRequest> ops,
                        const Metadata& meta = {});
  // Any command; the general form of the calls above.
  Result<Receipt> execute(Command command);

  // ---- non-blocking ----
  using Completion = std::function<void(Result<Receipt>)>;
  // Queues a command; `done` runs once its outcome is durable (or it failed).
  // Waits only when the queue is full.
  void submit(Command command, Completion done);

  // ---- reads: consistent with every acknowledged mutation ----
  Result<Balance> balance(std::string_view subject, std::string_view item);
  // Non-zero balances of a subject, items sorted bytewise.
  Result<std::vector<ItemBalance>> list(std::string_view subject);
  // not_found for a hold never seen or forgotten.
  Result<HoldView> hold_info(HoldId hold);

  // Appends expire events for every hold due at the clock's now. The writer
  // does this by itself before each command and when idle; tests with a
  // manual clock call it to make time pass.
  Status expire_due();

  LedgerStats stats();

  // Finishes queued commands, syncs the log, stops the threads, releases the
  // lock. Later calls answer `closed`. Idempotent.
  Status close();

 private:
  struct Impl;
  explicit Ledger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally
