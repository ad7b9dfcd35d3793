"""The main comparison of `rnncore bench`: every configuration of CONFIGS in rnncore and in
torch (a torch.nn module, or a torch loop for a cell torch.nn lacks), checked to agree before it
is timed, training and inference, onnxruntime for inference; one line per result and a
Markdown table (--markdown)."""
from __future__ import annotations

import datetime
import os
import platform
import tempfile
import time
import warnings

import numpy as np

from rnncore._ext import __version__
from rnncore.apps.bench.common import (
    ATOL,
    RTOL,
    both_threads,
    fma_peaks,
    machine,
    median_times,
    repeats_for,
    verdict,
)
from rnncore.apps.bench.configs import (
    CONFIGS,
    ONNX_TARGET,
    PEAK_CONFIGS,
    PEAK_TARGET,
    TORCH_LOOP_CELLS,
)
from rnncore.nn.registry import make_module
from rnncore.testing.torch_twin import torch_twin  # the tests' rule: one place for both


class TorchPeepholeLSTM:
    """The Python loop of tensor ops a PyTorch user writes today for a peephole LSTM (one layer,
    one direction)."""
    cell = TORCH_LOOP_CELLS["TorchPeepholeLSTM"]

    def __init__(self, torch, m):
        self.torch = torch
        p = {k: torch.tensor(v, requires_grad=True) for k, v in m.params.items()}
        self.p = p
        self.H = m.hidden_size

    def __call__(self, x):
        torch, p, H = self.torch, self.p, self.H
        T, B, _ = x.shape
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        gx = x @ p["weight_ih_l0"].T + p["bias_ih_l0"] + p["bias_hh_l0"]
        w_hh, peep = p["weight_hh_l0"], p["weight_peephole_l0"]
        ys = []
        for t in range(T):
            a = gx[t] + h @ w_hh.T
            i = torch.sigmoid(a[:, :H] + peep[0] * c)
            f = torch.sigmoid(a[:, H:2 * H] + peep[1] * c)
            g = torch.tanh(a[:, 2 * H:3 * H])
            c = f * c + i * g
            o = torch.sigmoid(a[:, 3 * H:] + peep[2] * c)
            h = o * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys), (h, c)


# Torch loops for registry cells torch.nn has no module for, each naming the cell it computes.
TORCH_LOOPS = (TorchPeepholeLSTM,)


def torch_counterpart(torch, cell, m, L, bidir):
    """(torch module or loop, label) computing the same as rnncore module m, same weights."""
    twin = torch_twin(cell)
    if twin is not None:
        cls, kwargs = twin
        tm = cls(m.input_size, m.hidden_size, num_layers=L, bidirectional=bidir, **kwargs)
        m.load_state_dict(tm.state_dict())
        return tm, "torch"
    for loop in TORCH_LOOPS:
        if loop.cell == cell and L == 1 and not bidir:
            return loop(torch, m), "torch loop"
    raise SystemExit(f"compare.py: no torch counterpart for {cell} (num_layers={L}, "
                     f"bidirectional={bidir})")


def check_agreement(torch, m, tm, other, x, dy, label):
    """One training forward + backward in both; SystemExit naming the first quantity that
    differs beyond float32 tolerance."""
    m.train()
    m.zero_grad()
    y, state = m(x)
    dx, _ = m.backward(dy)
    h_n = state[0] if isinstance(state, tuple) else state
    xt = torch.tensor(x, requires_grad=True)
    params = dict(tm.named_parameters()) if other == "torch" else tm.p
    for p in params.values():
        p.grad = None
    yt, st = tm(xt)
    yt.backward(torch.tensor(dy))
    ht = st[0] if isinstance(st, tuple) else st
    pairs = [("y", y, yt), ("h_n", h_n, ht.reshape(h_n.shape)), ("dx", dx, xt.grad)]
    pairs += [(f"grad {name}", m.grads[name], p.grad) for name, p in params.items()]
    for name, ours, theirs in pairs:
        theirs = theirs.detach().numpy()
        err = float(np.abs(ours - theirs).max())
        bound = ATOL + RTOL * float(np.abs(theirs).max())
        if not err <= bound:
            raise SystemExit(f"compare.py: rnncore and {other} disagree on {label}: {name} differs "
                             f"by {err:.3g} (allowed {bound:.3g}); not timing a wrong result")
    m.zero_grad()


def onnx_session(torch, tm, x, threads):
    import onnxruntime as ort  # optional: onnxruntime (the other runtime timed)
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tm, (torch.tensor(x),), path, input_names=["x"],
                          output_names=["y", "h"], opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Without this its worker threads spin after every run and take the cores from whatever
    # runs next (rnncore, in an alternating comparison).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def run_comparison(args):
    import torch  # optional: torch (rnncore[torch]), the other side of the comparison
    peaks = fma_peaks(args.threads)
    print("FMA peak now: " + ", ".join(f"{t} thread{'s' * (t > 1)} {g:.0f} GFLOP/s"
                                      for t, g in peaks.items()), flush=True)
    args.peaks = peaks
    rows = []
    for cell, T, B, H, target_fb, target_f, *stack in CONFIGS:
        if args.only and not any(cell == o or cell.startswith(o) for o in args.only):
            continue
        if args.quick and H >= 1024:
            continue
        rows += _compare_config(torch, args, peaks, cell, T, B, H, (target_fb, target_f),
                                stack or (1, False))
    # The peak again at the end: a slice of time in which another process held a core makes one
    # measurement low, so each thread count's yardstick is the higher of the two.
    again = fma_peaks(args.threads)
    print("FMA peak at the end: " + ", ".join(f"{t}: {g:.0f}" for t, g in again.items())
          + " GFLOP/s; shares are against the higher of the two measurements", flush=True)
    for t in peaks:
        peaks[t] = max(peaks[t], again[t])
    for row in rows:
        row["peak"] = peaks[row["threads"]]
    return rows


def _compare_config(torch, args, peaks, cell, T, B, H, targets, stack):
    """One configuration: agreement at the first thread count, then a row per thread count."""
    L, bidir = stack
    D = 2 if bidir else 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, D * H)).astype(np.float32)
    m = make_module(cell, H, H, num_layers=L, bidirectional=bidir, seed=0)
    tm, other = torch_counterpart(torch, cell, m, L, bidir)
    both_threads(torch, args.threads[0])
    check_agreement(torch, m, tm, other, x, dy, f"{cell} T={T} B={B} H={H} layers={L}"
                    f"{' bidirectional' if bidir else ''}")
    gates = m.params["weight_hh_l0"].shape[0] // H
    flops = sum(2.0 * T * B * D * gates * H * ((H if layer == 0 else D * H) + H)
                for layer in range(L))
    rows = []
    for threads in args.threads:
        both_threads(torch, threads)
        row = {"cell": cell + ("" if L == 1 else f" x{L}") + (" bidir" if bidir else ""),
               "T": T, "B": B, "H": H, "threads": threads, "other": other,
               "peak": peaks[threads],
               "peak_target": PEAK_TARGET if (cell, T, B, H) in PEAK_CONFIGS and L == 1 else None}
        _time_row(row, torch, args, m, tm, x, dy, flops, targets)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def _time_row(row, torch, args, m, tm, x, dy, flops, targets):
    """Times rnncore against torch (and onnxruntime) into `row`: training, and inference where
    the other side is a torch.nn module (the torch loop of the peephole LSTM trains only)."""
    target_fb, target_f = targets
    xt = torch.tensor(x, requires_grad=True)
    dyt = torch.tensor(dy)

    def r_fwd():
        m.eval()
        m(x)

    def r_fb():
        m.train()
        y, _ = m(x)
        m.backward(dy)

    def t_fwd():
        with torch.no_grad():
            tm(xt)

    def t_fb():
        y, _ = tm(xt)
        y.backward(dyt)

    t0 = time.perf_counter()
    r_fb()
    reps = repeats_for(time.perf_counter() - t0, args.quick)
    rf_b, tf_b = median_times([r_fb, t_fb], reps)
    row["fb"], row["gflops_fb"] = (rf_b, tf_b, target_fb), 3 * flops / rf_b / 1e9
    if row["other"] != "torch":
        return
    rf, tf = median_times([r_fwd, t_fwd], reps)
    row["f"], row["gflops_f"] = (rf, tf, target_f), flops / rf / 1e9
    if not args.no_onnx:
        try:
            o_fwd = onnx_session(torch, tm, x, row["threads"])
            rf2, of = median_times([r_fwd, o_fwd], reps)
            row["onnx"] = (rf2, of, ONNX_TARGET)
            del o_fwd
        except Exception as e:  # export or runtime not available
            row["onnx_error"] = f"{type(e).__name__}: {e}"[:120]


def format_row(r):
    s = f"{r['cell']:20s} T={r['T']:<4d} B={r['B']:<4d} H={r['H']:<5d} threads={r['threads']}"
    a, b, tgt = r["fb"]
    s += f" | fwd+bwd {a * 1e3:9.3f} ms vs {r['other']} {b * 1e3:9.3f} ms ratio {a / b:5.2f}"
    if "f" in r:
        a, b, tgt = r["f"]
        s += f" | fwd {a * 1e3:9.3f} ms vs {b * 1e3:9.3f} ms ratio {a / b:5.2f}"
    if "onnx" in r:
        a, b, _ = r["onnx"]
        s += f" | onnxruntime {b * 1e3:8.3f} ms ratio {a / b:5.2f}"
    s += f" | peak share fwd+bwd {r['gflops_fb'] / r['peak']:.0%}"
    if "gflops_f" in r:
        s += f", fwd {r['gflops_f'] / r['peak']:.0%}"
    return s


def write_markdown(rows, path, args):
    import torch  # optional: torch, whose version the table states
    try:
        import onnxruntime  # optional: onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    model, isa = machine()
    lines = [
        "# rnncore vs PyTorch and onnxruntime",
        "",
        f"Measured {datetime.date.today().isoformat()} with `python bench/compare.py"
        f"{' --quick' if args.quick else ''}` on {model} ({os.cpu_count()} cores, {isa}); "
        f"rnncore {__version__}, torch {torch.__version__}, onnxruntime {ort_version}, "
        f"numpy {np.__version__}, Python {platform.python_version()}. float32, I = H; times are "
        "medians of alternating runs; ratio = rnncore / other (lower is better for rnncore). "
        "Targets apply at 2 threads.",
        "",
        "FMA peak (rnncore._core.fma_peak, the higher of two measurements at the start and the end "
        "of the run): " + ", ".join(
            f"{t} thread{'s' * (t > 1)} {g:.0f} GFLOP/s" for t, g in getattr(args, "peaks", {}).items())
        + f"; share = GEMM GFLOP/s / that peak (target {PEAK_TARGET:.0%} where marked).",
        "",
        "| cell | T | B | H | threads | fwd+bwd ms (rnncore / other) | ratio | target | "
        "fwd ms (rnncore / other) | ratio | target | GFLOP/s fwd, fwd+bwd | share of peak fwd, fwd+bwd | "
        "onnxruntime fwd ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b, t = r["fb"]
        fb = f"{a * 1e3:.3f} / {b * 1e3:.3f} ({r['other']}) | {a / b:.2f} | "
        fb += f"<= {t} {verdict(a / b, t, r['threads'])}" if r["threads"] == 2 and t else ""
        if "f" in r:
            a2, b2, t2 = r["f"]
            f = f"{a2 * 1e3:.3f} / {b2 * 1e3:.3f} | {a2 / b2:.2f} | "
            f += f"<= {t2} {verdict(a2 / b2, t2, r['threads'])}" if r["threads"] == 2 and t2 else ""
            gf = f"{r['gflops_f']:.0f}, {r['gflops_fb']:.0f}"
        else:
            f, gf = "— | — | ", f"—, {r['gflops_fb']:.0f}"
        if "onnx" in r:
            a3, b3, t3 = r["onnx"]
            o = f"{b3 * 1e3:.3f} | {a3 / b3:.2f}" + (f" ({verdict(a3 / b3, t3, r['threads'])} <= {t3})" if r["threads"] == 2 else "")
        else:
            o = "— | " + r.get("onnx_error", "—").replace("|", "/")
        share = (f"{r['gflops_f'] / r['peak']:.0%}, " if "gflops_f" in r else "—, ") + \
            f"{r['gflops_fb'] / r['peak']:.0%}"
        if r.get("peak_target") and r["threads"] == 2:
            ok = min(r.get("gflops_f", 1e30), r["gflops_fb"]) / r["peak"] >= r["peak_target"]
            share += f" (>= {r['peak_target']:.0%} {'met' if ok else 'missed'})"
        lines.append(f"| {r['cell']} | {r['T']} | {r['B']} | {r['H']} | {r['threads']} | {fb} | {f} | {gf} | {share} | {o} |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
