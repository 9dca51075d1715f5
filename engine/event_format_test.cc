// The formatting of log events shared by `tally log` and GET /v1/events.
#include "engine/event_format.h"

#include <doctest.h>

#include <array>

namespace tally {
namespace {

using log::OpType;

std::string event_text(const log::Event& event, bool json) {
  std::string out;
  append_event(event, json ? EventFormat::json : EventFormat::text, &out);
  return out;
}

TEST_CASE("log events: a batch with a hold, and metadata") {
  const std::array<log::Op, 2> ops = {{
      {OpType::transfer, "a", "gold", "b", 5, 0, 0, 0, {}},
      {OpType::hold, "b", "gold", {}, 2, 1000, 0, 0, {}},
  }};
  log::Event event;
  event.seq = 9;
  event.timestamp_ns = 1'000'000'000;
  event.key = "order \"1\"";
  event.fingerprint = 0xff;
  event.meta = {"re\"stock", "", "bob"};
  event.batch = true;
  event.ops = ops;
  CHECK(event_text(event, true) ==
        "{\"seq\":9,\"time\":1000000000,\"time_rfc3339\":\"1970-01-01T00:00:01.000000000Z\","
        "\"type\":\"batch\",\"key\":\"order \\\"1\\\"\",\"ops\":["
        "{\"type\":\"transfer\",\"subject\":\"a\",\"to\":\"b\",\"item\":\"gold\",\"qty\":5},"
        "{\"type\":\"hold\",\"subject\":\"b\",\"item\":\"gold\",\"qty\":2,\"ttl_ns\":1000,"
        "\"hold\":562949953421321}],"
        "\"meta\":{\"reason\":\"re\\\"stock\",\"reference\":\"\",\"actor\":\"bob\"},"
        "\"fingerprint\":\"00000000000000ff\"}");
  CHECK(event_text(event, false) ==
        "9 1970-01-01T00:00:01.000000000Z batch key=order\\x20\"1\" ops=[transfer subject=a to=b "
        "item=gold qty=5; hold subject=b item=gold qty=2 ttl_ns=1000 hold=562949953421321] "
        "meta=[reason=re\"stock reference= actor=bob] fingerprint=00000000000000ff");
}

TEST_CASE("log events: a rejected commit and an expiry") {
  const std::array<log::Op, 1> commit = {{{OpType::commit, {}, {}, {}, 0, 0, 7, 0, {}}}};
  log::Event rejected;
  rejected.seq = 12;
  rejected.key = "k12";
  rejected.rejected = log::Reason::hold_finalized;
  rejected.ops = commit;
  CHECK(event_text(rejected, false) ==
        "12 1970-01-01T00:00:00.000000000Z rejected key=k12 reason=hold_finalized index=0 "
        "batch=false request=[commit hold=7 qty=0]");
  // By key: the request names the key only; an applied event both.
  const std::array<log::Op, 1> release_by_key = {{{OpType::release, {}, {}, {}, 0, 0, 0, 0, "h1"}}};
  rejected.ops = release_by_key;
  rejected.rejected = log::Reason::hold_unknown;
  CHECK(event_text(rejected, true).find("\"request\":[{\"type\":\"release\",\"hold_key\":\"h1\"}]") !=
        std::string::npos);
  const std::array<log::Op, 1> released = {{{OpType::release, "s", "i", {}, 3, 0, 5, 0, "h1"}}};
  log::Event applied;
  applied.seq = 14;
  applied.key = "k14";
  applied.ops = released;
  CHECK(event_text(applied, false) ==
        "14 1970-01-01T00:00:00.000000000Z release key=k14 hold=5 hold_key=h1 subject=s item=i qty=3");

  const std::array<log::Op, 1> expire = {{{OpType::expire, "s", "i", {}, 4, 0, 7, 0, {}}}};
  log::Event expiry;
  expiry.seq = 13;
  expiry.ops = expire;
  CHECK(event_text(expiry, true) ==
        "{\"seq\":13,\"time\":0,\"time_rfc3339\":\"1970-01-01T00:00:00.000000000Z\","
        "\"type\":\"expire\",\"key\":\"\",\"hold\":7,\"subject\":\"s\",\"item\":\"i\","
        "\"qty\":4,\"fingerprint\":\"0000000000000000\"}");
  CHECK(event_text(expiry, false) ==
        "13 1970-01-01T00:00:00.000000000Z expire key= hold=7 subject=s item=i qty=4");
}

}  // namespace
}  // namespace tally
