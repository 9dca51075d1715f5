// Fuzz target of the state image (projections/state_format.h): State::load
// on mutated images that State::save wrote for states built by applying
// events (the fixtures' script of every kind of event, and random streams
// with holds and keys). Loads through a SpanSource whole (two threads), in
// random pieces, and in one pass. A load must be ok or corrupt (invalid
// for a window the options do not match); a state it accepts must be
// consistent, read, save and load again to the same digest, and apply the
// next event.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "projections/state.h"
#include "projections/state_format.h"
#include "projections/stream_fixture.h"
#include "tests/fuzz.h"

namespace tally::fuzz {

namespace {

struct ImageSeed {
  Bytes image;
  proj::StateOptions options;
};

Bytes image_of(const proj::State& state) {
  proj::BufferSink sink;
  TALLY_ASSERT(state.save(sink).ok());
  return sink.bytes;
}

ImageSeed script_seed() {
  proj::StateOptions options{proj::kWindowNs};
  proj::State state(options);
  proj::Feed feed({&state});
  proj::ScriptHolds holds;
  for (const proj::Step& step : proj::script()) TALLY_ASSERT(step(feed, holds).ok());
  return ImageSeed{image_of(state), options};
}

// `steps` commands of a random stream: holds open and finalized, keys,
// batches, rejections.
ImageSeed stream_seed(std::uint64_t seed, int steps, std::int64_t window_ns) {
  proj::StateOptions options{window_ns};
  proj::State state(options);
  proj::RandomStream stream(seed, window_ns, {&state});
  for (int step = 0; step < steps; step++) stream.step(state);
  return ImageSeed{image_of(state), options};
}

std::vector<ImageSeed> image_seeds() {
  std::vector<ImageSeed> seeds;
  seeds.push_back(script_seed());
  seeds.push_back(stream_seed(7, 40, proj::kWindowNs));
  seeds.push_back(stream_seed(11, 60, 0));  // remembers every key
  seeds.push_back(stream_seed(13, 200, 5 * proj::kWindowNs));  // more than a load batch
  proj::StateOptions empty_options{proj::kWindowNs};
  seeds.push_back(ImageSeed{image_of(proj::State(empty_options)), empty_options});
  return seeds;
}

// A source that cannot be read from two places: load() reads it in one pass.
class OnePassSource final : public proj::StateSource {
 public:
  explicit OnePassSource(std::span<const std::byte> bytes) : inner_(bytes) {}
  Result<std::size_t> read(std::span<std::byte> out) override { return inner_.read(out); }
  std::optional<std::uint64_t> size_bytes() const override { return inner_.size_bytes(); }

 private:
  proj::SpanSource inner_;
};

Result<std::unique_ptr<proj::State>> load(std::span<const std::byte> image,
                                          const proj::StateOptions& options, int how,
                                          std::uint64_t* digest, Rng& rng) {
  if (how == 0) {
    proj::SpanSource source(image);
    return proj::State::load(source, options, digest);
  }
  if (how == 1) {
    OnePassSource source(image);
    return proj::State::load(source, options, digest);
  }
  // Pieces cut at random points, as a snapshot's chunks are.
  std::vector<std::span<const std::byte>> pieces;
  std::size_t at = 0;
  while (at < image.size()) {
    const std::size_t size = std::min<std::size_t>(image.size() - at, 1 + rng.below(64));
    pieces.push_back(image.subspan(at, size));
    at += size;
  }
  proj::SpanSource source(pieces);
  return proj::State::load(source, options, digest);
}

// Reads everything a loaded state offers; none of it may crash.
void read_all(const proj::State& state) {
  std::uint64_t visited = 0;
  state.for_each_balance(proj::kStoredOnly, [&](std::string_view subject, std::string_view,
                                                proj::Balance) {
    visited++;
    state.list(subject, INT64_MAX, [](std::string_view, proj::Balance) {});
  });
  (void)state.counts();
  (void)state.next_expiry_ns();
  if (const auto due = state.next_due_hold(INT64_MAX)) (void)state.find_hold(due->id);
  (void)state.find_key("key-5");
  (void)state.balance("alice", "gold", state.last_timestamp_ns());
}

// The event after the image: an acquire on a pair of its own.
Status apply_next(proj::State& state) {
  log::Op op;
  op.type = log::OpType::acquire;
  op.subject = "fuzz-subject";
  op.item = "fuzz-item";
  op.qty = 1;
  log::Event event;
  event.seq = state.last_seq() + 1;
  event.timestamp_ns = std::max<std::int64_t>(state.last_timestamp_ns(), 0);
  event.key = "fuzz-key-after-load";
  event.ops = std::span<const log::Op>(&op, 1);
  return state.apply(event);
}

// What a state the loader accepted must satisfy. Counts the accepted
// images that save differently (not canonical, but consistent).
void check_loaded(Context& context, const Bytes& input, proj::State& state, std::uint64_t digest,
                  const proj::StateOptions& options, std::uint64_t* non_canonical) {
  const Status invariants = state.check_invariants();
  if (!invariants.ok()) {
    fail(context, "state: loaded but inconsistent: " + invariants.message(), input);
  }
  if (digest != state.digest()) {
    fail(context, "state: the digest taken while loading differs", input);
  }
  read_all(state);
  const Bytes saved = image_of(state);
  if (saved != input) ++*non_canonical;
  proj::SpanSource source(saved);
  std::uint64_t again_digest = 0;
  auto again = proj::State::load(source, options, &again_digest);
  if (!again) {
    fail(context, "state: a re-saved image does not load: " + again.status().message(), input);
  }
  if (again_digest != digest) fail(context, "state: re-saved image has another digest", input);
  if (image_of(**again) != saved) fail(context, "state: save(load(save)) differs", input);
  const Status applied = apply_next(state);
  if (!applied.ok()) {
    fail(context, "state: the next event does not apply: " + applied.message(), input);
  }
  const Status after = state.check_invariants();
  if (!after.ok()) {
    fail(context, "state: inconsistent after the next event: " + after.message(), input);
  }
}

}  // namespace

void fuzz_state(Context& context) {
  const std::vector<ImageSeed> seeds = image_seeds();
  Rng rng(context.seed ^ 0x57a7e);
  std::uint64_t accepted = 0;
  std::uint64_t non_canonical = 0;
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    const ImageSeed& seed = seeds[rng.below(seeds.size())];
    const ImageSeed& other = seeds[rng.below(seeds.size())];
    MutateOptions options;
    options.limit_bytes = seed.image.size() + 4096;
    const Bytes input = context.iteration < seeds.size()
                            ? seeds[context.iteration].image
                            : mutate(seed.image, other.image, rng, options);
    const proj::StateOptions& state_options =
        context.iteration < seeds.size() ? seeds[context.iteration].options : seed.options;
    std::uint64_t digest = 0;
    auto loaded = load(input, state_options, static_cast<int>(rng.below(3)), &digest, rng);
    if (!loaded) {
      if (loaded.code() != ErrorCode::corrupt && loaded.code() != ErrorCode::invalid) {
        fail(context, "state: neither loaded nor corrupt: " + loaded.status().to_string(), input);
      }
      if (context.iteration < seeds.size()) fail(context, "state: a seed does not load", input);
      continue;
    }
    accepted++;
    check_loaded(context, input, **loaded, digest, state_options, &non_canonical);
  }
  if (context.verbose) {
    std::printf("(%llu loaded, %llu of them saved differently) ",
                static_cast<unsigned long long>(accepted),
                static_cast<unsigned long long>(non_canonical));
  }
}

}  // namespace tally::fuzz
