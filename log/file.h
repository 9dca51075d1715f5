// The file layer: every byte tally reads or writes goes through FileSystem,
// so tests can swap in FaultyFileSystem (log/faulty_file.h) and inject torn
// writes, bit flips, ENOSPC and failed syncs.
//
// Errors are io_error Statuses whose message names the path and errno text;
// a path that does not exist (ENOENT) is not_found instead.
// Thread safety: a File may be used by one thread at a time; distinct Files
// and the FileSystem itself may be used from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "log/status.h"

namespace tally::log {

// Bytes of a file held for reading: 8-byte aligned, and zero from the end
// of the file up to the next multiple of 8, so scans may read whole words.
// Stays valid after the File that made it is closed.
class FileView {
 public:
  virtual ~FileView() = default;
  virtual std::span<const std::byte> bytes() const = 0;
};

class File {
 public:
  virtual ~File() = default;

  // The first size_bytes of the file (at most its size). The base version
  // reads them into memory with read_at; the POSIX file maps them instead,
  // which copies nothing, so the file must not shrink below size_bytes while
  // the view lives (reading a page past its end would fault).
  virtual Result<std::unique_ptr<FileView>> view(std::uint64_t size_bytes);

  // Reads exactly out.size() bytes at offset; io_error on a short read.
  virtual Status read_at(std::uint64_t offset, std::span<std::byte> out) = 0;
  // Writes all of data at offset (retrying partial writes).
  virtual Status write_at(std::uint64_t offset, std::span<const std::byte> data) = 0;
  // fdatasync: data and the metadata needed to read it back.
  virtual Status sync() = 0;
  // Current size in bytes.
  virtual Result<std::uint64_t> size() = 0;
  // Sets the size; new bytes read as zeros.
  virtual Status truncate(std::uint64_t size_bytes) = 0;
  // Reserves blocks so later writes below size_bytes need no allocation;
  // extends the size to size_bytes, new bytes read as zeros.
  virtual Status preallocate(std::uint64_t size_bytes) = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  enum class Mode { read_only, read_write, create };  // create: read-write, made if missing

  virtual Result<std::unique_ptr<File>> open(const std::string& path, Mode mode) = 0;
  virtual bool exists(const std::string& path) = 0;
  // Names (not paths) of the entries of a directory, sorted bytewise.
  virtual Result<std::vector<std::string>> list(const std::string& dir) = 0;
  // Creates the directory and its parents when missing.
  virtual Status make_dirs(const std::string& dir) = 0;
  virtual Status remove(const std::string& path) = 0;
  virtual Status rename(const std::string& from, const std::string& to) = 0;
  // fsync of a directory, so that created, renamed and removed names are durable.
  virtual Status sync_dir(const std::string& dir) = 0;
};

// The real file system (POSIX). One instance may serve the whole process.
FileSystem& posix_file_system();
// The same, but a file's view() first reads what it maps with pread, once:
// a sector the disk cannot read is then an io_error of view() instead of a
// SIGBUS where the mapping is read. For a long-lived process that reads old
// segments (the ledger's log check and scrubs); the pages read stay in the
// page cache for the mapping (one read of the disk, but it could evict them
// again under memory pressure before the scan reaches them).
FileSystem& posix_read_through_file_system();
// The same, but reads stop once `cancelled` is true (checked at each
// read_at, and every 256 KiB of a read through): read_at() and view() then
// fail with ErrorCode::closed. For a reader that a close() must not wait
// for while it reads a whole segment.
// `cancelled` must outlive the file system and the files it opens.
std::unique_ptr<FileSystem> make_posix_read_through_file_system(
    const std::atomic<bool>& cancelled);

// Joins path components with '/'.
std::string join_path(const std::string& dir, const std::string& name);
// The directory holding `path`, or "." for a bare name.
std::string parent_dir(const std::string& path);

// Reads a whole file into memory (8-byte aligned storage).
Result<std::vector<std::uint64_t>> read_whole_file(FileSystem& fs, const std::string& path,
                                                   std::uint64_t* size_bytes);

}  // namespace tally::log
