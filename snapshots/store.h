// SnapshotStore: checkpoints of the whole projection State in an LMDB
// environment (DATA/snapshots), so recovery replays only the log after one.
//
// write() saves a State with the log position it reflects, in one write
// transaction (metadata + chunked image, snapshots/format.h), durable on
// return (LMDB syncs at commit). load_newest_valid() walks from the newest
// snapshot to the oldest and returns the first whose payload checksum,
// image and State digest all verify; a damaged snapshot is skipped with the
// reason, never loaded. Recovery rule (docs/snapshots.md): load the newest
// valid snapshot at or below the log's last seq, check its chain checksum
// against the log, replay the log after its seq; not_found means a full
// replay.
//
// The engine's archivist (engine/archivist.h) writes and prunes snapshots;
// recovery (engine/replay.h) loads them and checks the chain checksum.
//
// Thread safety: none; one thread uses a store at a time. The directory
// may be read by other processes (LMDB readers) while one writes.
// Ownership: the store owns the LMDB environment; States it returns are the
// caller's.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "log/status.h"
#include "snapshots/copy_progress.h"
#include "projections/state.h"

namespace tally::snap {

// Where in the log a State stands: the last event applied to it.
struct LogPosition {
  std::uint64_t seq = 0;
  std::uint64_t chain_checksum = 0;  // the log's chain value after seq
  std::int64_t timestamp_ns = 0;     // the timestamp of the event at seq
};

struct SnapshotStoreOptions {
  // The LMDB map's initial size; a write or prune that fills it doubles it
  // (up to map_size_bytes_max) and retries. An existing larger file is
  // mapped as large as its pages in use.
  std::size_t map_size_bytes = std::size_t{64} << 20;
  std::size_t map_size_bytes_max = std::size_t{1} << 40;
  // Image bytes per chunk key, kChunkBytesMin..kChunkBytesMax.
  std::size_t chunk_bytes = std::size_t{1} << 20;
  // For readers (the audit tools): opens an existing store without
  // creating or changing anything, so a backup on a read-only mount can be
  // read; not_found when there is none. write() and prune() then fail.
  bool read_only = false;
};

struct SnapshotInfo {
  std::uint64_t seq = 0;
  std::int64_t time_ns = 0;          // log timestamp of the event at seq
  std::uint64_t size_bytes = 0;      // of the image (payload)
  std::uint64_t digest = 0;          // State::digest() when written
  std::uint64_t chain_checksum = 0;
  std::uint32_t chunk_count = 0;
  // false when the metadata record itself does not verify; only seq is
  // meaningful then (list() still shows it, so a tool can say so).
  bool metadata_ok = true;
  // With metadata_ok false: the record verifies, but in a metadata format
  // another version of tally wrote; not damaged.
  bool metadata_other_version = false;
};

struct SkippedSnapshot {
  std::uint64_t seq = 0;  // 0: the store as a whole (no snapshot has seq 0)
  Status why;  // corrupt (checksum, image, digest), invalid (window), ...
};

struct LoadedSnapshot {
  std::unique_ptr<proj::State> state;
  SnapshotInfo info;
};

class SnapshotStore {
 public:
  // Opens or creates the environment in `dir` (created if missing; its
  // parent must exist). invalid for bad options, io_error when LMDB or the
  // file system refuses.
  static Result<std::unique_ptr<SnapshotStore>> open(const std::string& dir,
                                                     const SnapshotStoreOptions& options);
  ~SnapshotStore();
  SnapshotStore(const SnapshotStore&) = delete;
  SnapshotStore& operator=(const SnapshotStore&) = delete;

  // Saves `state` as the snapshot at position.seq, replacing one already
  // there. Preconditions checked (invalid): position.seq and timestamp_ns
  // are the state's last_seq() and last_timestamp_ns(). All or nothing.
  Result<SnapshotInfo> write(const proj::State& state, const LogPosition& position);

  // Every snapshot, oldest first. Reads metadata only.
  Result<std::vector<SnapshotInfo>> list() const;
  // list()'s status: whether the metadata reads (open_renewing).
  Status probe() const;
  // A compacted copy of the store as of now into `dir` (made by the
  // caller, empty): lmdb::Environment::copy_to. A backup's.
  Status copy_to(const std::string& dir, const CopyProgress& keep_going = {}) const;

  // What prune() does with the snapshots past newest_seq.
  enum class Later {
    // Deletes them: the log ends at newest_seq, so they are of events it
    // no longer has (a lost tail), unusable for good. A ledger's open.
    drop,
    // Keeps them, outside the count: after writing the snapshot at
    // newest_seq, when another process may have written a later one of the
    // same log (`tally snapshot` beside a live ledger, or the other way
    // round). The next open drops any of them the log does not reach. A
    // record whose metadata is damaged (corrupt, not another version's) is
    // deleted: its seq, its key, may be anything, and it never loads.
    keep,
  };
  // Deletes the snapshots past newest_seq (Later::drop), then every one
  // older than the retain_count newest of the rest that a ledger with
  // `window_ns` can load (metadata that verifies, this version's state
  // format, that window, a payload that matches its checksum: each hashed
  // once per store opened), in one transaction; returns how many it
  // deleted. So a snapshot of another version or window, or a damaged one,
  // is kept while it is newer than those, and never takes the place of one.
  Result<std::size_t> prune(std::size_t retain_count, std::uint64_t newest_seq,
                            std::int64_t window_ns, Later later);

  // The idempotency window recorded in the newest snapshot whose metadata
  // verifies and whose payload matches its checksum: the window of the
  // ledger that took it (the data directory records no other). None when
  // no snapshot is such.
  Result<std::optional<std::int64_t>> newest_window() const;

  // How many payloads this store has hashed since it opened. A payload that
  // passed is not hashed again by newest_window(), a load or prune() (nor
  // one the store wrote), unless its metadata changed meanwhile.
  std::uint64_t payload_hashes() const;

  // The newest snapshot with seq <= max_seq that verifies (metadata hash,
  // payload checksum, image structure and invariants, digest, seq), loaded
  // with `options`. Every snapshot passed over is appended to *skipped
  // (if not null) with its reason; one above max_seq is skipped as invalid.
  // not_found when none verifies: replay the whole log. `cancel` (borrowed;
  // may be null) stops a load under way once set: closed. `loading`
  // (borrowed; may be null) is set to each snapshot's seq as its load
  // begins.
  Result<LoadedSnapshot> load_newest_valid(std::uint64_t max_seq,
                                           const proj::StateOptions& options,
                                           std::vector<SkippedSnapshot>* skipped,
                                           const std::atomic<bool>* cancel = nullptr,
                                           std::atomic<std::uint64_t>* loading = nullptr) const;

 private:
  struct Env;
  explicit SnapshotStore(std::unique_ptr<Env> env);
  std::unique_ptr<Env> env_;
};

}  // namespace tally::snap
