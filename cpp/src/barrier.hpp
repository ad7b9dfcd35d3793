// The barrier of the time loops (internal): spin briefly, then sleep.
//
// Why not `#pragma omp barrier`: libgomp's barrier spins (GOMP_SPINCOUNT, by default 300,000
// rounds, milliseconds on a modern core) before it sleeps. On a machine whose cores are shared
// with other busy processes (data loaders, other jobs), one of the loop's threads is regularly
// descheduled; its partner then spins at the next step's barrier for up to its whole time slice,
// holding a core the descheduled thread (or the competitor) could use. A time loop meets at a
// barrier once per step and phase, so it pays that again and again: measured 5-30x slower than
// one thread (issue 19). A thread that sleeps instead gives its core back at once.
//
// Why spin at all: on a quiet machine the threads reach the barrier within microseconds of each
// other, and waking a sleeping thread (futex) costs several microseconds, as much as a whole
// step at small sizes. So a waiter spins for kSpinNanoseconds (longer than a step's usual
// imbalance, far shorter than a time slice), then blocks in std::atomic::wait (a futex on
// Linux); the last thread to arrive wakes the sleepers.
//
// Memory order: everything a thread wrote before arrive_and_wait() happens-before everything
// any thread does after it returns (the last arrival's release increment of the generation,
// acquired by every waiter).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rnncore {
namespace detail {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

class SpinThenSleepBarrier {
 public:
  // 50 us: a few times the longest imbalance between two threads' halves of one quiet step
  // (bench/RESULTS.md "Issue 19"), a small fraction of a scheduler time slice (milliseconds).
  static constexpr std::int64_t kSpinNanoseconds = 50'000;

  explicit SpinThenSleepBarrier(int threads) : threads_(threads) {}
  SpinThenSleepBarrier(const SpinThenSleepBarrier&) = delete;
  SpinThenSleepBarrier& operator=(const SpinThenSleepBarrier&) = delete;

  void arrive_and_wait() {
    const unsigned generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      generation_.notify_all();  // no system call when nobody sleeps (libstdc++ counts waiters)
      return;
    }
    if (spin_until_changed(generation)) return;
    while (generation_.load(std::memory_order_acquire) == generation)
      generation_.wait(generation, std::memory_order_acquire);
  }

 private:
  // Spins until the generation moves (true) or kSpinNanoseconds pass (false). The clock is read
  // every 64 rounds only: a pause is tens of cycles, a clock read about as much.
  bool spin_until_changed(unsigned generation) const {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::nanoseconds(kSpinNanoseconds);
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (generation_.load(std::memory_order_acquire) != generation) return true;
        cpu_relax();
      }
      if (Clock::now() >= deadline) return false;
    }
  }

  const int threads_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<unsigned> generation_{0};
};

}  // namespace detail
}  // namespace rnncore
