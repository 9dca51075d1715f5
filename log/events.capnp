# The one definition of a fact in tally's log. Every record's payload is one
# Event message. Evolution follows Cap'n Proto's rules: add fields at the
# end, never renumber or change a field's type.
@0xc4a1f6b7d2e39a05;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tally::schema");

# acquire and consume.
struct Amount {
  subject @0 :Data;
  item @1 :Data;
  qty @2 :Int64;
}

struct Transfer {
  from @0 :Data;
  to @1 :Data;
  item @2 :Data;
  qty @3 :Int64;
}

struct Hold {
  subject @0 :Data;
  item @1 :Data;
  qty @2 :Int64;
  ttlNs @3 :Int64;     # expires_at = the event's timestamp + ttlNs
}

# commit, release and expire of a hold. In an applied event every field is
# resolved from the hold, so the fact reads on its own: qty is what became
# consumed (commit) or free again (release, expire), released is the part of
# a partial commit that went back to available. In a rejected request only
# hold or holdKey and (for a commit) qty are set; qty 0 there means "the
# whole hold".
struct Settle {
  hold @0 :UInt64;
  subject @1 :Data;
  item @2 :Data;
  qty @3 :Int64;
  released @4 :Int64;
  holdKey @5 :Data;    # the request named the hold by its hold's idempotency key
}

struct Op {
  union {
    acquire @0 :Amount;
    consume @1 :Amount;
    transfer @2 :Transfer;
    hold @3 :Hold;
    commit @4 :Settle;
    release @5 :Settle;
  }
}

# Audit metadata a caller may attach to a mutation: bounded byte strings.
struct Meta {
  reason @0 :Data;
  reference @1 :Data;
  actor @2 :Data;
}

enum Reason {
  none @0;
  insufficient @1;
  overflow @2;
  holdUnknown @3;
  holdExpired @4;
  holdFinalized @5;
}

# A keyed request whose outcome was a state rejection: durable, so that a
# retry with the same key gets the same answer.
struct Rejected {
  reason @0 :Reason;
  index @1 :UInt32;     # the failing op's index in a batch, else 0
  batch @2 :Bool;       # the request was a batch
  request @3 :List(Op);
}

struct Event {
  seq @0 :UInt64;
  timestamp @1 :Int64;  # ns since the Unix epoch; never goes backwards
  key @2 :Data;         # idempotency key; empty for system events (expire)
  fingerprint @3 :UInt64;  # of the request's canonical encoding
  meta @4 :Meta;
  body :union {
    acquire @5 :Amount;
    consume @6 :Amount;
    transfer @7 :Transfer;
    hold @8 :Hold;
    commit @9 :Settle;
    release @10 :Settle;
    expire @11 :Settle;
    batch @12 :List(Op);
    rejected @13 :Rejected;
  }
}
