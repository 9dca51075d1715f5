#include "engine/feed.h"

#include <algorithm>

#include "engine/replay.h"

namespace tally {

EventFeed::EventFeed(Ledger* ledger) : ledger_(ledger), log_dir_(log_dir(ledger->data_dir())) {
  positions_.reserve(kFeedPositionsMax);
  watcher_ = std::thread([this] { watch(); });
}

EventFeed::~EventFeed() { stop(); }

Result<std::size_t> EventFeed::read(FeedCursor* cursor, const FeedLimits& limits, const Visit& visit) {
  TALLY_ASSERT(cursor->next_seq >= 1);
  TALLY_ASSERT(limits.events_max >= 1);
  TALLY_ASSERT(limits.events_max <= kFeedEventsMax);
  TALLY_ASSERT(limits.bytes_max >= 1);
  const std::uint64_t first = cursor->next_seq;
  const std::uint64_t committed = ledger_->durable_seq();
  if (first > committed) return std::size_t{0};
  const std::uint64_t last = committed - first < limits.events_max ? committed : first + limits.events_max - 1;

  const bool resume = cursor->position && cursor->position->next_seq == first;
  auto tail = resume ? log::LogTail::resume(ledger_->file_system(), log_dir_, *cursor->position)
                     : log::LogTail::open(ledger_->file_system(), log_dir_, first);
  if (!tail) return tail.status();
  {
    std::lock_guard<std::mutex> guard(mu_);
    (resume ? stats_.tails_resumed : stats_.tails_opened)++;
  }
  std::size_t count = 0;
  std::size_t bytes = 0;
  log::Record record;
  log::TailPosition end = (*tail)->position();  // after the last record visited
  while (bytes < limits.bytes_max) {
    auto more = (*tail)->next(&record, last);
    if (!more && count > 0) break;
    if (!more) return more.status();
    if (!*more) break;
    TALLY_ASSERT(record.seq == first + count);
    // One that would take the batch past the limit is the next one's first.
    if (count > 0 && record.payload.size() > limits.bytes_max - bytes) break;
    Status visited = visit(record);
    if (!visited.ok() && count > 0) break;
    if (!visited.ok()) return visited;
    count++;
    bytes += record.payload.size();
    end = (*tail)->position();
  }
  // Everything up to `last` is committed, so the tail cannot stop short.
  TALLY_ASSERT(count > 0);
  cursor->position = end;
  cursor->next_seq = cursor->position->next_seq;
  return count;
}

Result<std::size_t> EventFeed::poll(std::uint64_t* next_seq, const FeedLimits& limits,
                                    const Visit& visit) {
  FeedCursor cursor;
  cursor.next_seq = *next_seq;
  cursor.position = cached(*next_seq);
  auto count = read(&cursor, limits, visit);
  if (!count) return count;
  if (*count > 0) remember(*cursor.position);
  *next_seq = cursor.next_seq;
  return count;
}

std::optional<log::TailPosition> EventFeed::cached(std::uint64_t next_seq) {
  std::lock_guard<std::mutex> guard(mu_);
  for (CachedPosition& entry : positions_) {
    if (entry.position.next_seq != next_seq) continue;
    entry.last_used = ++use_clock_;
    return entry.position;
  }
  return std::nullopt;
}

// Keeps `position`, replacing the least recently used one when full.
void EventFeed::remember(const log::TailPosition& position) {
  std::lock_guard<std::mutex> guard(mu_);
  CachedPosition* slot = nullptr;
  for (CachedPosition& entry : positions_) {
    if (entry.position.next_seq == position.next_seq) slot = &entry;
  }
  if (slot == nullptr && positions_.size() < kFeedPositionsMax) slot = &positions_.emplace_back();
  if (slot == nullptr) {
    slot = &*std::min_element(positions_.begin(), positions_.end(),
                              [](const CachedPosition& a, const CachedPosition& b) {
                                return a.last_used < b.last_used;
                              });
  }
  slot->position = position;
  slot->last_used = ++use_clock_;
}

FeedStats EventFeed::stats() {
  std::lock_guard<std::mutex> guard(mu_);
  FeedStats stats = stats_;
  stats.waiters = waiters_.size();
  return stats;
}

// ---- waiting -----------------------------------------------------------------

EventFeed::WaiterId EventFeed::wait(std::uint64_t after, Deadline deadline, Ready ready) {
  std::uint64_t committed = 0;
  {
    std::lock_guard<std::mutex> guard(mu_);
    committed = ledger_->durable_seq();
    const bool over = committed > after || deadline <= std::chrono::steady_clock::now() ||
                      stopping_ || ledger_closed_;
    if (!over) {
      const WaiterId id = next_waiter_++;
      waiters_.emplace(id, Waiter{after, deadline, std::move(ready)});
      cv_.notify_one();
      return id;
    }
  }
  ready(committed);
  return 0;
}

void EventFeed::cancel(WaiterId waiter) {
  Ready ready;
  {
    std::lock_guard<std::mutex> guard(mu_);
    auto entry = waiters_.find(waiter);
    if (entry == waiters_.end()) return;  // it ran already
    ready = std::move(entry->second.ready);
    waiters_.erase(entry);
  }
  ready(ledger_->durable_seq());
}

void EventFeed::stop() {
  std::vector<Ready> all;
  {
    std::lock_guard<std::mutex> guard(mu_);
    stopping_ = true;
    for (auto& [id, waiter] : waiters_) all.push_back(std::move(waiter.ready));
    waiters_.clear();
  }
  cv_.notify_all();
  // Only while there are waiters: a stop after the first (the destructor's)
  // may come after the ledger is gone (Server::stop() ends the borrow).
  if (!all.empty()) {
    const std::uint64_t committed = ledger_->durable_seq();
    for (Ready& ready : all) ready(committed);
  }
  if (watcher_.joinable()) watcher_.join();
}

void EventFeed::take_due_locked(std::uint64_t committed, Deadline now, std::vector<Ready>* due) {
  for (auto entry = waiters_.begin(); entry != waiters_.end();) {
    const Waiter& waiter = entry->second;
    if (committed > waiter.after || waiter.deadline <= now || ledger_closed_) {
      due->push_back(std::move(entry->second.ready));
      entry = waiters_.erase(entry);
    } else {
      ++entry;
    }
  }
}

// The watcher: sleeps while nobody waits; otherwise waits for the next
// commit, a slice at most, and calls back every waiter that is done.
void EventFeed::watch() {
  std::vector<Ready> due;
  std::unique_lock<std::mutex> guard(mu_);
  for (;;) {
    cv_.wait(guard, [this] { return stopping_ || !waiters_.empty(); });
    if (stopping_) return;
    std::uint64_t seen = ledger_->durable_seq();
    take_due_locked(seen, std::chrono::steady_clock::now(), &due);
    if (!due.empty()) {
      guard.unlock();
      for (Ready& ready : due) ready(seen);
      due.clear();
      guard.lock();
      continue;
    }
    Deadline until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kFeedWatchSliceMs);
    for (const auto& [id, waiter] : waiters_) until = std::min(until, waiter.deadline);
    guard.unlock();
    // Rounded up: a deadline under a millisecond away waits one.
    const auto timeout = std::chrono::ceil<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    // Once the ledger closed, every wait ends at once instead of spinning here.
    const bool closed = ledger_->wait_durable(seen, timeout).closed;
    guard.lock();
    if (closed) ledger_closed_ = true;
  }
}

}  // namespace tally
