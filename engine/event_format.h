// Event formatting: one event of the log as `tally log` prints it, a line of
// text for people or a JSON object for scripts. The CLI (tools/cli_log.cc)
// and the server's event feed (GET /v1/events, engine/http.cc) both print
// through here, so a consumer sees the same fields wherever it reads the
// log. docs/cli.md lists them.
//
// Subjects, items and keys are arbitrary bytes (docs/architecture.md, "Names"): JSON output
// escapes them with json::append_string, text with append_text_escaped.
//
// Thread safety: plain functions of their arguments.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/time_text.h"
#include "log/event.h"
#include "log/text.h"

namespace tally {

enum class EventFormat : std::uint8_t { text, json };

// Appends one event without a newline:
//   text: `<seq> <time> <type> key=K field=value ops=[...; ...] ...`
//   json: {"seq","time","time_rfc3339","type","key", the op's fields, ...,"fingerprint"}
void append_event(const log::Event& event, EventFormat format, std::string* out);

// 16 lower-case hex digits.
void append_hex64(std::string* out, std::uint64_t value);

}  // namespace tally
