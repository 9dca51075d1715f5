// A mutation fuzzer for the places tally decodes untrusted bytes: the
// binary protocol and its framing, the JSON parser and the HTTP mutation
// bodies, event payloads, log segments and state images, and the files and
// times a person hands the tools. Each must answer a clean Status whatever
// the bytes: never crash, hang, leak or hit undefined behaviour (the
// address+undefined build checks the last two).
//
//   fuzz [--target NAME|all] [--iterations N] [--seed S|random] [--verbose]
//
// --iterations is per target; the log and http targets, which touch the
// disk and the network, run a tenth of it (at least 20). The default
// suite runs a short campaign in both builds; `--suite soak --setup soak`
// a long one with a fresh seed each run (tests/meson.build): each line
// names its seed. A failure prints the target, iteration and input (hex,
// also written to fuzz-failure-<target>.bin) and the command that
// reproduces it, and aborts.
//
// The fixtures it reuses (projections/state_fixture.h, engine/
// server_fixture.h) check with doctest macros, so this is doctest's main
// too: a failed fixture check outside a test case aborts with its message.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <string_view>

#include "tests/fuzz.h"

namespace tally::fuzz {

namespace {

constexpr std::size_t kHexDumpBytesMax = 4096;

void hex_dump(std::span<const std::byte> input) {
  const std::size_t shown = std::min(input.size(), kHexDumpBytesMax);
  for (std::size_t offset = 0; offset < shown; offset += 16) {
    std::fprintf(stderr, "%06zx ", offset);
    for (std::size_t index = offset; index < offset + 16 && index < shown; index++) {
      std::fprintf(stderr, " %02x", std::to_integer<unsigned>(input[index]));
    }
    std::fprintf(stderr, "\n");
  }
  if (shown < input.size()) std::fprintf(stderr, "... (%zu bytes in all)\n", input.size());
}

// Interesting values for a byte: the edges of the signed and unsigned ranges.
constexpr std::uint8_t kInterestingBytes[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x41};
// And for wider fields: lengths and counts set large, small, or to a sign edge.
constexpr std::uint64_t kInterestingWords[] = {
    0,          1,          2,          7,          8,          0x7f,       0x80,
    0xff,       0x100,      0xffff,     0x10000,    0x7fffffff, 0x80000000, 0xffffffff,
    0x100000000ull,         0x7fffffffffffffffull,  0x8000000000000000ull,
    0xffffffffffffffffull,  0xfffffffffffffffeull,  1ull << 20, (1ull << 29) - 1};

void set_word(Bytes& bytes, std::size_t offset, std::uint64_t value, std::size_t width) {
  for (std::size_t index = 0; index < width && offset + index < bytes.size(); index++) {
    bytes[offset + index] = static_cast<std::byte>(value >> (8 * index));
  }
}

// An offset in [keep, size): where a mutation may write. Aligned to `align`
// half the time, since the formats here are word-structured.
std::size_t pick_offset(const Bytes& bytes, std::size_t keep, std::size_t align, Rng& rng) {
  std::size_t offset = keep + rng.below(bytes.size() - keep);
  if (align > 1 && rng.one_in(2)) offset -= offset % align;
  return std::max(offset, keep);
}

// One mutation that keeps the size.
void mutate_in_place(Bytes& bytes, std::size_t keep, Rng& rng) {
  if (bytes.size() <= keep) return;
  const std::size_t offset = pick_offset(bytes, keep, 8, rng);
  switch (rng.below(6)) {
    case 0: bytes[offset] ^= static_cast<std::byte>(1u << rng.below(8)); return;
    case 1:
      bytes[offset] =
          static_cast<std::byte>(kInterestingBytes[rng.below(std::size(kInterestingBytes))]);
      return;
    case 2: bytes[offset] = static_cast<std::byte>(rng.next()); return;
    case 3: {
      const auto delta = static_cast<std::uint8_t>(1 + rng.below(16));
      const auto old = std::to_integer<std::uint8_t>(bytes[offset]);
      bytes[offset] = static_cast<std::byte>(rng.one_in(2) ? old + delta : old - delta);
      return;
    }
    case 4: {
      static constexpr std::size_t kWidths[] = {2, 4, 8};
      const std::size_t width = kWidths[rng.below(3)];
      const std::size_t at = std::max(pick_offset(bytes, keep, width, rng), keep);
      set_word(bytes, at, kInterestingWords[rng.below(std::size(kInterestingWords))], width);
      return;
    }
    default: {
      // A whole random word: a Cap'n Proto pointer, a length, a count.
      const std::size_t at = std::max(pick_offset(bytes, keep, 4, rng), keep);
      set_word(bytes, at, rng.next(), 1 + rng.below(8));
      return;
    }
  }
}

// One mutation that may change the size.
void mutate_resize(Bytes& bytes, std::span<const std::byte> other, const MutateOptions& options,
                   Rng& rng) {
  const std::size_t keep = std::min(options.keep_prefix, bytes.size());
  switch (rng.below(5)) {
    case 0:
      if (options.may_truncate && !bytes.empty()) bytes.resize(rng.below(bytes.size() + 1));
      return;
    case 1: {
      const std::size_t extra = 1 + rng.below(rng.one_in(4) ? 256 : 16);
      for (std::size_t index = 0; index < extra; index++) {
        bytes.push_back(rng.one_in(2) ? std::byte{0} : static_cast<std::byte>(rng.next()));
      }
      return;
    }
    case 2: {  // a span duplicated
      if (bytes.size() <= keep) return;
      const std::size_t from = keep + rng.below(bytes.size() - keep);
      const std::size_t length = 1 + rng.below(std::min<std::size_t>(bytes.size() - from, 64));
      const std::size_t to = keep + rng.below(bytes.size() - keep + 1);
      const Bytes span(bytes.begin() + static_cast<std::ptrdiff_t>(from),
                       bytes.begin() + static_cast<std::ptrdiff_t>(from + length));
      bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(to), span.begin(), span.end());
      return;
    }
    case 3: {  // a span deleted
      if (bytes.size() <= keep) return;
      const std::size_t from = keep + rng.below(bytes.size() - keep);
      const std::size_t length = 1 + rng.below(std::min<std::size_t>(bytes.size() - from, 64));
      bytes.erase(bytes.begin() + static_cast<std::ptrdiff_t>(from),
                  bytes.begin() + static_cast<std::ptrdiff_t>(from + length));
      return;
    }
    default: {  // spliced: a prefix of this one, a suffix of the other
      if (other.empty()) return;
      const std::size_t cut = keep + rng.below(bytes.size() - keep + 1);
      const std::size_t other_cut = rng.below(other.size());
      bytes.resize(cut);
      bytes.insert(bytes.end(), other.begin() + static_cast<std::ptrdiff_t>(other_cut),
                   other.end());
      return;
    }
  }
}

}  // namespace

Bytes mutate(std::span<const std::byte> input, std::span<const std::byte> other, Rng& rng,
             const MutateOptions& options) {
  Bytes bytes(input.begin(), input.end());
  const std::size_t rounds = 1 + rng.below(rng.one_in(4) ? 8 : 3);
  for (std::size_t round = 0; round < rounds; round++) {
    if (options.may_resize && rng.one_in(4)) {
      mutate_resize(bytes, other, options, rng);
    } else {
      mutate_in_place(bytes, std::min(options.keep_prefix, bytes.size()), rng);
    }
  }
  if (bytes.size() > options.limit_bytes) bytes.resize(options.limit_bytes);
  return bytes;
}

std::vector<std::uint64_t> to_words(std::span<const std::byte> bytes) {
  std::vector<std::uint64_t> words((bytes.size() + 7) / 8, 0);
  if (!bytes.empty()) std::memcpy(words.data(), bytes.data(), bytes.size());
  return words;
}

Bytes to_bytes(std::string_view text) {
  const auto* data = reinterpret_cast<const std::byte*>(text.data());
  return Bytes(data, data + text.size());
}

std::string_view as_text(std::span<const std::byte> bytes) {
  return std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void fail(const Context& context, std::string_view what, std::span<const std::byte> input) {
  std::fprintf(stderr, "\nFUZZ FAILURE target=%s seed=%llu iteration=%llu\n  %.*s\n",
               context.target.c_str(), static_cast<unsigned long long>(context.seed),
               static_cast<unsigned long long>(context.iteration),
               static_cast<int>(what.size()), what.data());
  std::fprintf(stderr, "input (%zu bytes):\n", input.size());
  hex_dump(input);
  const std::string path = "fuzz-failure-" + context.target + ".bin";
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(input.data()),
            static_cast<std::streamsize>(input.size()));
  std::fprintf(stderr, "written to %s\nreproduce: fuzz --target %s --seed %llu --iterations %llu\n",
               path.c_str(), context.target.c_str(),
               static_cast<unsigned long long>(context.seed),
               static_cast<unsigned long long>(context.iterations_flag));
  std::fflush(stderr);
  std::abort();
}

}  // namespace tally::fuzz

namespace {

using tally::fuzz::Context;

struct Target {
  const char* name;
  void (*run)(Context&);
  std::uint64_t divisor;  // runs iterations / divisor: the costly ones run fewer
};

constexpr Target kTargets[] = {
    {"wire", tally::fuzz::fuzz_wire, 1},     {"framing", tally::fuzz::fuzz_framing, 1},
    {"json", tally::fuzz::fuzz_json, 1},     {"event", tally::fuzz::fuzz_event, 1},
    {"state", tally::fuzz::fuzz_state, 2},   {"log", tally::fuzz::fuzz_log, 10},
    {"http", tally::fuzz::fuzz_http, 10},    {"text", tally::fuzz::fuzz_text, 1},
};

int usage() {
  std::fprintf(stderr,
               "usage: fuzz [--target NAME|all] [--iterations N] [--seed S|random] [--verbose]\n"
               "targets:");
  for (const Target& target : kTargets) std::fprintf(stderr, " %s", target.name);
  std::fprintf(stderr, "\n");
  return 2;
}

bool parse_number(const char* text, std::uint64_t* out) {
  char* end = nullptr;
  *out = std::strtoull(text, &end, 0);
  return end != text && *end == '\0';
}

void on_doctest_failure(const doctest::AssertData& data) {
  std::fprintf(stderr, "fixture check failed: %s:%d: %s\n", data.m_file, data.m_line,
               data.m_expr);
  std::abort();
}

}  // namespace

int main(int argc, char** argv) {
  doctest::Context doctest_context;
  doctest_context.setAsDefaultForAssertsOutOfTestCases();
  doctest_context.setAssertHandler(on_doctest_failure);
  std::string only = "all";
  std::uint64_t iterations = 1000;
  std::uint64_t seed = 0x7a11f022;
  bool verbose = false;
  for (int index = 1; index < argc; index++) {
    const std::string_view arg = argv[index];
    const bool has_value = index + 1 < argc;
    if (arg == "--target" && has_value) {
      only = argv[++index];
    } else if (arg == "--iterations" && has_value) {
      if (!parse_number(argv[++index], &iterations)) return usage();
    } else if (arg == "--seed" && has_value) {
      const std::string_view value = argv[++index];
      if (value == "random") {
        seed = std::random_device{}();
      } else if (!parse_number(value.data(), &seed)) {
        return usage();
      }
    } else if (arg == "--verbose") {
      verbose = true;
    } else {
      return usage();
    }
  }
  bool ran = false;
  for (const Target& target : kTargets) {
    if (only != "all" && only != target.name) continue;
    Context context;
    context.target = target.name;
    context.seed = seed;
    context.iterations = std::max<std::uint64_t>(iterations / target.divisor,
                                                 std::min<std::uint64_t>(iterations, 20));
    context.iterations_flag = iterations;
    context.verbose = verbose;
    std::printf("fuzz %-8s %8llu iterations, seed %llu ... ", target.name,
                static_cast<unsigned long long>(context.iterations),
                static_cast<unsigned long long>(seed));
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    target.run(context);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    std::printf("ok (%.1f s)\n", elapsed.count());
    std::fflush(stdout);
    ran = true;
  }
  return ran ? 0 : usage();
}
