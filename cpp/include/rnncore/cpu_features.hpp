// What the CPU (and the operating system) can run: the x86-64 feature bits behind rnncore's
// choice of kernels at run time.
//
// Header-only on purpose: every user compiles it with its own flags, so the probe that runs
// before any kernel is chosen (rnncore._cpu, built for the plain x86-64 baseline) contains no
// instruction the CPU might lack. A feature counts only when the CPU reports it (CPUID) AND the
// OS saves its registers across context switches (XGETBV's XCR0): a CPU with AVX-512 under an OS
// that does not save ZMM state must not run AVX-512 code.
//
// Levels (the x86-64 psABI microarchitecture levels; rnncore's kernels are built for some):
//   x86-64-v3  AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, OS saves YMM   ("avx2")
//   x86-64-v4  v3 + AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL, OS saves ZMM ("avx512")
// and the extensions the bf16 kernels use on top of v4: AVX512_BF16, AMX-TILE + AMX-BF16 (with the
// OS's tile state; Linux also asks each process to request it, see runtime.hpp).
#pragma once

#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define RNNCORE_HAVE_CPUID 1
#else
#define RNNCORE_HAVE_CPUID 0
#endif

namespace rnncore {

struct CpuFeatures {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", ... ("" off x86-64)
  std::string brand;   // the processor's name string, e.g. "AMD EPYC 9B14"
  bool sse42 = false, popcnt = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool bmi1 = false, bmi2 = false, lzcnt = false, movbe = false;
  bool avx512f = false, avx512bw = false, avx512cd = false, avx512dq = false, avx512vl = false;
  bool avx512_bf16 = false, amx_tile = false, amx_bf16 = false;
  bool os_ymm = false, os_zmm = false, os_tiles = false;  // XCR0: the OS saves that state

  // The named pieces x86-64-v3 needs that this CPU (or OS) lacks; empty when it has them all.
  std::vector<std::string> missing_for_v3() const {
    std::vector<std::string> missing;
    const std::pair<const char*, bool> need[] = {
        {"avx", avx}, {"avx2", avx2}, {"fma", fma}, {"f16c", f16c}, {"bmi1", bmi1},
        {"bmi2", bmi2}, {"lzcnt", lzcnt}, {"movbe", movbe},
        {"OS support for AVX state (XCR0)", os_ymm}};
    for (const auto& [name, has] : need)
      if (!has) missing.emplace_back(name);
    return missing;
  }
  bool x86_64_v3() const { return missing_for_v3().empty(); }
  bool x86_64_v4() const {
    return x86_64_v3() && avx512f && avx512bw && avx512cd && avx512dq && avx512vl && os_zmm;
  }
};

namespace detail {
inline bool bit(unsigned word, int n) { return (word >> n) & 1u; }
}  // namespace detail

inline CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if RNNCORE_HAVE_CPUID
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return f;
  const unsigned max_leaf = eax;
  char vendor[13] = {};
  __builtin_memcpy(vendor + 0, &ebx, 4);
  __builtin_memcpy(vendor + 4, &edx, 4);
  __builtin_memcpy(vendor + 8, &ecx, 4);
  f.vendor = vendor;

  __get_cpuid(1, &eax, &ebx, &ecx, &edx);
  using detail::bit;
  f.sse42 = bit(ecx, 20);
  f.popcnt = bit(ecx, 23);
  f.fma = bit(ecx, 12);
  f.movbe = bit(ecx, 22);
  f.f16c = bit(ecx, 29);
  f.avx = bit(ecx, 28);
  const bool osxsave = bit(ecx, 27);
  unsigned xcr0 = 0;
  if (osxsave) {
    unsigned xcr0_hi = 0;
    __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_hi) : "c"(0));
  }
  f.os_ymm = osxsave && (xcr0 & 0x6u) == 0x6u;                // SSE and AVX state
  f.os_zmm = f.os_ymm && (xcr0 & 0xE0u) == 0xE0u;             // opmask, ZMM0-15 high, ZMM16-31
  f.os_tiles = osxsave && (xcr0 & 0x60000u) == 0x60000u;      // XTILECFG, XTILEDATA

  if (max_leaf >= 7) {
    __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx);
    const unsigned max_subleaf = eax;
    f.bmi1 = bit(ebx, 3);
    f.avx2 = bit(ebx, 5);
    f.bmi2 = bit(ebx, 8);
    f.avx512f = bit(ebx, 16);
    f.avx512dq = bit(ebx, 17);
    f.avx512cd = bit(ebx, 28);
    f.avx512bw = bit(ebx, 30);
    f.avx512vl = bit(ebx, 31);
    f.amx_bf16 = bit(edx, 22);
    f.amx_tile = bit(edx, 24);
    if (max_subleaf >= 1) {
      __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx);
      f.avx512_bf16 = bit(eax, 5);
    }
  }
  if (__get_cpuid(0x80000001u, &eax, &ebx, &ecx, &edx)) f.lzcnt = bit(ecx, 5);
  if (__get_cpuid_max(0x80000000u, nullptr) >= 0x80000004u) {
    unsigned words[12];
    for (unsigned leaf = 0; leaf < 3; ++leaf)
      __get_cpuid(0x80000002u + leaf, &words[4 * leaf], &words[4 * leaf + 1],
                  &words[4 * leaf + 2], &words[4 * leaf + 3]);
    char text[49] = {};
    __builtin_memcpy(text, words, 48);
    f.brand = text;
    const auto first = f.brand.find_first_not_of(' ');
    const auto last = f.brand.find_last_not_of(' ');
    f.brand = first == std::string::npos ? "" : f.brand.substr(first, last - first + 1);
  }
#endif
  return f;
}

}  // namespace rnncore
