// HistoryStore: the LMDB side of the point-in-time index. The contract is in
// history.h, the bytes in history_format.h.
//
// The writer keeps what it appends in memory (entries, new pairs, times)
// and writes it all in flush()'s one transaction, rather than holding a
// write transaction open across appends: a full map aborts an LMDB
// transaction, and with the appends still in memory flush can grow the map
// and write them again, all or nothing, as the snapshot store does. The
// buffer is bounded (pending_bytes_max), and sorted by key before it is
// written so that LMDB inserts in order (MDB_APPEND where the keys are past
// every key written before: new pairs' entries, all of an epoch's first
// flush, openings, times). A flush writes into the newest epoch only, and
// may end it (history_format.h).
#include "snapshots/history.h"

#include <lmdb.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "log/hash.h"
#include "projections/changes.h"
#include "projections/name_table.h"  // proj::kNameBytesMax
#include "snapshots/history_format.h"
#include "snapshots/lmdb_util.h"
#include "snapshots/pair_cache.h"

namespace tally::snap {

namespace {

using history::kEntryBytesMax;
using history::kEntryBytesMin;
using history::kEntryFixedBytes;
using history::kCheckBytes;
using history::kEntryKeyBytes;
using history::kEpochBytes;
using history::kEpochValueBytes;
using history::kHashBytes;
using history::kHashKeyBytes;
using history::kNameBytesMax;
using history::kOpeningKeyBytes;
using history::kOpeningValueBytes;
using history::kPositionBytes;
using history::kPositionCheckedBytes;
using history::kSeqBytes;
using history::kTimeKeyBytes;
using history::kTimeValueBytes;
using history::OpCode;
using lmdb::bytes_of;
using lmdb::Cursor;
using lmdb::get_be;
using lmdb::get_le;
using lmdb::put_be;
using lmdb::put_le;
using lmdb::ReadTxn;
using lmdb::Txn;
using lmdb::val_of;
using lmdb::view_of;

static_assert(kNameBytesMax == proj::kNameBytesMax);
static_assert(history::kPairKeyBytesMax <= PairCache::kKeyBytesMax);

constexpr std::string_view kComponent = "history";
// pending_bytes_max at most this, so offsets into the buffered keys fit a
// u32 (one event past the bound adds at most a few MiB).
constexpr std::size_t kPendingBytesLimit = std::size_t{1} << 30;

Status lmdb_error(std::string_view what, int rc) { return lmdb::error(kComponent, what, rc); }
Status corrupt(const std::string& what) { return Status(ErrorCode::corrupt, "history: " + what); }
Status invalid(const std::string& what) { return Status(ErrorCode::invalid, "history: " + what); }

bool valid_name(std::string_view name) {
  return !name.empty() && name.size() <= kNameBytesMax && name.find('\0') == std::string_view::npos;
}

Status check_name(const char* what, std::string_view name) {
  if (valid_name(name)) return Status();
  return invalid(std::string(what) + " " + quoted(name) + " is not 1..255 bytes without NUL");
}

Status check_names(std::string_view subject, std::string_view item) {
  TALLY_TRY(check_name("subject", subject));
  return check_name("item", item);
}

MDB_val position_key() {
  return val_of(std::string_view(history::kPositionKey, history::kPositionKeyBytes));
}

void make_pair_key(std::string_view subject, std::string_view item, std::string* out) {
  out->clear();
  out->append(subject);
  out->push_back('\0');
  out->append(item);
}

// Splits a "pairs" key; false unless it is subject \0 item, both valid.
bool split_pair_key(std::string_view key, std::string_view* subject, std::string_view* item) {
  const std::size_t nul = key.find('\0');
  if (nul == std::string_view::npos) return false;
  *subject = key.substr(0, nul);
  *item = key.substr(nul + 1);
  return valid_name(*subject) && valid_name(*item);
}

using EntryKey = std::array<std::uint8_t, kEntryKeyBytes>;
using EpochKey = std::array<std::uint8_t, kEpochBytes>;
using OpeningKey = std::array<std::uint8_t, kOpeningKeyBytes>;
using TimeKey = std::array<std::uint8_t, kTimeKeyBytes>;

EntryKey entry_key(std::uint64_t epoch, std::uint64_t pair_id, std::uint64_t seq) {
  return lmdb::be_key<3>({epoch, pair_id, seq});
}

EpochKey epoch_key(std::uint64_t epoch) { return lmdb::be_key<1>({epoch}); }

OpeningKey opening_key(std::uint64_t epoch, std::uint64_t pair_id) {
  return lmdb::be_key<2>({epoch, pair_id});
}

TimeKey time_key(std::int64_t time_ns) {
  return lmdb::be_key<1>({static_cast<std::uint64_t>(time_ns) ^ history::kTimeBias});
}

std::uint8_t op_code_of(const log::Event& event) {
  if (event.batch) return static_cast<std::uint8_t>(OpCode::batch);
  switch (event.ops[0].type) {
    case log::OpType::acquire: return static_cast<std::uint8_t>(OpCode::acquire);
    case log::OpType::consume: return static_cast<std::uint8_t>(OpCode::consume);
    case log::OpType::transfer: return static_cast<std::uint8_t>(OpCode::transfer);
    case log::OpType::hold: return static_cast<std::uint8_t>(OpCode::hold);
    case log::OpType::commit: return static_cast<std::uint8_t>(OpCode::commit);
    case log::OpType::release: return static_cast<std::uint8_t>(OpCode::release);
    case log::OpType::expire: return static_cast<std::uint8_t>(OpCode::expire);
  }
  return 0;
}

// The same names proj::event_op_name gives the event. Precondition: a code
// decode_entry accepted.
std::string_view op_name_of(std::uint8_t code) {
  switch (static_cast<OpCode>(code)) {
    case OpCode::acquire: return log::op_type_name(log::OpType::acquire);
    case OpCode::consume: return log::op_type_name(log::OpType::consume);
    case OpCode::transfer: return log::op_type_name(log::OpType::transfer);
    case OpCode::hold: return log::op_type_name(log::OpType::hold);
    case OpCode::commit: return log::op_type_name(log::OpType::commit);
    case OpCode::release: return log::op_type_name(log::OpType::release);
    case OpCode::expire: return log::op_type_name(log::OpType::expire);
    case OpCode::batch: return proj::kBatchOpName;
  }
  return "unknown";
}

// ---------------------------------------------------------------- records

// The position record's content.
struct Position {
  HistoryPosition at;
  std::uint64_t pair_count = 0;
  std::uint64_t epoch = 1;  // the newest epoch's first seq
  std::uint64_t epoch_entries = 0;
  std::uint64_t epoch_openings = 0;
  bool operator==(const Position&) const = default;
};

std::array<std::uint8_t, kPositionBytes> encode_position(const Position& position) {
  std::array<std::uint8_t, kPositionBytes> out{};
  std::uint8_t* at = out.data();
  const auto put = [&](std::uint64_t value, std::size_t width) {
    put_le(at, value, width);
    at += width;
  };
  put(history::kPositionMagic, 4);
  put(history::kFormatVersion, 4);
  put(position.at.seq, 8);
  put(position.at.chain_checksum, 8);
  put(static_cast<std::uint64_t>(position.at.time_ns), 8);
  put(position.pair_count, 8);
  put(position.epoch, 8);
  put(position.epoch_entries, 8);
  put(position.epoch_openings, 8);
  TALLY_ASSERT(static_cast<std::size_t>(at - out.data()) == kPositionCheckedBytes);
  put(XXH3_64bits(out.data(), kPositionCheckedBytes), 8);
  return out;
}

// Verifies before it trusts: size, hash, magic, version.
// The version is read first: another format's record has another size.
Result<Position> decode_position(const MDB_val& value) {
  const std::uint8_t* in = bytes_of(value);
  if (value.mv_size >= 8 && get_le(in, 4) == history::kPositionMagic &&
      get_le(in + 4, 4) != history::kFormatVersion) {
    return corrupt("format " + std::to_string(get_le(in + 4, 4)) + " is not this version's (" +
                   std::to_string(history::kFormatVersion) + "): rebuild the index");
  }
  if (value.mv_size != kPositionBytes) return corrupt("position record of the wrong size");
  if (get_le(in + kPositionCheckedBytes, 8) != XXH3_64bits(in, kPositionCheckedBytes)) {
    return corrupt("position record checksum mismatch");
  }
  const auto get = [&](std::size_t width) {
    const std::uint64_t value_read = get_le(in, width);
    in += width;
    return value_read;
  };
  if (get(4) != history::kPositionMagic) return corrupt("bad position record magic");
  get(4);  // the version, read above
  Position position;
  position.at.seq = get(8);
  position.at.chain_checksum = get(8);
  position.at.time_ns = static_cast<std::int64_t>(get(8));
  position.pair_count = get(8);
  position.epoch = get(8);
  position.epoch_entries = get(8);
  position.epoch_openings = get(8);
  if (position.epoch == 0 || position.epoch > position.at.seq + 1) {
    return corrupt("position record names epoch " + std::to_string(position.epoch) +
                   " at seq " + std::to_string(position.at.seq));
  }
  return position;
}

Result<Position> read_position(const Txn& txn, MDB_dbi meta) {
  MDB_val key = position_key();
  MDB_val value{};
  const int rc = mdb_get(txn.get(), meta, &key, &value);
  if (rc == MDB_NOTFOUND) return corrupt("the position record is missing");
  if (rc != 0) return lmdb_error("mdb_get (position)", rc);
  return decode_position(value);
}

// What an entry says, but its event's idempotency key.
struct EntryFields {
  std::uint64_t epoch = 0;
  std::uint64_t pair_id = 0;
  std::uint64_t seq = 0;
  std::int64_t time_ns = 0;
  std::int64_t delta_available = 0;
  std::int64_t delta_held = 0;
  proj::Balance after;
  std::uint8_t op_code = 0;
};

// One entry as stored, with the key it is stored under.
struct EntryRecord : EntryFields {
  std::string_view key;  // views the value it was decoded from
};

// The key and the value of an entry side by side, as the check covers them.
struct EntryBytes {
  std::array<std::uint8_t, kEntryKeyBytes + kEntryBytesMax> bytes{};
  std::size_t value_bytes = 0;
  MDB_val key() { return MDB_val{kEntryKeyBytes, bytes.data()}; }
  MDB_val value() { return MDB_val{value_bytes, bytes.data() + kEntryKeyBytes}; }
};

// The u32 check of entries, epochs and openings, over their key and value.
std::uint32_t check_of(const std::uint8_t* key_and_value, std::size_t bytes) {
  return static_cast<std::uint32_t>(XXH3_64bits(key_and_value, bytes));
}

// The same over a key and the value bytes before its check, apart: copied
// side by side, since a one-shot hash of a short record beats a streaming one.
std::uint32_t check_of(std::span<const std::uint8_t> key, const std::uint8_t* value,
                       std::size_t value_bytes) {
  // The largest key and value: an entry's, or a pair's.
  std::array<std::uint8_t, std::max(kEntryKeyBytes + kEntryBytesMax,
                                    history::kPairKeyBytesMax + history::kPairIdBytes)>
      checked;
  TALLY_ASSERT(key.size() + value_bytes <= checked.size());
  std::memcpy(checked.data(), key.data(), key.size());
  std::memcpy(checked.data() + key.size(), value, value_bytes);
  return check_of(checked.data(), key.size() + value_bytes);
}
std::uint32_t check_of(const MDB_val& key, const std::uint8_t* value, std::size_t value_bytes) {
  return check_of(std::span(bytes_of(key), key.mv_size), value, value_bytes);
}

// A pair's "hashes" key: the hash of its subject (the pair key up to its
// NUL), of its pair key, then its id; id 0 is where a pair key's records
// begin.
using HashKey = std::array<std::uint8_t, kHashKeyBytes>;
HashKey hash_key(std::string_view pair_key, std::uint64_t id) {
  const std::size_t subject_bytes = std::min(pair_key.find('\0'), pair_key.size());
  HashKey key{};
  put_be(key.data(), XXH3_64bits(pair_key.data(), subject_bytes), kHashBytes);
  put_be(key.data() + kHashBytes, XXH3_64bits(pair_key.data(), pair_key.size()), kHashBytes);
  put_be(key.data() + 2 * kHashBytes, id, history::kPairIdBytes);
  return key;
}

void encode_entry(const EntryRecord& entry, EntryBytes* out) {
  TALLY_ASSERT(entry.key.size() <= kNameBytesMax);
  const EntryKey key = entry_key(entry.epoch, entry.pair_id, entry.seq);
  std::memcpy(out->bytes.data(), key.data(), kEntryKeyBytes);
  std::uint8_t* at = out->bytes.data() + kEntryKeyBytes;
  const auto put = [&](std::uint64_t value, std::size_t width) {
    put_le(at, value, width);
    at += width;
  };
  put(static_cast<std::uint64_t>(entry.time_ns), 8);
  put(static_cast<std::uint64_t>(entry.delta_available), 8);
  put(static_cast<std::uint64_t>(entry.delta_held), 8);
  put(static_cast<std::uint64_t>(entry.after.available), 8);
  put(static_cast<std::uint64_t>(entry.after.held), 8);
  put(entry.op_code, 1);
  put(entry.key.size(), 1);
  std::memcpy(at, entry.key.data(), entry.key.size());
  at += entry.key.size();
  const std::size_t checked_bytes = static_cast<std::size_t>(at - out->bytes.data());
  put(check_of(out->bytes.data(), checked_bytes), kCheckBytes);
  out->value_bytes = checked_bytes + kCheckBytes - kEntryKeyBytes;
}

Status entry_corrupt(std::uint64_t pair_id, std::uint64_t seq, const char* what) {
  return corrupt("entry of pair " + std::to_string(pair_id) + " at seq " + std::to_string(seq) +
                 ": " + what);
}

// Verifies before it trusts: key size, value size, check, op code, balance.
// Messages are built only on failure: this runs for every entry read.
Status decode_entry(const MDB_val& key, const MDB_val& value, EntryRecord* out) {
  if (key.mv_size != kEntryKeyBytes) return corrupt("entry key of the wrong size");
  const std::uint64_t epoch = get_be(bytes_of(key), 8);
  const std::uint64_t pair_id = get_be(bytes_of(key) + 8, 8);
  const std::uint64_t seq = get_be(bytes_of(key) + 16, 8);
  const std::size_t size = value.mv_size;
  const std::uint8_t* in = bytes_of(value);
  if (size < kEntryBytesMin || size > kEntryBytesMax) {
    return entry_corrupt(pair_id, seq, "record of the wrong size");
  }
  const std::size_t key_bytes = in[kEntryFixedBytes - 1];
  if (size != kEntryBytesMin + key_bytes) return entry_corrupt(pair_id, seq, "bad key length");
  const std::size_t value_checked_bytes = size - kCheckBytes;
  if (get_le(in + value_checked_bytes, kCheckBytes) !=
      check_of(key, in, value_checked_bytes)) {
    return entry_corrupt(pair_id, seq, "check mismatch");
  }
  const auto get = [&](std::size_t width) {
    const std::uint64_t value_read = get_le(in, width);
    in += width;
    return static_cast<std::int64_t>(value_read);
  };
  out->epoch = epoch;
  out->pair_id = pair_id;
  out->seq = seq;
  out->time_ns = get(8);
  out->delta_available = get(8);
  out->delta_held = get(8);
  out->after.available = get(8);
  out->after.held = get(8);
  out->op_code = static_cast<std::uint8_t>(get(1));
  in += 1;  // the key length, read above
  out->key = std::string_view(reinterpret_cast<const char*>(in), key_bytes);
  if (out->op_code < history::kOpCodeMin || out->op_code > history::kOpCodeMax) {
    return entry_corrupt(pair_id, seq, "unknown op code");
  }
  if (out->after.available < 0 || out->after.held < 0) {
    return entry_corrupt(pair_id, seq, "negative balance");
  }
  if (seq < epoch) return entry_corrupt(pair_id, seq, "before its epoch");
  return Status();
}

// Whether an entry continues `before`, the pair's balance after its
// previous entry (or its opening balance, or zero): the entry's balance
// after, less its change. An entry lost from between two (a damaged key
// moves it out of the pair's range) breaks this, since no change is zero.
bool continues(const EntryRecord& entry, proj::Balance before) {
  proj::Balance start;
  if (__builtin_sub_overflow(entry.after.available, entry.delta_available, &start.available) ||
      __builtin_sub_overflow(entry.after.held, entry.delta_held, &start.held)) {
    return false;
  }
  return start == before;
}

Status chain_broken(std::uint64_t pair_id, std::uint64_t seq) {
  return corrupt("entries of pair " + std::to_string(pair_id) + " do not chain at seq " +
                 std::to_string(seq));
}

Status carry_broken(std::uint64_t pair_id, std::uint64_t epoch) {
  return corrupt("the opening balance of pair " + std::to_string(pair_id) + " in epoch " +
                 std::to_string(epoch) + " is not its balance at the end of the epoch before");
}

// Decodes into *out the entry a cursor is on when it is the target's pair's
// in the target's epoch (the key up to its seq); leaves *out empty if not.
// Another pair's entry is checked too: where a read stops is as much its
// answer as what it took, and a key damaged into another pair or epoch
// (its check covers the key) would otherwise end the pair's entries early.
Status take_if_pair(const MDB_val& key, const MDB_val& value, const EntryKey& target,
                    std::optional<EntryRecord>* out) {
  EntryRecord record;
  TALLY_TRY(decode_entry(key, value, &record));
  if (std::memcmp(key.mv_data, target.data(), kEntryKeyBytes - kSeqBytes) != 0) return Status();
  *out = record;
  return Status();
}

// The pair's last entry at or before seq within an epoch, in *last, and its
// first entry after seq there, in *next (each nullopt when none). The next
// entry costs one cursor step past the last, usually on the same page, or
// none when the seek lands on it.
Status entries_around(MDB_cursor* cursor, std::uint64_t epoch, std::uint64_t pair_id,
                      std::uint64_t seq, std::optional<EntryRecord>* last,
                      std::optional<EntryRecord>* next) {
  last->reset();
  next->reset();
  EntryKey target = entry_key(epoch, pair_id, seq);
  MDB_val key = val_of(target);
  MDB_val value{};
  int rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
  const bool exact = rc == 0 && key.mv_size == kEntryKeyBytes &&
                     std::memcmp(key.mv_data, target.data(), kEntryKeyBytes) == 0;
  if (rc == MDB_NOTFOUND) {
    // Every key is before the target: the last may be the pair's.
    rc = mdb_cursor_get(cursor, &key, &value, MDB_LAST);
  } else if (rc == 0 && !exact) {
    // The first key past the target: the pair's next entry if it is the
    // pair's; the one before it may be the pair's last.
    TALLY_TRY(take_if_pair(key, value, target, next));
    rc = mdb_cursor_get(cursor, &key, &value, MDB_PREV);
  }
  if (rc == MDB_NOTFOUND) return Status();
  if (rc != 0) return lmdb_error("mdb_cursor_get (entries)", rc);
  TALLY_TRY(take_if_pair(key, value, target, last));
  if (exact) {
    rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);
    if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (entries)", rc);
    if (rc == 0) TALLY_TRY(take_if_pair(key, value, target, next));
  }
  // A damaged page can break the order a seek relies on.
  if ((last->has_value() && (*last)->seq > seq) || (next->has_value() && (*next)->seq <= seq)) {
    return entry_corrupt(pair_id, seq, "entries out of order");
  }
  return Status();
}

// ---------------------------------------------------------------- epochs

struct EpochRecord {
  std::uint64_t epoch = 0;     // its first seq
  std::uint64_t openings = 0;  // its opening count
};

std::array<std::uint8_t, kEpochValueBytes> encode_epoch(const EpochKey& key,
                                                        const EpochRecord& record) {
  std::array<std::uint8_t, kEpochValueBytes> value{};
  put_le(value.data(), record.openings, 8);
  put_le(value.data() + 8, check_of(key, value.data(), 8), kCheckBytes);
  return value;
}

Result<EpochRecord> decode_epoch(const MDB_val& key, const MDB_val& value) {
  if (key.mv_size != kEpochBytes || value.mv_size != kEpochValueBytes) {
    return corrupt("epoch record of the wrong size");
  }
  EpochRecord record{get_be(bytes_of(key), 8), get_le(bytes_of(value), 8)};
  if (get_le(bytes_of(value) + 8, kCheckBytes) != check_of(key, bytes_of(value), 8) ||
      record.epoch == 0) {
    return corrupt("the record of epoch " + std::to_string(record.epoch) + " does not verify");
  }
  return record;
}

Status put_epoch(const Txn& txn, MDB_dbi epochs, const EpochRecord& record, unsigned flags,
                 int* rc) {
  EpochKey key_bytes = epoch_key(record.epoch);
  std::array<std::uint8_t, kEpochValueBytes> value_bytes = encode_epoch(key_bytes, record);
  MDB_val key = val_of(key_bytes);
  MDB_val value = val_of(value_bytes);
  *rc = mdb_put(txn.get(), epochs, &key, &value, flags);
  if (*rc == MDB_KEYEXIST) {
    *rc = 0;
    return corrupt("epoch " + std::to_string(record.epoch) + " is there already");
  }
  if (*rc != 0) return lmdb_error("mdb_put (epochs)", *rc);
  return Status();
}

// The epoch holding seq (1..the indexed position): the last one that
// begins at or before it. Leaves the cursor on it, for next_epoch.
Result<std::uint64_t> seek_epoch(MDB_cursor* cursor, std::uint64_t seq) {
  EpochKey target = epoch_key(seq + 1);
  MDB_val key = val_of(target);
  MDB_val value{};
  // The first epoch past seq, then the one before it; or the last.
  int rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
  rc = mdb_cursor_get(cursor, &key, &value, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
  if (rc == MDB_NOTFOUND) return corrupt("no epoch holds seq " + std::to_string(seq));
  if (rc != 0) return lmdb_error("mdb_cursor_get (epochs)", rc);
  Result<EpochRecord> record = decode_epoch(key, value);
  if (!record) return record.status();
  if (record->epoch > seq) return corrupt("no epoch holds seq " + std::to_string(seq));
  return record->epoch;
}

// The epoch before `epoch` (one that exists); 0 for the first.
Result<std::uint64_t> previous_epoch(MDB_cursor* cursor, std::uint64_t epoch) {
  EpochKey target = epoch_key(epoch);
  MDB_val key = val_of(target);
  MDB_val value{};
  int rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_KEY);
  if (rc == MDB_NOTFOUND) return corrupt("no epoch " + std::to_string(epoch));
  if (rc == 0) rc = mdb_cursor_get(cursor, &key, &value, MDB_PREV);
  if (rc == MDB_NOTFOUND) return std::uint64_t{0};
  if (rc != 0) return lmdb_error("mdb_cursor_get (epochs)", rc);
  Result<EpochRecord> record = decode_epoch(key, value);
  if (!record) return record.status();
  if (record->epoch >= epoch) return corrupt("epochs out of order before " + std::to_string(epoch));
  return record->epoch;
}

// The epoch after the cursor's, moving to it; 0 past the last.
Result<std::uint64_t> next_epoch(MDB_cursor* cursor) {
  MDB_val key{};
  MDB_val value{};
  const int rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);
  if (rc == MDB_NOTFOUND) return std::uint64_t{0};
  if (rc != 0) return lmdb_error("mdb_cursor_get (epochs)", rc);
  Result<EpochRecord> record = decode_epoch(key, value);
  if (!record) return record.status();
  return record->epoch;
}

// ---------------------------------------------------------------- times

struct TimeRecord {
  std::int64_t time_ns = 0;
  std::uint64_t first = 0;  // the first and the last indexed seqs stamped with it
  std::uint64_t last = 0;
};

std::array<std::uint8_t, kTimeValueBytes> encode_time(const TimeKey& key,
                                                      const TimeRecord& record) {
  std::array<std::uint8_t, kTimeValueBytes> value{};
  put_le(value.data(), record.last, kSeqBytes);
  put_le(value.data() + kSeqBytes, record.first, kSeqBytes);
  put_le(value.data() + 2 * kSeqBytes, check_of(key, value.data(), 2 * kSeqBytes), kCheckBytes);
  return value;
}

Result<TimeRecord> decode_time(const MDB_val& key, const MDB_val& value) {
  if (key.mv_size != kTimeKeyBytes || value.mv_size != kTimeValueBytes) {
    return corrupt("time record of the wrong size");
  }
  const std::uint8_t* in = bytes_of(value);
  const TimeRecord record{static_cast<std::int64_t>(get_be(bytes_of(key), 8) ^ history::kTimeBias),
                          get_le(in + kSeqBytes, kSeqBytes), get_le(in, kSeqBytes)};
  if (get_le(in + 2 * kSeqBytes, kCheckBytes) != check_of(key, in, 2 * kSeqBytes) ||
      record.first == 0 || record.first > record.last) {
    return corrupt("the time record of " + std::to_string(record.time_ns) + " ns does not verify");
  }
  return record;
}

// The record the cursor call that returned rc found (none at MDB_NOTFOUND).
Result<std::optional<TimeRecord>> time_found(int rc, const MDB_val& key, const MDB_val& value) {
  if (rc == MDB_NOTFOUND) return std::optional<TimeRecord>();
  if (rc != 0) return lmdb_error("mdb_cursor_get (times)", rc);
  Result<TimeRecord> record = decode_time(key, value);
  if (!record) return record.status();
  return std::optional<TimeRecord>(*record);
}

// Whether `after` is the record next to `before` in "times" (either may be
// none: before the first, past the last), nothing lost between them.
Status check_time_link(const std::optional<TimeRecord>& before,
                       const std::optional<TimeRecord>& after, std::uint64_t position_seq) {
  const std::uint64_t last = before ? before->last : 0;
  if (last > position_seq || (after ? after->first != last + 1 : last != position_seq)) {
    return corrupt("the time records after seq " + std::to_string(last) +
                   " do not follow on (lost, or damaged)");
  }
  return Status();
}

// ---------------------------------------------------------------- openings

std::array<std::uint8_t, kOpeningValueBytes> encode_opening(const OpeningKey& key,
                                                            proj::Balance balance) {
  std::array<std::uint8_t, kOpeningValueBytes> value{};
  put_le(value.data(), static_cast<std::uint64_t>(balance.available), 8);
  put_le(value.data() + 8, static_cast<std::uint64_t>(balance.held), 8);
  put_le(value.data() + 16, check_of(key, value.data(), 16), kCheckBytes);
  return value;
}

Result<proj::Balance> decode_opening(const MDB_val& key, const MDB_val& value) {
  if (key.mv_size != kOpeningKeyBytes || value.mv_size != kOpeningValueBytes) {
    return corrupt("opening balance of the wrong size");
  }
  const std::uint8_t* in = bytes_of(value);
  const proj::Balance balance{static_cast<std::int64_t>(get_le(in, 8)),
                              static_cast<std::int64_t>(get_le(in + 8, 8))};
  if (get_le(in + 16, kCheckBytes) != check_of(key, in, 16) ||
      balance.available < 0 || balance.held < 0 || balance == proj::Balance{}) {
    return corrupt("the opening balance of pair " + std::to_string(get_be(bytes_of(key) + 8, 8)) +
                   " in epoch " + std::to_string(get_be(bytes_of(key), 8)) +
                   " does not verify");
  }
  return balance;
}

// The cursors a balance lookup reads: one pair's entries and openings, and
// the epochs, for the one before the newest.
struct BalanceCursors {
  Cursor entries;
  Cursor openings;
  Cursor epochs;
};

// The pair's opening balance in an epoch, zero when it has none.
Status opening_of(MDB_cursor* cursor, std::uint64_t epoch, std::uint64_t pair_id,
                  proj::Balance* out) {
  OpeningKey target = opening_key(epoch, pair_id);
  MDB_val key = val_of(target);
  MDB_val value{};
  const int rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_KEY);
  if (rc == MDB_NOTFOUND) {
    *out = proj::Balance{};
    return Status();
  }
  if (rc != 0) return lmdb_error("mdb_cursor_get (openings)", rc);
  Result<proj::Balance> opening = decode_opening(key, value);
  if (!opening) return opening.status();
  *out = *opening;
  return Status();
}

// The pair's balance after seq, where `epoch` holds seq (or seq is past
// everything, for the newest epoch): its last entry at or before seq in
// the epoch, or else its opening balance, or else zero.
//
// Checked against what follows it (history_format.h, "Chains"): the pair's
// next entry in the epoch must continue it, or with none, its opening
// balance in `following_epoch` (the epoch after, 0 for the newest) must
// be it.
// So an entry lost from before the next change is corrupt, not an older
// balance; a lost last entry of the newest epoch has nothing after it.
// Unless it is the only epoch (the first, with none after it): a pair gets
// its id with its first entry, so there a pair with none at all lost them.
// A pair with no entry in the newest epoch answers its opening there, which
// has nothing after it either: it is checked against what came before, the
// pair's balance at the end of the epoch before, so that an opening lost
// (a damaged key) is corrupt rather than a zero.
Status no_entry_in_only_epoch(std::uint64_t pair_id) {
  return corrupt("pair " + std::to_string(pair_id) + " has an id but no entry");
}

// The pair's balance at the end of the epoch before `epoch` equals `opening`,
// its opening balance in `epoch`, the newest; nothing to check in the first.
Status check_opening(const BalanceCursors& cursors, std::uint64_t epoch, std::uint64_t pair_id,
                     proj::Balance opening) {
  Result<std::uint64_t> previous = previous_epoch(cursors.epochs.get(), epoch);
  if (!previous) return previous.status();
  if (*previous == 0) return Status();
  std::optional<EntryRecord> last;
  std::optional<EntryRecord> next;
  TALLY_TRY(entries_around(cursors.entries.get(), *previous, pair_id, epoch - 1, &last, &next));
  proj::Balance ended;
  if (last.has_value()) {
    ended = last->after;
  } else {
    TALLY_TRY(opening_of(cursors.openings.get(), *previous, pair_id, &ended));
  }
  if (ended != opening) return carry_broken(pair_id, epoch);
  return Status();
}

Status balance_in_epoch(const BalanceCursors& cursors, std::uint64_t epoch,
                        std::uint64_t following_epoch, std::uint64_t pair_id,
                        std::uint64_t seq, proj::Balance* out) {
  std::optional<EntryRecord> last;
  std::optional<EntryRecord> next;
  TALLY_TRY(entries_around(cursors.entries.get(), epoch, pair_id, seq, &last, &next));
  proj::Balance balance;
  if (last.has_value()) {
    balance = last->after;
  } else if (!next.has_value() && epoch == 1 && following_epoch == 0) {
    return no_entry_in_only_epoch(pair_id);
  } else {
    TALLY_TRY(opening_of(cursors.openings.get(), epoch, pair_id, &balance));
  }
  if (next.has_value()) {
    if (!continues(*next, balance)) return chain_broken(pair_id, next->seq);
  } else if (following_epoch != 0) {
    proj::Balance carried;
    TALLY_TRY(opening_of(cursors.openings.get(), following_epoch, pair_id, &carried));
    if (carried != balance) return carry_broken(pair_id, following_epoch);
  } else if (!last.has_value()) {
    TALLY_TRY(check_opening(cursors, epoch, pair_id, balance));
  }
  *out = balance;
  return Status();
}

// ---------------------------------------------------------------- writer state

// One entry appended and not flushed. Its key is in the pending key buffer.
struct PendingEntry : EntryFields {
  std::uint32_t key_offset = 0;
  std::uint8_t key_bytes = 0;
};

// A pair first changed since the last flush; its key is in the buffer.
struct PendingPair {
  std::uint64_t id = 0;
  std::uint32_t key_offset = 0;
  std::uint32_t key_bytes = 0;
};

struct PendingTime {
  std::int64_t time_ns = 0;
  std::uint64_t first = 0;
  std::uint64_t last = 0;
};

// One pair's change by the event being appended, before it is recorded.
struct Change {
  PairRecord* pair = nullptr;  // the cache's
  std::int64_t delta_available = 0;
  std::int64_t delta_held = 0;
  proj::Balance after;
};

// Between the puts of a flush: closed once its cancel (may be null) is set.
Status cancelled(const std::atomic<bool>* cancel) {
  if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) {
    return Status(ErrorCode::closed, "the history flush was cancelled");
  }
  return Status();
}

}  // namespace

struct HistoryStore::Impl {
  std::unique_ptr<lmdb::Environment> env;
  MDB_dbi meta = 0;
  MDB_dbi pairs = 0;
  MDB_dbi entries = 0;
  MDB_dbi times = 0;
  MDB_dbi epochs = 0;
  MDB_dbi openings = 0;
  MDB_dbi hashes = 0;
  HistoryStoreOptions options;

  // The writer's. flushed: as the last flush wrote it (or open found it);
  // appended: with what is buffered since; written: what the flush under
  // way writes (appended, and a new epoch if it begins one).
  Position flushed;
  Position appended;
  Position written;
  PairCache cache;  // a record stays put until a flush or clear() empties it
  std::vector<PendingEntry> pending_entries;
  std::vector<PendingPair> pending_pairs;
  std::vector<PendingTime> pending_times;
  std::string pending_keys;  // idempotency keys and new pairs' keys
  // Scratch of one append, reused.
  std::vector<proj::PairDelta> deltas;
  std::vector<Change> changes;
  std::string pair_key;

  Status open_dbs(bool read_only);
  Status check_epoch(const Txn& txn, const Position& position) const;
  Status open_balance_cursors(const Txn& txn, BalanceCursors* cursors) const;
  Status check_writable() const;
  Status check_event(const log::Event& event) const;
  Status check_sole_writer(const Txn& txn) const;
  std::size_t pending_bytes() const;
  bool fits(const log::Event& event) const;
  Status resolve(const log::Event& event);
  Result<PairRecord*> slot_for(std::string_view subject, std::string_view item,
                               std::optional<ReadTxn>* txn);
  Status load_slot(const Txn& txn, PairSlot* slot) const;
  void record(const log::Event& event, std::uint64_t chain_checksum);
  void drop_pending();

  // `cancel`: flush()'s, checked between puts (may be null).
  Status write_pending(const std::atomic<bool>* cancel, int* rc);
  Status put_pairs(const Txn& txn, const std::atomic<bool>* cancel, int* rc);
  Status put_entries(const Txn& txn, const std::atomic<bool>* cancel, int* rc);
  Status put_times(const Txn& txn, int* rc);
  Status begin_epoch(const Txn& txn, Position* position, int* rc);
  Status put_position(const Txn& txn, const Position& position, int* rc);
  Status clear_once(int* rc);

  Status begin_read(ReadTxn* txn, Position* position) const;
  Result<std::uint64_t> find_pair(const Txn& txn, std::string_view key,
                                  std::uint64_t pair_count) const;
  // The "hashes" records whose key begins with `prefix` (8 or 16 bytes),
  // each checked: how many there are, and the id of the first.
  Status count_hashes(const Txn& txn, std::span<const std::uint8_t> prefix,
                      std::uint64_t* count, std::uint64_t* first_id) const;
  // The id in a pair's record, once its check (over `key` too) verifies.
  Result<std::uint64_t> pair_id_of(const MDB_val& key, const MDB_val& value,
                                   std::uint64_t pair_count) const;
  // As many pair records as the position counts.
  Status check_pair_count(const Txn& txn, const Position& position) const;
  Status check_pair_ids(const Txn& txn, const Position& position) const;
  Status check_epochs(const Txn& txn, const Position& position) const;
  Status check_times(const Txn& txn, const Position& position) const;
  Status check_counts(const Txn& txn, std::uint64_t entries_walked,
                      std::uint64_t openings_walked) const;
  Status visit_pairs(const Txn& txn, const Position& position, std::string_view prefix,
                     std::uint64_t seq,
                     const std::function<void(std::string_view, std::string_view,
                                              proj::Balance)>& visit) const;
};

namespace {

// mdb_put through a cursor; a key that must be new and is not means the
// index holds more than its position says.
Status put(MDB_cursor* cursor, MDB_val* key, MDB_val* value, unsigned flags, const char* what,
           int* rc) {
  *rc = mdb_cursor_put(cursor, key, value, flags);
  if (*rc == MDB_KEYEXIST) {
    *rc = 0;
    return corrupt(std::string(what) + ": a key past the indexed position is there already");
  }
  if (*rc != 0) return lmdb_error(std::string("mdb_cursor_put (") + what + ")", *rc);
  return Status();
}

// The number of records in a database, as LMDB counts them.
Result<std::uint64_t> records_in(const Txn& txn, MDB_dbi dbi, const char* what) {
  MDB_stat stat{};
  const int rc = mdb_stat(txn.get(), dbi, &stat);
  if (rc != 0) return lmdb_error(std::string("mdb_stat (") + what + ")", rc);
  return std::uint64_t{stat.ms_entries};
}

Status check_seq(std::uint64_t seq, const Position& position) {
  if (seq > position.at.seq) {
    return invalid("seq " + std::to_string(seq) + " is past the indexed position " +
                   std::to_string(position.at.seq));
  }
  return Status();
}

}  // namespace

// ---------------------------------------------------------------- open

HistoryStore::HistoryStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HistoryStore::~HistoryStore() = default;

Result<std::unique_ptr<HistoryStore>> HistoryStore::open(const std::string& dir,
                                                         const HistoryStoreOptions& options) {
  if (options.pending_bytes_max == 0 || options.pending_bytes_max > kPendingBytesLimit) {
    return invalid("pending_bytes_max must be 1.." + std::to_string(kPendingBytesLimit));
  }
  if (options.epoch_entries_min == 0) return invalid("epoch_entries_min must be at least 1");
  lmdb::EnvironmentOptions env_options;
  env_options.component = kComponent;
  env_options.db_names = history::kDbNames;
  // The trees open() reads (the position, the newest epoch) are small.
  static constexpr std::array<const char*, 2> kReadAtOpen = {history::kMetaDbName,
                                                             history::kEpochsDbName};
  env_options.db_names_checked =
      options.check_all_pages ? std::span<const char* const>(history::kDbNames) : kReadAtOpen;
  env_options.flags = MDB_NOTLS | MDB_NOMETASYNC | (options.read_only ? MDB_RDONLY : 0);
  env_options.map_size_bytes = options.map_size_bytes;
  env_options.map_size_bytes_max = options.map_size_bytes_max;
  Result<std::unique_ptr<lmdb::Environment>> env = lmdb::Environment::open(dir, env_options);
  if (!env) return env.status();
  if (static_cast<std::size_t>(mdb_env_get_maxkeysize((*env)->get())) <
      history::kPairKeyBytesMax) {
    return Status(ErrorCode::io_error, "history: this LMDB's key size limit is below " +
                                           std::to_string(history::kPairKeyBytesMax) + " bytes");
  }
  auto impl = std::make_unique<Impl>();
  impl->env = std::move(env).value();
  impl->options = options;
  TALLY_TRY(impl->open_dbs(options.read_only));
  return std::unique_ptr<HistoryStore>(new HistoryStore(std::move(impl)));
}

// Opens (the writer: creates) the databases and reads the position.
Status HistoryStore::Impl::open_dbs(bool read_only) {
  Txn txn;
  TALLY_TRY(txn.begin_adopting(*env, read_only ? MDB_RDONLY : 0));
  const unsigned flags = read_only ? 0 : MDB_CREATE;
  const auto open_db = [&](const char* name, MDB_dbi* dbi) {
    const int rc = mdb_dbi_open(txn.get(), name, flags, dbi);
    if (rc == MDB_NOTFOUND) {
      return Status(ErrorCode::not_found, std::string("history: no '") + name + "' database");
    }
    if (rc != 0) return lmdb_error(std::string("mdb_dbi_open ") + name, rc);
    return Status();
  };
  // The position first: an index of another format has other databases.
  TALLY_TRY(open_db(history::kMetaDbName, &meta));
  bool created = false;
  if (!read_only) {
    // A new index starts at position 0. An existing record, even a damaged
    // one, is left as it is (NOOVERWRITE), to be reported below.
    MDB_val key = position_key();
    std::array<std::uint8_t, kPositionBytes> record = encode_position(Position{});
    MDB_val value = val_of(record);
    const int rc = mdb_put(txn.get(), meta, &key, &value, MDB_NOOVERWRITE);
    if (rc != 0 && rc != MDB_KEYEXIST) return lmdb_error("mdb_put (position)", rc);
    created = rc == 0;
  }
  Result<Position> position = read_position(txn, meta);
  if (!position) return position.status();
  const std::pair<const char*, MDB_dbi*> dbs[] = {{history::kPairsDbName, &pairs},
                                                  {history::kEntriesDbName, &entries},
                                                  {history::kTimesDbName, &times},
                                                  {history::kEpochsDbName, &epochs},
                                                  {history::kOpeningsDbName, &openings},
                                                  {history::kHashesDbName, &hashes}};
  for (const auto& [name, dbi] : dbs) TALLY_TRY(open_db(name, dbi));
  int rc = 0;
  if (created) TALLY_TRY(put_epoch(txn, epochs, EpochRecord{1, 0}, MDB_NOOVERWRITE, &rc));
  TALLY_TRY(check_pair_count(txn, *position));
  TALLY_TRY(check_epoch(txn, *position));
  // Committing keeps the database handles, for a read transaction too.
  rc = txn.commit();
  if (rc != 0) return lmdb_error("mdb_txn_commit (open)", rc);
  flushed = *position;
  appended = *position;
  return Status();
}

// The newest epoch's record is there and agrees with the position.
Status HistoryStore::Impl::check_epoch(const Txn& txn, const Position& position) const {
  EpochKey key_bytes = epoch_key(position.epoch);
  MDB_val key = val_of(key_bytes);
  MDB_val value{};
  const int rc = mdb_get(txn.get(), epochs, &key, &value);
  if (rc == MDB_NOTFOUND) {
    return corrupt("the record of epoch " + std::to_string(position.epoch) + " is missing");
  }
  if (rc != 0) return lmdb_error("mdb_get (epochs)", rc);
  Result<EpochRecord> record = decode_epoch(key, value);
  if (!record) return record.status();
  if (record->openings != position.epoch_openings) {
    return corrupt("epoch " + std::to_string(position.epoch) + " has " +
                   std::to_string(record->openings) + " openings where the position counts " +
                   std::to_string(position.epoch_openings));
  }
  return Status();
}

Status HistoryStore::Impl::open_balance_cursors(const Txn& txn, BalanceCursors* cursors) const {
  TALLY_TRY(cursors->entries.open(txn, entries));
  TALLY_TRY(cursors->openings.open(txn, openings));
  return cursors->epochs.open(txn, epochs);
}

// ---------------------------------------------------------------- append

HistoryPosition HistoryStore::appended_position() const { return impl_->appended.at; }

Status HistoryStore::Impl::check_writable() const {
  if (options.read_only) return invalid("the index was opened read-only");
  return Status();
}

Status HistoryStore::Impl::check_event(const log::Event& event) const {
  if (event.seq != appended.at.seq + 1) {
    return invalid("seq " + std::to_string(event.seq) + " does not follow the appended seq " +
                   std::to_string(appended.at.seq));
  }
  if (appended.at.seq != 0 && event.timestamp_ns < appended.at.time_ns) {
    return invalid("seq " + std::to_string(event.seq) + ": timestamp " +
                   std::to_string(event.timestamp_ns) + " before the previous " +
                   std::to_string(appended.at.time_ns));
  }
  if (event.key.size() > kNameBytesMax) return invalid("over-long idempotency key");
  if (event.ops.empty() || event.ops.size() > log::kBatchOpsMax) {
    return invalid("seq " + std::to_string(event.seq) + " has " +
                   std::to_string(event.ops.size()) + " ops");
  }
  return Status();
}

std::size_t HistoryStore::Impl::pending_bytes() const {
  return pending_entries.size() * sizeof(PendingEntry) +
         pending_pairs.size() * sizeof(PendingPair) + pending_times.size() * sizeof(PendingTime) +
         pending_keys.size();
}

// Whether the event's worst case fits the buffer; an empty buffer takes any.
bool HistoryStore::Impl::fits(const log::Event& event) const {
  if (appended.at.seq == flushed.at.seq) return true;
  const std::size_t per_change =
      sizeof(PendingEntry) + sizeof(PendingPair) + history::kPairKeyBytesMax;
  const std::size_t worst = deltas.size() * per_change + event.key.size() + sizeof(PendingTime);
  return pending_bytes() + worst <= options.pending_bytes_max;
}

// The index is where this writer's last flush left it: no other process
// wrote it since (its pairs and ids would clash with this one's).
Status HistoryStore::Impl::check_sole_writer(const Txn& txn) const {
  Result<Position> on_disk = read_position(txn, meta);
  if (!on_disk) return on_disk.status();
  if (*on_disk == flushed) return Status();
  return Status(ErrorCode::locked, "history: another writer flushed this index (to seq " +
                                       std::to_string(on_disk->at.seq) + ") since it was opened");
}

// The pair's slot: cached, or loaded from the index (a read transaction is
// begun at the first miss and serves the event's other misses).
Result<PairRecord*> HistoryStore::Impl::slot_for(std::string_view subject, std::string_view item,
                                                 std::optional<ReadTxn>* txn) {
  make_pair_key(subject, item, &pair_key);
  if (PairRecord* found = cache.find(pair_key)) return found;
  if (!txn->has_value()) {
    txn->emplace();
    TALLY_TRY((*txn)->begin(*env));
    TALLY_TRY(check_sole_writer((*txn)->txn()));
  }
  PairSlot slot;
  TALLY_TRY(load_slot((*txn)->txn(), &slot));
  return cache.insert(pair_key, slot);
}

// The flushed id and last balance of the pair named by pair_key, if any.
Status HistoryStore::Impl::load_slot(const Txn& txn, PairSlot* slot) const {
  Result<std::uint64_t> id = find_pair(txn, pair_key, flushed.pair_count);
  if (!id) return id.status();
  slot->id = *id;
  if (*id == 0) return Status();
  BalanceCursors cursors;
  TALLY_TRY(open_balance_cursors(txn, &cursors));
  return balance_in_epoch(cursors, flushed.epoch, 0, *id, UINT64_MAX, &slot->balance);
}

// Fills `changes` with the pairs the event changes and their balances
// after it. Changes nothing but the cache, where it adds flushed pairs.
Status HistoryStore::Impl::resolve(const log::Event& event) {
  changes.clear();
  std::optional<ReadTxn> txn;
  for (const proj::PairDelta& delta : deltas) {
    if (delta.available == 0 && delta.held == 0) continue;  // the pair did not change
    Result<PairRecord*> cached = slot_for(delta.subject, delta.item, &txn);
    if (!cached) return cached.status();
    const PairSlot* slot = &(*cached)->slot;
    proj::Balance after = slot->balance;
    const bool overflow =
        __builtin_add_overflow(after.available, delta.available, &after.available) ||
        __builtin_add_overflow(after.held, delta.held, &after.held);
    if (overflow || after.available < 0 || after.held < 0) {
      return corrupt("seq " + std::to_string(event.seq) + " takes " + quoted(delta.subject) +
                     " " + quoted(delta.item) + " out of range from available " +
                     std::to_string(slot->balance.available) + ", held " +
                     std::to_string(slot->balance.held) +
                     ": the event does not follow the indexed history");
    }
    changes.push_back(Change{*cached, delta.available, delta.held, after});
  }
  return Status();
}

// Buffers the resolved changes and the event's time. Cannot fail.
void HistoryStore::Impl::record(const log::Event& event, std::uint64_t chain_checksum) {
  const auto key_offset = static_cast<std::uint32_t>(pending_keys.size());
  if (!changes.empty()) pending_keys.append(event.key);
  const std::uint8_t op_code = op_code_of(event);
  for (const Change& change : changes) {
    PairSlot& slot = change.pair->slot;
    if (slot.id == 0) {
      slot.id = ++appended.pair_count;
      const std::string_view new_key = change.pair->key();
      pending_pairs.push_back(PendingPair{slot.id, static_cast<std::uint32_t>(pending_keys.size()),
                                          static_cast<std::uint32_t>(new_key.size())});
      pending_keys.append(new_key);
    }
    slot.balance = change.after;
    PendingEntry entry;
    entry.pair_id = slot.id;
    entry.seq = event.seq;
    entry.time_ns = event.timestamp_ns;
    entry.delta_available = change.delta_available;
    entry.delta_held = change.delta_held;
    entry.after = change.after;
    entry.key_offset = key_offset;
    entry.key_bytes = static_cast<std::uint8_t>(event.key.size());
    entry.op_code = op_code;
    pending_entries.push_back(entry);
    appended.epoch_entries++;
  }
  // "times" keeps the first and the last seq of each timestamp.
  if (!pending_times.empty() && pending_times.back().time_ns == event.timestamp_ns) {
    pending_times.back().last = event.seq;
  } else {
    pending_times.push_back(PendingTime{event.timestamp_ns, event.seq, event.seq});
  }
  appended.at = HistoryPosition{event.seq, chain_checksum, event.timestamp_ns};
}

Status HistoryStore::append(const log::Event& event, std::uint64_t chain_checksum) {
  Impl& impl = *impl_;
  TALLY_TRY(impl.check_writable());
  TALLY_TRY(impl.check_event(event));
  proj::event_deltas(event, &impl.deltas);
  for (const proj::PairDelta& delta : impl.deltas) {
    TALLY_TRY(check_names(delta.subject, delta.item));
  }
  if (!impl.fits(event)) {
    return Status(ErrorCode::busy, "history: " + std::to_string(impl.pending_bytes()) +
                                       " bytes appended and not flushed (pending_bytes_max)");
  }
  TALLY_TRY(impl.resolve(event));
  impl.record(event, chain_checksum);
  return Status();
}

// ---------------------------------------------------------------- flush

Status HistoryStore::Impl::put_pairs(const Txn& txn, const std::atomic<bool>* cancel, int* rc) {
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, pairs));
  Cursor hashes_cursor;
  TALLY_TRY(hashes_cursor.open(txn, hashes));
  for (const PendingPair& pair : pending_pairs) {
    TALLY_TRY(cancelled(cancel));
    const std::string_view pair_key =
        std::string_view(pending_keys).substr(pair.key_offset, pair.key_bytes);
    MDB_val key = val_of(pair_key);
    std::array<std::uint8_t, history::kPairValueBytes> record{};
    put_le(record.data(), pair.id, history::kPairIdBytes);
    put_le(record.data() + history::kPairIdBytes,
           check_of(key, record.data(), history::kPairIdBytes), history::kCheckBytes);
    MDB_val value = val_of(record);
    TALLY_TRY(put(cursor.get(), &key, &value, MDB_NOOVERWRITE, "pairs", rc));
    HashKey hash = hash_key(pair_key, pair.id);
    std::array<std::uint8_t, history::kHashValueBytes> check{};
    put_le(check.data(), check_of(hash.data(), hash.size()), kCheckBytes);
    MDB_val hash_val = val_of(hash);
    MDB_val check_val = val_of(check);
    TALLY_TRY(put(hashes_cursor.get(), &hash_val, &check_val, MDB_NOOVERWRITE, "hashes", rc));
  }
  return Status();
}

Status HistoryStore::Impl::put_entries(const Txn& txn, const std::atomic<bool>* cancel,
                                       int* rc) {
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, entries));
  EntryBytes bytes;
  for (const PendingEntry& pending : pending_entries) {
    TALLY_TRY(cancelled(cancel));
    EntryRecord entry;
    static_cast<EntryFields&>(entry) = pending;
    entry.epoch = flushed.epoch;
    entry.key = std::string_view(pending_keys).substr(pending.key_offset, pending.key_bytes);
    encode_entry(entry, &bytes);
    MDB_val key = bytes.key();
    MDB_val value = bytes.value();
    // Sorted, a new pair's entries come after every key there is, and so do
    // all of them in an epoch that has none yet.
    const bool last = pending.pair_id > flushed.pair_count || flushed.epoch_entries == 0;
    const unsigned flags = last ? MDB_APPEND : MDB_NOOVERWRITE;
    TALLY_TRY(put(cursor.get(), &key, &value, flags, "entries", rc));
  }
  return Status();
}

Status HistoryStore::Impl::put_times(const Txn& txn, int* rc) {
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, times));
  for (std::size_t index = 0; index < pending_times.size(); index++) {
    const PendingTime& time = pending_times[index];
    TimeRecord record{time.time_ns, time.first, time.last};
    TimeKey key_bytes = time_key(time.time_ns);
    MDB_val key = val_of(key_bytes);
    MDB_val value{};
    // Timestamps never go back: each is past every key but the flushed
    // last one, which the first may repeat (and then overwrites, keeping
    // the stored first seq).
    const bool repeats = index == 0 && flushed.at.seq != 0 && time.time_ns == flushed.at.time_ns;
    if (repeats) {
      const int found = mdb_cursor_get(cursor.get(), &key, &value, MDB_SET_KEY);
      Result<std::optional<TimeRecord>> stored = time_found(found, key, value);
      if (!stored) return stored.status();
      if (!stored->has_value() || (*stored)->last + 1 != record.first) {
        return corrupt("the time record of the indexed position does not verify");
      }
      record.first = (*stored)->first;
    }
    std::array<std::uint8_t, kTimeValueBytes> value_bytes = encode_time(key_bytes, record);
    key = val_of(key_bytes);
    value = val_of(value_bytes);
    TALLY_TRY(put(cursor.get(), &key, &value, repeats ? 0 : MDB_APPEND, "times", rc));
  }
  return Status();
}

// Ends the position's epoch and begins the next, at the seq after the
// position: its openings are the pairs' balances then, each the last entry
// of the pair in the old epoch or else its opening there, merged in pair
// order (both are keyed by pair within an epoch) and appended in order.
Status HistoryStore::Impl::begin_epoch(const Txn& txn, Position* position, int* rc) {
  const std::uint64_t old_epoch = position->epoch;
  const std::uint64_t new_epoch = position->at.seq + 1;
  BalanceCursors in;
  TALLY_TRY(open_balance_cursors(txn, &in));
  Cursor out;
  TALLY_TRY(out.open(txn, openings));
  OpeningKey opening_first = opening_key(old_epoch, 0);
  MDB_val opening = val_of(opening_first);
  MDB_val opening_value{};
  int opening_rc = mdb_cursor_get(in.openings.get(), &opening, &opening_value, MDB_SET_RANGE);
  EntryKey entry_first = entry_key(old_epoch, 0, 0);
  MDB_val entry = val_of(entry_first);
  MDB_val entry_value{};
  int entry_rc = mdb_cursor_get(in.entries.get(), &entry, &entry_value, MDB_SET_RANGE);
  // The pair of a cursor's record, UINT64_MAX past the old epoch.
  const auto pair_of = [old_epoch](int cursor_rc, const MDB_val& key) {
    if (cursor_rc != 0 || key.mv_size < kOpeningKeyBytes ||
        get_be(bytes_of(key), 8) != old_epoch) {
      return UINT64_MAX;
    }
    return get_be(bytes_of(key) + 8, 8);
  };
  std::uint64_t count = 0;
  // Each pass writes (or skips, at zero) the opening of one pair.
  for (;;) {
    if (opening_rc != 0 && opening_rc != MDB_NOTFOUND) {
      return lmdb_error("mdb_cursor_get (openings)", opening_rc);
    }
    if (entry_rc != 0 && entry_rc != MDB_NOTFOUND) {
      return lmdb_error("mdb_cursor_get (entries)", entry_rc);
    }
    const std::uint64_t pair_id =
        std::min(pair_of(opening_rc, opening), pair_of(entry_rc, entry));
    if (pair_id == UINT64_MAX) break;
    proj::Balance balance;
    if (pair_of(opening_rc, opening) == pair_id) {
      Result<proj::Balance> decoded = decode_opening(opening, opening_value);
      if (!decoded) return decoded.status();
      balance = *decoded;
      opening_rc = mdb_cursor_get(in.openings.get(), &opening, &opening_value, MDB_NEXT);
    }
    // Every entry of the pair in the old epoch; the last one's balance counts.
    while (pair_of(entry_rc, entry) == pair_id) {
      EntryRecord record;
      TALLY_TRY(decode_entry(entry, entry_value, &record));
      balance = record.after;
      entry_rc = mdb_cursor_get(in.entries.get(), &entry, &entry_value, MDB_NEXT);
    }
    if (balance == proj::Balance{}) continue;
    OpeningKey key_bytes = opening_key(new_epoch, pair_id);
    std::array<std::uint8_t, kOpeningValueBytes> value_bytes = encode_opening(key_bytes, balance);
    MDB_val key = val_of(key_bytes);
    MDB_val value = val_of(value_bytes);
    TALLY_TRY(put(out.get(), &key, &value, MDB_APPEND, "openings", rc));
    count++;
  }
  TALLY_TRY(put_epoch(txn, epochs, EpochRecord{new_epoch, count}, MDB_APPEND, rc));
  position->epoch = new_epoch;
  position->epoch_entries = 0;
  position->epoch_openings = count;
  return Status();
}

Status HistoryStore::Impl::put_position(const Txn& txn, const Position& position, int* rc) {
  MDB_val key = position_key();
  std::array<std::uint8_t, kPositionBytes> record = encode_position(position);
  MDB_val value = val_of(record);
  *rc = mdb_put(txn.get(), meta, &key, &value, 0);
  if (*rc != 0) return lmdb_error("mdb_put (position)", *rc);
  return Status();
}

Status HistoryStore::Impl::write_pending(const std::atomic<bool>* cancel, int* rc) {
  *rc = 0;
  Txn txn;
  TALLY_TRY(txn.begin(*env, 0, rc));
  TALLY_TRY(check_sole_writer(txn));
  TALLY_TRY(put_pairs(txn, cancel, rc));
  TALLY_TRY(put_entries(txn, cancel, rc));
  TALLY_TRY(put_times(txn, rc));
  written = appended;
  if (written.epoch_entries >= std::max(options.epoch_entries_min, written.epoch_openings)) {
    TALLY_TRY(begin_epoch(txn, &written, rc));
  }
  TALLY_TRY(put_position(txn, written, rc));
  TALLY_TRY(cancelled(cancel));
  *rc = txn.commit();
  if (*rc != 0) return lmdb_error("mdb_txn_commit (flush)", *rc);
  return Status();
}

void HistoryStore::Impl::drop_pending() {
  pending_entries.clear();
  pending_pairs.clear();
  pending_times.clear();
  pending_keys.clear();
}

Status HistoryStore::flush(const std::atomic<bool>* cancel) {
  Impl& impl = *impl_;
  TALLY_TRY(impl.check_writable());
  if (impl.appended == impl.flushed) return Status();
  // Key order: LMDB inserts in order, and new pairs' entries go last. A
  // pair's entries were appended in seq order already.
  std::sort(impl.pending_entries.begin(), impl.pending_entries.end(),
            [](const PendingEntry& a, const PendingEntry& b) {
              return a.pair_id != b.pair_id ? a.pair_id < b.pair_id : a.seq < b.seq;
            });
  const std::string_view keys = impl.pending_keys;
  std::sort(impl.pending_pairs.begin(), impl.pending_pairs.end(),
            [keys](const PendingPair& a, const PendingPair& b) {
              return keys.substr(a.key_offset, a.key_bytes) <
                     keys.substr(b.key_offset, b.key_bytes);
            });
  TALLY_TRY(impl.env->write_growing([&](int* rc) { return impl.write_pending(cancel, rc); }));
  impl.flushed = impl.written;
  impl.appended = impl.written;
  impl.drop_pending();
  // Every slot is flushed now, so any may go.
  if (impl.cache.size() > impl.options.pair_cache_max) impl.cache.clear();
  return Status();
}

Status HistoryStore::Impl::clear_once(int* rc) {
  *rc = 0;
  Txn txn;
  TALLY_TRY(txn.begin(*env, 0, rc));
  for (const MDB_dbi dbi : {pairs, entries, times, epochs, openings, hashes}) {
    *rc = mdb_drop(txn.get(), dbi, 0);
    if (*rc != 0) return lmdb_error("mdb_drop", *rc);
  }
  TALLY_TRY(put_position(txn, Position{}, rc));
  TALLY_TRY(put_epoch(txn, epochs, EpochRecord{1, 0}, MDB_APPEND, rc));
  *rc = txn.commit();
  if (*rc != 0) return lmdb_error("mdb_txn_commit (clear)", *rc);
  return Status();
}

Status HistoryStore::clear() {
  Impl& impl = *impl_;
  TALLY_TRY(impl.check_writable());
  TALLY_TRY(impl.env->write_growing([&](int* rc) { return impl.clear_once(rc); }));
  impl.flushed = Position{};
  impl.appended = Position{};
  impl.drop_pending();
  impl.cache.clear();
  return Status();
}

// ---------------------------------------------------------------- readers

Status HistoryStore::Impl::begin_read(ReadTxn* txn, Position* position) const {
  TALLY_TRY(txn->begin(*env));
  Result<Position> read = read_position(txn->txn(), meta);
  if (!read) return read.status();
  *position = *read;
  return Status();
}

Result<std::uint64_t> HistoryStore::Impl::pair_id_of(const MDB_val& key, const MDB_val& value,
                                                     std::uint64_t pair_count) const {
  if (value.mv_size != history::kPairValueBytes) return corrupt("pair record of the wrong size");
  const std::uint8_t* record = bytes_of(value);
  if (get_le(record + history::kPairIdBytes, history::kCheckBytes) !=
      check_of(key, record, history::kPairIdBytes)) {
    return corrupt("a pair's record does not verify (its name or id is damaged)");
  }
  const std::uint64_t id = get_le(record, history::kPairIdBytes);
  if (id == 0 || id > pair_count) {
    return corrupt("pair id " + std::to_string(id) + " outside 1.." + std::to_string(pair_count));
  }
  return id;
}

// The pair's id, 0 when the index has no such pair: no record by its name,
// nor by its hashes.
Result<std::uint64_t> HistoryStore::Impl::find_pair(const Txn& txn, std::string_view key,
                                                    std::uint64_t pair_count) const {
  MDB_val key_val = val_of(key);
  MDB_val value{};
  const int rc = mdb_get(txn.get(), pairs, &key_val, &value);
  if (rc == MDB_NOTFOUND) {
    const HashKey hash = hash_key(key, 0);
    std::uint64_t count = 0;
    std::uint64_t id = 0;
    TALLY_TRY(count_hashes(txn, std::span(hash).first(2 * kHashBytes), &count, &id));
    if (count == 0) return std::uint64_t{0};
    return corrupt("pair " + std::to_string(id) +
                   " has the hashes of the name read but no record by that name (its name "
                   "is damaged)");
  }
  if (rc != 0) return lmdb_error("mdb_get (pairs)", rc);
  return pair_id_of(key_val, value, pair_count);
}

Status HistoryStore::Impl::count_hashes(const Txn& txn, std::span<const std::uint8_t> prefix,
                                        std::uint64_t* count, std::uint64_t* first_id) const {
  *count = 0;
  *first_id = 0;
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, hashes));
  HashKey start{};
  std::memcpy(start.data(), prefix.data(), prefix.size());
  MDB_val key = val_of(start);
  MDB_val value{};
  int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_SET_RANGE);
  // Each pass counts one record; the database bounds it.
  for (; rc == 0; rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    if (key.mv_size != kHashKeyBytes ||
        std::memcmp(key.mv_data, prefix.data(), prefix.size()) != 0) {
      break;
    }
    if (value.mv_size != history::kHashValueBytes ||
        get_le(bytes_of(value), kCheckBytes) != check_of(bytes_of(key), kHashKeyBytes)) {
      return corrupt("a pair's hashes record does not verify");
    }
    if (*count == 0) *first_id = get_be(bytes_of(key) + 2 * kHashBytes, history::kPairIdBytes);
    ++*count;
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (hashes)", rc);
  return Status();
}

Status HistoryStore::probe() const { return position().status(); }

Status HistoryStore::check_pages(const std::atomic<bool>* cancelled) const {
  return impl_->env->check_trees(history::kDbNames, cancelled);
}

Status HistoryStore::copy_to(const std::string& dir, const CopyProgress& keep_going) const {
  return impl_->env->copy_to(dir, keep_going);
}

Result<HistoryPosition> HistoryStore::position() const {
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  return position.at;
}

Result<std::uint64_t> HistoryStore::seq_at_time(std::int64_t time_ns,
                                                std::uint64_t log_last_seq) const {
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  // Decided in the transaction that answers: a caller's earlier look at
  // the position may be of another index (one rebuilt since).
  if (position.at.time_ns <= time_ns && position.at.seq < log_last_seq) {
    return Status(ErrorCode::not_found, "history: the index ends at seq " +
                                            std::to_string(position.at.seq) +
                                            ", before the time asked");
  }
  Cursor cursor;
  TALLY_TRY(cursor.open(txn.txn(), impl_->times));
  TimeKey target = time_key(time_ns);
  MDB_val key = val_of(target);
  MDB_val value{};
  // The answer is the record at T, or else the one before it; the record
  // after it shows by its link that none was lost between them.
  int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_SET_RANGE);
  const bool exact = rc == 0 && key.mv_size == kTimeKeyBytes &&
                     std::memcmp(key.mv_data, target.data(), kTimeKeyBytes) == 0;
  Result<std::optional<TimeRecord>> found = time_found(rc, key, value);
  if (!found) return found.status();
  std::optional<TimeRecord> at;
  std::optional<TimeRecord> after;
  if (exact) {
    at = *found;
    rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT);
  } else {
    after = *found;
    rc = mdb_cursor_get(cursor.get(), &key, &value, after ? MDB_PREV : MDB_LAST);
  }
  found = time_found(rc, key, value);
  if (!found) return found.status();
  (exact ? after : at) = *found;
  TALLY_TRY(check_time_link(at, after, position.at.seq));
  return at ? at->last : std::uint64_t{0};
}

Result<proj::Balance> HistoryStore::balance_at(std::string_view subject, std::string_view item,
                                               std::uint64_t seq) const {
  TALLY_TRY(check_names(subject, item));
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  TALLY_TRY(check_seq(seq, position));
  std::string key;
  make_pair_key(subject, item, &key);
  Result<std::uint64_t> id = impl_->find_pair(txn.txn(), key, position.pair_count);
  if (!id) return id.status();
  if (*id == 0 || seq == 0) return proj::Balance{};
  Cursor epochs_cursor;
  TALLY_TRY(epochs_cursor.open(txn.txn(), impl_->epochs));
  Result<std::uint64_t> epoch = seek_epoch(epochs_cursor.get(), seq);
  if (!epoch) return epoch.status();
  // The epoch after, whose openings the chain check reads.
  Result<std::uint64_t> following = next_epoch(epochs_cursor.get());
  if (!following) return following.status();
  BalanceCursors cursors;
  TALLY_TRY(impl_->open_balance_cursors(txn.txn(), &cursors));
  proj::Balance balance;
  TALLY_TRY(balance_in_epoch(cursors, *epoch, *following, *id, seq, &balance));
  return balance;
}

// Walks the pairs whose key starts with `prefix` (all of them for an empty
// one), in key order, and visits each non-zero balance after seq.
Status HistoryStore::Impl::visit_pairs(
    const Txn& txn, const Position& position, std::string_view prefix, std::uint64_t seq,
    const std::function<void(std::string_view, std::string_view, proj::Balance)>& visit) const {
  Cursor pairs_cursor;
  TALLY_TRY(pairs_cursor.open(txn, pairs));
  BalanceCursors cursors;
  TALLY_TRY(open_balance_cursors(txn, &cursors));
  std::uint64_t epoch = 0;
  std::uint64_t following_epoch = 0;  // the one after, whose openings the chain check reads
  if (seq != 0) {
    Cursor epochs_cursor;
    TALLY_TRY(epochs_cursor.open(txn, epochs));
    Result<std::uint64_t> found = seek_epoch(epochs_cursor.get(), seq);
    if (!found) return found.status();
    epoch = *found;
    Result<std::uint64_t> following = next_epoch(epochs_cursor.get());
    if (!following) return following.status();
    following_epoch = *following;
  }
  MDB_val key = val_of(prefix);
  MDB_val value{};
  int rc = prefix.empty() ? mdb_cursor_get(pairs_cursor.get(), &key, &value, MDB_FIRST)
                          : mdb_cursor_get(pairs_cursor.get(), &key, &value, MDB_SET_RANGE);
  std::uint64_t walked = 0;
  // Each pass visits one pair and steps to the next key.
  for (; rc == 0; rc = mdb_cursor_get(pairs_cursor.get(), &key, &value, MDB_NEXT)) {
    const std::string_view pair_key = view_of(key);
    if (!pair_key.starts_with(prefix)) break;
    walked++;
    std::string_view subject;
    std::string_view item;
    if (!split_pair_key(pair_key, &subject, &item)) return corrupt("malformed pair key");
    Result<std::uint64_t> id = pair_id_of(key, value, position.pair_count);
    if (!id) return id.status();
    proj::Balance balance;
    if (seq != 0) {
      TALLY_TRY(balance_in_epoch(cursors, epoch, following_epoch, *id, seq, &balance));
    }
    if (balance != proj::Balance{}) visit(subject, item, balance);
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (pairs)", rc);
  // A name key that damage moved out of the walk leaves a pair behind: as
  // many pairs as the subject has hashes (the position's count for all).
  std::uint64_t expected = position.pair_count;
  if (!prefix.empty()) {
    const HashKey hash = hash_key(prefix, 0);  // the subject's hash, from "subject\0"
    std::uint64_t first_id = 0;
    TALLY_TRY(count_hashes(txn, std::span(hash).first(kHashBytes), &expected, &first_id));
  }
  if (walked != expected) {
    return corrupt(std::to_string(walked) + " pairs found by name where their hashes count " +
                   std::to_string(expected) + " (a name is damaged)");
  }
  return Status();
}

Status HistoryStore::list_at(
    std::string_view subject, std::uint64_t seq,
    const std::function<void(std::string_view item, proj::Balance)>& visit) const {
  TALLY_TRY(check_name("subject", subject));
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  TALLY_TRY(check_seq(seq, position));
  std::string prefix(subject);
  prefix.push_back('\0');
  return impl_->visit_pairs(
      txn.txn(), position, prefix, seq,
      [&](std::string_view, std::string_view item, proj::Balance balance) {
        visit(item, balance);
      });
}

Status HistoryStore::for_each_at(
    std::uint64_t seq,
    const std::function<void(std::string_view subject, std::string_view item, proj::Balance)>&
        visit) const {
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  TALLY_TRY(check_seq(seq, position));
  return impl_->visit_pairs(txn.txn(), position, std::string_view(), seq, visit);
}

namespace {

using EntryVisit = std::function<bool(const HistoryEntry&)>;

// Visits the pair's entries in one epoch from from_seq, in seq order, up
// to to_seq or until visit returns false (then *done), checking that each
// continues *before, the pair's balance before it, which it then becomes.
// The entry past to_seq, read to find the end, is checked too.
Status visit_epoch_entries(MDB_cursor* cursor, std::uint64_t epoch, std::uint64_t pair_id,
                           std::uint64_t from_seq, std::uint64_t to_seq, const EntryVisit& visit,
                           proj::Balance* before, bool* done) {
  EntryKey first = entry_key(epoch, pair_id, from_seq);
  MDB_val key = val_of(first);
  MDB_val value{};
  int rc = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE);
  // Each pass visits one entry; the pair's entries in the epoch bound it.
  for (; rc == 0; rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
    EntryRecord record;
    // The entry that ends the pair's is checked too (take_if_pair).
    TALLY_TRY(decode_entry(key, value, &record));
    if (std::memcmp(key.mv_data, first.data(), kEntryKeyBytes - kSeqBytes) != 0) break;
    if (!continues(record, *before)) return chain_broken(pair_id, record.seq);
    *before = record.after;
    *done = record.seq > to_seq;
    if (*done) return Status();
    HistoryEntry entry;
    entry.seq = record.seq;
    entry.time_ns = record.time_ns;
    entry.key = record.key;
    entry.op = op_name_of(record.op_code);
    entry.delta_available = record.delta_available;
    entry.delta_held = record.delta_held;
    entry.after = record.after;
    *done = !visit(entry);
    if (*done) return Status();
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (entries)", rc);
  return Status();
}

}  // namespace

// The walk checks the chain as it goes: it starts from the pair's balance
// before from_seq (one seek), each entry must continue the one before, and
// the opening balance of each epoch it passes into (or stops before) must
// be the balance the epoch before left.
Status HistoryStore::entries(std::string_view subject, std::string_view item,
                             std::uint64_t from_seq, std::uint64_t to_seq,
                             const EntryVisit& visit, HistoryPosition* found) const {
  TALLY_TRY(check_names(subject, item));
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  std::string key_bytes;
  make_pair_key(subject, item, &key_bytes);
  Result<std::uint64_t> id = impl_->find_pair(txn.txn(), key_bytes, position.pair_count);
  if (!id) return id.status();
  if (found != nullptr) *found = position.at;
  to_seq = std::min(to_seq, position.at.seq);
  from_seq = std::max<std::uint64_t>(from_seq, 1);
  if (*id == 0 || from_seq > to_seq) return Status();
  Cursor epochs_cursor;
  TALLY_TRY(epochs_cursor.open(txn.txn(), impl_->epochs));
  Result<std::uint64_t> epoch = seek_epoch(epochs_cursor.get(), from_seq);
  if (!epoch) return epoch.status();
  BalanceCursors cursors;
  TALLY_TRY(impl_->open_balance_cursors(txn.txn(), &cursors));
  proj::Balance before;
  {
    std::optional<EntryRecord> last;
    std::optional<EntryRecord> next;  // checked by the walk
    TALLY_TRY(entries_around(cursors.entries.get(), *epoch, *id, from_seq - 1, &last, &next));
    if (!last.has_value() && !next.has_value() && *epoch == 1 && position.epoch == 1) {
      return no_entry_in_only_epoch(*id);
    }
    if (last.has_value()) {
      before = last->after;
    } else {
      TALLY_TRY(opening_of(cursors.openings.get(), *epoch, *id, &before));
    }
  }
  // Each pass visits the pair's entries in one epoch, then checks the next
  // epoch's opening; the epochs bound it.
  for (std::uint64_t at = *epoch; at != 0;) {
    bool done = false;
    TALLY_TRY(visit_epoch_entries(cursors.entries.get(), at, *id, from_seq, to_seq, visit,
                                  &before, &done));
    if (done) return Status();
    Result<std::uint64_t> following = next_epoch(epochs_cursor.get());
    if (!following) return following.status();
    if (*following == 0) return Status();
    proj::Balance carried;
    TALLY_TRY(opening_of(cursors.openings.get(), *following, *id, &carried));
    if (carried != before) return carry_broken(*id, *following);
    if (*following > to_seq) return Status();
    at = *following;
  }
  return Status();
}

// ---------------------------------------------------------------- check_chains

namespace {

// A cursor over one epoch's records of "entries" or "openings" (both keyed
// epoch, pair id, ...), in key order. Not started, it is past the end.
class EpochWalk {
 public:
  EpochWalk(MDB_cursor* cursor, std::size_t key_bytes, const char* what)
      : cursor_(cursor), key_bytes_(key_bytes), what_(what) {}

  Status start(std::uint64_t epoch) {
    epoch_ = epoch;
    OpeningKey first = opening_key(epoch, 0);  // before every key of the epoch
    key_ = val_of(first);
    rc_ = mdb_cursor_get(cursor_, &key_, &value_, MDB_SET_RANGE);
    return settle();
  }
  Status step() {
    rc_ = mdb_cursor_get(cursor_, &key_, &value_, MDB_NEXT);
    return settle();
  }
  // The pair of the record it is on; UINT64_MAX past the epoch.
  std::uint64_t pair() const {
    if (rc_ != 0 || get_be(bytes_of(key_), 8) != epoch_) return UINT64_MAX;
    return get_be(bytes_of(key_) + 8, 8);
  }
  const MDB_val& key() const { return key_; }
  const MDB_val& value() const { return value_; }

 private:
  Status settle() {
    if (rc_ == MDB_NOTFOUND) return Status();
    if (rc_ != 0) return lmdb_error(std::string("mdb_cursor_get (") + what_ + ")", rc_);
    if (key_.mv_size != key_bytes_) return corrupt(std::string(what_) + " key of the wrong size");
    return Status();
  }

  MDB_cursor* cursor_;
  std::size_t key_bytes_;
  const char* what_;
  std::uint64_t epoch_ = 0;
  int rc_ = MDB_NOTFOUND;
  MDB_val key_{};
  MDB_val value_{};
};

// What check_epoch_chains counted in one epoch.
struct EpochTally {
  std::uint64_t entries = 0;
  std::uint64_t openings = 0;
};

// The three walks that check one epoch: its openings, its entries and the
// next epoch's openings, all in pair order.
struct ChainWalks {
  EpochWalk openings;
  EpochWalk entries;
  EpochWalk next_openings;
};

// Checks one pair in one epoch: each of its entries (seqs increasing, from
// the epoch to seq_max) continues the one before, the first its opening
// balance (or zero); the next epoch's opening (when `following` is not 0)
// is the last balance.
Status check_pair_chain(ChainWalks* walks, std::uint64_t pair_id, std::uint64_t seq_max,
                        std::uint64_t following, EpochTally* tally) {
  proj::Balance balance;
  if (walks->openings.pair() == pair_id) {
    Result<proj::Balance> opening = decode_opening(walks->openings.key(), walks->openings.value());
    if (!opening) return opening.status();
    balance = *opening;
    tally->openings++;
    TALLY_TRY(walks->openings.step());
  }
  std::uint64_t seq_before = 0;
  // Each pass checks one entry of the pair; its entries in the epoch bound it.
  while (walks->entries.pair() == pair_id) {
    EntryRecord record;
    TALLY_TRY(decode_entry(walks->entries.key(), walks->entries.value(), &record));
    if (record.seq <= seq_before || record.seq > seq_max) {
      return entry_corrupt(pair_id, record.seq, "out of order or past its epoch");
    }
    if (!continues(record, balance)) return chain_broken(pair_id, record.seq);
    balance = record.after;
    seq_before = record.seq;
    tally->entries++;
    TALLY_TRY(walks->entries.step());
  }
  if (following == 0) return Status();
  proj::Balance carried;
  if (walks->next_openings.pair() == pair_id) {
    const EpochWalk& next = walks->next_openings;
    Result<proj::Balance> opening = decode_opening(next.key(), next.value());
    if (!opening) return opening.status();
    carried = *opening;
    TALLY_TRY(walks->next_openings.step());
  }
  if (carried != balance) return carry_broken(pair_id, following);
  return Status();
}

// Checks every pair of `epoch` (the epoch after it: `following`, 0 for the
// newest), merging the three walks by pair id, as begin_epoch does.
Status check_epoch_chains(ChainWalks* walks, const Position& position, std::uint64_t epoch,
                          std::uint64_t following, EpochTally* tally) {
  TALLY_TRY(walks->openings.start(epoch));
  TALLY_TRY(walks->entries.start(epoch));
  if (following != 0) TALLY_TRY(walks->next_openings.start(following));
  const std::uint64_t seq_max = following != 0 ? following - 1 : position.at.seq;
  std::uint64_t pair_before = 0;
  // Each pass checks one pair; pair ids 1..pair_count bound it.
  for (;;) {
    const std::uint64_t pair_id = std::min(
        {walks->openings.pair(), walks->entries.pair(),
         following != 0 ? walks->next_openings.pair() : UINT64_MAX});
    if (pair_id == UINT64_MAX) return Status();
    if (pair_id <= pair_before || pair_id > position.pair_count) {
      return corrupt("epoch " + std::to_string(epoch) + " names pair " +
                     std::to_string(pair_id) + " out of order or outside 1.." +
                     std::to_string(position.pair_count));
    }
    pair_before = pair_id;
    TALLY_TRY(check_pair_chain(walks, pair_id, seq_max, following, tally));
  }
}

}  // namespace

Status HistoryStore::Impl::check_pair_count(const Txn& txn, const Position& position) const {
  Result<std::uint64_t> count = records_in(txn, pairs, "pairs");
  if (!count) return count.status();
  if (*count != position.pair_count) {
    return corrupt(std::to_string(*count) + " pairs where the position counts " +
                   std::to_string(position.pair_count));
  }
  return Status();
}

// Every pair key is well formed and names an id in 1..pair_count, each id
// once: so every pair id an entry names has one name, and no two pairs
// read the same entries.
Status HistoryStore::Impl::check_pair_ids(const Txn& txn, const Position& position) const {
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, pairs));
  // One bit per pair id: an allocation the size of the index's pair count.
  std::vector<bool> named(position.pair_count + 1, false);
  std::uint64_t unhashed = 0;  // the first pair without its hashes record
  MDB_val key{};
  MDB_val value{};
  int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_FIRST);
  // Each pass checks one pair; the pairs database bounds it.
  for (; rc == 0; rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    std::string_view subject;
    std::string_view item;
    if (!split_pair_key(view_of(key), &subject, &item)) return corrupt("malformed pair key");
    Result<std::uint64_t> id = pair_id_of(key, value, position.pair_count);
    if (!id) return id.status();
    if (named[*id]) return corrupt("two pairs have id " + std::to_string(*id));
    named[*id] = true;
    const HashKey hash = hash_key(view_of(key), *id);
    std::uint64_t count = 0;
    std::uint64_t first_id = 0;
    TALLY_TRY(count_hashes(txn, hash, &count, &first_id));
    // Reported after the walk: a pair given another's id has no hashes
    // either, and the id named twice says more.
    if (count != 1 && unhashed == 0) unhashed = *id;
  }
  if (rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (pairs)", rc);
  if (unhashed != 0) return corrupt("pair " + std::to_string(unhashed) + " has no hashes record");
  Result<std::uint64_t> hashed = records_in(txn, hashes, "hashes");
  if (!hashed) return hashed.status();
  if (*hashed != position.pair_count) {
    return corrupt(std::to_string(*hashed) + " pair hashes where the position counts " +
                   std::to_string(position.pair_count) + " pairs");
  }
  return check_pair_count(txn, position);
}

// Every time record verifies, each follows on from the one before, and
// the last is the position's.
Status HistoryStore::Impl::check_times(const Txn& txn, const Position& position) const {
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, times));
  std::optional<TimeRecord> before;
  MDB_val key{};
  MDB_val value{};
  // Each pass checks one record; the times database bounds it.
  for (int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_FIRST);;
       rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    Result<std::optional<TimeRecord>> found = time_found(rc, key, value);
    if (!found) return found.status();
    TALLY_TRY(check_time_link(before, *found, position.at.seq));
    if (!found->has_value()) break;
    before = *found;
  }
  if (before && before->time_ns != position.at.time_ns) {
    return corrupt("the last time record is not the indexed position's time");
  }
  return Status();
}

// Walks the epochs in order and checks each (check_epoch_chains); then
// that they hold every entry and opening there is, and that the newest
// agrees with the position.
Status HistoryStore::Impl::check_epochs(const Txn& txn, const Position& position) const {
  Cursor epochs_cursor;
  Cursor entries_cursor;
  Cursor openings_cursor;
  Cursor next_openings_cursor;
  TALLY_TRY(epochs_cursor.open(txn, epochs));
  TALLY_TRY(entries_cursor.open(txn, entries));
  TALLY_TRY(openings_cursor.open(txn, openings));
  TALLY_TRY(next_openings_cursor.open(txn, openings));
  ChainWalks walks{EpochWalk(openings_cursor.get(), kOpeningKeyBytes, "openings"),
                   EpochWalk(entries_cursor.get(), kEntryKeyBytes, "entries"),
                   EpochWalk(next_openings_cursor.get(), kOpeningKeyBytes, "openings")};
  // The epoch record the cursor moves to; epoch 0 past the last.
  const auto epoch_at = [&](MDB_cursor_op op) -> Result<EpochRecord> {
    MDB_val key{};
    MDB_val value{};
    const int rc = mdb_cursor_get(epochs_cursor.get(), &key, &value, op);
    if (rc == MDB_NOTFOUND) return EpochRecord{};
    if (rc != 0) return lmdb_error("mdb_cursor_get (epochs)", rc);
    return decode_epoch(key, value);
  };
  Result<EpochRecord> epoch = epoch_at(MDB_FIRST);
  if (!epoch) return epoch.status();
  if (epoch->epoch != 1) return corrupt("the first epoch is " + std::to_string(epoch->epoch));
  EpochTally total;
  // Each pass checks one epoch; the epochs database bounds it.
  for (;;) {
    Result<EpochRecord> following = epoch_at(MDB_NEXT);
    if (!following) return following.status();
    const std::uint64_t next = following->epoch;
    if (next != 0 && (next <= epoch->epoch || next > position.epoch)) {
      return corrupt("epoch " + std::to_string(next) + " after epoch " +
                     std::to_string(epoch->epoch) + " (the newest is " +
                     std::to_string(position.epoch) + ")");
    }
    EpochTally tally;
    TALLY_TRY(check_epoch_chains(&walks, position, epoch->epoch, next, &tally));
    if (tally.openings != epoch->openings) {
      return corrupt("epoch " + std::to_string(epoch->epoch) + " has " +
                     std::to_string(tally.openings) + " opening balances where its record says " +
                     std::to_string(epoch->openings));
    }
    total.entries += tally.entries;
    total.openings += tally.openings;
    if (next == 0) {
      if (epoch->epoch != position.epoch || tally.entries != position.epoch_entries) {
        return corrupt("the newest epoch is " + std::to_string(epoch->epoch) + " with " +
                       std::to_string(tally.entries) + " entries where the position says " +
                       std::to_string(position.epoch) + " with " +
                       std::to_string(position.epoch_entries));
      }
      break;
    }
    epoch = following;
  }
  return check_counts(txn, total.entries, total.openings);
}

// Entries or openings outside every epoch (under a damaged key) are not
// walked: LMDB's counts of the records then exceed the walk's.
Status HistoryStore::Impl::check_counts(const Txn& txn, std::uint64_t entries_walked,
                                        std::uint64_t openings_walked) const {
  Result<std::uint64_t> entry_count = records_in(txn, entries, "entries");
  if (!entry_count) return entry_count.status();
  Result<std::uint64_t> opening_count = records_in(txn, openings, "openings");
  if (!opening_count) return opening_count.status();
  if (*entry_count != entries_walked || *opening_count != openings_walked) {
    return corrupt(std::to_string(*entry_count) + " entries and " +
                   std::to_string(*opening_count) + " opening balances, of which the epochs hold " +
                   std::to_string(entries_walked) + " and " + std::to_string(openings_walked));
  }
  return Status();
}

Status HistoryStore::check_chains() const {
  ReadTxn txn;
  Position position;
  TALLY_TRY(impl_->begin_read(&txn, &position));
  TALLY_TRY(impl_->check_pair_ids(txn.txn(), position));
  TALLY_TRY(impl_->check_times(txn.txn(), position));
  return impl_->check_epochs(txn.txn(), position);
}

}  // namespace tally::snap
