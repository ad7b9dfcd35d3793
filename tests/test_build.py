"""The build around the library: the version written once, the CUDA compile check."""
import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import rnncore
from rnncore._ext import core as _core

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_same_everywhere():
    # CMakeLists.txt's project(VERSION) is the one place the version is written: pyproject.toml
    # reads it for the package metadata, and CMake compiles it into _core, whose value
    # rnncore.__version__ re-exports. A stale build or a broken regex shows up as a mismatch.
    views = {
        "importlib.metadata": importlib.metadata.version("rnncore"),
        "rnncore.__version__": rnncore.__version__,
        "rnncore._core.__version__": _core.__version__,
    }
    cmake_lists = ROOT / "CMakeLists.txt"
    if cmake_lists.exists():  # run from a source checkout
        found = re.search(r"project\(rnncore\s+VERSION\s+([0-9.]+)", cmake_lists.read_text())
        assert found, "no project(rnncore VERSION x.y.z) in CMakeLists.txt"
        views["CMakeLists.txt"] = found.group(1)
    assert len(set(views.values())) == 1, views
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", rnncore.__version__)


def test_wheel_holds_no_cpp_package():
    # The static library, headers and CMake package are installed for C++ users by
    # `cmake --install`; a pip install must not carry them.
    files = importlib.metadata.files("rnncore") or []
    leaked = [str(f) for f in files
              if str(f).endswith(".a") or "include/rnncore" in str(f) or "cmake/rnncore" in str(f)]
    assert not leaked


def _find_nvcc():
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_cell_math_compiles_with_nvcc(tmp_path):
    # Every registry cell's pointwise forward and backward, float and double, every phase, in
    # __global__ kernels (cpp/cuda/compile_check.cu): compiled, not run, so no GPU is needed.
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDACXX or put the CUDA toolkit on PATH)")
    source = ROOT / "cpp" / "cuda" / "compile_check.cu"
    if not source.exists():
        pytest.skip(f"{source} not present (tests run outside a source checkout)")
    # -Werror all-warnings: nvcc only warns when host+device code calls a host-only function.
    cmd = [nvcc, "-std=c++20", "-Werror", "all-warnings", "-I", str(ROOT / "cpp" / "include"),
           "-c", str(source), "-o", str(tmp_path / "compile_check.o")]
    # Not nvcc's business: the sanitizer runtime the test suite may run under (CI's ASan step).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "compile_check.o").stat().st_size > 0
