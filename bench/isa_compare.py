"""Two builds of rnncore side by side: e.g. the portable default (one engine per instruction-set
level, chosen at import) against a `RNNCORE_SIMD=native` build of the same source, or one level
forced with RNNCORE_ISA against another. Each configuration of bench's CONFIGS (forward, and
forward + backward, float32) is timed in a child process per build, the builds alternating in
rounds; the median of each is printed with the ratio B / A.

    python bench/isa_compare.py --a PKG_DIR_A --b PKG_DIR_B [--threads 2] [--rounds 5]
    python bench/isa_compare.py --a PKG --b PKG --b-env RNNCORE_ISA=avx2   # two levels, one build

PKG_DIR is the folder that holds the `rnncore` package of a build (site-packages of an install,
or python/ of a checkout with its compiled modules copied in).
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
from rnncore.apps.bench.configs import CONFIGS
from rnncore.nn.registry import make_module
threads, only = int(sys.argv[1]), sys.argv[2].split(",") if sys.argv[2] else None
rnncore.set_num_threads(threads)
rng = np.random.default_rng(0)
out = {"level": rnncore.cpu_info()["level"], "times": {}}
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
    ap.add_argument("--a", required=True, help="package folder of build A")
    ap.add_argument("--b", required=True, help="package folder of build B")
    ap.add_argument("--a-env", nargs="*", default=[], help="VAR=VALUE for A's children")
    ap.add_argument("--b-env", nargs="*", default=[], help="VAR=VALUE for B's children")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="+", help="registry cells (prefix match)")
    args = ap.parse_args()
    envs = [dict(e.split("=", 1) for e in args.a_env), dict(e.split("=", 1) for e in args.b_env)]
    results = [[], []]
    for _ in range(args.rounds):
        for i, pkg in enumerate((args.a, args.b)):
            results[i].append(run(pkg, envs[i], args.threads, args.only))
    levels = [r[0]["level"] for r in results]
    print(f"A = {args.a} ({levels[0]}), B = {args.b} ({levels[1]}); {args.threads} threads, "
          f"median of {args.rounds} rounds (each a median of its runs)")
    worst = 0.0
    for key in results[0][0]["times"]:
        med = [sorted(r[key] for r in (x["times"] for x in res))[len(res) // 2] for res in results]
        ratio = med[1] / med[0]
        worst = max(worst, ratio)
        print(f"{key:<34} A {med[0] * 1e3:9.3f} ms  B {med[1] * 1e3:9.3f} ms  B/A {ratio:5.3f}")
    print(f"largest B/A: {worst:.3f}")


if __name__ == "__main__":
    main()
