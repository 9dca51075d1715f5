#include "engine/json.h"

#include <charconv>

#include "log/text.h"

namespace tally::json {

namespace {

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Status parse_value(Value* out, int depth) {
    if (depth > kDepthMax) return error("nested too deeply");
    skip_space();
    if (at_end()) return error("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return parse_object(out, depth);
    if (c == '[') return parse_array(out, depth);
    if (c == '"') {
      out->type = Value::Type::string;
      return parse_string(&out->text);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(out);
    if (consume_word("true")) {
      out->type = Value::Type::boolean;
      out->boolean = true;
      return Status();
    }
    if (consume_word("false")) {
      out->type = Value::Type::boolean;
      return Status();
    }
    if (consume_word("null")) return Status();
    return error("unexpected character");
  }

  Status finish() {
    skip_space();
    return at_end() ? Status() : error("trailing characters");
  }

 private:
  bool at_end() const { return pos_ >= text_.size(); }
  void skip_space() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                         text_[pos_] == '\r')) {
      pos_++;
    }
  }
  bool consume_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  Status error(std::string_view what) const {
    return Status(ErrorCode::invalid,
                  "malformed JSON at byte " + std::to_string(pos_) + ": " + std::string(what));
  }

  Status parse_object(Value* out, int depth) {
    out->type = Value::Type::object;
    pos_++;  // '{'
    skip_space();
    if (!at_end() && text_[pos_] == '}') {
      pos_++;
      return Status();
    }
    while (true) {
      if (out->members.size() >= kMembersMax) return error("too many members");
      skip_space();
      if (at_end() || text_[pos_] != '"') return error("expected a member name");
      std::pair<std::string, Value> member;
      TALLY_TRY(parse_string(&member.first));
      // RFC 8259 leaves the meaning of a repeated name open (parsers keep
      // the first, the last, or both); a ledger request must not be read
      // one way here and another way by whoever wrote it.
      for (const auto& seen : out->members) {
        if (seen.first == member.first) return error("duplicate member name");
      }
      skip_space();
      if (at_end() || text_[pos_] != ':') return error("expected ':'");
      pos_++;
      TALLY_TRY(parse_value(&member.second, depth + 1));
      out->members.push_back(std::move(member));
      skip_space();
      if (at_end()) return error("unterminated object");
      if (text_[pos_++] == '}') return Status();
      if (text_[pos_ - 1] != ',') return error("expected ',' or '}'");
    }
  }

  Status parse_array(Value* out, int depth) {
    out->type = Value::Type::array;
    pos_++;  // '['
    skip_space();
    if (!at_end() && text_[pos_] == ']') {
      pos_++;
      return Status();
    }
    Value dropped;
    while (true) {
      Value* item = &dropped;
      if (out->items.size() < kItemsMax) {
        item = &out->items.emplace_back();
      } else {
        dropped = Value();
        out->items_dropped++;
      }
      TALLY_TRY(parse_value(item, depth + 1));
      skip_space();
      if (at_end()) return error("unterminated array");
      if (text_[pos_++] == ']') return Status();
      if (text_[pos_ - 1] != ',') return error("expected ',' or ']'");
    }
  }

  // RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. A leading zero
  // (01) is not JSON: some readers take it as octal.
  Status parse_number(Value* out) {
    out->type = Value::Type::number;
    const std::size_t start = pos_;
    consume_char('-');
    if (consume_char('0')) {
      if (digit_at_pos()) return error("leading zero in a number");
    } else if (!consume_digits()) {
      return error("expected a digit");
    }
    if (consume_char('.') && !consume_digits()) return error("expected a digit after '.'");
    if (consume_char('e') || consume_char('E')) {
      if (!consume_char('+')) consume_char('-');
      if (!consume_digits()) return error("expected a digit in the exponent");
    }
    if (pos_ - start > kNumberBytesMax) return error("number too long");
    out->text = std::string(text_.substr(start, pos_ - start));
    return Status();
  }

  bool digit_at_pos() const { return !at_end() && text_[pos_] >= '0' && text_[pos_] <= '9'; }
  bool consume_char(char c) {
    if (at_end() || text_[pos_] != c) return false;
    pos_++;
    return true;
  }
  // One or more digits; false when there is none.
  bool consume_digits() {
    const std::size_t start = pos_;
    while (digit_at_pos()) pos_++;
    return pos_ > start;
  }

  Status parse_hex4(std::uint32_t* out) {
    if (text_.size() - pos_ < 4) return error("short \\u escape");
    const auto [end, ec] = std::from_chars(text_.data() + pos_, text_.data() + pos_ + 4, *out, 16);
    if (ec != std::errc() || end != text_.data() + pos_ + 4) return error("bad \\u escape");
    pos_ += 4;
    return Status();
  }

  // After the 'u' of a \u escape: one code point, a surrogate pair joined.
  Status parse_unicode_escape(std::string* out) {
    std::uint32_t code = 0;
    TALLY_TRY(parse_hex4(&code));
    if (code >= 0xD800 && code <= 0xDBFF) {
      if (!consume_word("\\u")) return error("unpaired surrogate");
      std::uint32_t low = 0;
      TALLY_TRY(parse_hex4(&low));
      if (low < 0xDC00 || low > 0xDFFF) return error("unpaired surrogate");
      code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
    } else if (code >= 0xDC00 && code <= 0xDFFF) {
      return error("unpaired surrogate");
    }
    append_utf8(out, code);
    return Status();
  }

  static void append_utf8(std::string* out, std::uint32_t code) {
    if (code < 0x80) {
      out->push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (code >> 6)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (code >> 12)));
      out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (code >> 18)));
      out->push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }

  Status parse_string(std::string* out) {
    pos_++;  // '"'
    while (!at_end()) {
      const char c = text_[pos_++];
      if (c == '"') return Status();
      if (static_cast<unsigned char>(c) < 0x20) return error("control character in string");
      if (static_cast<unsigned char>(c) >= 0x80) {
        // RFC 8259 text is UTF-8: a stray byte, an overlong form or an
        // encoded surrogate is malformed, as "\ud800" is.
        const std::size_t length = utf8_length(text_, pos_ - 1);
        if (length == 0) return error("string is not valid UTF-8");
        out->append(text_.substr(pos_ - 1, length));
        pos_ += length - 1;
        continue;
      }
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (at_end()) break;
      const char escaped = text_[pos_++];
      switch (escaped) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': TALLY_TRY(parse_unicode_escape(out)); break;
        default: return error("bad escape");
      }
    }
    return error("unterminated string");
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

}  // namespace

const Value* Value::find(std::string_view key) const {
  for (const auto& [name, value] : members) {
    if (name == key) return &value;
  }
  return nullptr;
}

Result<Value> parse(std::string_view text) {
  Parser parser(text);
  Value value;
  TALLY_TRY(parser.parse_value(&value, 0));
  TALLY_TRY(parser.finish());
  return value;
}

bool to_int64(const Value& value, std::int64_t* out) {
  if (value.type != Value::Type::number) return false;
  const char* end = value.text.data() + value.text.size();
  const auto [ptr, ec] = std::from_chars(value.text.data(), end, *out);
  return ec == std::errc() && ptr == end;
}

bool to_uint64(const Value& value, std::uint64_t* out) {
  if (value.type != Value::Type::number) return false;
  const char* end = value.text.data() + value.text.size();
  const auto [ptr, ec] = std::from_chars(value.text.data(), end, *out);
  return ec == std::errc() && ptr == end;
}

void append_string(std::string* out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  const auto escape_u00 = [out](unsigned char code) {
    *out += "\\u00";
    out->push_back(kHex[code >> 4]);
    out->push_back(kHex[code & 0xF]);
  };
  out->push_back('"');
  std::size_t pos = 0;
  while (pos < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[pos]);
    std::size_t length = 1;
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
    } else if (c == '\n') {
      *out += "\\n";
    } else if (c == '\r') {
      *out += "\\r";
    } else if (c == '\t') {
      *out += "\\t";
    } else if (c >= 0x20 && c < 0x7F) {
      out->push_back(static_cast<char>(c));
    } else if (c < 0x80) {
      escape_u00(c);
    } else if (const std::size_t breaking = line_breaking_utf8(text, pos); breaking == 2) {
      // U+0080..U+009F: the code point is the second byte.
      escape_u00(static_cast<unsigned char>(text[pos + 1]));
      length = 2;
    } else if (breaking == 3) {
      *out += text[pos + 2] == '\xa8' ? "\\u2028" : "\\u2029";
      length = 3;
    } else if (const std::size_t valid = utf8_length(text, pos); valid > 0) {
      out->append(text.substr(pos, valid));
      length = valid;
    } else {
      escape_u00(c);  // not UTF-8: the byte, read as Latin-1
    }
    pos += length;
  }
  out->push_back('"');
}

}  // namespace tally::json
