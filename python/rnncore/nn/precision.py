"""Compute precision of the sequence modules' GEMMs: "float32" (the default) or "bf16".

With precision="bf16" a float32 module's packed GEMMs (the input projection, the recurrent
product of every step, and in backward dL/dh_{t-1} and dx) round their operands to bfloat16 and
accumulate in float32 on the CPU's bf16 instructions. Everything else stays float32: the states,
the gate math, and every parameter gradient (dW and db are float32 GEMMs over float32 values).
On a CPU without a bf16 kernel the same module runs the float32 path, results identical to
precision="float32"; `bf16_kernel()` says which one runs.
"""
from __future__ import annotations

import numpy as np

from rnncore._ext import core

PRECISIONS = ("float32", "bf16")


def bf16_kernel():
    """The kernel precision="bf16" runs here: "avx512_bf16" (AVX512-BF16, VDPBF16PS), or "none"
    (the float32 path). Set RNNCORE_NO_BF16=1 before the first rnncore call to force "none"."""
    return core.bf16_kernel()


def bf16_supported():
    """Whether precision="bf16" computes in bf16 on this CPU (otherwise it runs float32)."""
    return bf16_kernel() != "none"


def check_precision(precision, dtype):
    """precision as given, checked against PRECISIONS and the module's dtype (bf16 operands
    need a float32 module: a float64 module exists for exact gradient checks)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    if precision == "bf16" and np.dtype(dtype) != np.float32:
        raise ValueError(f"precision='bf16' needs dtype float32, got {np.dtype(dtype)}")
    return precision
