#include "engine/point_in_time.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "log/reader.h"
#include "log/tail.h"
#include "projections/name_table.h"  // kNameBytesMax

namespace tally {

namespace {

// Balances as the events left them: no hold counts as released early.
constexpr std::int64_t kEventsOnly = INT64_MIN;

Balance to_balance(proj::Balance b) { return Balance{b.available, b.held}; }

Status past_end(std::uint64_t seq, std::uint64_t last_seq) {
  return Status(ErrorCode::invalid, "seq " + std::to_string(seq) + " is past the end of the log (last seq " +
                                        std::to_string(last_seq) + ")");
}

Status check_seq(const PointInTimeSource& source, AsOf at) {
  if (at.kind == AsOf::Kind::seq && at.seq > source.last_seq) return past_end(at.seq, source.last_seq);
  return Status();
}

// The seq the history projection resolves `at` to; history_covers(at).
Result<std::uint64_t> index_seq(const PointInTimeSource& source, AsOf at) {
  if (at.kind == AsOf::Kind::seq) return at.seq;
  return source.history->seq_at_time(at.time_ns);
}

// The state as of `at`: a snapshot plus the log after it, bounded by
// source.last_seq so that a live log is never read past its committed end.
Result<std::unique_ptr<proj::State>> replay_to(const PointInTimeSource& source, AsOf at) {
  ReplayOptions options;
  options.data_dir = source.data_dir;
  options.fs = source.fs;
  options.state_options = source.state_options;
  options.snapshots = source.snapshots;
  options.visit = source.visit;
  options.to_seq = at.kind == AsOf::Kind::seq ? at.seq : source.last_seq;
  if (at.kind == AsOf::Kind::time) options.to_time_ns = at.time_ns;
  auto replayed = replay(options);
  if (!replayed) return replayed.status();
  if (at.kind == AsOf::Kind::seq && replayed->state->last_seq() < at.seq) {
    return past_end(at.seq, replayed->state->last_seq());
  }
  return std::move(replayed->state);
}

void note(PointInTimeRead* read, std::uint64_t seq, PointInTimePath path) {
  if (read != nullptr) {
    read->seq = seq;
    read->path = path;
  }
}

// Whether a failed read of the index leaves the log to answer: the index
// is a projection, so a damaged record of it (corrupt) does.
bool log_answers(const Status& index_failure, PointInTimeRead* read) {
  if (index_failure.code() != ErrorCode::corrupt) return false;
  if (read != nullptr) read->index_damage = index_failure;
  return true;
}

// Balances kept in visiting order, their names packed in one string.
class BalanceBuffer {
 public:
  void add(std::string_view subject, std::string_view item, proj::Balance balance) {
    entries_.push_back(Entry{names_.size(), static_cast<std::uint16_t>(subject.size()),
                             static_cast<std::uint16_t>(item.size()), to_balance(balance)});
    names_.append(subject);
    names_.append(item);
  }
  void visit_all(
      const std::function<void(std::string_view, std::string_view, Balance)>& visit) const {
    const std::string_view names = names_;
    for (const Entry& entry : entries_) {
      visit(names.substr(entry.offset, entry.subject_bytes),
            names.substr(entry.offset + entry.subject_bytes, entry.item_bytes), entry.balance);
    }
  }

 private:
  struct Entry {
    std::size_t offset = 0;  // of the subject in names_; the item follows it
    std::uint16_t subject_bytes = 0;
    std::uint16_t item_bytes = 0;
    Balance balance;
  };
  static_assert(proj::kNameBytesMax <= UINT16_MAX);
  std::string names_;
  std::vector<Entry> entries_;
};

}  // namespace

bool history_covers(const PointInTimeSource& source, AsOf at) {
  if (source.history == nullptr) return false;
  auto position = source.history->position();
  if (!position) return false;
  if (at.kind == AsOf::Kind::seq) return position->seq >= at.seq;
  // Every event stamped <= T is indexed once the index holds a later one,
  // or everything there is.
  return position->time_ns > at.time_ns || position->seq >= source.last_seq;
}

Result<Balance> balance_at(const PointInTimeSource& source, std::string_view subject,
                           std::string_view item, AsOf at, PointInTimeRead* read) {
  TALLY_TRY(check_seq(source, at));
  if (history_covers(source, at)) {
    auto seq = index_seq(source, at);
    auto balance = seq ? source.history->balance_at(subject, item, *seq)
                       : Result<proj::Balance>(seq.status());
    if (balance) {
      note(read, *seq, PointInTimePath::history);
      return to_balance(*balance);
    }
    if (!log_answers(balance.status(), read)) return balance.status();
  }
  auto state = replay_to(source, at);
  if (!state) return state.status();
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  return to_balance((*state)->balance(subject, item, kEventsOnly));
}

Result<std::vector<ItemBalance>> list_at(const PointInTimeSource& source, std::string_view subject,
                                         AsOf at, PointInTimeRead* read) {
  TALLY_TRY(check_seq(source, at));
  std::vector<ItemBalance> items;
  auto add = [&](std::string_view item, proj::Balance b) {
    items.push_back(ItemBalance{std::string(item), to_balance(b)});
  };
  if (history_covers(source, at)) {
    auto seq = index_seq(source, at);
    const Status listed = seq ? source.history->list_at(subject, *seq, add) : seq.status();
    if (listed.ok()) {
      note(read, *seq, PointInTimePath::history);
      return items;
    }
    if (!log_answers(listed, read)) return listed;
    items.clear();
  }
  auto state = replay_to(source, at);
  if (!state) return state.status();
  (*state)->list(subject, kEventsOnly, add);
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  return items;
}

HoldView hold_view(const proj::HoldInfo& hold) {
  HoldView view;
  view.id = hold.id;
  view.subject = hold.subject;
  view.item = hold.item;
  view.qty = hold.qty;
  view.expires_at_ns = hold.expires_at_ns;
  view.committed_qty = hold.committed_qty;
  view.status = static_cast<HoldStatus>(hold.state);
  return view;
}

Result<HoldView> hold_at(const PointInTimeSource& source, HoldId hold, AsOf at,
                         PointInTimeRead* read) {
  TALLY_TRY(check_seq(source, at));
  auto state = replay_to(source, at);
  if (!state) return state.status();
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  const std::optional<proj::HoldInfo> found = (*state)->find_hold(hold);
  if (!found) {
    return Status(ErrorCode::not_found, "no hold " + std::to_string(hold) + " at seq " +
                                            std::to_string((*state)->last_seq()));
  }
  return hold_view(*found);
}

Status for_each_at(const PointInTimeSource& source, AsOf at,
                   const std::function<void(std::string_view subject, std::string_view item,
                                            Balance balance)>& visit,
                   PointInTimeRead* read) {
  TALLY_TRY(check_seq(source, at));
  if (history_covers(source, at)) {
    // Read whole before any is visited, so that a damaged record found part
    // way leaves the whole answer to the log.
    BalanceBuffer found;
    auto seq = index_seq(source, at);
    const Status listed =
        seq ? source.history->for_each_at(
                  *seq, [&](std::string_view subject, std::string_view item, proj::Balance b) {
                    found.add(subject, item, b);
                  })
            : seq.status();
    if (listed.ok()) {
      found.visit_all(visit);
      note(read, *seq, PointInTimePath::history);
      return Status();
    }
    if (!log_answers(listed, read)) return listed;
  }
  auto state = replay_to(source, at);
  if (!state) return state.status();
  (*state)->for_each_balance(kEventsOnly, [&](std::string_view subject, std::string_view item,
                                              proj::Balance b) {
    visit(subject, item, to_balance(b));
  });
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  return Status();
}

Result<bool> history_continues_log(log::FileSystem& fs, const std::string& data_dir,
                                   const snap::HistoryStore& history, std::uint64_t last_seq) {
  auto position = history.position();
  if (!position) return position.status();
  if (position->seq == 0) return true;
  if (position->seq > last_seq) return false;
  auto tail = log::LogTail::open(fs, log_dir(data_dir), position->seq);
  if (!tail) return tail.status();
  log::Record record;
  auto found = (*tail)->next(&record, position->seq);
  if (!found) return found.status();
  return *found && record.checksum == position->chain_checksum;
}

Result<std::uint64_t> log_last_seq(log::FileSystem& fs, const std::string& data_dir) {
  auto reader = log::LogReader::open(fs, log_dir(data_dir), {.from_seq = UINT64_MAX});
  if (!reader) return reader.status();
  log::Record record;
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more) break;
  }
  return (*reader)->end().next_seq - 1;
}

}  // namespace tally
