// Status and Result<T>: how every layer reports operating errors.
//
// Three kinds of failure, three mechanisms (docs/architecture.md):
//   - a bug is an assertion (TALLY_ASSERT, on in release builds);
//   - an operating error (I/O, corruption, bad input) is a returned Status or
//     Result<T>, defined here;
//   - a business rejection (insufficient, hold_expired, ...) is an outcome
//     value carried inside a successful Result (engine/types.h).
//
// Both types are [[nodiscard]]. Dropping one on purpose is spelled
// `ignore_status(...)` so that grep finds every such place.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace tally {

// Stable error codes. Their names are part of the CLI, HTTP and binary
// protocol contracts: never renumber, only add.
enum class ErrorCode : std::uint8_t {
  ok = 0,
  invalid,               // malformed request or argument; nothing was written
  idempotency_conflict,  // key reused with a different request; nothing written
  not_found,             // a file, snapshot or record that is not there
  io_error,              // the operating system refused a read, write or sync
  corrupt,               // checksums or structure do not verify
  locked,                // another process holds the data directory
  read_only,             // the ledger failed a write and refuses mutations
  closed,                // the ledger is closed or closing
  busy,                  // a bounded queue is full
};

std::string_view error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message)
      : code_(code), message_(std::move(message)) {}
  // An error the operating system reported, with its errno.
  Status(ErrorCode code, std::string message, int os_error)
      : code_(code), os_error_(os_error), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == ErrorCode::ok; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // The errno behind the error; 0 when none is known.
  int os_error() const { return os_error_; }
  // "code: message", for logs and CLI output.
  std::string to_string() const;

 private:
  ErrorCode code_ = ErrorCode::ok;
  int os_error_ = 0;
  std::string message_;
};

// Holds either a T or a non-ok Status.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {  // NOLINT
    if (std::get<Status>(state_).ok()) std::abort();  // a Result error must be an error
  }
  Result(ErrorCode code, std::string message) : Result(Status(code, std::move(message))) {}

  bool ok() const { return std::holds_alternative<T>(state_); }
  explicit operator bool() const { return ok(); }

  // Precondition: ok().
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  // Moves out of a temporary: `auto ledger = std::move(*Ledger::open(o))`.
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  // The error; an ok Status when the Result holds a value.
  Status status() const { return ok() ? Status() : std::get<Status>(state_); }
  ErrorCode code() const { return ok() ? ErrorCode::ok : std::get<Status>(state_).code(); }

 private:
  std::variant<T, Status> state_;
};

// Drops a Status on purpose, visibly.
inline void ignore_status(const Status&) {}

// 'name', for naming a subject, item or key in an error message: escaped
// as append_escaped() does (log/text.h), a quote in it too, so that the
// message stays one line and the name's ends are plain.
std::string quoted(std::string_view name);

[[noreturn]] void assert_fail(const char* expr, const char* file, int line);

}  // namespace tally

// Invariants that protect data stay on in release builds. Split compound
// conditions into several asserts so a failure names the part that broke.
#define TALLY_ASSERT(expr) \
  ((expr) ? static_cast<void>(0) : ::tally::assert_fail(#expr, __FILE__, __LINE__))

#ifdef NDEBUG
#define TALLY_DEBUG_ASSERT(expr) static_cast<void>(0)
#else
#define TALLY_DEBUG_ASSERT(expr) TALLY_ASSERT(expr)
#endif

// Propagates a non-ok Status from an expression returning Status.
#define TALLY_TRY(expr)                       \
  do {                                        \
    ::tally::Status tally_try_status_ = (expr); \
    if (!tally_try_status_.ok()) return tally_try_status_; \
  } while (0)
