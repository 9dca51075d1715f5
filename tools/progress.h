// Progress: one line on stderr that long work (verify, snapshot, history
// --rebuild, replays of large logs) rewrites in place with '\r', at most
// kRedrawsPerSecond times a second — only when stderr is a terminal, so
// scripts, pipes and logs see nothing. The line is erased by finish() (and
// the destructor), so the command's own output and errors start clean.
//
//   Progress progress("verify", last_seq);   // 0: total unknown
//   ... progress.update(record.seq); ...     // cheap: call it per event
//   progress.finish();
//
// Thread safety: none; the thread doing the work owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace tally::cli {

// Whether a command's progress line is to be drawn: stderr is a terminal,
// and — for a command that prints its results while it works (`log`,
// `history`) — stdout is not the terminal too, where the results are
// progress enough and a line rewritten among them would garble them.
enum class Streams : std::uint8_t { no, stdout_while_working };

class Progress {
 public:
  // Enabled as above.
  Progress(std::string_view what, std::uint64_t total, Streams streams = Streams::no);
  // For tests: writes to `file` when `enabled`, whatever it is.
  Progress(std::string_view what, std::uint64_t total, std::FILE* file, bool enabled);
  ~Progress() { finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  bool enabled() const { return enabled_; }
  // The count done reaches at the end; 0 when unknown.
  void set_total(std::uint64_t total) { total_ = total; }
  // What is counted, after the numbers: "events" unless set.
  void set_unit(std::string_view unit) { unit_ = unit; }
  // `done` so far (absolute, e.g. the seq reached). Reads the clock only
  // every kUpdatesPerClockRead calls, and draws when the last draw is old.
  void update(std::uint64_t done) {
    if (!enabled_ || ++updates_ % kUpdatesPerClockRead != 0) return;
    maybe_draw(done);
  }
  // update() for work counted in large steps (a MiB copied): reads the
  // clock at every call.
  void update_now(std::uint64_t done) {
    if (enabled_) maybe_draw(done);
  }
  // Erases the line if one was drawn; later updates draw nothing.
  void finish();

 private:
  static constexpr std::uint64_t kUpdatesPerClockRead = 4096;
  static constexpr int kRedrawsPerSecond = 4;

  void maybe_draw(std::uint64_t done);

  std::string what_;
  std::string unit_ = "events";
  std::uint64_t total_;
  std::FILE* file_;
  bool enabled_;
  std::uint64_t updates_ = 0;
  std::size_t drawn_bytes_ = 0;  // of the line on screen; 0: none
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point drawn_at_;
};

}  // namespace tally::cli
