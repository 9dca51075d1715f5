// FaultyFileSystem: a FileSystem for tests that wraps another one and injects
// the faults storage code has to survive, after SQLite's test harnesses:
// failed syncs, a full disk, torn writes with a simulated crash, flipped
// bits, slow reads, syncs held until the test lets them go. It also counts
// syncs and writes, so tests can check group commit.
//
// A test arms a fault; it fires on the next matching operation of any File
// opened through this file system. Thread safety: every method may be called
// from any thread. Ownership: the base file system is borrowed and must
// outlive this one; Files it opens must not outlive it either.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "log/file.h"
#include "log/status.h"

namespace tally::log {

class FaultyFileSystem final : public FileSystem {
 public:
  explicit FaultyFileSystem(FileSystem& base);
  ~FaultyFileSystem() override;
  FaultyFileSystem(const FaultyFileSystem&) = delete;
  FaultyFileSystem& operator=(const FaultyFileSystem&) = delete;

  // ---- counters, since construction or reset_counters() ----
  std::uint64_t syncs() const;          // File::sync calls, failed ones included
  std::uint64_t dir_syncs() const;      // sync_dir calls
  std::uint64_t writes() const;         // File::write_at calls
  std::uint64_t bytes_written() const;  // bytes that reached the base files
  void reset_counters();

  // ---- faults ----
  // The nth File::sync from now (1: the next one) fails with io_error and
  // syncs nothing.
  void fail_sync(std::uint64_t nth = 1);
  // After `bytes` more bytes, writes fail with ENOSPC ("No space left on
  // device"); the write that crosses the limit writes the part that fits
  // first, as a full disk does. A preallocation that would take more bytes
  // than are left takes those and fails, the file grown by them, as on ext4;
  // one that fits takes nothing from them (the writes into it do).
  // Stays armed until disarm().
  void fail_writes_after_bytes(std::uint64_t bytes);
  // The next write_at writes only its first keep_bytes and fails. With
  // crash, the process "dies" there: every later operation through this
  // file system fails with io_error until disarm(), so the test reopens the
  // directory through the base file system, as a restarted process would.
  void tear_next_write(std::uint64_t keep_bytes, bool crash = true);
  // The next write_at lands with bit `bit_index` (modulo its length in bits)
  // of its data flipped and reports success: silent corruption.
  void flip_bit_in_next_write(std::uint64_t bit_index);
  // Every read_at (and so every view) sleeps `delay` first: a slow disk.
  // Stays armed until disarm().
  void delay_reads(std::chrono::milliseconds delay);
  // After `after` more read_at calls, the next `count` fail with io_error
  // and read nothing: a passing read error (EIO on a retried sector).
  // kUntilDisarmed: every read, until disarm(). Replaces what was armed.
  static constexpr std::uint64_t kUntilDisarmed = UINT64_MAX;
  void fail_reads(std::uint64_t count, std::uint64_t after = 0);
  // The next `count` opens in Mode::create fail with io_error and errno
  // `error`, and create nothing: by default a process out of file
  // descriptors (EMFILE). kUntilDisarmed: every one, until disarm().
  void fail_creates(std::uint64_t count, int error = EMFILE);
  // The next `count` sync_dir calls fail as opening the directory would,
  // with io_error and errno `error`, and sync nothing. kUntilDisarmed as
  // above.
  void fail_dir_syncs(std::uint64_t count, int error = EMFILE);
  // The next File::sync waits, before it syncs (or fails, when fail_sync
  // armed it), until release_sync() or disarm(): a sync the test lets
  // finish once it has made what it wants happen meanwhile.
  void hold_next_sync();
  // Waits until a sync is held, for up to `timeout`: whether it is.
  bool wait_until_sync_held(std::chrono::milliseconds timeout);
  void release_sync();
  // Disarms every fault and ends a simulated crash.
  void disarm();
  bool crashed() const;

  // ---- FileSystem ----
  Result<std::unique_ptr<File>> open(const std::string& path, Mode mode) override;
  bool exists(const std::string& path) override;
  Result<std::vector<std::string>> list(const std::string& dir) override;
  Status make_dirs(const std::string& dir) override;
  Status remove(const std::string& path) override;
  Status rename(const std::string& from, const std::string& to) override;
  Status sync_dir(const std::string& dir) override;

  struct State;  // shared with the Files it opens (faulty_file.cc)

 private:
  FileSystem& base_;
  std::unique_ptr<State> state_;
};

// Flips bit `bit` (0..7) of the byte at `offset` of a file in place: media
// corruption for tests.
Status flip_bit(FileSystem& fs, const std::string& path, std::uint64_t offset, int bit);

}  // namespace tally::log
