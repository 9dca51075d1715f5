#include "log/status.h"

#include "log/text.h"

namespace tally {

std::string_view error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::ok: return "ok";
    case ErrorCode::invalid: return "invalid";
    case ErrorCode::idempotency_conflict: return "idempotency_conflict";
    case ErrorCode::not_found: return "not_found";
    case ErrorCode::io_error: return "io_error";
    case ErrorCode::corrupt: return "corrupt";
    case ErrorCode::locked: return "locked";
    case ErrorCode::read_only: return "read_only";
    case ErrorCode::closed: return "closed";
    case ErrorCode::busy: return "busy";
  }
  return "unknown";
}

std::string Status::to_string() const {
  std::string out(error_code_name(code_));
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  return out;
}

void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "tally: assertion failed: %s (%s:%d)\n", expr, file, line);
  std::abort();
}

// Built by appending: GCC 12 warns falsely (-Wrestrict, PR 105651) on
// "'" + std::string(...) at -O3.
std::string quoted(std::string_view name) {
  std::string out;
  out.reserve(name.size() + 2);
  out.push_back('\'');
  append_escaped(&out, name, '\'');
  out.push_back('\'');
  return out;
}

}  // namespace tally
