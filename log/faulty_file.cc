#include "log/faulty_file.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

namespace tally::log {

namespace {

constexpr std::uint64_t kNoLimit = UINT64_MAX;

Status crash_status() { return Status(ErrorCode::io_error, "simulated crash: the process is gone"); }

Status simulated_open_failure(std::string what, int error) {
  what += ": ";
  what += std::strerror(error);
  what += " (simulated)";
  return Status(ErrorCode::io_error, std::move(what), error);
}

}  // namespace

// What a write_at does, decided under the lock.
struct WritePlan {
  bool crashed = false;            // refuse, write nothing
  std::uint64_t keep_bytes = 0;    // write this prefix of the data
  bool flip = false;
  std::uint64_t flip_bit_index = 0;
  Status error;                    // then report this
};

struct FaultyFileSystem::State {
  std::atomic<std::uint64_t> syncs{0};
  std::atomic<std::uint64_t> dir_syncs{0};
  std::atomic<std::uint64_t> writes{0};
  std::atomic<std::uint64_t> bytes_written{0};
  std::atomic<std::int64_t> read_delay_ms{0};  // 0: disarmed

  mutable std::mutex mutex;
  bool crashed = false;
  std::uint64_t sync_countdown = 0;           // 0: disarmed
  std::uint64_t space_left_bytes = kNoLimit;  // kNoLimit: disarmed
  bool tear_armed = false;
  std::uint64_t tear_keep_bytes = 0;
  bool tear_crash = false;
  bool flip_armed = false;
  std::uint64_t flip_bit_index = 0;
  std::uint64_t reads_to_pass = 0;  // fail_reads: these first
  std::uint64_t reads_to_fail = 0;  // then these; 0: disarmed
  // fail_creates, fail_dir_syncs: how many more fail (0: disarmed), and
  // the errno they fail with.
  struct OpenFailures {
    std::uint64_t left = 0;
    int error = 0;
  };
  OpenFailures creates;
  OpenFailures dir_syncs_failing;
  bool hold_armed = false;  // hold_next_sync
  bool holding = false;     // a sync waits for release_sync
  std::condition_variable hold_cv;

  // Whether this read fails (fail_reads), counting it.
  bool read_fails() {
    std::lock_guard lock(mutex);
    if (reads_to_fail == 0) return false;
    if (reads_to_pass > 0) {
      reads_to_pass--;
      return false;
    }
    if (reads_to_fail != FaultyFileSystem::kUntilDisarmed) reads_to_fail--;
    return true;
  }

  // The errno this open fails with (fail_creates or fail_dir_syncs), counting
  // it; 0 when it does not fail.
  int open_fails(OpenFailures* failures) {
    std::lock_guard lock(mutex);
    if (failures->left == 0) return 0;
    if (failures->left != FaultyFileSystem::kUntilDisarmed) failures->left--;
    return failures->error;
  }

  bool is_crashed() const {
    std::lock_guard lock(mutex);
    return crashed;
  }

  WritePlan plan_write(std::uint64_t size_bytes) {
    std::lock_guard lock(mutex);
    WritePlan plan;
    if (crashed) {
      plan.crashed = true;
      return plan;
    }
    plan.keep_bytes = size_bytes;
    if (flip_armed && size_bytes > 0) {
      flip_armed = false;
      plan.flip = true;
      plan.flip_bit_index = flip_bit_index % (size_bytes * 8);
    }
    if (tear_armed) {
      tear_armed = false;
      plan.keep_bytes = std::min(tear_keep_bytes, size_bytes);
      plan.error = Status(ErrorCode::io_error, "simulated torn write");
      crashed = tear_crash;
    }
    if (space_left_bytes != kNoLimit) {
      if (plan.keep_bytes > space_left_bytes) {
        plan.keep_bytes = space_left_bytes;
        plan.error = Status(ErrorCode::io_error, "write: No space left on device (simulated)",
                            ENOSPC);
      }
      space_left_bytes -= plan.keep_bytes;
    }
    return plan;
  }

  // A sync held by hold_next_sync waits here.
  void wait_if_held() {
    std::unique_lock lock(mutex);
    if (!hold_armed) return;
    hold_armed = false;
    holding = true;
    hold_cv.notify_all();
    hold_cv.wait(lock, [this] { return !holding; });
  }

  // Whether this sync is the one armed to fail.
  bool sync_fails() {
    std::lock_guard lock(mutex);
    if (sync_countdown == 0) return false;
    return --sync_countdown == 0;
  }

  // A preallocation of `bytes` more: all of them when that many are left;
  // else what is left, all of it, which the caller reports as ENOSPC.
  std::uint64_t take_for_preallocation(std::uint64_t bytes) {
    std::lock_guard lock(mutex);
    if (space_left_bytes == kNoLimit || space_left_bytes >= bytes) return bytes;
    return std::exchange(space_left_bytes, 0);
  }
};

namespace {

class FaultyFile final : public File {
 public:
  FaultyFile(FaultyFileSystem::State& state, std::unique_ptr<File> base)
      : state_(state), base_(std::move(base)) {}

  Status read_at(std::uint64_t offset, std::span<std::byte> out) override {
    if (state_.is_crashed()) return crash_status();
    const std::int64_t delay_ms = state_.read_delay_ms.load(std::memory_order_relaxed);
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if (state_.read_fails()) {
      return Status(ErrorCode::io_error, "read: Input/output error (simulated)");
    }
    return base_->read_at(offset, out);
  }

  Status write_at(std::uint64_t offset, std::span<const std::byte> data) override {
    const WritePlan plan = state_.plan_write(data.size());
    if (plan.crashed) return crash_status();
    state_.writes.fetch_add(1, std::memory_order_relaxed);
    std::vector<std::byte> flipped;
    if (plan.flip) {
      flipped.assign(data.begin(), data.end());
      flipped[plan.flip_bit_index / 8] ^= std::byte{static_cast<unsigned char>(1u << (plan.flip_bit_index % 8))};
      data = flipped;
    }
    if (plan.keep_bytes > 0) {
      TALLY_TRY(base_->write_at(offset, data.first(plan.keep_bytes)));
      state_.bytes_written.fetch_add(plan.keep_bytes, std::memory_order_relaxed);
    }
    return plan.error;
  }

  Status sync() override {
    if (state_.is_crashed()) return crash_status();
    state_.syncs.fetch_add(1, std::memory_order_relaxed);
    state_.wait_if_held();
    if (state_.sync_fails()) return Status(ErrorCode::io_error, "fdatasync: Input/output error (simulated)");
    return base_->sync();
  }

  Result<std::uint64_t> size() override {
    if (state_.is_crashed()) return crash_status();
    return base_->size();
  }

  Status truncate(std::uint64_t size_bytes) override {
    if (state_.is_crashed()) return crash_status();
    return base_->truncate(size_bytes);
  }

  Status preallocate(std::uint64_t size_bytes) override {
    if (state_.is_crashed()) return crash_status();
    auto size = base_->size();
    if (!size) return size.status();
    const std::uint64_t wanted = size_bytes > *size ? size_bytes - *size : 0;
    const std::uint64_t taken = state_.take_for_preallocation(wanted);
    if (taken < wanted) {
      // As on ext4: the file keeps what the call could take.
      if (taken > 0) TALLY_TRY(base_->preallocate(*size + taken));
      return Status(ErrorCode::io_error, "preallocate: No space left on device (simulated)",
                    ENOSPC);
    }
    return base_->preallocate(size_bytes);
  }

 private:
  FaultyFileSystem::State& state_;
  std::unique_ptr<File> base_;
};

}  // namespace

FaultyFileSystem::FaultyFileSystem(FileSystem& base)
    : base_(base), state_(std::make_unique<State>()) {}

FaultyFileSystem::~FaultyFileSystem() = default;

std::uint64_t FaultyFileSystem::syncs() const { return state_->syncs.load(); }
std::uint64_t FaultyFileSystem::dir_syncs() const { return state_->dir_syncs.load(); }
std::uint64_t FaultyFileSystem::writes() const { return state_->writes.load(); }
std::uint64_t FaultyFileSystem::bytes_written() const { return state_->bytes_written.load(); }

void FaultyFileSystem::reset_counters() {
  state_->syncs = 0;
  state_->dir_syncs = 0;
  state_->writes = 0;
  state_->bytes_written = 0;
}

void FaultyFileSystem::fail_sync(std::uint64_t nth) {
  TALLY_ASSERT(nth >= 1);
  std::lock_guard lock(state_->mutex);
  state_->sync_countdown = nth;
}

void FaultyFileSystem::fail_writes_after_bytes(std::uint64_t bytes) {
  TALLY_ASSERT(bytes != kNoLimit);
  std::lock_guard lock(state_->mutex);
  state_->space_left_bytes = bytes;
}

void FaultyFileSystem::tear_next_write(std::uint64_t keep_bytes, bool crash) {
  std::lock_guard lock(state_->mutex);
  state_->tear_armed = true;
  state_->tear_keep_bytes = keep_bytes;
  state_->tear_crash = crash;
}

void FaultyFileSystem::flip_bit_in_next_write(std::uint64_t bit_index) {
  std::lock_guard lock(state_->mutex);
  state_->flip_armed = true;
  state_->flip_bit_index = bit_index;
}

void FaultyFileSystem::delay_reads(std::chrono::milliseconds delay) {
  state_->read_delay_ms.store(delay.count(), std::memory_order_relaxed);
}

void FaultyFileSystem::fail_reads(std::uint64_t count, std::uint64_t after) {
  std::lock_guard lock(state_->mutex);
  state_->reads_to_pass = after;
  state_->reads_to_fail = count;
}

void FaultyFileSystem::fail_creates(std::uint64_t count, int error) {
  TALLY_ASSERT(error != 0);
  std::lock_guard lock(state_->mutex);
  state_->creates = {count, error};
}

void FaultyFileSystem::fail_dir_syncs(std::uint64_t count, int error) {
  TALLY_ASSERT(error != 0);
  std::lock_guard lock(state_->mutex);
  state_->dir_syncs_failing = {count, error};
}

void FaultyFileSystem::hold_next_sync() {
  std::lock_guard lock(state_->mutex);
  state_->hold_armed = true;
}

bool FaultyFileSystem::wait_until_sync_held(std::chrono::milliseconds timeout) {
  std::unique_lock lock(state_->mutex);
  return state_->hold_cv.wait_for(lock, timeout, [this] { return state_->holding; });
}

void FaultyFileSystem::release_sync() {
  std::lock_guard lock(state_->mutex);
  state_->holding = false;
  state_->hold_cv.notify_all();
}

void FaultyFileSystem::disarm() {
  state_->read_delay_ms.store(0, std::memory_order_relaxed);
  std::lock_guard lock(state_->mutex);
  state_->reads_to_fail = 0;
  state_->creates = {};
  state_->dir_syncs_failing = {};
  state_->crashed = false;
  state_->sync_countdown = 0;
  state_->space_left_bytes = kNoLimit;
  state_->tear_armed = false;
  state_->flip_armed = false;
  state_->hold_armed = false;
  state_->holding = false;
  state_->hold_cv.notify_all();
}

bool FaultyFileSystem::crashed() const { return state_->is_crashed(); }

Result<std::unique_ptr<File>> FaultyFileSystem::open(const std::string& path, Mode mode) {
  if (state_->is_crashed()) return crash_status();
  if (mode == Mode::create) {
    if (const int error = state_->open_fails(&state_->creates); error != 0) {
      return simulated_open_failure("open " + path, error);
    }
  }
  auto file = base_.open(path, mode);
  if (!file) return file.status();
  return std::unique_ptr<File>(std::make_unique<FaultyFile>(*state_, std::move(*file)));
}

bool FaultyFileSystem::exists(const std::string& path) {
  return !state_->is_crashed() && base_.exists(path);
}

Result<std::vector<std::string>> FaultyFileSystem::list(const std::string& dir) {
  if (state_->is_crashed()) return crash_status();
  return base_.list(dir);
}

Status FaultyFileSystem::make_dirs(const std::string& dir) {
  if (state_->is_crashed()) return crash_status();
  return base_.make_dirs(dir);
}

Status FaultyFileSystem::remove(const std::string& path) {
  if (state_->is_crashed()) return crash_status();
  return base_.remove(path);
}

Status FaultyFileSystem::rename(const std::string& from, const std::string& to) {
  if (state_->is_crashed()) return crash_status();
  return base_.rename(from, to);
}

Status FaultyFileSystem::sync_dir(const std::string& dir) {
  if (state_->is_crashed()) return crash_status();
  if (const int error = state_->open_fails(&state_->dir_syncs_failing); error != 0) {
    return simulated_open_failure("open directory " + dir, error);
  }
  state_->dir_syncs.fetch_add(1, std::memory_order_relaxed);
  return base_.sync_dir(dir);
}

Status flip_bit(FileSystem& fs, const std::string& path, std::uint64_t offset, int bit) {
  TALLY_ASSERT(bit >= 0);
  TALLY_ASSERT(bit < 8);
  auto file = fs.open(path, FileSystem::Mode::read_write);
  if (!file) return file.status();
  std::byte value{};
  TALLY_TRY((*file)->read_at(offset, std::span(&value, 1)));
  value ^= std::byte{static_cast<unsigned char>(1u << bit)};
  return (*file)->write_at(offset, std::span<const std::byte>(&value, 1));
}

}  // namespace tally::log
