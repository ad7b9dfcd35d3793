"""The only importer of rnncore's compiled modules (torchaudio's `_extension` pattern).

`core` is the C++ engine. It is built several times, once per instruction-set level
(`_core_avx2` for x86-64-v3, `_core_avx512` for x86-64-v4; one module `_core_<level>` each), and
the best level this CPU and OS can run is chosen once, here, at import: `rnncore._cpu`, built for
the plain x86-64 baseline, reads CPUID and XCR0 first, so no module is ever imported on a CPU that
would fault on its instructions (as numpy and oneDNN choose their kernels). Below the baseline,
`import rnncore` raises ImportError naming what the CPU lacks. RNNCORE_ISA=avx2 (environment,
read at import) forces a lower level, for tests and benchmarks; cpu_info() says what was chosen
and why.

`cuda_module()` imports rnncore._cuda, the optional CUDA build, on first use, and says why when
it cannot: `import rnncore` never needs it.
"""
from __future__ import annotations

import glob
import importlib
import os
import threading
from typing import TYPE_CHECKING, Any

from . import _cpu

# Levels best first, with the _cpu feature that says the CPU (and OS) can run each. "native"
# (a local build for the build machine's CPU, RNNCORE_SIMD=native) and "generic" (no SIMD flags,
# for other architectures) are single-level builds chosen without a check.
_LEVEL_FEATURE = {"avx512": "x86_64_v4", "avx2": "x86_64_v3"}
_LEVEL_TEXT = {"avx512": "x86-64-v4: AVX-512 F/BW/CD/DQ/VL", "avx2": "x86-64-v3: AVX2, FMA, BMI2"}


def _choose_level(built, features, forced):
    """(level, reason) for the engine to import; ImportError when none can run here."""
    def runs(level):
        feature = _LEVEL_FEATURE.get(level)
        return feature is None or bool(features.get(feature))

    cpu = features.get("brand") or features.get("vendor") or "this CPU"
    if forced:
        if forced not in built:
            raise ImportError(f"RNNCORE_ISA={forced!r} names no level of this build; it has "
                              f"{', '.join(built)}")
        if not runs(forced):
            raise ImportError(f"RNNCORE_ISA={forced!r}: {cpu} cannot run that level "
                              f"({_LEVEL_TEXT[forced]})")
        return forced, f"forced by RNNCORE_ISA={forced}"
    for level in built:
        if runs(level):
            better = [b for b in built[:built.index(level)]]
            why = (f"the best of the built levels ({', '.join(built)}) that {cpu} runs"
                   + (f"; it cannot run {', '.join(better)}" if better else ""))
            return level, why
    missing = features.get("missing_for_x86_64_v3") or []
    raise ImportError(
        f"rnncore needs an x86-64 CPU with AVX2 and FMA (the x86-64-v3 level, 2013 and later); "
        f"{cpu} lacks: {', '.join(missing) or 'the levels built (' + ', '.join(built) + ')'}")


_FEATURES = _cpu.features()
LEVEL, _REASON = _choose_level(list(_cpu.built_levels()), _FEATURES,
                               os.environ.get("RNNCORE_ISA", "").strip() or None)
if TYPE_CHECKING:
    from . import _core as core  # the engine's interface: every level's module has it (_core.pyi)
else:
    core = importlib.import_module(f"{__package__}._core_{LEVEL}")

__version__: str = core.__version__  # compiled in from CMakeLists.txt's project(VERSION), as is the wheel's
get_num_threads = core.get_num_threads
set_num_threads = core.set_num_threads

__all__ = ["core", "__version__", "get_num_threads", "set_num_threads", "cuda_module", "cpu_info"]


def cpu_info() -> dict[str, Any]:
    """What rnncore runs on this CPU and why: the instruction-set level of the engine chosen at
    import ("avx512", "avx2", ...), the reason, the levels this build has, whether RNNCORE_ISA
    forced it, the bf16 kernel, and the CPU's name and features as read by CPUID/XCR0."""
    return {
        "level": LEVEL,
        "reason": _REASON,
        "built_levels": list(_cpu.built_levels()),
        "forced": os.environ.get("RNNCORE_ISA") or None,
        "bf16_kernel": core.bf16_kernel(),
        "cpu": _FEATURES.get("brand") or _FEATURES.get("vendor") or "",
        "features": {k: v for k, v in _FEATURES.items() if isinstance(v, bool)},
    }


_cuda_lock = threading.Lock()
_cuda = None          # rnncore._cuda once imported
_cuda_error = None    # why it could not be, once tried


def _cublas_candidates():
    """libcublas files of the nvidia-cublas wheels installed beside rnncore (newest first)."""
    found = []
    try:
        import nvidia  # optional: the namespace package of NVIDIA's PyPI wheels (rnncore[cuda])
    except ImportError:
        return found
    for root in getattr(nvidia, "__path__", []):
        for pattern in ("cu13/lib/libcublas.so.*", "cublas/lib/libcublas.so.*",
                        "cu12/lib/libcublas.so.*"):
            found.extend(sorted(glob.glob(os.path.join(root, pattern)), reverse=True))
    return found


def cuda_module():
    """(rnncore._cuda, None) once it imports, else (None, the reason in one line)."""
    global _cuda, _cuda_error
    with _cuda_lock:
        if _cuda is None and _cuda_error is None:
            try:
                from . import _cuda as module  # optional: built only where nvcc was found
            except ImportError as e:
                _cuda_error = (f"rnncore was built without its CUDA module ({e}); "
                               "reinstall with nvcc on PATH (docs/cuda.md)")
            else:
                candidates = _cublas_candidates()
                if candidates:
                    module.set_cublas_path(candidates[0])
                _cuda = module
        return _cuda, _cuda_error
