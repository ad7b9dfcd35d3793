#include "rnncore/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <vector>

#include <omp.h>

#include "rnncore/sequence.hpp"

namespace rnncore {

namespace {
std::atomic<int> g_num_threads{0};
thread_local int t_thread_limit = 0;  // 0: no limit
std::atomic<InterruptCheck> g_interrupt_check{nullptr};
thread_local detail::Interruption* t_interruption = nullptr;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

void set_interrupt_check(InterruptCheck check) { g_interrupt_check.store(check); }

namespace detail {

bool Interruption::poll() {
  if (requested()) return true;
  const InterruptCheck check = g_interrupt_check.load();
  if (check && check()) stop_.store(true, std::memory_order_relaxed);
  return requested();
}

Interruption* current_interruption() { return t_interruption; }

InterruptScope::InterruptScope(Interruption* in) : saved_(t_interruption) {
  if (in)
    t_interruption = in;
  else if (!t_interruption)
    t_interruption = &own_;
}
InterruptScope::~InterruptScope() { t_interruption = saved_; }
Interruption* InterruptScope::get() const { return t_interruption; }

bool PollTimer::due() {
  if (--countdown_ > 0) return false;
  constexpr std::int64_t kPoll = std::int64_t(kInterruptPollSeconds * 1e9);
  constexpr std::int64_t kMaxStride = std::int64_t(1) << 20;
  const std::int64_t now = now_ns();
  if (last_check_ns_ >= 0) {
    const std::int64_t since = now - last_check_ns_;
    if (since < kPoll / 8 && stride_ < kMaxStride) stride_ *= 2;
    else if (since > kPoll / 2 && stride_ > 1) stride_ /= 2;
  } else {
    last_poll_ns_ = now;
  }
  last_check_ns_ = now;
  countdown_ = stride_;
  if (now - last_poll_ns_ < kPoll) return false;
  last_poll_ns_ = now;
  return true;
}

}  // namespace detail

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0); }

int get_num_threads() {
  const int n = g_num_threads.load();
  const int threads = n > 0 ? n : std::max(1, omp_get_max_threads());
  return t_thread_limit > 0 ? std::min(threads, t_thread_limit) : threads;
}

ThreadLimit::ThreadLimit(int n) : saved_(t_thread_limit) {
  if (n > 0 && (t_thread_limit == 0 || n < t_thread_limit)) t_thread_limit = n;
}
ThreadLimit::~ThreadLimit() { t_thread_limit = saved_; }

void run_independent(const std::vector<std::function<void()>>& calls, bool each_single_threaded) {
  const int threads = get_num_threads();
  // Side by side also when there are no more threads than calls: each call then gets one
  // thread, which costs it its thread split, but saves the barrier per time step and the
  // fork/join of every hoisted GEMM that one-after-the-other with all threads pays. Measured on
  // 2 cores, bidirectional fwd+bwd, side by side / one after the other: LSTM 100/16/128 x2
  // layers 0.71, GRU 100/16/128 0.66, LSTM 100/64/256 0.88, LSTM 50/128/512 0.95 (bench/RESULTS.md).
  const bool side_by_side =
      calls.size() >= 2 && threads >= 2 &&
      (each_single_threaded || std::size_t(threads) <= calls.size());
  if (!side_by_side) {
    for (const auto& call : calls) call();
    return;
  }
  // One thread per call; an exception in one is rethrown after all have finished. The calls
  // share the caller's interruption, so a stop requested while one runs stops them all.
  std::vector<std::exception_ptr> errors(calls.size());
  const int team = int(std::min<std::size_t>(std::size_t(threads), calls.size()));
  detail::Interruption* const interruption = detail::current_interruption();
#pragma omp parallel for num_threads(team) schedule(static, 1)
  for (std::size_t i = 0; i < calls.size(); ++i) {
    ThreadLimit one(1);
    detail::InterruptScope scope(interruption);
    try {
      calls[i]();
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace rnncore
