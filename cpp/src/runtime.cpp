#include "rnncore/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <vector>

#include <omp.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "runtime_detail.hpp"

namespace rnncore {

namespace {
std::atomic<int> g_num_threads{0};
thread_local int t_thread_limit = 0;  // 0: no limit
std::atomic<InterruptCheck> g_interrupt_check{nullptr};
thread_local detail::Interruption* t_interruption = nullptr;
thread_local Precision t_precision = Precision::kFloat32;

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

namespace {

// AVX512-BF16 usable: the CPU has it (cpuid leaf 7 sub-leaf 1, EAX bit 5) with AVX512F and
// AVX512BW (leaf 7, EBX bits 16 and 30: the kernel's loads, masks and broadcasts), and the OS
// saves the opmask and ZMM registers (XCR0 bits 1, 2, 5, 6, 7).
bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;  // OSXSAVE
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  constexpr unsigned kZmmState = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7);
  if ((xcr0_lo & kZmmState) != kZmmState) return false;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool f_bw = (ebx & (1u << 16)) && (ebx & (1u << 30));
  const unsigned max_subleaf = eax;
  if (!f_bw || max_subleaf < 1 || !__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax & (1u << 5)) != 0;
#else
  return false;
#endif
}

Bf16Kernel detect_bf16_kernel() {
  const char* off = std::getenv("RNNCORE_NO_BF16");
  if (off && *off && std::strcmp(off, "0") != 0) return Bf16Kernel::kNone;
  return cpu_has_avx512_bf16() ? Bf16Kernel::kAvx512Bf16 : Bf16Kernel::kNone;
}

}  // namespace

Bf16Kernel bf16_kernel() {
  static const Bf16Kernel kernel = detect_bf16_kernel();
  return kernel;
}

const char* bf16_kernel_name(Bf16Kernel kernel) {
  switch (kernel) {
    case Bf16Kernel::kAvx512Bf16: return "avx512_bf16";
    case Bf16Kernel::kNone: break;
  }
  return "none";
}

PrecisionScope::PrecisionScope(Precision precision) : saved_(t_precision) {
  t_precision = precision;
}
PrecisionScope::~PrecisionScope() { t_precision = saved_; }
Precision current_precision() { return t_precision; }

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

namespace detail {

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
  Interruption* const interruption = current_interruption();
  const Precision precision = current_precision();
#pragma omp parallel for num_threads(team) schedule(static, 1)
  for (std::size_t i = 0; i < calls.size(); ++i) {
    ThreadLimit one(1);
    PrecisionScope same_precision(precision);
    InterruptScope scope(interruption);
    try {
      calls[i]();
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace detail

}  // namespace rnncore
