// The workload generator behind `tally workload`, and the reference model
// that computes what a correct ledger makes of a workload (tools/csv.h has
// both file formats).
//
// The model is deliberately tiny and independent of the engine: it knows
// only the rules the workload format states, so a disagreement between it
// and the engine is a bug in one of them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tools/csv.h"

namespace tally::cli {

// Applies workload lines the way the format defines (no expiry: TTLs are
// long enough that no hold expires during a run):
//   - a key seen before is a retry: counted as retry, nothing changes;
//   - consume, transfer and hold need available >= qty, else insufficient;
//   - commit and release need hold_key to name a successful hold that is
//     still open, else hold_unknown; commit consumes the whole hold.
class ReferenceModel {
 public:
  enum class Outcome : std::uint8_t { ok, insufficient, hold_unknown, retry };

  Outcome apply(const WorkloadOp& op);

  const OutcomeCounts& counts() const { return counts_; }
  // The expect file's balance lines, without the outcomes line.
  std::string balance_lines() const;

 private:
  struct Amounts {
    std::int64_t available = 0;
    std::int64_t held = 0;
  };
  struct OpenHold {
    std::string subject;
    std::string item;
    std::int64_t qty = 0;
  };
  using Pair = std::pair<std::string, std::string>;  // subject, item; sorts bytewise

  Outcome decide(const WorkloadOp& op);
  Outcome settle(const WorkloadOp& op);
  Amounts& at(std::string_view subject, std::string_view item);

  std::map<Pair, Amounts> balances_;
  std::unordered_map<std::string, OpenHold> open_holds_;  // by the hold's key
  std::unordered_set<std::string> keys_;
  OutcomeCounts counts_;
};

struct WorkloadSpec {
  std::int64_t subjects = 0;      // funded up front
  std::int64_t items = 100;
  std::int64_t ops = 0;           // mixed lines after the funding lines
  std::uint64_t seed = 1;
  double retry_rate = 0.02;       // share of mixed lines that repeat an earlier line
  std::int64_t ttl_ms = 3'600'000;
  double zipf = 1.1;              // skew of the subject choice; 0 = uniform
};

// xoshiro256** seeded through splitmix64: the same numbers for a seed on
// every platform, unlike std:: distributions.
class Random {
 public:
  explicit Random(std::uint64_t seed);
  std::uint64_t next();
  // Uniform in [0, bound); bound > 0.
  std::uint64_t below(std::uint64_t bound);
  // Uniform in [0, 1).
  double unit();

 private:
  std::uint64_t state_[4];
};

// Generates a workload line by line. A funding phase gives every subject a
// few acquires; then come spec.ops mixed lines: acquires, consumes,
// transfers and holds (debits mostly of items the subject was credited),
// commits and releases of open holds plus a few stale or bogus hold
// references, and retries of earlier lines. The generator feeds every line
// to its own ReferenceModel, whose answers steer it (only successful holds
// are committed later) and give the expected final state.
class WorkloadGenerator {
 public:
  explicit WorkloadGenerator(const WorkloadSpec& spec);

  // The next line; its views stay valid until the next call. False at the end.
  bool next(WorkloadOp* op);
  const ReferenceModel& model() const { return model_; }

 private:
  // What is needed to write a line again for a retry.
  struct Line {
    log::OpType type;
    std::uint32_t subject;
    std::uint32_t to;
    std::uint32_t item;
    std::int64_t qty;
    std::uint64_t key;       // key number: "k<key>"
    std::uint64_t hold_key;  // commit, release: the referenced key number
  };

  Line make_funding_line();
  Line make_line();
  Line make_settle(log::OpType type);
  std::uint32_t pick_subject();
  std::uint32_t pick_debit_item(std::uint32_t subject);
  void render(const Line& line, WorkloadOp* op);

  WorkloadSpec spec_;
  Random random_;
  ReferenceModel model_;
  std::vector<double> subject_cdf_;                  // zipf, by subject number
  std::vector<std::vector<std::uint32_t>> credited_; // items each subject received
  std::vector<Line> lines_;                          // every line but retries
  std::vector<std::uint64_t> open_hold_keys_;        // holds to commit or release
  std::uint64_t next_key_ = 1;
  std::int64_t funding_subject_ = 0;  // the subject being funded
  std::int64_t funding_left_ = 0;     // its acquires still to write; 0: not started
  std::int64_t mixed_written_ = 0;
  // Rendered names of the current line.
  std::string key_text_, subject_text_, item_text_, to_text_, hold_key_text_;
};

}  // namespace tally::cli
