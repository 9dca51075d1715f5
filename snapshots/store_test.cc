#include "snapshots/store.h"

#include <doctest.h>
#include <grp.h>
#include <lmdb.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "log/lock.h"
#include "projections/state_fixture.h"
#include "snapshots/format.h"
#include "snapshots/history.h"
#include "snapshots/lmdb_util.h"
#include "snapshots/renew.h"
#include "snapshots/store_edit.h"
#include "tests/testing.h"

namespace tally::snap {
namespace {

using proj::Feed;
using proj::kWindowNs;
using proj::ScriptHolds;
using proj::State;
using proj::StateOptions;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

constexpr SnapshotStore::Later kDropLater = SnapshotStore::Later::drop;

SnapshotStoreOptions small_options() {
  SnapshotStoreOptions options;
  options.map_size_bytes = 1 << 20;
  options.chunk_bytes = kChunkBytesMin;
  return options;
}

std::unique_ptr<SnapshotStore> open_store(const TempDir& dir,
                                          SnapshotStoreOptions options = small_options()) {
  Result<std::unique_ptr<SnapshotStore>> store = SnapshotStore::open(dir.sub("snapshots"), options);
  REQUIRE_MESSAGE(store.ok(), store.status().to_string());
  return std::move(store).value();
}

LogPosition position_of(const State& state) {
  return LogPosition{state.last_seq(), 0xc0ffee00 + state.last_seq(), state.last_timestamp_ns()};
}

SnapshotInfo write_ok(SnapshotStore* store, const State& state) {
  Result<SnapshotInfo> info = store->write(state, position_of(state));
  REQUIRE_MESSAGE(info.ok(), info.status().to_string());
  return *info;
}

// Runs the script to its end, writing a snapshot after every event.
struct ScriptRun {
  State state{StateOptions{kWindowNs}};
  ScriptHolds holds;
  std::vector<std::uint64_t> digests;  // by seq; [0] is the empty state
};

void run_script(SnapshotStore* store, ScriptRun* run) {
  Feed feed({&run->state});
  run->digests.push_back(run->state.digest());
  for (const proj::Step& step : proj::script()) {
    REQUIRE_OK(step(feed, run->holds));
    run->digests.push_back(run->state.digest());
    if (store != nullptr) write_ok(store, run->state);
  }
}

// run_script into the store in `dir`, pruned to the newest `retain`, closed.
void run_script_kept(const TempDir& dir, ScriptRun* run, std::size_t retain) {
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  run_script(store.get(), run);
  REQUIRE(store->prune(retain, UINT64_MAX, kWindowNs, kDropLater).ok());
}

TEST_CASE("snapshot + tail replay equals full replay, from every event of the script") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  ScriptRun full;
  run_script(store.get(), &full);
  const std::vector<proj::Step> steps = proj::script();
  for (std::uint64_t max_seq = 1; max_seq <= steps.size(); max_seq++) {
    CAPTURE(max_seq);
    std::vector<SkippedSnapshot> skipped;
    Result<LoadedSnapshot> loaded =
        store->load_newest_valid(max_seq, StateOptions{kWindowNs}, &skipped);
    REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
    CHECK(loaded->info.seq == max_seq);
    CHECK(loaded->info.chain_checksum == 0xc0ffee00 + max_seq);
    CHECK(skipped.size() == steps.size() - max_seq);  // the newer ones, past max_seq
    State& restored = *loaded->state;
    CHECK(restored.digest() == full.digests[max_seq]);
    // Replay the tail onto the restored State, as recovery will.
    Feed tail({&restored});
    tail.now_ns = restored.last_timestamp_ns();
    ScriptHolds holds = full.holds;
    for (std::size_t index = max_seq; index < steps.size(); index++) {
      REQUIRE_OK(steps[index](tail, holds));
      CHECK(restored.digest() == full.digests[index + 1]);
    }
  }
}

TEST_CASE("list shows seq, time, size and digest, oldest first; prune keeps the newest usable") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  ScriptRun run;
  run_script(store.get(), &run);
  Result<std::vector<SnapshotInfo>> listed = store->list();
  REQUIRE(listed.ok());
  REQUIRE(listed->size() == run.digests.size() - 1);
  for (std::size_t index = 0; index < listed->size(); index++) {
    const SnapshotInfo& info = (*listed)[index];
    CHECK(info.metadata_ok);
    CHECK(info.seq == index + 1);
    CHECK(info.digest == run.digests[index + 1]);
    CHECK(info.size_bytes > 0);
    CHECK(info.chunk_count >= 1);
    CHECK(info.time_ns >= proj::kStartNs);
  }
  // Writing the same seq again replaces it.
  write_ok(store.get(), run.state);
  CHECK(store->list()->size() == run.digests.size() - 1);

  Result<std::size_t> pruned = store->prune(3, UINT64_MAX, kWindowNs, kDropLater);
  REQUIRE(pruned.ok());
  CHECK(*pruned == run.digests.size() - 1 - 3);
  listed = store->list();
  REQUIRE(listed->size() == 3);
  CHECK(listed->back().seq == run.state.last_seq());
  CHECK(listed->front().seq == run.state.last_seq() - 2);
  CHECK(*store->prune(5, UINT64_MAX, kWindowNs, kDropLater) == 0);
  // Past the seq given, kept (another writer's, of the same log) outside
  // the count: the one before the seq given goes, the one past it stays.
  const std::uint64_t last = run.state.last_seq();
  CHECK(*store->prune(1, last - 1, kWindowNs, SnapshotStore::Later::keep) == 1);
  listed = store->list();
  REQUIRE(listed->size() == 2);
  CHECK(listed->front().seq == last - 1);
  CHECK(listed->back().seq == last);
  // Or a lost tail's, gone whatever the count.
  CHECK(*store->prune(5, last - 1, kWindowNs, kDropLater) == 1);
  listed = store->list();
  REQUIRE(listed->size() == 1);
  CHECK(listed->back().seq == last - 1);
  CHECK(*store->prune(0, UINT64_MAX, kWindowNs, kDropLater) == 1);
  CHECK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr).code() ==
        ErrorCode::not_found);
}

std::function<void(std::vector<std::uint8_t>*)> flip_byte(std::size_t at) {
  return [at](std::vector<std::uint8_t>* bytes) {
    REQUIRE(at < bytes->size());
    (*bytes)[at] ^= 0x20;
  };
}

void flip_chunk_byte(const TempDir& dir, std::uint64_t seq, std::uint32_t chunk, std::size_t at) {
  edit_record(dir.sub("snapshots"), kChunksDbName, record_key(seq, chunk), flip_byte(at));
}

void flip_meta_byte(const TempDir& dir, std::uint64_t seq, std::size_t at) {
  edit_record(dir.sub("snapshots"), kMetaDbName, record_key(seq, std::nullopt), flip_byte(at));
}

TEST_CASE("prune keeps the newest a ledger of its window can load, and others only among them") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  State mine(StateOptions{kWindowNs});
  State other(StateOptions{kWindowNs * 2});  // a ledger opened with another window
  Feed feed({&mine, &other});
  // Seqs 1..6, taken alternately by each: mine at 1, 3, 5; other at 2, 4, 6.
  for (int index = 1; index <= 6; index++) {
    std::string key = "k";
    key += std::to_string(index);
    REQUIRE_OK(feed.one(key, proj::acquire_op("alice", "gold", 1)));
    write_ok(store.get(), index % 2 == 1 ? mine : other);
  }
  const auto seqs = [&] {
    Result<std::vector<SnapshotInfo>> listed = store->list();
    REQUIRE(listed.ok());
    std::vector<std::uint64_t> out;
    for (const SnapshotInfo& info : *listed) out.push_back(info.seq);
    return out;
  };
  // The two of its window kept are 3 and 5; 4 and 6 lie among them or past.
  CHECK(*store->prune(2, UINT64_MAX, kWindowNs, kDropLater) == 2);
  CHECK(seqs() == std::vector<std::uint64_t>{3, 4, 5, 6});
  CHECK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr)->info.seq == 5);
  // The other ledger's view: its newest is 6, then 4.
  CHECK(*store->prune(2, UINT64_MAX, kWindowNs * 2, kDropLater) == 1);
  CHECK(seqs() == std::vector<std::uint64_t>{4, 5, 6});
  // None of its window: nothing counts, nothing goes but what is past the seq.
  CHECK(*store->prune(1, 5, kWindowNs * 3, kDropLater) == 1);
  CHECK(seqs() == std::vector<std::uint64_t>{4, 5});
}

TEST_CASE("newest_window is the window of the newest snapshot whose payload verifies") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  CHECK(*store->newest_window() == std::nullopt);
  State mine(StateOptions{kWindowNs});
  State other(StateOptions{0});  // a ledger that remembers keys forever
  Feed feed({&mine, &other});
  REQUIRE_OK(feed.one("k1", proj::acquire_op("alice", "gold", 1)));
  write_ok(store.get(), mine);
  REQUIRE_OK(feed.one("k2", proj::acquire_op("alice", "gold", 1)));
  write_ok(store.get(), other);
  CHECK(*store->newest_window() == std::optional<std::int64_t>(0));
  store.reset();
  flip_chunk_byte(dir, 2, 0, 40);  // past the header: only the checksum tells
  store = open_store(dir);
  CHECK(*store->newest_window() == std::optional<std::int64_t>(kWindowNs));
}

TEST_CASE("a store hashes each payload once, whether newest_window or a load comes first") {
  TempDir dir;
  ScriptRun run;
  run_script_kept(dir, &run, 3);
  const std::uint64_t newest = run.state.last_seq();
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  CHECK(store->payload_hashes() == 0);
  CHECK(*store->newest_window() == std::optional<std::int64_t>(kWindowNs));
  CHECK(store->payload_hashes() == 1);
  Result<LoadedSnapshot> loaded =
      store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr);
  REQUIRE_OK(loaded.status());
  CHECK(loaded->info.seq == newest);
  CHECK(store->payload_hashes() == 1);
  store.reset();  // one environment per process
  store = open_store(dir);
  REQUIRE_OK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr).status());
  CHECK(*store->newest_window() == std::optional<std::int64_t>(kWindowNs));
  CHECK(store->payload_hashes() == 1);

  // A damaged payload is never taken as checked: the load hashes it again,
  // refuses it and falls back.
  store.reset();
  flip_chunk_byte(dir, newest, 0, 40);
  store = open_store(dir);
  CHECK(*store->newest_window() == std::optional<std::int64_t>(kWindowNs));
  CHECK(store->payload_hashes() == 2);  // the damaged one, then the one before
  std::vector<SkippedSnapshot> skipped;
  loaded = store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped);
  REQUIRE_OK(loaded.status());
  CHECK(loaded->info.seq < newest);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].seq == newest);
  CHECK(store->payload_hashes() == 3);
}

TEST_CASE("a payload written again at a seq the store checked is hashed again") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  State first(StateOptions{kWindowNs});
  Feed feed({&first});
  REQUIRE_OK(feed.one("k1", proj::acquire_op("alice", "gold", 1)));
  write_ok(store.get(), first);
  REQUIRE_OK(feed.one("k2", proj::acquire_op("alice", "gold", 2)));
  write_ok(store.get(), first);
  REQUIRE_OK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr).status());
  CHECK(store->payload_hashes() == 0);  // it wrote both

  // Another process (another ledger's `tally snapshot` after a restore)
  // replaces seq 2 with a state of its own, whose payload is then damaged.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int code = 1;
    try {
      State second(StateOptions{kWindowNs});
      Feed other({&second});
      const bool fed = other.one("k1", proj::acquire_op("bob", "silver", 5)).ok() &&
                       other.one("k2", proj::acquire_op("bob", "silver", 6)).ok();
      auto writer = SnapshotStore::open(dir.sub("snapshots"), small_options());
      if (fed && writer.ok() && (*writer)->prune(1, 1, kWindowNs, kDropLater).ok() &&
          (*writer)->write(second, position_of(second)).ok()) {
        writer->reset();
        flip_chunk_byte(dir, 2, 0, 40);  // past the header: only the checksum tells
        code = 0;
      }
    } catch (...) {  // a REQUIRE in flip_chunk_byte
      code = 2;
    }
    ::_exit(code);
  }
  int wait_status = 0;
  REQUIRE(::waitpid(child, &wait_status, 0) == child);
  REQUIRE(WIFEXITED(wait_status));
  REQUIRE(WEXITSTATUS(wait_status) == 0);

  // Checked before at this seq, but under another checksum: hashed, refused.
  std::vector<SkippedSnapshot> skipped;
  Result<LoadedSnapshot> loaded =
      store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped);
  REQUIRE_OK(loaded.status());
  CHECK(loaded->info.seq == 1);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].seq == 2);
  CHECK(store->payload_hashes() == 1);
}

TEST_CASE("prune does not count a snapshot whose payload is damaged") {
  TempDir dir;
  ScriptRun run;
  run_script_kept(dir, &run, 3);
  const std::uint64_t newest = run.state.last_seq();
  flip_chunk_byte(dir, newest - 1, 0, 40);  // past the header: the window still reads
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  // The two loadable are newest and newest - 2; the damaged one lies among them.
  CHECK(*store->prune(2, UINT64_MAX, kWindowNs, kDropLater) == 0);
  Result<std::vector<SnapshotInfo>> listed = store->list();
  REQUIRE(listed.ok());
  REQUIRE(listed->size() == 3);
  CHECK(listed->front().seq == newest - 2);
  CHECK(*store->prune(1, UINT64_MAX, kWindowNs, kDropLater) == 2);
  CHECK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr)->info.seq == newest);
}

TEST_CASE("prune deletes a record past the seq given whose metadata is damaged") {
  TempDir dir;
  ScriptRun run;
  run_script_kept(dir, &run, 4);
  const std::uint64_t newest = run.state.last_seq();
  flip_meta_byte(dir, newest, 3);
  bump_meta_version(dir.sub("snapshots"), newest - 1);
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  REQUIRE(store->list().ok());
  CHECK_FALSE(store->list()->back().metadata_ok);
  CHECK_FALSE(store->list()->back().metadata_other_version);
  // Another writer's snapshot past the seq given stays, another version's
  // too; a damaged record's seq says nothing (its key may be the damaged
  // byte), and it never loads.
  CHECK(*store->prune(1, newest - 2, kWindowNs, SnapshotStore::Later::keep) == 2);
  Result<std::vector<SnapshotInfo>> listed = store->list();
  REQUIRE(listed.ok());
  REQUIRE(listed->size() == 2);
  CHECK(listed->front().seq == newest - 2);
  CHECK(listed->front().metadata_ok);
  CHECK(listed->back().seq == newest - 1);
  CHECK_FALSE(listed->back().metadata_ok);
  CHECK(listed->back().metadata_other_version);
}

TEST_CASE("a corrupt newest snapshot falls back to the older; all corrupt is not_found") {
  TempDir dir;
  ScriptRun run;
  run_script_kept(dir, &run, 2);
  const std::uint64_t newest = run.state.last_seq();
  flip_chunk_byte(dir, newest, 0, 40);
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  std::vector<SkippedSnapshot> skipped;
  std::atomic<std::uint64_t> loading{0};  // the seq of the snapshot whose load began last
  Result<LoadedSnapshot> loaded =
      store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped, nullptr, &loading);
  REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
  CHECK(loaded->info.seq == newest - 1);
  CHECK(loading.load() == newest - 1);
  CHECK(loaded->state->digest() == run.digests[newest - 1]);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].seq == newest);
  CHECK(skipped[0].why.code() == ErrorCode::corrupt);
  CHECK(skipped[0].why.message().find("checksum") != std::string::npos);

  store.reset();
  flip_chunk_byte(dir, newest - 1, 0, 0);
  store = open_store(dir);
  skipped.clear();
  CHECK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped).code() ==
        ErrorCode::not_found);
  CHECK(skipped.size() == 2);
}

TEST_CASE("a byte flipped in the data file is caught and skipped") {
  TempDir dir;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  std::uint64_t older_digest = 0;
  {
    std::unique_ptr<SnapshotStore> store = open_store(dir);
    REQUIRE_OK(feed.one("k1", proj::acquire_op("alice", "gold", 5)));
    write_ok(store.get(), state);
    older_digest = state.digest();
    // A name only the newest snapshot holds, to find its bytes in the file.
    REQUIRE_OK(feed.one("k2", proj::acquire_op("only-in-the-newest-snapshot", "gold", 5)));
    write_ok(store.get(), state);
  }
  const std::string data_path = dir.sub("snapshots") + "/data.mdb";
  std::string data = read_file(data_path);
  const std::string marker = "only-in-the-newest-snapshot";
  std::size_t flipped = 0;
  // Copy-on-write may leave stale copies in free pages; flip them all.
  for (std::size_t at = data.find(marker); at != std::string::npos;
       at = data.find(marker, at + 1)) {
    data[at + 3] ^= 0x01;
    flipped++;
  }
  REQUIRE(flipped >= 1);
  write_file(data_path, data);
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  std::vector<SkippedSnapshot> skipped;
  Result<LoadedSnapshot> loaded =
      store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped);
  REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
  CHECK(loaded->info.seq == 1);
  CHECK(loaded->state->digest() == older_digest);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].seq == 2);
}

// open_renewing on a damaged store: a new, empty one, the old set aside.
void check_renewed(const std::string& snapshots) {
  auto renewed = open_renewing<SnapshotStore>(snapshots, small_options());
  REQUIRE_MESSAGE(renewed.ok(), renewed.status().to_string());
  auto infos = (*renewed)->list();
  REQUIRE(infos.ok());
  CHECK(infos->empty());
  CHECK(std::filesystem::exists(snapshots + ".damaged/data.mdb"));
}

TEST_CASE("a truncated or foreign data file is corrupt, never a crash, and is set aside for a new one") {
  for (const bool truncated : {true, false}) {
    CAPTURE(truncated);
    TempDir dir;
    State state(StateOptions{kWindowNs});
    Feed feed({&state});
    {
      std::unique_ptr<SnapshotStore> store = open_store(dir);
      // Enough names that the image takes pages well past the first few.
      for (int index = 0; index < 2000; index++) {
        std::string key = "k";
        key += std::to_string(index);
        REQUIRE_OK(feed.one(key, proj::acquire_op(key, "gold", 5)));
      }
      write_ok(store.get(), state);
    }
    const std::string snapshots = dir.sub("snapshots");
    const std::string data_path = snapshots + "/data.mdb";
    if (truncated) {
      // The meta pages stay; the pages they point at are gone.
      std::filesystem::resize_file(data_path, 3 * 4096);
    } else {
      write_file(data_path, std::string(64 * 1024, 'x'));
    }
    auto reopened = SnapshotStore::open(snapshots, small_options());
    REQUIRE(reopened.code() == ErrorCode::corrupt);
    CHECK(reopened.status().message().find(truncated ? "truncated" : "MDB_INVALID") !=
          std::string::npos);

    check_renewed(snapshots);
  }
}

TEST_CASE("a damaged page size or last page in either meta page is corrupt and set aside") {
  // mm_psize, bytes 40..43 of each meta page (snapshots/tree_check.cc):
  // 4096 made 4096 | 1 << 24 (LMDB died with SIGBUS), 0 (SIGFPE), 4097.
  // mm_last_pg, bytes 136..143: 256 pages past the file's end, and 2^40
  // more (mdb_env_open failed ENOMEM, an io_error at every open).
  struct Flip {
    std::uint64_t byte;
    unsigned char mask;
    const char* said;
  };
  constexpr const char* kPageSize = " names a page size of";
  constexpr const char* kLastPage = " names page ";
  for (const std::uint64_t page : {0, 1}) {
    for (const Flip flip : {Flip{43, 0x01, kPageSize}, Flip{41, 0x10, kPageSize},
                            Flip{40, 0x01, kPageSize}, Flip{137, 0x01, kLastPage},
                            Flip{141, 0x01, kLastPage}}) {
      CAPTURE(page);
      CAPTURE(flip.byte);
      TempDir dir;
      State state(StateOptions{kWindowNs});
      Feed feed({&state});
      {
        std::unique_ptr<SnapshotStore> store = open_store(dir);
        REQUIRE_OK(feed.one("k", proj::acquire_op("k", "gold", 5)));
        write_ok(store.get(), state);
      }
      const std::string snapshots = dir.sub("snapshots");
      const std::string data_path = snapshots + "/data.mdb";
      {
        std::fstream file(data_path, std::ios::in | std::ios::out | std::ios::binary);
        const auto at = static_cast<std::streamoff>(page * 4096 + flip.byte);
        char byte = 0;
        file.seekg(at);
        file.read(&byte, 1);
        byte = static_cast<char>(byte ^ static_cast<char>(flip.mask));
        file.seekp(at);
        file.write(&byte, 1);
        REQUIRE(file.good());
      }
      SnapshotStoreOptions read_only = small_options();
      read_only.read_only = true;
      for (const SnapshotStoreOptions& options : {read_only, small_options()}) {
        auto reopened = SnapshotStore::open(snapshots, options);
        REQUIRE(reopened.code() == ErrorCode::corrupt);
        CHECK(reopened.status().message().find("meta page " + std::to_string(page) +
                                               flip.said) != std::string::npos);
      }
      check_renewed(snapshots);
    }
  }
}

TEST_CASE("a data file of the other store is corrupt, read or written, and is set aside") {
  TempDir dir;
  State state(StateOptions{kWindowNs});
  Feed feed({&state});
  REQUIRE_OK(feed.one("k", proj::acquire_op("a", "gold", 5)));
  write_ok(open_store(dir).get(), state);
  REQUIRE(HistoryStore::open(dir.sub("history"), HistoryStoreOptions{}).ok());
  // Each store's file copied where the other belongs (an operator's slip).
  const auto swapped = [&](const std::string& from, const std::string& to) {
    std::filesystem::create_directory(dir.sub(to));
    std::filesystem::copy_file(dir.sub(from) + "/data.mdb", dir.sub(to) + "/data.mdb");
    return dir.sub(to);
  };
  const std::string history_copy = swapped("snapshots", "history-copy");
  const std::string snapshots_copy = swapped("history", "snapshots-copy");
  for (const bool read_only : {true, false}) {
    HistoryStoreOptions history_options;
    history_options.read_only = read_only;
    auto history = HistoryStore::open(history_copy, history_options);
    REQUIRE(history.code() == ErrorCode::corrupt);
    CHECK(history.status().message() ==
          "history: the file holds a database 'chunks', which is not this store's");
    SnapshotStoreOptions snapshot_options = small_options();
    snapshot_options.read_only = read_only;
    auto snapshots = SnapshotStore::open(snapshots_copy, snapshot_options);
    REQUIRE(snapshots.code() == ErrorCode::corrupt);
    CHECK(snapshots.status().message().find("a database 'entries'") != std::string::npos);
  }
  check_renewed(snapshots_copy);
}

// A closed store in dir/snapshots holding a snapshot of every step of the
// script (LMDB's copy-on-write has freed pages too); its path.
std::string script_store(const TempDir& dir) {
  ScriptRun run;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  run_script(store.get(), &run);
  return dir.sub("snapshots");
}

TEST_CASE("damage to any page of the store's trees is corrupt at open or skipped, never a crash") {
  TempDir dir;
  const std::string snapshots = script_store(dir);
  const std::string data_path = snapshots + "/data.mdb";
  const std::string bytes = read_file(data_path);
  std::vector<SnapshotInfo> before;
  {
    auto store = SnapshotStore::open(snapshots, small_options());
    REQUIRE(store.ok());
    before = (*store)->list().value();
  }
  // Every page, the live ones (tree, overflow) and the free.
  REQUIRE(bytes.size() >= 8 * 4096);
  std::string found_at_open;  // the last damaged file that did not open
  testing::for_each_page_damage(bytes, [&](std::size_t page, const std::string& damaged) {
    CAPTURE(page);
    write_file(data_path, damaged);
    auto store = SnapshotStore::open(snapshots, small_options());
    if (!store.ok()) {
      CHECK(store.code() == ErrorCode::corrupt);
      found_at_open = damaged;
      return;
    }
    // What opens reads without a crash: every snapshot it lists loads, or
    // is skipped as damaged.
    auto listed = (*store)->list();
    if (!listed.ok()) {
      CHECK(listed.code() == ErrorCode::corrupt);
      return;
    }
    CHECK(listed->size() <= before.size());
    std::vector<SkippedSnapshot> skipped;
    auto loaded = (*store)->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped);
    if (!loaded.ok()) {
      CHECK(loaded.code() == ErrorCode::not_found);
      return;
    }
    const bool known = std::any_of(before.begin(), before.end(), [&](const SnapshotInfo& info) {
      return info.seq == loaded->info.seq && info.digest == loaded->state->digest();
    });
    CHECK(known);
  });
  REQUIRE(!found_at_open.empty());
  write_file(data_path, found_at_open);
  check_renewed(snapshots);
}

TEST_CASE("a store whose free list does not hold together is set aside for a new one") {
  TempDir dir;
  const std::string snapshots = script_store(dir);
  // The first free-list record's bytes, read as mdb_stat -f reads them.
  std::string record;
  {
    MDB_env* env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_set_maxdbs(env, 4) == 0);
    REQUIRE(mdb_env_open(env, snapshots.c_str(), MDB_RDONLY, 0644) == 0);
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) == 0);
    MDB_cursor* cursor = nullptr;
    REQUIRE(mdb_cursor_open(txn, 0, &cursor) == 0);
    MDB_val key{};
    MDB_val value{};
    REQUIRE(mdb_cursor_get(cursor, &key, &value, MDB_FIRST) == 0);
    record.assign(static_cast<const char*>(value.mv_data), value.mv_size);
    mdb_cursor_close(cursor);
    mdb_txn_abort(txn);
    mdb_env_close(env);
  }
  // Its count one off, wherever the record lies (older copies too), as a
  // flipped bit would leave it.
  std::string bytes = read_file(snapshots + "/data.mdb");
  int patched = 0;
  for (std::size_t at = bytes.find(record); at != std::string::npos;
       at = bytes.find(record, at + 1)) {
    bytes[at] = static_cast<char>(bytes[at] ^ 1);
    patched++;
  }
  REQUIRE(patched > 0);
  write_file(snapshots + "/data.mdb", bytes);
  auto damaged = SnapshotStore::open(snapshots, small_options());
  CHECK(damaged.code() == ErrorCode::corrupt);
  CHECK(damaged.status().message().find("free list") != std::string::npos);
  check_renewed(snapshots);
}

// Grows the free list of the store in `dir` to several pages: with a
// reader holding the first state, each of `commits` write transactions
// frees pages that stay listed under its own txnid. The records it writes
// it deletes again, so the store holds what it held.
void grow_free_list(const std::string& dir, int commits) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  REQUIRE(mdb_env_set_maxdbs(env, 4) == 0);
  REQUIRE(mdb_env_set_mapsize(env, std::size_t{64} << 20) == 0);
  REQUIRE(mdb_env_open(env, dir.c_str(), MDB_NOTLS, 0644) == 0);
  MDB_txn* reader = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, MDB_RDONLY, &reader) == 0);
  std::uint64_t filler = 0;
  for (int commit = 0; commit < commits; commit++) {
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
    MDB_dbi dbi = 0;
    REQUIRE(mdb_dbi_open(txn, kChunksDbName, 0, &dbi) == 0);
    // A key past every chunk's: u64 seq and u32 index, all ones.
    std::string key(12, '\xff');
    MDB_val key_val{key.size(), key.data()};
    if (commit % 2 == 0) {
      MDB_val value{sizeof filler, &++filler};
      REQUIRE(mdb_put(txn, dbi, &key_val, &value, 0) == 0);
    } else {
      REQUIRE(mdb_del(txn, dbi, &key_val, nullptr) == 0);
    }
    REQUIRE(mdb_txn_commit(txn) == 0);
  }
  mdb_txn_abort(reader);
  mdb_env_close(env);
}

std::uint64_t load_le(const std::string& bytes, std::size_t at) {
  std::uint64_t value = 0;
  std::memcpy(&value, bytes.data() + at, sizeof value);
  return value;
}

TEST_CASE("damage to any page of a free list of several pages is corrupt, never a crash") {
  TempDir dir;
  const std::string snapshots = script_store(dir);
  std::vector<SnapshotInfo> before;
  {
    auto store = SnapshotStore::open(snapshots, small_options());
    REQUIRE(store.ok());
    before = (*store)->list().value();
  }
  grow_free_list(snapshots, 600);
  const std::string data_path = snapshots + "/data.mdb";
  const std::string bytes = read_file(data_path);
  // The free database's root and depth, from the newer meta page (LMDB's
  // layout: MDB_db of the free database 40 bytes into the page; its depth
  // at +6, root at +40; the txnid at 160).
  constexpr std::size_t kPage = 4096;
  const std::size_t meta = load_le(bytes, 160) > load_le(bytes, kPage + 160) ? 0 : kPage;
  const std::uint64_t root = load_le(bytes, meta + 40 + 40);
  REQUIRE(static_cast<unsigned char>(bytes[meta + 40 + 6]) == 2);  // a branch over leaves
  // Every page of the tree: the root, then each child its nodes name (a
  // branch node: u16 offset to it after the 16-byte header; the child's
  // page number in its first six bytes).
  std::vector<std::uint64_t> pages{root};
  const std::size_t nodes = (load_le(bytes, root * kPage + 12) & 0xffff) / 2 - 8;
  for (std::size_t index = 0; index < nodes; index++) {
    const std::size_t at = root * kPage + (load_le(bytes, root * kPage + 16 + 2 * index) & 0xffff);
    pages.push_back(load_le(bytes, at) & 0xffffffffffff);
  }
  REQUIRE(pages.size() >= 3);
  {
    auto store = SnapshotStore::open(snapshots, small_options());
    REQUIRE_MESSAGE(store.ok(), store.status().to_string());
    CHECK((*store)->list().value().size() == before.size());
  }
  for (const std::uint64_t page : pages) {
    CAPTURE(page);
    for (const bool zeroed : {true, false}) {
      CAPTURE(zeroed);
      std::string damaged = bytes;
      for (std::size_t at = 0; at < kPage; at++) {
        // Zeroes, or bytes of no pattern that LMDB would follow.
        damaged[page * kPage + at] = zeroed ? '\0' : static_cast<char>((at * 131 + page) >> 1);
      }
      write_file(data_path, damaged);
      auto store = SnapshotStore::open(snapshots, small_options());
      CHECK(store.code() == ErrorCode::corrupt);
      CHECK(store.status().message().find("free list") != std::string::npos);
    }
  }
  check_renewed(snapshots);  // the last page damaged is still
}

TEST_CASE("a read-only store reads what a writer left and creates nothing") {
  TempDir dir;
  SnapshotStoreOptions read_only = small_options();
  read_only.read_only = true;
  const std::string path = dir.sub("snapshots");
  // Nothing there: not_found, and nothing made.
  CHECK(SnapshotStore::open(path, read_only).code() == ErrorCode::not_found);
  CHECK_FALSE(std::filesystem::exists(path));
  std::filesystem::create_directory(path);
  { std::ofstream empty(path + "/data.mdb"); }  // a writer stopped as it made it
  CHECK(SnapshotStore::open(path, read_only).code() == ErrorCode::not_found);
  CHECK(std::filesystem::file_size(path + "/data.mdb") == 0);
  CHECK_FALSE(std::filesystem::exists(path + "/lock.mdb"));
  ScriptRun run;
  {
    std::unique_ptr<SnapshotStore> writer = open_store(dir);
    run_script(writer.get(), &run);
  }
  auto reader = SnapshotStore::open(path, read_only);
  REQUIRE_MESSAGE(reader.ok(), reader.status().to_string());
  auto listed = (*reader)->list();
  REQUIRE(listed.ok());
  CHECK(listed->size() == run.digests.size() - 1);
  auto loaded = (*reader)->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr);
  REQUIRE(loaded.ok());
  CHECK(loaded->state->digest() == run.digests.back());
  CHECK_FALSE((*reader)->write(run.state, position_of(run.state)).ok());
}

// Runs `read` in a child process that may not write the store's lock.mdb:
// lock.mdb and the store's directory lose their write bits, and a child of
// root (which writes anything) becomes nobody. The child's exit code, or
// 100 + signal when it dies of one.
int read_without_write_access(const TempDir& dir, const std::function<int()>& read) {
  const std::string path = dir.sub("snapshots");
  namespace fs = std::filesystem;
  fs::permissions(path + "/lock.mdb", fs::perms::owner_write | fs::perms::group_write,
                  fs::perm_options::remove);
  fs::permissions(path, fs::perms::owner_write, fs::perm_options::remove);
  fs::permissions(dir.path(), fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec,
                  fs::perm_options::add);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    constexpr uid_t kNobody = 65534;
    const bool dropped = ::geteuid() != 0 ||
                         (::setgroups(0, nullptr) == 0 &&
                          ::setresgid(kNobody, kNobody, kNobody) == 0 &&
                          ::setresuid(kNobody, kNobody, kNobody) == 0);
    if (!dropped) ::_exit(99);
    ::_exit(read());
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  fs::permissions(path, fs::perms::owner_write, fs::perm_options::add);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

// Runs `body` in a child process whose files may not grow past `bytes` (a
// write past that fails EFBIG, as one fails ENOSPC on a full disk); its exit
// code, or 100 + the signal that ended it.
int with_file_size_limit(rlim_t bytes, const std::function<int()>& body) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{bytes, bytes};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(99);
    ::_exit(body());
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST_CASE("lock.mdb is made with its blocks; without room for it a writer fails, a reader reads") {
  TempDir dir;
  ScriptRun run;
  {
    std::unique_ptr<SnapshotStore> writer = open_store(dir);
    run_script(writer.get(), &run);
  }
  // LMDB writes lock.mdb through a shared mapping: a block the kernel had
  // to find for that write would end the process with SIGBUS on a full disk.
  const std::string lock_path = dir.sub("snapshots") + "/lock.mdb";
  struct stat lock_stat {};
  REQUIRE(::stat(lock_path.c_str(), &lock_stat) == 0);
  CHECK(lock_stat.st_size >= 8192);
  CHECK(lock_stat.st_blocks * 512 >= lock_stat.st_size);
  REQUIRE(::unlink(lock_path.c_str()) == 0);
  SnapshotStoreOptions read_only = small_options();
  read_only.read_only = true;
  const int read = with_file_size_limit(4096, [&] {
    auto reader = SnapshotStore::open(dir.sub("snapshots"), read_only);
    if (!reader.ok()) return 1;
    auto loaded = (*reader)->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr);
    return loaded.ok() && loaded->state->digest() == run.digests.back() ? 0 : 2;
  });
  CHECK(read == 0);
  const int written = with_file_size_limit(4096, [&] {
    auto writer = SnapshotStore::open(dir.sub("snapshots"), small_options());
    if (writer.code() != ErrorCode::io_error) return 1;
    return writer.status().message().find("lock.mdb") != std::string::npos ? 0 : 2;
  });
  CHECK(written == 0);
  // Nothing half made is left: no lock.mdb, no file it was made in.
  CHECK(std::filesystem::exists(lock_path) == false);
  std::size_t files = 0;
  const std::filesystem::directory_iterator store_files(dir.sub("snapshots"));
  for ([[maybe_unused]] const auto& entry : store_files) files++;
  CHECK(files == 1);  // data.mdb
  REQUIRE(open_store(dir) != nullptr);
  // One left without blocks (LMDB's own ftruncate(), by a process its
  // SIGBUS ended) keeps its size and gets them.
  REQUIRE(::unlink(lock_path.c_str()) == 0);
  {
    std::ofstream sparse(lock_path);
  }
  REQUIRE(::truncate(lock_path.c_str(), 8192) == 0);
  REQUIRE(open_store(dir) != nullptr);
  REQUIRE(::stat(lock_path.c_str(), &lock_stat) == 0);
  CHECK(lock_stat.st_size == 8192);
  CHECK(lock_stat.st_blocks * 512 >= 8192);
}

TEST_CASE("a reader without write access to lock.mdb reads while it keeps writers out") {
  TempDir dir;
  ScriptRun run;
  {
    std::unique_ptr<SnapshotStore> writer = open_store(dir);
    run_script(writer.get(), &run);
  }
  SnapshotStoreOptions read_only = small_options();
  read_only.read_only = true;
  // A LOCK file the child may open, so that what stops its writer is the lock.
  { std::ofstream lock_file(dir.sub("LOCK")); }
  std::filesystem::permissions(dir.sub("LOCK"), std::filesystem::perms::all);
  // Reads every snapshot, and no writer can take the data directory meanwhile.
  const int reads = read_without_write_access(dir, [&] {
    auto reader = SnapshotStore::open(dir.sub("snapshots"), read_only);
    if (!reader.ok()) return 1;
    auto loaded = (*reader)->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, nullptr);
    if (!loaded.ok() || loaded->state->digest() != run.digests.back()) return 2;
    if (log::DirLock::acquire(dir.path()).code() != ErrorCode::locked) return 3;
    // Nor `tally snapshot`, which writes the store without the DirLock.
    const auto snapshot_writer =
        log::DirFlock::acquire(dir.sub("snapshots"), log::DirFlock::Kind::exclusive);
    if (snapshot_writer.code() != ErrorCode::locked) return 5;
    reader->reset();
    return log::DirLock::acquire(dir.path()).ok() ? 0 : 4;
  });
  CHECK(reads == 0);
  // Beside a writer it says so, and reads nothing.
  auto writer = log::DirLock::acquire(dir.path());
  REQUIRE(writer.ok());
  // 0 when an open without write access is refused as locked, saying `why`.
  const auto refused = [&](const std::string& why) {
    return read_without_write_access(dir, [&] {
      auto reader = SnapshotStore::open(dir.sub("snapshots"), read_only);
      if (reader.code() != ErrorCode::locked) return 1;
      return reader.status().message().find(why) != std::string::npos ? 0 : 2;
    });
  };
  CHECK(refused("is open for writing; reading") == 0);
  writer.value().reset();
  // Beside `tally snapshot` writing the store, too.
  auto snapshot_writer =
      log::DirFlock::acquire(dir.sub("snapshots"), log::DirFlock::Kind::exclusive);
  REQUIRE(snapshot_writer.ok());
  CHECK(refused("is being written (tally snapshot)") == 0);
}

TEST_CASE("a different idempotency window skips the snapshot as invalid") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  ScriptRun run;
  run_script(store.get(), &run);
  REQUIRE(store->prune(1, UINT64_MAX, kWindowNs, kDropLater).ok());
  std::vector<SkippedSnapshot> skipped;
  CHECK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs * 2}, &skipped).code() ==
        ErrorCode::not_found);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].why.code() == ErrorCode::invalid);
}

TEST_CASE("a cancelled load stops with closed and passes over no snapshot") {
  TempDir dir;
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  ScriptRun run;
  run_script(store.get(), &run);
  std::atomic<bool> cancel{true};
  std::vector<SkippedSnapshot> skipped;
  std::atomic<std::uint64_t> loading{0};
  CHECK(store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped, &cancel,
                                 &loading).code() == ErrorCode::closed);
  CHECK(skipped.empty());  // none of them is bad: the load was stopped
  // Named as its load began, before the cancel stopped it.
  CHECK(loading.load() == run.digests.size() - 1);
  cancel = false;
  Result<LoadedSnapshot> loaded =
      store->load_newest_valid(UINT64_MAX, StateOptions{kWindowNs}, &skipped, &cancel);
  REQUIRE(loaded.ok());
  CHECK(loaded->info.seq == run.digests.size() - 1);
  CHECK(skipped.empty());
}

// A store with a 64 KiB map and a state of 3000 acquires under long keys,
// whose snapshot outgrows it.
struct SmallMapAndLongKeys {
  TempDir dir;
  SnapshotStoreOptions options = [] {
    SnapshotStoreOptions small = small_options();
    small.map_size_bytes = 64 * 1024;
    return small;
  }();
  std::unique_ptr<SnapshotStore> store = open_store(dir, options);
  State state{StateOptions{0}};
  Feed feed{{&state}};

  SmallMapAndLongKeys() {
    for (int index = 0; index < 3000; index++) {
      std::string key = "a-rather-long-idempotency-key-";
      key += std::to_string(index);
      REQUIRE_OK(feed.one(key, proj::acquire_op(key, "gold", 1)));
    }
  }
};

TEST_CASE("a full map grows and the write succeeds") {
  SmallMapAndLongKeys f;
  auto& [dir, options, store, state, feed] = f;
  const SnapshotInfo info = write_ok(store.get(), state);
  CHECK(info.size_bytes > options.map_size_bytes);
  Result<LoadedSnapshot> loaded = store->load_newest_valid(UINT64_MAX, StateOptions{0}, nullptr);
  REQUIRE(loaded.ok());
  CHECK(loaded->state->digest() == state.digest());

  options.map_size_bytes_max = options.map_size_bytes;
  store.reset();
  TempDir capped_dir;
  store = open_store(capped_dir, options);
  CHECK(store->write(state, position_of(state)).code() == ErrorCode::io_error);
  CHECK(store->list()->empty());  // nothing half-written
}

TEST_CASE("a store adopts the map another process grew, to read and to write") {
  SmallMapAndLongKeys f;
  auto& [dir, options, store, state, feed] = f;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Another process (a server beside `tally snapshot`) grows the map.
    auto other = SnapshotStore::open(dir.sub("snapshots"), options);
    ::_exit(other.ok() && (*other)->write(state, position_of(state)).ok() ? 0 : 1);
  }
  int wait_status = 0;
  REQUIRE(::waitpid(child, &wait_status, 0) == child);
  REQUIRE(WIFEXITED(wait_status));
  REQUIRE(WEXITSTATUS(wait_status) == 0);
  REQUIRE(std::filesystem::file_size(dir.sub("snapshots") + "/data.mdb") > 64 * 1024);
  auto listed = store->list();
  REQUIRE_MESSAGE(listed.ok(), listed.status().to_string());
  CHECK(listed->size() == 1);
  REQUIRE_OK(feed.one("one-more", proj::acquire_op("one-more", "gold", 1)));
  write_ok(store.get(), state);
  CHECK(store->list()->size() == 2);
}

TEST_CASE("a store reopened with a map smaller than its file grows it to rewrite and to prune") {
  // LMDB maps a file larger than the size asked for exactly as large as its
  // pages in use: the first page any write needs, a delete's too, is past
  // the map's end (MDB_MAP_FULL).
  TempDir dir;
  SnapshotStoreOptions options = small_options();
  options.map_size_bytes = 64 * 1024;
  State state(StateOptions{0});
  Feed feed({&state});
  const auto grow_state = [&](int events) {
    for (int index = 0; index < events; index++) {
      std::string key = "a-rather-long-idempotency-key-" + std::to_string(state.last_seq());
      REQUIRE_OK(feed.one(key, proj::acquire_op(key, "gold", 1)));
    }
  };
  std::vector<std::uint64_t> seqs;
  {
    std::unique_ptr<SnapshotStore> store = open_store(dir, options);
    for (int round = 0; round < 3; round++) {
      grow_state(1500);
      seqs.push_back(write_ok(store.get(), state).seq);
    }
  }
  {
    // The newest again, as `tally snapshot` does when no event came since.
    std::unique_ptr<SnapshotStore> store = open_store(dir, options);
    CHECK(write_ok(store.get(), state).seq == seqs.back());
  }
  std::unique_ptr<SnapshotStore> store = open_store(dir, options);
  Result<std::size_t> pruned =
      store->prune(1, UINT64_MAX, state.idempotency_window_ns(), kDropLater);
  REQUIRE_MESSAGE(pruned.ok(), pruned.status().to_string());
  CHECK(*pruned == 2);
  Result<std::vector<SnapshotInfo>> left = store->list();
  REQUIRE(left.ok());
  REQUIRE(left->size() == 1);
  CHECK(left->front().seq == seqs.back());
  Result<LoadedSnapshot> loaded = store->load_newest_valid(UINT64_MAX, StateOptions{0}, nullptr);
  REQUIRE(loaded.ok());
  CHECK(loaded->state->digest() == state.digest());
}

TEST_CASE("bad options, a position that is not the state's, and a state of no event are invalid") {
  TempDir dir;
  SnapshotStoreOptions options = small_options();
  options.chunk_bytes = 1;
  CHECK(SnapshotStore::open(dir.sub("snapshots"), options).code() == ErrorCode::invalid);
  std::unique_ptr<SnapshotStore> store = open_store(dir);
  State state;
  // Recovery begins after a snapshot's seq: one at seq 0 begins nothing.
  CHECK(store->write(state, position_of(state)).code() == ErrorCode::invalid);
  LogPosition position = position_of(state);
  position.seq = 7;
  CHECK(store->write(state, position).code() == ErrorCode::invalid);
  CHECK(store->list()->empty());
}

TEST_CASE("LMDB's EIO is named as what a full disk gives too; damage is corrupt") {
  const Status eio = lmdb::error("history", "commit", EIO);
  CHECK(eio.code() == ErrorCode::io_error);
  CHECK(eio.message().find("full disk") != std::string::npos);
  CHECK(lmdb::error("history", "commit", EACCES).message().find("full disk") == std::string::npos);
  CHECK(lmdb::error("history", "read", MDB_CORRUPTED).code() == ErrorCode::corrupt);
  CHECK(lmdb::error("history", "read", MDB_BAD_TXN).code() == ErrorCode::corrupt);
}

}  // namespace
}  // namespace tally::snap
