"""Step loop of rnncore.torch.LSTMCell against torch.nn.LSTMCell (same weights), per step.

    PYTHONPATH=python python examples/torch_cell_bench.py [--threads 1] [--steps 200]

Prints the time per step of forward (no_grad) and forward+backward (a T-step loop, then one
backward), for B=1 H=32 and B=64 H=256 (I = H), and the ratio rnncore / torch (< 1: faster).
Both run interleaved in one process, so a busy machine slows both alike."""
import argparse
import time

import torch

import rnncore
import rnncore.torch as rt


def loop(cell, x, train):
    h = None
    for t in range(x.shape[0]):
        h = cell(x[t], h)
    if train:
        (h[0].sum() + h[1].sum()).backward()


def best(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rnncore.set_num_threads(args.threads)
    T = args.steps
    for B, H in ((1, 32), (64, 256)):
        torch.manual_seed(0)
        theirs = torch.nn.LSTMCell(H, H)
        ours = rt.LSTMCell(H, H)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(T, B, H)
        for train in (False, True):
            res = {}
            for name, cell in (("torch", theirs), ("rnncore", ours)):
                def fn():
                    if train:
                        loop(cell, x, True)
                    else:
                        with torch.no_grad():
                            loop(cell, x, False)
                fn()
                res[name] = best(fn, args.reps) / T
            what = "fwd+bwd" if train else "fwd    "
            print(f"B={B:3d} H={H:3d} {what}: torch.nn {res['torch'] * 1e6:8.1f} us/step, "
                  f"rnncore {res['rnncore'] * 1e6:8.1f} us/step, ratio "
                  f"{res['rnncore'] / res['torch']:.2f}")


if __name__ == "__main__":
    main()
