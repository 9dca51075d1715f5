// Environment::check_meta_pages and check_trees: LMDB's meta pages and
// B-trees read from the file, page by page, before LMDB itself reads them.
//
// LMDB trusts its pages. A damaged page ends the process in LMDB's own
// walk of it: an assert() on a zeroed page (SIGABRT), a page number past
// the file (SIGBUS), a node offset or a count that runs off its page
// (SIGSEGV). So the trees are walked here first, read from the file and
// every bound checked, against LMDB's layout of 64-bit little-endian builds
// (mdb.c: MDB_page, MDB_meta, MDB_db, MDB_node): from the roots the meta
// page gives, the free database (its records too: counts and page numbers)
// and the main one, whose records name the store's databases, and those of
// the databases asked for: every branch and leaf page and the first page
// of every overflow run. The records' bytes are the store's to check.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "log/file.h"
#include "snapshots/lmdb_util.h"

namespace tally::snap::lmdb {

namespace {

static_assert(std::endian::native == std::endian::little && sizeof(std::size_t) == 8,
              "the layout below is LMDB's on 64-bit little-endian machines");

// MDB_page: u64 pgno, u16 pad, u16 flags, then u16 lower and u16 upper (or,
// on an overflow page, u32 pages); the node offsets (u16 each) follow.
constexpr std::size_t kPageHeaderBytes = 16;
constexpr std::size_t kFlagsAt = 10;
constexpr std::size_t kLowerAt = 12;
constexpr std::size_t kUpperAt = 14;
constexpr std::size_t kOverflowPagesAt = 12;
constexpr std::uint16_t kBranchPage = 0x01;
constexpr std::uint16_t kLeafPage = 0x02;
constexpr std::uint16_t kOverflowPage = 0x04;
// The flags that say what a page is (branch, leaf, overflow, meta, leaf2,
// sub-page); the others (dirty, loose, keep) are LMDB's bookkeeping.
constexpr std::uint16_t kKindFlags = 0x6f;
// MDB_meta after the page header: u32 magic, u32 version, u64 address, u64
// map size, then MDB_db[2] (the free database first, 48 bytes each), u64
// last page, u64 txnid. MDB_db: u32 pad, u16 flags, u16 depth, u64 branch,
// leaf and overflow page counts, u64 entries, u64 root.
constexpr std::size_t kMetaMagicAt = kPageHeaderBytes;
constexpr std::uint32_t kMetaMagic = 0xBEEFC0DE;
constexpr std::size_t kMetaFreeDbAt = kPageHeaderBytes + 24;
constexpr std::size_t kMetaPageSizeAt = kMetaFreeDbAt;  // the free database's pad
constexpr std::size_t kDbBytes = 48;
constexpr std::size_t kDbFlagsAt = 4;
constexpr std::uint16_t kIntegerKeys = 0x08;  // MDB_INTEGERKEY, the free list's
constexpr std::size_t kDbDepthAt = 6;
constexpr std::size_t kDbEntriesAt = 32;
constexpr std::size_t kDbRootAt = 40;
constexpr std::size_t kMetaLastPageAt = kMetaFreeDbAt + 2 * kDbBytes;
constexpr std::size_t kMetaTxnidAt = kMetaLastPageAt + 8;
constexpr std::size_t kMetaBytes = kMetaTxnidAt + 8;
constexpr std::uint64_t kNoPage = ~std::uint64_t{0};  // an empty tree's root
// MDB_node: u16 lo, u16 hi, u16 flags, u16 key size, then the key and the
// data. A leaf's data size is lo | hi << 16; a branch's child page is
// lo | hi << 16 | flags << 32.
constexpr std::size_t kNodeHeaderBytes = 8;
constexpr std::uint16_t kNodeBigData = 0x01;  // the data is on overflow pages
constexpr std::uint16_t kNodeNamedDb = 0x02;  // the data is a named database's MDB_db
constexpr std::size_t kKeyBytesMax = 511;     // LMDB's default MDB_MAXKEYSIZE
constexpr std::size_t kTxnidBytes = 8;        // the free database's keys
// LMDB's cursor holds at most 32 pages (CURSOR_STACK), one per level.
constexpr int kDepthMax = 32;

std::uint64_t load(const std::vector<std::uint8_t>& bytes, std::size_t at, std::size_t width) {
  return get_le(bytes.data() + at, width);
}

std::uint16_t kind_of(const std::vector<std::uint8_t>& page) {
  return static_cast<std::uint16_t>(load(page, kFlagsAt, 2) & kKindFlags);
}

class TreeWalk {
 public:
  // `file` is the environment's data.mdb; the trees of the named databases
  // in `db_names` are walked too.
  TreeWalk(std::string_view component, log::File& file, std::size_t page_bytes,
           std::span<const char* const> db_names)
      : component_(component), file_(file), page_bytes_(page_bytes), db_names_(db_names) {}

  // Walks the trees the meta page of transaction `txnid` describes. ok
  // without a walk when neither meta page is that transaction's any more
  // (a writer in another process committed twice since it began: the pages
  // it reads stay put, but the meta was overwritten).
  Status walk(std::uint64_t txnid) {
    for (std::uint64_t meta_page = 0; meta_page < 2; meta_page++) {
      std::vector<std::uint8_t> meta;
      TALLY_TRY(read(meta_page, kMetaBytes, &meta));
      if (load(meta, kMetaTxnidAt, 8) != txnid) continue;
      last_page_ = load(meta, kMetaLastPageAt, 8);
      if (last_page_ < 1 || last_page_ > file_pages_max()) {
        return damaged("the meta page", "a last page of " + std::to_string(last_page_));
      }
      visited_.assign(last_page_ + 1, false);
      TALLY_TRY(walk_tree(Tree::free_list, "free list", meta.data() + kMetaFreeDbAt));
      return walk_tree(Tree::main, "main database", meta.data() + kMetaFreeDbAt + kDbBytes);
    }
    return Status();
  }

 private:
  // What a tree's records are: the free list's, page numbers free since a
  // transaction; the main database's, the named databases; a named one's,
  // the store's.
  enum class Tree { free_list, main, named };

  // The tree being walked, and the records met so far.
  struct Walked {
    Tree tree;
    std::string name;
    std::uint64_t entries = 0;
  };

  Status damaged(std::string_view where, const std::string& what) const {
    return Status(ErrorCode::corrupt,
                  std::string(component_) + ": " + std::string(where) + ": " + what);
  }

  // The most pages the file can hold (open() checked it holds those in use).
  std::uint64_t file_pages_max() const { return (std::uint64_t{1} << 48) / page_bytes_; }

  bool in_use(std::uint64_t page) const { return page >= 2 && page <= last_page_; }

  // `bytes` bytes from the start of page `page`. Every page read is in use,
  // and open() checked that the file holds those (check_file_size).
  Status read(std::uint64_t page, std::size_t bytes, std::vector<std::uint8_t>* out) const {
    out->resize(bytes);
    return file_.read_at(page * page_bytes_, std::as_writable_bytes(std::span(*out)));
  }

  // Marks `page` visited; damaged when it is not in use or was reached before.
  Status claim(const std::string& where, std::uint64_t page) {
    if (!in_use(page)) return damaged(where, "not among the pages in use");
    if (visited_[page]) return damaged(where, "reached twice");
    visited_[page] = true;
    return Status();
  }

  // The tree whose MDB_db record is `db`.
  Status walk_tree(Tree tree, std::string name, const std::uint8_t* db) {
    const std::uint64_t root = get_le(db + kDbRootAt, 8);
    const int depth = static_cast<int>(get_le(db + kDbDepthAt, 2));
    const std::uint64_t entries = get_le(db + kDbEntriesAt, 8);
    const auto flags = static_cast<std::uint16_t>(get_le(db + kDbFlagsAt, 2));
    Walked walked{tree, std::move(name)};
    const std::string where = walked.name;
    // The free list's keys are integers; the store's trees take none of
    // LMDB's options (duplicates would give their leaves another layout).
    if (flags != (tree == Tree::free_list ? kIntegerKeys : 0)) {
      return damaged(where, "database flags " + std::to_string(flags));
    }
    if (root == kNoPage) {
      return depth == 0 && entries == 0 ? Status() : damaged(where, "an empty tree with entries");
    }
    if (depth < 1 || depth > kDepthMax) {
      return damaged(where, "a tree depth of " + std::to_string(depth));
    }
    TALLY_TRY(visit(&walked, root, depth));
    if (walked.entries != entries) {
      return damaged(where, std::to_string(walked.entries) +
                                " records where its record counts " + std::to_string(entries));
    }
    return Status();
  }

  // The page `page` of the tree, `depth` levels above the leaves and them.
  Status visit(Walked* walked, std::uint64_t page, int depth) {
    const std::string where = walked->name + ": page " + std::to_string(page);
    TALLY_TRY(claim(where, page));
    std::vector<std::uint8_t> bytes;
    TALLY_TRY(read(page, page_bytes_, &bytes));
    const std::uint16_t kind = depth > 1 ? kBranchPage : kLeafPage;
    if (load(bytes, 0, 8) != page || kind_of(bytes) != kind) {
      return damaged(where, std::string("not the ") + (depth > 1 ? "branch" : "leaf") +
                                " page it should be");
    }
    const std::size_t lower = load(bytes, kLowerAt, 2);
    const std::size_t upper = load(bytes, kUpperAt, 2);
    if (lower < kPageHeaderBytes || lower % 2 != 0 || lower > upper || upper > page_bytes_) {
      return damaged(where, "its header's bounds do not hold");
    }
    const std::size_t nodes = (lower - kPageHeaderBytes) / 2;
    if (nodes == 0) return damaged(where, "empty");
    for (std::size_t index = 0; index < nodes; index++) {
      const std::size_t at = load(bytes, kPageHeaderBytes + 2 * index, 2);
      if (at < upper || at % 2 != 0 || at + kNodeHeaderBytes > page_bytes_) {
        return damaged(where, "a node outside the page");
      }
      const std::size_t key_bytes = load(bytes, at + 6, 2);
      const std::size_t key_end = at + kNodeHeaderBytes + key_bytes;
      if (key_bytes > kKeyBytesMax || key_end > page_bytes_) {
        return damaged(where, "a node outside the page");
      }
      // The first key of a branch page is never read: it may be empty.
      const bool key_read = depth == 1 || index > 0;
      if (walked->tree == Tree::free_list && key_read && key_bytes != kTxnidBytes) {
        return damaged(where, "a key of the wrong size");
      }
      if (depth > 1) {
        TALLY_TRY(visit(walked, load(bytes, at, 6), depth - 1));
        continue;
      }
      walked->entries++;
      TALLY_TRY(check_leaf_node(walked, where, bytes, at, key_end));
    }
    return Status();
  }

  // The leaf node at `at` of page `bytes`, its key ending at `key_end`.
  Status check_leaf_node(Walked* walked, const std::string& where,
                         const std::vector<std::uint8_t>& bytes, std::size_t at,
                         std::size_t key_end) {
    const std::size_t data_bytes = load(bytes, at, 4);
    const auto node_flags = static_cast<std::uint16_t>(load(bytes, at + 4, 2));
    if (node_flags == kNodeBigData) {
      if (key_end + 8 > page_bytes_) return damaged(where, "a node outside the page");
      return check_overflow(*walked, load(bytes, key_end, 8), data_bytes);
    }
    const bool named_db = walked->tree == Tree::main && node_flags == kNodeNamedDb;
    if (node_flags != 0 && !named_db) return damaged(where, "a node of an unknown kind");
    if (key_end + data_bytes > page_bytes_) return damaged(where, "a node outside the page");
    const std::span record = std::span(bytes).subspan(key_end, data_bytes);
    if (walked->tree == Tree::free_list) return check_free_pages(record);
    if (!named_db) return Status();
    if (data_bytes != kDbBytes) return damaged(where, "a database record of the wrong size");
    const std::string name(reinterpret_cast<const char*>(bytes.data()) + at + kNodeHeaderBytes,
                           key_end - at - kNodeHeaderBytes);
    if (std::find(db_names_.begin(), db_names_.end(), name) == db_names_.end()) return Status();
    return walk_tree(Tree::named, "database '" + printable(name) + "'", record.data());
  }

  // A record kept on overflow pages from `page` on; a free list's record is
  // read and checked.
  Status check_overflow(const Walked& walked, std::uint64_t page, std::size_t data_bytes) {
    const std::string where = walked.name + ": overflow page " + std::to_string(page);
    TALLY_TRY(claim(where, page));
    std::vector<std::uint8_t> header;
    TALLY_TRY(read(page, kPageHeaderBytes, &header));
    const std::uint64_t pages = load(header, kOverflowPagesAt, 4);
    if (load(header, 0, 8) != page || kind_of(header) != kOverflowPage || pages == 0 ||
        pages - 1 > last_page_ - page ||
        data_bytes > pages * page_bytes_ - kPageHeaderBytes) {
      return damaged(where, "not the overflow page it should be");
    }
    for (std::uint64_t next = page + 1; next < page + pages; next++) {
      TALLY_TRY(claim(where, next));
    }
    if (walked.tree != Tree::free_list) return Status();
    std::vector<std::uint8_t> bytes;
    TALLY_TRY(read(page, kPageHeaderBytes + data_bytes, &bytes));
    return check_free_pages(std::span(bytes).subspan(kPageHeaderBytes));
  }

  // A free list's record: a count, then that many page numbers, each a u64.
  Status check_free_pages(std::span<const std::uint8_t> record) const {
    if (record.size() < 8 || record.size() % 8 != 0) {
      return damaged("free list", "a record of the wrong size");
    }
    const std::uint64_t count = get_le(record.data(), 8);
    if (count != record.size() / 8 - 1) return damaged("free list", "a count that does not fit");
    for (std::size_t index = 1; index <= count; index++) {
      if (!in_use(get_le(record.data() + 8 * index, 8))) {
        return damaged("free list", "a page past the pages in use");
      }
    }
    return Status();
  }

  // A database's name as a message may show it.
  static std::string printable(const std::string& name) {
    std::string shown;
    for (const char c : name.substr(0, 32)) shown += c >= 0x20 && c < 0x7f ? c : '?';
    return shown;
  }

  const std::string_view component_;
  log::File& file_;
  const std::size_t page_bytes_;
  const std::span<const char* const> db_names_;
  std::uint64_t last_page_ = 0;
  std::vector<bool> visited_;
};

}  // namespace

Status Environment::check_meta_pages() const {
  const std::string path = dir_ + "/data.mdb";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return Status();
  const auto io_error = [&](const char* what) {
    return Status(ErrorCode::io_error,
                  component_ + ": " + what + " " + path + ": " + std::strerror(errno));
  };
  if (fd < 0) return io_error("open");
  struct stat file_stat {};
  if (::fstat(fd, &file_stat) != 0) {
    const Status failed = io_error("stat");
    ::close(fd);
    return failed;
  }
  const auto file_bytes = static_cast<std::uint64_t>(file_stat.st_size);
  // The u32 or u64 at `offset`; false past the file's end.
  const auto read_le = [&](std::uint64_t offset, std::size_t width, std::uint64_t* value) {
    std::uint8_t bytes[8] = {};
    if (::pread(fd, bytes, width, static_cast<off_t>(offset)) != static_cast<ssize_t>(width)) {
      return false;
    }
    *value = get_le(bytes, width);
    return true;
  };
  const auto damaged = [&](std::uint64_t page, const std::string& what) {
    return Status(ErrorCode::corrupt, component_ + ": " + path + ": meta page " +
                                          std::to_string(page) + " " + what);
  };
  std::uint64_t sizes[2] = {0, 0};
  Status status;
  for (std::uint64_t page = 0; page < 2 && status.ok(); page++) {
    const std::uint64_t start = page * sizes[0];
    std::uint64_t magic = 0;
    std::uint64_t last_page = 0;
    if (!read_le(start + kMetaMagicAt, 4, &magic) || magic != kMetaMagic ||
        !read_le(start + kMetaPageSizeAt, 4, &sizes[page]) ||
        !read_le(start + kMetaLastPageAt, 8, &last_page)) {
      break;  // not a meta page, or none: LMDB's to refuse (or, empty, to make)
    }
    const std::uint64_t size = sizes[page];
    const bool valid = size >= 512 && size <= 65536 && (size & (size - 1)) == 0;
    if (!valid || (page == 1 && size != sizes[0])) {
      status = damaged(page, "names a page size of " + std::to_string(size) +
                                 (valid ? ", not meta page 0's" : "") + " (damaged)");
    } else if (last_page >= file_bytes / size) {
      // LMDB maps the file: a read past its end would kill the process
      // (SIGBUS) instead of failing.
      status = damaged(page, "names page " + std::to_string(last_page) +
                                 " as the last in use, but the file holds " +
                                 std::to_string(file_bytes / size) +
                                 " pages (truncated, or the meta page is damaged)");
    }
  }
  ::close(fd);
  return status;
}

Status Environment::check_trees(std::span<const char* const> db_names,
                                const std::atomic<bool>* cancelled) {
  MDB_stat stat{};
  const int rc = mdb_env_stat(env_, &stat);
  if (rc != 0) return error("mdb_env_stat", rc);
  // The read transaction keeps the pages of its tree from reuse while they
  // are walked.
  ReadTxn txn;
  TALLY_TRY(txn.begin(*this));
  std::unique_ptr<log::FileSystem> cancellable;
  if (cancelled != nullptr) cancellable = log::make_posix_read_through_file_system(*cancelled);
  log::FileSystem& fs = cancelled != nullptr ? *cancellable : log::posix_file_system();
  auto file = fs.open(dir_ + "/data.mdb", log::FileSystem::Mode::read_only);
  if (!file) return file.status();
  TreeWalk walk(component_, **file, stat.ms_psize, db_names);
  return walk.walk(mdb_txn_id(txn.get()));
}

}  // namespace tally::snap::lmdb
