// State::save / State::load: the image round-trips the whole state, and a
// damaged image is an error, never a crash.
#include <doctest.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "projections/state.h"
#include "projections/state_fixture.h"
#include "projections/state_format.h"

namespace tally::proj {
namespace {

std::vector<std::byte> image_of(const State& state) {
  BufferSink sink;
  const Status status = state.save(sink);
  REQUIRE_MESSAGE(status.ok(), status.to_string());
  return sink.bytes;
}

// A source that cannot be read from two places: load() reads it in one
// pass, where a SpanSource lets it load the keys on a second thread.
class OnePassSource final : public StateSource {
 public:
  explicit OnePassSource(std::span<const std::byte> bytes) : inner_(bytes) {}
  Result<std::size_t> read(std::span<std::byte> out) override { return inner_.read(out); }
  std::optional<std::uint64_t> size_bytes() const override { return inner_.size_bytes(); }

 private:
  SpanSource inner_;
};

Result<std::unique_ptr<State>> load_bytes(std::span<const std::byte> bytes, StateOptions options,
                                          bool one_pass, std::uint64_t* digest = nullptr) {
  SpanSource two_places(bytes);
  OnePassSource one_place(bytes);
  StateSource& source = one_pass ? static_cast<StateSource&>(one_place) : two_places;
  return State::load(source, options, digest);
}

// Loads the image both ways; they must agree.
std::unique_ptr<State> load_image(const std::vector<std::byte>& bytes,
                                  StateOptions options = StateOptions{kWindowNs}) {
  std::unique_ptr<State> out;
  for (bool one_pass : {false, true}) {
    CAPTURE(one_pass);
    std::uint64_t digest = 0;
    Result<std::unique_ptr<State>> loaded = load_bytes(bytes, options, one_pass, &digest);
    REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
    CHECK(digest == (*loaded)->digest());  // taken while reading, the same
    if (out != nullptr) CHECK(out->digest() == (*loaded)->digest());
    out = std::move(loaded).value();
  }
  return out;
}

// Everything a caller can observe, compared between two States.
void check_same(const State& a, const State& b, std::int64_t now_ns, const ScriptHolds& holds) {
  CHECK(a.digest() == b.digest());
  CHECK(a.last_seq() == b.last_seq());
  CHECK(a.last_timestamp_ns() == b.last_timestamp_ns());
  StateCounts counts_a = a.counts();
  StateCounts counts_b = b.counts();
  counts_a.memory_bytes = counts_b.memory_bytes = 0;  // capacities may differ
  CHECK(counts_a.balances == counts_b.balances);
  CHECK(counts_a.open_holds == counts_b.open_holds);
  CHECK(counts_a.finalized_holds == counts_b.finalized_holds);
  CHECK(counts_a.keys == counts_b.keys);
  CHECK(counts_a.subjects == counts_b.subjects);
  CHECK(counts_a.items == counts_b.items);
  CHECK(all_balances(a, kStoredOnly) == all_balances(b, kStoredOnly));
  CHECK(all_balances(a, now_ns) == all_balances(b, now_ns));
  for (const char* subject : {"alice", "bob", "carol", "dave", "erin", "frank", "gina"}) {
    CHECK(list_of(a, subject, now_ns) == list_of(b, subject, now_ns));
  }
  for (HoldId id : {holds.partly_committed, holds.released, holds.expired, holds.in_batch,
                    holds.expired_late, holds.long_open}) {
    const std::optional<HoldInfo> hold_a = a.find_hold(id);
    const std::optional<HoldInfo> hold_b = b.find_hold(id);
    REQUIRE(hold_a.has_value() == hold_b.has_value());
    if (!hold_a) continue;
    CHECK(hold_a->subject == hold_b->subject);
    CHECK(hold_a->state == hold_b->state);
    CHECK(hold_a->finalized_at_ns == hold_b->finalized_at_ns);
    CHECK(hold_a->committed_qty == hold_b->committed_qty);
  }
  for (int index = 1; index <= 19; index++) {
    // Appended: GCC 12 warns falsely (-Wrestrict) on "k" + std::string.
    std::string key = "k";
    key += std::to_string(index);
    const KeyRecord* key_a = a.find_key(key);
    const KeyRecord* key_b = b.find_key(key);
    REQUIRE((key_a == nullptr) == (key_b == nullptr));
    if (key_a == nullptr) continue;
    CHECK(key_a->seq == key_b->seq);
    CHECK(key_a->fingerprint == key_b->fingerprint);
    CHECK(key_a->reason == key_b->reason);
    CHECK(key_a->failed_index == key_b->failed_index);
  }
  for (int index = 1; index <= 19; index++) {
    std::string key = "k";
    key += std::to_string(index);
    CHECK(a.hold_of_key(key) == b.hold_of_key(key));
  }
  CHECK(a.next_expiry_ns() == b.next_expiry_ns());
  REQUIRE_OK(b.check_invariants());
}

TEST_CASE("save then load, cut after every event, then both apply the rest alike") {
  const std::vector<Step> steps = script();
  for (std::size_t cut = 0; cut <= steps.size(); cut++) {
    CAPTURE(cut);
    State original(StateOptions{kWindowNs});
    ScriptHolds holds;
    Feed prefix({&original});
    for (std::size_t index = 0; index < cut; index++) REQUIRE_OK(steps[index](prefix, holds));
    std::unique_ptr<State> restored = load_image(image_of(original));
    check_same(original, *restored, prefix.now_ns, holds);
    // The image of the restored State is the same bytes: nothing was lost
    // or reordered, down to name ids and queue order.
    CHECK(image_of(*restored) == image_of(original));
    Feed both({&original, restored.get()});
    both.now_ns = prefix.now_ns;
    for (std::size_t index = cut; index < steps.size(); index++) {
      CAPTURE(index);
      REQUIRE_OK(steps[index](both, holds));
      check_same(original, *restored, both.now_ns, holds);
    }
  }
}

TEST_CASE("an empty state round-trips") {
  State empty(StateOptions{kWindowNs});
  std::unique_ptr<State> restored = load_image(image_of(empty));
  CHECK(restored->digest() == empty.digest());
  CHECK(restored->last_seq() == 0);
}

TEST_CASE("many keys and names cross chunk boundaries and round-trip") {
  State original(StateOptions{0});
  Feed feed({&original});
  for (int index = 0; index < 5000; index++) {
    std::string key = "key-";
    key += std::to_string(index);
    key.append(100, 'k');
    std::string subject = "subject-";
    subject += std::to_string(index % 700);
    std::string item = "item-";
    item += std::to_string(index % 13);
    REQUIRE_OK(feed.one(key, acquire_op(subject, item, 1)));
    feed.now_ns += 1;
  }
  const std::vector<std::byte> image = image_of(original);
  CHECK(image.size() > 2 * kStateChunkBytes);
  std::unique_ptr<State> restored = load_image(image, StateOptions{0});
  CHECK(restored->digest() == original.digest());
  CHECK(image_of(*restored) == image);
}

// A SpanSource that records where load() opened second sources.
class RecordingSource final : public StateSource {
 public:
  explicit RecordingSource(std::span<const std::byte> bytes) : inner_(bytes) {}
  Result<std::size_t> read(std::span<std::byte> out) override { return inner_.read(out); }
  std::optional<std::uint64_t> size_bytes() const override { return inner_.size_bytes(); }
  std::unique_ptr<StateSource> open_at(std::uint64_t offset) const override {
    opened.push_back(offset);
    return inner_.open_at(offset);
  }
  mutable std::vector<std::uint64_t> opened;

 private:
  SpanSource inner_;
};

TEST_CASE("where the source allows it, the keys load from a second source at their section") {
  State original(StateOptions{kWindowNs});
  Feed feed({&original});
  for (int index = 0; index < 300; index++) {
    std::string key = "key-";
    key += std::to_string(index);
    REQUIRE_OK(feed.one(key, acquire_op(index % 2 == 0 ? "alice" : "bob", "gold", 1)));
    feed.now_ns += 1;
  }
  const std::vector<std::byte> image = image_of(original);
  RecordingSource source(image);
  std::uint64_t digest = 0;
  Result<std::unique_ptr<State>> loaded = State::load(source, StateOptions{kWindowNs}, &digest);
  REQUIRE(loaded.ok());
  CHECK(digest == original.digest());
  REQUIRE_FALSE(source.opened.empty());
  // The last source opened is the keys': it starts with their count, and
  // its section runs to the trailer, 4 bytes before the end.
  const std::uint64_t keys_at = source.opened.back();
  REQUIRE(keys_at + 8 <= image.size());
  std::uint64_t count = 0;
  for (int index = 7; index >= 0; index--) {
    count = (count << 8) | std::to_integer<std::uint64_t>(image[keys_at + static_cast<std::size_t>(index)]);
  }
  CHECK(count == 300);
  // By the grammar: header 4+4+8+8+8; subjects u32 + "alice" + "bob" (a
  // length byte each); items u32 + "gold"; 2 balances of 24 bytes; no open
  // and no finalized holds and no long holds' keys (a u64 count each).
  CHECK(keys_at == 32 + (4 + 6 + 4) + (4 + 5) + (8 + 2 * 24) + 8 + 8 + 8);
}

TEST_CASE("loading with a different idempotency window is invalid") {
  State original(StateOptions{kWindowNs});
  const std::vector<std::byte> image = image_of(original);
  SpanSource source(image);
  Result<std::unique_ptr<State>> loaded = State::load(source, StateOptions{kWindowNs + 1});
  CHECK(loaded.code() == ErrorCode::invalid);
  // Unless the check fails: a window read from a damaged image is no window.
  bool checked = false;
  const auto failing_check = [&] {
    checked = true;
    return Status(ErrorCode::corrupt, "payload checksum mismatch");
  };
  SpanSource again(image);
  loaded = State::load(again, StateOptions{kWindowNs + 1}, nullptr, failing_check);
  CHECK(checked);
  CHECK(loaded.code() == ErrorCode::corrupt);
}

// Built from the script so every section of the image has entries.
std::vector<std::byte> scripted_image(std::size_t steps_count) {
  State original(StateOptions{kWindowNs});
  ScriptHolds holds;
  Feed feed({&original});
  const std::vector<Step> steps = script();
  for (std::size_t index = 0; index < steps_count; index++) REQUIRE_OK(steps[index](feed, holds));
  return image_of(original);
}

TEST_CASE("window_from_image loads an image of any window, and the state takes that window") {
  const std::vector<std::byte> image = scripted_image(13);
  const std::unique_ptr<State> expected = load_image(image);
  StateOptions options{kWindowNs + 1};
  options.window_from_image = true;
  SpanSource source(image);
  std::uint64_t digest = 0;
  Result<std::unique_ptr<State>> loaded = State::load(source, options, &digest);
  REQUIRE_OK(loaded.status());
  CHECK((*loaded)->idempotency_window_ns() == kWindowNs);
  CHECK((*loaded)->digest() == expected->digest());
  CHECK(digest == expected->digest());

  // A negative window is no ledger's: the image is corrupt.
  std::vector<std::byte> negative = image;
  negative[kStateWindowOffset + 7] = std::byte{0x80};  // little-endian: the sign byte
  SpanSource negative_source(negative);
  CHECK(State::load(negative_source, options).code() == ErrorCode::corrupt);
}

TEST_CASE("every truncation of an image is corrupt") {
  const std::vector<std::byte> image = scripted_image(13);
  std::vector<std::byte> longer = image;
  longer.push_back(std::byte{0});
  for (bool one_pass : {false, true}) {
    CAPTURE(one_pass);
    for (std::size_t size = 0; size < image.size(); size++) {
      CAPTURE(size);
      CHECK(load_bytes(std::span(image.data(), size), StateOptions{kWindowNs}, one_pass).code() ==
            ErrorCode::corrupt);
    }
    CHECK(load_bytes(longer, StateOptions{kWindowNs}, one_pass).code() == ErrorCode::corrupt);
  }
}

// An image written field by field, for the damage a sound State never
// saves (state_format.h gives the grammar).
class ImageBytes {
 public:
  ImageBytes& u8(std::uint8_t value) { return le(value, 1); }
  ImageBytes& u32(std::uint32_t value) { return le(value, 4); }
  ImageBytes& u64(std::uint64_t value) { return le(value, 8); }
  ImageBytes& name(const std::string& name) {
    u8(static_cast<std::uint8_t>(name.size()));
    for (char c : name) bytes.push_back(static_cast<std::byte>(c));
    return *this;
  }
  ImageBytes& header(std::uint64_t last_seq) {
    return u32(kStateMagic).u32(kStateFormatVersion).u64(last_seq).u64(1000).u64(kWindowNs);
  }
  ImageBytes& names(const std::vector<std::string>& names) {
    u32(static_cast<std::uint32_t>(names.size()));
    for (const std::string& one : names) name(one);
    return *this;
  }
  ImageBytes& balance(std::uint32_t subject, std::uint32_t item, std::uint64_t available,
                      std::uint64_t held) {
    return u32(subject).u32(item).u64(available).u64(held);
  }
  ImageBytes& open_hold(std::uint64_t id, std::uint32_t subject, std::uint32_t item,
                        std::uint64_t qty) {
    return u64(id).u32(subject).u32(item).u64(qty).u64(5000).u8(0).u64(0).u64(0);
  }
  // No finalized holds, long holds' keys or keys, and the trailer.
  ImageBytes& end() { return u64(0).u64(0).u64(0).u32(kStateEndMagic); }

  std::vector<std::byte> bytes;

 private:
  ImageBytes& le(std::uint64_t value, int width) {
    for (int index = 0; index < width; index++) {
      bytes.push_back(static_cast<std::byte>(value >> (8 * index)));
    }
    return *this;
  }
};

TEST_CASE("an image that repeats a name, a balance or a hold, or holds without holds, is corrupt") {
  // The message, the same whether the keys load on a thread of their own
  // or not.
  const auto load_error = [](const ImageBytes& image) {
    std::vector<std::string> messages;
    for (bool one_pass : {false, true}) {
      const Status status = load_bytes(image.bytes, StateOptions{kWindowNs}, one_pass).status();
      CHECK(status.code() == ErrorCode::corrupt);
      messages.push_back(status.message());
    }
    CHECK(messages[0] == messages[1]);
    return messages[0];
  };
  const auto image = [](const std::vector<std::string>& subjects) {
    ImageBytes out;
    out.header(10).names(subjects).names({"gold", "gem"});
    return out;
  };
  SUBCASE("sound, to show the images below are well formed but for their damage") {
    ImageBytes sound = image({"ann", "bob"});
    sound.u64(2).balance(1, 1, 5, 3).balance(2, 2, 1, 0).u64(1).open_hold(7, 1, 1, 3);
    sound.end();
    const std::unique_ptr<State> loaded = load_image(sound.bytes);
    CHECK(loaded->balance("ann", "gold", kStoredOnly) == Balance{5, 3});
    CHECK(loaded->balance("bob", "gem", kStoredOnly) == Balance{1, 0});
    REQUIRE_OK(loaded->check_invariants());
  }
  SUBCASE("a subject named twice") {
    ImageBytes twice = image({"ann", "bob", "ann"});
    twice.u64(0).u64(0).end();
    CHECK(load_error(twice) == "state image: name interned twice");
  }
  SUBCASE("a balance stored twice, with the same or another amount") {
    for (std::uint64_t again : {5, 6}) {
      ImageBytes twice = image({"ann"});
      twice.u64(2).balance(1, 1, 5, 0).balance(1, 1, again, 0).u64(0).end();
      CHECK(load_error(twice) == "state image: balance stored twice");
    }
  }
  SUBCASE("an open hold stored twice") {
    ImageBytes twice = image({"ann"});
    twice.u64(1).balance(1, 1, 0, 6).u64(2).open_hold(7, 1, 1, 3).open_hold(7, 1, 1, 3);
    twice.end();
    CHECK(load_error(twice) == "state image: hold stored twice");
  }
  SUBCASE("held that no open hold accounts for") {
    ImageBytes held = image({"ann"});
    held.u64(1).balance(1, 1, 0, 4).u64(0).end();
    CHECK(load_error(held) == "state image: invariant: held without open holds");
  }
  SUBCASE("held that its open holds do not sum to") {
    ImageBytes held = image({"ann"});
    held.u64(1).balance(1, 1, 0, 4).u64(1).open_hold(7, 1, 1, 3).end();
    CHECK(load_error(held) ==
          "state image: invariant: 'ann' 'gold' held 4 but its open holds sum to 3");
  }
}

TEST_CASE("an image in pieces reads the same from any offset, and loads alike") {
  const std::vector<std::byte> image = scripted_image(13);
  const std::span<const std::byte> whole(image);
  // Pieces of 1, 7, 300 and 4096 bytes, in turn.
  std::vector<std::span<const std::byte>> pieces;
  const std::size_t sizes[] = {1, 7, 300, 4096};
  for (std::size_t at = 0, turn = 0; at < image.size(); turn++) {
    const std::size_t size = std::min(sizes[turn % 4], image.size() - at);
    pieces.push_back(whole.subspan(at, size));
    at += size;
  }
  SpanSource source(pieces);
  REQUIRE(source.size_bytes() == image.size());
  for (std::size_t offset : {std::size_t{0}, std::size_t{1}, std::size_t{8}, std::size_t{308},
                             image.size() / 2, image.size() - 1, image.size(), image.size() + 5}) {
    CAPTURE(offset);
    std::unique_ptr<StateSource> at = source.open_at(offset);
    REQUIRE(at != nullptr);
    std::vector<std::byte> back;
    std::array<std::byte, 333> buffer;
    // Each pass reads at least one byte, or ends.
    for (;;) {
      Result<std::size_t> got = at->read(buffer);
      REQUIRE(got.ok());
      if (*got == 0) break;
      back.insert(back.end(), buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(*got));
    }
    CHECK(back == std::vector<std::byte>(image.begin() + static_cast<std::ptrdiff_t>(std::min(offset, image.size())), image.end()));
  }
  std::uint64_t digest = 0;
  Result<std::unique_ptr<State>> loaded = State::load(source, StateOptions{kWindowNs}, &digest);
  REQUIRE(loaded.ok());
  CHECK(digest == load_image(image)->digest());
}

TEST_CASE("a flipped bit anywhere is an error or a consistent state, never a crash") {
  // The store's checksum catches flips before load; this checks that the
  // loader itself never trusts the bytes.
  // Both ways of loading (one pass, or the keys on a second thread) must
  // hold to that, and agree where both load.
  const std::vector<std::byte> image = scripted_image(13);
  std::size_t errors = 0;
  for (std::size_t offset = 0; offset < image.size(); offset++) {
    for (int bit : {0, 7}) {
      CAPTURE(offset);
      CAPTURE(bit);
      std::vector<std::byte> damaged = image;
      damaged[offset] ^= std::byte{static_cast<unsigned char>(1u << bit)};
      std::optional<std::uint64_t> loaded_digest;
      for (bool one_pass : {false, true}) {
        Result<std::unique_ptr<State>> loaded = load_bytes(damaged, StateOptions{kWindowNs}, one_pass);
        if (!loaded.ok()) {
          errors++;
          continue;
        }
        REQUIRE_OK((*loaded)->check_invariants());
        if (loaded_digest) CHECK(*loaded_digest == (*loaded)->digest());
        loaded_digest = (*loaded)->digest();
      }
    }
  }
  CHECK(errors > 2 * image.size());  // most flips are caught by structure alone
}

TEST_CASE("a check of the bytes runs once, beside the load, and its failure comes first") {
  const std::vector<std::byte> image = scripted_image(13);
  const std::vector<std::byte> truncated(image.begin(), image.end() - 1);
  for (const bool one_pass : {false, true}) {
    CAPTURE(one_pass);
    SpanSource two_places(image);
    OnePassSource one_place(image);
    StateSource& source = one_pass ? static_cast<StateSource&>(one_place) : two_places;
    std::atomic<int> checks = 0;
    Result<std::unique_ptr<State>> loaded =
        State::load(source, StateOptions{kWindowNs}, nullptr, [&] {
          checks++;
          return Status();
        });
    REQUIRE_OK(loaded.status());
    CHECK(checks == 1);

    // A failed check is the answer, even for an image the load refuses.
    for (const std::vector<std::byte>* bytes : std::array{&image, &truncated}) {
      SpanSource again_two(*bytes);
      OnePassSource again_one(*bytes);
      StateSource& again = one_pass ? static_cast<StateSource&>(again_one) : again_two;
      loaded = State::load(again, StateOptions{kWindowNs}, nullptr,
                           [] { return Status(ErrorCode::corrupt, "checksum mismatch"); });
      CHECK(loaded.code() == ErrorCode::corrupt);
      CHECK(loaded.status().message() == "checksum mismatch");
    }
  }
}

class FailingSource final : public StateSource {
 public:
  Result<std::size_t> read(std::span<std::byte>) override {
    return Status(ErrorCode::io_error, "disk says no");
  }
};

class FailingSink final : public StateSink {
 public:
  Status write(std::span<const std::byte>) override {
    calls++;
    return Status(ErrorCode::io_error, "disk full");
  }
  int calls = 0;
};

TEST_CASE("source and sink errors come back as they are") {
  FailingSource source;
  CHECK(State::load(source, StateOptions{}).code() == ErrorCode::io_error);
  State state;
  FailingSink sink;
  CHECK(state.save(sink).code() == ErrorCode::io_error);
  CHECK(sink.calls == 1);
}

}  // namespace
}  // namespace tally::proj
