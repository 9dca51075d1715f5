// A backup of a data directory taken while a ledger may be writing it: the
// log as of a moment, checked record by record, and copies of the snapshot
// store and the history index that describe no event past the copied log.
//
// Copying log/ file by file while the writer appends can catch a later part
// of the last segment before an earlier one is complete: an invalid frame
// followed by valid ones, which an open reports as corruption. So the copy
// is read back like an open reads a log; where it does not verify, the last
// segment is copied again (its writes will have finished by then), and only
// a log that fails every attempt is reported, as corrupt, with the
// segment and offset. A torn tail left in the copy is repaired as a writer
// would repair it at open, so the backup opens without a warning.
//
// The stores are copied before the log: they describe only events already
// in the log's files, so the log copied after them reaches every event
// they describe. A store that does not open is left out with a warning; it
// is made from the log again.
//
// The backup is built in OUT.partial and renamed to OUT once it is whole
// and synced, so OUT is either a complete backup or absent.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "log/file.h"
#include "log/status.h"

namespace tally {

struct BackupReport {
  std::uint64_t last_seq = 0;  // the copied log ends here (0: no event)
  std::size_t segments = 0;
  std::uint64_t log_bytes = 0;  // the segments' file sizes
  std::size_t log_copies = 1;   // copies of the last segment it took (1: it met no write)
  std::optional<std::size_t> snapshots;      // in the copied store; nullopt: not copied
  std::optional<std::uint64_t> history_seq;  // the copied index's position; nullopt: not copied
  std::vector<std::string> left_out;         // stores not copied, and why
};

// Copies `data_dir` to `out_dir`; out_dir and out_dir.partial must not
// exist, nor out_dir lie inside data_dir (invalid). Takes no lock and writes
// nothing in data_dir (but its reader slot in each LMDB store's lock file),
// so it runs beside a live ledger of another process. A data_dir that is
// not one is not_found (check_ledger_dir, engine/replay.h). A data_dir that a
// Ledger of this process holds is refused (invalid): LMDB allows one open
// of a store per process, and closing a second one would drop the first
// one's locks; Ledger::backup backs it up through the ledger's own stores.
// The log's files go through `fs` (nullptr: POSIX), the LMDB stores'
// through LMDB.
//
// `progress`, when set, is called on the backup's thread as the stores are
// copied (store_bytes: bytes of both copies written so far; `total` is 0,
// as a compacted copy's size is not known before it ends), as the log is
// copied (log_bytes: bytes copied so far, of `total`, the segments' sizes)
// and as the copy is read back (log_events: the seq reached; `total` is 0,
// as the log's last seq is known only at its end); it must be cheap, as it
// runs per MiB and per event. An exception it throws ends the backup, whose
// partial copy is removed, and is thrown again to the caller.
enum class BackupStage : std::uint8_t { store_bytes, log_bytes, log_events };
using BackupProgress =
    std::function<void(BackupStage stage, std::uint64_t done, std::uint64_t total)>;

Result<BackupReport> backup_data(const std::string& data_dir, const std::string& out_dir,
                                 log::FileSystem* fs = nullptr,
                                 const BackupProgress& progress = {});

namespace detail {

// Copies one LMDB store into `to`, an empty directory made for it:
// not_found when there is no store, corrupt when it is damaged (the backup
// leaves it out, as BackupReport::left_out says). The copy calls
// `keep_going` with its bytes written after each MiB and stops (closed)
// once that answers false: snap::CopyProgress, which this header does not
// include.
using StoreCopy = std::function<Status(
    const std::string& to, const std::function<bool(std::uint64_t bytes_written)>& keep_going)>;
struct StoreCopies {
  StoreCopy snapshots;
  StoreCopy history;
};

// backup_data, with the stores reached through `copies`: opened by the
// backup, or a live ledger's own (Ledger::backup). Once *cancel (when not
// nullptr) is true, it stops at the next MiB or event (of a store's copy
// too), removes what it made and returns closed.
Result<BackupReport> backup_data(const std::string& data_dir, const std::string& out_dir,
                                 log::FileSystem& fs, const StoreCopies& copies,
                                 const BackupProgress& progress,
                                 const std::atomic<bool>* cancel);

}  // namespace detail

}  // namespace tally
