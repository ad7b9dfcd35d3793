"""`rnncore bench --competitors 1 2`: a machine whose cores are shared with other busy processes
(data loaders, other jobs), as users' machines are.

For each configuration of CONFIGS (the single-layer ones, or --only), each number of competitors
(0, then each N given: N processes that spin on their own, started beside the benchmark and
stopped after it), rnncore and torch run a training forward + backward at 1 thread and at 2
threads, alternating in blocks (median times). Printed per load: each library's 2-thread time
against its own 1-thread time under the same load (the target: rnncore <= 1.3x, so a second
thread never costs much even when it is descheduled), rnncore's 2-thread time against torch's,
and each library's slowdown against its own quiet time.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from rnncore.apps.bench.common import both_threads, machine, median_times
from rnncore.apps.bench.compare import torch_counterpart
from rnncore.apps.bench.configs import BUSY_CONFIGS, BUSY_TARGETS
from rnncore.nn.registry import make_module

_SPIN = "import time\nwhile True:\n    pass\n"


class Competitors:
    """N busy processes, each spinning on a core of its own choosing, while in the `with`."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(self.n)]
        time.sleep(0.2 if self.n else 0.0)  # let them start spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        return False


def _calls(torch, cell, T, B, H, rng):
    """{(library, threads): callable} of a training forward + backward on the same weights."""
    m = make_module(cell, H, H, seed=0)
    tm, other = torch_counterpart(torch, cell, m, 1, False)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    xt, dyt = torch.tensor(x, requires_grad=True), torch.tensor(dy)

    def ours():
        m.zero_grad()
        y, _ = m(x)
        m.backward(dy)

    def theirs():
        yt, _ = tm(xt)
        yt.backward(dyt)

    def with_threads(f, n):
        def run():
            both_threads(torch, n)
            f()
        return run

    return {(lib, n): with_threads(f, n) for lib, f in (("rnncore", ours), (other, theirs))
            for n in (1, 2)}, other


def _measure(calls, repeats):
    keys = list(calls)
    times = median_times([calls[k] for k in keys], repeats, warmup=1, rounds=3)
    return dict(zip(keys, times))


def run_busy(args):
    """Prints one line per configuration and load; returns the number of missed targets."""
    import torch  # optional: the library compared against
    loads = [0] + [n for n in args.competitors if n > 0]
    model, isa = machine()
    print(f"busy machine: {model} ({isa}); competitors {loads[1:]} busy processes; fwd+bwd, "
          "float32, median times; each ratio side by side in one run")
    rng = np.random.default_rng(0)
    configs = [c for c in BUSY_CONFIGS if not args.only or c[0].startswith(tuple(args.only))]
    failures = 0
    for cell, T, B, H in configs:
        calls, other = _calls(torch, cell, T, B, H, rng)
        probe = time.perf_counter()
        calls[("rnncore", 1)]()
        repeats = int(max(3, min(15, 1.5 / max(time.perf_counter() - probe, 1e-4))))
        quiet = None
        for load in loads:
            with Competitors(load):
                t = _measure(calls, repeats)
            quiet = quiet or t
            failures += _report(cell, T, B, H, load, t, quiet, other)
    return failures


def _report(cell, T, B, H, load, t, quiet, other):
    ours2, ours1 = t[("rnncore", 2)], t[("rnncore", 1)]
    theirs2, theirs1 = t[(other, 2)], t[(other, 1)]
    scale = ours2 / ours1
    line = (f"{cell:>5} T={T:<4d} B={B:<4d} H={H:<5d} competitors {load}: rnncore 2T "
            f"{ours2 * 1e3:8.2f} ms ({scale:4.2f}x its 1T, {ours2 / quiet[('rnncore', 2)]:5.2f}x "
            f"quiet) | {other} 2T {theirs2 * 1e3:8.2f} ms ({theirs2 / theirs1:4.2f}x its 1T, "
            f"{theirs2 / quiet[(other, 2)]:5.2f}x quiet) | rnncore/{other} {ours2 / theirs2:5.2f}")
    missed = []
    if load and scale > BUSY_TARGETS["own_one_thread"]:
        missed.append(f"2T > {BUSY_TARGETS['own_one_thread']}x 1T")
    if load and ours2 > theirs2:
        missed.append(f"slower than {other}")
    print(line + ("  MISSED: " + ", ".join(missed) if missed else ""), flush=True)
    return 1 if missed else 0
