// tally snapshot: takes a snapshot of a data directory's state now, or lists
// its snapshots.
//
// Taking one replays the log (from the newest valid snapshot) read-only and
// writes the state to DATA/snapshots, then prunes. It never writes the log
// nor takes the directory's LOCK, so it runs beside a live `tally serve` on
// the same directory: LMDB serialises the two processes' writes to the
// snapshot environment. The state is the log's prefix this process read,
// which may include events a live writer with async durability has written
// and not yet synced: the snapshot syncs the log through its seq before it
// is written, so that a power loss cannot leave a snapshot ahead of the log
// (recovery would skip it, engine/replay.h, and with --retain 1 replay the
// whole log).
#include <chrono>
#include <filesystem>
#include <system_error>
#include <thread>

#include "engine/ledger.h"
#include "log/file.h"
#include "log/lock.h"
#include "log/reader.h"
#include "snapshots/renew.h"
#include "snapshots/store.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/format.h"
#include "tools/ledger_flags.h"

namespace tally::cli {

namespace {

struct Taken {
  snap::SnapshotInfo info;
  std::uint64_t replayed = 0;  // events applied from the log after the snapshot started from
  std::size_t pruned = 0;
};

// An exclusive flock on the store's directory while the snapshot is
// written and pruned: a reader without write access to its lock.mdb reads
// it without LMDB's table of readers, holding the flock shared, and pages
// it reads must not be reused meanwhile (a ledger keeps such readers out
// with its own DirLock). Another `tally snapshot` holds it alone while it
// writes, which takes seconds: that one is waited for, up to
// kWriterWaitMax; such a reader (verify, for minutes) is not.
Result<std::unique_ptr<log::DirFlock>> hold_for_writing(const std::string& store_dir) {
  constexpr auto kWriterWaitMax = std::chrono::minutes(1);
  constexpr auto kLookEvery = std::chrono::milliseconds(20);
  const auto give_up = std::chrono::steady_clock::now() + kWriterWaitMax;
  // A shared flock got twice in a row, a look apart: a reader holds it, not
  // a writer that let go between the two tries, nor another waiter's probe
  // of a moment.
  int shared_got = 0;
  for (;;) {
    auto lock = log::DirFlock::acquire(store_dir, log::DirFlock::Kind::exclusive);
    if (lock.code() != ErrorCode::locked) return lock;
    bool writer = false;
    {  // a probe only, let go before the wait
      auto shared = log::DirFlock::acquire(store_dir, log::DirFlock::Kind::shared);
      if (!shared.ok() && shared.code() != ErrorCode::locked) return shared.status();
      writer = shared.code() == ErrorCode::locked;
    }
    if (!writer) {
      if (++shared_got == 2) {
        return Status(ErrorCode::locked,
                      store_dir + " is being read by a process without write access to its "
                                  "lock.mdb; take the snapshot once it is done");
      }
    } else {
      shared_got = 0;
      if (std::chrono::steady_clock::now() >= give_up) {
        return Status(ErrorCode::locked, store_dir + " is being written by another tally "
                                                     "snapshot, for over a minute");
      }
    }
    std::this_thread::sleep_for(kLookEvery);
  }
}

Result<Taken> take_snapshot(const std::string& data_dir, std::size_t retain) {
  TALLY_TRY(check_ledger_dir(data_dir));
  SharedSnapshots shared;
  const auto open_store = [&]() -> Status {
    auto store = snap::open_renewing<snap::SnapshotStore>(snapshot_dir(data_dir),
                                                           snap::SnapshotStoreOptions{});
    if (!store) return store.status();
    shared.store = std::move(*store);
    return Status();
  };
  // The replay starts from the store's newest valid snapshot. Where there
  // is no store, one is made only once there is a state to write: a
  // command that fails leaves nothing behind.
  std::error_code exists_error;
  if (std::filesystem::exists(snapshot_dir(data_dir), exists_error)) TALLY_TRY(open_store());
  ReplayOptions options;
  options.snapshots = &shared;
  std::uint64_t chain = 0;  // the log's chain checksum after the last event applied
  // visit, not applied: an `applied` callback makes replay remember keys in
  // step with the ops, on one thread. The replay either applies the event
  // visited or fails.
  options.visit = [&chain](const log::Event&, const log::Record& record) {
    chain = record.checksum;
  };
  auto replayed = replay_data(data_dir, options);
  if (!replayed) return replayed.status();
  const proj::State& state = *replayed->state;
  if (state.last_seq() == 0) return Status(ErrorCode::not_found, "the log is empty: nothing to snapshot");
  if (replayed->report.events == 0) {
    // The state is the snapshot replay started from: the log's chain there.
    auto scan = scan_log(data_dir, state.last_seq());
    if (!scan) return scan.status();
    if (!scan->chain_at.has_value()) {
      return Status(ErrorCode::corrupt, "the log ends before the seq the replay reached");
    }
    chain = *scan->chain_at;
  }
  Taken taken;
  taken.replayed = replayed->report.events;
  const snap::LogPosition position{state.last_seq(), chain, state.last_timestamp_ns()};
  TALLY_TRY(log::sync_log(log::posix_file_system(), log_dir(data_dir), position.seq));
  if (shared.store == nullptr) TALLY_TRY(open_store());
  auto writing = hold_for_writing(snapshot_dir(data_dir));
  if (!writing) return writing.status();
  auto written = shared.store->write(state, position);
  if (!written && written.code() == ErrorCode::corrupt) {
    // Damage the open's first read did not meet: set the store aside, as
    // the open would have, and write into a new one.
    shared.store.reset();
    TALLY_TRY(snap::set_aside(snapshot_dir(data_dir)));
    std::fprintf(stderr, "tally: %s; moved %s to %s.damaged and began a new one\n",
                 written.status().to_string().c_str(), snapshot_dir(data_dir).c_str(),
                 snapshot_dir(data_dir).c_str());
    auto renewed = snap::SnapshotStore::open(snapshot_dir(data_dir), snap::SnapshotStoreOptions{});
    if (!renewed) return renewed.status();
    shared.store = std::move(*renewed);
    writing = hold_for_writing(snapshot_dir(data_dir));
    if (!writing) return writing.status();
    written = shared.store->write(state, position);
  }
  if (!written) return written.status();
  taken.info = *written;
  auto pruned = shared.store->prune(retain, taken.info.seq, state.idempotency_window_ns(),
                                    snap::SnapshotStore::Later::keep);
  if (!pruned) return pruned.status();
  taken.pruned = *pruned;
  return taken;
}

// seq=N time=T size=N digest=H, or {"seq":..,...} without the closing brace.
void append_info(const snap::SnapshotInfo& info, bool json, std::string* out) {
  if (json) {
    *out += "{\"seq\":";
    append_int(out, static_cast<std::int64_t>(info.seq));
    if (!info.metadata_ok) {
      *out += ",\"metadata_ok\":false";
      if (info.metadata_other_version) *out += ",\"metadata_other_version\":true";
      return;
    }
    *out += ",\"time\":";
    append_int(out, info.time_ns);
    *out += ",\"time_rfc3339\":\"";
    append_rfc3339(out, info.time_ns);
    *out += "\",\"size\":";
    append_int(out, static_cast<std::int64_t>(info.size_bytes));
    *out += ",\"digest\":\"";
    append_hex64(out, info.digest);
    *out += "\",\"metadata_ok\":true";
    return;
  }
  *out += "seq=";
  append_int(out, static_cast<std::int64_t>(info.seq));
  if (!info.metadata_ok) {
    *out += info.metadata_other_version ? " metadata=other-version" : " metadata=bad";
    return;
  }
  *out += " time=";
  append_rfc3339(out, info.time_ns);
  *out += " size=";
  append_int(out, static_cast<std::int64_t>(info.size_bytes));
  *out += " digest=";
  append_hex64(out, info.digest);
}

int list_snapshots(const std::string& data_dir, bool json) {
  const Status exists = check_ledger_dir(data_dir);
  if (!exists.ok()) return failure(exists);
  const std::string dir = snapshot_dir(data_dir);
  if (!log::posix_file_system().exists(dir)) return kExitOk;  // none, and nothing created
  auto store = snap::SnapshotStore::open(dir, {.read_only = true});
  if (!store && store.code() == ErrorCode::not_found) return kExitOk;  // none
  if (!store) return failure(store.status());
  auto infos = (*store)->list();
  if (!infos) return failure(infos.status());
  Output out(stdout);
  for (const snap::SnapshotInfo& info : *infos) {
    append_info(info, json, &out.buffer());
    if (json) out.buffer() += "}";
    out.end_line();
  }
  return kExitOk;
}

int run_snapshot(const Args& args) {
  auto data = args.required("data");
  if (!data) return usage_error("snapshot", data.status().message());
  const bool json = args.has("json");
  if (args.has("list")) {
    if (args.has("retain")) return usage_error("snapshot", "--retain takes a snapshot; not with --list");
    return list_snapshots(std::string(*data), json);
  }
  const auto retain_default = static_cast<std::int64_t>(LedgerOptions{}.snapshot_retain);
  auto retain = args.integer("retain", retain_default);
  if (!retain) return usage_error("snapshot", retain.status().message());
  auto taken = take_snapshot(std::string(*data), static_cast<std::size_t>(*retain));
  if (!taken) return failure(taken.status());
  Output out(stdout);
  std::string& line = out.buffer();
  append_info(taken->info, json, &line);
  line += json ? ",\"replayed\":" : " replayed=";
  append_int(&line, static_cast<std::int64_t>(taken->replayed));
  line += json ? ",\"pruned\":" : " pruned=";
  append_int(&line, static_cast<std::int64_t>(taken->pruned));
  if (json) line += "}";
  out.end_line();
  return kExitOk;
}

constexpr FlagSpec kSnapshotFlags[] = {
    {"data", "DIR", "the data directory (required)"},
    {"retain", "N", "keep the newest N snapshots (default 2, the ledger's default)",
     IntegerRange{1, kSnapshotRetainMax}},
    {"list", "", "list the snapshots instead of taking one"},
    {"json", "", "JSON lines"},
};

constexpr CommandSpec kSnapshotSpec = {
    "snapshot",
    "Take a snapshot of the state now (to DATA/snapshots), or list them.",
    "tally snapshot --data DIR [--retain N] [--json]\n"
    "       tally snapshot --data DIR --list [--json]",
    "Replays the log from its newest valid snapshot, read-only, writes the state\n"
    "as a snapshot at the log's last seq, and prunes to the newest --retain.\n"
    "Prints `seq=N time=T size=BYTES digest=HEX replayed=N pruned=N`. It takes no\n"
    "lock and never writes the log: it may run beside `tally serve` on DIR.\n"
    "--list prints one line per snapshot, oldest first: `seq=N time=T size=BYTES\n"
    "digest=HEX` (`seq=N metadata=bad` when its metadata record does not\n"
    "verify, `seq=N metadata=other-version` when another version of tally wrote\n"
    "it). --json prints the same fields as one object per line.\n"
    "\n"
    "A snapshot records the idempotency window it was built with, and only a\n"
    "ledger of that window loads it. The tools replay with the window of the\n"
    "newest snapshot (the ledger's own; 24 h when there is none), so this\n"
    "command writes one of the window of the ledger's last snapshot.\n",
    kSnapshotFlags,
    0,
};

}  // namespace

const CliCommand kSnapshot = {&kSnapshotSpec, run_snapshot};

}  // namespace tally::cli
