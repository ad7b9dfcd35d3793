"""What every job of `rnncore bench` uses: the machine's FMA peak, alternating median timings,
repeat counts, the CPU's name, the float32 agreement bounds, and the verdict on a target."""
from __future__ import annotations

import platform
import time

import numpy as np

from rnncore._ext import core, set_num_threads

# float32 agreement: |ours - theirs| <= ATOL + RTOL * (largest |theirs| in the array); the
# gradients of weights sum T*B products, so they are compared relative to their scale.
ATOL, RTOL = 1e-5, 1e-4


def both_threads(torch, threads):
    """The same thread count for rnncore and torch (torch None: rnncore only)."""
    set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)


def fma_peaks(threads_list):
    """{threads: GFLOP/s} of the machine now (rnncore._core.fma_peak): the yardstick each
    result's share of peak is stated against."""
    return {t: core.fma_peak(t, 0.3) for t in threads_list}


def median_times(fns, repeats, warmup=2, rounds=5):
    """Median time of each callable, alternating between them in `rounds` blocks.

    Blocks rather than single runs, with a pause before each: OpenMP runtimes (rnncore's,
    torch's, onnxruntime's) keep their threads spinning for a while after a parallel region, and
    a run started right after another library's would share the cores with those spinners."""
    for f in fns:
        for _ in range(warmup):
            f()
    per_round = max(1, -(-repeats // rounds))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            time.sleep(0.03)
            f()  # first run after the pause: caches and threads warm again
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def repeats_for(seconds_per_run, quick):
    budget = 0.6 if quick else 4.0
    return int(max(3, min(50, budget / max(seconds_per_run, 1e-6))))


def machine():
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
            f.seek(0)
            flags = next((l for l in f if l.startswith("flags")), "")
    except OSError:
        flags = ""
    isa = "AVX-512" if " avx512f" in flags else ("AVX2" if " avx2" in flags else "SSE")
    return model, isa


def verdict(ratio, target, threads):
    if target is None or threads != 2:
        return ""
    return "met" if ratio <= target else "missed"

