#include "engine/replay.h"

#include <chrono>

namespace tally {

std::string log_dir(const std::string& data_dir) { return log::join_path(data_dir, "log"); }

Result<ReplayReport> replay(const ReplayOptions& options, proj::State* state) {
  const auto start = std::chrono::steady_clock::now();
  log::FileSystem& fs = options.fs != nullptr ? *options.fs : log::posix_file_system();
  auto reader = log::LogReader::open(fs, log_dir(options.data_dir));
  if (!reader) return reader.status();

  ReplayReport report;
  log::EventDecoder decoder;
  log::Record record;
  log::Event event;
  for (;;) {
    auto more = (*reader)->next(&record);
    if (!more) return more.status();
    if (!*more) break;
    if (record.seq > options.to_seq) break;
    Status decoded = decoder.decode(record.payload, &event);
    if (!decoded.ok() || event.seq != record.seq) {
      return log::corrupt_at(record.segment_first_seq, record.offset,
                             decoded.ok() ? "event seq differs from its frame" : decoded.message());
    }
    if (options.visit) options.visit(event, record);
    TALLY_TRY(state->apply(event));
    report.events++;
  }
  report.end = (*reader)->end();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace tally
