// Fuzz targets of the HTTP API: the JSON parser (engine/json.h) on mutated
// documents, with a round trip of whatever parses, and the body of every
// mutation route, posted to a live server (the body decoders are private to
// engine/http.cc, so they are reached the way a client reaches them). The
// server must answer every body with a success or a 4xx problem, never a
// 5xx or a dropped connection, and the log the fuzzed requests wrote must
// replay when the ledger reopens.
#include <exception>
#include <string>
#include <vector>

#include "engine/json.h"
#include "engine/server_fixture.h"
#include "tests/fuzz.h"

namespace tally::fuzz {

namespace {

// ---- seeds ---------------------------------------------------------------------

struct RouteSeed {
  std::string path;  // {hold} stands for a hold id
  std::string body;
};

const std::vector<RouteSeed>& route_seeds() {
  static const std::vector<RouteSeed> seeds = {
      {"/v1/acquire",
       R"({"subject":"alice","item":"gold","qty":5,"reason":"restock",)"
       R"("reference":"po-1","actor":"me"})"},
      {"/v1/consume", R"({"subject":"alice","item":"gold","qty":1})"},
      {"/v1/transfer", R"({"from":"alice","to":"bob","item":"gold","qty":2,"actor":"x"})"},
      {"/v1/holds", R"({"subject":"alice","item":"gold","qty":1,"ttl_ms":60000})"},
      {"/v1/holds/{hold}/commit", R"({"qty":1,"reason":"paid"})"},
      {"/v1/holds/{hold}/commit", "{}"},
      {"/v1/holds/{hold}/release", R"({"reference":"r-1"})"},
      {"/v1/holds/{hold}/release", ""},
      {"/v1/batch",
       R"({"ops":[{"op":"acquire","subject":"carol","item":"gold","qty":9},)"
       R"({"op":"consume","subject":"carol","item":"gold","qty":1},)"
       R"({"op":"transfer","from":"carol","to":"dave","item":"gold","qty":2},)"
       R"({"op":"hold","subject":"carol","item":"gold","qty":1,"ttl_ms":1000},)"
       R"({"op":"commit","hold_key":"h-seed","qty":1},)"
       R"({"op":"release","hold_id":"1"}],"reason":"order","actor":"shop"})"},
      {"/v1/batch",
       R"({"ops":[{"op":"commit","hold_id":3},{"op":"release","hold_key":"h-seed"}]})"},
  };
  return seeds;
}

std::vector<Bytes> json_seeds() {
  std::vector<Bytes> out;
  for (const RouteSeed& seed : route_seeds()) out.push_back(to_bytes(seed.body));
  for (const char* text :
       {R"({"a":[1,-0.5e+10,2E-3,true,false,null,"\u00e9\ud83d\ude00\n\t\"\\\/"],"b":{"c":{}}})",
        R"([[[[[[[[0]]]]]]]])", R"( "\u0000\b\f\r" )", R"({"n":18446744073709551615})",
        R"({"n":-9223372036854775808,"m":9223372036854775807,"k":-0})", "[]",
        "\"\xc3\xa9\xff\""}) {
    out.push_back(to_bytes(text));
  }
  return out;
}

// ---- JSON round trip -------------------------------------------------------------

void write_value(const json::Value& value, std::string* out) {
  switch (value.type) {
    case json::Value::Type::null: *out += "null"; return;
    case json::Value::Type::boolean: *out += value.boolean ? "true" : "false"; return;
    case json::Value::Type::number: *out += value.text; return;
    case json::Value::Type::string: json::append_string(out, value.text); return;
    case json::Value::Type::array:
      *out += '[';
      for (std::size_t index = 0; index < value.items.size(); index++) {
        if (index > 0) *out += ',';
        write_value(value.items[index], out);
      }
      *out += ']';
      return;
    case json::Value::Type::object:
      *out += '{';
      for (std::size_t index = 0; index < value.members.size(); index++) {
        if (index > 0) *out += ',';
        json::append_string(out, value.members[index].first);
        *out += ':';
        write_value(value.members[index].second, out);
      }
      *out += '}';
      return;
  }
}

bool same_value(const json::Value& a, const json::Value& b) {
  if (a.type != b.type || a.boolean != b.boolean || a.text != b.text ||
      a.items.size() != b.items.size() || a.members.size() != b.members.size()) {
    return false;
  }
  for (std::size_t index = 0; index < a.items.size(); index++) {
    if (!same_value(a.items[index], b.items[index])) return false;
  }
  for (std::size_t index = 0; index < a.members.size(); index++) {
    if (a.members[index].first != b.members[index].first) return false;
    if (!same_value(a.members[index].second, b.members[index].second)) return false;
  }
  return true;
}

// Whether `text` is valid UTF-8: append_string keeps such text as it is and
// escapes any other byte, so only then does a string round-trip exactly.
bool valid_utf8(std::string_view text) {
  std::string escaped;
  json::append_string(&escaped, text);
  return escaped.find("\\u00") == std::string::npos ||
         std::ranges::all_of(text, [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Every string valid UTF-8, and every number read as an integer where it
// is one (the readers must not crash on any literal the parser admits).
bool exact_strings(const json::Value& value) {
  if (value.type == json::Value::Type::number) {
    std::int64_t signed_value = 0;
    std::uint64_t unsigned_value = 0;
    (void)json::to_int64(value, &signed_value);
    (void)json::to_uint64(value, &unsigned_value);
  }
  bool exact = value.type != json::Value::Type::string || valid_utf8(value.text);
  for (const json::Value& item : value.items) exact = exact_strings(item) && exact;
  for (const auto& [name, member] : value.members) {
    exact = valid_utf8(name) && exact_strings(member) && exact;
  }
  return exact;
}

void check_json(Context& context, const Bytes& input) {
  auto parsed = json::parse(as_text(input));
  if (!parsed) {
    if (parsed.code() != ErrorCode::invalid) fail(context, "json: not invalid", input);
    return;
  }
  const bool exact = exact_strings(*parsed);
  std::string written;
  write_value(*parsed, &written);
  auto again = json::parse(written);
  if (!again) fail(context, "json written back does not parse: " + again.status().message(), input);
  if (exact && !same_value(*parsed, *again)) fail(context, "json round trip differs", input);
}

// ---- the live server -------------------------------------------------------------

std::string path_for(const RouteSeed& seed, const std::string& hold, Rng& rng) {
  std::string path = seed.path;
  const std::size_t at = path.find("{hold}");
  if (at == std::string::npos) return path;
  static const char* const kOdd[] = {"0", "18446744073709551616", "-1", "abc", "%31", "", "1%00"};
  const std::string id = rng.one_in(4) ? kOdd[rng.below(std::size(kOdd))] : hold;
  return path.replace(at, 6, id);
}

bool acceptable(unsigned status) {
  return status == 200 || status == 400 || status == 404 || status == 409 || status == 422;
}

// One fuzzed POST; the answer must be a success or a 4xx problem in JSON.
void post_one(Context& context, std::uint16_t port, const std::string& path, const Bytes& body,
              const std::string& key) {
  Reply reply;
  try {
    reply = post(port, path, std::string(as_text(body)), key);
  } catch (const std::exception& error) {
    fail(context, "POST " + path + ": the connection failed: " + error.what(), body);
  }
  if (!acceptable(reply.status)) {
    fail(context, "POST " + path + ": status " + std::to_string(reply.status) + ": " + reply.body,
         body);
  }
  auto answer = json::parse(reply.body);
  if (!answer) fail(context, "POST " + path + ": the answer is not JSON: " + reply.body, body);
  const bool has_code = answer->find("code") != nullptr;
  if ((reply.status == 200) == has_code) fail(context, "POST " + path + ": answer shape", body);
}

// Holds for the commit and release paths, and a balance to spend.
std::vector<std::string> prime(std::uint16_t port) {
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"alice","item":"gold","qty":1000000})", "p0")
              .status == 200);
  REQUIRE(post(port, "/v1/acquire", R"({"subject":"carol","item":"gold","qty":1000000})", "p1")
              .status == 200);
  std::vector<std::string> holds;
  for (int index = 0; index < 8; index++) {
    const std::string key = index == 0 ? "h-seed" : "h-" + std::to_string(index);
    const Reply held =
        post(port, "/v1/holds",
             R"({"subject":"alice","item":"gold","qty":2,"ttl_ms":600000})", key);
    REQUIRE(held.status == 200);
    holds.push_back(std::to_string(held.integer("hold_id")));
  }
  return holds;
}

}  // namespace

void fuzz_json(Context& context) {
  const std::vector<Bytes> seeds = json_seeds();
  Rng rng(context.seed ^ 0x150a);
  for (const Bytes& seed : seeds) check_json(context, seed);
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    const Bytes input =
        mutate(seeds[rng.below(seeds.size())], seeds[rng.below(seeds.size())], rng);
    check_json(context, input);
  }
}

void fuzz_http(Context& context) {
  Rng rng(context.seed ^ 0x4777);
  Fixture fx;
  const std::uint16_t port = fx.server->http_port();
  const std::vector<std::string> holds = prime(port);
  const std::vector<RouteSeed>& seeds = route_seeds();
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    const RouteSeed& seed = seeds[rng.below(seeds.size())];
    const RouteSeed& other = seeds[rng.below(seeds.size())];
    // Unmutated now and then, so that valid requests keep changing the state.
    const Bytes body = rng.one_in(8) ? to_bytes(seed.body)
                                     : mutate(to_bytes(seed.body), to_bytes(other.body), rng);
    // Mostly fresh keys; some reused (replays, conflicts) and some missing.
    std::string key = "f-" + std::to_string(context.iteration);
    if (rng.one_in(8)) key = "f-" + std::to_string(rng.below(context.iteration + 1));
    if (rng.one_in(32)) key.clear();
    post_one(context, port, path_for(seed, holds[rng.below(holds.size())], rng), body, key);
  }
  // What the fuzzed requests wrote must replay.
  fx.stop();
  fx.start();
  if (get(fx.server->http_port(), "/health").status != 200) {
    fail(context, "the reopened server is not healthy", {});
  }
}

}  // namespace tally::fuzz
