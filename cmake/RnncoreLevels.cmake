# The instruction-set levels rnncore's engine is compiled for, and their compiler flags.
#
# RNNCORE_SIMD=portable (the default) builds the engine once per level of RNNCORE_LEVELS, best
# first: on x86-64 "avx512" (x86-64-v4: AVX-512 F/BW/CD/DQ/VL) and "avx2" (x86-64-v3: AVX2, FMA,
# BMI2, F16C, ...); elsewhere "generic". The Python package gets one module per level
# (rnncore._core_<level>) and chooses at import, by CPUID, the best one the CPU runs
# (python/rnncore/_ext.py, rnncore._cpu). The C++ library (rnncore::rnncore, the examples, the
# benchmarks) is built at the last, most portable level. RNNCORE_SIMD=native|avx512|avx2|generic
# builds that single level instead (native: -march=native, for a local build on its machine).
#
# rnncore_level_flags(<level> <out_var>): the compile options of a level.
include(CheckCXXCompilerFlag)

function(rnncore_level_flags level out_var)
  if(level STREQUAL "native")
    set(flags -march=native -mprefer-vector-width=512)
  elseif(level STREQUAL "avx512" OR level STREQUAL "avx2")
    if(level STREQUAL "avx512")
      set(march x86-64-v4)
      set(fallback -mavx512f -mavx512bw -mavx512cd -mavx512dq -mavx512vl)
      set(extra -mprefer-vector-width=512)  # GCC's auto-vectoriser prefers 256 bits otherwise
    else()
      set(march x86-64-v3)
      set(extra "")
    endif()
    check_cxx_compiler_flag(-march=${march} _rnncore_has_${level}_march)
    if(_rnncore_has_${level}_march)
      set(flags -march=${march} ${extra})
    else()  # GCC 10 and Clang < 12 know the features, not the level names
      set(flags -mavx -mavx2 -mfma -mf16c -mbmi -mbmi2 -mlzcnt -mmovbe -mpopcnt -msse4.2
          ${fallback} ${extra})
    endif()
  elseif(level STREQUAL "generic")
    set(flags "")
  else()
    message(FATAL_ERROR "rnncore: unknown instruction-set level '${level}'")
  endif()
  set(${out_var} "${flags}" PARENT_SCOPE)
endfunction()

set(_rnncore_simd_choices portable native avx512 avx2 generic)
if(NOT RNNCORE_SIMD IN_LIST _rnncore_simd_choices)
  message(FATAL_ERROR "RNNCORE_SIMD must be one of ${_rnncore_simd_choices} (got '${RNNCORE_SIMD}')")
endif()
if(RNNCORE_SIMD STREQUAL "portable")
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    set(RNNCORE_LEVELS avx512 avx2)
  else()
    set(RNNCORE_LEVELS generic)
  endif()
else()
  set(RNNCORE_LEVELS ${RNNCORE_SIMD})
endif()
list(GET RNNCORE_LEVELS -1 RNNCORE_LIBRARY_LEVEL)
rnncore_level_flags(${RNNCORE_LIBRARY_LEVEL} RNNCORE_ARCH_FLAGS)  # the C++ library's
string(REPLACE ";" ", " _rnncore_levels_text "${RNNCORE_LEVELS}")
message(STATUS "rnncore: engine levels ${_rnncore_levels_text} (RNNCORE_SIMD=${RNNCORE_SIMD}); "
               "the C++ library at ${RNNCORE_LIBRARY_LEVEL}")
