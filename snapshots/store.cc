// SnapshotStore: the LMDB side. Only snapshots/ includes lmdb.h
// (docs/architecture.md, "Layers"); the pieces it shares with the history projection are in lmdb_util.h.
#include "snapshots/store.h"

#include <lmdb.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>

#include "log/hash.h"  // with XXH3_state_t, which lives on the stack here
#include "snapshots/format.h"
#include "snapshots/lmdb_util.h"

namespace tally::snap {

namespace {

using lmdb::Cursor;
using lmdb::get_be;
using lmdb::get_le;
using lmdb::put_be;
using lmdb::put_le;
using lmdb::Txn;
using lmdb::val_of;

constexpr std::string_view kComponent = "snapshots";

Status lmdb_error(std::string_view what, int rc) { return lmdb::error(kComponent, what, rc); }

Status corrupt(const std::string& what) {
  std::string message = "snapshot ";
  message += what;
  return Status(ErrorCode::corrupt, std::move(message));
}

using MetaKey = std::array<std::uint8_t, kMetaKeyBytes>;
using ChunkKey = std::array<std::uint8_t, kChunkKeyBytes>;

MetaKey meta_key(std::uint64_t seq) { return lmdb::be_key<1>({seq}); }
ChunkKey chunk_key(std::uint64_t seq, std::uint32_t index) {
  ChunkKey key{};
  put_be(key.data(), seq, 8);
  put_be(key.data() + 8, index, 4);
  return key;
}

struct Meta {
  SnapshotInfo info;
  std::uint32_t state_format = 0;
  std::uint64_t payload_hash = 0;
};

std::array<std::uint8_t, kMetaBytes> encode_meta(const Meta& meta) {
  std::array<std::uint8_t, kMetaBytes> out{};
  std::uint8_t* at = out.data();
  const auto put = [&](std::uint64_t value, std::size_t width) {
    put_le(at, value, width);
    at += width;
  };
  put(kMetaMagic, 4);
  put(kMetaFormatVersion, 4);
  put(meta.info.seq, 8);
  put(static_cast<std::uint64_t>(meta.info.time_ns), 8);
  put(meta.info.chain_checksum, 8);
  put(meta.info.digest, 8);
  put(meta.state_format, 4);
  put(meta.info.chunk_count, 4);
  put(meta.info.size_bytes, 8);
  put(meta.payload_hash, 8);
  TALLY_ASSERT(static_cast<std::size_t>(at - out.data()) == kMetaCheckedBytes);
  put(XXH3_64bits(out.data(), kMetaCheckedBytes), 8);
  return out;
}

// Verifies before it trusts: size, hash, magic, version, then the key.
Result<Meta> decode_meta(const MDB_val& key, const MDB_val& value) {
  if (key.mv_size != kMetaKeyBytes) return corrupt("metadata key of the wrong size");
  const std::uint64_t key_seq = get_be(static_cast<const std::uint8_t*>(key.mv_data), 8);
  const std::string name = std::to_string(key_seq) + ": ";
  if (value.mv_size != kMetaBytes) return corrupt(name + "metadata of the wrong size");
  const auto* in = static_cast<const std::uint8_t*>(value.mv_data);
  if (get_le(in + kMetaCheckedBytes, 8) != XXH3_64bits(in, kMetaCheckedBytes)) {
    return corrupt(name + "metadata checksum mismatch");
  }
  const auto get = [&](std::size_t width) {
    const std::uint64_t value_read = get_le(in, width);
    in += width;
    return value_read;
  };
  if (get(4) != kMetaMagic) return corrupt(name + "bad metadata magic");
  const std::uint64_t version = get(4);
  if (version != kMetaFormatVersion) {
    // Another version's record, not a damaged one (invalid, as another
    // version's image is): pruning keeps it while it is newer.
    return Status(ErrorCode::invalid,
                  "snapshot " + name + "metadata format " + std::to_string(version) +
                      " is not known");
  }
  Meta meta;
  meta.info.seq = get(8);
  meta.info.time_ns = static_cast<std::int64_t>(get(8));
  meta.info.chain_checksum = get(8);
  meta.info.digest = get(8);
  meta.state_format = static_cast<std::uint32_t>(get(4));
  meta.info.chunk_count = static_cast<std::uint32_t>(get(4));
  meta.info.size_bytes = get(8);
  meta.payload_hash = get(8);
  if (meta.info.seq != key_seq) return corrupt(name + "metadata names another seq");
  return meta;
}

}  // namespace

struct SnapshotStore::Env {
  std::unique_ptr<lmdb::Environment> env;
  MDB_dbi meta = 0;
  MDB_dbi chunks = 0;
  SnapshotStoreOptions options;

  Status write_once(const proj::State& state, const Meta& meta_in, Meta* written, int* rc_out);
  // *rc_out: LMDB's code when that is what failed (MDB_MAP_FULL: deleting
  // copies pages before it frees any).
  Status delete_snapshot(const Txn& txn, std::uint64_t seq, int* rc_out);
  Status prune_once(std::size_t retain_count, std::uint64_t newest_seq, std::int64_t window_ns,
                    Later later, std::size_t* pruned, int* rc_out);
  // Whether a ledger with `window_ns` can load the snapshot, as far as its
  // metadata, its payload's checksum and its image's header tell (prune()
  // counts these).
  Result<bool> loadable(const Txn& txn, const Result<Meta>& meta, std::int64_t window_ns);
  // Snapshots whose payload this process wrote or hashed since it opened the
  // store, each with the payload checksum its metadata gave then (the same
  // seq deleted and written again by another process has another): so
  // each is hashed once, by prune(), newest_window() or a load, whichever
  // comes first.
  std::unordered_map<std::uint64_t, std::uint64_t> payload_checked;
  std::uint64_t payload_hashes = 0;  // by check_payload_once
  // The snapshot's chunks, in order, views into the map valid while `txn`
  // lives, once their total size matches the metadata.
  Result<std::vector<std::span<const std::byte>>> sized_chunks(const Txn& txn,
                                                              const Meta& meta) const;
  // corrupt unless the chunks hash to the metadata's payload checksum.
  static Status check_payload(std::span<const std::span<const std::byte>> chunks,
                              const Meta& meta);
  // check_payload, unless payload_checked says it passed; remembered when
  // it passes.
  Status check_payload_once(std::span<const std::span<const std::byte>> chunks, const Meta& meta);
  Result<std::unique_ptr<proj::State>> load_one(const Txn& txn, const Meta& meta,
                                                const proj::StateOptions& options,
                                                const std::atomic<bool>* cancel);
};

namespace {

// Writes the image into chunk keys of one write transaction, hashing as it
// goes. Gathers save()'s pieces into chunk_bytes values.
class ChunkSink final : public proj::StateSink {
 public:
  ChunkSink(MDB_txn* txn, MDB_dbi dbi, std::uint64_t seq, std::size_t chunk_bytes)
      : txn_(txn), dbi_(dbi), seq_(seq), chunk_bytes_(chunk_bytes) {
    XXH3_64bits_reset(&hash_);
    buffer_.reserve(chunk_bytes);
  }
  Status write(std::span<const std::byte> piece) override {
    XXH3_64bits_update(&hash_, piece.data(), piece.size());
    total_bytes_ += piece.size();
    // Each pass moves at least one byte into the buffer or flushes it.
    while (!piece.empty()) {
      const std::size_t part = std::min(piece.size(), chunk_bytes_ - buffer_.size());
      const auto part_end = piece.begin() + static_cast<std::ptrdiff_t>(part);
      buffer_.insert(buffer_.end(), piece.begin(), part_end);
      piece = piece.subspan(part);
      if (buffer_.size() == chunk_bytes_) TALLY_TRY(flush());
    }
    return Status();
  }
  Status flush() {
    if (buffer_.empty()) return Status();
    if (chunks_ == kChunksMax) return Status(ErrorCode::invalid, "snapshots: too many chunks");
    ChunkKey key = chunk_key(seq_, chunks_);
    MDB_val key_val = val_of(key);
    MDB_val data{buffer_.size(), buffer_.data()};
    rc_ = mdb_put(txn_, dbi_, &key_val, &data, 0);
    if (rc_ != 0) return lmdb_error("mdb_put (chunk)", rc_);
    chunks_++;
    buffer_.clear();
    return Status();
  }
  std::uint32_t chunks() const { return chunks_; }
  std::uint64_t total_bytes() const { return total_bytes_; }
  std::uint64_t hash() const { return XXH3_64bits_digest(&hash_); }
  int rc() const { return rc_; }

 private:
  MDB_txn* txn_;
  MDB_dbi dbi_;
  std::uint64_t seq_;
  std::size_t chunk_bytes_;
  std::vector<std::byte> buffer_;
  std::uint32_t chunks_ = 0;
  std::uint64_t total_bytes_ = 0;
  XXH3_state_t hash_;
  int rc_ = 0;
};

// Walks a snapshot's chunk keys in order through a read cursor. The values
// are views into the map: nothing is copied until the reader asks.
class ChunkWalker {
 public:
  ChunkWalker(MDB_cursor* cursor, const Meta& meta) : cursor_(cursor), meta_(meta) {}

  // The next chunk, or an empty view after the last (chunk_count of them).
  Result<std::span<const std::byte>> next() {
    if (index_ == meta_.info.chunk_count) return std::span<const std::byte>();
    ChunkKey key = chunk_key(meta_.info.seq, index_);
    MDB_val key_val = val_of(key);
    MDB_val data{};
    const int rc = mdb_cursor_get(cursor_, &key_val, &data, MDB_SET_KEY);
    if (rc == MDB_NOTFOUND) {
      return corrupt(std::to_string(meta_.info.seq) + ": chunk " + std::to_string(index_) +
                     " is missing");
    }
    if (rc != 0) return lmdb_error("mdb_cursor_get (chunk)", rc);
    if (data.mv_size == 0) {
      return corrupt(std::to_string(meta_.info.seq) + ": empty chunk " + std::to_string(index_));
    }
    index_++;
    return std::span<const std::byte>(static_cast<const std::byte*>(data.mv_data), data.mv_size);
  }

 private:
  MDB_cursor* cursor_;
  const Meta& meta_;
  std::uint32_t index_ = 0;
};

}  // namespace

// ---------------------------------------------------------------- open

SnapshotStore::SnapshotStore(std::unique_ptr<Env> env) : env_(std::move(env)) {}
SnapshotStore::~SnapshotStore() = default;

Result<std::unique_ptr<SnapshotStore>> SnapshotStore::open(const std::string& dir,
                                                           const SnapshotStoreOptions& options) {
  if (options.chunk_bytes < kChunkBytesMin || options.chunk_bytes > kChunkBytesMax) {
    return Status(ErrorCode::invalid, "snapshots: chunk_bytes out of range");
  }
  lmdb::EnvironmentOptions env_options;
  env_options.component = kComponent;
  env_options.db_names = kDbNames;
  // A few pages of tree over long overflow runs of chunks: cheap to walk.
  env_options.db_names_checked = kDbNames;
  env_options.map_size_bytes = options.map_size_bytes;
  env_options.map_size_bytes_max = options.map_size_bytes_max;
  env_options.flags = options.read_only ? MDB_RDONLY : 0;
  Result<std::unique_ptr<lmdb::Environment>> opened = lmdb::Environment::open(dir, env_options);
  if (!opened) return opened.status();
  auto env = std::make_unique<Env>();
  env->env = std::move(opened).value();
  env->options = options;
  Txn txn;
  TALLY_TRY(txn.begin_adopting(*env->env, options.read_only ? MDB_RDONLY : 0));
  const unsigned db_flags = options.read_only ? 0 : MDB_CREATE;
  for (const auto& [name, dbi] : {std::pair{kMetaDbName, &env->meta},
                                  std::pair{kChunksDbName, &env->chunks}}) {
    const int rc = mdb_dbi_open(txn.get(), name, db_flags, dbi);
    // Read-only, a store whose first write never committed.
    if (rc == MDB_NOTFOUND) return Status(ErrorCode::not_found, "snapshots: none in " + dir);
    if (rc != 0) return lmdb_error(std::string("mdb_dbi_open ") + name, rc);
  }
  const int rc = txn.commit();
  if (rc != 0) return lmdb_error("mdb_txn_commit (open)", rc);
  return std::unique_ptr<SnapshotStore>(new SnapshotStore(std::move(env)));
}

// ---------------------------------------------------------------- write

Status SnapshotStore::Env::delete_snapshot(const Txn& txn, std::uint64_t seq, int* rc_out) {
  payload_checked.erase(seq);  // hashed again if the transaction aborts
  MetaKey key = meta_key(seq);
  MDB_val key_val = val_of(key);
  int rc = mdb_del(txn.get(), meta, &key_val, nullptr);
  if (rc != 0 && rc != MDB_NOTFOUND) {
    *rc_out = rc;
    return lmdb_error("mdb_del (meta)", rc);
  }
  // The chunks are keyed (seq, index): delete from (seq, 0) while the seq
  // matches. Each pass deletes one key.
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, chunks));
  ChunkKey first = chunk_key(seq, 0);
  MDB_val chunk_val = val_of(first);
  MDB_val data{};
  rc = mdb_cursor_get(cursor.get(), &chunk_val, &data, MDB_SET_RANGE);
  while (rc == 0) {
    if (chunk_val.mv_size != kChunkKeyBytes ||
        get_be(static_cast<const std::uint8_t*>(chunk_val.mv_data), 8) != seq) {
      break;
    }
    rc = mdb_cursor_del(cursor.get(), 0);
    if (rc != 0) {
      *rc_out = rc;
      return lmdb_error("mdb_cursor_del (chunk)", rc);
    }
    // Seek again rather than trust the cursor's position after a delete.
    chunk_val = val_of(first);
    rc = mdb_cursor_get(cursor.get(), &chunk_val, &data, MDB_SET_RANGE);
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (chunks)", rc);
  return Status();
}

Status SnapshotStore::Env::write_once(const proj::State& state, const Meta& meta_in,
                                      Meta* written, int* rc_out) {
  *rc_out = 0;
  Txn txn;
  TALLY_TRY(txn.begin(*env, 0, rc_out));
  TALLY_TRY(delete_snapshot(txn, meta_in.info.seq, rc_out));
  ChunkSink sink(txn.get(), chunks, meta_in.info.seq, options.chunk_bytes);
  Status saved = state.save(sink);
  if (saved.ok()) saved = sink.flush();
  if (!saved.ok()) {
    *rc_out = sink.rc();
    return saved;
  }
  Meta meta = meta_in;
  meta.info.chunk_count = sink.chunks();
  meta.info.size_bytes = sink.total_bytes();
  meta.payload_hash = sink.hash();
  std::array<std::uint8_t, kMetaBytes> value = encode_meta(meta);
  MetaKey key = meta_key(meta.info.seq);
  MDB_val key_val = val_of(key);
  MDB_val value_val = val_of(value);
  int rc = mdb_put(txn.get(), this->meta, &key_val, &value_val, 0);
  if (rc != 0) {
    *rc_out = rc;
    return lmdb_error("mdb_put (meta)", rc);
  }
  rc = txn.commit();
  if (rc != 0) {
    *rc_out = rc;
    return lmdb_error("mdb_txn_commit (write)", rc);
  }
  *written = meta;
  payload_checked[meta.info.seq] = meta.payload_hash;
  return Status();
}

Result<SnapshotInfo> SnapshotStore::write(const proj::State& state, const LogPosition& position) {
  if (position.seq != state.last_seq() || position.timestamp_ns != state.last_timestamp_ns()) {
    return Status(ErrorCode::invalid, "snapshots: the position is not the state's last event");
  }
  // Recovery starts after a snapshot's seq: one of no event starts nothing.
  if (position.seq == 0) return Status(ErrorCode::invalid, "snapshots: the state holds no event");
  Meta meta;
  meta.info.seq = position.seq;
  meta.info.time_ns = position.timestamp_ns;
  meta.info.chain_checksum = position.chain_checksum;
  meta.info.digest = state.digest();
  meta.state_format = proj::kStateFormatVersion;
  // A full map aborts the transaction: the map grows and write_once runs
  // again.
  Meta written;
  TALLY_TRY(env_->env->write_growing(
      [&](int* rc) { return env_->write_once(state, meta, &written, rc); }));
  return written.info;
}

// ---------------------------------------------------------------- read

namespace {

// Every meta record, oldest first: decoded, or with metadata_ok false.
Status read_all_meta(const Txn& txn, MDB_dbi dbi, std::vector<Result<Meta>>* out,
                     std::vector<std::uint64_t>* seqs) {
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, dbi));
  MDB_val key{};
  MDB_val value{};
  // Each pass steps to the next key.
  int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_FIRST);
  for (; rc == 0; rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_NEXT)) {
    const std::uint64_t seq =
        key.mv_size == kMetaKeyBytes ? get_be(static_cast<const std::uint8_t*>(key.mv_data), 8) : 0;
    seqs->push_back(seq);
    out->push_back(decode_meta(key, value));
  }
  if (rc != MDB_NOTFOUND) return lmdb_error("mdb_cursor_get (meta)", rc);
  return Status();
}

// The idempotency window an image's header records; none when its first
// chunk is too short to hold it.
std::optional<std::int64_t> header_window(std::span<const std::span<const std::byte>> pieces) {
  if (pieces.empty() || pieces.front().size() < proj::kStateWindowOffset + 8) return std::nullopt;
  const auto* header = reinterpret_cast<const std::uint8_t*>(pieces.front().data());
  return static_cast<std::int64_t>(get_le(header + proj::kStateWindowOffset, 8));
}

}  // namespace

Status SnapshotStore::probe() const { return list().status(); }

Status SnapshotStore::copy_to(const std::string& dir, const CopyProgress& keep_going) const {
  return env_->env->copy_to(dir, keep_going);
}

Result<std::vector<SnapshotInfo>> SnapshotStore::list() const {
  Txn txn;
  TALLY_TRY(txn.begin_adopting(*env_->env, MDB_RDONLY));
  std::vector<Result<Meta>> metas;
  std::vector<std::uint64_t> seqs;
  TALLY_TRY(read_all_meta(txn, env_->meta, &metas, &seqs));
  std::vector<SnapshotInfo> infos;
  for (std::size_t index = 0; index < metas.size(); index++) {
    if (metas[index].ok()) {
      infos.push_back(metas[index]->info);
    } else {
      SnapshotInfo info;
      info.seq = seqs[index];
      info.metadata_ok = false;
      info.metadata_other_version = metas[index].code() == ErrorCode::invalid;
      infos.push_back(info);
    }
  }
  return infos;
}

Result<bool> SnapshotStore::Env::loadable(const Txn& txn, const Result<Meta>& meta_read,
                                          std::int64_t window_ns) {
  if (!meta_read.ok()) return false;
  const Result<std::vector<std::span<const std::byte>>> pieces = sized_chunks(txn, *meta_read);
  // Another version's format (invalid) or damage (corrupt): a load passes
  // over it too.
  if (!pieces.ok()) {
    const ErrorCode code = pieces.status().code();
    if (code == ErrorCode::invalid || code == ErrorCode::corrupt) return false;
    return pieces.status();
  }
  if (header_window(*pieces) != window_ns) return false;
  return check_payload_once(*pieces, *meta_read).ok();
}

Status SnapshotStore::Env::prune_once(std::size_t retain_count, std::uint64_t newest_seq,
                                      std::int64_t window_ns, Later later, std::size_t* pruned,
                                      int* rc_out) {
  *rc_out = 0;
  *pruned = 0;
  Txn txn;
  TALLY_TRY(txn.begin(*env, 0, rc_out));
  std::vector<Result<Meta>> metas;
  std::vector<std::uint64_t> seqs;  // oldest first
  TALLY_TRY(read_all_meta(txn, meta, &metas, &seqs));
  const std::size_t usable = static_cast<std::size_t>(
      std::upper_bound(seqs.begin(), seqs.end(), newest_seq) - seqs.begin());
  // The oldest kept: the retain_count-th loadable one back from the newest
  // usable (or none kept when retain_count is 0).
  std::size_t older = usable;
  for (std::size_t counted = 0; counted < retain_count && older > 0;) {
    older--;
    Result<bool> counts = loadable(txn, metas[older], window_ns);
    if (!counts) return counts.status();
    if (*counts) counted++;
  }
  std::size_t doomed = 0;
  for (std::size_t index = 0; index < seqs.size(); index++) {
    if (index >= older && index < usable) continue;
    // A later record whose metadata is damaged is no other writer's
    // snapshot: its seq (its key) may be anything, and it never loads.
    if (index >= usable && later == Later::keep &&
        metas[index].code() != ErrorCode::corrupt) {
      continue;
    }
    TALLY_TRY(delete_snapshot(txn, seqs[index], rc_out));
    doomed++;
  }
  if (doomed == 0) return Status();
  const int rc = txn.commit();
  if (rc != 0) {
    *rc_out = rc;
    return lmdb_error("mdb_txn_commit (prune)", rc);
  }
  *pruned = doomed;
  return Status();
}

Result<std::size_t> SnapshotStore::prune(std::size_t retain_count, std::uint64_t newest_seq,
                                         std::int64_t window_ns, Later later) {
  // Deleting copies the pages it changes before their old copies are free:
  // in a full map it needs the map to grow, as a write does.
  std::size_t pruned = 0;
  TALLY_TRY(env_->env->write_growing([&](int* rc) {
    return env_->prune_once(retain_count, newest_seq, window_ns, later, &pruned, rc);
  }));
  return pruned;
}

Result<std::vector<std::span<const std::byte>>> SnapshotStore::Env::sized_chunks(
    const Txn& txn, const Meta& meta) const {
  const std::string name = std::to_string(meta.info.seq) + ": ";
  if (meta.state_format != proj::kStateFormatVersion) {
    // Its metadata verified: another version's snapshot, not a damaged one.
    // Skipped like one taken with another window (invalid), not counted bad.
    return Status(ErrorCode::invalid, "snapshot " + name + "state format " +
                                          std::to_string(meta.state_format) +
                                          " is another version's (this one reads " +
                                          std::to_string(proj::kStateFormatVersion) + ")");
  }
  Cursor cursor;
  TALLY_TRY(cursor.open(txn, chunks));
  ChunkWalker walker(cursor.get(), meta);
  std::vector<std::span<const std::byte>> out;
  std::uint64_t total_bytes = 0;
  // One pass per chunk; chunk_count bounds it.
  while (true) {
    Result<std::span<const std::byte>> chunk = walker.next();
    if (!chunk) return chunk.status();
    if (chunk->empty()) break;
    total_bytes += chunk->size();
    out.push_back(*chunk);
  }
  if (total_bytes != meta.info.size_bytes) return corrupt(name + "payload size mismatch");
  return out;
}

Status SnapshotStore::Env::check_payload(std::span<const std::span<const std::byte>> chunks,
                                         const Meta& meta) {
  XXH3_state_t hash;
  XXH3_64bits_reset(&hash);
  for (const std::span<const std::byte> chunk : chunks) {
    XXH3_64bits_update(&hash, chunk.data(), chunk.size());
  }
  if (XXH3_64bits_digest(&hash) != meta.payload_hash) {
    return corrupt(std::to_string(meta.info.seq) + ": payload checksum mismatch");
  }
  return Status();
}

Status SnapshotStore::Env::check_payload_once(std::span<const std::span<const std::byte>> chunks,
                                              const Meta& meta) {
  const auto checked = payload_checked.find(meta.info.seq);
  if (checked != payload_checked.end() && checked->second == meta.payload_hash) return Status();
  payload_hashes++;
  TALLY_TRY(check_payload(chunks, meta));
  payload_checked[meta.info.seq] = meta.payload_hash;
  return Status();
}

Result<std::unique_ptr<proj::State>> SnapshotStore::Env::load_one(
    const Txn& txn, const Meta& meta, const proj::StateOptions& state_options,
    const std::atomic<bool>* cancel) {
  // The chunks stay in LMDB's map while the transaction lives, so the
  // loader reads them in place, two sections at once where it can. The
  // checksum runs beside the load instead of before it (one pass over a
  // large image, on the loading thread done first): the loader reads the
  // bytes as untrusted either way, and a mismatch is what it reports. A
  // payload this store wrote or hashed before is not hashed again
  // (check_payload_once).
  auto chunks = sized_chunks(txn, meta);
  if (!chunks) return chunks.status();
  std::unique_ptr<proj::StateSource> source = std::make_unique<proj::SpanSource>(*chunks);
  if (cancel != nullptr) {
    source = std::make_unique<proj::CancellableSource>(std::move(source), cancel);
  }
  std::uint64_t digest = 0;
  Result<std::unique_ptr<proj::State>> state = proj::State::load(
      *source, state_options, &digest, [&] { return check_payload_once(*chunks, meta); });
  if (!state) return state.status();
  const std::string name = std::to_string(meta.info.seq) + ": ";
  if ((*state)->last_seq() != meta.info.seq) return corrupt(name + "image of another seq");
  if ((*state)->last_timestamp_ns() != meta.info.time_ns) {
    return corrupt(name + "image of another time");
  }
  if (digest != meta.info.digest) return corrupt(name + "state digest mismatch");
  return state;
}

std::uint64_t SnapshotStore::payload_hashes() const { return env_->payload_hashes; }

Result<std::optional<std::int64_t>> SnapshotStore::newest_window() const {
  Txn txn;
  TALLY_TRY(txn.begin_adopting(*env_->env, MDB_RDONLY));
  std::vector<Result<Meta>> metas;
  std::vector<std::uint64_t> seqs;
  TALLY_TRY(read_all_meta(txn, env_->meta, &metas, &seqs));
  // Newest first; one pass per snapshot.
  for (std::size_t index = metas.size(); index-- > 0;) {
    if (!metas[index].ok() || metas[index]->info.seq == 0) continue;
    const Result<std::vector<std::span<const std::byte>>> pieces =
        env_->sized_chunks(txn, *metas[index]);
    if (pieces.ok() && env_->check_payload_once(*pieces, *metas[index]).ok()) {
      if (const std::optional<std::int64_t> window = header_window(*pieces)) return window;
      continue;
    }
    if (!pieces.ok() && pieces.code() != ErrorCode::invalid &&
        pieces.code() != ErrorCode::corrupt) {
      return pieces.status();
    }
    // A damaged page may have failed the transaction (as in load_newest_valid).
    txn.abort();
    TALLY_TRY(txn.begin_adopting(*env_->env, MDB_RDONLY));
  }
  return std::optional<std::int64_t>();
}

Result<LoadedSnapshot> SnapshotStore::load_newest_valid(
    std::uint64_t max_seq, const proj::StateOptions& state_options,
    std::vector<SkippedSnapshot>* skipped, const std::atomic<bool>* cancel,
    std::atomic<std::uint64_t>* loading) const {
  Txn txn;
  TALLY_TRY(txn.begin_adopting(*env_->env, MDB_RDONLY));
  std::vector<Result<Meta>> metas;
  std::vector<std::uint64_t> seqs;
  TALLY_TRY(read_all_meta(txn, env_->meta, &metas, &seqs));
  const auto skip = [&](std::uint64_t seq, Status why) {
    if (skipped != nullptr) skipped->push_back(SkippedSnapshot{seq, std::move(why)});
  };
  // Newest first; one pass per snapshot.
  for (std::size_t index = metas.size(); index-- > 0;) {
    if (!metas[index].ok()) {
      skip(seqs[index], metas[index].status());
      continue;
    }
    const Meta& meta = *metas[index];
    if (meta.info.seq == 0) {  // written by an older version: of no event
      skip(0, Status(ErrorCode::invalid, "snapshot 0: it holds no event"));
      continue;
    }
    if (meta.info.seq > max_seq) {
      skip(meta.info.seq, Status(ErrorCode::invalid, "snapshot " + std::to_string(meta.info.seq) +
                                                         ": past the log's last seq " +
                                                         std::to_string(max_seq)));
      continue;
    }
    if (loading != nullptr) loading->store(meta.info.seq, std::memory_order_relaxed);
    Result<std::unique_ptr<proj::State>> state = env_->load_one(txn, meta, state_options, cancel);
    if (!state) {
      // An LMDB failure is not a property of this snapshot, nor is a
      // cancel: stop.
      if (state.code() == ErrorCode::io_error || state.code() == ErrorCode::closed) {
        return state.status();
      }
      skip(meta.info.seq, state.status());
      // A damaged page fails the transaction too (MDB_CORRUPTED leaves it
      // unusable): the next snapshot is read in a new one.
      txn.abort();
      TALLY_TRY(txn.begin_adopting(*env_->env, MDB_RDONLY));
      continue;
    }
    return LoadedSnapshot{std::move(state).value(), meta.info};
  }
  return Status(ErrorCode::not_found, "snapshots: no valid snapshot at or below seq " +
                                          std::to_string(max_seq));
}

}  // namespace tally::snap
