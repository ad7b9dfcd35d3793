// The runtime's internals (defined in runtime.cpp) that the drivers use and users do not: the
// interruption state one top-level call shares with every thread working for it, the step
// counter that says when its time loop should poll the host's check, and run_independent for the
// two directions of a layer. The public side (thread count, precision, Interrupted and the
// host's check) is rnncore/runtime.hpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "rnncore/runtime.hpp"

namespace rnncore {
namespace detail {

// The interruption state of one top-level call, shared by every thread working for it.
class Interruption {
 public:
  bool requested() const { return stop_.load(std::memory_order_relaxed); }
  // Runs the host's check (if any); true once it has said stop.
  bool poll();

 private:
  std::atomic<bool> stop_{false};
};

// The Interruption of the call this thread works for, or nullptr outside any call.
Interruption* current_interruption();

// While alive, makes `in` (or, when nullptr and there is none yet, a new one) this thread's
// current Interruption; nested scopes share the outermost one.
class InterruptScope {
 public:
  explicit InterruptScope(Interruption* in = nullptr);
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
  Interruption* get() const;

 private:
  Interruption own_;
  Interruption* saved_;
};

// Step counter of a time loop that says when enough time has passed to poll again: it reads the
// clock only every `stride` steps and adapts the stride so that happens about every
// kInterruptPollSeconds / 4, whatever a step costs (a step of a few hundred nanoseconds pays
// about one clock read per thousand steps).
class PollTimer {
 public:
  bool due();

 private:
  std::int64_t stride_ = 1, countdown_ = 1, last_check_ns_ = -1, last_poll_ns_ = -1;
};

// Runs independent calls (e.g. the two directions of a bidirectional layer): side by side, one
// thread each, when each_single_threaded says none of them would use more than one thread, or
// when there are no more threads than calls; otherwise one after another, each with all
// threads. The calls share the caller's interruption and precision. Exceptions are rethrown
// after all calls.
void run_independent(const std::vector<std::function<void()>>& calls, bool each_single_threaded);

}  // namespace detail
}  // namespace rnncore
