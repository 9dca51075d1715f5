// Fuzz targets of the log: the event payload decoder (log::EventDecoder) on
// mutated payloads, answering as Cap'n Proto's reader does, with a round
// trip of whatever decodes; and LogReader and
// LogTail over a small log whose segment files are mutated in place
// (mostly after the header, as damage on disk would be). The reader must
// return records or a corrupt Status; a record it returns must be the one
// written (unless the fuzzer forged its checksum), and a log it accepts
// must take a writer and read back with one record more.
#include <algorithm>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "log/event.h"
#include "log/file.h"
#include "log/format.h"
#include "log/reader.h"
#include "log/tail.h"
#include "log/writer.h"
#include "tests/fuzz.h"
#include "tests/testing.h"

namespace tally::fuzz {

namespace {

using log::Event;
using log::Op;
using log::OpType;
using log::Reason;

// ---- event seeds -------------------------------------------------------------

Op make_op(OpType type, std::uint64_t hold = 0) {
  Op op;
  op.type = type;
  op.subject = "alice";
  op.item = "gold";
  op.qty = 7;
  if (type == OpType::transfer) op.to = "bob";
  if (type == OpType::hold) op.ttl_ns = 5'000'000;
  op.hold = hold;
  if (type == OpType::commit) op.released = 2;
  if (type == OpType::release) op.hold_key = "hold-key";
  return op;
}

// Every kind of event: each single op, expire, an applied batch of every
// request op, and rejections (single and batch) with every reason.
std::vector<Bytes> event_seeds() {
  std::vector<Bytes> out;
  log::EventEncoder encoder;
  const auto add = [&](Event event) {
    const auto bytes = encoder.encode(event);
    out.emplace_back(bytes.begin(), bytes.end());
  };
  Event event;
  event.seq = 1;
  event.timestamp_ns = 1'700'000'000'000'000'000;
  event.key = "key-1";
  event.fingerprint = 0x1234'5678'9abc'def0;
  event.meta = log::Meta{"restock", "po-17", "ops"};
  const OpType singles[] = {OpType::acquire, OpType::consume, OpType::transfer, OpType::hold,
                            OpType::commit,  OpType::release, OpType::expire};
  for (const OpType type : singles) {
    const Op op = make_op(type, 3);
    event.ops = std::span<const Op>(&op, 1);
    event.key = type == OpType::expire ? "" : "key-1";
    add(event);
    event.seq++;
  }
  event.meta = log::Meta{};
  event.key = "batch";
  const std::vector<Op> ops = {make_op(OpType::acquire),  make_op(OpType::consume),
                               make_op(OpType::transfer), make_op(OpType::hold),
                               make_op(OpType::commit, (1ull << 48) | 4),
                               make_op(OpType::release, 5)};
  event.batch = true;
  event.ops = ops;
  add(event);
  for (const Reason reason : {Reason::insufficient, Reason::overflow, Reason::hold_unknown,
                              Reason::hold_expired, Reason::hold_finalized}) {
    event.rejected = reason;
    event.batch = reason == Reason::hold_unknown;
    event.failed_index = event.batch ? 4 : 0;
    event.ops = event.batch ? std::span<const Op>(ops) : std::span<const Op>(ops).subspan(4, 1);
    add(event);
  }
  return out;
}

bool same_op(const Op& a, const Op& b) {
  return a.type == b.type && a.subject == b.subject && a.item == b.item && a.to == b.to &&
         a.qty == b.qty && a.ttl_ns == b.ttl_ns && a.hold == b.hold &&
         a.released == b.released && a.hold_key == b.hold_key;
}

bool same_event(const Event& a, const Event& b) {
  return a.seq == b.seq && a.timestamp_ns == b.timestamp_ns && a.key == b.key &&
         a.fingerprint == b.fingerprint && a.meta.reason == b.meta.reason &&
         a.meta.reference == b.meta.reference && a.meta.actor == b.meta.actor &&
         a.batch == b.batch && a.rejected == b.rejected && a.failed_index == b.failed_index &&
         std::equal(a.ops.begin(), a.ops.end(), b.ops.begin(), b.ops.end(), same_op);
}

// Decodes `payload`: corrupt or ok, as Cap'n Proto's reader has it, and what
// decodes re-encodes to the same.
Status check_event(Context& context, std::span<const std::byte> payload, const Bytes& input) {
  log::EventDecoder decoder;
  Event event;
  const Status status = decoder.decode(payload, &event);
  log::EventDecoder library;
  Event by_library;
  const Status library_status = library.decode_with_library(payload, &by_library);
  if (library_status.code() != status.code() || library_status.message() != status.message() ||
      (status.ok() && !same_event(event, by_library))) {
    fail(context, "event: the in-place reader and Cap'n Proto's disagree", input);
  }
  if (!status.ok()) {
    if (status.code() != ErrorCode::corrupt) fail(context, "event: not corrupt", input);
    return status;
  }
  if (!event.batch && event.rejected == Reason::none && event.ops.size() != 1) {
    fail(context, "event: a single event without one op", input);
  }
  log::EventEncoder encoder;
  const auto again = encoder.encode(event);
  const std::vector<std::uint64_t> words = to_words(again);
  log::EventDecoder second;
  Event redecoded;
  const Status restatus = second.decode(
      std::span(reinterpret_cast<const std::byte*>(words.data()), again.size()), &redecoded);
  if (!restatus.ok()) {
    fail(context, "event re-encoded does not decode: " + restatus.message(), input);
  }
  if (!same_event(event, redecoded)) fail(context, "event round trip differs", input);
  return status;
}

// ---- the log on disk ---------------------------------------------------------------

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return to_bytes(text);
}

void write_file(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  TALLY_ASSERT(out.good());
}

log::LogWriterOptions writer_options() {
  log::LogWriterOptions options;
  options.segment_size_bytes = log::kSegmentSizeBytesMin;
  options.batch_bytes_max = 2 * log::kSegmentSizeBytesMin;
  options.now_ns = [] { return std::int64_t{1'700'000'000'000'000'000}; };
  return options;
}

// A log of events of every kind, written once; each iteration copies it,
// damages one segment file and reads it back.
struct PristineLog {
  std::vector<std::string> names;     // segment file names, in seq order
  std::vector<Bytes> files;           // their bytes
  std::vector<std::size_t> used;      // per segment: the end of its frames
  std::map<std::uint64_t, Bytes> payloads;  // by seq
  std::uint64_t records = 0;
};

// Appends `count` events (the seeds in turn, renumbered) in groups.
void append_events(log::LogWriter& writer, const std::vector<Bytes>& seeds, std::uint64_t count) {
  log::EventDecoder decoder;
  log::EventEncoder encoder;
  for (std::uint64_t index = 0; index < count; index++) {
    const std::vector<std::uint64_t> words = to_words(seeds[index % seeds.size()]);
    Event event;
    const auto payload = std::span(reinterpret_cast<const std::byte*>(words.data()),
                                   words.size() * sizeof(std::uint64_t));
    TALLY_ASSERT(decoder.decode(payload, &event).ok());
    event.seq = writer.next_seq();
    const auto encoded = encoder.encode(event);
    if (!writer.has_room(encoded.size()) || index % 16 == 15) {
      TALLY_ASSERT(writer.write(writer.seal(), false).ok());
    }
    (void)writer.append(encoded);
  }
  TALLY_ASSERT(writer.write(writer.seal(), true).ok());
}

PristineLog write_pristine(const std::string& dir, const std::vector<Bytes>& seeds) {
  log::FileSystem& fs = log::posix_file_system();
  {
    auto writer = log::LogWriter::open(fs, dir, log::LogEnd{}, writer_options());
    TALLY_ASSERT(writer.ok());
    // About two and a half segments of 64 KiB.
    append_events(**writer, seeds, 700);
  }
  PristineLog out;
  auto reader = log::LogReader::open(fs, dir);
  TALLY_ASSERT(reader.ok());
  std::map<std::uint64_t, std::size_t> used;  // by segment first seq
  log::Record record;
  while (true) {
    auto more = (*reader)->next(&record);
    TALLY_ASSERT(more.ok());
    if (!*more) break;
    out.payloads[record.seq] = Bytes(record.payload.begin(), record.payload.end());
    used[record.segment_first_seq] = record.offset + log::frame_size(record.payload.size());
    out.records = record.seq;
  }
  for (const std::uint64_t first_seq : (*reader)->segment_first_seqs()) {
    out.names.push_back(log::segment_file_name(first_seq));
    out.files.push_back(read_file(log::join_path(dir, out.names.back())));
    out.used.push_back(used[first_seq]);
  }
  return out;
}

// Forges the checksum of a frame of the mutated segment, so that the
// reader takes damaged bytes for a frame and goes past it. True when it did.
bool forge_checksum(Bytes& file, std::size_t used, Rng& rng) {
  if (used <= log::kSegmentHeaderSize + log::kFrameHeaderSize) return false;
  const std::size_t span = (used - log::kSegmentHeaderSize) / log::kFrameAlignment;
  const std::size_t offset = log::kSegmentHeaderSize + log::kFrameAlignment * rng.below(span);
  if (offset + log::kFrameHeaderSize > file.size()) return false;
  const std::uint32_t length = log::load_u32(file.data() + offset + log::kFrameLengthOffset);
  if (length == 0 || offset + log::kFrameHeaderSize + std::uint64_t{length} > file.size()) {
    return false;
  }
  log::store_u64(file.data() + offset, log::frame_checksum(file.data() + offset, length));
  return true;
}

// The damaged copy of segment `index`: mutations over its frames and a
// little past them; now and then its header too, or its size.
Bytes damage(const PristineLog& pristine, std::size_t index, Rng& rng, bool* forged) {
  const Bytes& file = pristine.files[index];
  const std::size_t region = std::min(file.size(), pristine.used[index] + 256);
  MutateOptions options;
  options.keep_prefix = rng.one_in(10) ? 0 : log::kSegmentHeaderSize;
  options.may_resize = rng.one_in(10);
  options.limit_bytes = file.size() + 4096;
  const std::span<const std::byte> head = std::span(file).first(region);
  Bytes out = mutate(head, head, rng, options);
  if (!options.may_resize) out.insert(out.end(), file.begin() + region, file.end());
  *forged = rng.one_in(3) && forge_checksum(out, pristine.used[index], rng);
  return out;
}

struct ReadOutcome {
  Status status;
  std::uint64_t records = 0;
  log::LogEnd end;
};

// Reads the whole log; checks every record against what was written.
ReadOutcome read_all(Context& context, const std::string& dir, const PristineLog& pristine,
                     bool forged, const Bytes& input) {
  ReadOutcome out;
  auto reader = log::LogReader::open(log::posix_file_system(), dir);
  if (!reader) {
    out.status = reader.status();
    return out;
  }
  log::EventDecoder decoder;
  log::Record record;
  for (std::uint64_t bound = 0; bound <= pristine.records + 1; bound++) {
    auto more = (*reader)->next(&record);
    if (!more) {
      out.status = more.status();
      return out;
    }
    if (!*more) {
      out.end = (*reader)->end();
      return out;
    }
    out.records++;
    if (record.seq != out.records) fail(context, "log: records out of order", input);
    const Status decoded = check_event(context, record.payload, input);
    const auto original = pristine.payloads.find(record.seq);
    const bool same = original != pristine.payloads.end() &&
                      std::ranges::equal(original->second, record.payload);
    if (!forged && (!same || !decoded.ok())) {
      fail(context, "log: a damaged record read as valid", input);
    }
  }
  fail(context, "log: the reader does not end", input);
}

// LogTail over the same files: records up to the bound, or corrupt.
void tail_all(Context& context, const std::string& dir, const PristineLog& pristine,
              const Bytes& input) {
  auto tail = log::LogTail::open(log::posix_file_system(), dir, 1);
  if (!tail) {
    if (tail.code() != ErrorCode::corrupt) {
      fail(context, "tail open: " + tail.status().to_string(), input);
    }
    return;
  }
  log::Record record;
  for (std::uint64_t bound = 0; bound <= pristine.records; bound++) {
    auto more = (*tail)->next(&record, pristine.records);
    if (!more) {
      if (more.code() != ErrorCode::corrupt) {
        fail(context, "tail: " + more.status().to_string(), input);
      }
      return;
    }
    if (!*more) return;
  }
}

// A log the reader accepted takes a writer (which zeroes a torn tail) and
// reads back with the one record appended.
void reopen(Context& context, const std::string& dir, const PristineLog& pristine,
            const ReadOutcome& before, const Bytes& input) {
  auto writer = log::LogWriter::open(log::posix_file_system(), dir, before.end, writer_options());
  if (!writer) {
    fail(context, "log: an accepted log takes no writer: " + writer.status().to_string(), input);
  }
  log::EventEncoder encoder;
  Op op = make_op(OpType::acquire);
  Event event;
  event.seq = (*writer)->next_seq();
  event.ops = std::span<const Op>(&op, 1);
  (void)(*writer)->append(encoder.encode(event));
  const Status written = (*writer)->write((*writer)->seal(), true);
  if (!written.ok()) fail(context, "log: append after recovery: " + written.to_string(), input);
  writer->reset();
  const ReadOutcome after = read_all(context, dir, pristine, true, input);
  if (!after.status.ok() || after.records != before.records + 1) {
    fail(context, "log: the recovered log does not read back: " + after.status.to_string(), input);
  }
}

}  // namespace

void fuzz_event(Context& context) {
  const std::vector<Bytes> seeds = event_seeds();
  Rng rng(context.seed ^ 0xe7e47);
  for (const Bytes& seed : seeds) {
    const std::vector<std::uint64_t> words = to_words(seed);
    const auto payload = std::span(reinterpret_cast<const std::byte*>(words.data()), seed.size());
    if (!check_event(context, payload, seed).ok()) {
      fail(context, "an event seed does not decode", seed);
    }
  }
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    const Bytes input =
        mutate(seeds[rng.below(seeds.size())], seeds[rng.below(seeds.size())], rng);
    const std::vector<std::uint64_t> words = to_words(input);
    // As stored (a size not a multiple of 8 is refused before Cap'n Proto).
    ignore_status(check_event(
        context, std::span(reinterpret_cast<const std::byte*>(words.data()), input.size()), input));
  }
}

void fuzz_log(Context& context) {
  Rng rng(context.seed ^ 0x106);
  testing::TempDir dir;
  const std::string pristine_dir = dir.sub("pristine");
  const std::string work_dir = dir.sub("work");
  const PristineLog pristine = write_pristine(pristine_dir, event_seeds());
  TALLY_ASSERT(log::posix_file_system().make_dirs(work_dir).ok());
  for (context.iteration = 0; context.iteration < context.iterations; context.iteration++) {
    for (std::size_t index = 0; index < pristine.files.size(); index++) {
      write_file(log::join_path(work_dir, pristine.names[index]), pristine.files[index]);
    }
    // Mostly the last segment, where a torn tail is told from damage.
    const std::size_t last = pristine.files.size() - 1;
    const std::size_t index = rng.one_in(2) ? last : rng.below(pristine.files.size());
    bool forged = false;
    const Bytes input = damage(pristine, index, rng, &forged);
    write_file(log::join_path(work_dir, pristine.names[index]), input);
    const ReadOutcome outcome = read_all(context, work_dir, pristine, forged, input);
    if (!outcome.status.ok() && outcome.status.code() != ErrorCode::corrupt) {
      fail(context, "log: neither records nor corrupt: " + outcome.status.to_string(), input);
    }
    tail_all(context, work_dir, pristine, input);
    if (outcome.status.ok() && rng.one_in(4)) reopen(context, work_dir, pristine, outcome, input);
    // A writer may have recreated a torn last segment under another name.
    const auto names = log::posix_file_system().list(work_dir);
    TALLY_ASSERT(names.ok());
    for (const std::string& name : *names) {
      ignore_status(log::posix_file_system().remove(log::join_path(work_dir, name)));
    }
  }
}

}  // namespace tally::fuzz
