"""Builds of rnncore side by side: e.g. the portable default (one engine per instruction-set
level, chosen at import) against a `RNNCORE_SIMD=native` build of the same source, one level
forced with RNNCORE_ISA against another, or a build of an earlier commit. Each configuration of
bench's CONFIGS (forward, and forward + backward, float32) is timed in a child process per build,
the builds alternating in rounds; the median of each is printed with the ratio to the first.

    python bench/isa_compare.py PKG_A PKG_B [PKG_C ...] [--threads 2] [--rounds 5]
    python bench/isa_compare.py PKG PKG:RNNCORE_ISA=avx2      # two levels of one build

PKG is the folder that holds the `rnncore` package of a build (site-packages of an install, or
python/ of a checkout with its compiled modules copied in), optionally followed by
:VAR=VALUE,... for its children's environment. Only public names are used, so builds from
before the package's reorganisation work too.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import rnncore
from rnncore.benchmark import CONFIGS
try:
    from rnncore.nn.registry import make_module
except ImportError:  # a build from before the package's reorganisation
    from rnncore._registry import make_module
threads, only = int(sys.argv[1]), sys.argv[2].split(",") if sys.argv[2] else None
rnncore.set_num_threads(threads)
rng = np.random.default_rng(0)
level = rnncore.cpu_info()["level"] if hasattr(rnncore, "cpu_info") else "one build level"
out = {"level": level, "times": {}}
for c in CONFIGS:
    if len(c) != 6 or (only and not c[0].startswith(tuple(only))):
        continue
    cell, T, B, H = c[:4]
    m = make_module(cell, H, H, seed=0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    def fwd():
        m.eval(); m(x)
    def fb():
        m.train(); m.zero_grad(); y, _ = m(x); m.backward(dy)
    for name, f in (("fwd", fwd), ("fwd+bwd", fb)):
        f()
        t0 = time.perf_counter(); f(); once = time.perf_counter() - t0
        n = int(max(3, min(30, 0.4 / max(once, 1e-6))))
        ts = []
        for _ in range(n):
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        out["times"][f"{cell} T={T} B={B} H={H} {name}"] = float(np.median(ts))
print(json.dumps(out))
"""


def run(pkg, env_extra, threads, only):
    env = dict(os.environ, PYTHONPATH=pkg, **env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), ",".join(only or [])],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", help="PKG[:VAR=VALUE,...] per build, the first the base")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="+", help="registry cells (prefix match)")
    args = ap.parse_args()
    builds = []
    for spec in args.builds:
        pkg, _, env = spec.partition(":")
        builds.append((pkg, dict(e.split("=", 1) for e in env.split(",") if e)))
    results = [[] for _ in builds]
    for _ in range(args.rounds):
        for i, (pkg, env) in enumerate(builds):
            results[i].append(run(pkg, env, args.threads, args.only))
    for i, spec in enumerate(args.builds):
        print(f"build {i}: {spec} ({results[i][0]['level']})")
    print(f"{args.threads} threads, median of {args.rounds} rounds (each a median of its runs); "
          "ratios to build 0")
    worst = [0.0] * len(builds)
    for key in results[0][0]["times"]:
        med = [sorted(r["times"][key] for r in res)[len(res) // 2] for res in results]
        cols = "  ".join(f"{m * 1e3:9.3f} ms" + (f" ({m / med[0]:5.3f})" if i else "")
                         for i, m in enumerate(med))
        worst = [max(w, m / med[0]) for w, m in zip(worst, med)]
        print(f"{key:<34} {cols}")
    print("largest ratio to build 0: " + ", ".join(f"build {i} {w:.3f}"
                                                  for i, w in enumerate(worst) if i))


if __name__ == "__main__":
    main()
