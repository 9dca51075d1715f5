// The main() of the unit tests, with a watchdog: a test case that runs
// longer than TALLY_TEST_CASE_TIMEOUT_S seconds (300 by default) is taken
// for a hang. The watchdog names it, prints every thread's stack when gdb
// is there to take them, and ends the process (exit status 1): the failure
// says where the test waited, rather than meson's suite timeout saying
// only that it did.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace {

class Watchdog final : public doctest::IReporter {
 public:
  explicit Watchdog(const doctest::ContextOptions&) {}
  ~Watchdog() override {
    {
      std::lock_guard<std::mutex> guard(mu_);
      done_ = true;
    }
    wake_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

  void test_case_start(const doctest::TestCaseData& data) override {
    std::lock_guard<std::mutex> guard(mu_);
    name_ = data.m_name;
    started_ = std::chrono::steady_clock::now();
    running_ = true;
    if (!thread_.joinable()) thread_ = std::thread([this] { watch(); });
  }
  void test_case_end(const doctest::CurrentTestCaseStats&) override {
    std::lock_guard<std::mutex> guard(mu_);
    running_ = false;
  }

  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}

 private:
  static std::chrono::seconds limit() {
    const char* set = std::getenv("TALLY_TEST_CASE_TIMEOUT_S");
    const long seconds = set != nullptr ? std::strtol(set, nullptr, 10) : 0;
    return std::chrono::seconds(seconds > 0 ? seconds : 300);
  }

  void watch() {
    const std::chrono::seconds allowed = limit();
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_) {
      wake_.wait_for(lock, std::chrono::seconds(1));
      if (running_ && std::chrono::steady_clock::now() - started_ > allowed) {
        const std::string name = name_;
        lock.unlock();
        hung(name, allowed);
      }
    }
  }

  // Does not return. Not through abort(): doctest's handler of SIGABRT
  // would report on threads the debugger left running.
  [[noreturn]] static void hung(const std::string& name, std::chrono::seconds allowed) {
    std::fprintf(stderr, "test case \"%s\" has run for over %lld s: taken for a hang\n",
                 name.c_str(), static_cast<long long>(allowed.count()));
    std::fflush(stderr);
    // Lets the debugger, a child of this process, attach to it.
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    std::string command = "command -v gdb > /dev/null && gdb -p ";
    command += std::to_string(::getpid());
    command += " -batch -nx -ex 'thread apply all bt' 1>&2 < /dev/null";
    if (std::system(command.c_str()) != 0) {
      std::fprintf(stderr, "(no thread stacks: gdb is not installed or could not attach)\n");
    }
    std::_Exit(EXIT_FAILURE);
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::thread thread_;
  std::string name_;
  std::chrono::steady_clock::time_point started_;
  bool running_ = false;
  bool done_ = false;
};

}  // namespace

DOCTEST_REGISTER_LISTENER("watchdog", 1, Watchdog);
