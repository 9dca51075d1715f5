#include "tools/progress.h"

#include <unistd.h>

#include "tools/format.h"

namespace tally::cli {

namespace {

bool wanted(Streams streams) {
  if (isatty(STDERR_FILENO) != 1) return false;
  return streams == Streams::no || isatty(STDOUT_FILENO) != 1;
}

}  // namespace

Progress::Progress(std::string_view what, std::uint64_t total, Streams streams)
    : Progress(what, total, stderr, wanted(streams)) {}

Progress::Progress(std::string_view what, std::uint64_t total, std::FILE* file, bool enabled)
    : what_(what),
      total_(total),
      file_(file),
      enabled_(enabled),
      started_(std::chrono::steady_clock::now()),
      drawn_at_(started_) {}

void Progress::maybe_draw(std::uint64_t done) {
  const auto now = std::chrono::steady_clock::now();
  if (now - drawn_at_ < std::chrono::milliseconds(1000 / kRedrawsPerSecond)) return;
  drawn_at_ = now;
  std::string line = "\rtally: " + what_ + ": ";
  append_int(&line, static_cast<std::int64_t>(done));
  if (total_ > 0) {
    line += " / ";
    append_int(&line, static_cast<std::int64_t>(total_));
    line += " (";
    append_int(&line, static_cast<std::int64_t>(done * 100 / total_));
    line += "%)";
  }
  const double seconds = std::chrono::duration<double>(now - started_).count();
  line += " ";
  line += unit_;
  line += ", ";
  append_int(&line, static_cast<std::int64_t>(seconds));
  line += " s";
  // Pad over the rest of a longer previous line.
  const std::size_t length = line.size();
  if (length < drawn_bytes_) line.append(drawn_bytes_ - length, ' ');
  drawn_bytes_ = length;
  std::fputs(line.c_str(), file_);
  std::fflush(file_);
}

void Progress::finish() {
  if (enabled_ && drawn_bytes_ > 0) {
    std::string blank = "\r";
    blank.append(drawn_bytes_, ' ');
    blank += "\r";
    std::fputs(blank.c_str(), file_);
    std::fflush(file_);
  }
  enabled_ = false;
  drawn_bytes_ = 0;
}

}  // namespace tally::cli
