#include "log/text.h"

#include <cstdint>

namespace tally {

namespace {

void append_byte_escaped(std::string* out, unsigned char byte) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  *out += "\\x";
  out->push_back(kHexDigits[byte >> 4]);
  out->push_back(kHexDigits[byte & 0xf]);
}

}  // namespace

std::size_t utf8_length(std::string_view text, std::size_t at) {
  const auto byte = [&](std::size_t index) { return static_cast<unsigned char>(text[index]); };
  const unsigned char lead = byte(at);
  std::size_t length = 0;
  std::uint32_t min = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, min = 0x80;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, min = 0x800;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, min = 0x10000;
  } else {
    return 0;
  }
  if (text.size() - at < length) return 0;
  std::uint32_t code = lead & (0x7F >> length);
  for (std::size_t index = 1; index < length; index++) {
    if ((byte(at + index) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(at + index) & 0x3F);
  }
  const bool surrogate = code >= 0xD800 && code <= 0xDFFF;
  return code < min || code > 0x10FFFF || surrogate ? 0 : length;
}

std::size_t line_breaking_utf8(std::string_view text, std::size_t at) {
  const auto byte_at = [&](std::size_t index) {
    return index < text.size() ? static_cast<unsigned char>(text[index]) : 0;
  };
  if (byte_at(at) == 0xc2 && byte_at(at + 1) >= 0x80 && byte_at(at + 1) <= 0x9f) return 2;
  if (byte_at(at) == 0xe2 && byte_at(at + 1) == 0x80 &&
      (byte_at(at + 2) == 0xa8 || byte_at(at + 2) == 0xa9)) {
    return 3;
  }
  return 0;
}

void append_escaped(std::string* out, std::string_view text, char delimiter) {
  std::size_t at = 0;
  while (at < text.size()) {
    const auto byte = static_cast<unsigned char>(text[at]);
    std::size_t length = 1;
    if (byte == '\\') {
      *out += "\\\\";
    } else if (byte < 0x20 || byte == 0x7f || byte == static_cast<unsigned char>(delimiter)) {
      append_byte_escaped(out, byte);
    } else if (byte < 0x80) {
      out->push_back(text[at]);
    } else if (const std::size_t breaking = line_breaking_utf8(text, at); breaking > 0) {
      for (std::size_t index = 0; index < breaking; index++) {
        append_byte_escaped(out, static_cast<unsigned char>(text[at + index]));
      }
      length = breaking;
    } else if (const std::size_t valid = utf8_length(text, at); valid > 0) {
      out->append(text.substr(at, valid));
      length = valid;
    } else {
      append_byte_escaped(out, byte);
    }
    at += length;
  }
}

void append_text_escaped(std::string* out, std::string_view text) {
  append_escaped(out, text, ' ');
}

}  // namespace tally
