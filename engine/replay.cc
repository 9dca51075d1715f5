#include "engine/replay.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "log/tail.h"
#include "log/thread.h"

namespace tally {

// How often replay() updates ReplayOptions::progress, in events.
constexpr std::uint64_t kProgressEvents = 4096;

std::string log_dir(const std::string& data_dir) { return log::join_path(data_dir, "log"); }
std::string snapshot_dir(const std::string& data_dir) { return log::join_path(data_dir, "snapshots"); }
std::string history_dir(const std::string& data_dir) { return log::join_path(data_dir, "history"); }

namespace {

// What a ledger makes in its data directory, what the root of a fresh file
// system holds, and hidden files (a .gitkeep, a file manager's), which no
// log directory holds either.
bool ledger_entry(std::string_view name) {
  constexpr std::array<std::string_view, 7> kNames = {
      "LOCK", "log", "snapshots", "history", "snapshots.damaged", "history.damaged", "lost+found"};
  return name.starts_with('.') || std::find(kNames.begin(), kNames.end(), name) != kNames.end();
}

Status dir_error(const std::string& what, const std::error_code& error) {
  return Status(ErrorCode::io_error, what + ": " + error.message(), error.value());
}

}  // namespace

Status check_ledger_dir(const std::string& data_dir) {
  std::error_code error;
  const bool is_dir = std::filesystem::is_directory(data_dir, error);
  if (error && error != std::errc::no_such_file_or_directory &&
      error != std::errc::not_a_directory) {
    return dir_error("stat " + data_dir, error);
  }
  if (!is_dir) return Status(ErrorCode::not_found, "no data directory at " + data_dir);
  std::string foreign;
  std::filesystem::directory_iterator entry(data_dir, error);
  for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
    const std::string name = entry->path().filename().string();
    if (name == "log") return Status();
    if (foreign.empty() && !ledger_entry(name)) foreign = name;
  }
  if (error) return dir_error("read " + data_dir, error);
  if (foreign.empty()) return Status();
  return Status(ErrorCode::not_found, "no ledger at " + data_dir +
                                          ": it has no log directory, and holds " + foreign +
                                          ", which no ledger makes");
}

namespace {

// A refusal of the state that names an event, led by where that event is
// in the log.
Status located(log::FileSystem& fs, const std::string& data_dir, Status status) {
  const std::optional<std::uint64_t> seq = proj::refused_seq(status);
  if (!seq) return status;
  auto tail = log::LogTail::open(fs, log_dir(data_dir), *seq);
  if (!tail) return status;
  log::Record record;
  auto found = (*tail)->next(&record, *seq);
  if (!found || !*found) return status;
  return log::corrupt_at(record.segment_first_seq, record.offset, status.message());
}

// Where a replay starts: a snapshot's state with a reader positioned on the
// record after it, or (state == nullptr) the beginning of the log.
struct Start {
  std::unique_ptr<proj::State> state;
  std::unique_ptr<log::LogReader> reader;
};

// The newest seq a snapshot may have: at most to_seq, and stamped at or
// before to_time_ns. 0: none qualifies.
Result<std::uint64_t> snapshot_seq_max(const snap::SnapshotStore& store, const ReplayOptions& options) {
  const std::uint64_t seq_max = std::min(options.to_seq, options.snapshot_seq_max);
  if (options.to_time_ns == INT64_MAX) return seq_max;
  auto infos = store.list();
  if (!infos) return infos.status();
  std::uint64_t best = 0;
  for (const snap::SnapshotInfo& info : *infos) {
    if (info.metadata_ok && info.seq <= seq_max && info.time_ns <= options.to_time_ns) {
      best = info.seq;
    }
  }
  return best;
}

// The newest snapshot that verifies and continues into the log: the log's
// record at its seq carries the chain checksum it was taken at. A snapshot
// the log does not continue (taken of events a crash then lost, or of
// another log) is skipped like a damaged one. Log errors are returned;
// snapshot trouble only ever means starting earlier.
Result<Start> start_from_snapshot(const ReplayOptions& options, log::FileSystem& fs,
                                  SharedSnapshots& shared, ReplayReport* report) {
  std::lock_guard<std::mutex> guard(shared.mu);
  if (shared.failed) return Start{};
  snap::SnapshotStore& store = *shared.store;
  auto seq_max = snapshot_seq_max(store, options);
  if (!seq_max) {
    report->skipped.push_back(snap::SkippedSnapshot{0, seq_max.status()});
    return Start{};
  }
  std::atomic<std::uint64_t>* loading =
      options.progress != nullptr ? &options.progress->snapshot_seq : nullptr;
  std::uint64_t max_seq = *seq_max;
  while (max_seq > 0) {
    std::vector<snap::SkippedSnapshot> skipped;
    auto loaded = store.load_newest_valid(max_seq, options.state_options, &skipped, options.cancel,
                                          loading);
    // A snapshot this walk already passed over is reported once.
    for (snap::SkippedSnapshot& one : skipped) {
      if (one.seq <= max_seq) report->skipped.push_back(std::move(one));
    }
    if (!loaded) {
      if (loaded.code() == ErrorCode::closed) return loaded.status();  // cancelled
      if (loaded.code() != ErrorCode::not_found) {
        report->skipped.push_back(snap::SkippedSnapshot{0, loaded.status()});
      }
      return Start{};
    }
    const snap::SnapshotInfo& info = loaded->info;
    auto reader = log::LogReader::open(fs, log_dir(options.data_dir),
                                       {.from_seq = info.seq,
                                        .writer_may_be_live = options.writer_may_be_live});
    if (!reader) return reader.status();
    log::Record record;
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (*more && record.seq == info.seq && record.checksum == info.chain_checksum) {
      return Start{std::move(loaded->state), std::move(*reader)};
    }
    report->skipped.push_back(snap::SkippedSnapshot{
        info.seq, Status(ErrorCode::corrupt, *more ? "its chain checksum is not the log's at its seq"
                                                   : "it is past the end of the log")});
    if (info.seq == 0) break;  // the store skips seq 0 itself; never wrap round
    max_seq = info.seq - 1;
  }
  return Start{};
}

}  // namespace

std::uint64_t keys_expected(log::FileSystem& fs, const std::string& dir,
                            const std::vector<std::uint64_t>& first_seqs, std::uint64_t after,
                            std::uint64_t to_seq, std::int64_t window_ns) {
  if (first_seqs.size() < 2) return 0;
  // The segment the replay ends in.
  const auto ends_in = std::upper_bound(first_seqs.begin(), first_seqs.end(), to_seq);
  if (ends_in == first_seqs.begin()) return 0;
  const auto end_index = static_cast<std::size_t>(ends_in - first_seqs.begin()) - 1;
  if (first_seqs[end_index] <= after) return 0;
  const std::uint64_t average =
      (first_seqs.back() - first_seqs.front()) / (first_seqs.size() - 1);
  std::uint64_t count = 0;
  std::int64_t end_created_ns = 0;
  std::int64_t next_created_ns = 0;  // of the segment after `index`
  for (std::size_t index = end_index + 1; index-- > 0;) {
    auto header = log::read_segment_header(fs, dir, first_seqs[index]);
    if (!header) return 0;
    if (index == end_index) {
      end_created_ns = header->created_ns;
    } else if (window_ns != 0) {
      // As unsigned: the difference of two int64s fits.
      const bool forgotten = next_created_ns < end_created_ns &&
                             static_cast<std::uint64_t>(end_created_ns) -
                                     static_cast<std::uint64_t>(next_created_ns) >
                                 static_cast<std::uint64_t>(window_ns);
      if (forgotten) break;
    }
    next_created_ns = header->created_ns;
    const bool newest = index + 1 == first_seqs.size();
    const std::uint64_t first = std::max(first_seqs[index], after + 1);
    const std::uint64_t last =
        std::min(newest ? first_seqs[index] - 1 + average : first_seqs[index + 1] - 1, to_seq);
    const std::uint64_t frames_max =
        (header->size_bytes - log::kSegmentHeaderSize) / log::frame_size(log::kFrameAlignment);
    if (last >= first) count += std::min(last - first + 1, frames_max);
    if (first_seqs[index] <= after) break;
  }
  return count;
}

namespace {

// Whether the ascending `seqs` hold `seq`, for a caller that asks in
// increasing seq order; *next is where it left off (0 to begin).
bool listed_next(const std::vector<std::uint64_t>& seqs, std::size_t* next, std::uint64_t seq) {
  while (*next < seqs.size() && seqs[*next] < seq) ++*next;
  return *next < seqs.size() && seqs[*next] == seq;
}

// Reads, verifies, decodes and hashes the keys of the records of a replay
// on a thread of its own, some way ahead of the caller's thread, which
// hashes their ops (hash_ahead()) and applies them: in a profile of
// replaying 1.2M events, the two halves take about the same CPU time.
// They meet in a ring of slots, handed over in chunks so that neither
// touches the other's counter for every event.
//
// A record's payload is valid only until the reader's next record, so the
// reading thread copies each into a ring of payloads, where its decoded
// event points until the event is applied: reading waits for room there
// as it does for a slot.
//
// Given the state, the reading thread also remembers each event's key
// before it hands the event over, and the applying thread applies only its
// ops: the key index is the largest table replay inserts into, and the
// other half of the work. Keys are indexed in runs, in the order of their
// slots (State::remember_key_batched); the reading thread indexes the
// waiting ones before it hands over a pause seq or the end, where the
// applying thread looks at the whole state.
class ReadAhead {
 public:
  struct Slot {
    log::EventDecoder decoder;  // owns the event's ops
    log::Event event;
    log::Record record;  // its payload in the ring of payloads
    std::uint64_t payload_at = 0;  // where: a position in payloads_ (payload_head_'s)
    proj::EventHashes hashes;
  };

  // Reads the records after seq `after` up to the options' bounds, and
  // remembers their keys in *keys unless it is nullptr. Given `pauses`
  // (ascending seqs), it remembers the key of an event after a pause seq
  // only once the applying thread has applied the event at that seq.
  ReadAhead(log::LogReader& reader, const ReplayOptions& options, std::uint64_t after,
            proj::State* keys, const std::vector<std::uint64_t>* pauses)
      : reader_(reader), keys_(keys), pauses_(pauses), to_seq_(options.to_seq),
        to_time_ns_(options.to_time_ns), read_seq_(after),
        slots_(std::allocator<Slot>().allocate(kSlots)),
        payloads_(std::make_unique_for_overwrite<std::uint64_t[]>(kPayloadRingWords)) {}

  // Starts the reading thread; next() may be called once it has.
  Status start() {
    auto started = start_thread("tally-replay", [this] { read_all(); });
    if (!started) return started.status();
    thread_ = std::move(*started);
    return Status();
  }

  // Stops the reading thread, wherever it is.
  ~ReadAhead() {
    stop();
    std::destroy_n(slots_, built_);
    std::allocator<Slot>().deallocate(slots_, kSlots);
  }
  void stop() {
    if (!thread_.joinable()) return;
    stop_.store(true);
    // Waits are on a change of value: change it.
    consumed_.fetch_add(1, std::memory_order_release);
    consumed_.notify_one();
    thread_.join();
  }
  // `applied`: the state's refusal of an event whose key was remembered
  // ahead. A key decided again at the time of its first decision is found
  // only when its run of keys is indexed (State::index_keys), so one at an
  // earlier seq may be waiting: that one is the first problem, reported
  // instead. Stops the reading.
  Status first_refusal(Status applied) {
    stop();
    Status keys = status_.ok() && keys_ != nullptr ? keys_->index_keys() : status_;
    const std::optional<std::uint64_t> keys_seq = proj::refused_seq(keys);
    const std::optional<std::uint64_t> applied_seq = proj::refused_seq(applied);
    if (keys_seq && applied_seq && *keys_seq < *applied_seq) return keys;
    return applied;
  }
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  // The next event to apply, waiting for it if need be; nullptr once the
  // reading stopped before it (then status() and reached_end() say why).
  const Slot* next() {
    for (;;) {
      const std::uint64_t published = published_.load(std::memory_order_acquire);
      published_count_ = published & ~kFinished;
      if (head_ < published_count_) return &slots_[head_ % kSlots];
      if ((published & kFinished) != 0) return nullptr;
      hand_back();  // the reader may be waiting for room
      // Sleep until a batch is ready, not the next chunk: each wake is a
      // futex call and a switch, which the reader (the slower half) pays.
      // Stored before published_ is read again, and the reader reads it
      // after storing published_ (both seq_cst): either this thread sees
      // the new count or the reader sees what it waits for.
      wanted_.store(head_ + kWakeBatch);
      if (published_.load() == published) published_.wait(published, std::memory_order_acquire);
      wanted_.store(kNever, std::memory_order_relaxed);
    }
  }
  // The event `distance` places after the next one, if it is read already.
  Slot* peek(std::size_t distance) {
    const std::uint64_t index = head_ + distance;
    return index < published_count_ ? &slots_[index % kSlots] : nullptr;
  }
  // Hashes the first op of each event up to `distance` places after the
  // next one that is read already, once each (State::hash_first_op()).
  void hash_ahead(std::size_t distance) {
    const std::uint64_t end = std::min<std::uint64_t>(head_ + distance + 1, published_count_);
    for (; hashed_ < end; hashed_++) {
      Slot& slot = slots_[hashed_ % kSlots];
      slot.hashes.first = proj::State::hash_first_op(slot.event);
    }
  }
  // Done with the event next() returned.
  void pop() {
    head_++;
    if (head_ % kChunk != 0) return;
    // A reader waiting for room sleeps until a good part of the ring is
    // free, not for every chunk: each wake is a futex call and a switch.
    // Stored before reader_wanted_ is read, and the reader stores that
    // before it reads consumed_ again (both seq_cst): either it sees this
    // count or this thread sees what it waits for.
    consumed_.store(head_);
    if (head_ >= reader_wanted_.load()) consumed_.notify_one();
  }

  // Once next() returned nullptr: ok, or why reading stopped early.
  const Status& status() const { return status_; }
  // Once next() returned nullptr: whether reading reached the end of the
  // log (rather than a bound).
  bool reached_end() const { return reached_end_; }

 private:
  static constexpr std::size_t kCacheLineBytes = 64;
  // Deep enough (16,384 events, about 5 MB) that neither thread waits out
  // the other's pauses, a run of keys indexed or a table growing: with 512,
  // each thread sat idle about a quarter of the time (docs/performance.md,
  // "2026-12-06, later: replay's threads waiting on each other").
  static constexpr std::uint64_t kSlots = 16384;
  static constexpr std::uint64_t kChunk = 32;
  // An applying thread that caught up sleeps until this many more events
  // are read; fewer than the payload ring holds of events up to 2 KiB.
  static constexpr std::uint64_t kWakeBatch = 1024;
  // A reading thread that waits for room sleeps until a quarter of the
  // ring of slots, or of payloads, is free besides the room it needs.
  static constexpr std::uint64_t kRoomSlots = kSlots / 4;
  // A decoder keeps room for this many ops, no more (EventDecoder::trim()).
  static constexpr std::size_t kSlotOpsMax = 4;
  static constexpr std::uint64_t kNever = UINT64_MAX;
  static constexpr std::uint64_t kFinished = std::uint64_t{1} << 63;
  static constexpr std::uint64_t kNoPause = UINT64_MAX;
  // Two of the largest payloads, and thousands of the usual ones.
  static constexpr std::uint64_t kPayloadRingBytes = 2 * std::uint64_t{log::kRecordPayloadBytesMax};
  static constexpr std::uint64_t kPayloadRingWords = kPayloadRingBytes / 8;

  void hand_back() {
    consumed_.store(head_, std::memory_order_release);
    consumed_.notify_one();
  }

  // ---- the reading thread ----
  // Hands over the slots whose keys are remembered. Wakes the applying
  // thread if it waits for no more than these, or always (the reading
  // thread is about to wait itself, or is done).
  enum class Wake { if_wanted, always };
  void publish(Wake wake, std::uint64_t flags = 0) {
    published_.store(keyed_ | flags);
    if (wake == Wake::always || keyed_ >= wanted_.load()) published_.notify_one();
  }
  // Remembers the keys of the slots before `count`, up to a pause the
  // applying thread has not passed; on a refusal, finishes with it and
  // returns false.
  bool remember_keys(std::uint64_t count) {
    if (keys_ == nullptr) keyed_ = std::max(keyed_, count);
    while (keyed_ < count) {
      const Slot& slot = slots_[keyed_ % kSlots];
      if (paused(slot.event.seq)) return true;
      Status remembered = keys_->remember_key_batched(slot.event, slot.hashes.key);
      if (!remembered.ok()) return refuse(std::move(remembered));
      if (pause_slot_ == keyed_++) {
        // A pause seq: the applying thread looks at the state after it,
        // every key up to it included. Index them before this slot can be
        // handed over, then hand over every keyed slot, so that the
        // applying thread gets there.
        if (!index_keys()) return false;
        publish(Wake::always);
      }
    }
    return true;
  }
  // Indexes the keys remembered so far (State::index_keys); false on a
  // refusal.
  bool index_keys() {
    if (keys_ == nullptr) return true;
    Status indexed = keys_->index_keys();
    return indexed.ok() || refuse(std::move(indexed));
  }
  // Finishes with a refused key after the slots keyed before it; false.
  bool refuse(Status status) {
    status_ = std::move(status);
    publish(Wake::always, kFinished);
    return false;
  }
  // Whether the key of event `seq`, the next to remember, must wait: it
  // follows a pause seq whose event is not applied yet, and the applying
  // thread must find the keys in step with the ops there. Notes the slot
  // of a pause seq in pause_slot_.
  bool paused(std::uint64_t seq) {
    if (pause_slot_ != kNoPause) {
      if (consumed_.load(std::memory_order_acquire) <= pause_slot_) return true;
      pause_slot_ = kNoPause;
    }
    if (pauses_ != nullptr && listed_next(*pauses_, &next_pause_, seq)) pause_slot_ = keyed_;
    return false;
  }
  // remember_keys(count) to the end, waiting out pauses; false on a
  // refusal (finished already) or when stopped.
  bool remember_all_keys(std::uint64_t count) {
    for (;;) {
      if (!remember_keys(count)) return false;
      if (keyed_ >= count) return true;
      const std::uint64_t consumed = consumed_.load(std::memory_order_acquire);
      if (stop_.load()) return false;
      if (consumed > pause_slot_) continue;
      sleep_until_applied(consumed, pause_slot_ + 1);
    }
  }
  // Waits until `ready` holds for the applied count, sleeping until it
  // reaches wanted(count); false when stopped.
  template <class Ready, class Wanted>
  bool wait_for(const Ready& ready, const Wanted& wanted) {
    for (;;) {
      if (stop_.load()) return false;
      const std::uint64_t consumed = consumed_.load(std::memory_order_acquire);
      if (ready(consumed)) return true;
      // The applying thread may be waiting for these.
      if (!remember_keys(tail_)) return false;
      publish(Wake::always);
      sleep_until_applied(consumed, wanted(consumed));
    }
  }
  // Sleeps while the applied count is `consumed`, until the applying
  // thread has applied `wanted` events, runs out of them, or stop().
  void sleep_until_applied(std::uint64_t consumed, std::uint64_t wanted) {
    // Stored before consumed_ is read again, and pop() reads it after
    // storing consumed_ (both seq_cst).
    reader_wanted_.store(wanted);
    if (consumed_.load() == consumed) consumed_.wait(consumed, std::memory_order_acquire);
    reader_wanted_.store(kNever, std::memory_order_relaxed);
  }
  void finish(Status status, bool reached_end) {
    // A key refused before here is the earlier problem.
    if (!remember_all_keys(tail_) || !index_keys()) return;
    status_ = std::move(status);
    reached_end_ = reached_end;
    publish(Wake::always, kFinished);
  }
  // Copies the slot's record's payload into the ring of payloads, in one
  // piece, once the events still to apply leave room for it, and points
  // the record there; false when stopped.
  bool keep_payload(Slot* slot) {
    const std::span<const std::byte> payload = slot->record.payload;
    const std::uint64_t words = (payload.size() + 7) / 8;
    std::uint64_t at = payload_head_;
    const std::uint64_t word = at % kPayloadRingWords;
    if (word + words > kPayloadRingWords) at += kPayloadRingWords - word;  // wrap
    // Whether the events from `applied` on leave room for `more` words.
    const auto leave_room = [&](std::uint64_t applied, std::uint64_t more) {
      return applied == tail_ ||
             at + more - slots_[applied % kSlots].payload_at <= kPayloadRingWords;
    };
    const bool room = wait_for(
        [&](std::uint64_t consumed) { return leave_room(consumed, words); },
        [&](std::uint64_t consumed) {
          std::uint64_t wanted = consumed;
          while (!leave_room(wanted, words + kPayloadRingWords / 4)) wanted++;
          return wanted;
        });
    if (!room) return false;
    std::uint64_t* copy = payloads_.get() + at % kPayloadRingWords;
    copy[words - 1] = 0;  // the padding after the bytes
    std::memcpy(copy, payload.data(), payload.size());
    slot->record.payload = std::span(reinterpret_cast<const std::byte*>(copy), payload.size());
    slot->payload_at = at;
    payload_head_ = at + words;
    return true;
  }
  void read_all() {
    for (;;) {
      // Room for the next slot.
      const bool ready =
          wait_for([&](std::uint64_t consumed) { return tail_ - consumed < kSlots; },
                   [&](std::uint64_t) { return tail_ - kSlots + kRoomSlots; });
      if (!ready) return;
      // Never look past to_seq: on a live log the bytes after a committed
      // bound may be in flight.
      if (read_seq_ >= to_seq_) return finish(Status(), false);
      if (tail_ == built_ && built_ < kSlots) std::construct_at(&slots_[built_++]);
      Slot& slot = slots_[tail_ % kSlots];
      Result<bool> more = reader_.next(&slot.record);
      if (!more) return finish(more.status(), false);
      if (!*more) return finish(Status(), true);
      if (!keep_payload(&slot)) return;
      const log::Record& record = slot.record;
      slot.decoder.trim(kSlotOpsMax);
      Status decoded = log::decode_record(slot.decoder, record, &slot.event);
      if (!decoded.ok()) return finish(std::move(decoded), false);
      if (slot.event.timestamp_ns > to_time_ns_) return finish(Status(), false);
      read_seq_ = record.seq;
      slot.hashes.key = proj::State::hash_key(slot.event);
      tail_++;
      const std::uint64_t keyed = keyed_;
      if (!remember_keys(tail_)) return;
      if (keyed_ / kChunk != keyed / kChunk) publish(Wake::if_wanted);
    }
  }

  log::LogReader& reader_;
  proj::State* const keys_;
  const std::vector<std::uint64_t>* const pauses_;
  const std::uint64_t to_seq_;
  const std::int64_t to_time_ns_;
  // The reading thread's; the applying thread reads status_ and
  // reached_end_ after the kFinished publication.
  std::uint64_t read_seq_;
  std::uint64_t tail_ = 0;     // slots filled
  std::uint64_t built_ = 0;    // slots built: the first ones, up to tail_ + 1
  std::uint64_t keyed_ = 0;    // of them, with their keys remembered
  std::uint64_t payload_head_ = 0;  // words of payloads_ filled, wraps counted
  std::size_t next_pause_ = 0;            // into *pauses_
  std::uint64_t pause_slot_ = kNoPause;   // the keyed slot of the pause seq waited on
  Status status_;
  bool reached_end_ = false;
  // The applying thread's, on a cache line of their own: head_ changes with
  // every event, and the reading thread's fields, or slots_ beside them,
  // would miss in its cache each time (a tenth of its samples did).
  alignas(kCacheLineBytes) std::uint64_t head_ = 0;  // slots applied
  std::uint64_t hashed_ = 0;           // slots whose ops are hashed
  std::uint64_t published_count_ = 0;  // as last seen
  // Shared; each counter one thread writes on a line of its own. The
  // ring's slots: the reading thread builds each as it first fills it (the
  // first built_ of them), so that a short replay builds few, and a long
  // one does not wait for all of them before its first event.
  alignas(kCacheLineBytes) Slot* const slots_;
  const std::unique_ptr<std::uint64_t[]> payloads_;  // words: decoding wants 8-byte alignment
  alignas(kCacheLineBytes) std::atomic<std::uint64_t> published_{0};  // slots filled | kFinished
  alignas(kCacheLineBytes) std::atomic<std::uint64_t> consumed_{0};   // slots applied, handed back
  std::atomic<std::uint64_t> wanted_{kNever};  // the count a sleeping applier waits for
  std::atomic<std::uint64_t> reader_wanted_{kNever};  // the count a sleeping reader waits for
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

void warn_skipped_snapshots(const std::vector<snap::SkippedSnapshot>& skipped) {
  for (const snap::SkippedSnapshot& one : skipped) {
    if (one.seq == 0) {
      std::fprintf(stderr, "tally: skipped the snapshot store: %s\n", one.why.to_string().c_str());
    } else {
      std::fprintf(stderr, "tally: skipped the snapshot at seq %llu: %s\n",
                   static_cast<unsigned long long>(one.seq), one.why.to_string().c_str());
    }
  }
}

std::int64_t newest_snapshot_window_ns(SharedSnapshots& shared, std::int64_t fallback_ns) {
  std::lock_guard<std::mutex> guard(shared.mu);
  if (shared.store == nullptr || shared.failed) return fallback_ns;
  const Result<std::optional<std::int64_t>> window = shared.store->newest_window();
  // State asserts a window >= 0; a header saying otherwise is not a ledger's.
  return window.ok() && window->has_value() && **window >= 0 ? **window : fallback_ns;
}

Result<Replayed> replay(const ReplayOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  log::FileSystem& fs = options.fs != nullptr ? *options.fs : log::posix_file_system();
  Replayed out;
  Start start;
  proj::StateOptions state_options = options.state_options;
  if (options.use_snapshots) {
    SharedSnapshots local;
    SharedSnapshots* shared = options.snapshots;
    if (shared == nullptr && fs.exists(snapshot_dir(options.data_dir))) {
      // Read-only: a reader's replay changes nothing in DATA (an audit of a
      // backup on a read-only mount).
      auto store = snap::SnapshotStore::open(snapshot_dir(options.data_dir), {.read_only = true});
      if (store) {
        local.store = std::move(*store);
        shared = &local;
      } else if (store.code() != ErrorCode::not_found) {
        out.report.skipped.push_back(snap::SkippedSnapshot{0, store.status()});
      }
    }
    if (shared != nullptr && shared->store != nullptr) {
      auto found = start_from_snapshot(options, fs, *shared, &out.report);
      if (!found) return found.status();
      start = std::move(*found);
      if (start.state == nullptr && state_options.window_from_image) {
        // No image to take the window from (none at or below the bound, or
        // none that loads): the newest snapshot's is the ledger's.
        state_options.idempotency_window_ns =
            newest_snapshot_window_ns(*shared, state_options.idempotency_window_ns);
      }
    }
  }
  if (start.state != nullptr) out.report.snapshot_seq = start.state->last_seq();
  if (options.progress != nullptr) {
    options.progress->snapshot_seq.store(out.report.snapshot_seq, std::memory_order_relaxed);
  }
  if (start.state == nullptr) {
    start.state = std::make_unique<proj::State>(state_options);
    auto reader = log::LogReader::open(fs, log_dir(options.data_dir),
                                       {.writer_may_be_live = options.writer_may_be_live});
    if (!reader) return reader.status();
    start.reader = std::move(*reader);
  }
  out.state = std::move(start.state);

  // A caller that looks at the state after each event needs its keys
  // remembered in step with its ops; one that looks after some, in step
  // there.
  const std::vector<std::uint64_t>& applied_seqs = options.applied_seqs;
  TALLY_ASSERT(std::is_sorted(applied_seqs.begin(), applied_seqs.end()));
  const bool every_event = options.applied && applied_seqs.empty();
  const bool keys_ahead = !every_event;
  // The key index sized once for the keys the replay will hold: grown as
  // they come, it rehashes every key at each doubling on the reading
  // thread, while the applying thread waits. Not for a bound in time,
  // which the estimate cannot see: a point-in-time read of an early time
  // would size the index for the whole log.
  if (options.to_time_ns == INT64_MAX) {
    out.state->reserve_keys(keys_expected(fs, log_dir(options.data_dir),
                                          start.reader->segment_first_seqs(), out.state->last_seq(),
                                          options.to_seq, out.state->idempotency_window_ns()));
  }
  ReadAhead ahead(*start.reader, options, out.state->last_seq(),
                  keys_ahead ? out.state.get() : nullptr,
                  options.applied ? &applied_seqs : nullptr);
  TALLY_TRY(ahead.start());
  std::size_t next_applied = 0;  // into applied_seqs
  for (;;) {
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed)) {
      return Status(ErrorCode::closed, "the replay was cancelled");
    }
    const ReadAhead::Slot* due = ahead.next();
    if (due == nullptr) break;
    // The cache misses of the events ahead overlap with this one's: their
    // name and hold slots (and keys, unless the reader remembers them) 24
    // places ahead, their balances (which need the names) 8 places ahead.
    // 24, not 16: the 10M-op log, with 1 M subjects, replays 5% faster
    // (docs/performance.md).
    ahead.hash_ahead(24);
    if (const ReadAhead::Slot* later = ahead.peek(24)) {
      if (!keys_ahead) out.state->prefetch_key(later->hashes.key);
      out.state->prefetch(later->event, later->hashes);
    }
    if (ReadAhead::Slot* later = ahead.peek(8)) {
      out.state->prefetch_balances(later->event, &later->hashes);
    }
    if (options.visit) options.visit(due->event, due->record);
    Status applied = keys_ahead ? out.state->apply_ops(due->event, due->hashes)
                                : out.state->apply(due->event, due->hashes);
    if (!applied.ok()) {
      if (keys_ahead) applied = ahead.first_refusal(std::move(applied));
      return located(fs, options.data_dir, std::move(applied));
    }
    out.report.events++;
    if (options.progress != nullptr && out.report.events % kProgressEvents == 0) {
      options.progress->events.store(out.report.events, std::memory_order_relaxed);
    }
    if (options.applied &&
        (every_event || listed_next(applied_seqs, &next_applied, due->record.seq))) {
      TALLY_TRY(options.applied(*out.state, due->record));
    }
    ahead.pop();
  }
  if (!ahead.status().ok()) return located(fs, options.data_dir, ahead.status());
  if (options.progress != nullptr) {
    options.progress->events.store(out.report.events, std::memory_order_relaxed);
  }
  out.report.reached_end = ahead.reached_end();
  if (out.report.reached_end) out.report.end = start.reader->end();
  out.report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return out;
}

}  // namespace tally
