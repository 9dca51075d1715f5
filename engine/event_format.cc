#include "engine/event_format.h"

#include <cstdio>
#include <ctime>

#include "engine/json.h"
#include "log/text.h"

namespace tally {

namespace {

using log::Event;
using log::Op;
using log::OpType;

constexpr char kHexDigits[] = "0123456789abcdef";

// Writes one record's fields in either output form:
//   text: `word name=value name=[item; item]`
//   JSON: `{"name":value,"name":[{...},{...}]}`
// Records nest one level (an event's ops).
class FieldWriter {
 public:
  FieldWriter(std::string* out, bool json) : out_(out), json_(json) {}

  void open_record() {
    if (json_) out_->push_back('{');
    first_[depth_] = true;
  }
  void close_record() {
    if (json_) out_->push_back('}');
  }
  // The record's kind: a bare word in text, "type":"..." in JSON.
  void type(std::string_view name) {
    if (json_) return string("type", name);
    separate();
    out_->append(name);
  }
  void string(std::string_view name, std::string_view value) {
    start_field(name);
    if (json_) {
      json::append_string(out_, value);
    } else {
      append_text_escaped(out_, value);
    }
  }
  void integer(std::string_view name, std::int64_t value) {
    start_field(name);
    *out_ += std::to_string(value);
  }
  void unsigned_integer(std::string_view name, std::uint64_t value) {
    start_field(name);
    *out_ += std::to_string(value);
  }
  void boolean(std::string_view name, bool value) {
    start_field(name);
    *out_ += value ? "true" : "false";
  }
  void open_list(std::string_view name) {
    start_field(name);
    out_->push_back('[');
    depth_++;
    TALLY_ASSERT(depth_ < kDepthMax);
    first_item_ = true;
  }
  // Opens a record inside the open list.
  void open_item() {
    if (!first_item_) *out_ += json_ ? "," : "; ";
    first_item_ = false;
    open_record();
  }
  void close_list() {
    depth_--;
    out_->push_back(']');
  }
  // A named group of fields: {"name":{...}} in JSON, name=[...] in text.
  void open_object(std::string_view name) {
    start_field(name);
    out_->push_back(json_ ? '{' : '[');
    depth_++;
    TALLY_ASSERT(depth_ < kDepthMax);
    first_[depth_] = true;
  }
  void close_object() {
    depth_--;
    out_->push_back(json_ ? '}' : ']');
  }

 private:
  static constexpr int kDepthMax = 2;

  void separate() {
    if (!first_[depth_]) out_->push_back(json_ ? ',' : ' ');
    first_[depth_] = false;
  }
  void start_field(std::string_view name) {
    separate();
    if (json_) {
      out_->push_back('"');
      out_->append(name);
      *out_ += "\":";
    } else {
      out_->append(name);
      out_->push_back('=');
    }
  }

  std::string* out_;
  const bool json_;
  int depth_ = 0;
  bool first_[kDepthMax] = {true, true};
  bool first_item_ = true;
};

// The op's fields that its type uses (log/event.h). `hold_id` is the id a
// hold op created (0 inside a rejected request, which created none).
void write_op_fields(FieldWriter* writer, const Op& op, std::uint64_t hold_id, bool requested) {
  switch (op.type) {
    case OpType::acquire:
    case OpType::consume:
    case OpType::transfer:
      writer->string("subject", op.subject);
      if (op.type == OpType::transfer) writer->string("to", op.to);
      writer->string("item", op.item);
      writer->integer("qty", op.qty);
      return;
    case OpType::hold:
      writer->string("subject", op.subject);
      writer->string("item", op.item);
      writer->integer("qty", op.qty);
      writer->integer("ttl_ns", op.ttl_ns);
      if (hold_id != 0) writer->unsigned_integer("hold", hold_id);
      return;
    case OpType::commit:
    case OpType::release:
    case OpType::expire:
      // A request names its hold by id or by the key of the hold's request;
      // an applied event carries the resolved id as well.
      if (!requested || op.hold_key.empty()) writer->unsigned_integer("hold", op.hold);
      if (!op.hold_key.empty()) writer->string("hold_key", op.hold_key);
      if (requested) {
        // A rejected request names only the hold and, for a commit, the
        // quantity asked for (0: the whole hold).
        if (op.type == OpType::commit) writer->integer("qty", op.qty);
        return;
      }
      writer->string("subject", op.subject);
      writer->string("item", op.item);
      writer->integer("qty", op.qty);
      if (op.type == OpType::commit) writer->integer("released", op.released);
      return;
  }
}

void write_op_list(FieldWriter* writer, std::string_view name, const Event& event,
                   bool requested) {
  writer->open_list(name);
  for (std::size_t op_index = 0; op_index < event.ops.size(); op_index++) {
    const Op& op = event.ops[op_index];
    writer->open_item();
    writer->type(log::op_type_name(op.type));
    write_op_fields(writer, op, requested ? 0 : log::hold_id(event.seq, true, op_index), requested);
    writer->close_record();
  }
  writer->close_list();
}

void write_event(FieldWriter* writer, const Event& event, bool json, std::string* out) {
  writer->open_record();
  if (json) {
    writer->unsigned_integer("seq", event.seq);
    writer->integer("time", event.timestamp_ns);
    std::string time;
    append_rfc3339(&time, event.timestamp_ns);
    writer->string("time_rfc3339", time);
  } else {
    *out += std::to_string(event.seq) + " ";
    append_rfc3339(out, event.timestamp_ns);
    *out += " ";
  }
  const bool single = event.rejected == log::Reason::none && !event.batch;
  TALLY_ASSERT(!event.ops.empty() || !single);  // the decoder's guarantee
  writer->type(event.rejected != log::Reason::none ? "rejected"
               : event.batch                      ? "batch"
                                                  : log::op_type_name(event.ops[0].type));
  writer->string("key", event.key);  // empty for expire, a system event
  if (single) {
    write_op_fields(writer, event.ops[0], log::hold_id(event.seq, false, 0), false);
  } else if (event.rejected == log::Reason::none) {
    write_op_list(writer, "ops", event, false);
  } else {
    writer->string("reason", log::reason_name(event.rejected));
    writer->unsigned_integer("index", event.failed_index);
    writer->boolean("batch", event.batch);
    write_op_list(writer, "request", event, true);
  }
  const log::Meta& meta = event.meta;
  if (!meta.reason.empty() || !meta.reference.empty() || !meta.actor.empty()) {
    // Nested, so that a rejected event's reason and the caller's reason
    // never share a name.
    writer->open_object("meta");
    writer->string("reason", meta.reason);
    writer->string("reference", meta.reference);
    writer->string("actor", meta.actor);
    writer->close_object();
  }
  if (json || event.fingerprint != 0) {
    std::string fingerprint;
    append_hex64(&fingerprint, event.fingerprint);
    writer->string("fingerprint", fingerprint);
  }
  writer->close_record();
}

}  // namespace

void append_event(const Event& event, EventFormat format, std::string* out) {
  const bool json = format == EventFormat::json;
  FieldWriter writer(out, json);
  write_event(&writer, event, json, out);
}

void append_hex64(std::string* out, std::uint64_t value) {
  for (int shift = 60; shift >= 0; shift -= 4) out->push_back(kHexDigits[(value >> shift) & 0xf]);
}

}  // namespace tally
