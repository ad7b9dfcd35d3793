"""rnncore precision="bf16" against rnncore float32 and PyTorch 2.13's bf16 LSTM, time and error.

One configuration and one mode per run (each run stays near 20 s on 2 cores), e.g.
    python bench/bf16_compare.py --shape 100 64 256 --mode train --reps 5
Prints, per variant, the median of `reps` timed runs taken block-alternating (each block runs
every variant once, so a slow spell of the machine hits all of them alike), and the error of each
variant's results against rnncore float32's: max |a - a_fp32| / max |a_fp32| for y (inference) or
y, dx, dW_ih, dW_hh (training). Every variant is run, and its error computed, before it is timed.
PyTorch bf16 is the module and its input cast to torch.bfloat16 (its oneDNN bf16 LSTM).
Refuses to time while the 1-minute load average is at or above --max-load (other engineers
share the cores); waits up to --wait seconds for it to drop.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

import rnncore
from rnncore._ext import core as _core


def load_ok(max_load, wait):
    deadline = time.monotonic() + wait
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            return load
        if time.monotonic() >= deadline:
            return None
        time.sleep(5)


def rel(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def rnncore_variant(precision, params, x, dy, train):
    T, B, I = x.shape
    H = params["weight_hh_l0"].shape[1]
    st = _core.Stack("lstm", I, H, 1, False, np.float32, precision)
    grads = {k: np.zeros_like(v) for k, v in params.items()}

    def run():
        y, _, _ = st.forward(x, params, training=train)
        if not train:
            return {"y": y}
        dx, _, _ = st.backward(dy, params, grads, None, None)
        return {"y": y, "dx": dx, "dW_ih": grads["weight_ih_l0"].copy(),
                "dW_hh": grads["weight_hh_l0"].copy()}

    def timed():
        for g in grads.values():
            g.fill(0)
        return run()
    return timed


def torch_variant(params, x, dy, train, dtype):
    import torch
    T, B, I = x.shape
    H = params["weight_hh_l0"].shape[1]
    lstm = torch.nn.LSTM(I, H)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
    lstm = lstm.to(dtype)
    xt = torch.from_numpy(x).to(dtype)
    dyt = torch.from_numpy(dy).to(dtype)

    def run():
        if not train:
            with torch.inference_mode():
                return {"y": lstm(xt)[0].float().numpy()}
        lstm.zero_grad(set_to_none=True)
        xg = xt.detach().requires_grad_(True)
        y = lstm(xg)[0]
        y.backward(dyt)
        return {"y": y.detach().float().numpy(), "dx": xg.grad.float().numpy(),
                "dW_ih": lstm.weight_ih_l0.grad.float().numpy(),
                "dW_hh": lstm.weight_hh_l0.grad.float().numpy()}
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, metavar=("T", "B", "H"), default=(100, 64, 256),
                    help="LSTM seq_len, batch, hidden size (= input size)")
    ap.add_argument("--mode", choices=("infer", "train"), default="infer")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-load", type=float, default=3.0)
    ap.add_argument("--wait", type=float, default=300.0)
    ap.add_argument("--no-torch", action="store_true", help="rnncore only")
    ap.add_argument("--no-torch-fp32", action="store_true",
                    help="skip torch float32 (only a cross-check of rnncore float32)")
    args = ap.parse_args(argv)

    T, B, H = args.shape
    train = args.mode == "train"
    rnncore.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    params = rnncore.LSTM(H, H, seed=0).params
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)

    variants = {"rnncore fp32": rnncore_variant("float32", params, x, dy, train),
                "rnncore bf16": rnncore_variant("bf16", params, x, dy, train)}
    if not args.no_torch:
        import torch
        torch.set_num_threads(args.threads)
        if not args.no_torch_fp32:
            variants["torch fp32"] = torch_variant(params, x, dy, train, torch.float32)
        variants["torch bf16"] = torch_variant(params, x, dy, train, torch.bfloat16)

    print(f"LSTM T={T} B={B} I=H={H} {args.mode}, {args.threads} threads, bf16 kernel "
          f"{_core.bf16_kernel()}")
    # Checked before timed: every variant's results against rnncore float32's.
    results = {name: run() for name, run in variants.items()}
    ref = {k: v.astype(np.float64) for k, v in results["rnncore fp32"].items()}
    errors = {name: {k: rel(r[k], ref[k]) for k in ref} for name, r in results.items()}
    if errors["torch fp32" if "torch fp32" in errors else "rnncore fp32"]["y"] > 1e-4:
        sys.exit(f"float32 results disagree: {errors}")

    load = load_ok(args.max_load, args.wait)
    if load is None:
        sys.exit(f"load average stayed >= {args.max_load}: not timing")
    times = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    end_load = os.getloadavg()[0]
    base = statistics.median(times["rnncore fp32"])
    print(f"load average {load:.2f} at start, {end_load:.2f} at end; medians of {args.reps}")
    print(f"{'variant':14} {'ms':>9} {'fp32/this':>10}  errors vs rnncore fp32 "
          "(max|a-a_fp32|/max|a_fp32|)")
    for name in variants:
        med = statistics.median(times[name])
        err = "  ".join(f"{k} {v:.2e}" for k, v in errors[name].items())
        print(f"{name:14} {med * 1e3:9.1f} {base / med:10.2f}  {err}")
    if "torch bf16" in times:
        print(f"rnncore bf16 / torch bf16 time: "
              f"{statistics.median(times['rnncore bf16']) / statistics.median(times['torch bf16']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
