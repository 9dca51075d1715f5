// The snapshot store's on-disk format: named databases, keys and the
// metadata record (docs/snapshots.md gives the grammar and the recovery
// rule). The payload is the state image of projections/state_format.h.
//
// LMDB environment DATA/snapshots/ (data.mdb, lock.mdb), two databases:
//   "meta"   key: u64 seq, big-endian (so cursor order is seq order)
//            value: the metadata record below, 72 bytes
//   "chunks" key: u64 seq big-endian, u32 chunk index big-endian
//            value: the next 1..chunk_bytes bytes of the image
// A snapshot's meta record and all its chunks are written in one write
// transaction: after a crash either all of it is there or none.
//
// Metadata record, little-endian:
//   u32 kMetaMagic, u32 kMetaFormatVersion, u64 seq, i64 time_ns
//   (timestamp of the event at seq), u64 chain_checksum (the log's chain
//   value after seq), u64 digest (State::digest()), u32 state format
//   version, u32 chunk count, u64 payload bytes, u64 payload XXH3-64
//   (seed 0, over the concatenated chunks), u64 XXH3-64 of the 64 bytes
//   before it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace tally::snap {

inline constexpr const char* kMetaDbName = "meta";
inline constexpr const char* kChunksDbName = "chunks";
inline constexpr std::array<const char*, 2> kDbNames = {kMetaDbName, kChunksDbName};

inline constexpr std::uint32_t kMetaMagic = 0x504e5354;  // "TSNP" read as LE bytes
inline constexpr std::uint32_t kMetaFormatVersion = 1;
inline constexpr std::size_t kMetaBytes = 72;
inline constexpr std::size_t kMetaCheckedBytes = kMetaBytes - 8;  // covered by the trailing hash
inline constexpr std::size_t kMetaKeyBytes = 8;
inline constexpr std::size_t kChunkKeyBytes = 12;

// Limits on what the store writes and accepts.
inline constexpr std::size_t kChunkBytesMin = 4096;
inline constexpr std::size_t kChunkBytesMax = 64 * 1024 * 1024;
inline constexpr std::uint32_t kChunksMax = UINT32_MAX;

static_assert(kMetaBytes == 4 + 4 + 8 + 8 + 8 + 8 + 4 + 4 + 8 + 8 + 8);
static_assert(kChunkKeyBytes == kMetaKeyBytes + 4);

}  // namespace tally::snap
