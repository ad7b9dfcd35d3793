"""`rnncore bench --memory`: inference memory against T, and the training workspace against
its formula, each measured in a fresh child process (peak RSS)."""
from __future__ import annotations

import subprocess
import sys

MEMORY_CHILD = r"""
import resource, sys, numpy as np, rnncore
T, train = int(sys.argv[1]), sys.argv[2] == "train"
H, B = 256, 1
m = rnncore.LSTM(H, H, seed=0)
x = np.zeros((T, B, H), np.float32)
if not train:
    m.eval()
    m(x[:2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y, _ = m(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, y.nbytes)
"""


def memory():
    print("Inference: peak RSS growth of one eval-mode LSTM forward (B=1, H=256), beyond its output")
    for T in (1_000, 100_000):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(T), "eval"],
                             capture_output=True, text=True, check=True).stdout.split()
        before, after, ybytes = (int(v) for v in out)
        print(f"  T={T:>7,d}: RSS +{(after - before) / 1024:8.1f} MiB; output y {ybytes / 2**20:8.1f} MiB; "
              f"beyond y {max(0, (after - before) * 1024 - ybytes) / 2**20:6.1f} MiB")
    print("Training: workspace of one LSTM training forward (B=1, H=256, I=256), formula vs measured")
    T = 20_000
    N, I, H, S, B = T, 256, 256, 4, 1
    formula = 4 * (N * (I + (S + 1) * H) + B * H + (N + B) * H)
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(T), "train"],
                         capture_output=True, text=True, check=True).stdout.split()
    before, after, ybytes = (int(v) for v in out)
    print(f"  T={T:,d}: formula N*(I+(S+1)*H) + B*H + (N+B)*H floats = {formula / 2**20:.1f} MiB; "
          f"measured RSS growth {(after - before) / 1024:.1f} MiB (includes y, {ybytes / 2**20:.1f} MiB)")
