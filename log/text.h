// Names in text meant for people: escaped so that a line stays one line and
// a field one field, whatever bytes a name holds (names are byte strings).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tally {

// The length of the valid UTF-8 sequence at text[at], or 0.
std::size_t utf8_length(std::string_view text, std::size_t at);

// How many bytes at text[at] are a character a reader may take for a line
// break or a control in UTF-8: a C1 control (U+0080..U+009F, U+0085 NEL
// among them) or U+2028/U+2029 (line and paragraph separators); 0 if none.
std::size_t line_breaking_utf8(std::string_view text, std::size_t at);

// Appends `text` on one line, with `delimiter` (a printable ASCII byte or
// space, that ends the field it is in) escaped too: control characters, DEL, the
// bytes that are not valid UTF-8 (which an 8-bit terminal may take for C1
// controls) and those of line_breaking_utf8() become \xNN, backslash \\,
// and everything else is copied, so UTF-8 stays readable.
void append_escaped(std::string* out, std::string_view text, char delimiter);

// append_escaped() for `key=value` text, where a space ends a field too.
void append_text_escaped(std::string* out, std::string_view text);

}  // namespace tally
