# The binary protocol of `tally serve` (docs/protocol.md is the grammar).
# Each Request and Response is one Cap'n Proto message in standard stream
# framing (segment table, then segments). Evolve by Cap'n Proto's rules: add
# fields and union members, never renumber.
@0x954d855a13c37bbc;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tally::proto");

# Same order as tally::OpType (log/event.h), minus `expire`, which only the
# engine writes.
enum OpType {
  acquire @0;
  consume @1;
  transfer @2;
  hold @3;
  commit @4;
  release @5;
}

# Ids, keys and metadata are byte strings (docs/architecture.md, "Names"), hence Data.
struct Op {
  type @0 :OpType;
  subject @1 :Data;   # transfer: the source
  item @2 :Data;
  to @3 :Data;        # transfer: the destination
  qty @4 :Int64;      # commit: 0 = the whole hold
  ttlNs @5 :Int64;    # hold
  hold @6 :UInt64;    # commit, release
  holdKey @7 :Data;   # commit, release: the hold named by its request's key
}

struct Mutation {
  key @0 :Data;
  reason @1 :Data;
  reference @2 :Data;
  actor @3 :Data;
  batch @4 :Bool;
  ops @5 :List(Op);   # exactly one unless batch
}

struct Hello {
  version @0 :UInt32;  # kProtocolVersion
  token @1 :Data;      # the server's token when it requires one
}

struct Request {
  id @0 :UInt64;       # chosen by the client; echoed in the response
  union {
    hello @1 :Hello;
    mutation @2 :Mutation;
    balance @3 :BalanceQuery;
    list @4 :ListQuery;
    holdInfo @5 :UInt64;
    follow @6 :Follow;
    cancel @7 :UInt64;   # ends the open follow with this id; no response of its own
    holdInfoAt @8 :HoldInfoQuery;  # a hold as of a point; answered like holdInfo
  }
}

struct HoldInfoQuery {
  hold @0 :UInt64;
  asOf @1 :AsOf;
}

# Streams committed events: the server answers with `events` batches that
# carry this request's id, as events are committed, until the follow is
# cancelled (a last batch with `end`), the connection closes, or the server
# stops or cannot read its log (an `error`). The next batch is read only
# once the previous one is written.
struct Follow {
  fromSeq @0 :UInt64;    # the first seq wanted; 0 and 1 both mean the first event
  maxEvents @1 :UInt32;  # per batch; 0: the server's maximum (1000), which also caps it
}

struct BalanceQuery {
  subject @0 :Data;
  item @1 :Data;
  asOf @2 :AsOf;  # absent: the current balance
}

struct ListQuery {
  subject @0 :Data;
  asOf @1 :AsOf;  # absent: the current balances
}

# A point in the log's history (docs/snapshots.md, "Point-in-time reads").
struct AsOf {
  union {
    seq @0 :UInt64;    # after the event with this seq
    timeNs @1 :Int64;  # after every event stamped at or before this time
  }
}

# tally::ErrorCode (log/status.h) in the same order, then protocol codes.
enum ErrorCode {
  ok @0;
  invalid @1;
  idempotencyConflict @2;
  notFound @3;
  ioError @4;
  corrupt @5;
  locked @6;
  readOnly @7;
  closed @8;
  busy @9;
  unauthorized @10;   # missing or wrong token; the server closes the connection
}

# tally::Outcome (engine/types.h) in the same order.
enum Outcome {
  ok @0;
  insufficient @1;
  overflow @2;
  holdUnknown @3;
  holdExpired @4;
  holdFinalized @5;
}

enum HoldStatus {
  open @0;
  committed @1;
  released @2;
  expired @3;
}

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;
}

struct Receipt {
  outcome @0 :Outcome;
  replay @1 :Bool;
  seq @2 :UInt64;
  timestampNs @3 :Int64;
  hold @4 :UInt64;
  failedIndex @5 :UInt32;
  holds @6 :List(UInt64);
}

struct Balance {
  available @0 :Int64;
  held @1 :Int64;
}

struct ItemBalance {
  item @0 :Data;
  available @1 :Int64;
  held @2 :Int64;
}

struct HoldView {
  id @0 :UInt64;
  subject @1 :Data;
  item @2 :Data;
  qty @3 :Int64;
  expiresAtNs @4 :Int64;
  status @5 :HoldStatus;
  committedQty @6 :Int64;
}

struct Response {
  id @0 :UInt64;
  union {
    error @1 :Error;
    receipt @2 :Receipt;
    balance @3 :Balance;
    list @4 :List(ItemBalance);
    holdInfo @5 :HoldView;
    hello @6 :Void;
    events @7 :EventBatch;
  }
  ledgerId @8 :UInt64;  # hello: the ledger served (Ledger::ledger_id); 0 from older servers
}

# One batch of a follow: consecutive seqs, from nextSeq - length(events).
struct EventBatch {
  events @0 :List(Data);  # each the Event message of log/events.capnp, as logged
  nextSeq @1 :UInt64;     # the seq after the last event: where to follow from again
  end @2 :Bool;           # the follow's last message (after a cancel); no events
}
