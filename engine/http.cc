// HTTP/1.1 JSON API (docs/http-api.md): one request at a time per
// connection, keep-alive, bodies and headers bounded, problem+json errors.
// GCC 12 reports a false maybe-uninitialized inside Beast's parser
// (boost::optional in basic_parser.hpp) once sanitizers change inlining;
// the diagnostic is attributed to these headers, so it is silenced for them
// alone.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#pragma GCC diagnostic pop
#include <algorithm>
#include <array>
#include <cctype>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/decide.h"
#include "engine/event_format.h"
#include "engine/json.h"
#include "engine/server_impl.h"
#include "engine/time_text.h"
#include "log/event.h"

namespace tally::server_detail {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using Body = http::string_body;
using HttpRequest = http::request<Body>;
using HttpResponse = http::response<Body>;

constexpr std::size_t kPathSegmentsMax = 8;
constexpr std::int64_t kNsPerMs = 1'000'000;
// GET /v1/events: events per answer by default and at most (larger limits
// are capped), and the longest a poll waits (larger waits are capped).
constexpr std::size_t kEventsLimitDefault = 100;
constexpr std::size_t kEventsLimitMax = kFeedEventsMax;
constexpr std::int64_t kEventsWaitMsMax = 30'000;
constexpr std::size_t kQueryParamsMax = 8;

// ---- responses ---------------------------------------------------------------

HttpResponse json_response(http::status status, std::string body,
                           std::string_view content_type = "application/json") {
  HttpResponse response(status, 11);
  response.set(http::field::content_type, beast::string_view(content_type.data(), content_type.size()));
  response.body() = std::move(body);
  return response;
}

// An application/problem+json body (RFC 9457) with a stable `code`. `extra`
// is more members, each already encoded as ,"name":value.
HttpResponse problem(http::status status, std::string_view code, std::string_view detail,
                     std::string_view extra = {}) {
  std::string body = "{\"type\":\"urn:tally:problem:";
  body += code;
  body += "\",\"title\":";
  json::append_string(&body, code);
  body += ",\"status\":" + std::to_string(static_cast<unsigned>(status));
  body += ",\"code\":";
  json::append_string(&body, code);
  body += ",\"detail\":";
  json::append_string(&body, detail);
  body += extra;
  body += "}";
  return json_response(status, std::move(body), "application/problem+json");
}

http::status status_of(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid: return http::status::bad_request;
    case ErrorCode::idempotency_conflict: return http::status::conflict;
    case ErrorCode::not_found: return http::status::not_found;
    case ErrorCode::read_only:
    case ErrorCode::io_error:
    case ErrorCode::closed:
    case ErrorCode::busy: return http::status::service_unavailable;
    default: return http::status::internal_server_error;
  }
}

HttpResponse error_response(const Status& status) {
  return problem(status_of(status.code()), error_code_name(status.code()), status.message());
}

// The Prometheus text exposition of GET /metrics.
HttpResponse metrics_response(std::string text) {
  return json_response(http::status::ok, std::move(text), "text/plain; version=0.0.4");
}

// What a server whose ledger is not served yet answers: 503 with
// Retry-After, `code` starting (GET /health) or busy (the rest).
HttpResponse starting_response(std::string_view code, std::string extra = {}) {
  HttpResponse response = problem(http::status::service_unavailable, code,
                                  Core::starting().message(), extra);
  response.set(http::field::retry_after, "1");
  return response;
}

HttpResponse receipt_response(const Command& command, const Receipt& receipt) {
  std::string extra = ",\"seq\":" + std::to_string(receipt.seq) +
                      ",\"replayed\":" + (receipt.replay ? "true" : "false") +
                      ",\"timestamp_ns\":" + std::to_string(receipt.timestamp_ns);
  HttpResponse response;
  if (receipt.outcome != Outcome::ok) {
    if (command.batch) extra += ",\"index\":" + std::to_string(receipt.failed_index);
    // An unknown hold is a 404 like GET /v1/holds/{id}; the other state
    // rejections are 422. Either way the outcome is durable and replayable.
    const auto status = receipt.outcome == Outcome::hold_unknown ? http::status::not_found
                                                                  : http::status::unprocessable_entity;
    const std::string_view code = outcome_name(receipt.outcome);
    response = problem(status, code, "the request was rejected: " + std::string(code), extra);
  } else {
    std::string body = "{\"outcome\":\"ok\"" + extra;
    if (!command.batch && command.op.type == OpType::hold) {
      body += ",\"hold_id\":" + std::to_string(receipt.hold);
    }
    if (command.batch) {
      body += ",\"hold_ids\":[";
      for (std::size_t index = 0; index < receipt.holds.size(); index++) {
        if (index > 0) body += ",";
        body += std::to_string(receipt.holds[index]);
      }
      body += "]";
    }
    body += "}";
    response = json_response(http::status::ok, std::move(body));
  }
  if (receipt.replay) response.set("Idempotent-Replayed", "true");
  return response;
}

void append_balance_fields(std::string* out, const Balance& balance) {
  *out += ",\"available\":" + std::to_string(balance.available);
  *out += ",\"held\":" + std::to_string(balance.held);
}

HttpResponse hold_response(const HoldView& hold) {
  std::string body = "{\"hold_id\":" + std::to_string(hold.id) + ",\"subject\":";
  json::append_string(&body, hold.subject);
  body += ",\"item\":";
  json::append_string(&body, hold.item);
  body += ",\"qty\":" + std::to_string(hold.qty);
  body += ",\"expires_at_ns\":" + std::to_string(hold.expires_at_ns);
  body += ",\"status\":\"" + std::string(hold_status_name(hold.status)) + "\"";
  body += ",\"committed_qty\":" + std::to_string(hold.committed_qty) + "}";
  return json_response(http::status::ok, std::move(body));
}

// ---- request bodies ------------------------------------------------------------

Status bad(std::string message) { return Status(ErrorCode::invalid, std::move(message)); }

using FieldNames = std::span<const std::string_view>;

// The audit fields of a mutation. They belong to the request, at the top
// level of its body: a batch is one event with one Metadata, so its ops do
// not take them (an op that has them is refused, as any unknown field is).
constexpr std::array<std::string_view, 3> kMetaFields = {"reason", "reference", "actor"};
// What a batch item has besides its op's fields.
constexpr std::array<std::string_view, 1> kBatchItemFields = {"op"};

// invalid when `object` has a member named in neither list.
Status check_fields(const json::Value& object, std::initializer_list<std::string_view> allowed,
                    FieldNames extra = {}) {
  for (const auto& [name, value] : object.members) {
    const bool known = std::find(allowed.begin(), allowed.end(), name) != allowed.end() ||
                       std::find(extra.begin(), extra.end(), name) != extra.end();
    if (!known) return bad("unknown field \"" + name + "\"");
  }
  return Status();
}

Status get_string(const json::Value& object, std::string_view name, bool required, std::string* out) {
  const json::Value* value = object.find(name);
  if (value == nullptr) return required ? bad("missing \"" + std::string(name) + "\"") : Status();
  if (value->type != json::Value::Type::string) return bad("\"" + std::string(name) + "\" must be a string");
  *out = value->text;
  return Status();
}

// One or more decimal digits, nothing else.
bool all_digits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Whether a JSON number is written as an integer: an optional minus, then
// digits only. One that to_int64 or to_uint64 refuses is out of range.
bool integer_text(const json::Value& value) {
  std::string_view digits = value.text;
  if (digits.starts_with('-')) digits.remove_prefix(1);
  return value.type == json::Value::Type::number && all_digits(digits);
}

const std::string kU64MaxText = std::to_string(UINT64_MAX);

Status get_int64(const json::Value& object, std::string_view name, bool required, std::int64_t* out) {
  const json::Value* value = object.find(name);
  if (value == nullptr) return required ? bad("missing \"" + std::string(name) + "\"") : Status();
  if (json::to_int64(*value, out)) return Status();
  if (integer_text(*value)) return bad("\"" + std::string(name) + "\" is outside the int64 range");
  return bad("\"" + std::string(name) + "\" must be an integer");
}

Status get_meta(const json::Value& object, Metadata* meta) {
  TALLY_TRY(get_string(object, "reason", false, &meta->reason));
  TALLY_TRY(get_string(object, "reference", false, &meta->reference));
  return get_string(object, "actor", false, &meta->actor);
}

Status parse_hold_id(std::string_view text, HoldId* out) {
  json::Value number;
  number.type = json::Value::Type::number;
  number.text = std::string(text);
  // Written as the server writes ids: "049" is no id, as 049 is no JSON number.
  if (text.empty() || (text.size() > 1 && text[0] == '0') || !integer_text(number) ||
      text[0] == '-') {
    return bad("a hold id is a decimal number without leading zeros");
  }
  if (!json::to_uint64(number, out)) return bad("a hold id is at most " + kU64MaxText);
  return Status();
}

// commit/release inside a batch: "hold_id" (number or string) or "hold_key".
Status get_hold_ref(const json::Value& object, OpRequest* op) {
  TALLY_TRY(get_string(object, "hold_key", false, &op->hold_key));
  const bool has_key = object.find("hold_key") != nullptr;
  if (has_key && op->hold_key.empty()) return bad("\"hold_key\" is empty");
  const json::Value* id = object.find("hold_id");
  if (id == nullptr) return has_key ? Status() : bad("missing \"hold_id\" or \"hold_key\"");
  // An id of 0 beside a key (a client's default) would read as no id.
  if (has_key) return bad(std::string(detail::kHoldNamedTwice));
  if (id->type == json::Value::Type::string) return parse_hold_id(id->text, &op->hold);
  if (json::to_uint64(*id, &op->hold)) return Status();
  if (integer_text(*id) && !id->text.starts_with('-')) {
    return bad("\"hold_id\" is at most " + kU64MaxText);
  }
  return bad("\"hold_id\" must be a non-negative integer");
}

Status get_ttl(const json::Value& object, std::int64_t* ttl_ns) {
  // Saturated past the ns an int64 holds, an integer however large: the
  // ledger refuses a ttl out of its range, and names the range, as for
  // every other caller.
  constexpr std::int64_t kMsMax = INT64_MAX / kNsPerMs;
  const json::Value* value = object.find("ttl_ms");
  std::int64_t ttl_ms = 0;
  if (value != nullptr && !json::to_int64(*value, &ttl_ms) && integer_text(*value)) {
    ttl_ms = value->text.starts_with('-') ? -kMsMax : kMsMax;
  } else {
    TALLY_TRY(get_int64(object, "ttl_ms", true, &ttl_ms));
  }
  *ttl_ns = std::clamp(ttl_ms, -kMsMax, kMsMax) * kNsPerMs;
  return Status();
}

// The fields of one op of `type` (the path's op, or a batch item's "op").
// `extra` names the other fields its object may have, which the caller
// handles: the request's audit fields, or a batch item's "op".
Status parse_op(const json::Value& object, OpType type, FieldNames extra, OpRequest* op) {
  op->type = type;
  switch (type) {
    case OpType::acquire:
    case OpType::consume:
      TALLY_TRY(check_fields(object, {"subject", "item", "qty"}, extra));
      TALLY_TRY(get_string(object, "subject", true, &op->subject));
      TALLY_TRY(get_string(object, "item", true, &op->item));
      return get_int64(object, "qty", true, &op->qty);
    case OpType::transfer:
      TALLY_TRY(check_fields(object, {"from", "to", "item", "qty"}, extra));
      TALLY_TRY(get_string(object, "from", true, &op->subject));
      TALLY_TRY(get_string(object, "to", true, &op->to));
      TALLY_TRY(get_string(object, "item", true, &op->item));
      return get_int64(object, "qty", true, &op->qty);
    case OpType::hold:
      TALLY_TRY(check_fields(object, {"subject", "item", "qty", "ttl_ms"}, extra));
      TALLY_TRY(get_string(object, "subject", true, &op->subject));
      TALLY_TRY(get_string(object, "item", true, &op->item));
      TALLY_TRY(get_int64(object, "qty", true, &op->qty));
      return get_ttl(object, &op->ttl_ns);
    case OpType::commit:
      TALLY_TRY(check_fields(object, {"qty", "hold_id", "hold_key"}, extra));
      TALLY_TRY(get_int64(object, "qty", false, &op->qty));
      // 0 means "the whole hold" inside the engine; here that is an absent qty.
      if (object.find("qty") != nullptr && op->qty <= 0) return bad("\"qty\" must be > 0");
      return Status();
    case OpType::release:
      return check_fields(object, {"hold_id", "hold_key"}, extra);
    case OpType::expire: break;
  }
  return bad("unknown op");
}

Status parse_batch_ops(const json::Value& body, Command* command) {
  const json::Value* ops = body.find("ops");
  if (ops == nullptr || ops->type != json::Value::Type::array) return bad("\"ops\" must be an array");
  // Counted first, as the ledger does: a batch too long is refused as such,
  // whatever its ops hold.
  if (ops->items.size() + ops->items_dropped > kBatchOpsMax) return detail::batch_too_large();
  command->ops.resize(ops->items.size());
  for (std::size_t index = 0; index < ops->items.size(); index++) {
    const json::Value& item = ops->items[index];
    // As the ledger names a batch's op: "op 2: ...".
    const std::string where = "op " + std::to_string(index) + ": ";
    if (item.type != json::Value::Type::object) return bad(where + "must be an object");
    std::string name;
    Status status = get_string(item, "op", true, &name);
    OpType type = OpType::acquire;
    bool known = false;
    for (const OpType candidate : {OpType::acquire, OpType::consume, OpType::transfer,
                                   OpType::hold, OpType::commit, OpType::release}) {
      if (name == log::op_type_name(candidate)) type = candidate, known = true;
    }
    if (status.ok() && !known) status = bad("unknown op \"" + name + "\"");
    if (status.ok()) status = parse_op(item, type, kBatchItemFields, &command->ops[index]);
    if (status.ok() && (type == OpType::commit || type == OpType::release)) {
      status = get_hold_ref(item, &command->ops[index]);
    }
    if (!status.ok()) return bad(where + status.message());
  }
  return Status();
}

// ---- routing -------------------------------------------------------------------

struct Target {
  std::vector<std::string> segments;  // percent-decoded
  std::string query;                  // after '?', still encoded
  bool too_long = false;              // more segments than any route has: no route
};

bool hex_value(char c, int* out) {
  if (c >= '0' && c <= '9') return *out = c - '0', true;
  if (c >= 'a' && c <= 'f') return *out = c - 'a' + 10, true;
  if (c >= 'A' && c <= 'F') return *out = c - 'A' + 10, true;
  return false;
}

// Whether `host` is a Host header's value, uri-host [":" port] (RFC 9112
// 3.2, RFC 3986 3.2.2), or empty (RFC 9112 allows it).
bool host_is_valid(std::string_view host) {
  const auto in_name = [](std::string_view name, std::string_view also) {
    for (std::size_t index = 0; index < name.size(); index++) {
      const unsigned char c = static_cast<unsigned char>(name[index]);
      int digit = 0;
      if (c == '%') {  // pct-encoded
        if (index + 2 >= name.size() || !hex_value(name[index + 1], &digit) ||
            !hex_value(name[index + 2], &digit)) {
          return false;
        }
        index += 2;
        continue;
      }
      // unreserved and sub-delims, besides letters and digits
      const bool punctuation =
          std::string_view("-._~!$&'()*+,;=").find(name[index]) != std::string_view::npos;
      if (!std::isalnum(c) && !punctuation && also.find(name[index]) == std::string_view::npos) {
        return false;
      }
    }
    return true;
  };
  std::size_t port = 0;  // where ":" port begins, if anywhere
  if (host.starts_with('[')) {  // IP-literal
    port = host.find(']');
    if (port == std::string_view::npos) return false;
    const std::string_view literal = host.substr(1, port - 1);
    if (literal.starts_with('v') || literal.starts_with('V')) {
      // IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
      const std::size_t dot = literal.find('.');
      int digit = 0;
      if (dot == std::string_view::npos || dot == 1 || dot + 1 == literal.size() ||
          !std::all_of(literal.begin() + 1, literal.begin() + static_cast<std::ptrdiff_t>(dot),
                       [&](char c) { return hex_value(c, &digit); }) ||
          !in_name(literal.substr(dot + 1), ":")) {
        return false;
      }
    } else {
      // IPv6address, with a zone after "%25" (RFC 6874)
      const std::size_t zone = literal.find("%25");
      const std::string_view address = literal.substr(0, zone);
      boost::system::error_code ec;
      (void)asio::ip::make_address_v6(std::string(address), ec);
      if (ec || address.find('%') != std::string_view::npos ||
          (zone != std::string_view::npos &&
                 (zone + 3 == literal.size() || !in_name(literal.substr(zone + 3), "")))) {
        return false;
      }
    }
    port++;
  } else {
    port = std::min(host.find(':'), host.size());
    if (!in_name(host.substr(0, port), "")) return false;
  }
  const std::string_view rest = host.substr(port);
  if (rest.empty()) return true;
  return rest[0] == ':' && std::all_of(rest.begin() + 1, rest.end(), [](char c) {
           return c >= '0' && c <= '9';
         });
}

// `where`: "path" or "query", for the message.
Status percent_decode(std::string_view text, std::string_view where, std::string* out) {
  for (std::size_t index = 0; index < text.size(); index++) {
    if (text[index] != '%') {
      out->push_back(text[index]);
      continue;
    }
    int high = 0;
    int low = 0;
    if (index + 2 >= text.size() + 0 || !hex_value(text[index + 1], &high) ||
        !hex_value(text[index + 2], &low)) {
      return bad("bad percent-encoding in the " + std::string(where));
    }
    out->push_back(static_cast<char>(high * 16 + low));
    index += 2;
  }
  return Status();
}

// "http://host:port/path?query" (absolute form, which a server must take:
// RFC 9112, 3.2.2) as "/path?query", in `storage` when the path is empty;
// any other target as it is.
std::string_view origin_form(std::string_view target, std::string* storage) {
  for (const std::string_view scheme : {"http://", "https://"}) {
    const auto same = [](char lower, char any) {
      return lower == std::tolower(static_cast<unsigned char>(any));
    };
    if (target.size() < scheme.size() ||
        !std::equal(scheme.begin(), scheme.end(), target.begin(), same)) {
      continue;
    }
    const std::string_view rest = target.substr(scheme.size());
    const std::size_t path = rest.find_first_of("/?");
    if (path != std::string_view::npos && rest[path] == '/') return rest.substr(path);
    *storage = "/";
    if (path != std::string_view::npos) *storage += rest.substr(path);
    return *storage;
  }
  return target;
}

Result<Target> parse_target(std::string_view target) {
  std::string storage;
  target = origin_form(target, &storage);
  // A fragment is the client's own (RFC 9112 3.2 leaves it out of the
  // target): a raw '#' is a client that did not encode it in a name.
  if (target.find('#') != std::string_view::npos) {
    return bad("'#' in the target: a name holding it is written %23");
  }
  const std::size_t query = target.find('?');
  std::string_view path = target.substr(0, query);
  if (path.empty() || path.front() != '/') return bad("the target must be an absolute path");
  Target out;
  if (query != std::string_view::npos) out.query = std::string(target.substr(query + 1));
  path.remove_prefix(1);
  if (path.empty()) return out;  // "/"
  // Empty segments count: "/v1/balances/a/" names an empty item.
  while (true) {
    if (out.segments.size() >= kPathSegmentsMax) {
      out.too_long = true;
      return out;
    }
    const std::size_t slash = path.find('/');
    std::string segment;
    TALLY_TRY(percent_decode(path.substr(0, slash), "path", &segment));
    out.segments.push_back(std::move(segment));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

// What a path names, whatever the method. Routing by path first lets a
// wrong method on a route be told apart (405, with Allow) from no route
// (404).
enum class RouteKind : std::uint8_t {
  none, health, metrics, events, balance, list, hold_info, mutation
};

struct Route {
  RouteKind kind = RouteKind::none;
  http::verb method = http::verb::unknown;  // the one method the route answers
  // Under which op tally_ops_total counts its requests; count: none.
  Metrics::Op op = Metrics::Op::count;
};

// The mutation a POST path names, as Metrics counts it; count: none.
Metrics::Op mutation_op(const std::vector<std::string>& path) {
  if (path.size() == 2) {
    if (path[1] == "acquire") return Metrics::Op::acquire;
    if (path[1] == "consume") return Metrics::Op::consume;
    if (path[1] == "transfer") return Metrics::Op::transfer;
    if (path[1] == "holds") return Metrics::Op::hold;
    if (path[1] == "batch") return Metrics::Op::batch;
  }
  if (path.size() == 4 && path[1] == "holds") {
    if (path[3] == "commit") return Metrics::Op::commit;
    if (path[3] == "release") return Metrics::Op::release;
  }
  return Metrics::Op::count;
}

// The routes of docs/http-api.md.
Route match_route(const std::vector<std::string>& path) {
  using Op = Metrics::Op;
  const auto get = [](RouteKind kind, Op op) { return Route{kind, http::verb::get, op}; };
  const std::size_t size = path.size();
  if (size == 1 && path[0] == "health") return get(RouteKind::health, Op::count);
  if (size == 1 && path[0] == "metrics") return get(RouteKind::metrics, Op::count);
  if (size < 2 || path[0] != "v1") return Route{};
  if (size == 2 && path[1] == "events") return get(RouteKind::events, Op::events);
  if (size == 4 && path[1] == "balances") return get(RouteKind::balance, Op::balance);
  if (size == 3 && path[1] == "balances") return get(RouteKind::list, Op::list);
  if (size == 3 && path[1] == "holds") return get(RouteKind::hold_info, Op::hold_info);
  const Op op = mutation_op(path);
  if (op != Op::count) return Route{RouteKind::mutation, http::verb::post, op};
  return Route{};
}

// Whether a probe connection (server.h, kProbeConnectionsMax) answers a
// request for `target`: /health and /metrics do, whatever the method (its
// 405 included).
bool probe_target(std::string_view target) {
  const Result<Target> parsed = parse_target(target);
  if (!parsed || parsed->too_long) return false;
  const RouteKind kind = match_route(parsed->segments).kind;
  return kind == RouteKind::health || kind == RouteKind::metrics;
}

HttpResponse method_not_allowed(http::verb allowed) {
  const beast::string_view name = http::to_string(allowed);
  HttpResponse response = problem(http::status::method_not_allowed, "method_not_allowed",
                                  "use " + std::string(name.data(), name.size()));
  response.set(http::field::allow, name);
  return response;
}

// The token of an Authorization header "Bearer TOKEN", or nullopt for
// another scheme. The scheme's name is case-insensitive (RFC 7235 §2.1);
// one or more spaces separate it from the token.
std::optional<std::string_view> bearer_token(std::string_view header) {
  constexpr std::string_view kScheme = "bearer";
  if (header.size() <= kScheme.size() || header[kScheme.size()] != ' ') return std::nullopt;
  for (std::size_t index = 0; index < kScheme.size(); index++) {
    const char c = header[index];
    const char lower = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
    if (lower != kScheme[index]) return std::nullopt;
  }
  header.remove_prefix(kScheme.size());
  while (!header.empty() && header.front() == ' ') header.remove_prefix(1);
  return header;
}

// ---- the event feed ------------------------------------------------------------

struct EventsQuery {
  std::uint64_t from_seq = 1;
  std::size_t limit = kEventsLimitDefault;
  std::int64_t wait_ms = 0;
};

// A decimal number without sign; false when empty, not digits, or over max.
bool parse_decimal(std::string_view text, std::uint64_t max, std::uint64_t* out) {
  if (text.empty()) return false;
  std::uint64_t value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return false;
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (value > (max - digit) / 10) return false;
    value = value * 10 + digit;
  }
  *out = value;
  return true;
}

// A decimal number without sign, however many digits, taken as `cap` when
// larger; false when empty or not digits.
bool parse_decimal_capped(std::string_view text, std::uint64_t cap, std::uint64_t* out) {
  TALLY_ASSERT(cap < UINT64_MAX / 10);
  if (text.empty()) return false;
  std::uint64_t value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return false;
    // Past the cap the value stays above it: the rest need only be digits.
    if (value <= cap) value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  *out = std::min(value, cap);
  return true;
}

struct QueryParam {
  std::string name;
  std::string value;
};

// The name=value parameters of a query string, percent-decoded; each name
// must be one of `allowed` and given at most once.
Result<std::vector<QueryParam>> parse_query(std::string_view query,
                                            std::initializer_list<std::string_view> allowed) {
  std::vector<QueryParam> params;
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (param.empty()) continue;
    if (params.size() >= kQueryParamsMax) return bad("too many query parameters");
    const std::size_t eq = param.find('=');
    QueryParam decoded;
    TALLY_TRY(percent_decode(param.substr(0, eq), "query", &decoded.name));
    if (eq != std::string_view::npos) {
      TALLY_TRY(percent_decode(param.substr(eq + 1), "query", &decoded.value));
    }
    if (std::find(allowed.begin(), allowed.end(), decoded.name) == allowed.end()) {
      return bad("unknown query parameter \"" + decoded.name + "\"");
    }
    for (const QueryParam& seen : params) {
      if (seen.name == decoded.name) return bad("\"" + decoded.name + "\" is given twice");
    }
    params.push_back(std::move(decoded));
  }
  return params;
}

// Why a number parameter that did not parse is refused: only from_seq and
// at_seq have a most (the others are capped), 2^64 - 1.
Status seq_refused(const QueryParam& param) {
  if (all_digits(param.value)) return bad("\"" + param.name + "\" is at most " + kU64MaxText);
  return bad("\"" + param.name + "\" must be a non-negative integer");
}

// from_seq=N&limit=M&wait_ms=W, each optional and at most once. limit and
// wait_ms above their maximum are capped, however large; from_seq 0 means
// 1, the first seq, and a from_seq must fit in 64 bits.
Status parse_events_query(std::string_view query, EventsQuery* out) {
  auto params = parse_query(query, {"from_seq", "limit", "wait_ms"});
  if (!params) return params.status();
  for (const QueryParam& param : *params) {
    std::uint64_t number = 0;
    bool parsed = false;
    if (param.name == "from_seq") {
      parsed = parse_decimal(param.value, UINT64_MAX, &number);
    } else {
      const std::uint64_t cap = param.name == "limit" ? kEventsLimitMax : kEventsWaitMsMax;
      parsed = parse_decimal_capped(param.value, cap, &number);
    }
    if (!parsed) return seq_refused(param);
    if (param.name == "from_seq") {
      out->from_seq = std::max<std::uint64_t>(number, 1);
    } else if (param.name == "limit") {
      if (number == 0) return bad("\"limit\" must be at least 1");
      out->limit = static_cast<std::size_t>(number);
    } else {
      out->wait_ms = static_cast<std::int64_t>(number);
    }
  }
  return Status();
}

// at_seq=N or at_time=T (RFC 3339 or ns since the epoch), at most one:
// a point-in-time read (docs/snapshots.md). Neither: nullopt, now.
Result<std::optional<AsOf>> parse_as_of_query(std::string_view query) {
  auto params = parse_query(query, {"at_seq", "at_time"});
  if (!params) return params.status();
  if (params->empty()) return std::optional<AsOf>();
  if (params->size() > 1) return bad("give at_seq or at_time, not both");
  const QueryParam& param = params->front();
  if (param.name == "at_seq") {
    std::uint64_t seq = 0;
    if (!parse_decimal(param.value, UINT64_MAX, &seq)) return seq_refused(param);
    return std::optional<AsOf>(AsOf::at_seq(seq));
  }
  std::int64_t time_ns = 0;
  switch (parse_time(param.value, &time_ns)) {
    case TimeParse::ok:
      break;
    case TimeParse::malformed:
      return bad("\"at_time\" must be an RFC 3339 time with an offset or ns since the epoch");
    case TimeParse::out_of_range:
      return bad("\"at_time\" " + std::string(kTimeOutOfRange));
  }
  return std::optional<AsOf>(AsOf::at_time(time_ns));
}

// One answer of GET /v1/events: {"events":[...],"next_seq":N}, each event
// the object `tally log --json` prints for it.
struct EventsPage {
  std::string body;
  std::size_t count = 0;
};

Result<EventsPage> read_events_page(EventFeed& feed, const EventsQuery& query) {
  EventsPage page;
  page.body = "{\"events\":[";
  log::EventDecoder decoder;
  log::Event event;
  std::uint64_t next_seq = query.from_seq;
  FeedLimits limits;
  limits.events_max = query.limit;
  auto count = feed.poll(&next_seq, limits, [&](const log::Record& record) {
    TALLY_TRY(log::decode_record(decoder, record, &event));
    if (record.seq != query.from_seq) page.body += ',';
    append_event(event, EventFormat::json, &page.body);
    return Status();
  });
  if (!count) return count.status();
  page.count = *count;
  page.body += "],\"next_seq\":" + std::to_string(next_seq) + "}";
  return page;
}

std::string_view view(beast::string_view text) { return std::string_view(text.data(), text.size()); }

// ---- message framing -----------------------------------------------------------

// Why a request's Transfer-Encoding leaves its body unreadable, or nothing
// when it has none or only "chunked". Beast frames a body as chunked when
// that coding is the last and ignores any other, so without this check a
// request that says "gzip" would be read by its Content-Length (or as
// bodiless) and its body as the next request. RFC 9112 6.1 and 6.3: a
// final coding other than chunked, chunked twice, or any Transfer-Encoding
// in HTTP/1.0 is 400; another coding before chunked is one tally does not
// implement, 501. Either way the connection closes: the body is not read.
struct FramingProblem {
  http::status status;
  std::string_view code;
  std::string detail;
};

std::optional<FramingProblem> transfer_coding_problem(const http::request_header<>& header) {
  std::vector<std::string_view> codings;
  bool present = false;
  const auto [first, last] = header.equal_range(http::field::transfer_encoding);
  for (auto field = first; field != last; ++field) {
    present = true;
    std::string_view rest = view(field->value());
    while (!rest.empty()) {
      const std::size_t comma = rest.find(',');
      std::string_view coding = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      const auto space = [](char c) { return c == ' ' || c == '\t'; };
      while (!coding.empty() && space(coding.front())) coding.remove_prefix(1);
      while (!coding.empty() && space(coding.back())) coding.remove_suffix(1);
      if (!coding.empty()) codings.push_back(coding);
    }
  }
  if (!present) return std::nullopt;
  const auto bad = [](std::string detail) {
    return FramingProblem{http::status::bad_request, "invalid", std::move(detail)};
  };
  if (header.version() < 11) return bad("Transfer-Encoding in an HTTP/1.0 request");
  const auto is_chunked = [](std::string_view coding) {
    return beast::iequals(beast::string_view(coding.data(), coding.size()), "chunked");
  };
  if (codings.empty() || !is_chunked(codings.back())) {
    return bad("the last transfer coding of a request must be chunked");
  }
  if (std::count_if(codings.begin(), codings.end(), is_chunked) > 1) {
    return bad("the chunked transfer coding is applied more than once");
  }
  if (codings.size() > 1) {
    return FramingProblem{http::status::not_implemented, "not_implemented",
                          "transfer coding \"" + std::string(codings.front()) +
                              "\" is not supported: only chunked is"};
  }
  return std::nullopt;
}

Status check_mutation_headers(const Route& route, const Target& target,
                              const HttpRequest& request);

// One HTTP connection. Every method runs on its strand.
class HttpSession final : public Session, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Core& core, tcp::socket socket, std::string peer)
      : peer_(std::move(peer)), core_(core), stream_(std::move(socket)),
        deadline_(stream_.get_executor()) {
    buffer_.max_size(core_.options().http_header_bytes_max + kReadBytes);
  }
  ~HttpSession() override {
    if (id_ != 0) core_.remove_session(id_);
    core_.metrics().connection_closed(Metrics::Protocol::http);
  }

  void start(std::uint64_t id, bool probe) {
    id_ = id;
    probe_ = probe;
    read_request();
  }

  void begin_shutdown() override {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      // Between requests nothing is in flight: close. Otherwise the answer
      // is sent with Connection: close.
      if (self->reading_) self->close();
    });
  }

  void close_now() override {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->close(); });
  }

 private:
  // A probe's whole exchange is short: it holds one of few connections.
  static constexpr std::chrono::milliseconds kProbeTimeout{5000};
  // What Beast reads at most at a time. The read buffer holds bytes not
  // parsed yet: the headers, a chunk's size line, the trailers, and what
  // follows them. Bodies go to the request as they arrive, so the header
  // limit and one read bound what a request needs; the cap bounds what a
  // chunk extension or trailer section sent without end would take, which
  // Beast (1.74) counts against neither the header nor the body limit.
  static constexpr std::size_t kReadBytes = 64 << 10;
  // The deadline of each read and write.
  std::chrono::milliseconds timeout() const {
    const std::chrono::milliseconds idle(core_.options().idle_timeout_ms);
    return probe_ ? std::min(idle, kProbeTimeout) : idle;
  }

  void read_request() {
    if (stopping_ || closed_) return close();
    parser_.emplace();
    parser_->body_limit(core_.options().http_body_bytes_max);
    parser_->header_limit(core_.options().http_header_bytes_max);
    reading_ = true;
    arm_read_deadline();
    head_ = false;
    // Beast (1.74) checks its header limit against what one parse is given,
    // not against the fields it has already taken from the buffer: headers
    // sent in one go as millions of short fields passed any limit, each
    // field an allocation. So the session feeds the parser itself and
    // counts what it took.
    read_header(0);
  }

  // Parses what buffer_ holds, reading more until the headers are whole;
  // `taken`: the bytes of them the parser has consumed so far.
  void read_header(std::size_t taken) {
    beast::error_code ec;
    const std::size_t used = parser_->put(buffer_.data(), ec);
    buffer_.consume(used);
    taken += used;
    if (taken > core_.options().http_header_bytes_max) return on_read(http::error::header_limit);
    if (ec != http::error::need_more) return on_header(ec);
    stream_.async_read_some(
        buffer_.prepare(std::min(kReadBytes, buffer_.max_size() - buffer_.size())),
        [self = shared_from_this(), taken](beast::error_code read_ec, std::size_t bytes) {
          self->buffer_.commit(bytes);
          if (read_ec == asio::error::eof) {
            read_ec = self->parser_->got_some() ? http::error::partial_message
                                                : http::error::end_of_stream;
          }
          if (read_ec || self->closed_) return self->on_read(read_ec);
          self->read_header(taken);
        });
  }

  // The headers are in: answer in the request's version, and tell an
  // HTTP/1.1 client that waits before sending its body (Expect:
  // 100-continue, as curl 7.88 does for bodies over 1 MiB) to send it.
  void on_header(beast::error_code ec) {
    // A stop may close the session after the headers came in and before
    // this ran: their request was not read, and goes unanswered.
    if (ec || closed_) return on_read(ec);
    if (probe_) core_.probe_asked(id_);
    version_ = parser_->get().version();
    head_ = parser_->get().method() == http::verb::head;
    if (auto framing = transfer_coding_problem(parser_->get().base())) {
      reading_ = false;
      return refuse(framing->status, framing->code, std::move(framing->detail));
    }
    // Decided before a body is read, or a 100 Continue sent for one.
    if (probe_ && !probe_target(view(parser_->get().target()))) {
      reading_ = false;
      core_.refuse_probe();
      HttpResponse response =
          problem(http::status::service_unavailable, "busy",
                  "connections_max HTTP connections are open; over them only /health and "
                  "/metrics are answered");
      response.set(http::field::retry_after, "1");
      return send(std::move(response), true);
    }
    const auto read_body = [self = shared_from_this()] {
      // The body has a timeout of its own: the headers' covered the idle
      // wait before them too.
      self->arm_read_deadline();
      http::async_read(self->stream_, self->buffer_, *self->parser_,
                       [self](beast::error_code read_ec, std::size_t) { self->on_read(read_ec); });
    };
    if (parser_->is_done()) return on_read(ec);
    // HTTP/1.0 has no 1xx answers: its expectation is ignored (RFC 9110
    // 10.1.1), the body read as it comes.
    if (version_ < 11 ||
        !beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      return read_body();
    }
    // A client that waits to be asked for its body is told at once what
    // the headers decide (a 401, a 404, a mutation's bad query or missing
    // or invalid key, the answer of a GET, which takes no body), and the
    // connection closes, its body unsent, rather than asked for a body only
    // to be refused or ignored.
    reading_ = false;
    body_unread_ = true;  // an answer now closes the connection
    const std::optional<Routed> routed = route_headers(parser_->get());
    if (!routed) return;
    if (routed->route.kind != RouteKind::mutation) return route_get(routed->route, routed->target);
    const Status decided = check_mutation_headers(routed->route, routed->target, parser_->get());
    if (!decided.ok()) return reject(routed->route, decided);
    body_unread_ = false;
    reading_ = true;
    continue_.emplace(http::status::continue_, version_);
    auto sent = [self = shared_from_this(), read_body](beast::error_code write_ec, std::size_t) {
      if (write_ec) return self->close();
      read_body();
    };
    http::async_write(stream_, *continue_, std::move(sent));
  }

  void on_read(beast::error_code ec) {
    reading_ = false;
    if (ec == http::error::end_of_stream || closed_) return close();
    if (ec == http::error::body_limit) {
      return refuse(http::status::payload_too_large, "too_large", "the body exceeds the limit of " +
                                                                      std::to_string(core_.options().http_body_bytes_max) + " bytes");
    }
    if (ec == http::error::header_limit) {
      return refuse(http::status::request_header_fields_too_large, "too_large", "headers too large");
    }
    if (ec == http::error::buffer_overflow) {
      return refuse(http::status::request_header_fields_too_large, "too_large",
                    "a chunk's size line or the trailers exceed " +
                        std::to_string(buffer_.max_size()) + " bytes");
    }
    // A client that resets the connection, or ends it in the middle of a
    // request (gave up on it: a timeout, an upload cancelled), is gone, not
    // malformed: there is no one to answer, and nothing for the malformed
    // count's alerts.
    if (ec == asio::error::connection_reset || ec == http::error::partial_message) return close();
    // Beast calls the two framings together a bad value of the second.
    const auto& header = parser_->get();
    if ((ec == http::error::bad_content_length && header.count(http::field::transfer_encoding)) ||
        (ec == http::error::bad_transfer_encoding && header.count(http::field::content_length))) {
      return refuse(http::status::bad_request, "invalid",
                    "malformed HTTP request: both Content-Length and Transfer-Encoding");
    }
    if (ec) return refuse(http::status::bad_request, "invalid", "malformed HTTP request: " + ec.message());
    handle(parser_->release());
  }

  // A request that cannot be read any further: answer, then close.
  void refuse(http::status status, std::string_view code, std::string detail) {
    core_.metrics().malformed();
    note("closing: " + detail);
    send(problem(status, code, detail), true);
  }

  struct Routed {
    Route route;
    Target target;
  };
  // What a request's headers decide alone: its Host, target and route,
  // credentials, the ledger serving, the method; and GET /health, answered.
  // nullopt once it is answered (refused, or health); the route otherwise.
  // It answers nothing for a request that passes, so it may run again on
  // the same headers.
  std::optional<Routed> route_headers(const HttpRequest& request);
  void handle(HttpRequest request);
  void health(http::verb method);
  // Why the request's credentials are refused (never the token itself);
  // nullptr when they pass.
  const char* unauthorized(const HttpRequest& request);
  void metrics();
  // A request of `route` refused before it reached the ledger (its path,
  // query or body did not decode): answered, and counted under the route's
  // op as the ledger's own refusals are.
  void reject(const Route& route, const Status& status);
  // The GET routes but /health, which take no body: answered from the
  // request's target alone.
  void route_get(const Route& route, const Target& target);
  // GET /v1/events: read; if nothing is there yet and wait_ms allows, wait
  // for a commit (EventFeed::wait, off the I/O threads) and read once more.
  void events(const Route& route, const Target& target);
  void balance(std::string subject, std::string item, std::optional<AsOf> at);
  void list(std::string subject, std::optional<AsOf> at);
  // The first read of a poll counts in the metrics (`op`, Op::events); the
  // one after a wait does not (Op::count): a request counts once.
  void poll_events(const EventsQuery& query, EventFeed::Deadline deadline, bool may_wait,
                   Metrics::Op op);
  void on_events(const EventsQuery& query, EventFeed::Deadline deadline, bool may_wait,
                 Result<EventsPage> page);
  void on_poll_ready(const EventsQuery& query, EventFeed::Deadline deadline);
  void watch_peer();
  void route_post(const Route& route, const Target& target, const HttpRequest& request);
  void mutate(Command command);

  // The completion of a read: renders its answer (or error) on the strand.
  // `not_found_code`, when given, is the problem code of a not_found: the
  // route's name for what it did not find.
  template <class T>
  std::function<void(Result<T>)> reply(std::function<HttpResponse(const T&)> render,
                                       std::string_view not_found_code = {}) {
    return [self = shared_from_this(), render = std::move(render),
            not_found = std::string(not_found_code)](Result<T> result) {
      asio::post(self->stream_.get_executor(), [self, render, not_found, result = std::move(result)] {
        if (result) return self->send(render(*result), false);
        if (result.code() == ErrorCode::not_found && !not_found.empty()) {
          return self->send(problem(http::status::not_found, not_found, result.status().message()),
                            false);
        }
        self->send(error_response(result.status()), false);
      });
    };
  }

  void send(HttpResponse response, bool close_after) {
    response_ = std::move(response);
    response_.version(version_);
    response_.keep_alive(keep_alive_ && !close_after && !body_unread_ && !stopping_ &&
                         !core_.stopping());
    response_.prepare_payload();
    // The answer to a HEAD has headers only (RFC 9110 9.3.2), its
    // Content-Length still that of the body left out.
    if (head_) response_.body().clear();
    // The binary protocol's write-stall rule (look_at_write): a client that
    // reads a large answer slowly keeps its connection.
    writing_ = true;
    write_moved_ns_ = steady_now_ns();
    serializer_.emplace(response_);
    look_after(idle_ns());
    write_piece();
  }

  std::int64_t idle_ns() const { return std::chrono::nanoseconds(timeout()).count(); }

  // A read (the headers, or a body) waits for the idle timeout, and longer
  // while the peer still takes the answers written before it: the binary
  // protocol's idle rule (look_when_idle).
  void arm_read_deadline() {
    read_began_ns_ = steady_now_ns();
    look_after(idle_ns());
  }

  // Looks at the read or the write in progress `wait_ns` from now: a write
  // by the write-stall rule (look_at_write), a read by the idle rule.
  void look_after(std::int64_t wait_ns) {
    // A timer armed on a closed session would keep it (and a stop waiting
    // for it) until it fired.
    if (closed_) return;
    deadline_.expires_after(std::chrono::nanoseconds(wait_ns));
    deadline_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->closed_ || !(self->reading_ || self->writing_)) return;
      const std::int64_t unsent = unsent_bytes(self->stream_.socket());
      const std::int64_t now_ns = steady_now_ns();
      if (self->writing_) {
        const std::int64_t next_ns =
            look_at_write(self->drain_, unsent, now_ns, self->idle_ns(), &self->write_moved_ns_);
        if (next_ns > 0) return self->look_after(next_ns);
        return self->close_stuck("written");
      }
      const std::int64_t next_ns =
          look_when_idle(self->drain_, unsent, now_ns, self->idle_ns(), &self->read_began_ns_);
      if (next_ns > 0) return self->look_after(next_ns);
      if (next_ns < 0) return self->close_stuck("taken");
      self->note("closing: idle timeout");
      self->close();
    });
  }

  // Resets a connection whose peer took no answer bytes for the idle
  // timeout: `what` the server's side did not do with them.
  void close_stuck(const char* what) {
    note(stuck_reason(what, timeout().count()));
    close_abortively(stream_.socket());
    close();
  }

  // Writes the answer a piece at a time, each piece as much as the system
  // takes: each one written is progress for the write's deadline.
  void write_piece() {
    http::async_write_some(stream_, *serializer_,
                           [self = shared_from_this()](beast::error_code ec, std::size_t) {
                             self->write_moved_ns_ = steady_now_ns();
                             if (!ec && !self->closed_ && !self->serializer_->is_done()) {
                               return self->write_piece();
                             }
                             self->on_written(ec);
                           });
  }

  void on_written(beast::error_code ec) {
    writing_ = false;
    deadline_.cancel();
    const bool keep_alive = response_.keep_alive();
    // A list's answer may be tens of MB: not kept until the next one.
    serializer_.reset();
    response_ = {};
    list_pass_.reset();
    if (ec || closed_ || !keep_alive) return close();
    read_request();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    deadline_.cancel();
    if (!writing_) list_pass_.reset();  // else once the write ends
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    // A waiting poll holds this session in the feed: release it now; its
    // Ready finds the session closed.
    if (poll_waiting_) core_.feed().cancel(poll_waiter_);
  }

  void note(const std::string& what) { core_.log_connection("http", peer_, what); }

  const std::string peer_;
  Core& core_;
  beast::tcp_stream stream_;
  // The deadline of the read or the write in progress: the session's own
  // rather than the stream's, which closes the socket gracefully, and the
  // system would then keep what the peer has not taken of the answers, for
  // minutes.
  asio::steady_timer deadline_;
  bool writing_ = false;               // an answer is being written
  std::int64_t write_moved_ns_ = 0;    // the write last sent bytes (or began)
  std::int64_t read_began_ns_ = 0;     // the read began, or the peer last took bytes
  DrainWatch drain_;                   // whether the peer takes what the system holds
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<Body>> parser_;
  HttpResponse response_;
  std::optional<http::response_serializer<Body>> serializer_;  // of response_, while written
  ListPass list_pass_;  // of response_, a list's answer, until written
  std::optional<http::response<http::empty_body>> continue_;  // 100 Continue, while written
  // An answer decided at the headers of a request whose body the client
  // holds back (Expect: 100-continue): the connection ends after it.
  bool body_unread_ = false;
  unsigned version_ = 11;  // the request's HTTP version: 10 or 11
  std::uint64_t id_ = 0;
  bool keep_alive_ = true;
  bool head_ = false;  // the request is a HEAD
  // Over connections_max (Core::Admission::probe): one request, answered
  // only for /health and /metrics (kProbeConnectionsMax), each read and
  // write within kProbeTimeout.
  bool probe_ = false;
  bool reading_ = false;
  bool stopping_ = false;
  bool closed_ = false;
  bool poll_waiting_ = false;  // a GET /v1/events waits in the feed
  EventFeed::WaiterId poll_waiter_ = 0;
  std::int64_t request_start_ns_ = 0;  // when handle() took the request
};

std::optional<HttpSession::Routed> HttpSession::route_headers(const HttpRequest& request) {
  request_start_ns_ = steady_now_ns();
  // A client may not know how a HEAD's answer ends (every one is a 405):
  // closing after it leaves no doubt.
  keep_alive_ = request.keep_alive() && request.method() != http::verb::head && !probe_;
  // RFC 9112 3.2: an HTTP/1.1 request names exactly one Host, and no
  // request names two (a proxy and the server could read different ones).
  const std::size_t hosts = request.count(http::field::host);
  if (hosts > 1 || (hosts == 0 && request.version() >= 11)) {
    send(error_response(bad("exactly one Host header is required")), false);
    return std::nullopt;
  }
  if (hosts == 1 && !host_is_valid(view(request[http::field::host]))) {
    send(error_response(bad("the Host header is not a host name or address, with an optional "
                            "port")),
         false);
    return std::nullopt;
  }
  auto target = parse_target(view(request.target()));
  if (!target) {
    send(error_response(target.status()), false);
    return std::nullopt;
  }
  const Route route = target->too_long ? Route{} : match_route(target->segments);
  if (route.kind == RouteKind::health) {
    // /health takes no parameters either.
    const Status query = parse_query(target->query, {}).status();
    if (!query.ok() && request.method() == route.method) {
      reject(route, query);
    } else {
      health(request.method());
    }
    return std::nullopt;
  }
  if (const char* refused = unauthorized(request)) {
    core_.metrics().unauthorized(Metrics::Protocol::http);
    note(std::string("unauthorized: ") + refused);
    HttpResponse response =
        problem(http::status::unauthorized, "unauthorized", "a valid bearer token is required");
    response.set(http::field::www_authenticate, "Bearer");
    send(std::move(response), false);
    return std::nullopt;
  }
  if (!core_.serving() && route.kind != RouteKind::metrics) {
    // Counted under its op, as an answer from the ledger would be (a path
    // that is no route, or a method the route does not take, under none).
    if (route.op != Metrics::Op::count && request.method() == route.method) {
      core_.metrics().record(route.op, Metrics::error_slot(ErrorCode::busy),
                             steady_now_ns() - request_start_ns_);
    }
    send(starting_response("busy"), false);
    return std::nullopt;
  }
  if (route.kind == RouteKind::none) {
    send(problem(http::status::not_found, "not_found", "no such route"), false);
    return std::nullopt;
  }
  if (request.method() != route.method) {
    send(method_not_allowed(route.method), false);
    return std::nullopt;
  }
  return Routed{route, std::move(*target)};
}

void HttpSession::handle(HttpRequest request) {
  std::optional<Routed> routed = route_headers(request);
  if (!routed) return;  // answered
  const auto& [route, target] = *routed;
  if (route.kind == RouteKind::mutation) return route_post(route, target, request);
  route_get(route, target);
}

void HttpSession::health(http::verb method) {
  if (method != http::verb::get) return send(method_not_allowed(http::verb::get), false);
  // Ready once the ledger's log is open and served; stopping means not
  // ready, and so does a ledger that failed a write (it refuses every
  // request until it is reopened: restart the server).
  if (stopping_ || core_.stopping()) {
    return send(problem(http::status::service_unavailable, "closed", "shutting down"), false);
  }
  if (!core_.serving()) {
    std::string extra;
    if (const OpenProgress* progress = core_.options().starting) {
      extra = ",\"snapshot_seq\":" + std::to_string(progress->snapshot_seq.load()) +
              ",\"replayed_events\":" + std::to_string(progress->events.load());
    }
    return send(starting_response("starting", std::move(extra)), false);
  }
  if (core_.ledger().read_only()) {
    return send(problem(http::status::service_unavailable, "read_only",
                        "the ledger failed a write; restart the server to reopen it"),
                false);
  }
  send(json_response(http::status::ok, "{\"status\":\"ready\"}"), false);
}

const char* HttpSession::unauthorized(const HttpRequest& request) {
  if (core_.options().token.empty()) return nullptr;
  // Two credentials are none: which one would a proxy have checked?
  const std::size_t count = request.count(http::field::authorization);
  if (count == 0) return "no token (the server requires one)";
  if (count > 1) return "two Authorization headers";
  const auto token = bearer_token(view(request[http::field::authorization]));
  if (!token.has_value()) return "not a bearer token";
  return core_.token_ok(*token) ? nullptr : "wrong token";
}

void HttpSession::metrics() {
  if (!core_.serving()) {
    // No ledger yet: the server's own counters and how far its open is.
    return send(metrics_response(core_.metrics().render_starting(core_.options().starting)),
                false);
  }
  // Rendered while this scrape is in flight for certain, and left out of
  // the queue depth.
  core_.read<std::string>(
      Metrics::Op::count,
      [this] {
        return Result<std::string>(
            core_.metrics().render(core_.ledger().stats(), core_.feed().stats(), 1));
      },
      reply<std::string>([](const std::string& text) { return metrics_response(text); }));
}

void HttpSession::reject(const Route& route, const Status& status) {
  if (route.op != Metrics::Op::count) {
    core_.metrics().record(route.op, Metrics::error_slot(status.code()),
                           steady_now_ns() - request_start_ns_);
  }
  send(error_response(status), false);
}

void HttpSession::route_get(const Route& route, const Target& target) {
  const std::vector<std::string>& path = target.segments;
  switch (route.kind) {
    case RouteKind::metrics: {
      // /metrics takes no parameters either.
      const Status query = parse_query(target.query, {}).status();
      return query.ok() ? metrics() : reject(route, query);
    }
    case RouteKind::events: return events(route, target);
    case RouteKind::balance:
    case RouteKind::list: {
      auto at = parse_as_of_query(target.query);
      if (!at) return reject(route, at.status());
      // The ledger checks the names (as a mutation's).
      if (route.kind == RouteKind::balance) return balance(path[2], path[3], *at);
      return list(path[2], *at);
    }
    case RouteKind::hold_info: {
      HoldId hold = 0;
      auto at = parse_as_of_query(target.query);
      if (!at) return reject(route, at.status());
      const Status valid = parse_hold_id(path[2], &hold);
      if (!valid.ok()) return reject(route, valid);
      // An unknown hold is hold_unknown, as for a commit or release of one.
      return core_.hold_info(hold, *at, reply<HoldView>(hold_response, "hold_unknown"));
    }
    case RouteKind::none:
    case RouteKind::health:
    case RouteKind::mutation: break;
  }
  TALLY_ASSERT(false);  // the GET routes only, /health answered by route_headers()
}

void HttpSession::balance(std::string subject, std::string item, std::optional<AsOf> at) {
  auto render = [subject, item](const Balance& balance) {
    std::string body = "{\"subject\":";
    json::append_string(&body, subject);
    body += ",\"item\":";
    json::append_string(&body, item);
    append_balance_fields(&body, balance);
    return json_response(http::status::ok, body + "}");
  };
  core_.balance(std::move(subject), std::move(item), at, reply<Balance>(std::move(render)));
}

void HttpSession::list(std::string subject, std::optional<AsOf> at) {
  auto render = [subject](const std::vector<ItemBalance>& items) {
    std::string body = "{\"subject\":";
    json::append_string(&body, subject);
    body += ",\"balances\":[";
    for (std::size_t index = 0; index < items.size(); index++) {
      body += index == 0 ? "{\"item\":" : ",{\"item\":";
      json::append_string(&body, items[index].item);
      append_balance_fields(&body, items[index].balance);
      body += "}";
    }
    return json_response(http::status::ok, body + "]}");
  };
  auto answer = reply<std::vector<ItemBalance>>(std::move(render));
  core_.list(std::move(subject), at,
             [self = shared_from_this(), answer = std::move(answer)](
                 Result<std::vector<ItemBalance>> result, ListPass pass) {
               // Posted before the answer, so set before it is sent.
               asio::post(self->stream_.get_executor(), [self, pass = std::move(pass)]() mutable {
                 if (!self->closed_) self->list_pass_ = std::move(pass);
               });
               answer(std::move(result));
             });
}

void HttpSession::events(const Route& route, const Target& target) {
  EventsQuery query;
  const Status parsed = parse_events_query(target.query, &query);
  if (!parsed.ok()) return reject(route, parsed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(query.wait_ms);
  poll_events(query, deadline, query.wait_ms > 0, Metrics::Op::events);
}

void HttpSession::poll_events(const EventsQuery& query, EventFeed::Deadline deadline, bool may_wait,
                              Metrics::Op op) {
  auto self = shared_from_this();
  core_.read<EventsPage>(
      op, [this, query] { return read_events_page(core_.feed(), query); },
      [self, query, deadline, may_wait](Result<EventsPage> page) {
        asio::post(self->stream_.get_executor(), [self, query, deadline, may_wait, page = std::move(page)]() mutable {
          self->on_events(query, deadline, may_wait, std::move(page));
        });
      });
}

void HttpSession::on_events(const EventsQuery& query, EventFeed::Deadline deadline, bool may_wait,
                            Result<EventsPage> page) {
  if (!page) return send(error_response(page.status()), false);
  if (page->count > 0 || !may_wait || stopping_ || core_.stopping()) {
    return send(json_response(http::status::ok, std::move(page->body)), false);
  }
  // Nothing at or after from_seq is committed yet. The feed calls back on a
  // commit past from_seq - 1, at the deadline, or when the server stops;
  // then the poll reads once more and answers whatever it finds.
  auto self = shared_from_this();
  poll_waiting_ = true;
  poll_waiter_ = core_.feed().wait(query.from_seq - 1, deadline, [self, query, deadline](std::uint64_t) {
    asio::post(self->stream_.get_executor(), [self, query, deadline] { self->on_poll_ready(query, deadline); });
  });
  watch_peer();
}

void HttpSession::on_poll_ready(const EventsQuery& query, EventFeed::Deadline deadline) {
  poll_waiting_ = false;
  poll_waiter_ = 0;
  // Ends watch_peer()'s wait; nothing else is pending on the socket now.
  beast::error_code ignored;
  stream_.socket().cancel(ignored);
  if (closed_) return;
  poll_events(query, deadline, false, Metrics::Op::count);
}

// While a poll waits, notices a client that goes away (a consumer's own
// timeout is often shorter than its wait_ms), so that neither the wait nor
// the connection lingers until the deadline.
void HttpSession::watch_peer() {
  stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
    if (ec || !self->poll_waiting_ || self->closed_) return;
    // Peek without blocking the I/O thread: the socket is readable, but
    // Beast may have taken what was there.
    tcp::socket& socket = self->stream_.socket();
    char byte = 0;
    beast::error_code peeked;
    beast::error_code ignored;
    socket.non_blocking(true, ignored);
    socket.receive(asio::buffer(&byte, 1), tcp::socket::message_peek, peeked);
    socket.non_blocking(false, ignored);
    if (!peeked) return;  // a pipelined request: it waits for read_request()
    if (peeked == asio::error::would_block || peeked == asio::error::try_again) return self->watch_peer();
    // End of stream or a reset: the client is gone.
    self->close();
  });
}

// The op of a single-op mutation route's Metrics op (match_route()).
OpType op_type_of(Metrics::Op op) {
  switch (op) {
    case Metrics::Op::acquire: return OpType::acquire;
    case Metrics::Op::consume: return OpType::consume;
    case Metrics::Op::transfer: return OpType::transfer;
    case Metrics::Op::hold: return OpType::hold;
    case Metrics::Op::commit: return OpType::commit;
    case Metrics::Op::release: return OpType::release;
    default: break;
  }
  TALLY_ASSERT(false);  // not a single-op mutation route
  return OpType::acquire;
}

// Builds the Command of the mutation route `route` from its body; `mutate`
// submits it.
Status command_for(const Route& route, const std::vector<std::string>& path,
                   const json::Value& body, Command* command) {
  if (route.op == Metrics::Op::batch) {
    TALLY_TRY(check_fields(body, {"ops"}, kMetaFields));
    command->batch = true;
    TALLY_TRY(parse_batch_ops(body, command));
  } else {
    const OpType type = op_type_of(route.op);
    TALLY_TRY(parse_op(body, type, kMetaFields, &command->op));
    if (type == OpType::commit || type == OpType::release) {
      if (body.find("hold_id") != nullptr || body.find("hold_key") != nullptr) {
        return bad("the hold is named by the path");
      }
      TALLY_TRY(parse_hold_id(path[2], &command->op.hold));
    }
  }
  return get_meta(body, &command->meta);
}

// What the headers alone decide of a POST to a mutation route, before its
// body is read: no query parameters, a hold id in the path (commit,
// release) that parses, and one Idempotency-Key that is a valid key.
Status check_mutation_headers(const Route& route, const Target& target,
                              const HttpRequest& request) {
  TALLY_TRY(parse_query(target.query, {}).status());
  if (route.op == Metrics::Op::commit || route.op == Metrics::Op::release) {
    HoldId hold = 0;
    TALLY_TRY(parse_hold_id(target.segments[2], &hold));
  }
  if (request.count("Idempotency-Key") > 1) return bad("more than one Idempotency-Key header");
  const std::string_view key = view(request["Idempotency-Key"]);
  if (key.empty()) return bad("the Idempotency-Key header is required");
  return detail::check_id("key", key);
}

// The Command of a POST to a mutation route: check_mutation_headers(), and
// a JSON object body (an empty body, or one of JSON's whitespace only, is
// {}).
Status decode_mutation(const Route& route, const Target& target, const HttpRequest& request,
                       Command* command) {
  TALLY_TRY(check_mutation_headers(route, target, request));
  json::Value body;
  body.type = json::Value::Type::object;
  if (request.body().find_first_not_of(" \t\r\n") != std::string::npos) {
    auto parsed = json::parse(request.body());
    if (!parsed) return parsed.status();
    body = std::move(*parsed);
  }
  if (body.type != json::Value::Type::object) return bad("the body must be a JSON object");
  TALLY_TRY(command_for(route, target.segments, body, command));
  command->key = std::string(view(request["Idempotency-Key"]));
  return Status();
}

void HttpSession::route_post(const Route& route, const Target& target,
                             const HttpRequest& request) {
  Command command;
  const Status decoded = decode_mutation(route, target, request, &command);
  if (!decoded.ok()) return reject(route, decoded);
  mutate(std::move(command));
}

void HttpSession::mutate(Command command) {
  auto self = shared_from_this();
  // The Command is moved into the Ledger; the response needs its shape only.
  Command shape;
  shape.batch = command.batch;
  shape.op.type = command.op.type;
  core_.submit(std::move(command), [self, shape = std::move(shape)](Result<Receipt> result) {
    asio::post(self->stream_.get_executor(), [self, shape, result = std::move(result)] {
      self->send(result ? receipt_response(shape, *result) : error_response(result.status()),
                 false);
    });
  });
}

}  // namespace

void start_http_session(Core& core, tcp::socket socket, std::string peer) {
  start_session<HttpSession>(core, std::move(socket), std::move(peer), Metrics::Protocol::http);
}

}  // namespace tally::server_detail
