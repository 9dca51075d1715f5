// Rewrites records of a snapshot store in place, as damage or another
// version of tally would leave them. Test-only; included by *_test.cc files.
#pragma once

#include <doctest.h>
#include <lmdb.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "log/hash.h"
#include "snapshots/format.h"

namespace tally::snap {

// Opens the environment in `store_dir` directly (the store must be closed:
// one process may not open an LMDB environment twice) and rewrites the
// record under `key_bytes` in database `db_name` with `edit`.
inline void edit_record(const std::string& store_dir, const char* db_name,
                        std::span<const std::uint8_t> key_bytes,
                        const std::function<void(std::vector<std::uint8_t>*)>& edit) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  REQUIRE(mdb_env_set_maxdbs(env, 2) == 0);
  REQUIRE(mdb_env_open(env, store_dir.c_str(), 0, 0644) == 0);
  MDB_txn* txn = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
  MDB_dbi dbi = 0;
  REQUIRE(mdb_dbi_open(txn, db_name, 0, &dbi) == 0);
  MDB_val key{key_bytes.size(), const_cast<std::uint8_t*>(key_bytes.data())};
  MDB_val value{};
  REQUIRE(mdb_get(txn, dbi, &key, &value) == 0);
  std::vector<std::uint8_t> bytes(static_cast<std::uint8_t*>(value.mv_data),
                                  static_cast<std::uint8_t*>(value.mv_data) + value.mv_size);
  edit(&bytes);
  MDB_val changed{bytes.size(), bytes.data()};
  REQUIRE(mdb_put(txn, dbi, &key, &changed, 0) == 0);
  REQUIRE(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
}

// The key of a snapshot's chunk (`chunk` 0 .. chunk_count - 1) or, with
// no chunk, of its metadata record.
inline std::vector<std::uint8_t> record_key(std::uint64_t seq, std::optional<std::uint32_t> chunk) {
  std::vector<std::uint8_t> key_bytes(chunk ? kChunkKeyBytes : kMetaKeyBytes);
  for (int index = 0; index < 8; index++) {
    key_bytes[index] = static_cast<std::uint8_t>(seq >> (8 * (7 - index)));
  }
  for (int index = 0; chunk && index < 4; index++) {
    key_bytes[8 + index] = static_cast<std::uint8_t>(*chunk >> (8 * (3 - index)));
  }
  return key_bytes;
}

// The metadata record of `seq` as a later version might write it: another
// format version, its checksum still right.
inline void bump_meta_version(const std::string& store_dir, std::uint64_t seq) {
  const auto bump = [](std::vector<std::uint8_t>* bytes) {
    REQUIRE(bytes->size() == kMetaBytes);
    (*bytes)[4] += 1;
    const std::uint64_t checksum = XXH3_64bits(bytes->data(), kMetaCheckedBytes);
    for (std::size_t index = 0; index < 8; index++) {
      (*bytes)[kMetaCheckedBytes + index] = static_cast<std::uint8_t>(checksum >> (8 * index));
    }
  };
  edit_record(store_dir, kMetaDbName, record_key(seq, std::nullopt), bump);
}

}  // namespace tally::snap
