"""Shared by the weight converters (rnncore.onnx, rnncore.keras) and the plots: gate-block
reordering, and matplotlib when it is there."""
from __future__ import annotations

import sys

import numpy as np


def blocks(a, order, hidden_size):
    """The gate blocks of a (G*H, ...) array in another order: block k of the result is block
    order[k] of a."""
    return np.concatenate([a[j * hidden_size:(j + 1) * hidden_size] for j in order], axis=0)


def inverse(order):
    """The order that undoes `order` (blocks(blocks(a, order), inverse(order)) == a)."""
    inv = [0] * len(order)
    for k, j in enumerate(order):
        inv[j] = k
    return tuple(inv)


def pyplot(path, what="plot"):
    """matplotlib.pyplot on the file-only Agg backend, or None with a one-line note on stderr
    (matplotlib is the optional 'plot' extra): callers then write no file."""
    try:
        import matplotlib  # optional: matplotlib (rnncore[plot])
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed (pip install 'rnncore[plot]'); no {what} "
              f"written to {path}", file=sys.stderr)
        return None
    return plt
