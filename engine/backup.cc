#include "engine/backup.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <span>
#include <system_error>
#include <utility>

#include "engine/replay.h"
#include "log/file.h"
#include "log/lock.h"
#include "log/reader.h"
#include "log/writer.h"
#include "snapshots/history.h"
#include "snapshots/store.h"

namespace tally {

namespace {

constexpr std::size_t kCopyChunkBytes = std::size_t{1} << 20;
// Copies of the last segment before a log that does not verify in any of
// them is reported as damaged. A copy races only the writes in flight
// while it passes them, so a second one is nearly always clean.
constexpr std::size_t kCopyAttemptsMax = 5;

// One backup's progress reports and cancellation.
struct Run {
  const BackupProgress& progress;
  const std::atomic<bool>* cancel = nullptr;  // nullptr: never
  std::uint64_t store_bytes_done = 0;  // of the stores copied before this one
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  // What `progress` threw: the backup stops as if cancelled, removes its
  // partial copy, and backup_data throws it again to its caller (it never
  // crosses a store copy's thread).
  std::exception_ptr thrown;

  // closed once the owner cancelled the backup or `progress` threw.
  Status check() const {
    if (thrown) return Status(ErrorCode::closed, "the backup's progress callback threw");
    if (cancel == nullptr || !cancel->load(std::memory_order_relaxed)) return Status();
    return Status(ErrorCode::closed, "the backup was cancelled: the ledger is closing");
  }
  void report(BackupStage stage, std::uint64_t done, std::uint64_t total) {
    if (!progress || thrown) return;
    try {
      progress(stage, done, total);
    } catch (...) {
      thrown = std::current_exception();
    }
  }
  // A store's copy's CopyProgress: reports its bytes after those of the
  // stores before it; false once the owner cancelled.
  bool store_bytes(std::uint64_t bytes_written) {
    report(BackupStage::store_bytes, store_bytes_done + bytes_written, 0);
    return check().ok();
  }
  void add_bytes(std::uint64_t bytes) {
    bytes_done += bytes;
    report(BackupStage::log_bytes, bytes_done, bytes_total);
  }
};

// Copies one file and syncs the copy; returns its size. The copy is
// preallocated to the size, as the writer makes a segment (so a writer that
// continues it allocates nothing), and chunks of zeros are not written: a
// segment is mostly the zeros of its preallocation.
Result<std::uint64_t> copy_file(log::FileSystem& fs, const std::string& from,
                                const std::string& to, Run* run) {
  auto source = fs.open(from, log::FileSystem::Mode::read_only);
  if (!source) return source.status();
  auto size = (*source)->size();
  if (!size) return size.status();
  auto target = fs.open(to, log::FileSystem::Mode::create);
  if (!target) return target.status();
  TALLY_TRY((*target)->truncate(0));  // a copy made again starts from nothing
  TALLY_TRY((*target)->preallocate(*size));
  std::vector<std::byte> buffer(kCopyChunkBytes);
  for (std::uint64_t offset = 0; offset < *size; offset += buffer.size()) {
    const auto length =
        static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), *size - offset));
    const std::span<std::byte> chunk(buffer.data(), length);
    TALLY_TRY(run->check());
    TALLY_TRY((*source)->read_at(offset, chunk));
    run->add_bytes(length);
    if (std::all_of(chunk.begin(), chunk.end(), [](std::byte b) { return b == std::byte{0}; })) {
      continue;
    }
    TALLY_TRY((*target)->write_at(offset, chunk));
  }
  TALLY_TRY((*target)->sync());
  return *size;
}

// Reads a log as an open does (every checksum and the chain); its end.
// *in_last_segment: whether what failed the read, if anything, lies in the
// last segment, the only one a write can be landing in.
Result<log::LogEnd> read_log(log::FileSystem& fs, const std::string& dir, Run* run,
                             bool* in_last_segment) {
  *in_last_segment = true;
  auto reader = log::LogReader::open(fs, dir);
  if (!reader) return reader.status();
  log::Record record;
  while (true) {
    auto more = (*reader)->next(&record);
    if (!more) {
      // Not judged by the seq reached: damage after the last frame of the
      // segment before the last is found once every record of it was read.
      const std::vector<std::uint64_t>& firsts = (*reader)->segment_first_seqs();
      *in_last_segment = firsts.empty() || (*reader)->segment_first_seq() == firsts.back();
      return more.status();
    }
    if (!*more) return (*reader)->end();
    run->report(BackupStage::log_events, record.seq, 0);
    TALLY_TRY(run->check());
  }
}

// The sum of the files' sizes.
Result<std::uint64_t> total_size(log::FileSystem& fs, const std::string& dir,
                                 const std::vector<std::string>& names) {
  std::uint64_t total = 0;
  for (const std::string& name : names) {
    auto file = fs.open(log::join_path(dir, name), log::FileSystem::Mode::read_only);
    if (!file) return file.status();
    auto size = (*file)->size();
    if (!size) return size.status();
    total += *size;
  }
  return total;
}

Status copy_log(log::FileSystem& fs, const std::string& from, const std::string& to, Run* run,
                BackupReport* report) {
  TALLY_TRY(fs.make_dirs(to));
  std::vector<std::string> segments;
  auto names = fs.list(from);
  if (!names && names.code() != ErrorCode::not_found) return names.status();
  if (names) {
    // Fixed-width names: bytewise order is seq order. The reader of the copy
    // checks them.
    for (const std::string& name : *names) {
      if (name.ends_with(".seg")) segments.push_back(name);
    }
  }
  if (run->progress) {
    auto total = total_size(fs, from, segments);
    if (!total) return total.status();
    run->bytes_total = *total;
  }
  std::vector<std::uint64_t> sizes;
  for (const std::string& name : segments) {
    auto size = copy_file(fs, log::join_path(from, name), log::join_path(to, name), run);
    if (!size) return size.status();
    sizes.push_back(*size);
  }
  report->segments = segments.size();
  log::LogEnd end;
  for (report->log_copies = 1;; report->log_copies++) {
    bool in_last_segment = true;
    auto read = read_log(fs, to, run, &in_last_segment);
    if (read) {
      end = *read;
      break;
    }
    // No write changes a segment before the last: copying again cannot help.
    if (read.code() == ErrorCode::corrupt && !in_last_segment) {
      return Status(read.code(), read.status().message() +
                                     " (in a segment before the last, as in the source's log: "
                                     "tally verify reports it)");
    }
    if (read.code() != ErrorCode::corrupt || segments.empty() ||
        report->log_copies == kCopyAttemptsMax) {
      return Status(read.code(), read.status().message() + " (the log as copied " +
                                     std::to_string(report->log_copies) + " time(s))");
    }
    run->bytes_total += sizes.back();  // about what the copy again adds
    auto size = copy_file(fs, log::join_path(from, segments.back()),
                          log::join_path(to, segments.back()), run);
    if (!size) return size.status();
    sizes.back() = *size;
  }
  // A source cut short after it was made may have lost records: the repair
  // below would hide that in the copy. No copy in flight reads so (a file
  // is preallocated before its header is written).
  if (end.cut_short) {
    return Status(ErrorCode::corrupt, log::cut_short_status(end).message() +
                                          " (the source's log; tally verify reports it)");
  }
  for (const std::uint64_t size : sizes) report->log_bytes += size;
  report->last_seq = end.next_seq - 1;
  // A write in flight as the last segment was copied reads as a torn tail
  // (or, for a segment being made, a torn header): repaired as the next
  // writer would, so that the backup opens as a clean log.
  if (end.torn || end.torn_header) {
    log::LogWriterOptions options;
    // A segment being made is made again at its predecessor's size: the
    // source's setting, which a default would not be.
    if (end.torn_header && sizes.size() >= 2) options.segment_size_bytes = sizes[sizes.size() - 2];
    auto repaired = log::LogWriter::open(fs, to, end, options);
    if (!repaired) return repaired.status();
  }
  return fs.sync_dir(to);
}

// Copies a store into `to` with `copy`; false when there is none, or with
// the reason in report->left_out when it is damaged and left out.
Result<bool> copy_store(log::FileSystem& fs, const detail::StoreCopy& copy, const std::string& to,
                        std::string_view what, Run* run, BackupReport* report) {
  TALLY_TRY(fs.make_dirs(to));
  std::uint64_t written = 0;
  const Status copied = copy(to, [run, &written](std::uint64_t bytes_written) {
    written = bytes_written;
    return run->store_bytes(bytes_written);
  });
  run->store_bytes_done += written;
  TALLY_TRY(run->check());
  if (copied.code() == ErrorCode::corrupt) {
    report->left_out.push_back(std::string(what) + ": " + copied.to_string());
  } else if (!copied.ok() && copied.code() != ErrorCode::not_found) {
    return copied;
  }
  if (!copied.ok()) {
    std::error_code ignored;
    std::filesystem::remove_all(to, ignored);
    return false;
  }
  TALLY_TRY(fs.sync_dir(to));
  return true;
}

// Opens the store in `from` read-only and copies it: not_found when there
// is none.
template <class Store, class Options>
detail::StoreCopy opening_copy(log::FileSystem& fs, const std::string& from,
                               const Options& read_only) {
  return [&fs, from, read_only](const std::string& to,
                                const snap::CopyProgress& keep_going) -> Status {
    if (!fs.exists(from)) return Status(ErrorCode::not_found, "no store in " + from);
    auto store = Store::open(from, read_only);
    if (!store) return store.status();
    TALLY_TRY((*store)->probe());
    return (*store)->copy_to(to, keep_going);
  };
}

Status build(log::FileSystem& fs, const std::string& data_dir, const std::string& staging,
             const detail::StoreCopies& copies, Run* run, BackupReport* report) {
  // The stores first: the log copied after them holds every event they
  // describe.
  TALLY_TRY(run->check());
  auto snapshots =
      copy_store(fs, copies.snapshots, snapshot_dir(staging), "snapshots", run, report);
  if (!snapshots) return snapshots.status();
  auto history = copy_store(fs, copies.history, history_dir(staging), "history", run, report);
  if (!history) return history.status();
  TALLY_TRY(copy_log(fs, log_dir(data_dir), log_dir(staging), run, report));

  // What the copies describe, and that the copied log reaches it.
  std::uint64_t described_seq = 0;
  if (*snapshots) {
    auto store = snap::SnapshotStore::open(snapshot_dir(staging), {.read_only = true});
    if (!store) return store.status();
    auto infos = (*store)->list();
    if (!infos) return infos.status();
    report->snapshots = infos->size();
    for (const snap::SnapshotInfo& info : *infos) {
      if (info.metadata_ok) described_seq = std::max(described_seq, info.seq);
    }
  }
  if (*history) {
    auto store = snap::HistoryStore::open(history_dir(staging), {.read_only = true});
    if (!store) return store.status();
    auto position = (*store)->position();
    if (!position) return position.status();
    report->history_seq = position->seq;
    described_seq = std::max(described_seq, position->seq);
  }
  if (described_seq > report->last_seq) {
    return Status(ErrorCode::corrupt, "the copied log ends at seq " +
                                          std::to_string(report->last_seq) +
                                          ", before the copied stores' seq " +
                                          std::to_string(described_seq));
  }
  return fs.sync_dir(staging);
}

// Sets the permissions of `dir`. The files of a copy are made readable by
// all (open_contents): it is built closed to others (0700), and once whole gets its
// source's permissions (and the owner's: a read-only source's copy is its
// owner's to remove), so that a data directory closed to others does not
// become an open copy.
Status set_permissions(const std::string& dir, std::filesystem::perms perms) {
  std::error_code error;
  std::filesystem::permissions(dir, perms, std::filesystem::perm_options::replace, error);
  if (error) return Status(ErrorCode::io_error, "chmod " + dir + ": " + error.message());
  return Status();
}

// Makes what `dir` holds readable by all (files 0644, directories 0755),
// whatever the umask they were made under: the copy's own permissions
// (set_permissions) decide who reaches them.
Status open_contents(const std::string& dir) {
  using std::filesystem::perms;
  std::error_code error;
  std::filesystem::recursive_directory_iterator entry(dir, error);
  for (; !error && entry != std::filesystem::recursive_directory_iterator();
       entry.increment(error)) {
    const bool is_dir = entry->is_directory(error);
    if (error) break;
    const perms mode = perms::owner_read | perms::owner_write | perms::group_read |
                       perms::others_read |
                       (is_dir ? perms::owner_exec | perms::group_exec | perms::others_exec
                               : perms::none);
    TALLY_TRY(set_permissions(entry->path().string(), mode));
  }
  if (error) return Status(ErrorCode::io_error, "read " + dir + ": " + error.message());
  return Status();
}

Result<std::filesystem::perms> permissions_of(const std::string& dir) {
  std::error_code error;
  const std::filesystem::perms perms = std::filesystem::status(dir, error).permissions();
  if (error) return Status(ErrorCode::io_error, "stat " + dir + ": " + error.message());
  return perms | std::filesystem::perms::owner_all;
}

// Whether `inner` is `outer` or lies under it, once both are resolved.
bool within(const std::string& inner, const std::string& outer) {
  std::error_code ignored;
  const std::string a = std::filesystem::weakly_canonical(inner, ignored).string();
  const std::string b = std::filesystem::weakly_canonical(outer, ignored).string();
  return a == b || a.starts_with(b.ends_with('/') ? b : b + "/");
}

// rename(2) that fails (EEXIST) rather than replace a directory someone
// made at `to` meanwhile, where the file system can say so.
Status rename_new(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) {
    return Status();
  }
  if (errno != EINVAL && errno != ENOSYS) {
    return Status(ErrorCode::io_error,
                  "rename " + from + " to " + to + ": " + std::strerror(errno));
  }
  return log::posix_file_system().rename(from, to);
}

}  // namespace

namespace detail {

Result<BackupReport> backup_data(const std::string& data_dir, const std::string& out_path,
                                 log::FileSystem& fs, const StoreCopies& copies,
                                 const BackupProgress& progress,
                                 const std::atomic<bool>* cancel) {
  TALLY_TRY(check_ledger_dir(data_dir));
  if (out_path.empty()) return Status(ErrorCode::invalid, "the backup's directory is empty");
  // "dest/" names dest, whose partial copy is "dest.partial".
  std::string out_dir = out_path;
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  if (fs.exists(out_dir)) return Status(ErrorCode::invalid, out_dir + " exists");
  if (within(out_dir, data_dir)) {
    return Status(ErrorCode::invalid, out_dir + " is inside " + data_dir);
  }
  const std::string staging = out_dir + ".partial";
  std::error_code made_error;
  if (!std::filesystem::create_directory(staging, made_error)) {
    if (made_error) {
      return Status(ErrorCode::io_error, "mkdir " + staging + ": " + made_error.message());
    }
    return Status(ErrorCode::invalid,
                  staging + " exists (a backup that did not finish?): remove it first");
  }
  BackupReport report;
  Run run{progress, cancel, 0, 0, 0, nullptr};
  const auto source_perms = permissions_of(data_dir);
  Status built = source_perms.status();
  if (built.ok()) built = set_permissions(staging, std::filesystem::perms::owner_all);
  if (built.ok()) built = build(fs, data_dir, staging, copies, &run, &report);
  if (built.ok()) built = run.check();
  if (built.ok()) built = open_contents(staging);
  if (built.ok()) built = set_permissions(staging, *source_perms);
  if (built.ok()) built = rename_new(staging, out_dir);
  if (built.ok()) built = fs.sync_dir(log::parent_dir(out_dir));
  if (!built.ok()) {
    // Made by this call (create_directory said so): nothing of anyone else's.
    std::error_code ignored;
    std::filesystem::remove_all(staging, ignored);
    if (run.thrown) std::rethrow_exception(run.thrown);
    return built;
  }
  return report;
}

}  // namespace detail

Result<BackupReport> backup_data(const std::string& data_dir, const std::string& out_path,
                                 log::FileSystem* file_system, const BackupProgress& progress) {
  log::FileSystem& fs = file_system != nullptr ? *file_system : log::posix_file_system();
  // LMDB allows one open of an environment per process: a second one, once
  // closed, drops the locks of the first (a live ledger's), and another
  // process could then reset the lock file under it.
  if (log::DirLock::held_by_this_process(data_dir)) {
    return Status(ErrorCode::invalid,
                  "a ledger of this process has " + data_dir +
                      " open, and LMDB allows one open of a store per process: back it "
                      "up through that ledger (Ledger::backup) or from another process "
                      "(tally backup)");
  }
  detail::StoreCopies copies;
  copies.snapshots = opening_copy<snap::SnapshotStore>(
      fs, snapshot_dir(data_dir), snap::SnapshotStoreOptions{.read_only = true});
  // The copy reads every page of the index: they are checked first.
  copies.history = opening_copy<snap::HistoryStore>(
      fs, history_dir(data_dir),
      snap::HistoryStoreOptions{.read_only = true, .check_all_pages = true});
  return detail::backup_data(data_dir, out_path, fs, copies, progress, nullptr);
}

}  // namespace tally
