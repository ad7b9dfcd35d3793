// Thread control and interruption for every rnncore kernel.
#pragma once

#include <exception>

namespace rnncore {

// Number of OpenMP threads rnncore uses; n <= 0 restores the default (OpenMP's
// omp_get_max_threads(), i.e. OMP_NUM_THREADS or the number of cores). The same thread count
// gives bitwise-identical results run to run.
void set_num_threads(int n);
int get_num_threads();

// While alive, limits the threads used by rnncore calls made from the constructing thread
// (limits nest; the smallest wins). Used to run independent calls side by side.
class ThreadLimit {
 public:
  explicit ThreadLimit(int n);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int saved_;
};

// ---- compute precision of the packed GEMMs --------------------------------------------------
// An opt-in reduced precision for the products that go through the packed kernel (the hoisted
// input projection, the recurrent product of every step, dL/dh_{t-1} and dx in backward): with
// kBf16 their float32 operands are rounded to bfloat16 (round to nearest even) and multiplied on
// the CPU's bf16 instructions, accumulating in float32. Everything else (accumulation, states,
// the pointwise math, the weight gradients dW and their GEMMs) stays float32, and float64 calls
// ignore the setting. kFloat32 (the default) leaves every result bitwise unchanged.
enum class Precision { kFloat32, kBf16 };

// The bf16 kernel this CPU runs, chosen once at first use from cpuid (and the OS's saving of the
// AVX-512 registers). kNone: kBf16 calls fall back to float32, results identical to kFloat32.
// The environment variable RNNCORE_NO_BF16=1 (read once) forces kNone, to test the fallback.
// (An AMX kernel would be a third value; its packed layout would be the same, see
// cpp/src/bf16_gemm.hpp.)
enum class Bf16Kernel { kNone, kAvx512Bf16 };
Bf16Kernel bf16_kernel();
const char* bf16_kernel_name(Bf16Kernel kernel);  // "none", "avx512_bf16"

// While alive, sets the precision of rnncore calls made from the constructing thread (the
// innermost scope wins). The calls' OpenMP threads inherit it: the drivers' parallel regions
// capture it where they capture the caller's interruption (detail::ErrorSlot, run_independent).
class PrecisionScope {
 public:
  explicit PrecisionScope(Precision precision);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  Precision saved_;
};

// The calling thread's precision (kFloat32 outside any PrecisionScope).
Precision current_precision();

// ---- interruption ------------------------------------------------------------------------------
// A long call (a forward or backward over many steps) can be stopped between time steps: the host
// installs a check (the Python bindings: "is a signal such as Ctrl-C pending?"), the time loops
// call it every kInterruptPollSeconds or so from the thread that made the call, and when it says
// yes every thread of the call leaves its loop at the same step and the call throws Interrupted.
// A stopped training forward leaves no workspace to back-propagate; a stopped backward may have
// added part of the parameter gradients.
class Interrupted : public std::exception {
 public:
  const char* what() const noexcept override { return "rnncore call interrupted"; }
};

// The host's check; called without any lock held, from the thread that made the call or from
// threads of its team. nullptr (the default): calls are never interrupted.
using InterruptCheck = bool (*)();
void set_interrupt_check(InterruptCheck check);

// Seconds between two calls of the check during a time loop (about; the loops count steps and
// read the clock only every so many of them).
inline constexpr double kInterruptPollSeconds = 0.02;

}  // namespace rnncore
