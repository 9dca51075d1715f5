// tally apply and tally bench: drive a workload CSV through LedgerApi::submit
// (an embedded Ledger, or Clients of a running `tally serve`) with a bounded
// number of commands in flight.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "engine/client.h"
#include "engine/clock.h"
#include "engine/decide.h"
#include "engine/ledger.h"
#include "engine/server.h"
#include "tools/audit.h"
#include "tools/cli.h"
#include "tools/csv.h"
#include "tools/format.h"
#include "tools/ledger_flags.h"

namespace tally::cli {

namespace {

constexpr std::int64_t kPipelineMax = 1 << 20;
constexpr std::int64_t kApplyPipelineDefault = 64;
constexpr std::int64_t kBenchPipelineDefault = 4096;
constexpr std::size_t kDifferencesShownMax = 10;
constexpr std::uint64_t kProgressCheckOps = 1024;
constexpr std::int64_t kProgressIntervalNs = 1'000'000'000;

// ---- the driver ------------------------------------------------------------

// What a line came to.
enum class Answer : std::uint8_t {
  pending,
  // ok .. hold_finalized: the outcomes (earlier_replays() relies on the order).
  ok,
  insufficient,
  overflow,
  hold_unknown,
  hold_expired,
  hold_finalized,
  invalid,
  idempotency_conflict,
  failed,  // an operating error: the run stops
};

std::string_view answer_name(Answer answer) {
  switch (answer) {
    case Answer::ok: return outcome_name(Outcome::ok);
    case Answer::insufficient: return outcome_name(Outcome::insufficient);
    case Answer::overflow: return outcome_name(Outcome::overflow);
    case Answer::hold_unknown: return outcome_name(Outcome::hold_unknown);
    case Answer::hold_expired: return outcome_name(Outcome::hold_expired);
    case Answer::hold_finalized: return outcome_name(Outcome::hold_finalized);
    case Answer::invalid: return error_code_name(ErrorCode::invalid);
    case Answer::idempotency_conflict: return error_code_name(ErrorCode::idempotency_conflict);
    case Answer::pending:
    case Answer::failed: break;
  }
  return "failed";
}

Answer answer_of(Outcome outcome) {
  switch (outcome) {
    case Outcome::ok: return Answer::ok;
    case Outcome::insufficient: return Answer::insufficient;
    case Outcome::overflow: return Answer::overflow;
    case Outcome::hold_unknown: return Answer::hold_unknown;
    case Outcome::hold_expired: return Answer::hold_expired;
    case Outcome::hold_finalized: return Answer::hold_finalized;
  }
  return Answer::failed;
}

struct OpResult {
  HoldId hold = 0;
  std::int64_t latency_ns = 0;
  Answer answer = Answer::pending;
  bool replay = false;
};

struct DriverOptions {
  std::uint64_t pipeline = 1;
  bool print = false;    // apply: one line per op as it is acknowledged
  bool measure = false;  // bench: latency per op
  bool progress = false; // bench --progress: a line on stderr every second
  // bench --rate: an open loop, op i is due i / rate_per_s seconds after the
  // start, and its latency counts from then, so a stall of the ledger also
  // delays (and counts against) the ops due during it. 0: as fast as the
  // pipeline allows.
  std::uint64_t rate_per_s = 0;
};

std::int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Submits a workload's ops in file order with at most `pipeline` in flight.
// Completions run on a ledger thread and only record answers; the driver's
// thread does everything else (printing included), so the ledger's threads
// never wait on stdout. Every buffer is sized before the first submit.
class Driver {
 public:
  Driver(LedgerApi* ledger, const Workload& workload, DriverOptions options)
      : ledger_(ledger),
        workload_(workload),
        options_(options),
        results_(workload.ops.size()),
        submit_ns_(options.measure ? workload.ops.size() : 0) {}

  // Returns once every submitted op completed. The first operating error
  // (not invalid or idempotency_conflict) stops submitting; it is returned.
  Status run(Output* out);
  const std::vector<OpResult>& results() const { return results_; }

 private:
  void submit(std::size_t index);
  // With a rate: when op `index` is due, on the steady clock.
  std::int64_t due_ns(std::size_t index) const;
  void complete(std::size_t index, Result<Receipt> result);
  // Blocks until at least `count` ops completed.
  void wait_for(std::uint64_t count);
  // Waits for `count` completions; with printing on, prints each as it comes.
  void wait_printing(std::uint64_t count, Output* out);
  // Prints the lines of the first `done` ops not printed yet; `done` was
  // read from completed_.
  void print_completed(std::uint64_t done, Output* out);
  // Writes the progress line when a second passed since the last one.
  void report_progress();

  LedgerApi* ledger_;
  const Workload& workload_;
  const DriverOptions options_;
  std::vector<OpResult> results_;
  std::vector<std::int64_t> submit_ns_;
  std::int64_t start_ns_ = 0;
  std::atomic<std::uint64_t> completed_{0};
  // The completion count the driver sleeps for; completions below it do not
  // touch the mutex, so a deep pipeline costs one wake-up per batch.
  std::atomic<std::uint64_t> wake_at_{UINT64_MAX};
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::condition_variable completed_cv_;
  Status failure_;                 // guarded by mutex_
  std::size_t failure_index_ = 0;  // failure_'s op; guarded by mutex_
  std::size_t printed_ = 0;        // driver thread only
  bool printing_stopped_ = false;  // driver thread only
  std::int64_t progress_at_ns_ = 0;  // the last line's time, or start_ns_; driver thread only
  std::uint64_t submitted_ = 0;      // driver thread only
};

Status Driver::run(Output* out) {
  const std::uint64_t pipeline = options_.pipeline;
  start_ns_ = steady_now_ns();
  progress_at_ns_ = start_ns_;
  std::size_t index = 0;  // also the number of ops submitted
  for (; index < workload_.ops.size(); index++) {
    const std::uint64_t needed = index >= pipeline ? index + 1 - pipeline : 0;
    if (completed_.load(std::memory_order_acquire) < needed) {
      if (options_.print) {
        wait_printing(needed, out);
      } else {
        // A full pipeline waits for a quarter of it to drain: fewer
        // wake-ups, and the engine still has three quarters queued.
        wait_for(std::min<std::uint64_t>(needed + pipeline / 4, index));
      }
    }
    if (options_.print) print_completed(completed_.load(), out);
    if (options_.rate_per_s > 0) {
      std::this_thread::sleep_until(
          std::chrono::steady_clock::time_point(std::chrono::nanoseconds(due_ns(index))));
    }
    // Checked after the wait, which a failure may have ended: no line is
    // submitted once an earlier one failed, so none is decided before it
    // (a commit before its hold).
    if (failed_.load(std::memory_order_acquire)) break;
    submit(index);
    submitted_ = index + 1;
    // Paced, the driver sleeps between ops anyway: a look at the clock
    // after each costs nothing.
    if (options_.progress && (options_.rate_per_s > 0 || submitted_ % kProgressCheckOps == 0)) {
      report_progress();
    }
  }
  wait_printing(index, out);
  std::lock_guard lock(mutex_);
  return failure_;
}

void Driver::report_progress() {
  const std::int64_t now_ns = steady_now_ns();
  if (now_ns - progress_at_ns_ < kProgressIntervalNs) return;
  progress_at_ns_ = now_ns;
  std::fprintf(stderr, "tally: %llu of %zu ops submitted, %llu completed\n",
               static_cast<unsigned long long>(submitted_), workload_.ops.size(),
               static_cast<unsigned long long>(completed_.load()));
}

void Driver::submit(std::size_t index) {
  const WorkloadOp& op = workload_.ops[index];
  Command command;
  command.key.assign(op.key);
  OpRequest& request = command.op;
  request.type = op.type;
  request.subject.assign(op.subject);
  request.item.assign(op.item);
  request.to.assign(op.to);
  request.qty = op.qty;  // 0 for commit: the whole hold
  request.ttl_ns = op.ttl_ms * 1'000'000;  // the parser bounds ttl_ms
  // A commit or release names its hold by the hold line's key, which the
  // ledger resolves when it decides the command. Commands are decided in
  // submission order, so the commit can follow its hold without waiting
  // for the hold's ack; a key that never made a hold is decided
  // hold_unknown, durably, and a retry of the line is the same request.
  request.hold_key.assign(op.hold_key);
  if (options_.measure) {
    submit_ns_[index] = options_.rate_per_s > 0 ? due_ns(index) : steady_now_ns();
  }
  ledger_->submit(std::move(command), [this, index](Result<Receipt> result) {
    complete(index, std::move(result));
  });
}

std::int64_t Driver::due_ns(std::size_t index) const {
  // In two parts, so that index * 1e9 cannot overflow (rate <= kRateMax).
  const std::uint64_t rate = options_.rate_per_s;
  const std::uint64_t offset_ns =
      index / rate * 1'000'000'000u + index % rate * 1'000'000'000u / rate;
  return start_ns_ + static_cast<std::int64_t>(offset_ns);
}

void Driver::complete(std::size_t index, Result<Receipt> result) {
  OpResult& op_result = results_[index];
  if (options_.measure) op_result.latency_ns = steady_now_ns() - submit_ns_[index];
  if (result.ok()) {
    op_result.answer = answer_of(result->outcome);
    op_result.replay = result->replay;
    op_result.hold = result->hold;
  } else if (result.code() == ErrorCode::invalid) {
    op_result.answer = Answer::invalid;
  } else if (result.code() == ErrorCode::idempotency_conflict) {
    op_result.answer = Answer::idempotency_conflict;
  } else {
    op_result.answer = Answer::failed;
    std::lock_guard lock(mutex_);
    // The earliest line's: the failures of a lost connection arrive in no
    // set order, and the first line's is the cause of the rest.
    if (failure_.ok() || index < failure_index_) {
      failure_ = Status(result.code(), "line " + std::to_string(index + 2) + ": " +
                                           result.status().message());
      failure_index_ = index;
    }
    failed_.store(true, std::memory_order_release);
  }
  // seq_cst pairs with wait_for: either it sees this count, or this sees
  // its wake_at_ and wakes it under the mutex.
  const std::uint64_t done = completed_.fetch_add(1) + 1;
  if (done >= wake_at_.load()) {
    std::lock_guard lock(mutex_);
    completed_cv_.notify_one();
  }
}

void Driver::wait_for(std::uint64_t count) {
  if (completed_.load() >= count) return;
  std::unique_lock lock(mutex_);
  wake_at_.store(count);
  const auto done = [&] { return completed_.load() >= count; };
  if (!options_.progress) {
    completed_cv_.wait(lock, done);
  } else {
    // A ledger that stalls, or the last answers, are waited for a second
    // at a time, the line written between.
    while (!completed_cv_.wait_for(lock, std::chrono::nanoseconds(kProgressIntervalNs), done)) {
      lock.unlock();
      report_progress();
      lock.lock();
    }
  }
  wake_at_.store(UINT64_MAX);
}

void Driver::wait_printing(std::uint64_t count, Output* out) {
  if (!options_.print) {
    wait_for(count);
    return;
  }
  for (;;) {
    // Print exactly what was counted, so nothing counted goes unprinted.
    const std::uint64_t done = completed_.load();
    print_completed(done, out);
    if (done >= count) return;
    wait_for(done + 1);
  }
}

void Driver::print_completed(std::uint64_t done, Output* out) {
  if (printing_stopped_ || printed_ >= done) return;
  std::string& line = out->buffer();
  for (; printed_ < done; printed_++) {
    const OpResult& op_result = results_[printed_];
    if (op_result.answer == Answer::failed) {
      // Nothing after a failed op is printed: the run is over.
      printing_stopped_ = true;
      break;
    }
    line.append(workload_.ops[printed_].key);
    line.push_back(',');
    line.append(answer_name(op_result.answer));
    if (op_result.hold != 0) {
      line.push_back(',');
      line += std::to_string(op_result.hold);
    }
    if (op_result.replay) line += ",replay";
    out->end_line();
  }
  // Written per batch of acknowledged lines: a reader (or a crash test)
  // sees each line as soon as the driver learns of its ack.
  out->flush();
}

// ---- shared by apply and bench ---------------------------------------------

struct RunOptions {
  std::string data_dir;
  std::string workload_path;
  Durability durability = Durability::sync;
  std::uint64_t pipeline = 1;
  // bench --connect: drive a server instead of an embedded ledger.
  std::string connect;
  std::int64_t connections = 1;
  std::string token;
  // Snapshots and history of an embedded ledger (tools/ledger_flags.h).
  LedgerOptions ledger;
  // bench --data: point-in-time reads to time after the workload.
  std::uint64_t point_in_time_queries = 0;
  // bench --rate (DriverOptions::rate_per_s).
  std::uint64_t rate_per_s = 0;
};

Result<RunOptions> parse_run_options(const Args& args, std::int64_t pipeline_default) {
  RunOptions options;
  auto data = args.required("data");
  if (!data) return data.status();
  auto workload = args.required("workload");
  if (!workload) return workload.status();
  const std::string_view durability = args.get("durability", "sync");
  if (!parse_durability(durability, &options.durability)) {
    return Status(ErrorCode::invalid, "--durability: '" + std::string(durability) +
                                          "' is not one of sync, async, none");
  }
  auto pipeline = args.integer("pipeline", pipeline_default);
  if (!pipeline) return pipeline.status();
  TALLY_TRY(parse_ledger_flags(args, &options.ledger));
  options.data_dir = std::string(*data);
  options.workload_path = std::string(*workload);
  options.pipeline = static_cast<std::uint64_t>(*pipeline);
  return options;
}

constexpr std::int64_t kConnectionsMax = 256;
constexpr std::int64_t kRateMax = 1'000'000'000;
constexpr std::int64_t kPointInTimeQueriesMax = 100'000'000;

// --connect's HOST:PORT, split as serve splits --listen (parse_host_port).
Status check_connect_address(std::string_view address) {
  std::string host;
  std::uint16_t port = 0;
  const Status parsed = parse_host_port(address, &host, &port);
  if (parsed.ok()) return parsed;
  return Status(ErrorCode::invalid, "--connect: " + parsed.message());
}

// bench: exactly one of --data and --connect.
Result<RunOptions> parse_bench_target(const Args& args) {
  if (!args.has("connect")) {
    if (args.has("connections") || args.has("token-file")) {
      return Status(ErrorCode::invalid, "--connections and --token-file go with --connect");
    }
    auto options = parse_run_options(args, kBenchPipelineDefault);
    if (!options) return options.status();
    auto queries = args.integer("point-in-time", 0);
    if (!queries) return queries.status();
    options->point_in_time_queries = static_cast<std::uint64_t>(*queries);
    return options;
  }
  bool ledger_flags = args.has("data") || args.has("durability") || args.has("point-in-time");
  for (const FlagSpec& flag : kLedgerFlags) ledger_flags = ledger_flags || args.has(flag.name);
  if (ledger_flags) {
    return Status(ErrorCode::invalid,
                  "--connect drives a server, whose --data, --durability and ledger flags "
                  "(snapshots, history, window, limits) are its own (and --point-in-time "
                  "times an embedded ledger)");
  }
  TALLY_TRY(check_connect_address(args.get("connect")));
  RunOptions options;
  auto workload = args.required("workload");
  if (!workload) return workload.status();
  auto pipeline = args.integer("pipeline", kBenchPipelineDefault);
  if (!pipeline) return pipeline.status();
  auto connections = args.integer("connections", 1);
  if (!connections) return connections.status();
  if (args.has("token-file")) {
    auto token = read_token(args.get("token-file"));
    if (!token) return token.status();
    options.token = std::move(*token);
  }
  options.workload_path = std::string(*workload);
  options.pipeline = static_cast<std::uint64_t>(*pipeline);
  options.connect = std::string(args.get("connect"));
  options.connections = *connections;
  return options;
}

Result<RunOptions> parse_bench_options(const Args& args) {
  auto rate = args.integer("rate", 0);
  if (!rate) return rate.status();
  auto options = parse_bench_target(args);
  if (options) options->rate_per_s = static_cast<std::uint64_t>(*rate);
  return options;
}

// Several connections to one server as one LedgerApi: mutations go round
// robin, reads to the first. Completions then arrive in no particular order
// across connections, which the driver allows (it counts them).
class ClientPool final : public LedgerApi {
 public:
  static Result<std::unique_ptr<ClientPool>> connect(const RunOptions& options) {
    auto pool = std::make_unique<ClientPool>();
    for (std::int64_t index = 0; index < options.connections; index++) {
      ClientOptions client_options;
      client_options.address = options.connect;
      client_options.token = options.token;
      client_options.inflight_max = static_cast<std::size_t>(options.pipeline);
      // Every connection to the ledger the first one found.
      if (!pool->clients_.empty()) client_options.ledger_id = pool->clients_.front()->ledger_id();
      auto client = Client::connect(client_options);
      if (!client) return client.status();
      pool->clients_.push_back(std::move(*client));
    }
    return pool;
  }

  Result<Receipt> execute(Command command) override { return next().execute(std::move(command)); }
  void submit(Command command, Completion done) override {
    next().submit(std::move(command), std::move(done));
  }
  Result<Balance> balance(std::string_view subject, std::string_view item) override {
    return clients_.front()->balance(subject, item);
  }
  Result<std::vector<ItemBalance>> list(std::string_view subject) override {
    return clients_.front()->list(subject);
  }
  Result<Balance> balance(std::string_view subject, std::string_view item, AsOf at) override {
    return clients_.front()->balance(subject, item, at);
  }
  Result<std::vector<ItemBalance>> list(std::string_view subject, AsOf at) override {
    return clients_.front()->list(subject, at);
  }
  Result<HoldView> hold_info(HoldId hold) override { return clients_.front()->hold_info(hold); }
  Result<HoldView> hold_info(HoldId hold, AsOf at) override {
    return clients_.front()->hold_info(hold, at);
  }
  void submit_balance(std::string subject, std::string item,
                      std::function<void(Result<Balance>)> done) override {
    clients_.front()->submit_balance(std::move(subject), std::move(item), std::move(done));
  }
  void submit_list(std::string subject,
                   std::function<void(Result<std::vector<ItemBalance>>)> done) override {
    clients_.front()->submit_list(std::move(subject), std::move(done));
  }
  void submit_hold_info(HoldId hold, std::function<void(Result<HoldView>)> done) override {
    clients_.front()->submit_hold_info(hold, std::move(done));
  }

  std::uint64_t ledger_id() const override { return clients_.front()->ledger_id(); }

  Status close() override {
    Status first;
    for (auto& client : clients_) {
      const Status closed = client->close();
      if (first.ok()) first = closed;
    }
    return first;
  }

 private:
  Client& next() { return *clients_[next_index_++ % clients_.size()]; }

  std::vector<std::unique_ptr<Client>> clients_;
  std::size_t next_index_ = 0;  // the driver's thread only
};

// The export of a server's ledger, as `tally export` prints it: every
// subject the workload names, listed through the server, in bytewise order.
// A name the ledger refuses (empty, too long, with a NUL) can hold nothing,
// and listing it would fail: it is skipped, as its lines were answered
// `invalid`.
Result<std::string> remote_export_csv(LedgerApi& ledger, const Workload& workload) {
  std::set<std::string_view> subjects;
  for (const WorkloadOp& op : workload.ops) {
    for (const std::string_view name : {op.subject, op.to}) {
      if (detail::check_id("subject", name).ok()) subjects.insert(name);
    }
  }
  std::string csv;
  for (std::string_view subject : subjects) {
    auto items = ledger.list(subject);
    if (!items) return items.status();
    for (const ItemBalance& row : *items) {
      append_balance_line(&csv, subject, row.item, row.balance.available, row.balance.held);
    }
  }
  return csv;
}

Result<std::unique_ptr<Ledger>> open_ledger(const RunOptions& options) {
  LedgerOptions ledger_options = options.ledger;
  ledger_options.data_dir = options.data_dir;
  ledger_options.durability = options.durability;
  // apply and bench are batch jobs: they leave the snapshot their events
  // called for, so that the next open replays only the tail.
  ledger_options.snapshot_due_at_close = true;
  return Ledger::open(ledger_options);
}

int run_apply(const Args& args) {
  auto options = parse_run_options(args, kApplyPipelineDefault);
  if (!options) return usage_error("apply", options.status().message());
  auto workload = read_workload(options->workload_path);
  if (!workload) return usage_error("apply", workload.status().message());
  auto ledger = open_ledger(*options);
  if (!ledger) return failure(ledger.status());

  Output out(stdout);
  Driver driver(ledger->get(), **workload, {options->pipeline, true, false, false});
  const Status ran = driver.run(&out);
  const Status closed = (*ledger)->close();
  if (!ran.ok()) return failure(ran);
  if (!closed.ok()) return failure(closed);
  return kExitOk;
}

// ---- bench -----------------------------------------------------------------

struct Counted {
  OutcomeCounts counts;
  std::int64_t other = 0;  // overflow, invalid, idempotency_conflict: no workload class
};

// The expect file's classes: every hold_* rejection is hold_unknown, and a
// replay of a line whose key an earlier line has is a retry whatever its
// outcome. A replay of a key's first line — the client's own resend after
// a lost connection, or a ledger that had the key before — counts by its
// outcome, as the line's first decision.
Counted count_outcomes(const std::vector<OpResult>& results, const Workload& workload) {
  Counted counted;
  std::unordered_set<std::string_view> keys;
  for (std::size_t index = 0; index < results.size(); index++) {
    const OpResult& op_result = results[index];
    const bool first = keys.insert(workload.ops[index].key).second;
    if (op_result.replay && !first) {
      counted.counts.retry++;
      continue;
    }
    switch (op_result.answer) {
      case Answer::ok: counted.counts.ok++; break;
      case Answer::insufficient: counted.counts.insufficient++; break;
      case Answer::hold_unknown:
      case Answer::hold_expired:
      case Answer::hold_finalized: counted.counts.hold_unknown++; break;
      default: counted.other++;
    }
  }
  return counted;
}

// How many ops were answered as replays of keys that no line of this run
// decided: keys the ledger had decided before the run (or the client's own
// resend after a lost connection). Not "the key's first line was a
// replay": over several connections a later line of a key may be decided
// before its first one is. Only an outcome decides a key; invalid and
// idempotency_conflict answers do not.
std::size_t earlier_replays(const std::vector<OpResult>& results, const Workload& workload) {
  const auto decides = [](const OpResult& result) {
    return !result.replay && result.answer >= Answer::ok && result.answer <= Answer::hold_finalized;
  };
  std::unordered_map<std::string_view, bool> decided_in_run;
  for (std::size_t index = 0; index < results.size(); index++) {
    decided_in_run[workload.ops[index].key] |= decides(results[index]);
  }
  std::size_t count = 0;
  for (std::size_t index = 0; index < results.size(); index++) {
    if (results[index].replay && !decided_in_run[workload.ops[index].key]) count++;
  }
  return count;
}

// "<what>=N seconds=S <what>_per_s=R p50_us=A p99_us=B" over the latency
// of each call.
std::string latency_line(std::string_view what, std::vector<std::int64_t> latencies_ns, double seconds) {
  // Nearest-rank percentiles.
  const auto percentile_us = [&](double fraction) -> long long {
    if (latencies_ns.empty()) return 0;
    const auto rank = static_cast<std::size_t>(
        std::ceil(fraction * static_cast<double>(latencies_ns.size())));
    const auto nth = latencies_ns.begin() + static_cast<std::ptrdiff_t>(std::max<std::size_t>(rank, 1) - 1);
    std::nth_element(latencies_ns.begin(), nth, latencies_ns.end());
    return std::llround(static_cast<double>(*nth) / 1000.0);
  };
  const long long p50_us = percentile_us(0.50);
  const long long p99_us = percentile_us(0.99);
  const double count = static_cast<double>(latencies_ns.size());
  const long long per_s = seconds > 0 ? std::llround(count / seconds) : 0;
  const std::string name(what);
  char text[200];
  std::snprintf(text, sizeof text, "%s=%zu seconds=%.3f %s_per_s=%lld p50_us=%lld p99_us=%lld", name.c_str(),
                latencies_ns.size(), seconds, name.c_str(), per_s, p50_us, p99_us);
  return text;
}

std::string bench_line(const std::vector<OpResult>& results, double seconds) {
  std::vector<std::int64_t> latencies_ns;
  latencies_ns.reserve(results.size());
  for (const OpResult& op_result : results) latencies_ns.push_back(op_result.latency_ns);
  return latency_line("ops", std::move(latencies_ns), seconds);
}

// Times `count` point-in-time balance reads, one at a time, of (subject,
// item) pairs the workload names at seqs drawn evenly from the log, and
// prints their line. A history projection (`history`) first catches up
// with the log (for up to kHistoryWaitMax), so the reads measure the index,
// not the replay it falls back to; without one they measure that replay.
Status bench_point_in_time(Ledger& ledger, const Workload& workload, std::uint64_t count,
                           bool history) {
  constexpr auto kHistoryWaitMax = std::chrono::minutes(10);
  const std::uint64_t last_seq = ledger.committed_seq();
  const auto deadline = std::chrono::steady_clock::now() + kHistoryWaitMax;
  while (history && ledger.stats().history_seq < last_seq &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Pairs a read may name: a line the ledger refused for its names named
  // none.
  std::vector<std::pair<std::string_view, std::string_view>> pairs;
  for (const WorkloadOp& op : workload.ops) {
    if (detail::check_pair(op.subject, op.item).ok()) pairs.emplace_back(op.subject, op.item);
  }
  if (pairs.empty() || last_seq == 0) {
    return Status(ErrorCode::invalid, "no pairs or no events to query");
  }
  std::mt19937_64 random(1);  // the same queries every run
  std::uniform_int_distribution<std::size_t> pick_pair(0, pairs.size() - 1);
  std::uniform_int_distribution<std::uint64_t> pick_seq(1, last_seq);
  std::vector<std::int64_t> latencies_ns;
  latencies_ns.reserve(count);
  const std::int64_t start_ns = steady_now_ns();
  for (std::uint64_t query = 0; query < count; query++) {
    const auto& [subject, item] = pairs[pick_pair(random)];
    const AsOf at = AsOf::at_seq(pick_seq(random));
    const std::int64_t query_start_ns = steady_now_ns();
    auto balance = ledger.balance(subject, item, at);
    latencies_ns.push_back(steady_now_ns() - query_start_ns);
    if (!balance) return balance.status();
  }
  const double seconds = static_cast<double>(steady_now_ns() - start_ns) / 1e9;
  Output out(stdout);
  out.buffer() += latency_line("queries", std::move(latencies_ns), seconds);
  out.flush_line();
  return Status();
}

// A line of Expectation::balance_lines, which parse_expect checked. Its
// names are as a workload holds them, never quoted; `pair` is in the form
// export prints (append_csv_name), which quotes a name with a double quote.
struct ExpectedBalance {
  std::string pair;
  BalanceLine amounts;
};
ExpectedBalance expected_balance(std::string_view line) {
  ExpectedBalance expected;
  const bool parsed = parse_balance_line(line, &expected.amounts);
  TALLY_ASSERT(parsed);
  const std::string_view pair = expected.amounts.pair;
  const std::size_t comma = pair.find(',');
  append_csv_name(&expected.pair, pair.substr(0, comma));
  expected.pair.push_back(',');
  append_csv_name(&expected.pair, pair.substr(comma + 1));
  return expected;
}

// "available,held", as export prints them.
std::string amounts_text(const BalanceLine& balance) {
  return std::to_string(balance.available) + "," + std::to_string(balance.held);
}

// Differences between the expected and the actual balances and counts, as
// messages; empty when they agree. The counts come first, so that a long
// list of balances cannot push them out of what is shown. Amounts compare
// as numbers, and a line of zeros says what no line says: a pair with
// nothing (export leaves such pairs out).
std::vector<std::string> compare_state(const Expectation& expected, std::string_view actual_csv,
                                       const Counted& actual) {
  std::vector<std::string> differences;
  if (!(actual.counts == expected.counts) || actual.other != 0) {
    std::string got = outcome_counts_text(actual.counts);
    if (actual.other != 0) got += " other=" + std::to_string(actual.other);
    const std::string want = expected.counts
                                 ? outcome_counts_text(*expected.counts)
                                 : std::string("a '#outcomes ...' line, the file has none");
    differences.push_back("outcomes: expected " + want + ", got " + got);
  }
  for (const std::string& conflict : expected.conflicts) differences.push_back(conflict);
  // parse_expect kept a pair's first line only: one entry per line.
  std::unordered_map<std::string, BalanceLine> expected_balances;
  for (const std::string& line : expected.balance_lines) {
    ExpectedBalance balance = expected_balance(line);
    if (balance.amounts.available == 0 && balance.amounts.held == 0) continue;
    expected_balances.emplace(std::move(balance.pair), balance.amounts);
  }
  for (const std::string_view line : split_lines(actual_csv)) {
    BalanceLine got;
    if (!parse_balance_line(line, &got)) {
      differences.push_back("got '" + std::string(line) + "', not a balance line");
      continue;
    }
    const auto found = expected_balances.find(std::string(got.pair));
    if (found == expected_balances.end()) {
      differences.push_back(std::string(got.pair) + ": expected nothing, got " +
                            amounts_text(got));
      continue;
    }
    if (found->second.available != got.available || found->second.held != got.held) {
      differences.push_back(std::string(got.pair) + ": expected " + amounts_text(found->second) +
                            ", got " + amounts_text(got));
    }
    expected_balances.erase(found);
  }
  for (const std::string& line : expected.balance_lines) {
    const ExpectedBalance balance = expected_balance(line);
    if (expected_balances.contains(balance.pair)) {
      differences.push_back(balance.pair + ": expected " + amounts_text(balance.amounts) +
                            ", got nothing");
    }
  }
  return differences;
}

int check_expectation(const Result<std::string>& actual_csv, const std::string& expect_path,
                      const Expectation& expected, const std::vector<OpResult>& results,
                      const Workload& workload) {
  if (!actual_csv) return failure(actual_csv.status());
  const std::vector<std::string> differences =
      compare_state(expected, *actual_csv, count_outcomes(results, workload));
  if (differences.empty()) return kExitOk;
  std::fprintf(stderr, "tally: the result differs from %s (%zu difference%s):\n",
               expect_path.c_str(), differences.size(), differences.size() == 1 ? "" : "s");
  for (std::size_t index = 0; index < differences.size() && index < kDifferencesShownMax; index++) {
    std::fprintf(stderr, "tally:   %s\n", differences[index].c_str());
  }
  return kExitFailed;
}

// Runs the driver against `ledger` and prints the bench line.
Result<std::vector<OpResult>> drive_bench(LedgerApi* ledger, const Workload& workload,
                                          const RunOptions& options, bool progress) {
  Output out(stdout);
  // --pipeline is each connection's (ClientPool's clients take as many).
  const std::uint64_t in_flight =
      options.pipeline * static_cast<std::uint64_t>(options.connections);
  Driver driver(ledger, workload, {in_flight, false, true, progress, options.rate_per_s});
  const std::int64_t start_ns = steady_now_ns();
  const Status ran = driver.run(&out);
  const double seconds = static_cast<double>(steady_now_ns() - start_ns) / 1e9;
  if (!ran.ok()) return ran;
  out.buffer() += bench_line(driver.results(), seconds);
  out.flush_line();
  // A second run on the same data measures replays, not writes: say so.
  if (const std::size_t replays = earlier_replays(driver.results(), workload); replays > 0) {
    std::fprintf(stderr,
                 "tally: note: %zu of the %zu ops named keys the ledger had decided before "
                 "this run (a data directory used before, or ops sent again after a lost "
                 "connection?) and were answered as replays: "
                 "the line above measures replays, not writes\n",
                 replays, driver.results().size());
  }
  return driver.results();
}

int run_bench(const Args& args) {
  auto options = parse_bench_options(args);
  if (!options) return usage_error("bench", options.status().message());
  auto workload = read_workload(options->workload_path);
  if (!workload) return usage_error("bench", workload.status().message());
  const std::string expect_path(args.get("expect"));
  Expectation expected;
  if (!expect_path.empty()) {
    auto read = read_expect(expect_path);
    if (!read) return usage_error("bench", read.status().message());
    expected = std::move(*read);
    // File order: one connection, so the server decides the ops in order.
    options->connections = 1;
  }
  if (!options->connect.empty()) {
    auto pool = ClientPool::connect(*options);
    if (!pool) return failure(pool.status());
    auto results = drive_bench(pool->get(), **workload, *options, args.has("progress"));
    if (!results) return failure(results.status());
    if (expect_path.empty()) return kExitOk;
    const int verdict = check_expectation(remote_export_csv(**pool, **workload), expect_path,
                                          expected, *results, **workload);
    ignore_status((*pool)->close());  // the verdict stands
    return verdict;
  }
  auto ledger = open_ledger(*options);
  if (!ledger) return failure(ledger.status());
  auto results = drive_bench(ledger->get(), **workload, *options, args.has("progress"));
  if (results && options->point_in_time_queries > 0) {
    const Status timed = bench_point_in_time(**ledger, **workload, options->point_in_time_queries,
                                             options->ledger.history);
    if (!timed.ok()) results = timed;
  }
  const Status closed = (*ledger)->close();
  if (!results) return failure(results.status());
  if (!closed.ok()) return failure(closed);
  if (expect_path.empty()) return kExitOk;
  return check_expectation(export_csv(options->data_dir, system_clock().now_ns()), expect_path,
                           expected, *results, **workload);
}

// ---- specs -----------------------------------------------------------------

constexpr FlagSpec kApplyFlags[] = {
    {"data", "DIR", "the data directory (created when missing)"},
    {"workload", "FILE.csv", "the workload to apply, in file order"},
    {"durability", "MODE", "sync (default), async or none"},
    {"pipeline", "N", "commands in flight at most (default 64)", IntegerRange{1, kPipelineMax}},
};

constexpr auto kApplyAllFlags = with_ledger_flags(kApplyFlags);

constexpr CommandSpec kApplySpec = {
    "apply",
    "Apply a workload CSV to a ledger, printing each op's outcome as it is acknowledged.",
    "tally apply --data DIR --workload FILE.csv [--durability sync|async|none] [--pipeline N]\n"
    "                   [--snapshot-every N] [--snapshot-seconds S] [--snapshot-retain K] [--history on|off]\n"
    "                   [--idempotency-window S] [--hold-ttl-max S] [--queue-depth N]\n"
    "                   [--segment-bytes N] [--sync-interval-ms N] [--scrub-seconds S]",
    "Prints one line per op, in file order, once its outcome is acknowledged\n"
    "(durable per --durability):\n"
    "  key,outcome[,hold_id][,replay]\n"
    "outcome: ok, insufficient, overflow, hold_unknown, hold_expired,\n"
    "hold_finalized, invalid or idempotency_conflict. hold_id follows a\n"
    "successful hold; replay marks a key that was decided before.\n",
    kApplyAllFlags,
    0,
};

constexpr FlagSpec kBenchFlags[] = {
    {"data", "DIR", "the data directory (created when missing)"},
    {"workload", "FILE.csv", "the workload to apply, in file order"},
    {"expect", "FILE", "compare the final state and outcome counts with this file"},
    {"durability", "MODE", "sync (default), async or none"},
    {"pipeline", "N",
     "commands in flight at most, on each connection with --connect (default 4096)",
     IntegerRange{1, kPipelineMax}},
    {"progress", "", "report progress on stderr every second"},
    {"rate", "R", "submit R ops per second on a fixed schedule instead of as fast as possible",
     IntegerRange{1, kRateMax}},
    {"connect", "HOST:PORT", "drive a running `tally serve` (binary protocol) instead of --data"},
    {"connections", "C", "with --connect: connections, ops round robin (default 1)",
     IntegerRange{1, kConnectionsMax}},
    {"token-file", "FILE", "with --connect: the server's token"},
    {"point-in-time", "N", "with --data: then time N point-in-time balance reads (a second line)",
     IntegerRange{0, kPointInTimeQueriesMax}},
};

constexpr auto kBenchAllFlags = with_ledger_flags(kBenchFlags);

constexpr CommandSpec kBenchSpec = {
    "bench",
    "Apply a workload CSV as fast as possible and report throughput and latency.",
    "tally bench --data DIR --workload FILE.csv [--expect FILE] [--durability M] [--pipeline N]\n"
    "                   [--progress] [--snapshot-every N] [--snapshot-seconds S] [--snapshot-retain K]\n"
    "                   [--history on|off] [--point-in-time N] [--rate R]\n"
    "                   [--idempotency-window S] [--hold-ttl-max S] [--queue-depth N]\n"
    "                   [--segment-bytes N] [--sync-interval-ms N] [--scrub-seconds S]\n"
    "       tally bench --connect HOST:PORT --workload FILE.csv [--expect FILE] [--connections C]\n"
    "                   [--pipeline N] [--token-file F] [--progress] [--rate R]",
    "Prints one line:\n"
    "  ops=N seconds=S ops_per_s=R p50_us=A p99_us=B\n"
    "Latency is per op, from submit to completion. With --rate R, op i is\n"
    "submitted i/R seconds after the start (an open loop, still at most\n"
    "--pipeline in flight) and its latency counts from then, so that a\n"
    "stall counts against every op it delayed. With --expect, exits 1 when\n"
    "the final balances or the outcome counts differ from the file, or the\n"
    "file has no counts line, or lists a pair or the counts twice. With\n"
    "--connect and --expect, one connection carries the ops in file order, and\n"
    "the final balances are listed through the server for every subject the\n"
    "workload names.\n"
    "With --point-in-time N, it then waits for the history projection to reach\n"
    "the end of the log (with --history off there is none: the reads replay from\n"
    "a snapshot) and times N balance reads, one at a time, of pairs the\n"
    "workload names at random seqs (the same ones every run), printing:\n"
    "  queries=N seconds=S queries_per_s=R p50_us=A p99_us=B\n",
    kBenchAllFlags,
    0,
};

}  // namespace

const CliCommand kApply = {&kApplySpec, run_apply};
const CliCommand kBench = {&kBenchSpec, run_bench};

}  // namespace tally::cli
