#include "log/text.h"

#include <doctest.h>

#include <string>
#include <string_view>

#include "log/status.h"

namespace tally {
namespace {

std::string text_escaped(std::string_view text) {
  std::string out;
  append_text_escaped(&out, text);
  return out;
}

TEST_CASE("text escaping keeps one field per word") {
  CHECK(text_escaped("a b\\c\n\xc3\xbc") == "a\\x20b\\\\c\\x0a\xc3\xbc");
}

TEST_CASE("text escaping keeps one line where readers break at NEL, C1 controls and U+2028/9") {
  // NEL, another C1 control, LINE and PARAGRAPH SEPARATOR; then characters
  // that share their lead bytes but are none of them (U+00A0, U+2027, U+202A).
  CHECK(text_escaped("a\xc2\x85" "b\xc2\x9f" "c\xe2\x80\xa8" "d\xe2\x80\xa9" "e") ==
        "a\\xc2\\x85b\\xc2\\x9fc\\xe2\\x80\\xa8d\\xe2\\x80\\xa9e");
  CHECK(text_escaped("\xc2\xa0\xe2\x80\xa7\xe2\x80\xaa\xf0\x9f\x99\x82") ==
        "\xc2\xa0\xe2\x80\xa7\xe2\x80\xaa\xf0\x9f\x99\x82");
}

TEST_CASE("text escaping writes bytes that are not UTF-8 as \\xNN: an 8-bit C1 control") {
  // A lone NEL and CSI, a lead byte cut short, an overlong '/', a surrogate.
  CHECK(text_escaped("a\x85" "b\x9b" "c\xc2" "\xc0\xaf" "\xed\xa0\x80") ==
        "a\\x85b\\x9bc\\xc2\\xc0\\xaf\\xed\\xa0\\x80");
}

TEST_CASE("a quoted name stays one line, its quotes escaped") {
  CHECK(quoted("order 7") == "'order 7'");
  CHECK(quoted("evil'\n\x1b[31m") == "'evil\\x27\\x0a\\x1b[31m'");
  CHECK(quoted("\xc3\xbc\\") == "'\xc3\xbc\\\\'");
}

}  // namespace
}  // namespace tally
