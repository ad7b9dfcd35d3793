#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer: reinstalls rnncore into the
# active virtual environment built with RNNCORE_SANITIZE=address,undefined (a separate build; the
# normal build's flags do not override the sanitizer's), then runs pytest with the sanitizer
# runtime preloaded, which a Python host (not itself built with ASan) needs: libasan first, and
# libstdc++ so that C++ exceptions thrown through the preloaded runtime resolve. Leak detection is
# off (CPython and numpy keep allocations until exit by design); any error report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX:-c++}
# One engine level (avx2, which every CPU of CI runs) halves the sanitizer build.
RNNCORE_SANITIZE=address,undefined RNNCORE_SIMD=avx2 pip install -q --force-reinstall --no-deps .
asan=$("$cxx" -print-file-name=libasan.so)
stdcxx=$("$cxx" -print-file-name=libstdc++.so)
for lib in "$asan" "$stdcxx"; do
  [[ -e "$lib" ]] || { echo "sanitize.sh: $lib not found (needs GCC's libasan)" >&2; exit 1; }
done
LD_PRELOAD="$asan:$stdcxx" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  python -m pytest -q -p no:cacheprovider "$@"
