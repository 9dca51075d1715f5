#include "tools/workload.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/ledger.h"
#include "tools/cli.h"
#include "tools/format.h"

namespace tally::cli {

using log::OpType;

// ---- reference model -------------------------------------------------------

ReferenceModel::Outcome ReferenceModel::apply(const WorkloadOp& op) {
  if (!keys_.emplace(op.key).second) {
    counts_.retry++;
    return Outcome::retry;
  }
  const Outcome outcome = decide(op);
  switch (outcome) {
    case Outcome::ok: counts_.ok++; break;
    case Outcome::insufficient: counts_.insufficient++; break;
    case Outcome::hold_unknown: counts_.hold_unknown++; break;
    case Outcome::retry: TALLY_ASSERT(false);
  }
  return outcome;
}

ReferenceModel::Amounts& ReferenceModel::at(std::string_view subject, std::string_view item) {
  return balances_[Pair(subject, item)];
}

ReferenceModel::Outcome ReferenceModel::decide(const WorkloadOp& op) {
  if (op.type == OpType::commit || op.type == OpType::release) return settle(op);
  TALLY_ASSERT(op.type != OpType::expire);
  Amounts& source = at(op.subject, op.item);
  if (op.type == OpType::acquire) {
    source.available += op.qty;
    return Outcome::ok;
  }
  if (source.available < op.qty) return Outcome::insufficient;
  source.available -= op.qty;
  if (op.type == OpType::transfer) {
    // std::map keeps `source` valid while `to` is inserted.
    at(op.to, op.item).available += op.qty;
  } else if (op.type == OpType::hold) {
    source.held += op.qty;
    open_holds_.emplace(op.key, OpenHold{std::string(op.subject), std::string(op.item), op.qty});
  }
  return Outcome::ok;
}

ReferenceModel::Outcome ReferenceModel::settle(const WorkloadOp& op) {
  const auto found = open_holds_.find(std::string(op.hold_key));
  if (found == open_holds_.end()) return Outcome::hold_unknown;
  const OpenHold& hold = found->second;
  Amounts& amounts = at(hold.subject, hold.item);
  amounts.held -= hold.qty;
  if (op.type == OpType::release) amounts.available += hold.qty;
  open_holds_.erase(found);
  return Outcome::ok;
}

std::string ReferenceModel::balance_lines() const {
  std::string out;
  for (const auto& [pair, amounts] : balances_) {
    if (amounts.available == 0 && amounts.held == 0) continue;
    append_balance_line(&out, pair.first, pair.second, amounts.available, amounts.held);
  }
  return out;
}

// ---- random numbers --------------------------------------------------------

namespace {

std::uint64_t splitmix64(std::uint64_t* state) {
  std::uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::uint64_t rotate_left(std::uint64_t value, int bits) {
  return (value << bits) | (value >> (64 - bits));
}

}  // namespace

Random::Random(std::uint64_t seed) {
  for (std::uint64_t& word : state_) word = splitmix64(&seed);
}

std::uint64_t Random::next() {
  const std::uint64_t result = rotate_left(state_[1] * 5, 7) * 9;
  const std::uint64_t shifted = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= shifted;
  state_[3] = rotate_left(state_[3], 45);
  return result;
}

std::uint64_t Random::below(std::uint64_t bound) {
  TALLY_ASSERT(bound > 0);
  // The modulo bias is below 2^-32 for the bounds used here, and plain
  // arithmetic keeps the sequence the same everywhere.
  return next() % bound;
}

double Random::unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

// ---- generator -------------------------------------------------------------

namespace {

// The mixed phase's op mix, in percent.
struct MixEntry {
  OpType type;
  std::uint64_t percent;
};
constexpr std::array<MixEntry, 6> kMix = {{
    {OpType::acquire, 24},
    {OpType::consume, 11},
    {OpType::transfer, 30},
    {OpType::hold, 20},
    {OpType::commit, 10},
    {OpType::release, 5},
}};

constexpr std::uint64_t kFundingAcquiresMax = 3;   // per subject, at least 1
constexpr std::int64_t kFundingQtyMin = 100;
constexpr std::int64_t kFundingQtySpan = 900;
constexpr std::int64_t kMixedQtyMax = 50;
constexpr std::uint64_t kDebitOwnedPercent = 90;   // debits aimed at credited items
constexpr std::uint64_t kSettleOpenPercent = 97;   // the rest reference any earlier key

std::vector<double> zipf_cdf(std::int64_t count, double skew) {
  std::vector<double> cdf(static_cast<std::size_t>(count));
  double total = 0;
  for (std::size_t rank = 0; rank < cdf.size(); rank++) {
    total += 1.0 / std::pow(static_cast<double>(rank + 1), skew);
    cdf[rank] = total;
  }
  for (double& value : cdf) value /= total;
  return cdf;
}

}  // namespace

WorkloadGenerator::WorkloadGenerator(const WorkloadSpec& spec)
    : spec_(spec),
      random_(spec.seed),
      subject_cdf_(zipf_cdf(spec.subjects, spec.zipf)),
      credited_(static_cast<std::size_t>(spec.subjects)) {
  TALLY_ASSERT(spec.subjects > 0);
  TALLY_ASSERT(spec.items > 0);
}

bool WorkloadGenerator::next(WorkloadOp* op) {
  if (funding_subject_ < spec_.subjects) {
    lines_.push_back(make_funding_line());
  } else if (mixed_written_ < spec_.ops) {
    mixed_written_++;
    if (!lines_.empty() && random_.unit() < spec_.retry_rate) {
      render(lines_[random_.below(lines_.size())], op);
      TALLY_ASSERT(model_.apply(*op) == ReferenceModel::Outcome::retry);
      return true;
    }
    lines_.push_back(make_line());
  } else {
    return false;
  }
  const Line& line = lines_.back();
  render(line, op);
  const bool ok = model_.apply(*op) == ReferenceModel::Outcome::ok;
  if (ok && line.type == OpType::hold) open_hold_keys_.push_back(line.key);
  if (ok && line.type == OpType::acquire) credited_[line.subject].push_back(line.item);
  if (ok && line.type == OpType::transfer) credited_[line.to].push_back(line.item);
  return true;
}

WorkloadGenerator::Line WorkloadGenerator::make_funding_line() {
  if (funding_left_ == 0) {
    funding_left_ = 1 + static_cast<std::int64_t>(random_.below(kFundingAcquiresMax));
  }
  Line line{OpType::acquire, static_cast<std::uint32_t>(funding_subject_), 0,
            static_cast<std::uint32_t>(random_.below(static_cast<std::uint64_t>(spec_.items))),
            kFundingQtyMin + static_cast<std::int64_t>(random_.below(kFundingQtySpan)),
            next_key_++, 0};
  if (--funding_left_ == 0) funding_subject_++;
  return line;
}

WorkloadGenerator::Line WorkloadGenerator::make_line() {
  std::uint64_t roll = random_.below(100);
  OpType type = kMix.back().type;
  for (const MixEntry& entry : kMix) {
    if (roll < entry.percent) {
      type = entry.type;
      break;
    }
    roll -= entry.percent;
  }
  // One subject cannot transfer to itself; it consumes instead.
  if (type == OpType::transfer && spec_.subjects < 2) type = OpType::consume;
  if (type == OpType::commit || type == OpType::release) return make_settle(type);

  Line line{type, pick_subject(), 0, 0, 0, 0, 0};
  line.item = type == OpType::acquire
                  ? static_cast<std::uint32_t>(random_.below(static_cast<std::uint64_t>(spec_.items)))
                  : pick_debit_item(line.subject);
  line.qty = 1 + static_cast<std::int64_t>(random_.below(kMixedQtyMax));
  if (type == OpType::transfer) {
    line.to = pick_subject();
    while (line.to == line.subject) {
      line.to = static_cast<std::uint32_t>(random_.below(static_cast<std::uint64_t>(spec_.subjects)));
    }
  }
  line.key = next_key_++;
  return line;
}

WorkloadGenerator::Line WorkloadGenerator::make_settle(OpType type) {
  Line line{type, 0, 0, 0, 0, 0, 0};
  if (!open_hold_keys_.empty() && random_.below(100) < kSettleOpenPercent) {
    const std::size_t index = random_.below(open_hold_keys_.size());
    line.hold_key = open_hold_keys_[index];
    open_hold_keys_[index] = open_hold_keys_.back();
    open_hold_keys_.pop_back();
  } else {
    // A stale or bogus reference: any earlier line's key, which may be a
    // finalized hold, a failed one, an open one, or no hold at all.
    line.hold_key = 1 + random_.below(next_key_ - 1);
  }
  line.key = next_key_++;
  return line;
}

std::uint32_t WorkloadGenerator::pick_subject() {
  const double point = random_.unit();
  const auto found = std::lower_bound(subject_cdf_.begin(), subject_cdf_.end(), point);
  // Rounding can leave the last cumulative weight a hair below 1.
  const auto index = std::min<std::ptrdiff_t>(found - subject_cdf_.begin(),
                                              static_cast<std::ptrdiff_t>(subject_cdf_.size()) - 1);
  return static_cast<std::uint32_t>(index);
}

std::uint32_t WorkloadGenerator::pick_debit_item(std::uint32_t subject) {
  const std::vector<std::uint32_t>& owned = credited_[subject];
  if (!owned.empty() && random_.below(100) < kDebitOwnedPercent) {
    return owned[random_.below(owned.size())];
  }
  return static_cast<std::uint32_t>(random_.below(static_cast<std::uint64_t>(spec_.items)));
}

void WorkloadGenerator::render(const Line& line, WorkloadOp* op) {
  const bool settle = line.type == OpType::commit || line.type == OpType::release;
  // "<prefix><number>", reusing the buffer.
  const auto name = [](std::string* out, char prefix, std::uint64_t number, bool used) {
    out->clear();
    if (!used) return;
    out->push_back(prefix);
    *out += std::to_string(number);
  };
  name(&key_text_, 'k', line.key, true);
  name(&subject_text_, 's', line.subject, !settle);
  name(&item_text_, 'i', line.item, !settle);
  name(&to_text_, 's', line.to, line.type == OpType::transfer);
  name(&hold_key_text_, 'k', line.hold_key, settle);
  *op = WorkloadOp{line.type, key_text_, subject_text_, item_text_, to_text_, hold_key_text_,
                   settle ? 0 : line.qty, line.type == OpType::hold ? spec_.ttl_ms : 0};
}

// ---- the command -----------------------------------------------------------

namespace {

constexpr std::int64_t kSubjectsMax = 10'000'000;
constexpr std::int64_t kItemsMax = 1'000'000;
constexpr std::int64_t kOpsMax = 1'000'000'000;

constexpr FlagSpec kWorkloadFlags[] = {
    {"subjects", "N", "subjects to fund and trade between (required)", IntegerRange{1, kSubjectsMax}},
    {"ops", "N", "mixed lines after the funding lines (required)", IntegerRange{0, kOpsMax}},
    {"out", "FILE.csv", "where to write the workload; - for stdout (required)"},
    {"expect", "FILE", "also write the expected final state and outcome counts here"},
    {"items", "N", "item types (default 100)", IntegerRange{1, kItemsMax}},
    {"seed", "S", "random seed; the same seed gives the same files (default 1)", IntegerRange{0}},
    {"retry-rate", "R", "share of mixed lines that repeat an earlier line (default 0.02); 0..1"},
    {"ttl-ms", "N", "ttl of every hold in ms, up to 30 days (default 3600000)",
     IntegerRange{kHoldTtlNsMin / 1'000'000, kHoldTtlNsMaxDefault / 1'000'000}},
    {"zipf", "S", "skew of the subject choice, 0 = uniform (default 1.1); 0..10"},
};

constexpr CommandSpec kWorkloadSpec = {
    "workload",
    "Generate a deterministic workload CSV and its expected outcome.",
    "tally workload --subjects N --ops N --out FILE.csv [--expect FILE] [--items N] [--seed S]\n"
    "                      [--retry-rate R] [--ttl-ms N] [--zipf S]",
    "Writes a funding phase (1-3 acquires per subject), then --ops mixed lines:\n"
    "acquires, consumes, transfers, holds, commits and releases of open holds\n"
    "(and a few stale or bogus hold references), and retries of earlier lines.\n"
    "--expect gets the final balances a correct ledger reaches and the outcome\n"
    "counts, as `tally bench --expect` reads them.\n",
    kWorkloadFlags,
    0,
};

Result<WorkloadSpec> parse_spec(const Args& args) {
  WorkloadSpec spec;
  auto subjects = args.required_integer("subjects");
  if (!subjects) return subjects.status();
  auto ops = args.required_integer("ops");
  if (!ops) return ops.status();
  auto items = args.integer("items", spec.items);
  if (!items) return items.status();
  auto seed = args.integer("seed", 1);
  if (!seed) return seed.status();
  auto retry_rate = args.number("retry-rate", spec.retry_rate, 0, 1);
  if (!retry_rate) return retry_rate.status();
  // The ttls a ledger with default options accepts; the model takes every
  // hold for valid and never expiring during the run.
  auto ttl_ms = args.integer("ttl-ms", spec.ttl_ms);
  if (!ttl_ms) return ttl_ms.status();
  auto zipf = args.number("zipf", spec.zipf, 0, 10);
  if (!zipf) return zipf.status();
  spec.subjects = *subjects;
  spec.ops = *ops;
  spec.items = *items;
  spec.seed = static_cast<std::uint64_t>(*seed);
  spec.retry_rate = *retry_rate;
  spec.ttl_ms = *ttl_ms;
  spec.zipf = *zipf;
  return spec;
}

// Opens `path` for writing ("-": stdout), without emptying it: truncate()
// does, once every output is open, so that one that cannot be opened leaves
// the others as they were. Closes it when done.
class OutFile {
 public:
  static Result<std::unique_ptr<OutFile>> open(const std::string& path) {
    if (path == "-") return std::make_unique<OutFile>(path, stdout);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    std::FILE* file = fd < 0 ? nullptr : ::fdopen(fd, "wb");
    if (file == nullptr) {
      const Status failed(ErrorCode::io_error, path + ": " + std::strerror(errno));
      if (fd >= 0) ::close(fd);
      return failed;
    }
    return std::make_unique<OutFile>(path, file);
  }
  // Empties a regular file; a device or a pipe has nothing to empty.
  Status truncate() {
    if (file_ == stdout) return Status();
    struct stat status;
    const int fd = ::fileno(file_);
    if (::fstat(fd, &status) == 0 && (!S_ISREG(status.st_mode) || ::ftruncate(fd, 0) == 0)) {
      return Status();
    }
    return Status(ErrorCode::io_error, path_ + ": " + std::strerror(errno));
  }
  OutFile(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}
  ~OutFile() { ignore_status(close()); }
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  void write(std::string_view bytes) {
    if (std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size()) failed_ = true;
  }
  Status close() {
    if (file_ == nullptr) return Status();
    // Standard output's error stays with it, for run_cli to report as it
    // reports every command's.
    if (file_ == stdout) {
      file_ = nullptr;
      std::fflush(stdout);
      return Status();
    }
    const bool flushed = std::fflush(file_) == 0 && !failed_ && std::ferror(file_) == 0;
    const int saved_errno = errno;
    const bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!flushed || !closed) return Status(ErrorCode::io_error, path_ + ": " + std::strerror(saved_errno));
    return Status();
  }

 private:
  std::string path_;
  std::FILE* file_;
  bool failed_ = false;
};

// `path` as the file system will take it: absolute, with the part that
// exists resolved (symlinks, "..") and the rest normalised lexically, so
// that "y.csv" and "./y.csv" compare equal before either exists. A symlink
// whose target does not exist yet is followed too: writing through it
// creates the target. Empty when the file system cannot tell.
std::filesystem::path resolved_path(std::string_view path) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::path current = fs::absolute(path, error);
  if (error) return {};
  constexpr int kLinksMax = 40;  // as the kernel's path walk
  for (int link = 0; link < kLinksMax; link++) {
    if (!fs::is_symlink(fs::symlink_status(current, error))) break;
    const fs::path target = fs::read_symlink(current, error);
    if (error) break;
    current = current.parent_path() / target;  // an absolute target replaces the whole
  }
  fs::path resolved = fs::weakly_canonical(current, error);
  if (error) return current.lexically_normal();
  return resolved;
}

// Whether `path` names the file standard output writes to, as /dev/stdout
// or the file it is redirected to does.
bool is_stdout(std::string_view path) {
  struct stat out {};
  struct stat named {};
  return ::fstat(STDOUT_FILENO, &out) == 0 && ::stat(std::string(path).c_str(), &named) == 0 &&
         out.st_dev == named.st_dev && out.st_ino == named.st_ino;
}

// Whether `path` names a character device, /dev/null or a terminal say,
// which takes both outputs without leaving them mixed in a file.
bool is_device(std::string_view path) {
  struct stat named {};
  return ::stat(std::string(path).c_str(), &named) == 0 && S_ISCHR(named.st_mode);
}

// Whether two output paths name one file ("-" is stdout), which would
// leave the workload and its expect file mixed or one over the other. A
// device may take both, standard output too.
bool same_output(std::string_view a, std::string_view b) {
  if (a == "-" || b == "-") {
    const std::string_view other = a == "-" ? b : a;
    return a == b || (is_stdout(other) && !is_device(other));
  }
  if (is_device(a) && is_device(b)) return false;
  if (a == b) return true;
  // Two existing files: one inode under two names (a hard link too).
  std::error_code error;
  if (std::filesystem::equivalent(a, b, error)) return true;
  const std::filesystem::path a_path = resolved_path(a);
  return !a_path.empty() && a_path == resolved_path(b);
}

int run_workload(const Args& args) {
  auto spec = parse_spec(args);
  if (!spec) return usage_error("workload", spec.status().message());
  auto out_path = args.required("out");
  if (!out_path) return usage_error("workload", out_path.status().message());
  if (args.has("expect") && same_output(*out_path, args.get("expect"))) {
    return usage_error("workload", "--out and --expect name the same file");
  }
  // Both opened before either is written: a path that cannot be written
  // fails at once, not after a long --out was made.
  auto out = OutFile::open(std::string(*out_path));
  if (!out) return failure(out.status());
  std::unique_ptr<OutFile> expect;
  if (args.has("expect")) {
    auto opened = OutFile::open(std::string(args.get("expect")));
    if (!opened) return failure(opened.status());
    expect = std::move(*opened);
  }
  for (const std::unique_ptr<OutFile>* file : {&*out, &expect}) {
    if (*file == nullptr) continue;
    if (Status emptied = (*file)->truncate(); !emptied.ok()) return failure(emptied);
  }

  WorkloadGenerator generator(*spec);
  std::string chunk(kWorkloadHeader);
  chunk += '\n';
  WorkloadOp op;
  while (generator.next(&op)) {
    append_workload_line(&chunk, op);
    if (chunk.size() >= (1u << 16)) {
      (*out)->write(chunk);
      chunk.clear();
    }
  }
  (*out)->write(chunk);
  Status closed = (*out)->close();
  if (!closed.ok()) return failure(closed);

  if (expect != nullptr) {
    std::string text = generator.model().balance_lines();
    append_outcomes_line(&text, generator.model().counts());
    expect->write(text);
    Status expect_closed = expect->close();
    if (!expect_closed.ok()) return failure(expect_closed);
  }
  return kExitOk;
}

}  // namespace

const CliCommand kWorkload = {&kWorkloadSpec, run_workload};

}  // namespace tally::cli
