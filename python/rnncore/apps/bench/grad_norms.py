"""`rnncore bench --grad-norms`: what recording ||dL/dh_t|| costs in backward."""
from __future__ import annotations

import time

import numpy as np

from rnncore.apps.bench.common import both_threads, median_times
from rnncore.apps.bench.configs import GRAD_NORM_CONFIGS
from rnncore.nn.registry import make_module


def run_grad_norm_cost(args):
    """Backward with and without recording ||dL/dh_t||, alternating, per config."""
    both_threads(None, max(args.threads))
    print(f"gradient-norm recording: backward time with / without, {max(args.threads)} threads")
    rng = np.random.default_rng(0)
    for cell, T, B, H in GRAD_NORM_CONFIGS:
        m = make_module(cell, H, H, seed=0)
        x = rng.standard_normal((T, B, H)).astype(np.float32)
        dy = rng.standard_normal((T, B, H)).astype(np.float32)

        def step(record):
            def f():
                m.record_grad_norms = record
                m(x)
                t0 = time.perf_counter()
                m.backward(dy)
                f.elapsed.append(time.perf_counter() - t0)
            f.elapsed = []
            return f
        off, on = step(False), step(True)
        median_times([off, on], repeats=60)
        b_off, b_on = float(np.median(off.elapsed)), float(np.median(on.elapsed))
        print(f"  {cell} T={T} B={B} H={H}: backward {1e3 * b_off:.3f} ms, with norms "
              f"{1e3 * b_on:.3f} ms ({100 * (b_on / b_off - 1):+.1f}%)")
