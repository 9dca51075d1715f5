// Backups of a data directory (engine/backup.h), taken beside a live ledger
// and checked against replays of the source.
#include <doctest.h>

#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "engine/backup.h"
#include "engine/ledger.h"
#include "engine/replay.h"
#include "engine/replay_fixture.h"
#include "log/format.h"
#include "log/reader.h"
#include "projections/state.h"
#include "tests/testing.h"

namespace tally {
namespace {

// The digest of the state after `to_seq`, from the whole log, no snapshot.
std::uint64_t replayed_digest(const std::string& data_dir, std::uint64_t to_seq = UINT64_MAX) {
  return testing::brute_force(data_dir, to_seq)->digest();
}

LedgerOptions small_ledger(const std::string& data_dir) {
  LedgerOptions options;
  options.data_dir = data_dir;
  options.durability = Durability::none;
  options.segment_size_bytes = 64 << 10;  // rotations while the backups run
  options.snapshot_every_events = 300;
  options.snapshot_every_seconds = 0;
  return options;
}

std::unique_ptr<Ledger> open_ledger(const LedgerOptions& options) {
  auto opened = Ledger::open(options);
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  return std::move(*opened);
}

// Mutations of every kind under keys "<prefix><n>", n from `first`; false
// when one fails. No doctest macros: a child process runs it too.
bool mutate(Ledger& ledger, const std::string& prefix, int first, int count) {
  for (int n = first; n < first + count; n++) {
    const std::string key = testing::name(prefix, n);
    const std::string subject = testing::name("s", n % 7);
    if (!ledger.acquire(key + "a", subject, "gold", 10).ok()) return false;
    if (!ledger.transfer(key + "t", subject, testing::name("s", n % 5 + 7), "gold", 3).ok()) {
      return false;
    }
    auto hold = ledger.hold(key + "h", subject, "gold", 2, std::int64_t{3600} * 1'000'000'000);
    if (!hold.ok()) return false;
    if (n % 2 == 0 && !ledger.commit(key + "c", hold->hold).ok()) return false;
  }
  return true;
}

// A ledger in `data_dir` that snapshots on demand only, with mutate()'s
// `count` rounds under keys `prefix`... and a snapshot of them.
std::unique_ptr<Ledger> open_snapshotted(const std::string& data_dir, const std::string& prefix,
                                         int count) {
  LedgerOptions options = small_ledger(data_dir);
  options.snapshot_every_events = 0;
  options.snapshot_every_seconds = 3600;
  std::unique_ptr<Ledger> ledger = open_ledger(options);
  REQUIRE(mutate(*ledger, prefix, 0, count));
  REQUIRE(ledger->snapshot_now().ok());
  return ledger;
}

// A child process that opens a ledger on `source` and writes to it until
// stop() (or for kRoundsMax rounds at most); stop() answers whether every
// write and the close succeeded. Stopped by the destructor too, so a
// failing test leaves no writer behind; the child dies with its parent.
class WriterProcess {
 public:
  static constexpr int kRoundsMax = 2000;

  WriterProcess(const std::string& source, std::string stop_file)
      : stop_file_(std::move(stop_file)) {
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) run(source);
  }
  ~WriterProcess() { (void)stop(); }

  bool stop() {
    if (pid_ <= 0) return exited_ok_;
    { std::ofstream(stop_file_).put('\n'); }
    int status = 0;
    exited_ok_ = ::waitpid(pid_, &status, 0) == pid_ && WIFEXITED(status) &&
                 WEXITSTATUS(status) == 0;
    pid_ = 0;
    return exited_ok_;
  }

 private:
  [[noreturn]] void run(const std::string& source) {
    (void)::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto opened = Ledger::open(small_ledger(source));
    if (!opened.ok()) ::_exit(2);
    bool ok = mutate(**opened, "warm", 0, 200);
    for (int round = 0; ok && round < kRoundsMax && !std::filesystem::exists(stop_file_); round++) {
      ok = mutate(**opened, testing::name("r", round) + "-", 0, 50);
    }
    ::_exit(ok && (*opened)->close().ok() ? 0 : 3);
  }

  std::string stop_file_;
  pid_t pid_ = 0;
  bool exited_ok_ = false;
};

// Checks a backup against its source: it replays to the source's state at
// its last seq, and a ledger opens on it with that state.
void check_backup(const std::string& source, const std::string& copy, const BackupReport& report) {
  CHECK(report.last_seq > 0);
  const std::uint64_t digest = replayed_digest(copy);
  CHECK(digest == replayed_digest(source, report.last_seq));
  LedgerOptions options = small_ledger(copy);
  std::unique_ptr<Ledger> reopened = open_ledger(options);
  CHECK(reopened->stats().next_seq == report.last_seq + 1);
  auto reopened_digest = reopened->digest();
  REQUIRE(reopened_digest.ok());
  CHECK(*reopened_digest == digest);
  // The same ledger: a client that knew the source takes the copy.
  const auto source_id = log::read_log_id(log::posix_file_system(), source + "/log");
  REQUIRE(source_id.ok());
  CHECK(reopened->ledger_id() == *source_id);
  REQUIRE(reopened->close().ok());
}

TEST_CASE("backups taken while another process writes open to the source's state at their seq") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  WriterProcess writer(source, dir.sub("stop"));
  // Backups until three have events and the last has seen a rotation; a
  // bound on the attempts keeps a writer that died from hanging the test.
  std::vector<std::pair<std::string, BackupReport>> backups;
  for (int index = 0; index < 2000 && (backups.size() < 3 || backups.back().second.segments < 2);
       index++) {
    const std::string out = dir.sub(testing::name("backup", index));
    auto report = backup_data(source, out);
    // Until the writer has begun: no directory yet, or no event in it.
    if (report.code() == ErrorCode::not_found || (report.ok() && report->last_seq == 0)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    REQUIRE_MESSAGE(report.ok(), report.status().to_string());
    CHECK(report->left_out.empty());
    CHECK(report->history_seq.value_or(0) <= report->last_seq);
    backups.emplace_back(out, *report);
  }
  CHECK(writer.stop());
  REQUIRE(backups.size() >= 3);
  CHECK(backups.back().second.last_seq > backups.front().second.last_seq);
  CHECK(backups.back().second.segments > 1);
  CHECK(backups.back().second.snapshots.has_value());
  for (const auto& [out, report] : backups) {
    CAPTURE(report.last_seq);
    check_backup(source, out, report);
  }
}

// POSIX files whose reads of one file, through the first `holed_opens`
// opens of it, see [hole_begin, hole_end) as zeros: the bytes of a write
// still in flight while a copy passes them.
class InFlightFileSystem final : public log::FileSystem {
 public:
  InFlightFileSystem(std::string path, std::uint64_t hole_begin, std::uint64_t hole_end,
                     int holed_opens)
      : path_(std::move(path)), hole_begin_(hole_begin), hole_end_(hole_end),
        holed_opens_(holed_opens) {}

  Result<std::unique_ptr<log::File>> open(const std::string& path, Mode mode) override {
    auto file = base_.open(path, mode);
    if (!file || path != path_ || opens_++ >= holed_opens_) return file;
    return std::unique_ptr<log::File>(new HoledFile(std::move(*file), hole_begin_, hole_end_));
  }
  bool exists(const std::string& path) override { return base_.exists(path); }
  Result<std::vector<std::string>> list(const std::string& dir) override { return base_.list(dir); }
  Status make_dirs(const std::string& dir) override { return base_.make_dirs(dir); }
  Status remove(const std::string& path) override { return base_.remove(path); }
  Status rename(const std::string& from, const std::string& to) override {
    return base_.rename(from, to);
  }
  Status sync_dir(const std::string& dir) override { return base_.sync_dir(dir); }

 private:
  class HoledFile final : public log::File {
   public:
    HoledFile(std::unique_ptr<log::File> base, std::uint64_t begin, std::uint64_t end)
        : base_(std::move(base)), begin_(begin), end_(end) {}
    Status read_at(std::uint64_t offset, std::span<std::byte> out) override {
      TALLY_TRY(base_->read_at(offset, out));
      const std::uint64_t end = std::min(offset + out.size(), end_);
      for (std::uint64_t at = std::max(offset, begin_); at < end; at++) out[at - offset] = std::byte{0};
      return Status();
    }
    Status write_at(std::uint64_t offset, std::span<const std::byte> data) override {
      return base_->write_at(offset, data);
    }
    Status sync() override { return base_->sync(); }
    Result<std::uint64_t> size() override { return base_->size(); }
    Status truncate(std::uint64_t size_bytes) override { return base_->truncate(size_bytes); }
    Status preallocate(std::uint64_t size_bytes) override { return base_->preallocate(size_bytes); }

   private:
    std::unique_ptr<log::File> base_;
    std::uint64_t begin_;
    std::uint64_t end_;
  };

  log::FileSystem& base_ = log::posix_file_system();
  std::string path_;
  std::uint64_t hole_begin_;
  std::uint64_t hole_end_;
  int holed_opens_;
  int opens_ = 0;
};

// A closed ledger of one segment with enough events that a hole early in it
// has valid frames after it; the segment's path.
std::string one_segment_source(const std::string& source) {
  LedgerOptions options = small_ledger(source);
  options.segment_size_bytes = log::kSegmentSizeBytesDefault;
  std::unique_ptr<Ledger> ledger = open_ledger(options);
  REQUIRE(mutate(*ledger, "k", 0, 100));
  REQUIRE(ledger->close().ok());
  return log::join_path(log_dir(source), log::segment_file_name(1));
}

TEST_CASE("a log copied as a write landed is copied again; damage every copy meets fails") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  const std::string segment = one_segment_source(source);
  const std::uint64_t last_seq = 350;  // 100 x (acquire, transfer, hold) + 50 commits

  SUBCASE("in flight once") {
    InFlightFileSystem fs(segment, 4096, 4096 + 200, 1);
    auto report = backup_data(source, dir.sub("backup"), &fs);
    REQUIRE_MESSAGE(report.ok(), report.status().to_string());
    CHECK(report->log_copies == 2);
    CHECK(report->last_seq == last_seq);
    check_backup(source, dir.sub("backup"), *report);
  }
  SUBCASE("damaged for good") {
    InFlightFileSystem fs(segment, 4096, 4096 + 200, 1000);
    auto report = backup_data(source, dir.sub("backup"), &fs);
    REQUIRE(report.code() == ErrorCode::corrupt);
    CHECK(report.status().message().find("segment 0000000000000001.seg offset ") !=
          std::string::npos);
    CHECK(report.status().message().find("(the log as copied 5 time(s))") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup")));
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup") + ".partial"));
  }
  SUBCASE("a source whose last segment was cut short") {
    // Cut right after its frames: the repair a copy gets would hide that
    // records past them may be lost.
    auto reader = log::LogReader::open(log::posix_file_system(), log_dir(source));
    REQUIRE(reader.ok());
    log::Record record;
    while (true) {
      auto more = (*reader)->next(&record);
      REQUIRE(more.ok());
      if (!*more) break;
    }
    std::filesystem::resize_file(segment, (*reader)->end().offset);
    auto report = backup_data(source, dir.sub("backup"));
    REQUIRE(report.code() == ErrorCode::corrupt);
    CHECK(report.status().message().find("the segment's file is cut short") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup")));
  }
}

TEST_CASE("damage in a segment before the last fails a backup at once") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  LedgerOptions options = small_ledger(source);
  options.snapshot_every_events = 0;
  {
    auto ledger = open_ledger(options);
    REQUIRE(mutate(*ledger, "k", 0, 300));
    REQUIRE(ledger->close().ok());
  }
  std::vector<std::string> segments;
  for (const auto& entry : std::filesystem::directory_iterator(log_dir(source))) {
    if (entry.path().extension() == ".seg") segments.push_back(entry.path().string());
  }
  std::sort(segments.begin(), segments.end());
  REQUIRE(segments.size() >= 3);
  const auto check_fails_at_once = [&](const std::string& segment) {
    auto report = backup_data(source, dir.sub("backup"));
    REQUIRE(report.code() == ErrorCode::corrupt);
    const std::string name = std::filesystem::path(segment).filename().string();
    CHECK(report.status().message().find("segment " + name + " offset ") != std::string::npos);
    // Not copied again: no write lands in a segment before the last.
    CHECK(report.status().message().find("in a segment before the last") != std::string::npos);
    CHECK(report.status().message().find("as copied") == std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup")));
  };
  // A byte at the end of the segment before the last, after its frames:
  // found once every record of it was read.
  const std::string before_last = segments[segments.size() - 2];
  const auto before_last_bytes = std::filesystem::file_size(before_last);
  REQUIRE(testing::flip_byte(before_last, before_last_bytes - 1));
  check_fails_at_once(before_last);
  REQUIRE(testing::flip_byte(before_last, before_last_bytes - 1));  // back
  // A byte in the middle of the first segment: inside some frame.
  REQUIRE(testing::flip_byte(segments[0], 32 << 10));
  check_fails_at_once(segments[0]);
}

TEST_CASE("a backup repairs an empty last segment, as a rotation on a full disk leaves it") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  one_segment_source(source);
  const std::uint64_t last_seq = 350;  // as in the test above
  { std::ofstream empty(log::join_path(log_dir(source), log::segment_file_name(last_seq + 1))); }
  auto report = backup_data(source, dir.sub("backup"));
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  CHECK(report->last_seq == last_seq);
  check_backup(source, dir.sub("backup"), *report);
}

TEST_CASE("a segment being made is repaired in the backup at the size of the one before it") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  LedgerOptions options = small_ledger(source);
  options.snapshot_every_events = 0;
  std::uint64_t last_seq = 0;
  {
    auto ledger = open_ledger(options);
    REQUIRE(mutate(*ledger, "k", 0, 300));
    last_seq = ledger->stats().next_seq - 1;
    REQUIRE(ledger->close().ok());
  }
  // Preallocated, its header not written yet: a rotation under way.
  const std::string name = log::segment_file_name(last_seq + 1);
  const std::string made = log::join_path(log_dir(source), name);
  { std::ofstream file(made); }
  std::filesystem::resize_file(made, options.segment_size_bytes);
  auto report = backup_data(source, dir.sub("backup"));
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  CHECK(report->last_seq == last_seq);
  CHECK(std::filesystem::file_size(log::join_path(log_dir(dir.sub("backup")), name)) ==
        options.segment_size_bytes);
  check_backup(source, dir.sub("backup"), *report);
}

TEST_CASE("a backup is not refused for a pid a killed holder left in LOCK") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  one_segment_source(source);
  // As a holder killed with SIGKILL leaves it, the pid now this process's.
  { std::ofstream(log::join_path(source, "LOCK")) << ::getpid() << "\n"; }
  auto report = backup_data(source, dir.sub("backup"));
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  check_backup(source, dir.sub("backup"), *report);
}

TEST_CASE("a backup is as closed to others as its source") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  one_segment_source(source);
  using std::filesystem::perms;
  const perms owner_only = perms::owner_all;
  std::filesystem::permissions(source, owner_only, std::filesystem::perm_options::replace);
  auto report = backup_data(source, dir.sub("backup"));
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  CHECK(std::filesystem::status(dir.sub("backup")).permissions() == owner_only);
  // A read-only source: its copy is still its owner's to write and remove.
  std::filesystem::permissions(source, perms::owner_read | perms::owner_exec,
                               std::filesystem::perm_options::replace);
  report = backup_data(source, dir.sub("read-only"));
  std::filesystem::permissions(source, owner_only, std::filesystem::perm_options::replace);
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  CHECK(std::filesystem::status(dir.sub("read-only")).permissions() == owner_only);
}

TEST_CASE("a backup's contents are readable by all, whatever the umask") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  one_segment_source(source);
  using std::filesystem::perms;
  const perms open_dir = perms::owner_all | perms::group_read | perms::group_exec |
                         perms::others_read | perms::others_exec;
  std::filesystem::permissions(source, open_dir, std::filesystem::perm_options::replace);
  const mode_t saved = ::umask(077);
  auto report = backup_data(source, dir.sub("backup"));
  ::umask(saved);
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  // An auditor's account reads an open source's backup.
  CHECK(std::filesystem::status(dir.sub("backup")).permissions() == open_dir);
  int files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.sub("backup"))) {
    INFO(entry.path().string());
    const perms mode = entry.status().permissions();
    CHECK((mode & perms::others_read) != perms::none);
    if (entry.is_directory()) CHECK((mode & perms::others_exec) != perms::none);
    files += entry.is_regular_file() ? 1 : 0;
  }
  CHECK(files >= 3);  // a segment and the stores
}

TEST_CASE("a backup leaves out a store that does not open, and refuses a destination that exists") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  one_segment_source(source);
  {
    std::ofstream garbage(history_dir(source) + "/data.mdb", std::ios::binary | std::ios::trunc);
    garbage << std::string(64 * 1024, 'x');
  }
  const std::string out = dir.sub("backup");
  auto report = backup_data(source, out);
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  REQUIRE(report->left_out.size() == 1);
  CHECK(report->left_out[0].starts_with("history: corrupt: "));
  CHECK_FALSE(report->history_seq.has_value());
  CHECK_FALSE(std::filesystem::exists(history_dir(out)));
  CHECK(report->snapshots.has_value());
  check_backup(source, out, *report);

  auto again = backup_data(source, out);
  CHECK(again.code() == ErrorCode::invalid);
  std::filesystem::create_directory(dir.sub("other.partial"));
  auto stale = backup_data(source, dir.sub("other"));
  CHECK(stale.code() == ErrorCode::invalid);
  CHECK(stale.status().message().find("did not finish") != std::string::npos);
  CHECK(backup_data(dir.sub("missing"), dir.sub("third")).code() == ErrorCode::not_found);
}

TEST_CASE("a backup refuses a directory its own process holds, and a destination inside it") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  std::unique_ptr<Ledger> ledger = open_ledger(small_ledger(source));
  REQUIRE(mutate(*ledger, "k", 0, 5));
  auto refused = backup_data(source, dir.sub("backup"));
  REQUIRE(refused.code() == ErrorCode::invalid);
  CHECK(refused.status().message().find("a ledger of this process has") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.sub("backup.partial")));
  REQUIRE(ledger->close().ok());
  for (const std::string& inside : {source, source + "/copy", log_dir(source) + "/copy"}) {
    CAPTURE(inside);
    CHECK(backup_data(source, inside).code() == ErrorCode::invalid);
  }
  // A trailing slash names the same destination. Progress: the stores'
  // bytes, every byte of the segments copied, then every event read back.
  std::uint64_t store_bytes = 0;
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  std::uint64_t events_done = 0;
  bool in_order = true;
  const auto progress = [&](BackupStage stage, std::uint64_t done, std::uint64_t total) {
    switch (stage) {
      case BackupStage::store_bytes:
        in_order = in_order && bytes_done == 0 && done > store_bytes && total == 0;
        store_bytes = done;
        break;
      case BackupStage::log_bytes:
        in_order = in_order && events_done == 0 && done > bytes_done;
        bytes_done = done;
        bytes_total = total;
        break;
      case BackupStage::log_events:
        in_order = in_order && done == events_done + 1;
        events_done = done;
        break;
    }
  };
  auto report = backup_data(source, dir.sub("backup") + "//", nullptr, progress);
  REQUIRE_MESSAGE(report.ok(), report.status().to_string());
  CHECK(in_order);
  REQUIRE(report->history_seq.has_value());
  std::uint64_t stored = 0;
  for (const std::string& store :
       {snapshot_dir(dir.sub("backup")), history_dir(dir.sub("backup"))}) {
    std::error_code absent;
    const std::uintmax_t size = std::filesystem::file_size(store + "/data.mdb", absent);
    if (!absent) stored += size;
  }
  CHECK(store_bytes == stored);
  CHECK(bytes_done == report->log_bytes);
  CHECK(bytes_total == report->log_bytes);
  CHECK(events_done == report->last_seq);
  CHECK(std::filesystem::exists(dir.sub("backup")));
  CHECK_FALSE(std::filesystem::exists(dir.sub("backup.partial")));
  check_backup(source, dir.sub("backup"), *report);
}

TEST_CASE("a ledger backs itself up while its own threads write, through its own stores") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  // Snapshots on demand only: a follower that wrote one every 300 events
  // would lag far behind these threads, and take long to catch up at close.
  LedgerOptions options = small_ledger(source);
  options.snapshot_every_events = 0;
  options.snapshot_every_seconds = 3600;
  std::unique_ptr<Ledger> ledger = open_ledger(options);
  // A snapshot to copy, taken before the load: under it, a follower that
  // may not leave SCHED_IDLE (docs/snapshots.md) would take it only later.
  REQUIRE(mutate(*ledger, "first-", 0, 5));
  auto snapshot = ledger->snapshot_now();
  REQUIRE_MESSAGE(snapshot.ok(), snapshot.status().to_string());
  std::atomic<bool> stop{false};
  std::atomic<bool> mutated{true};
  std::thread writer([&] {
    for (int round = 0; !stop.load() && mutated.load(); round++) {
      mutated.store(mutate(*ledger, testing::name("r", round) + "-", 0, 20));
    }
  });
  std::vector<std::pair<std::string, BackupReport>> backups;
  for (int index = 0; index < 2000 && (backups.size() < 3 || backups.back().second.segments < 2);
       index++) {
    const std::string out = dir.sub(testing::name("backup", index));
    auto report = ledger->backup(out);
    REQUIRE_MESSAGE(report.ok(), report.status().to_string());
    CHECK(report->left_out.empty());
    CHECK(report->history_seq.has_value());
    CHECK(report->history_seq.value_or(0) <= report->last_seq);
    backups.emplace_back(out, *report);
  }
  stop.store(true);
  writer.join();
  CHECK(mutated.load());
  REQUIRE(backups.size() >= 3);
  CHECK(backups.back().second.segments > 1);
  for (const auto& [out, report] : backups) CHECK(report.snapshots.value_or(0) > 0);
  // The ledger's stores are still its own: it snapshots and reads on.
  CHECK(ledger->snapshot_now().ok());
  CHECK(ledger->balance("s1", "gold", AsOf::at_seq(1)).ok());
  REQUIRE(ledger->close().ok());
  CHECK(ledger->backup(dir.sub("after-close")).code() == ErrorCode::closed);
  for (const auto& [out, report] : backups) {
    CAPTURE(report.last_seq);
    check_backup(source, out, report);
  }
}

TEST_CASE("close() cancels a backup under way and waits for it; later backups are closed") {
  testing::TempDir dir;
  const std::string source = dir.sub("data");
  std::unique_ptr<Ledger> ledger = open_ledger(small_ledger(source));
  REQUIRE(mutate(*ledger, "k", 0, 200));  // segments of several MiB in all
  std::atomic<bool> copying{false};
  std::atomic<bool> closing{false};
  const auto progress = [&](BackupStage, std::uint64_t, std::uint64_t) {
    copying.store(true);
    // Held up until close() is about to begin, then a little longer.
    while (!closing.load()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  Result<BackupReport> report = Status(ErrorCode::invalid, "not run");
  std::thread backup([&] { report = ledger->backup(dir.sub("backup"), progress); });
  while (!copying.load()) std::this_thread::yield();
  closing.store(true);
  CHECK(ledger->close().ok());
  // close() returned only once the backup had: its result is in, and the
  // ledger may go.
  backup.join();
  ledger.reset();
  if (report.ok()) {
    check_backup(source, dir.sub("backup"), *report);
  } else {
    CHECK(report.code() == ErrorCode::closed);
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup")));
  }
  CHECK_FALSE(std::filesystem::exists(dir.sub("backup.partial")));
}

TEST_CASE("close() stops a backup inside a store's copy") {
  testing::TempDir dir;
  // A snapshot of many long keys: a copy of several MiB.
  std::unique_ptr<Ledger> ledger = open_snapshotted(dir.sub("data"), std::string(200, 'k'), 4000);
  std::uint64_t store_bytes = 0;
  auto whole = ledger->backup(dir.sub("whole"), [&](BackupStage stage, std::uint64_t done,
                                                     std::uint64_t) {
    if (stage == BackupStage::store_bytes) store_bytes = done;
  });
  REQUIRE_MESSAGE(whole.ok(), whole.status().to_string());
  REQUIRE(store_bytes > 3 * (std::uint64_t{1} << 20));

  // The first MiB of the copy is written; close() begins, and the copy
  // stops there: the log is never reached.
  std::atomic<int> store_reports{0};
  std::atomic<bool> log_reached{false};
  std::atomic<bool> closing{false};
  const auto progress = [&](BackupStage stage, std::uint64_t, std::uint64_t) {
    if (stage != BackupStage::store_bytes) {
      log_reached.store(true);
      return;
    }
    if (store_reports.fetch_add(1) > 0) return;
    while (!closing.load()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  Result<BackupReport> report = Status(ErrorCode::invalid, "not run");
  std::thread backup([&] { report = ledger->backup(dir.sub("backup"), progress); });
  while (store_reports.load() == 0) std::this_thread::yield();
  closing.store(true);
  CHECK(ledger->close().ok());
  backup.join();
  CHECK(report.code() == ErrorCode::closed);
  CHECK(store_reports.load() == 1);
  CHECK_FALSE(log_reached.load());
  CHECK_FALSE(std::filesystem::exists(dir.sub("backup")));
  CHECK_FALSE(std::filesystem::exists(dir.sub("backup.partial")));
}

TEST_CASE("a progress callback that throws ends the backup, reaches the caller, leaves nothing") {
  testing::TempDir dir;
  std::unique_ptr<Ledger> ledger = open_snapshotted(dir.sub("data"), "k", 200);
  CHECK(ledger->backup("").code() == ErrorCode::invalid);
  // In a store's copy (its own thread writes the copy), in the log's, and
  // in the read back of the copy.
  for (const BackupStage thrown_at :
       {BackupStage::store_bytes, BackupStage::log_bytes, BackupStage::log_events}) {
    CAPTURE(static_cast<int>(thrown_at));
    const auto progress = [&](BackupStage stage, std::uint64_t, std::uint64_t) {
      if (stage == thrown_at) throw std::runtime_error("stop here");
    };
    CHECK_THROWS_WITH_AS(static_cast<void>(ledger->backup(dir.sub("backup"), progress)),
                         "stop here", std::runtime_error);
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup")));
    CHECK_FALSE(std::filesystem::exists(dir.sub("backup.partial")));
  }
  auto report = ledger->backup(dir.sub("backup"));
  CHECK_MESSAGE(report.ok(), report.status().to_string());
  CHECK(ledger->close().ok());
}

}  // namespace
}  // namespace tally
