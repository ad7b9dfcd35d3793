// rnncore._cpu: what this CPU can run, read before any kernel is chosen (python/rnncore/_ext.py).
//
// Compiled for the plain x86-64 baseline (no -march flags: see bindings/CMakeLists.txt), so it
// imports on any x86-64 CPU; the engine's modules (_core for x86-64-v3, _core_avx512 for v4)
// are imported only once this module has said the CPU can run them. Nothing else lives here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "rnncore/cpu_features.hpp"

namespace py = pybind11;

#ifndef RNNCORE_BUILT_LEVELS
#error "RNNCORE_BUILT_LEVELS (the engine modules _core_<level> built, best first) comes from CMake"
#endif

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "CPU features for rnncore's choice of kernels (internal; see rnncore.cpu_info())";
  m.def(
      "features",
      [] {
        const rnncore::CpuFeatures f = rnncore::detect_cpu_features();
        py::dict d;
        d["vendor"] = f.vendor;
        d["brand"] = f.brand;
        const std::pair<const char*, bool> flags[] = {
            {"sse4_2", f.sse42},       {"popcnt", f.popcnt},     {"avx", f.avx},
            {"avx2", f.avx2},          {"fma", f.fma},           {"f16c", f.f16c},
            {"bmi1", f.bmi1},          {"bmi2", f.bmi2},         {"lzcnt", f.lzcnt},
            {"movbe", f.movbe},        {"avx512f", f.avx512f},   {"avx512bw", f.avx512bw},
            {"avx512cd", f.avx512cd},  {"avx512dq", f.avx512dq}, {"avx512vl", f.avx512vl},
            {"avx512_bf16", f.avx512_bf16}, {"amx_tile", f.amx_tile}, {"amx_bf16", f.amx_bf16},
            {"os_avx", f.os_ymm},      {"os_avx512", f.os_zmm},  {"os_amx", f.os_tiles},
            {"x86_64_v3", f.x86_64_v3()}, {"x86_64_v4", f.x86_64_v4()}};
        for (const auto& [name, has] : flags) d[name] = has;
        d["missing_for_x86_64_v3"] = f.missing_for_v3();
        return d;
      },
      "The CPU's features as a dict: vendor, brand, one bool per feature (a feature whose "
      "registers the OS does not save counts as absent through the os_* entries), x86_64_v3/v4, "
      "and missing_for_x86_64_v3 (the list of what the baseline needs and this CPU lacks).");
  m.def(
      "built_levels",
      [] {
        std::vector<std::string> levels;
        std::string all = RNNCORE_BUILT_LEVELS;
        for (std::size_t start = 0; start <= all.size();) {
          const std::size_t comma = std::min(all.find(',', start), all.size());
          if (comma > start) levels.push_back(all.substr(start, comma - start));
          start = comma + 1;
        }
        return levels;
      },
      "The instruction-set levels this build has an engine module for (_core_<level>), best "
      "first.");
}
