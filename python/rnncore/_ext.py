"""The only importer of rnncore's compiled modules (torchaudio's `_extension` pattern).

`core` is rnncore._core, the C++ engine (always built). `cuda_module()` imports rnncore._cuda, the
optional CUDA build, on first use, and says why when it cannot: `import rnncore` never needs it.
Everything else in the package reaches the compiled code through this module, so what is
compiled, which version, and which optional parts loaded are answered in one place.
"""
from __future__ import annotations

import glob
import os
import threading

from . import _core as core

__version__ = core.__version__  # compiled in from CMakeLists.txt's project(VERSION), as is the wheel's
get_num_threads = core.get_num_threads
set_num_threads = core.set_num_threads

__all__ = ["core", "__version__", "get_num_threads", "set_num_threads", "cuda_module"]

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
                from . import (
                    _cuda as module,  # optional: built only where nvcc was found
                )
            except ImportError as e:
                _cuda_error = (f"rnncore was built without its CUDA module ({e}); "
                               "reinstall with nvcc on PATH (docs/cuda.md)")
            else:
                candidates = _cublas_candidates()
                if candidates:
                    module.set_cublas_path(candidates[0])
                _cuda = module
        return _cuda, _cuda_error
