#include "engine/ledger.h"

#include <doctest.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "engine/backup.h"
#include "engine/decide.h"
#include "engine/replay.h"
#include "log/faulty_file.h"
#include "projections/state.h"
#include "tests/testing.h"

namespace tally {
namespace {

using testing::name;

constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kStart = 1'700'000'000 * kSecond;

// A ledger in a temp dir with a manual clock, reopenable.
struct Fixture {
  testing::TempDir dir;
  ManualClock clock{kStart};
  LedgerOptions options;
  std::unique_ptr<Ledger> ledger;

  explicit Fixture(Durability durability = Durability::none) {
    options.data_dir = dir.sub("data");
    options.durability = durability;
    options.clock = &clock;
    reopen();
  }

  void reopen() {
    if (ledger) REQUIRE(ledger->close().ok());
    ledger.reset();
    auto opened = Ledger::open(options);
    REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
    ledger = std::move(*opened);
  }

  // Reopens the ledger remembering keys and finalized holds for `window_ns`.
  void reopen_with_window(std::int64_t window_ns) {
    options.idempotency_window_ns = window_ns;
    reopen();
  }

  Balance balance(std::string_view subject, std::string_view item) {
    auto b = ledger->balance(subject, item);
    REQUIRE(b.ok());
    return *b;
  }

  Receipt ok(Result<Receipt> result) {
    REQUIRE_MESSAGE(result.ok(), result.status().to_string());
    return *result;
  }
};

// A ledger in dir/data with neither snapshots nor the history: no thread
// but the ledger's own reads the clock or the files.
LedgerOptions bare_options(const testing::TempDir& dir, Durability durability) {
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  options.durability = durability;
  options.history = false;
  options.snapshot_every_events = 0;
  options.snapshot_every_seconds = 0;
  return options;
}

// A ledger with sync durability whose files go through `fs`.
std::unique_ptr<Ledger> open_sync_on(const testing::TempDir& dir, log::FaultyFileSystem& fs) {
  LedgerOptions options = bare_options(dir, Durability::sync);
  options.fs = &fs;
  auto ledger = Ledger::open(options);
  REQUIRE(ledger.ok());
  return std::move(*ledger);
}

Outcome outcome_of(Result<Receipt> result) {
  REQUIRE_MESSAGE(result.ok(), result.status().to_string());
  return result->outcome;
}

TEST_CASE("validate: with the ttl limit unknown, a batch's ops from a hold on are not checked") {
  // A remote client: the limit is the server's setting, and its answer may
  // be the hold's ttl, so an op after it is not refused here.
  Command batch;
  batch.key = "k";
  batch.batch = true;
  batch.ops = {OpRequest::hold_of("s", "i", 1, 0), OpRequest::acquire("", "i", 1)};
  CHECK(detail::validate(batch, detail::Limits{}).ok());
  CHECK(detail::validate(batch, detail::Limits{kHoldTtlNsMaxDefault}).to_string() ==
        "invalid: op 0: ttl out of range [1 ms, 2592000000 ms]");
  batch.ops = {OpRequest::acquire("", "i", 1), OpRequest::hold_of("s", "i", 1, 0)};
  CHECK(detail::validate(batch, detail::Limits{}).to_string() == "invalid: op 0: subject is empty");
}

TEST_CASE("open refuses a directory of other things, or a ledger's own log directory") {
  testing::TempDir dir;
  LedgerOptions options = bare_options(dir, Durability::none);
  {
    auto ledger = Ledger::open(options);
    REQUIRE(ledger.ok());
    REQUIRE((*ledger)->acquire("k1", "alice", "gold", 5).ok());
    REQUIRE((*ledger)->close().ok());
  }
  const std::string foreign = dir.sub("notes");
  std::filesystem::create_directories(foreign);
  std::ofstream(foreign + "/todo.txt") << "not a ledger\n";
  for (const std::string& wrong : {options.data_dir + "/log", foreign}) {
    INFO(wrong);
    const auto before = std::distance(std::filesystem::directory_iterator(wrong),
                                      std::filesystem::directory_iterator());
    LedgerOptions mistyped = options;
    mistyped.data_dir = wrong;
    auto refused = Ledger::open(mistyped);
    REQUIRE(refused.code() == ErrorCode::not_found);
    CHECK(refused.status().message().find("no ledger at " + wrong) == 0);
    // Nothing was made there: no LOCK, no stores.
    CHECK(std::distance(std::filesystem::directory_iterator(wrong),
                        std::filesystem::directory_iterator()) == before);
  }
  // The ledger itself still opens, with its state.
  auto ledger = Ledger::open(options);
  REQUIRE(ledger.ok());
  CHECK((*ledger)->balance("alice", "gold")->available == 5);
  // A new ledger's directory may hold hidden files (a .gitkeep).
  const std::string kept = dir.sub("kept");
  std::filesystem::create_directories(kept);
  std::ofstream(kept + "/.gitkeep") << "";
  LedgerOptions fresh = options;
  fresh.data_dir = kept;
  CHECK(Ledger::open(fresh).ok());
}

TEST_CASE("whether a batch fits a segment does not depend on the state") {
  // Near the largest event a segment holds, one request's event is larger
  // in one state than in another: a rejection logs the request in a
  // wrapper, and an applied commit carries its hold's subject and item.
  // Each request below is tried in both states, across the limit.
  Fixture f;
  f.options.segment_size_bytes = log::kSegmentSizeBytesMin;
  f.reopen();
  const std::string longest(kIdBytesMax, 'n');
  f.ok(f.ledger->acquire("stock-long", longest, longest, 1'000'000));
  f.ok(f.ledger->acquire("stock", "rich", "gold", 1'000'000));
  int keys = 0;
  // Whether `fillers` acquires (the last with a subject of `tail_bytes`) and
  // then `last` are refused as too large; else decided.
  const auto too_large = [&](int fillers, std::size_t tail_bytes, const OpRequest& last) {
    std::vector<OpRequest> ops;
    for (int index = 0; index < fillers; index++) {
      const std::size_t bytes = index + 1 == fillers ? tail_bytes : 200;
      ops.push_back(OpRequest::acquire(std::string(bytes, 'f'), "i", 1));
    }
    ops.push_back(last);
    auto result = f.ledger->batch(name("batch-", keys++), std::move(ops));
    if (result.ok()) return false;
    REQUIRE(result.status().message() == "request too large for the log's segment size");
    return true;
  };
  const auto new_hold = [&]() {
    return f.ok(f.ledger->hold(name("hold-", keys++), longest, longest, 1, 3600 * kSecond)).hold;
  };
  struct Case {
    const char* what;
    std::function<OpRequest()> decided;   // applied
    std::function<OpRequest()> rejected;  // the same size of request, rejected
  };
  const std::vector<Case> cases = {
      {"consume", [] { return OpRequest::consume("rich", "gold", 1); },
       [] { return OpRequest::consume("poor", "gold", 1); }},
      {"commit", [&] { return OpRequest::commit(new_hold()); },
       [] { return OpRequest::commit(HoldId{1} << 40); }},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    int boundary = 1;
    while (!too_large(boundary, 200, c.rejected())) boundary++;
    bool saw_fit = false;
    bool saw_too_large = false;
    for (const int fillers : {boundary - 1, boundary}) {
      for (std::size_t tail_bytes = 1; tail_bytes <= 255; tail_bytes += 2) {
        INFO(fillers << " fillers, the last " << tail_bytes << " bytes");
        const bool refused = too_large(fillers, tail_bytes, c.rejected());
        CHECK(too_large(fillers, tail_bytes, c.decided()) == refused);
        (refused ? saw_too_large : saw_fit) = true;
      }
    }
    CHECK(saw_fit);
    CHECK(saw_too_large);
  }
}

TEST_CASE("a hold's ttl under 1 ms is invalid under a key already decided too") {
  Fixture f;
  f.ok(f.ledger->acquire("k1", "alice", "gold", 5));
  for (const char* key : {"k1", "fresh"}) {
    CAPTURE(key);
    const Status refused = f.ledger->hold(key, "alice", "gold", 1, 0).status();
    CHECK(refused.code() == ErrorCode::invalid);
    CHECK(refused.message().starts_with("ttl out of range [1 ms, "));
    const Status in_batch =
        f.ledger->batch(key, {OpRequest::hold_of("alice", "gold", 1, -kSecond)}).status();
    CHECK(in_batch.code() == ErrorCode::invalid);
    CHECK(in_batch.message().starts_with("op 0: ttl out of range [1 ms, "));
  }
}

TEST_CASE("a request too large for a segment is invalid under a key already decided too") {
  Fixture f;
  f.options.segment_size_bytes = log::kSegmentSizeBytesMin;
  f.reopen();
  f.ok(f.ledger->batch("b", {OpRequest::acquire("alice", "gold", 1)}));
  std::vector<OpRequest> wide;
  for (int op = 0; op < 1000; op++) {
    wide.push_back(OpRequest::transfer(std::string(255, 'a'), std::string(255, 'b'), "gold", 1));
  }
  for (const char* key : {"b", "fresh"}) {
    CAPTURE(key);
    auto refused = f.ledger->batch(key, wide);
    CHECK(refused.status().code() == ErrorCode::invalid);
    CHECK(refused.status().message() == "request too large for the log's segment size");
  }
  // The key still answers its own request.
  CHECK(f.ok(f.ledger->batch("b", {OpRequest::acquire("alice", "gold", 1)})).replay);
}

TEST_CASE("acquire, consume and transfer move available quantities") {
  Fixture f;
  CHECK(outcome_of(f.ledger->acquire("a1", "alice", "gold", 100)) == Outcome::ok);
  CHECK(outcome_of(f.ledger->consume("c1", "alice", "gold", 30)) == Outcome::ok);
  CHECK(outcome_of(f.ledger->transfer("t1", "alice", "bob", "gold", 50)) == Outcome::ok);
  CHECK(f.balance("alice", "gold") == Balance{20, 0});
  CHECK(f.balance("bob", "gold") == Balance{50, 0});
  CHECK(f.balance("carol", "gold") == Balance{0, 0});

  auto items = f.ledger->list("alice");
  REQUIRE(items.ok());
  REQUIRE(items->size() == 1);
  CHECK((*items)[0].item == "gold");
  CHECK((*items)[0].balance == Balance{20, 0});
}

TEST_CASE("state rejections are outcomes and change nothing") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  CHECK(outcome_of(f.ledger->consume("c1", "alice", "gold", 11)) == Outcome::insufficient);
  CHECK(outcome_of(f.ledger->transfer("t1", "alice", "bob", "gold", 11)) == Outcome::insufficient);
  CHECK(outcome_of(f.ledger->hold("h1", "alice", "gold", 11, kSecond)) == Outcome::insufficient);
  CHECK(outcome_of(f.ledger->consume("c2", "nobody", "gold", 1)) == Outcome::insufficient);
  f.ok(f.ledger->acquire("a2", "rich", "gold", INT64_MAX));
  CHECK(outcome_of(f.ledger->acquire("a3", "rich", "gold", 1)) == Outcome::overflow);
  CHECK(outcome_of(f.ledger->transfer("t2", "alice", "rich", "gold", 1)) == Outcome::overflow);
  // Held quantity counts too: an expiry must never overflow available.
  f.ok(f.ledger->acquire("a4", "hoarder", "gold", INT64_MAX - 1));
  f.ok(f.ledger->hold("h4", "hoarder", "gold", INT64_MAX - 1, kSecond));
  CHECK(outcome_of(f.ledger->acquire("a5", "hoarder", "gold", 2)) == Outcome::overflow);
  CHECK(outcome_of(f.ledger->acquire("a6", "hoarder", "gold", 1)) == Outcome::ok);
  f.clock.advance_ns(kSecond);
  CHECK(f.balance("hoarder", "gold") == Balance{INT64_MAX, 0});
  REQUIRE(f.ledger->expire_due().ok());
  CHECK(outcome_of(f.ledger->commit("m1", 999)) == Outcome::hold_unknown);
  CHECK(outcome_of(f.ledger->release("r1", 999)) == Outcome::hold_unknown);
  CHECK(f.balance("alice", "gold") == Balance{10, 0});
  CHECK(f.balance("rich", "gold") == Balance{INT64_MAX, 0});
}

TEST_CASE("validation errors are answered at once and write nothing") {
  Fixture f;
  const std::uint64_t before = f.ledger->stats().next_seq;
  const std::string long_id(256, 'x');
  CHECK(f.ledger->acquire("", "alice", "gold", 1).code() == ErrorCode::invalid);
  CHECK(f.ledger->acquire(long_id, "alice", "gold", 1).code() == ErrorCode::invalid);
  CHECK(f.ledger->acquire("k", long_id, "gold", 1).code() == ErrorCode::invalid);
  CHECK(f.ledger->acquire("k", "alice", "", 1).code() == ErrorCode::invalid);
  CHECK(f.ledger->acquire("k", std::string("a\0b", 3), "gold", 1).code() == ErrorCode::invalid);
  CHECK(f.ledger->acquire("k", "alice", "gold", 0).code() == ErrorCode::invalid);
  CHECK(f.ledger->consume("k", "alice", "gold", -5).code() == ErrorCode::invalid);
  CHECK(f.ledger->transfer("k", "alice", "alice", "gold", 1).code() == ErrorCode::invalid);
  CHECK(f.ledger->hold("k", "alice", "gold", 1, 0).code() == ErrorCode::invalid);
  CHECK(f.ledger->hold("k", "alice", "gold", 1, 365 * 24 * 3600 * kSecond).code() == ErrorCode::invalid);
  CHECK(f.ledger->commit("k", 1, 0).code() == ErrorCode::invalid);
  CHECK(f.ledger->batch("k", {}).code() == ErrorCode::invalid);
  Metadata huge{std::string(kMetaBytesMax + 1, 'm'), "", ""};
  CHECK(f.ledger->acquire("k", "alice", "gold", 1, huge).code() == ErrorCode::invalid);
  CHECK(f.ledger->stats().next_seq == before);
  // The key is still free: nothing was recorded for it.
  CHECK(outcome_of(f.ledger->acquire("k", "alice", "gold", 1)) == Outcome::ok);
}

TEST_CASE("a retried key gets the recorded outcome; a different request conflicts") {
  Fixture f;
  Receipt first = f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  CHECK_FALSE(first.replay);
  Receipt again = f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  CHECK(again.replay);
  CHECK(again.seq == first.seq);
  CHECK(f.balance("alice", "gold") == Balance{10, 0});

  // A failed outcome is durable too, even after the state changed.
  CHECK(outcome_of(f.ledger->consume("c1", "alice", "gold", 15)) == Outcome::insufficient);
  f.ok(f.ledger->acquire("a2", "alice", "gold", 10));
  Receipt retry = f.ok(f.ledger->consume("c1", "alice", "gold", 15));
  CHECK(retry.outcome == Outcome::insufficient);
  CHECK(retry.replay);
  CHECK(f.balance("alice", "gold") == Balance{20, 0});

  CHECK(f.ledger->acquire("a1", "alice", "gold", 11).code() == ErrorCode::idempotency_conflict);
  CHECK(f.ledger->consume("a1", "alice", "gold", 10).code() == ErrorCode::idempotency_conflict);
  CHECK(f.ledger->acquire("a1", "bob", "gold", 10).code() == ErrorCode::idempotency_conflict);
  // Metadata is not part of the request's identity.
  CHECK(f.ok(f.ledger->acquire("a1", "alice", "gold", 10, {"restock", "po-7", "ops"})).replay);

  // Outcomes survive a restart.
  f.reopen();
  Receipt after = f.ok(f.ledger->consume("c1", "alice", "gold", 15));
  CHECK(after.outcome == Outcome::insufficient);
  CHECK(after.replay);
  CHECK(f.ledger->acquire("a1", "alice", "gold", 11).code() == ErrorCode::idempotency_conflict);
}

TEST_CASE("a decided hold's retry replays after the ttl limit was lowered below its ttl") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  const Receipt held = f.ok(f.ledger->hold("h1", "alice", "gold", 2, 3600 * kSecond));
  const std::vector<OpRequest> ops = {OpRequest::hold_of("alice", "gold", 1, 3600 * kSecond),
                                      OpRequest::acquire("bob", "gold", 1)};
  const Receipt batched = f.ok(f.ledger->batch("b1", ops));
  f.options.hold_ttl_ns_max = 60 * kSecond;
  f.reopen();
  const Receipt again = f.ok(f.ledger->hold("h1", "alice", "gold", 2, 3600 * kSecond));
  CHECK(again.replay);
  CHECK(again.hold == held.hold);
  const Receipt batch_again = f.ok(f.ledger->batch("b1", ops));
  CHECK(batch_again.replay);
  CHECK(batch_again.seq == batched.seq);
  // A new key is held to today's limit, named as before; a decided key
  // with a different request conflicts, whatever its ttl.
  const auto fresh = f.ledger->batch("b2", ops);
  CHECK(fresh.status().to_string() == "invalid: op 0: ttl out of range [1 ms, 60000 ms]");
  CHECK(f.ledger->hold("h2", "alice", "gold", 2, 0).status().to_string() ==
        "invalid: ttl out of range [1 ms, 60000 ms]");
  CHECK(f.ledger->hold("h1", "alice", "gold", 3, 3600 * kSecond).code() ==
        ErrorCode::idempotency_conflict);
  CHECK(f.balance("alice", "gold") == Balance{7, 3});
  CHECK(f.ledger->committed_seq() == 3);
}

TEST_CASE("two batches whose ops name holds differently never share a fingerprint") {
  // Back to back, a commit by key "AAAAAAAA" of 4 then a release of hold 7
  // are the bytes of a commit of hold 8 with qty 0x4141414141414141 then a
  // commit of hold 0x0500000000000000 with qty 7, unless the encoding
  // says which form each hold takes.
  Command by_key;
  by_key.batch = true;
  by_key.ops = {OpRequest::commit_key("AAAAAAAA", 4), OpRequest::release(7)};
  Command by_id;
  by_id.batch = true;
  by_id.ops = {OpRequest::commit(8, 0x4141414141414141),
               OpRequest::commit(0x0500000000000000, 7)};
  std::string scratch;
  CHECK(detail::fingerprint(by_key, &scratch) != detail::fingerprint(by_id, &scratch));
  // Through the ledger: the second, under the first's key, is a conflict,
  // not a replay of the first's outcome.
  Fixture f;
  CHECK(outcome_of(f.ledger->batch("settle", by_key.ops)) == Outcome::hold_unknown);
  CHECK(f.ledger->batch("settle", by_id.ops).code() == ErrorCode::idempotency_conflict);
  CHECK(f.ok(f.ledger->batch("settle", by_key.ops)).replay);
}

TEST_CASE("holds reserve; commit consumes, partially or whole; release frees") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "shop", "sku", 10));
  Receipt h1 = f.ok(f.ledger->hold("h1", "shop", "sku", 4, 60 * kSecond));
  CHECK(h1.outcome == Outcome::ok);
  CHECK(h1.hold == h1.seq);
  CHECK(f.balance("shop", "sku") == Balance{6, 4});

  Receipt h2 = f.ok(f.ledger->hold("h2", "shop", "sku", 5, 60 * kSecond));
  CHECK(f.balance("shop", "sku") == Balance{1, 9});
  CHECK(outcome_of(f.ledger->hold("h3", "shop", "sku", 2, 60 * kSecond)) == Outcome::insufficient);

  // Partial commit: 3 of 4 consumed, 1 back to available.
  CHECK(outcome_of(f.ledger->commit("m1", h1.hold, 3)) == Outcome::ok);
  CHECK(f.balance("shop", "sku") == Balance{2, 5});
  CHECK(outcome_of(f.ledger->commit("m2", h1.hold)) == Outcome::hold_finalized);
  CHECK(outcome_of(f.ledger->release("r1", h1.hold)) == Outcome::hold_finalized);
  CHECK(f.ledger->commit("m3", h2.hold, 6).code() == ErrorCode::invalid);

  CHECK(outcome_of(f.ledger->release("r2", h2.hold)) == Outcome::ok);
  CHECK(f.balance("shop", "sku") == Balance{7, 0});
  // Settled, the hold's state answers first, even for a qty above it.
  CHECK(outcome_of(f.ledger->commit("m5", h2.hold, 6)) == Outcome::hold_finalized);

  auto view = f.ledger->hold_info(h1.hold);
  REQUIRE(view.ok());
  CHECK(view->status == HoldStatus::committed);
  CHECK(view->committed_qty == 3);
  CHECK(f.ledger->hold_info(424242).code() == ErrorCode::not_found);

  // A whole commit.
  Receipt h4 = f.ok(f.ledger->hold("h4", "shop", "sku", 7, 60 * kSecond));
  CHECK(outcome_of(f.ledger->commit("m4", h4.hold)) == Outcome::ok);
  CHECK(f.balance("shop", "sku") == Balance{0, 0});
  // The hold id is the same on replay of the key.
  CHECK(f.ok(f.ledger->hold("h4", "shop", "sku", 7, 60 * kSecond)).hold == h4.hold);
}

TEST_CASE("a commit or release may name its hold by the hold's key") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "shop", "sku", 10));
  Receipt h = f.ok(f.ledger->hold("order-1/hold", "shop", "sku", 4, 60 * kSecond));
  Command commit;
  commit.key = "order-1/pay";
  commit.op = OpRequest::commit_key("order-1/hold", 3);
  Receipt paid = f.ok(f.ledger->execute(commit));
  CHECK(paid.outcome == Outcome::ok);
  CHECK(f.balance("shop", "sku") == Balance{7, 0});
  auto view = f.ledger->hold_info(h.hold);
  REQUIRE(view.ok());
  CHECK(view->committed_qty == 3);
  CHECK(f.ok(f.ledger->execute(commit)).replay);

  Command again;
  again.key = "order-1/release";
  again.op = OpRequest::release_key("order-1/hold");
  CHECK(outcome_of(f.ledger->execute(again)) == Outcome::hold_finalized);
  // A key that made no hold names none.
  Command wrong;
  wrong.key = "k2";
  wrong.op = OpRequest::release_key("a1");
  CHECK(outcome_of(f.ledger->execute(wrong)) == Outcome::hold_unknown);
  wrong.key = "k3";
  wrong.op = OpRequest::commit_key("never-seen");
  CHECK(outcome_of(f.ledger->execute(wrong)) == Outcome::hold_unknown);
  // Hold 0 is no hold's id: a release naming it names none.
  CHECK(outcome_of(f.ledger->release("k4", 0)) == Outcome::hold_unknown);
}

TEST_CASE("an op with a field its type does not use, naming its hold twice, or ops without "
          "batch, is invalid and writes nothing") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "shop", "sku", 10));
  const Receipt held = f.ok(f.ledger->hold("h1", "shop", "sku", 4, 60 * kSecond));
  std::vector<std::pair<OpRequest, std::string>> cases;
  OpRequest op = OpRequest::acquire("shop", "sku", 1);
  op.to = "b";
  cases.emplace_back(op, "acquire takes no to");
  op = OpRequest::consume("shop", "sku", 1);
  op.ttl_ns = kSecond;
  cases.emplace_back(op, "consume takes no ttl");
  op = OpRequest::transfer("shop", "b", "sku", 1);
  op.hold = held.hold;
  cases.emplace_back(op, "transfer takes no hold");
  op = OpRequest::hold_of("shop", "sku", 1, kSecond);
  op.hold_key = "h1";
  cases.emplace_back(op, "hold takes no hold");
  op = OpRequest::commit(held.hold);
  op.subject = "shop";
  cases.emplace_back(op, "commit takes no subject");
  op = OpRequest::release(held.hold);
  op.qty = 1;
  cases.emplace_back(op, "release takes no qty");
  op = OpRequest::commit_key("h1");
  op.hold = held.hold;
  cases.emplace_back(op, "not both");
  // In an OpRequest a commit's qty 0 is the whole hold; only a negative
  // one is refused, and the message says so.
  cases.emplace_back(OpRequest::commit(held.hold, -1),
                     "commit qty must not be negative (0 commits the whole hold)");
  const std::uint64_t before = f.ledger->stats().next_seq;
  int index = 0;
  for (const auto& [request, why] : cases) {
    CAPTURE(why);
    Command single;
    single.key = "bad" + std::to_string(index++);
    single.op = request;
    const Result<Receipt> alone = f.ledger->execute(single);
    CHECK(alone.code() == ErrorCode::invalid);
    CHECK(alone.status().message().find(why) != std::string::npos);
    Command batch;
    batch.key = "bad" + std::to_string(index++);
    batch.batch = true;
    batch.ops = {OpRequest::acquire("shop", "sku", 1), request};
    const Result<Receipt> inside = f.ledger->execute(batch);
    CHECK(inside.code() == ErrorCode::invalid);
    CHECK(inside.status().message().find("op 1: ") != std::string::npos);
  }
  // Ops meant for a batch, on a command that is not one, would be dropped.
  Command stray;
  stray.key = "stray";
  stray.op = OpRequest::acquire("shop", "sku", 1);
  stray.ops = {OpRequest::consume("shop", "sku", 5)};
  const Result<Receipt> refused = f.ledger->execute(stray);
  CHECK(refused.code() == ErrorCode::invalid);
  CHECK(refused.status().message().find("batch is not set") != std::string::npos);
  // And an op beside a batch's ops.
  stray.key = "stray2";
  stray.batch = true;
  const Result<Receipt> beside = f.ledger->execute(stray);
  CHECK(beside.code() == ErrorCode::invalid);
  CHECK(beside.status().message().find("batch is set") != std::string::npos);
  // A commit above its hold's qty, found only against the State, names
  // its op in a batch too.
  Command above;
  above.key = "above";
  above.batch = true;
  above.ops = {OpRequest::acquire("shop", "sku", 1), OpRequest::commit(held.hold, 5)};
  const Result<Receipt> too_much = f.ledger->execute(above);
  CHECK(too_much.code() == ErrorCode::invalid);
  CHECK(too_much.status().message() == "op 1: commit qty 5 exceeds the hold's qty 4");
  CHECK(f.ledger->stats().next_seq == before);
  CHECK(f.balance("shop", "sku") == Balance{6, 4});
}

TEST_CASE("expiry is a logged fact driven by the injected clock") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  Receipt h = f.ok(f.ledger->hold("h1", "alice", "gold", 4, 10 * kSecond));
  f.clock.advance_ns(10 * kSecond - 1);
  CHECK(f.balance("alice", "gold") == Balance{6, 4});
  f.clock.advance_ns(1);
  // Due now: reads never show it as held, even before its expire event,
  // which the read's own group writes (reads do not put it off).
  CHECK(f.balance("alice", "gold") == Balance{10, 0});
  CHECK(f.ledger->stats().next_seq == 4);
  auto view = f.ledger->hold_info(h.hold);
  REQUIRE(view.ok());
  CHECK(view->status == HoldStatus::expired);

  // acquire (1), hold (2), then one expire event (3), written once.
  REQUIRE(f.ledger->expire_due().ok());
  CHECK(f.ledger->stats().next_seq == 4);
  REQUIRE(f.ledger->expire_due().ok());
  CHECK(f.ledger->stats().next_seq == 4);
  CHECK(outcome_of(f.ledger->commit("m1", h.hold)) == Outcome::hold_expired);
  CHECK(outcome_of(f.ledger->release("r1", h.hold)) == Outcome::hold_expired);

  // A command stamped after a hold's expiry expires it first.
  Receipt h2 = f.ok(f.ledger->hold("h2", "alice", "gold", 10, kSecond));
  f.clock.advance_ns(2 * kSecond);
  CHECK(outcome_of(f.ledger->commit("m2", h2.hold)) == Outcome::hold_expired);
  CHECK(f.balance("alice", "gold") == Balance{10, 0});

  // Replay reproduces the expiries from the log, without the clock.
  const std::uint64_t digest = *f.ledger->digest();
  f.clock.set_ns(kStart);  // a clock gone backwards changes nothing
  f.reopen();
  CHECK(*f.ledger->digest() == digest);
  CHECK(outcome_of(f.ledger->commit("m2", h2.hold)) == Outcome::hold_expired);
  auto seen = f.ledger->hold_info(h2.hold);
  REQUIRE(seen.ok());
  CHECK(seen->status == HoldStatus::expired);
}

TEST_CASE("the writer expires due holds by itself when idle") {
  testing::TempDir dir;
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  options.durability = Durability::none;
  auto ledger = Ledger::open(options);
  REQUIRE(ledger.ok());
  REQUIRE(outcome_of((*ledger)->acquire("a1", "alice", "gold", 5)) == Outcome::ok);
  REQUIRE(outcome_of((*ledger)->hold("h1", "alice", "gold", 5, 20'000'000)) == Outcome::ok);
  const std::uint64_t before = (*ledger)->stats().next_seq;
  // Bounded wait for the idle timer (the hold lasts 20 ms).
  for (int attempt = 0; attempt < 500 && (*ledger)->stats().next_seq == before; attempt++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK((*ledger)->stats().next_seq == before + 1);
  CHECK((*ledger)->stats().open_holds == 0);
}

TEST_CASE("a batch applies all its ops or none") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "w1", "sku", 5));
  f.ok(f.ledger->acquire("a2", "w2", "sku", 5));
  Receipt both = f.ok(f.ledger->batch("b1", {OpRequest::hold_of("w1", "sku", 3, 60 * kSecond),
                                              OpRequest::hold_of("w2", "sku", 4, 60 * kSecond),
                                              OpRequest::transfer("w1", "w2", "sku", 2)}));
  REQUIRE(both.outcome == Outcome::ok);
  REQUIRE(both.holds.size() == 2);
  CHECK(both.holds[0] != both.holds[1]);
  CHECK(log::hold_id_seq(both.holds[0]) == both.seq);
  CHECK(f.balance("w1", "sku") == Balance{0, 3});
  CHECK(f.balance("w2", "sku") == Balance{3, 4});

  // The third op fails: nothing of the first two happens.
  Receipt failed = f.ok(f.ledger->batch("b2", {OpRequest::acquire("w1", "sku", 100),
                                                OpRequest::commit(both.holds[0]),
                                                OpRequest::consume("w2", "sku", 4)}));
  CHECK(failed.outcome == Outcome::insufficient);
  CHECK(failed.failed_index == 2);
  CHECK(f.balance("w1", "sku") == Balance{0, 3});
  CHECK(f.balance("w2", "sku") == Balance{3, 4});

  // Later ops see earlier ops' effects; settling a hold twice fails.
  Receipt chained = f.ok(f.ledger->batch("b3", {OpRequest::acquire("w1", "sku", 10),
                                                 OpRequest::consume("w1", "sku", 10)}));
  CHECK(chained.outcome == Outcome::ok);
  Receipt twice = f.ok(f.ledger->batch("b4", {OpRequest::commit(both.holds[0]),
                                               OpRequest::release(both.holds[0])}));
  CHECK(twice.outcome == Outcome::hold_finalized);
  CHECK(twice.failed_index == 1);

  // Batch holds are committed by their own ids, and replays return them.
  CHECK(outcome_of(f.ledger->commit("m1", both.holds[1], 1)) == Outcome::ok);
  CHECK(f.balance("w2", "sku") == Balance{6, 0});
  f.reopen();
  Receipt replayed = f.ok(f.ledger->batch("b1", {OpRequest::hold_of("w1", "sku", 3, 60 * kSecond),
                                                  OpRequest::hold_of("w2", "sku", 4, 60 * kSecond),
                                                  OpRequest::transfer("w1", "w2", "sku", 2)}));
  CHECK(replayed.replay);
  CHECK(replayed.holds == both.holds);
  CHECK(f.ok(f.ledger->batch("b2", {OpRequest::acquire("w1", "sku", 100),
                                    OpRequest::commit(both.holds[0]),
                                    OpRequest::consume("w2", "sku", 4)})).failed_index == 2);
}

TEST_CASE("the idempotency window forgets keys by log time") {
  Fixture f;
  f.reopen_with_window(60 * kSecond);
  f.ok(f.ledger->acquire("a1", "alice", "gold", 1));
  f.clock.advance_ns(61 * kSecond);
  f.ok(f.ledger->acquire("a2", "alice", "gold", 1));  // its timestamp moves the window
  Receipt again = f.ok(f.ledger->acquire("a1", "alice", "gold", 1));
  CHECK_FALSE(again.replay);
  CHECK(f.balance("alice", "gold") == Balance{3, 0});
}

TEST_CASE("a key and a finalized hold are forgotten one window after them, on a quiet ledger too") {
  Fixture f;
  f.reopen_with_window(60 * kSecond);
  f.ok(f.ledger->acquire("a1", "alice", "gold", 10));  // stamped t0
  f.clock.advance_ns(10 * kSecond);
  const Receipt held = f.ok(f.ledger->hold("h1", "alice", "gold", 4, 5 * kSecond));
  f.ok(f.ledger->commit("c1", held.hold, 4));  // the hold finalized at t0 + 10 s
  // No event between t0 + 10 s and each request below: only the request's
  // own stamp decides what it finds.
  f.clock.advance_ns(50 * kSecond - 1);
  CHECK(f.ok(f.ledger->acquire("a1", "alice", "gold", 10)).replay);
  f.clock.advance_ns(1);
  CHECK_FALSE(f.ok(f.ledger->acquire("a1", "alice", "gold", 10)).replay);
  CHECK(f.balance("alice", "gold") == Balance{16, 0});
  f.clock.advance_ns(10 * kSecond - 1);
  CHECK(f.ledger->hold_info(held.hold).ok());
  CHECK(outcome_of(f.ledger->commit("c2", held.hold, 4)) == Outcome::hold_finalized);
  f.clock.advance_ns(1);
  CHECK(f.ledger->hold_info(held.hold).code() == ErrorCode::not_found);
  CHECK(outcome_of(f.ledger->release("r1", held.hold)) == Outcome::hold_unknown);
  f.reopen();
  CHECK(outcome_of(f.ledger->release("r1", held.hold)) == Outcome::hold_unknown);
  CHECK(f.ok(f.ledger->release("r1", held.hold)).replay);
}

TEST_CASE("log time moves only with events: a clock seen ahead by reads stamps nothing later") {
  Fixture f;
  f.reopen_with_window(10 * kSecond);
  f.ok(f.ledger->acquire("k1", "alice", "gold", 100));
  // The clock runs ahead for a moment: a read and a refused command see it,
  // and no event records it.
  f.clock.advance_ns(100 * kSecond);
  CHECK(f.balance("alice", "gold") == Balance{100, 0});
  CHECK(f.ledger->acquire("k2", "alice", "gold", 0).code() == ErrorCode::invalid);
  f.clock.advance_ns(-99 * kSecond);
  // As after a restart: the retry is stamped by the clock and the log, a
  // second after its key, and replays.
  const Receipt retried = f.ok(f.ledger->acquire("k1", "alice", "gold", 100));
  CHECK(retried.replay);
  CHECK(f.ok(f.ledger->acquire("k3", "alice", "gold", 1)).timestamp_ns ==
        retried.timestamp_ns + kSecond);
  CHECK(f.balance("alice", "gold") == Balance{101, 0});
}

TEST_CASE("a hold as of a time is forgotten one window after it was finalized") {
  Fixture f;
  f.reopen_with_window(60 * kSecond);
  f.ok(f.ledger->acquire("a1", "alice", "gold", 10));
  const Receipt held = f.ok(f.ledger->hold("h1", "alice", "gold", 4, 5 * kSecond));
  const Receipt paid = f.ok(f.ledger->commit("c1", held.hold, 4));
  f.clock.advance_ns(60 * kSecond);  // no event after the commit
  const std::int64_t gone_ns = paid.timestamp_ns + 60 * kSecond;
  CHECK(f.ledger->hold_info(held.hold, AsOf::at_time(gone_ns - 1)).ok());
  const Status gone = f.ledger->hold_info(held.hold, AsOf::at_time(gone_ns)).status();
  CHECK(gone.code() == ErrorCode::not_found);
  // Named by the time: at the seq that time falls after, the hold is known.
  CHECK(gone.message().starts_with("no hold " + std::to_string(held.hold) + " as of "));
  CHECK(f.ledger->hold_info(held.hold).code() == ErrorCode::not_found);
  CHECK(f.ledger->hold_info(held.hold, AsOf::at_seq(paid.seq)).ok());
}

TEST_CASE("a hold longer than the window can be settled by its key after the window") {
  Fixture f;  // the default window: 24 h
  constexpr std::int64_t kHour = 3600 * kSecond;
  f.ok(f.ledger->acquire("a1", "shop", "sku", 10));
  const Receipt held = f.ok(f.ledger->hold("order-1/hold", "shop", "sku", 4, 48 * kHour));
  f.clock.advance_ns(25 * kHour);
  f.ok(f.ledger->acquire("a2", "shop", "sku", 1));  // its timestamp moves the window
  for (bool reopen : {false, true}) {
    CAPTURE(reopen);
    if (reopen) {
      REQUIRE(f.ledger->snapshot_now().ok());
      f.reopen();
    }
    Command commit;
    commit.key = reopen ? "order-1/pay-2" : "order-1/pay";
    commit.op = OpRequest::commit_key("order-1/hold", 1);
    const Receipt paid = f.ok(f.ledger->execute(commit));
    CHECK(paid.outcome == (reopen ? Outcome::hold_finalized : Outcome::ok));
  }
  CHECK(f.balance("shop", "sku") == Balance{10, 0});  // 11 acquired, 1 of the 4 held committed
  CHECK(f.ledger->hold_info(held.hold)->committed_qty == 1);
  // Sent again after the window, the hold request is decided anew.
  const Receipt second = f.ok(f.ledger->hold("order-1/hold", "shop", "sku", 2, 48 * kHour));
  CHECK_FALSE(second.replay);
  CHECK(second.hold != held.hold);
  Command release;
  release.key = "order-1/release";
  release.op = OpRequest::release_key("order-1/hold");
  CHECK(f.ok(f.ledger->execute(release)).outcome == Outcome::ok);
  CHECK(f.ledger->hold_info(second.hold)->status == HoldStatus::released);
}

TEST_CASE("reopening rebuilds the same state from the log") {
  Fixture f(Durability::sync);
  for (int op_index = 0; op_index < 200; op_index++) {
    f.ok(f.ledger->acquire(name("a", op_index), name("s", op_index % 7), name("i", op_index % 3), 10 + op_index));
    if (op_index % 5 == 0) {
      f.ok(f.ledger->hold(name("h", op_index), name("s", op_index % 7), name("i", op_index % 3), 5, 3600 * kSecond));
    }
  }
  const LedgerStats before = f.ledger->stats();
  const std::uint64_t digest_before = *f.ledger->digest();
  const std::uint64_t id = f.ledger->ledger_id();
  CHECK(id != 0);
  f.reopen();
  const LedgerStats after = f.ledger->stats();
  CHECK(*f.ledger->digest() == digest_before);
  CHECK(f.ledger->ledger_id() == id);
  CHECK(after.next_seq == before.next_seq);
  CHECK(after.events_replayed == before.next_seq - 1);
}

TEST_CASE("a relative data_dir stays where it was opened when the process changes directory") {
  testing::TempDir dir;
  testing::TempDir elsewhere;
  // Back where the test began however it ends.
  struct Restore {
    std::filesystem::path start = std::filesystem::current_path();
    ~Restore() { std::filesystem::current_path(start); }
  } restore;
  std::filesystem::current_path(dir.path());
  LedgerOptions options = bare_options(dir, Durability::none);
  options.data_dir = "data";
  options.segment_size_bytes = log::kSegmentSizeBytesMin;
  auto opened = Ledger::open(options);
  std::filesystem::current_path(elsewhere.path());
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  std::unique_ptr<Ledger> ledger = std::move(*opened);
  CHECK(ledger->data_dir() == (std::filesystem::path(dir.path()) / "data").string());
  // Enough to fill several segments: each new one is opened after the chdir.
  const std::string reason(1000, 'r');
  for (int op_index = 0; op_index < 300; op_index++) {
    const auto receipt =
        ledger->acquire(name("a", op_index), "alice", "gold", 1, Metadata{reason, "", ""});
    REQUIRE_MESSAGE(receipt.ok(), receipt.status().to_string());
  }
  REQUIRE(ledger->close().ok());
  ledger.reset();
  CHECK_FALSE(std::filesystem::exists(elsewhere.sub("data")));
  options.data_dir = dir.sub("data");
  auto reopened = Ledger::open(options);
  REQUIRE_MESSAGE(reopened.ok(), reopened.status().to_string());
  CHECK((*reopened)->balance("alice", "gold")->available == 300);
}

TEST_CASE("a directory opens again in the same process once its closed Ledger is destroyed") {
  testing::TempDir dir;
  const LedgerOptions options = bare_options(dir, Durability::none);
  auto first = Ledger::open(options);
  REQUIRE(first.ok());
  REQUIRE((*first)->acquire("k1", "alice", "gold", 1).ok());
  REQUIRE((*first)->close().ok());
  // Closed, it still holds its stores: a second Ledger beside it is refused,
  // by whatever path it names the directory.
  LedgerOptions again = options;
  again.data_dir = dir.sub("data") + "/.";
  const auto beside = Ledger::open(again);
  CHECK(beside.code() == ErrorCode::locked);
  CHECK(beside.status().message().find("destroy it") != std::string::npos);
  first->reset();
  auto reopened = Ledger::open(again);
  REQUIRE_MESSAGE(reopened.ok(), reopened.status().to_string());
  CHECK((*reopened)->balance("alice", "gold")->available == 1);
}

TEST_CASE("cancel_open stops the open's replay with closed; open_progress counts the replay") {
  Fixture f;
  for (int op_index = 0; op_index < 50; op_index++) {
    f.ok(f.ledger->acquire(name("a", op_index), "alice", "gold", 1));
  }
  REQUIRE(f.ledger->close().ok());
  f.ledger.reset();
  std::atomic<bool> cancel{true};
  f.options.cancel_open = &cancel;
  CHECK(Ledger::open(f.options).code() == ErrorCode::closed);
  cancel = false;
  OpenProgress progress;
  f.options.open_progress = &progress;
  f.reopen();
  CHECK(f.balance("alice", "gold").available == 50);
  CHECK(f.ledger->stats().events_replayed == 50);
  CHECK(progress.snapshot_seq.load() == 0);  // no snapshot: the whole log
  CHECK(progress.events.load() == 50);

  // From a snapshot: its seq, and the events after it.
  REQUIRE(f.ledger->snapshot_now().ok());
  for (int op_index = 50; op_index < 70; op_index++) {
    f.ok(f.ledger->acquire(name("a", op_index), "alice", "gold", 1));
  }
  OpenProgress from_snapshot;
  f.options.open_progress = &from_snapshot;
  f.reopen();
  CHECK(f.balance("alice", "gold").available == 70);
  CHECK(from_snapshot.snapshot_seq.load() == 50);
  CHECK(from_snapshot.events.load() == 20);
}

TEST_CASE("snapshot_now while no event is durable is invalid, and the ledger reopens") {
  Fixture f;
  CHECK(f.ledger->snapshot_now().code() == ErrorCode::invalid);
  CHECK(outcome_of(f.ledger->acquire("a1", "alice", "gold", 5)) == Outcome::ok);
  f.reopen();  // a snapshot of no event would make every open loop
  CHECK(f.balance("alice", "gold").available == 5);
  const auto taken = f.ledger->snapshot_now();
  REQUIRE(taken.ok());
  CHECK(*taken == 1);
}

TEST_CASE("no answer rests on a group whose write failed") {
  // Commands and reads decided while the failing group was being written
  // saw its events in the state: they answer an error, never them.
  testing::TempDir dir;
  log::FaultyFileSystem fs(log::posix_file_system());
  auto ledger = open_sync_on(dir, fs);
  REQUIRE(outcome_of(ledger->acquire("a1", "alice", "gold", 5)) == Outcome::ok);
  const auto submit = [&](std::string key, OpRequest op) {
    auto answer = std::make_shared<std::promise<Result<Receipt>>>();
    Command command;
    command.key = std::move(key);
    command.op = std::move(op);
    ledger->submit(command, [answer](Result<Receipt> receipt) { answer->set_value(receipt); });
    return answer->get_future();
  };
  fs.fail_sync();
  fs.hold_next_sync();
  auto applied = submit("a2", OpRequest::acquire("alice", "gold", 100));
  REQUIRE(fs.wait_until_sync_held(std::chrono::seconds(60)));
  // Decided while a2's group waits for its sync: on a state holding a2.
  auto conflict = submit("a2", OpRequest::acquire("alice", "gold", 7));
  auto spent = submit("a3", OpRequest::consume("alice", "gold", 50));
  std::promise<Result<Balance>> read;
  ledger->submit_balance("alice", "gold",
                            [&read](Result<Balance> balance) { read.set_value(balance); });
  // Time for the writer to decide them before the sync fails. Any decided
  // after it are refused (read_only): the checks below hold either way.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  fs.release_sync();
  CHECK(applied.get().code() == ErrorCode::io_error);
  const Result<Receipt> conflicted = conflict.get();
  CHECK_FALSE(conflicted.ok());
  CHECK(conflicted.code() != ErrorCode::idempotency_conflict);
  CHECK_FALSE(spent.get().ok());
  const Result<Balance> balance = read.get_future().get();
  if (balance.ok()) CHECK(balance->available == 5);
  CHECK(ledger->read_only());
}

TEST_CASE("a failed sync with a full batch waiting turns the ledger read-only, not aborts it") {
  // While a group's sync waits, the writer fills the other batch (8 MiB)
  // and waits for room. The sync fails; that batch is handed to the I/O
  // side and not written, and the writer must be able to seal into it
  // again.
  testing::TempDir dir;
  log::FaultyFileSystem fs(log::posix_file_system());
  auto ledger = open_sync_on(dir, fs);
  REQUIRE(outcome_of(ledger->acquire("a0", "alice", "gold", 1)) == Outcome::ok);
  std::mutex mu;
  std::condition_variable answered_cv;
  int answered = 0;
  const auto count = [&](Result<Receipt>) {
    std::lock_guard<std::mutex> guard(mu);
    answered++;
    answered_cv.notify_all();
  };
  fs.fail_sync();
  fs.hold_next_sync();
  Command first;
  first.key = "a1";
  first.op = OpRequest::acquire("alice", "gold", 1);
  ledger->submit(first, count);
  REQUIRE(fs.wait_until_sync_held(std::chrono::seconds(60)));
  constexpr int kCommands = 4000;  // about 3 KiB each: 12 MiB, past one batch
  const std::string text(1000, 'x');
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    fs.release_sync();
  });
  for (int index = 0; index < kCommands; index++) {
    Command command;
    command.key = "b";
    command.key += std::to_string(index);
    command.op = OpRequest::acquire("alice", "gold", 1);
    command.meta = Metadata{text, text, text};
    ledger->submit(std::move(command), count);
  }
  release.join();
  {
    std::unique_lock<std::mutex> guard(mu);
    answered_cv.wait(guard, [&] { return answered == kCommands + 1; });
  }
  CHECK(ledger->read_only());
  CHECK_FALSE(ledger->close().ok());  // names the failed write
}

TEST_CASE("concurrent callers share fsyncs") {
  testing::TempDir dir;
  log::FaultyFileSystem fs(log::posix_file_system());
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  options.durability = Durability::sync;
  options.fs = &fs;
  auto ledger = Ledger::open(options);
  REQUIRE(ledger.ok());
  constexpr int kThreads = 8;
  constexpr int kOpsPerThread = 100;
  const std::uint64_t syncs_before = fs.syncs();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int thread_index = 0; thread_index < kThreads; thread_index++) {
    threads.emplace_back([&, thread_index] {
      for (int op_index = 0; op_index < kOpsPerThread; op_index++) {
        const std::string key = name(name("t", thread_index) + "-", op_index);
        auto r = (*ledger)->acquire(key, name("s", thread_index), "gold", 1);
        if (!r.ok() || r->outcome != Outcome::ok) failures++;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(failures.load() == 0);
  const std::uint64_t syncs = fs.syncs() - syncs_before;
  MESSAGE("ops=", kThreads * kOpsPerThread, " fdatasyncs=", syncs);
  CHECK(syncs > 0);
  CHECK(syncs < kThreads * kOpsPerThread / 2);
  for (int thread_index = 0; thread_index < kThreads; thread_index++) {
    auto b = (*ledger)->balance(name("s", thread_index), "gold");
    REQUIRE(b.ok());
    CHECK(b->available == kOpsPerThread);
  }
}

// The op_index-th acquire of one gold for alice, under key k<op_index>.
Command gold_for_alice(int op_index) {
  Command command;
  command.key = name("k", op_index);
  command.op = OpRequest::acquire("alice", "gold", 1);
  return command;
}

TEST_CASE("close() syncs the log under async and none durability too") {
  for (const Durability durability : {Durability::async, Durability::none}) {
    CAPTURE(static_cast<int>(durability));
    testing::TempDir dir;
    log::FaultyFileSystem fs(log::posix_file_system());
    LedgerOptions options = bare_options(dir, durability);
    options.sync_interval_ms = 60'000;
    options.fs = &fs;
    auto ledger = Ledger::open(options);
    REQUIRE(ledger.ok());
    for (int op_index = 0; op_index < 3; op_index++) {
      CHECK(outcome_of((*ledger)->execute(gold_for_alice(op_index))) == Outcome::ok);
    }
    const std::uint64_t syncs_before = fs.syncs();
    REQUIRE((*ledger)->close().ok());
    CHECK(fs.syncs() == syncs_before + 1);
  }
}

TEST_CASE("non-blocking submit completes in order once durable") {
  Fixture f(Durability::sync);
  constexpr int kOps = 2000;
  std::vector<std::uint64_t> seqs;
  std::mutex mutex;
  std::atomic<int> done{0};
  for (int op_index = 0; op_index < kOps; op_index++) {
    f.ledger->submit(gold_for_alice(op_index), [&](Result<Receipt> r) {
      CHECK(r.ok());  // not REQUIRE: this runs on the ledger's thread
      if (!r.ok()) return;
      std::lock_guard<std::mutex> guard(mutex);
      seqs.push_back(r->seq);
      done++;
    });
  }
  REQUIRE(f.ledger->close().ok());
  CHECK(done.load() == kOps);
  CHECK(std::is_sorted(seqs.begin(), seqs.end()));
  f.reopen();
  CHECK(f.balance("alice", "gold") == Balance{kOps, 0});
}

TEST_CASE("a deep queue of commands naming new and known names applies as a replay does") {
  // The writer looks up the names and balances of the commands ahead of the
  // one it decides, and a queue this deep gives it long batches: names are
  // first used a command or two before the look-ahead's answers are used.
  // Every kind of command, and batches; the state must be the log's.
  Fixture f;
  constexpr int kOps = 3000;
  // Counted, not checked, on the ledger's thread: a failed check there
  // would throw where no test catches it.
  std::atomic<int> done{0};
  std::atomic<int> failed{0};
  const auto submit = [&](std::string key, OpRequest op) {
    Command command;
    command.key = std::move(key);
    command.op = std::move(op);
    f.ledger->submit(std::move(command), [&](Result<Receipt> r) {
      (r.ok() ? done : failed)++;
    });
  };
  for (int op_index = 0; op_index < kOps; op_index++) {
    const std::string subject = name("s", op_index / 3);
    const std::string other = name("s", op_index / 3 + 1);
    const std::string item = name("i", op_index / 5);
    switch (op_index % 6) {
      case 0: submit(name("a", op_index), OpRequest::acquire(subject, item, 50)); break;
      case 1: submit(name("t", op_index), OpRequest::transfer(subject, other, item, 7)); break;
      case 2:
        submit(name("h", op_index), OpRequest::hold_of(other, item, 3, 3600 * kSecond));
        break;
      case 3: submit(name("c", op_index), OpRequest::commit_key(name("h", op_index - 1))); break;
      case 4: submit(name("u", op_index), OpRequest::consume(other, item, 2)); break;
      default: {
        Command batch;
        batch.key = name("b", op_index);
        batch.batch = true;
        batch.ops = {OpRequest::acquire(other, item, 4), OpRequest::consume(subject, item, 1)};
        f.ledger->submit(std::move(batch), [&](Result<Receipt> r) {
          (r.ok() ? done : failed)++;
        });
      }
    }
  }
  const std::uint64_t digest = *f.ledger->digest();
  CHECK(done.load() == kOps);
  CHECK(failed.load() == 0);
  f.reopen();
  CHECK(*f.ledger->digest() == digest);
  CHECK(f.ledger->stats().events_replayed == kOps);
}

TEST_CASE("an event is stamped no earlier than its command arrived, nor later than its ack") {
  // The writer reuses one clock read for a run of queued commands; each of
  // them still arrived before that read.
  Fixture f(Durability::sync);
  constexpr int kOps = 3000;
  std::vector<std::int64_t> submitted_ns(kOps);
  std::vector<std::int64_t> acked_ns(kOps);
  std::vector<std::int64_t> stamped_ns(kOps);
  for (int op_index = 0; op_index < kOps; op_index++) {
    f.clock.advance_ns(1000);
    submitted_ns[op_index] = f.clock.now_ns();
    f.ledger->submit(gold_for_alice(op_index), [&, op_index](Result<Receipt> r) {
      CHECK(r.ok());
      if (!r.ok()) return;
      acked_ns[op_index] = f.clock.now_ns();
      stamped_ns[op_index] = r->timestamp_ns;
    });
  }
  REQUIRE(f.ledger->close().ok());
  for (int op_index = 0; op_index < kOps; op_index++) {
    CHECK(stamped_ns[op_index] >= submitted_ns[op_index]);
    CHECK(stamped_ns[op_index] <= acked_ns[op_index]);
    if (op_index > 0) CHECK(stamped_ns[op_index] >= stamped_ns[op_index - 1]);
  }
}

TEST_CASE("non-blocking reads see every mutation submitted before them, in order") {
  Fixture f(Durability::sync);
  constexpr int kOps = 500;
  std::mutex mutex;
  std::vector<std::int64_t> seen;  // the balance each read saw, in completion order
  std::vector<std::string> order; // "m" for a mutation's completion, "r" for a read's
  for (int op_index = 0; op_index < kOps; op_index++) {
    f.ledger->submit(gold_for_alice(op_index), [&](Result<Receipt> r) {
      CHECK(r.ok());
      if (!r.ok()) return;
      std::lock_guard<std::mutex> guard(mutex);
      order.push_back("m");
    });
    f.ledger->submit_balance("alice", "gold", [&](Result<Balance> b) {
      CHECK(b.ok());
      if (!b.ok()) return;
      std::lock_guard<std::mutex> guard(mutex);
      seen.push_back(b->available);
      order.push_back("r");
    });
  }
  Result<Receipt> hold = f.ledger->hold("h", "alice", "gold", 5, 60 * kSecond);
  REQUIRE(hold.ok());
  std::optional<Result<std::vector<ItemBalance>>> listed;
  std::optional<Result<HoldView>> held;
  std::optional<Result<HoldView>> unknown;
  std::optional<Result<Balance>> invalid;
  f.ledger->submit_list("alice", [&](Result<std::vector<ItemBalance>> items) { listed = std::move(items); });
  f.ledger->submit_hold_info(hold->hold, [&](Result<HoldView> view) { held = std::move(view); });
  f.ledger->submit_hold_info(999999, [&](Result<HoldView> view) { unknown = std::move(view); });
  // Invalid arguments are answered at once, on the caller's thread.
  f.ledger->submit_balance("", "gold", [&](Result<Balance> b) { invalid = std::move(b); });
  REQUIRE(invalid.has_value());
  CHECK(invalid->code() == ErrorCode::invalid);
  REQUIRE(f.ledger->close().ok());

  // Read i follows mutation i: it sees i + 1 acquired, and is answered after it.
  REQUIRE(seen.size() == kOps);
  for (int op_index = 0; op_index < kOps; op_index++) CHECK(seen[op_index] == op_index + 1);
  REQUIRE(order.size() == 2 * kOps);
  for (int op_index = 0; op_index < kOps; op_index++) {
    CHECK(order[2 * op_index] == "m");
    CHECK(order[2 * op_index + 1] == "r");
  }
  REQUIRE(listed.has_value());
  REQUIRE(listed->ok());
  REQUIRE((*listed)->size() == 1);
  CHECK((**listed)[0].balance == Balance{kOps - 5, 5});
  REQUIRE(held.has_value());
  REQUIRE(held->ok());
  CHECK((*held)->qty == 5);
  CHECK((*held)->status == HoldStatus::open);
  REQUIRE(unknown.has_value());
  CHECK(unknown->code() == ErrorCode::not_found);

  // After close, a read is answered `closed` at once.
  std::optional<Result<Balance>> closed;
  f.ledger->submit_balance("alice", "gold", [&](Result<Balance> b) { closed = std::move(b); });
  REQUIRE(closed.has_value());
  CHECK(closed->code() == ErrorCode::closed);
  // So are the reads that do not go through the writer.
  const AsOf first = AsOf::at_seq(1);
  CHECK(f.ledger->balance("alice", "gold").code() == ErrorCode::closed);
  CHECK(f.ledger->balance("alice", "gold", first).code() == ErrorCode::closed);
  CHECK(f.ledger->list("alice", first).code() == ErrorCode::closed);
  CHECK(f.ledger->hold_info(hold->hold, first).code() == ErrorCode::closed);
  CHECK(f.ledger->for_each_balance(first, [](auto, auto, Balance) {}).code() == ErrorCode::closed);
  CHECK(f.ledger->snapshot_now().code() == ErrorCode::closed);
}

TEST_CASE("a failed fsync turns the ledger read-only until reopened") {
  testing::TempDir dir;
  log::FaultyFileSystem fs(log::posix_file_system());
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  options.fs = &fs;
  {
    auto ledger = Ledger::open(options);
    REQUIRE(ledger.ok());
    REQUIRE(outcome_of((*ledger)->acquire("a1", "alice", "gold", 1)) == Outcome::ok);
    CHECK_FALSE((*ledger)->read_only());
    fs.fail_sync(1);
    CHECK((*ledger)->acquire("a2", "alice", "gold", 1).code() == ErrorCode::io_error);
    CHECK((*ledger)->read_only());
    CHECK((*ledger)->stats().read_only);
    CHECK((*ledger)->stats().next_seq == 2);  // the log's, though the state is not read
    CHECK((*ledger)->acquire("a3", "alice", "gold", 1).code() == ErrorCode::read_only);
    CHECK((*ledger)->balance("alice", "gold").code() == ErrorCode::read_only);
    const Status closed = (*ledger)->close();
    CHECK_FALSE(closed.ok());
    CHECK((*ledger)->close().to_string() == closed.to_string());  // idempotent
  }
  fs.disarm();
  auto reopened = Ledger::open(options);
  REQUIRE(reopened.ok());
  auto b = (*reopened)->balance("alice", "gold");
  REQUIRE(b.ok());
  CHECK(b->available >= 1);  // a2 may or may not have reached the disk
  CHECK(outcome_of((*reopened)->acquire("a3", "alice", "gold", 1)) == Outcome::ok);
}

TEST_CASE("a ledger out of file descriptors for a moment at a segment rotation goes on writing") {
  testing::TempDir dir;
  log::FaultyFileSystem fs(log::posix_file_system());
  LedgerOptions options = bare_options(dir, Durability::sync);
  options.fs = &fs;
  options.segment_size_bytes = log::kSegmentSizeBytesMin;
  auto ledger = Ledger::open(options);
  REQUIRE(ledger.ok());
  // The first 4 tries to create the next segment's file fail.
  fs.fail_creates(4);
  constexpr int kAcquired = 2000;  // 4 segments and more
  for (int index = 0; index < kAcquired; index++) {
    std::string key = "k";
    key += std::to_string(index);
    REQUIRE(outcome_of((*ledger)->acquire(key, "alice", "gold", 1)) == Outcome::ok);
  }
  CHECK_FALSE((*ledger)->read_only());
  auto segments = fs.list(log_dir(options.data_dir));
  REQUIRE(segments.ok());
  CHECK(segments->size() >= 4);
  CHECK((*ledger)->balance("alice", "gold")->available == kAcquired);
  REQUIRE((*ledger)->close().ok());
  ledger->reset();
  auto reopened = Ledger::open(options);
  REQUIRE(reopened.ok());
  CHECK((*reopened)->balance("alice", "gold")->available == kAcquired);
}

TEST_CASE("a ledger whose first segment waits for room has its id once the segment is made") {
  testing::TempDir dir;
  LedgerOptions options = bare_options(dir, Durability::sync);
  {
    auto made = Ledger::open(options);  // makes the directory and segment 1
    REQUIRE(made.ok());
    REQUIRE((*made)->close().ok());
  }
  // A crash as segment 1 was made leaves its file empty; the disk is full.
  const std::string first = log_dir(options.data_dir) + "/" + log::segment_file_name(1);
  REQUIRE(::truncate(first.c_str(), 0) == 0);
  log::FaultyFileSystem fs(log::posix_file_system());
  options.fs = &fs;
  fs.fail_writes_after_bytes(0);
  auto ledger = Ledger::open(options);  // opens, for reads
  REQUIRE_MESSAGE(ledger.ok(), ledger.status().to_string());
  CHECK((*ledger)->ledger_id() == 0);
  fs.disarm();
  REQUIRE(outcome_of((*ledger)->acquire("k", "alice", "gold", 1)) == Outcome::ok);
  const auto id = log::read_log_id(fs, log_dir(options.data_dir));
  REQUIRE(id.ok());
  CHECK((*ledger)->ledger_id() == *id);
  CHECK(*id != 0);
}

TEST_CASE("a second ledger on the same directory is refused") {
  Fixture f;
  LedgerOptions options = f.options;
  auto second = Ledger::open(options);
  REQUIRE_FALSE(second.ok());
  CHECK(second.code() == ErrorCode::locked);
  CHECK(second.status().message().find(f.options.data_dir) != std::string::npos);
}

TEST_CASE("options a ledger cannot honour are refused before it touches the directory") {
  testing::TempDir dir;
  LedgerOptions options;
  options.data_dir = dir.sub("data");
  std::vector<std::pair<LedgerOptions, std::string>> cases;
  cases.emplace_back(options, "segment_size_bytes");
  cases.back().first.segment_size_bytes = 1;
  cases.emplace_back(options, "segment_size_bytes");  // not whole frames
  cases.back().first.segment_size_bytes = log::kSegmentSizeBytesMin + 4;
  cases.emplace_back(options, "queue_depth_max");
  cases.back().first.queue_depth_max = 0;
  cases.emplace_back(options, "queue_depth_max");  // no queue of that size could be made
  cases.back().first.queue_depth_max = SIZE_MAX;
  cases.emplace_back(options, "durability");
  cases.back().first.durability = static_cast<Durability>(7);
  cases.emplace_back(options, "idempotency window");
  cases.back().first.idempotency_window_ns = -1;
  cases.emplace_back(options, "snapshot_retain");
  cases.back().first.snapshot_retain = 0;
  cases.emplace_back(options, "snapshot_every_seconds");
  cases.back().first.snapshot_every_seconds = -5;
  cases.emplace_back(options, "sync_interval_ms");
  cases.back().first.sync_interval_ms = -1;
  cases.emplace_back(options, "log_scrub_seconds");
  cases.back().first.log_scrub_seconds = -1;
  for (const auto& [bad, why] : cases) {
    CAPTURE(why);
    const auto opened = Ledger::open(bad);
    CHECK(opened.code() == ErrorCode::invalid);
    CHECK(opened.status().message().find(why) != std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(options.data_dir));
}

TEST_CASE("a hold that would expire past the largest timestamp is invalid, and nothing written") {
  Fixture f;
  f.options.hold_ttl_ns_max = INT64_MAX;
  f.reopen();
  CHECK(outcome_of(f.ledger->acquire("a1", "alice", "gold", 5)) == Outcome::ok);
  const auto past_the_end = f.ledger->hold("h1", "alice", "gold", 2, INT64_MAX);
  CHECK(past_the_end.code() == ErrorCode::invalid);
  CHECK(past_the_end.status().message().find("past the largest timestamp") != std::string::npos);
  OpRequest hold;
  hold.type = OpType::hold;
  hold.subject = "alice";
  hold.item = "gold";
  hold.qty = 1;
  hold.ttl_ns = INT64_MAX - kStart + 1;  // one past the largest timestamp
  const auto in_batch = f.ledger->batch("b1", {hold, hold});
  CHECK(in_batch.code() == ErrorCode::invalid);
  CHECK(in_batch.status().message().starts_with("op 0: ttl"));
  CHECK_FALSE(f.ledger->read_only());
  CHECK(f.ledger->committed_seq() == 1);
  // A ttl that ends on the largest timestamp is a hold.
  hold.ttl_ns = INT64_MAX - f.clock.now_ns();
  CHECK(outcome_of(f.ledger->batch("b2", {hold})) == Outcome::ok);
  CHECK(f.balance("alice", "gold").held == 1);
}

// A clock that, once armed, parks the next thread to read it until
// released; from then on it reads the released values in turn, the last
// one for good.
class ParkingClock final : public Clock {
 public:
  explicit ParkingClock(std::int64_t now_ns) : readings_{now_ns} {}
  std::int64_t now_ns() override {
    std::unique_lock<std::mutex> guard(mu_);
    if (armed_) {
      armed_ = false;
      parked_ = true;
      cv_.notify_all();
      cv_.wait(guard, [&] { return released_; });
    }
    const std::int64_t now = readings_.front();
    if (readings_.size() > 1) readings_.erase(readings_.begin());
    return now;
  }
  void arm() {
    std::lock_guard<std::mutex> guard(mu_);
    armed_ = true;
  }
  void await_parked() {
    std::unique_lock<std::mutex> guard(mu_);
    cv_.wait(guard, [&] { return parked_; });
  }
  void release(std::vector<std::int64_t> readings) {
    std::lock_guard<std::mutex> guard(mu_);
    readings_ = std::move(readings);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::int64_t> readings_;
  bool armed_ = false;
  bool parked_ = false;
  bool released_ = false;
};

TEST_CASE("a read that finds a hold due and the commit queued after it agree") {
  testing::TempDir dir;
  ParkingClock clock(kStart);
  LedgerOptions options = bare_options(dir, Durability::none);
  options.clock = &clock;
  auto opened = Ledger::open(options);
  REQUIRE(opened.ok());
  Ledger& ledger = **opened;
  REQUIRE(outcome_of(ledger.acquire("a1", "alice", "gold", 10)) == Outcome::ok);
  const Result<Receipt> held = ledger.hold("h1", "alice", "gold", 4, 10 * kSecond);
  REQUIRE(outcome_of(held) == Outcome::ok);
  // The writer parks in a read of the clock while a command, a read of the
  // hold and a commit of it queue up behind, to be taken as one batch. The
  // command reads the clock before the hold's expiry; every later reading
  // is past it.
  clock.arm();
  ledger.submit_balance("alice", "gold", [](Result<Balance>) {});
  clock.await_parked();
  Command acquire;
  acquire.key = "a2";
  acquire.op = OpRequest::acquire("bob", "gold", 1);
  ledger.submit(std::move(acquire), nullptr);
  std::promise<Result<HoldView>> seen;
  ledger.submit_hold_info(held->hold, [&](Result<HoldView> view) { seen.set_value(view); });
  std::promise<Result<Receipt>> committed;
  Command commit;
  commit.key = "c1";
  commit.op = OpRequest::commit(held->hold);
  ledger.submit(std::move(commit), [&](Result<Receipt> receipt) { committed.set_value(receipt); });
  clock.release({kStart + kSecond, kStart + 5 * kSecond, kStart + 20 * kSecond});
  const Result<HoldView> view = seen.get_future().get();
  REQUIRE(view.ok());
  CHECK(view->status == HoldStatus::expired);
  // Stamped no earlier than the read: the hold is due for it too.
  CHECK(outcome_of(committed.get_future().get()) == Outcome::hold_expired);
  CHECK(ledger.balance("alice", "gold")->available == 10);
  REQUIRE(ledger.close().ok());
}

TEST_CASE("a completion may not close the ledger; an empty completion is allowed") {
  Fixture f;
  std::promise<Status> closed_inside;
  Command command;
  command.key = "a1";
  command.op = OpRequest::acquire("alice", "gold", 5);
  f.ledger->submit(command, [&](Result<Receipt>) { closed_inside.set_value(f.ledger->close()); });
  const Status inside = closed_inside.get_future().get();
  CHECK(inside.code() == ErrorCode::invalid);
  // The ledger goes on: the command of an empty completion runs, and a
  // read with none is skipped.
  command.key = "a2";
  f.ledger->submit(command, nullptr);
  f.ledger->submit_balance("alice", "gold", nullptr);
  CHECK(f.balance("alice", "gold").available == 10);
  REQUIRE(f.ledger->close().ok());
  command.key = "a3";
  f.ledger->submit(command, nullptr);  // closed: nothing to tell
}

TEST_CASE("a completion may not snapshot or back up; stats() there, and after close, counts") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  f.ok(f.ledger->hold("h1", "alice", "gold", 2, 60 * kSecond));
  testing::TempDir out;
  std::promise<void> done;
  std::optional<Result<std::uint64_t>> snapshot;
  std::optional<Result<BackupReport>> backup;
  LedgerStats inside;
  Command command;
  command.key = "a2";
  command.op = OpRequest::acquire("bob", "gold", 1);
  f.ledger->submit(command, [&](Result<Receipt>) {
    snapshot = f.ledger->snapshot_now();
    backup = f.ledger->backup(out.sub("copy"));
    inside = f.ledger->stats();
    done.set_value();
  });
  done.get_future().get();
  CHECK(snapshot->code() == ErrorCode::invalid);
  CHECK(backup->code() == ErrorCode::invalid);
  CHECK_FALSE(std::filesystem::exists(out.sub("copy")));
  const auto counted = [](const LedgerStats& stats) {
    CHECK(stats.next_seq == 4);
    CHECK(stats.balances == 2);
    CHECK(stats.open_holds == 1);
    CHECK(stats.keys == 3);
  };
  counted(inside);
  REQUIRE(f.ledger->close().ok());
  counted(f.ledger->stats());
}

TEST_CASE("waiting for a seq from a completion returns at once what it sees") {
  Fixture f;
  struct Seen {
    Status receipt;
    Ledger::Committed committed;
    Ledger::Committed durable;
  };
  std::promise<Seen> seen;
  Command command;
  command.key = "w1";
  command.op = OpRequest::acquire("alice", "gold", 5);
  // Checked on the test's thread: a failed check must not throw on the
  // ledger's.
  f.ledger->submit(command, [&](Result<Receipt> receipt) {
    if (!receipt.ok()) return seen.set_value({receipt.status(), {}, {}});
    // The seq cannot pass this one while the completion runs.
    const std::uint64_t after = receipt->seq;
    seen.set_value({Status(), f.ledger->wait_committed(after, std::chrono::milliseconds::max()),
                    f.ledger->wait_durable(after, std::chrono::milliseconds::max())});
  });
  const auto [receipt, committed, durable] = seen.get_future().get();
  REQUIRE_MESSAGE(receipt.ok(), receipt.to_string());
  CHECK(committed.seq == 1);
  CHECK(durable.seq <= 1);
  CHECK_FALSE(committed.closed);
  // The ledger goes on.
  command.key = "w2";
  f.ok(f.ledger->execute(command));
  CHECK(f.ledger->wait_committed(1, std::chrono::milliseconds::max()).seq == 2);
  REQUIRE(f.ledger->close().ok());
}

TEST_CASE("an async ledger takes a sync interval of any length") {
  // Taken as the longest wait (kWaitMax, a year): added to the clock
  // unbounded, it overflowed, and the ledger synced at once.
  Fixture f(Durability::async);
  f.options.sync_interval_ms = INT64_MAX;
  f.reopen();
  f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  CHECK(f.balance("alice", "gold").available == 5);
  CHECK(f.ledger->durable_seq() == 0);  // not synced yet
  REQUIRE(f.ledger->close().ok());      // which syncs what it wrote
  CHECK(f.ledger->durable_seq() == 1);
}

TEST_CASE("stats count the groups that wrote events, not reads between them") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  const LedgerStats before = f.ledger->stats();
  CHECK(before.groups >= 1);
  for (int read = 0; read < 20; read++) CHECK(f.balance("alice", "gold").available == 5);
  CHECK(f.ledger->stats().groups == before.groups);
  f.ok(f.ledger->acquire("a2", "alice", "gold", 5));
  CHECK(f.ledger->stats().groups == before.groups + 1);
}

TEST_CASE("a completion that submits does not wait for room in a full queue") {
  // Large events fill the writer's batch buffers while the queue is full:
  // the writer then waits for the thread the completions run on, which
  // must not wait for room in the queue in turn.
  testing::TempDir dir;
  LedgerOptions options = bare_options(dir, Durability::none);
  options.queue_depth_max = 2048;
  auto opened = Ledger::open(options);
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  Ledger& ledger = **opened;
  constexpr int kOps = 12000;
  const std::string big(1024, 'm');
  std::atomic<int> followed{0};
  std::promise<void> all_followed;
  // Submitted from a thread of its own, which a deadlock would hold too.
  std::thread submitter([&] {
    for (int op_index = 0; op_index < kOps; op_index++) {
      Command command;
      command.key = name("k", op_index);
      command.op = OpRequest::acquire(name("s", op_index % 100), "gold", 1);
      command.meta = {big, big, big};
      ledger.submit(std::move(command), [&, op_index](Result<Receipt>) {
        Command follow;
        follow.key = name("f", op_index);
        follow.op = OpRequest::acquire("t", "gold", 1);
        follow.meta = {big, big, big};
        ledger.submit(std::move(follow), [&](Result<Receipt>) {
          if (++followed == kOps) all_followed.set_value();
        });
      });
    }
  });
  // A minute, not for ever: a deadlock fails the test, and close() ends it
  // (it wakes every wait for room).
  CHECK(all_followed.get_future().wait_for(std::chrono::minutes(1)) ==
        std::future_status::ready);
  const Status closed = ledger.close();
  submitter.join();
  CHECK(closed.ok());
}

TEST_CASE("a backup's progress may not close the ledger") {
  Fixture f;
  f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  testing::TempDir out;
  std::optional<Status> inside;
  auto copied = f.ledger->backup(out.sub("copy"), [&](BackupStage, std::uint64_t, std::uint64_t) {
    if (!inside) inside = f.ledger->close();
  });
  REQUIRE_MESSAGE(copied.ok(), copied.status().to_string());
  REQUIRE(inside.has_value());
  CHECK(inside->code() == ErrorCode::invalid);
  CHECK(f.balance("alice", "gold").available == 5);

  // Nor from the progress of another ledger's backup that this backup's
  // progress started, on the same thread.
  Fixture other;
  other.ok(other.ledger->acquire("b1", "bob", "gold", 5));
  inside.reset();
  auto outer = f.ledger->backup(out.sub("outer"), [&](BackupStage, std::uint64_t, std::uint64_t) {
    if (inside) return;
    auto inner = other.ledger->backup(out.sub("inner"), [&](BackupStage, std::uint64_t,
                                                            std::uint64_t) {
      if (!inside) inside = f.ledger->close();
    });
    REQUIRE_MESSAGE(inner.ok(), inner.status().to_string());
  });
  REQUIRE_MESSAGE(outer.ok(), outer.status().to_string());
  REQUIRE(inside.has_value());
  CHECK(inside->code() == ErrorCode::invalid);
}

TEST_CASE("wait_committed with the largest timeout waits") {
  Fixture f;
  const std::uint64_t before = f.ledger->committed_seq();
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    f.ok(f.ledger->acquire("a1", "alice", "gold", 5));
  });
  const Ledger::Committed seen = f.ledger->wait_committed(before, std::chrono::milliseconds::max());
  writer.join();
  CHECK(seen.seq > before);
  CHECK_FALSE(seen.closed);
}

TEST_CASE("an open that fails after its threads started returns the error and unlocks") {
  Fixture f;
  CHECK(outcome_of(f.ledger->acquire("a1", "alice", "gold", 5)) == Outcome::ok);
  REQUIRE(f.ledger->close().ok());
  f.ledger.reset();
  // The history projection's directory, made a file: the ledger has
  // replayed the log and started its writer when that open fails.
  const std::string history = history_dir(f.options.data_dir);
  std::filesystem::remove_all(history);
  std::ofstream(history) << "not a directory";
  LedgerOptions options = f.options;
  options.history = true;
  auto failed = Ledger::open(options);
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.code() == ErrorCode::io_error);
  CHECK(failed.status().message().find(history) != std::string::npos);
  std::filesystem::remove(history);
  f.reopen();
  CHECK(f.balance("alice", "gold") == Balance{5, 0});
}

}  // namespace
}  // namespace tally
