#include "engine/api.h"

#include <string>
#include <utility>

namespace tally {

namespace {

Command single(std::string_view key, OpRequest op, const Metadata& meta) {
  Command command;
  command.key = key;
  command.meta = meta;
  command.op = std::move(op);
  return command;
}

}  // namespace

Result<Receipt> LedgerApi::acquire(std::string_view key, std::string_view subject,
                                   std::string_view item, std::int64_t qty, const Metadata& meta) {
  return execute(single(key, OpRequest::acquire(std::string(subject), std::string(item), qty), meta));
}

Result<Receipt> LedgerApi::consume(std::string_view key, std::string_view subject,
                                   std::string_view item, std::int64_t qty, const Metadata& meta) {
  return execute(single(key, OpRequest::consume(std::string(subject), std::string(item), qty), meta));
}

Result<Receipt> LedgerApi::transfer(std::string_view key, std::string_view from,
                                    std::string_view to, std::string_view item, std::int64_t qty,
                                    const Metadata& meta) {
  return execute(single(
      key, OpRequest::transfer(std::string(from), std::string(to), std::string(item), qty), meta));
}

Result<Receipt> LedgerApi::hold(std::string_view key, std::string_view subject,
                                std::string_view item, std::int64_t qty, std::int64_t ttl_ns,
                                const Metadata& meta) {
  return execute(single(
      key, OpRequest::hold_of(std::string(subject), std::string(item), qty, ttl_ns), meta));
}

Result<Receipt> LedgerApi::commit(std::string_view key, HoldId hold,
                                  std::optional<std::int64_t> qty, const Metadata& meta) {
  // An explicit qty must be positive; 0 on the wire means "the whole hold".
  if (qty && *qty <= 0) return Status(ErrorCode::invalid, "commit qty must be > 0");
  return execute(single(key, OpRequest::commit(hold, qty.value_or(0)), meta));
}

Result<Receipt> LedgerApi::release(std::string_view key, HoldId hold, const Metadata& meta) {
  return execute(single(key, OpRequest::release(hold), meta));
}

Result<Receipt> LedgerApi::batch(std::string_view key, std::vector<OpRequest> ops,
                                 const Metadata& meta) {
  Command command;
  command.key = key;
  command.meta = meta;
  command.batch = true;
  command.ops = std::move(ops);
  return execute(std::move(command));
}

}  // namespace tally
