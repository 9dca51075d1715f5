// LedgerApi: the calls an embedded Ledger (engine/ledger.h) and a remote
// Client (engine/client.h) share, so a backend switches between them by
// configuration: code written against LedgerApi& runs on either.
//
// Implementations provide execute, submit and the reads; the convenience
// mutations below are written once, here, as commands.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/types.h"
#include "log/status.h"

namespace tally {

class LedgerApi {
 public:
  virtual ~LedgerApi() = default;

  // Any mutation; returns once its outcome is durable per the durability
  // mode (or it failed).
  virtual Result<Receipt> execute(Command command) = 0;
  using Completion = std::function<void(Result<Receipt>)>;
  // Queues a mutation and returns; `done` runs once its outcome is known.
  virtual void submit(Command command, Completion done) = 0;

  virtual Result<Balance> balance(std::string_view subject, std::string_view item) = 0;
  // Non-zero balances of a subject, items sorted bytewise.
  virtual Result<std::vector<ItemBalance>> list(std::string_view subject) = 0;
  // As of a point in the log's history (engine/types.h, AsOf): after a
  // committed seq, or after every event stamped at or before a time T, with
  // every hold due by T counted as released, as a current read at T would
  // (reads never show a due hold as held). invalid for a seq past the last
  // committed one. docs/snapshots.md.
  virtual Result<Balance> balance(std::string_view subject, std::string_view item, AsOf at) = 0;
  virtual Result<std::vector<ItemBalance>> list(std::string_view subject, AsOf at) = 0;
  // not_found for a hold never seen or forgotten.
  virtual Result<HoldView> hold_info(HoldId hold) = 0;
  // A hold as of `at`: as of a time T, expired once due by T, whether or
  // not its expire event is stamped by then; as of a seq, open until its
  // commit, release or expire event.
  virtual Result<HoldView> hold_info(HoldId hold, AsOf at) = 0;

  // The current reads without blocking the caller (event loops, servers):
  // `done` gets the answer on the implementation's thread (or at once, on
  // this one, when it is closed or the arguments are invalid). A blocking
  // method called there is invalid (it would wait for itself), and an
  // exception must not leave it: std::terminate. An empty `done` skips
  // the read.
  virtual void submit_balance(std::string subject, std::string item,
                              std::function<void(Result<Balance>)> done) = 0;
  virtual void submit_list(std::string subject,
                           std::function<void(Result<std::vector<ItemBalance>>)> done) = 0;
  virtual void submit_hold_info(HoldId hold, std::function<void(Result<HoldView>)> done) = 0;

  // The ledger's identity: a 64-bit value fixed when its log was created
  // (the checksum of the first segment's header). A copy or a restored
  // backup of the ledger has the same; another ledger, all but certainly,
  // another; 0 while the log has no segment yet (an open on a full disk
  // leaves the first one to the first append). Client: that of the ledger
  // its server serves (ClientOptions::ledger_id when set); 0 while no
  // server has said (one too old to).
  virtual std::uint64_t ledger_id() const = 0;

  // Ends the session: later calls fail with `closed`. Idempotent. Ledger:
  // stops its threads and closes the log (the Status of a failed write);
  // Client: closes the connection.
  virtual Status close() = 0;

  Result<Receipt> acquire(std::string_view key, std::string_view subject, std::string_view item,
                          std::int64_t qty, const Metadata& meta = {});
  Result<Receipt> consume(std::string_view key, std::string_view subject, std::string_view item,
                          std::int64_t qty, const Metadata& meta = {});
  Result<Receipt> transfer(std::string_view key, std::string_view from, std::string_view to,
                           std::string_view item, std::int64_t qty, const Metadata& meta = {});
  // Receipt::hold is the new hold's id.
  Result<Receipt> hold(std::string_view key, std::string_view subject, std::string_view item,
                       std::int64_t qty, std::int64_t ttl_ns, const Metadata& meta = {});
  // qty: commit part and release the rest; nullopt commits the whole hold
  // (a qty of 0 is invalid here; OpRequest::commit's 0 means the whole).
  Result<Receipt> commit(std::string_view key, HoldId hold, std::optional<std::int64_t> qty = {},
                         const Metadata& meta = {});
  Result<Receipt> release(std::string_view key, HoldId hold, const Metadata& meta = {});
  Result<Receipt> batch(std::string_view key, std::vector<OpRequest> ops,
                        const Metadata& meta = {});
};

}  // namespace tally
