// The mutation fuzzer's shared parts (tests/fuzz.cc is its main): a
// deterministic random source, the mutations, and how a target reports a
// failure. Each target lives in its own tests/fuzz_*.cc and registers
// itself in tests/fuzz.cc's table.
//
// A target is handed a seed and an iteration count; the same seed gives the
// same inputs, so a failure reproduces with --target, --seed and
// --iterations. A target never throws: every check that fails goes through
// fail(), which prints the target, the iteration, the input in hex (and
// writes it to a file) and aborts, so that the sanitizers' and the test
// runner's reports name it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "projections/flat_table.h"  // mix64

namespace tally::fuzz {

using Bytes = std::vector<std::byte>;

// SplitMix64 (a Weyl sequence through proj::mix64): small, fast, and the
// same sequence on every platform (unlike the standard distributions).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() { return proj::mix64(state_ += 0x9e3779b97f4a7c15ull); }
  // Uniform enough in [0, bound); bound > 0.
  std::uint64_t below(std::uint64_t bound) { return next() % bound; }
  bool one_in(std::uint64_t n) { return below(n) == 0; }

 private:
  std::uint64_t state_;
};

// What a target runs under. `iteration` is kept current by the target so
// that fail() can name it.
struct Context {
  std::string target;
  std::uint64_t seed = 0;
  std::uint64_t iterations = 0;  // this target's: --iterations / its divisor
  std::uint64_t iterations_flag = 0;  // --iterations as given, for the reproduce line
  std::uint64_t iteration = 0;
  bool verbose = false;
};

// Reports a failed check on `input` and aborts. Never returns.
[[noreturn]] void fail(const Context& context, std::string_view what,
                       std::span<const std::byte> input);

// Mutations of one input. `limit_bytes` bounds the result's size. Bytes
// before `keep_prefix` are left alone (a segment header, say), except by
// truncation when `may_truncate`.
struct MutateOptions {
  std::size_t limit_bytes = 1 << 16;
  std::size_t keep_prefix = 0;
  bool may_truncate = true;
  bool may_resize = true;  // false: same size out as in (a file mutated in place)
};

// Applies one to four stacked mutations: bit flips, bytes set to 0, 0xff,
// 0x7f, 0x80 and such, small additions, 16/32/64-bit words set to
// interesting values (length fields set large), truncation, extension with
// random bytes, spans duplicated or deleted, and a splice with `other`
// (another seed). Returns the mutated copy.
Bytes mutate(std::span<const std::byte> input, std::span<const std::byte> other, Rng& rng,
             const MutateOptions& options = {});

// Copies bytes into 8-byte aligned words, zero-padding the last one.
std::vector<std::uint64_t> to_words(std::span<const std::byte> bytes);
Bytes to_bytes(std::string_view text);
std::string_view as_text(std::span<const std::byte> bytes);

// The targets (tests/fuzz_*.cc).
void fuzz_wire(Context& context);      // wire::decode_request, decode_response
void fuzz_framing(Context& context);   // wire::FrameReader, table_bytes, frame_bytes
void fuzz_json(Context& context);      // json::parse and its integer readers
void fuzz_http(Context& context);      // every mutation route's body, on a live server
void fuzz_event(Context& context);     // log::EventDecoder
void fuzz_log(Context& context);       // LogReader and LogTail over a mutated segment
void fuzz_state(Context& context);     // proj::State::load
void fuzz_text(Context& context);      // workload CSV, expect files and times

}  // namespace tally::fuzz
