// What the threads of one OpenMP parallel region of the drivers (internal) must agree on, because
// no exception may leave a parallel region (it would terminate the process) and no thread may
// leave a loop with barriers while the others wait at the next one:
//   - ErrorSlot keeps the first exception a thread throws (std::bad_alloc while a thread packs
//     its weights, say) and rethrows it after the region, and runs the guarded work with the
//     calling thread's compute precision;
//   - Team adds what the time loops need: every thread's set-up either succeeded or the loop is
//     skipped by all of them, and an interruption (runtime.hpp) stops all of them at the same step.
#pragma once

#include <atomic>
#include <exception>
#include <mutex>

#include "barrier.hpp"
#include "rnncore/buffer.hpp"
#include "rnncore/common.hpp"
#include "runtime_detail.hpp"

namespace rnncore {
namespace detail {

class ErrorSlot {
 public:
  // Runs f(); an exception it throws is kept (the first one of all threads), not propagated.
  // f runs with the precision (runtime.hpp) of the thread that constructed the slot, so the
  // weights a worker thread packs follow the call's setting.
  template <class F>
  void guard(F&& f) noexcept {
    const std::string* thread_call = detail::t_allocation.call;
    detail::t_allocation.call = call_;  // a worker's allocations name the caller's call
    try {
      PrecisionScope call_precision(precision_);
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
    detail::t_allocation.call = thread_call;
  }
  // Whether some thread's guard caught an exception (complete once the threads have met at a
  // barrier or the region has ended).
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  // After the region: rethrows the kept exception, if any.
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
  Precision precision_ = current_precision();
  const std::string* call_ = detail::t_allocation.call;
};

// part(p) for p = 0 .. parts-1, one part per thread of a team of `parts` threads (no team when
// parts <= 1); an exception thrown by a part is rethrown after all parts have finished.
template <class Part>
void parallel_parts(int parts, Part&& part) {
  if (parts <= 1) {
    if (parts == 1) part(0);
    return;
  }
  ErrorSlot errors;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int p = 0; p < parts; ++p) errors.guard([&] { part(p); });
  errors.rethrow();
}

// The threads of one time loop. Use:
//   Team team(threads);              // before the region, in the calling thread
//   #pragma omp parallel num_threads(threads) ...
//   { team.guard([&] { per-thread set-up }); meet(team.barrier());
//     if (!team.failed()) for (s ...) { if (team.stop_at(s, thread)) break; ... one step with
//                                      at least one meet(team.barrier()) ... } }
//   team.finish();                   // rethrows a set-up error, or throws Interrupted
// stop_at: thread 0 polls the call's interruption during step n and publishes the answer in slot
// (n + 1) % 2, which every thread reads at the start of step n + 1, after the step's barrier; it
// writes that slot again only during step n + 2, after the next barrier, when every thread has
// read it. So all threads leave at the same step.
class Team : public ErrorSlot {
 public:
  explicit Team(int threads = 1)
      : interruption_(current_interruption()), barrier_(threads > 1 ? threads : 1),
        several_(threads > 1) {
    // A call already stopped (in an earlier layer, or the other direction) stops at step 0.
    if (interruption_ && interruption_->requested()) stop_[0].store(true);
  }

  bool stop_at(Index n, int thread) {
    if (stop_[n & 1].load(std::memory_order_relaxed)) {
      stopped_.store(true, std::memory_order_relaxed);
      return true;
    }
    if (thread == 0 && interruption_) {
      const bool stop = interruption_->requested() || (timer_.due() && interruption_->poll());
      stop_[(n + 1) & 1].store(stop, std::memory_order_relaxed);
    }
    return false;
  }

  // The barrier the loop's steps meet at (barrier.hpp: spins briefly, then sleeps, so a busy
  // machine's descheduled thread does not cost its partner a time slice of spinning); nullptr
  // for a team of one thread, which never waits.
  SpinThenSleepBarrier* barrier() { return several_ ? &barrier_ : nullptr; }

  void finish() const {
    rethrow();
    if (stopped_.load(std::memory_order_relaxed)) throw Interrupted();
  }

 private:
  Interruption* interruption_;
  PollTimer timer_;  // thread 0's
  std::atomic<bool> stop_[2] = {false, false};
  std::atomic<bool> stopped_{false};
  SpinThenSleepBarrier barrier_;
  const bool several_;
};

// Waits at the barrier when there is one (several threads); a team of one passes.
inline void meet(SpinThenSleepBarrier* barrier) {
  if (barrier) barrier->arrive_and_wait();
}

}  // namespace detail
}  // namespace rnncore
