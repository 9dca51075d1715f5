#include "engine/point_in_time.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/time_text.h"
#include "log/reader.h"
#include "log/tail.h"
#include "projections/name_table.h"  // kNameBytesMax

namespace tally {

namespace {

// Balances as the events left them: no hold counts as released early.
constexpr std::int64_t kEventsOnly = INT64_MIN;

// The time a read as of `at` is made at. A read at time T treats every hold
// due by T as released, whether or not its expire event is in the log, as
// a current read does; a seq has no time of its own, so a read as of one
// shows the balances as the events left them.
std::int64_t read_time(AsOf at) {
  return at.kind == AsOf::Kind::time ? at.time_ns : kEventsOnly;
}

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
  return source.history->seq_at_time(at.time_ns, source.last_seq);
}

// The state as of `at`: a snapshot plus the log after it, bounded by
// source.last_seq so that a live log is never read past its committed end.
Result<std::unique_ptr<proj::State>> replay_to(const PointInTimeSource& source, AsOf at,
                                               PointInTimeRead* read) {
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
  if (read != nullptr) read->skipped_snapshots = std::move(replayed->report.skipped);
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
// is a projection, so a damaged record of it (corrupt) does; and so does
// one that went back under this read. The index covered `at` when the read
// began, but each of its reads is a transaction of its own, and an index
// rebuilt beside this process (`tally history --rebuild`) starts again
// from seq 1. Each read checks in its own transaction that the index
// reaches what it answers for (seq_at_time: not_found; the others: a seq
// past its position, invalid, as the names were checked before), so an
// answer is never of an index that went back.
bool log_answers(const Status& index_failure, PointInTimeRead* read) {
  switch (index_failure.code()) {
    case ErrorCode::corrupt:
      if (read != nullptr) read->index_damage = index_failure;
      return true;
    case ErrorCode::not_found:
    case ErrorCode::invalid:
      return true;
    default:
      return false;
  }
}

// Whether a pair holding `held` after `seq` (the last event stamped at or
// before T) in the index may count as held a hold due by T: then a replay
// answers, which knows each hold's expiry. The index holds balances, not
// holds, but the writer expires every hold due by an event's timestamp
// before it writes that event, so a hold due by T and open after seq has
// its expire event next among the pair's changes, or none yet: then T is
// past the last event. Where the index lags the log, a replay answers too.
Result<bool> may_hold_due(const PointInTimeSource& source, std::string_view subject,
                          std::string_view item, std::int64_t held, std::uint64_t seq, AsOf at) {
  if (at.kind != AsOf::Kind::time || held == 0) return false;
  std::optional<bool> next_is_expire;
  snap::HistoryPosition found;  // the index as this read found it
  TALLY_TRY(source.history->entries(subject, item, seq + 1, UINT64_MAX,
                                    [&](const snap::HistoryEntry& entry) {
                                      next_is_expire = entry.op == "expire";
                                      return false;
                                    },
                                    &found));
  if (next_is_expire) return *next_is_expire;
  return found.seq < source.last_seq || at.time_ns > found.time_ns;
}

// The index's balance of a pair after `seq`, or nullopt where a hold due
// by `at` leaves the answer to a replay.
Result<std::optional<proj::Balance>> indexed_balance(const PointInTimeSource& source,
                                                     std::string_view subject,
                                                     std::string_view item, std::uint64_t seq,
                                                     AsOf at) {
  auto balance = source.history->balance_at(subject, item, seq);
  if (!balance) return balance.status();
  auto due = may_hold_due(source, subject, item, balance->held, seq, at);
  if (!due) return due.status();
  if (*due) return std::optional<proj::Balance>();
  return std::optional<proj::Balance>(*balance);
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
    auto balance = seq ? indexed_balance(source, subject, item, *seq, at)
                       : Result<std::optional<proj::Balance>>(seq.status());
    if (!balance && !log_answers(balance.status(), read)) return balance.status();
    if (balance && *balance) {
      note(read, *seq, PointInTimePath::history);
      return to_balance(**balance);
    }
  }
  auto state = replay_to(source, at, read);
  if (!state) return state.status();
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  return to_balance((*state)->balance(subject, item, read_time(at)));
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
    Status listed = seq ? source.history->list_at(subject, *seq, add) : seq.status();
    bool due = false;
    for (std::size_t index = 0; listed.ok() && !due && index < items.size(); index++) {
      auto may = may_hold_due(source, subject, items[index].item, items[index].balance.held, *seq, at);
      if (may) due = *may;
      else listed = may.status();
    }
    if (listed.ok() && !due) {
      note(read, *seq, PointInTimePath::history);
      return items;
    }
    if (!listed.ok() && !log_answers(listed, read)) return listed;
    items.clear();
  }
  auto state = replay_to(source, at, read);
  if (!state) return state.status();
  (*state)->list(subject, read_time(at), add);
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  return items;
}

HoldView hold_view(const proj::HoldInfo& hold, std::int64_t now_ns) {
  HoldView view;
  view.id = hold.id;
  view.subject = hold.subject;
  view.item = hold.item;
  view.qty = hold.qty;
  view.expires_at_ns = hold.expires_at_ns;
  view.committed_qty = hold.committed_qty;
  view.status = static_cast<HoldStatus>(hold.state);
  // Reads never show a due hold as open.
  if (hold.state == proj::HoldState::open && hold.expires_at_ns <= now_ns) {
    view.status = HoldStatus::expired;
  }
  return view;
}

Result<HoldView> hold_at(const PointInTimeSource& source, HoldId hold, AsOf at,
                         PointInTimeRead* read) {
  TALLY_TRY(check_seq(source, at));
  auto state = replay_to(source, at, read);
  if (!state) return state.status();
  note(read, (*state)->last_seq(), PointInTimePath::replay);
  // As of a time, a hold the window had passed by then is forgotten, as a
  // current read at that time finds it.
  const std::optional<proj::HoldInfo> found = (*state)->find_hold(hold, read_time(at));
  if (!found) {
    // As of a time, name the time: the hold may be known at the seq that
    // time falls after, and forgotten by the time itself.
    std::string message = "no hold " + std::to_string(hold);
    if (at.kind == AsOf::Kind::time) {
      message += " as of ";
      append_rfc3339(&message, at.time_ns);
    } else {
      message += " at seq " + std::to_string((*state)->last_seq());
    }
    return Status(ErrorCode::not_found, std::move(message));
  }
  return hold_view(*found, read_time(at));
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
    bool due = false;
    Status checked = listed;
    if (listed.ok() && at.kind == AsOf::Kind::time) {
      found.visit_all([&](std::string_view subject, std::string_view item, Balance b) {
        if (due || !checked.ok()) return;
        auto may = may_hold_due(source, subject, item, b.held, *seq, at);
        if (may) due = *may;
        else checked = may.status();
      });
    }
    if (checked.ok() && !due) {
      found.visit_all(visit);
      note(read, *seq, PointInTimePath::history);
      return Status();
    }
    if (!checked.ok() && !log_answers(checked, read)) return checked;
  }
  auto state = replay_to(source, at, read);
  if (!state) return state.status();
  (*state)->for_each_balance(read_time(at), [&](std::string_view subject, std::string_view item,
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

Result<log::LogEnd> log_end_of(log::FileSystem& fs, const std::string& data_dir) {
  auto reader = log::LogReader::open(fs, log_dir(data_dir), {.from_seq = UINT64_MAX});
  if (!reader) return reader.status();
  log::Record record;
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more) break;
  }
  return (*reader)->end();
}

Result<std::uint64_t> log_last_seq(log::FileSystem& fs, const std::string& data_dir) {
  auto end = log_end_of(fs, data_dir);
  if (!end) return end.status();
  return end->next_seq - 1;
}

}  // namespace tally
