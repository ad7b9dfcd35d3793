#!/usr/bin/env bash
# CI: rnncore as a C++ library, without Python. In the active virtual environment (for the Eigen
# headers of its cmeel-eigen wheel): configure and build the library, the examples and (when nvcc
# is found) the CUDA compile check; run every example; install to a temporary prefix; build a
# separate project against that install (examples/consumer) and run it.
# Usage: .ci/cpp_check.sh   (RNNCORE_SIMD and CMAKE_BUILD_PARALLEL_LEVEL are honoured; 2 jobs by default)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  echo "cpp_check.sh: activate the virtual environment first (it provides the Eigen headers)" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

# The same Eigen requirement as the wheel build (pyproject.toml's build-system.requires).
eigen_req=$(grep -o '"cmeel-eigen[^"]*"' pyproject.toml | tr -d '"')
if ! python -c "import cmeel.consts" 2>/dev/null; then
  echo "== pip install $eigen_req (Eigen headers for the C++ build)"
  pip install -q "$eigen_req"
fi
eigen_prefix=$(python -c "import os, cmeel, cmeel.consts as c; \
print(os.path.join(os.path.dirname(os.path.dirname(cmeel.__file__)), c.CMEEL_PREFIX))")

echo "== configure and build the C++ library and examples"
cmake -S . -B "$work/build" -DCMAKE_PREFIX_PATH="$eigen_prefix" -DRNNCORE_BUILD_EXAMPLES=ON \
  -DRNNCORE_SIMD="${RNNCORE_SIMD:-portable}" | grep -E "^-- rnncore:|Configuring done"
cmake --build "$work/build"

for src in examples/*.cpp; do
  name=$(basename "$src" .cpp)
  echo "== run $name"
  "$work/build/$name"
done

echo "== install to a temporary prefix"
cmake --install "$work/build" --prefix "$work/prefix" >/dev/null
find "$work/prefix" -type f | sed "s|^$work/prefix/|   |" | sort

echo "== build and run examples/consumer against the installed package"
# Only the install prefix is given: the package itself must find Eigen and OpenMP.
cmake -S examples/consumer -B "$work/consumer" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/consumer"
"$work/consumer/rnncore_consumer"
echo "== C++ checks passed"
