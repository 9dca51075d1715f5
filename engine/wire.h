// The binary protocol's messages (engine/protocol.capnp) as C++ values, and
// their codec and framing, shared by the server and tally::Client so that
// the encoding lives in one place. docs/protocol.md is the grammar.
//
// Frames use Cap'n Proto's standard stream framing: a segment table (count-1
// and one size per segment, as little-endian uint32 words, padded to 8 bytes)
// then the segments. A reader learns a frame's size in two steps:
// table_bytes() from the first 8 bytes, then frame_bytes() from the table.
// Both check the limits before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/types.h"
#include "log/status.h"

namespace tally::wire {

inline constexpr std::uint32_t kProtocolVersion = 1;
// The largest request a server reads (ServerOptions::frame_bytes_max).
inline constexpr std::size_t kFrameBytesMaxDefault = 1u << 20;
// The largest answer: a server sends none larger, and a client reads up to
// it (ClientOptions::frame_bytes_max). Far above the request limit: the
// list of a subject with very many items is one answer, and every event
// (made from a request, or from an embedded caller's batch of at most
// 1000 ops) fits in it.
inline constexpr std::size_t kAnswerBytesMax = 64u << 20;
inline constexpr std::size_t kSegmentsMax = 64;
inline constexpr std::size_t kFirstBytes = 8;  // the table's first word
inline constexpr int kNestingMax = 16;
inline constexpr std::size_t kTokenBytesMax = 256;

// A frame as read: whole words, so Cap'n Proto can read it in place.
using FrameView = std::span<const std::uint64_t>;
using FrameWords = std::vector<std::uint64_t>;

// The segment table's size in bytes (>= kFirstBytes), from its first 8
// bytes. invalid: more than kSegmentsMax segments.
Result<std::size_t> table_bytes(std::span<const std::byte> first);
// The whole frame's size in bytes, from the complete table. invalid: larger
// than frame_bytes_max.
Result<std::size_t> frame_bytes(std::span<const std::byte> table, std::size_t frame_bytes_max);

// Cuts the byte stream of a connection into frames, so that one read from
// the socket brings in every frame that has arrived: read into space(),
// commit() what came, then take next() until it asks for more. Frames are
// whole words, so each one stays word-aligned in the buffer and is decoded
// where it lies.
class FrameReader {
 public:
  static constexpr std::size_t kBufferBytesDefault = 16 * 1024;

  explicit FrameReader(std::size_t frame_bytes_max, std::size_t buffer_bytes = kBufferBytesDefault);
  // Where to read next, once next() has asked for more bytes: never empty.
  // The buffer grows with the frame begun as its bytes come, doubling, up
  // to the frame's size (frame_bytes_max at most).
  std::span<std::byte> space();
  void commit(std::size_t bytes);
  // The next complete frame, valid until the next call of space() or
  // next(); an empty view when more bytes are needed. invalid: the stream
  // is malformed (too many segments, or a frame over the limit).
  Result<FrameView> next();
  // Bytes read and not yet taken as frames.
  std::size_t buffered_bytes() const { return end_ - begin_; }
  // The limit of the frames after the one next() returned last.
  void set_frame_bytes_max(std::size_t frame_bytes_max) { frame_bytes_max_ = frame_bytes_max; }

 private:
  std::byte* bytes() { return reinterpret_cast<std::byte*>(words_.data()); }
  std::size_t capacity_bytes() const { return words_.size() * sizeof(std::uint64_t); }

  std::size_t frame_bytes_max_;
  std::size_t buffer_bytes_;
  std::vector<std::uint64_t> words_;
  std::size_t begin_ = 0;       // the first byte not taken, always word-aligned
  std::size_t end_ = 0;         // the end of what was read
  std::size_t frame_bytes_ = 0; // of the frame at begin_, once its table is in; else 0
};

struct Request {
  enum class Kind : std::uint8_t { hello, mutation, balance, list, hold_info, follow, cancel };
  std::uint64_t id = 0;
  Kind kind = Kind::hello;
  std::uint32_t version = kProtocolVersion;  // hello
  std::string token;                         // hello
  Command command;                           // mutation
  std::string subject;                       // balance, list
  std::string item;                          // balance
  std::optional<AsOf> as_of;                 // balance, list, hold_info: point in time
  HoldId hold = 0;                           // hold_info
  std::uint64_t from_seq = 1;                // follow
  std::uint32_t max_events = 0;              // follow; 0: the server's maximum
  std::uint64_t follow_id = 0;               // cancel: the follow's request id
  // Not ok: a well-formed message this server does not take (an unknown
  // kind, op type or asOf kind, a single mutation without an op, too many
  // ops): answered with this error under `id`, the rest unset but what
  // `refused_asks` says. A single mutation with more than one op decodes,
  // its first op as `command.op` and the rest as `command.ops`, for the
  // Ledger's validation to refuse.
  Status refused;
  // With `refused`: `kind` is set (unless `unknown_kind`), and for a
  // mutation `command.batch` and, for a single one, `command.op.type`: what
  // the request asked for, so that it counts as an answer to that. False
  // when the decoder did not get that far (an unknown kind or op type, a
  // single mutation without an op).
  bool refused_asks = false;
  // With `refused`: a kind this server does not know; `kind` says nothing.
  bool unknown_kind = false;
};

// The events of a follow batch, each the serialized Event message of
// log/events.capnp, copied into one buffer at 8-byte boundaries so that
// log::EventDecoder can read them in place.
class EventPayloads {
 public:
  void append(std::span<const std::byte> payload);
  std::size_t size() const { return spans_.size(); }
  std::span<const std::byte> operator[](std::size_t index) const;

 private:
  struct Span {
    std::size_t word = 0;  // where it starts in words_
    std::size_t bytes = 0;
  };
  std::vector<std::uint64_t> words_;
  std::vector<Span> spans_;
};

struct Response {
  enum class Kind : std::uint8_t { error, receipt, balance, list, hold_info, hello, events };
  std::uint64_t id = 0;
  Kind kind = Kind::hello;
  std::uint64_t ledger_id = 0;  // hello: the ledger served (0: not said)
  Status error;               // error (never ok)
  bool unauthorized = false;  // error: the token was missing or wrong
  bool unknown = false;       // error: the answer held what this version does not know
  Receipt receipt;
  Balance balance;
  std::vector<ItemBalance> items;
  HoldView hold;
  EventPayloads events;       // events: consecutive seqs ending before next_seq
  std::uint64_t next_seq = 0; // events
  bool end = false;           // events: the follow's last message
};

// One framed message, ready to write.
std::string encode_request(const Request& request);
std::string encode_response(const Response& response);
// The same into *bytes, in place of what they were: a caller that keeps
// the string reuses its capacity.
void encode_response_into(const Response& response, std::string* bytes);
// A lower bound of the size of the frame of a list answer holding `items`
// (its items' structs and names alone), to refuse one far over
// kAnswerBytesMax without encoding it.
std::size_t list_answer_bytes_min(const std::vector<ItemBalance>& items);

// Decodes one frame of untrusted bytes with explicit ReaderOptions limits
// (traversal bounded by the frame's size, nesting by kNestingMax). invalid:
// malformed. A request that decodes but cannot be taken is a Request whose
// `refused` says why.
Result<Request> decode_request(FrameView frame);
// An answer holding a value this version does not know (a newer server's
// kind of answer, outcome, hold status or error code) decodes as an error
// answer to its request: io_error, its outcome unknown here.
Result<Response> decode_response(FrameView frame);

}  // namespace tally::wire
