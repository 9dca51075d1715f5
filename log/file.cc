// The POSIX file system behind FileSystem.
#include "log/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

namespace tally::log {

namespace {

// One pread/pwrite call moves at most this much, so a huge request cannot
// hit the kernel's per-call limit (about 2 GiB on Linux).
constexpr std::size_t kIoChunkBytesMax = std::size_t{1} << 30;

Status errno_status(const char* what, const std::string& path, int error) {
  const ErrorCode code = error == ENOENT ? ErrorCode::not_found : ErrorCode::io_error;
  return Status(code, std::string(what) + " " + path + ": " + std::strerror(error), error);
}

// A view read into memory.
class CopiedView final : public FileView {
 public:
  explicit CopiedView(std::uint64_t size_bytes)
      : words_(std::make_unique_for_overwrite<std::uint64_t[]>(words_for(size_bytes))),
        size_bytes_(static_cast<std::size_t>(size_bytes)) {
    if (size_bytes % 8 != 0) words_[size_bytes / 8] = 0;
  }
  std::span<std::byte> writable() { return {reinterpret_cast<std::byte*>(words_.get()), size_bytes_}; }
  std::span<const std::byte> bytes() const override {
    return {reinterpret_cast<const std::byte*>(words_.get()), size_bytes_};
  }

 private:
  static std::size_t words_for(std::uint64_t size_bytes) {
    return static_cast<std::size_t>((size_bytes + 7) / 8);
  }
  std::unique_ptr<std::uint64_t[]> words_;
  std::size_t size_bytes_;
};

// A read-only shared mapping. The kernel zero-fills the last page past the
// end of the file, which gives FileView's trailing zeros when the view ends
// at the end of the file.
class MappedView final : public FileView {
 public:
  MappedView(void* base, std::size_t size_bytes) : base_(base), size_bytes_(size_bytes) {}
  ~MappedView() override { ::munmap(base_, size_bytes_); }
  MappedView(const MappedView&) = delete;
  MappedView& operator=(const MappedView&) = delete;
  std::span<const std::byte> bytes() const override {
    return {static_cast<const std::byte*>(base_), size_bytes_};
  }

 private:
  void* base_;
  std::size_t size_bytes_;
};

class PosixFile final : public File {
 public:
  // read_through: see posix_read_through_file_system; cancelled, when not
  // null, stops that read (see make_posix_read_through_file_system).
  PosixFile(int fd, std::string path, bool read_through, const std::atomic<bool>* cancelled)
      : fd_(fd), path_(std::move(path)), read_through_(read_through), cancelled_(cancelled) {}
  ~PosixFile() override { ::close(fd_); }
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;

  Status read_at(std::uint64_t offset, std::span<std::byte> out) override {
    if (cancelled_ != nullptr && cancelled_->load(std::memory_order_relaxed)) {
      return Status(ErrorCode::closed, "read " + path_ + ": cancelled");
    }
    std::size_t done_bytes = 0;
    while (done_bytes < out.size()) {
      const std::size_t want = std::min(out.size() - done_bytes, kIoChunkBytesMax);
      const ssize_t n = ::pread(fd_, out.data() + done_bytes, want,
                                static_cast<off_t>(offset + done_bytes));
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno_status("read", path_, errno);
      }
      if (n == 0) {
        return Status(ErrorCode::io_error,
                      "read " + path_ + ": short read at offset " +
                          std::to_string(offset + done_bytes) + " (file ends)");
      }
      done_bytes += static_cast<std::size_t>(n);
    }
    return Status();
  }

  Status write_at(std::uint64_t offset, std::span<const std::byte> data) override {
    std::size_t done_bytes = 0;
    while (done_bytes < data.size()) {
      const std::size_t want = std::min(data.size() - done_bytes, kIoChunkBytesMax);
      const ssize_t n = ::pwrite(fd_, data.data() + done_bytes, want,
                                 static_cast<off_t>(offset + done_bytes));
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno_status("write", path_, errno);
      }
      // pwrite returns 0 only for a zero-byte request; guard against a loop
      // that makes no progress anyway.
      if (n == 0) return Status(ErrorCode::io_error, "write " + path_ + ": no progress");
      done_bytes += static_cast<std::size_t>(n);
    }
    return Status();
  }

  Status sync() override {
    while (::fdatasync(fd_) != 0) {
      if (errno != EINTR) return errno_status("fdatasync", path_, errno);
    }
    return Status();
  }

  Result<std::uint64_t> size() override {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return errno_status("stat", path_, errno);
    return static_cast<std::uint64_t>(st.st_size);
  }

  Result<std::unique_ptr<FileView>> view(std::uint64_t size_bytes) override {
    auto file_bytes = size();
    if (!file_bytes) return file_bytes.status();
    size_bytes = std::min(size_bytes, *file_bytes);
    // A view ending inside a word but before the end of the file would show
    // the file's next bytes where FileView promises zeros: copy that one.
    if (size_bytes == 0 || (size_bytes % 8 != 0 && size_bytes != *file_bytes) ||
        size_bytes > std::numeric_limits<std::size_t>::max()) {
      return File::view(size_bytes);
    }
    const auto length = static_cast<std::size_t>(size_bytes);
    // Pages are mapped as a scan reaches them (not MAP_POPULATE): a
    // reader maps a segment to judge what follows its records, often a few
    // pages of it.
    if (read_through_) TALLY_TRY(read_through(size_bytes));
    void* base = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd_, 0);
    if (base == MAP_FAILED) return errno_status("map", path_, errno);
    return std::unique_ptr<FileView>(std::make_unique<MappedView>(base, length));
  }

  Status truncate(std::uint64_t size_bytes) override {
    while (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) {
      if (errno != EINTR) return errno_status("truncate", path_, errno);
    }
    return Status();
  }

  Status preallocate(std::uint64_t size_bytes) override {
    if (size_bytes == 0) return Status();  // posix_fallocate refuses a length of 0
    // posix_fallocate returns the error instead of setting errno.
    int error = 0;
    do {
      error = ::posix_fallocate(fd_, 0, static_cast<off_t>(size_bytes));
    } while (error == EINTR);
    if (error != 0) return errno_status("preallocate", path_, error);
    return Status();
  }

 private:
  // Reads the first size_bytes once with pread, so that a sector the disk
  // cannot read fails here (EIO) rather than as a mapped page (SIGBUS).
  // The pages it reads stay in the page cache for the mapping.
  Status read_through(std::uint64_t size_bytes) {
    std::vector<std::byte> chunk(std::min<std::uint64_t>(size_bytes, kReadThroughChunkBytes));
    for (std::uint64_t offset = 0; offset < size_bytes; offset += chunk.size()) {
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), size_bytes - offset));
      TALLY_TRY(read_at(offset, std::span<std::byte>(chunk.data(), want)));
    }
    return Status();
  }

  static constexpr std::uint64_t kReadThroughChunkBytes = 1 << 18;
  int fd_;
  std::string path_;
  bool read_through_;
  const std::atomic<bool>* cancelled_;
};

}  // namespace

Result<std::unique_ptr<FileView>> File::view(std::uint64_t size_bytes) {
  auto file_bytes = size();
  if (!file_bytes) return file_bytes.status();
  size_bytes = std::min(size_bytes, *file_bytes);
  if (size_bytes > std::numeric_limits<std::size_t>::max() - 8) {
    return Status(ErrorCode::io_error, "view: file too large for memory");
  }
  auto view = std::make_unique<CopiedView>(size_bytes);
  TALLY_TRY(read_at(0, view->writable()));
  return std::unique_ptr<FileView>(std::move(view));
}

namespace {

class PosixFileSystem final : public FileSystem {
 public:
  PosixFileSystem(bool read_through, const std::atomic<bool>* cancelled)
      : read_through_(read_through), cancelled_(cancelled) {}

  Result<std::unique_ptr<File>> open(const std::string& path, Mode mode) override {
    int flags = O_CLOEXEC;
    switch (mode) {
      case Mode::read_only: flags |= O_RDONLY; break;
      case Mode::read_write: flags |= O_RDWR; break;
      case Mode::create: flags |= O_RDWR | O_CREAT; break;
    }
    int fd = -1;
    do {
      fd = ::open(path.c_str(), flags, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return errno_status("open", path, errno);
    return std::unique_ptr<File>(std::make_unique<PosixFile>(fd, path, read_through_, cancelled_));
  }

  bool exists(const std::string& path) override {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
  }

  Result<std::vector<std::string>> list(const std::string& dir) override {
    DIR* handle = ::opendir(dir.c_str());
    if (handle == nullptr) return errno_status("list", dir, errno);
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* entry = ::readdir(handle)) {
      const std::string_view name(entry->d_name);
      if (name != "." && name != "..") names.emplace_back(name);
    }
    const int error = errno;
    ::closedir(handle);
    if (error != 0) return errno_status("list", dir, error);
    std::sort(names.begin(), names.end());
    return names;
  }

  Status make_dirs(const std::string& dir) override {
    // Walk the components from the root so that missing parents are made
    // first; an existing directory at any level is fine. Each one made is
    // made durable in its parent, so that a new ledger's first synced
    // segment cannot outlive the directories that name it after a crash.
    for (std::size_t end = 1; end <= dir.size(); end++) {
      if (end != dir.size() && dir[end] != '/') continue;
      const std::string prefix = dir.substr(0, end);
      if (::mkdir(prefix.c_str(), 0755) == 0) {
        const std::size_t slash = prefix.find_last_of('/');
        const std::string parent = slash == std::string::npos ? "."
                                   : slash == 0               ? "/"
                                                              : prefix.substr(0, slash);
        // A parent this process may search but not read cannot be opened
        // to sync: its entry is left to the file system, as before.
        if (::access(parent.c_str(), R_OK) == 0) TALLY_TRY(sync_dir(parent));
        continue;
      }
      const int error = errno;
      // EEXIST, or a refusal (EACCES, EROFS) for a directory that is there:
      // both are fine as long as it is a directory.
      struct stat st {};
      if (::stat(prefix.c_str(), &st) != 0) {
        // EEXIST, yet stat finds nothing: a symlink to what is not there.
        const int stat_error = errno;
        if (error == EEXIST && stat_error == ENOENT && ::lstat(prefix.c_str(), &st) == 0 &&
            S_ISLNK(st.st_mode)) {
          return Status(ErrorCode::io_error,
                        "mkdir " + prefix + ": a symlink to a path that does not exist");
        }
        return errno_status("mkdir", prefix, error);
      }
      if (!S_ISDIR(st.st_mode)) {
        return Status(ErrorCode::io_error, "mkdir " + prefix + ": exists and is not a directory");
      }
    }
    return Status();
  }

  Status remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return errno_status("remove", path, errno);
    return Status();
  }

  Status rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return errno_status("rename", from + " to " + to, errno);
    }
    return Status();
  }

  Status sync_dir(const std::string& dir) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno_status("open directory", dir, errno);
    int result = 0;
    do {
      result = ::fsync(fd);
    } while (result != 0 && errno == EINTR);
    const int error = errno;
    ::close(fd);
    if (result != 0) return errno_status("fsync directory", dir, error);
    return Status();
  }

 private:
  const bool read_through_;
  const std::atomic<bool>* const cancelled_;
};

}  // namespace

FileSystem& posix_file_system() {
  // Stateless, so one shared instance is safe; function-local so that its
  // construction is ordered before first use.
  static PosixFileSystem file_system(/*read_through=*/false, /*cancelled=*/nullptr);
  return file_system;
}

FileSystem& posix_read_through_file_system() {
  static PosixFileSystem file_system(/*read_through=*/true, /*cancelled=*/nullptr);
  return file_system;
}

std::unique_ptr<FileSystem> make_posix_read_through_file_system(
    const std::atomic<bool>& cancelled) {
  return std::make_unique<PosixFileSystem>(/*read_through=*/true, &cancelled);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string parent_dir(const std::string& path) {
  std::size_t end = path.size();
  while (end > 1 && path[end - 1] == '/') end--;
  const std::size_t slash = path.rfind('/', end - 1);
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

Result<std::vector<std::uint64_t>> read_whole_file(FileSystem& fs, const std::string& path,
                                                   std::uint64_t* size_bytes) {
  auto file = fs.open(path, FileSystem::Mode::read_only);
  if (!file) return file.status();
  auto size = (*file)->size();
  if (!size) return size.status();
  if (*size > std::numeric_limits<std::size_t>::max() - sizeof(std::uint64_t)) {
    return Status(ErrorCode::io_error, "read " + path + ": file too large");
  }
  // Zero-initialized, so the bytes past the end of the file in the last word
  // are zeros rather than garbage.
  std::vector<std::uint64_t> words((*size + sizeof(std::uint64_t) - 1) / sizeof(std::uint64_t));
  auto bytes = std::as_writable_bytes(std::span(words)).first(static_cast<std::size_t>(*size));
  TALLY_TRY((*file)->read_at(0, bytes));
  if (size_bytes != nullptr) *size_bytes = *size;
  return words;
}

}  // namespace tally::log
