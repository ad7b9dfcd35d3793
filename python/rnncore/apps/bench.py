"""rnncore side by side with PyTorch (and onnxruntime for inference), in one process.

    rnncore bench                                 # all configs, 1 and 2 threads
    rnncore bench --quick --only lstm             # a fast smoke run
    rnncore bench --markdown bench/RESULTS.md
    rnncore bench --memory                        # inference memory vs T, training workspace
(`python bench/compare.py ...` is the same from a source checkout.)

Runs alternate between the libraries in blocks (rnncore, torch, rnncore, ...; a short pause
before each block lets the other runtime's spinning threads go idle), and each time is the
median of all runs. float32, input_size = hidden_size. "fwd" is inference
(rnncore in eval mode, torch under no_grad); "fwd+bwd" a training forward plus backward with a
random output gradient (torch: autograd with requires_grad input). Ratios are rnncore / other:
lower is better for rnncore. GFLOP/s counts the GEMM work only: forward 2*T*B*G*H*(I+H), backward
twice that.

Before timing a config, its rnncore module (built by rnncore._registry.make_module) and its
torch counterpart (the torch.nn class the tests' rule in rnncore/_torch_twin.py picks, or the torch
loop written for a cell torch lacks) run once on the same weights and data; outputs and
gradients must agree within float32 tolerance, or the run stops with a message.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from rnncore.testing.torch_twin import torch_twin  # the tests' rule: one place for both

# (registry cell, T, B, H) and the target ratios (fwd+bwd, fwd) at 2 threads from the performance issue;
# then stacks (cell, T, B, H, targets, num_layers, bidirectional), which the stack driver runs.
CONFIGS = [
    ("lstm", 50, 128, 1024, 0.8, 0.8),
    ("gru", 50, 128, 1024, 0.8, 0.8),
    ("lstm", 100, 64, 256, 0.8, 0.8),
    ("gru", 100, 64, 256, 0.8, 0.8),
    ("lstm", 25, 32, 512, 0.8, 0.8),    # DeepBench
    ("gru", 25, 32, 512, 0.8, 0.8),
    ("gru", 300, 20, 800, None, None),  # DeepSpeech2's recurrent layers (H = 800)
    ("lstm", 100, 16, 128, 0.3, 0.3),
    ("gru", 100, 16, 128, 0.3, 0.3),
    ("rnn_tanh", 100, 16, 128, 0.3, 0.3),
    ("lstm", 200, 1, 256, 0.3, 0.3),
    ("lstm", 100, 1, 32, 0.05, 0.05),
    ("gru", 100, 1, 32, 0.05, 0.05),
    ("peephole_lstm", 100, 64, 256, 0.4, None),
    ("lstm", 100, 16, 128, None, None, 2, True),
    ("gru", 100, 64, 256, None, None, 2, True),
]
ONNX_TARGET = 0.8
# Share of the FMA peak (measured in the same run) targeted at these (cell, T, B, H), 2 threads.
PEAK_TARGET = 0.8
PEAK_CONFIGS = {(c, T, B, H) for c in ("lstm", "gru")
                for T, B, H in ((50, 128, 1024), (100, 64, 256), (25, 32, 512))}


def fma_peaks(threads_list):
    """{threads: GFLOP/s} of the machine now (rnncore._core.fma_peak): the yardstick each
    result's share of peak is stated against."""
    from rnncore._ext import core
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


class TorchPeepholeLSTM:
    """The Python loop of tensor ops a PyTorch user writes today for a peephole LSTM (one layer,
    one direction)."""
    cell = "peephole_lstm"

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

# float32 agreement: |ours - theirs| <= ATOL + RTOL * (largest |theirs| in the array); the
# gradients of weights sum T*B products, so they are compared relative to their scale.
ATOL, RTOL = 1e-5, 1e-4


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
    import warnings

    import onnxruntime as ort
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
    import rnncore
    import torch
    from rnncore.nn.registry import make_module
    rows = []
    peaks = fma_peaks(args.threads)
    print("FMA peak now: " + ", ".join(f"{t} thread{'s' * (t > 1)} {g:.0f} GFLOP/s"
                                      for t, g in peaks.items()), flush=True)
    args.peaks = peaks
    for cell, T, B, H, target_fb, target_f, *stack in CONFIGS:
        L, bidir = stack or (1, False)
        D = 2 if bidir else 1
        if args.only and not any(cell == o or cell.startswith(o) for o in args.only):
            continue
        if args.quick and H >= 1024:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, H)).astype(np.float32)
        dy = rng.standard_normal((T, B, D * H)).astype(np.float32)
        m = make_module(cell, H, H, num_layers=L, bidirectional=bidir, seed=0)
        tm, other = torch_counterpart(torch, cell, m, L, bidir)
        xt = torch.tensor(x, requires_grad=True)
        dyt = torch.tensor(dy)
        torch.set_num_threads(args.threads[0])
        rnncore.set_num_threads(args.threads[0])
        check_agreement(torch, m, tm, other, x, dy, f"{cell} T={T} B={B} H={H} layers={L}"
                        f"{' bidirectional' if bidir else ''}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            rnncore.set_num_threads(threads)

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
            gates = m.params["weight_hh_l0"].shape[0] // H
            flops = sum(2.0 * T * B * D * gates * H * ((H if layer == 0 else D * H) + H)
                        for layer in range(L))
            rf_b, tf_b = median_times([r_fb, t_fb], reps)
            row = {"cell": cell + ("" if L == 1 else f" x{L}") + (" bidir" if bidir else ""),
                   "T": T, "B": B, "H": H, "threads": threads, "other": other,
                   "fb": (rf_b, tf_b, target_fb), "gflops_fb": 3 * flops / rf_b / 1e9,
                   "peak": peaks[threads],
                   "peak_target": PEAK_TARGET if (cell, T, B, H) in PEAK_CONFIGS and L == 1 else None}
            if other == "torch":  # the torch loop of the peephole LSTM is timed for training only
                rf, tf = median_times([r_fwd, t_fwd], reps)
                row["f"] = (rf, tf, target_f)
                row["gflops_f"] = flops / rf / 1e9
                if not args.no_onnx:
                    try:
                        o_fwd = onnx_session(torch, tm, x, threads)
                        rf2, of = median_times([r_fwd, o_fwd], reps)
                        row["onnx"] = (rf2, of, ONNX_TARGET)
                        del o_fwd
                    except Exception as e:  # export or runtime not available
                        row["onnx_error"] = f"{type(e).__name__}: {e}"[:120]
            rows.append(row)
            print(format_row(row), flush=True)
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


def verdict(ratio, target, threads):
    if target is None or threads != 2:
        return ""
    return "met" if ratio <= target else "missed"


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


def write_markdown(rows, path, args):
    import rnncore
    import torch
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    model, isa = machine()
    lines = [
        "# rnncore vs PyTorch and onnxruntime",
        "",
        f"Measured {datetime.date.today().isoformat()} with `python bench/compare.py"
        f"{' --quick' if args.quick else ''}` on {model} ({os.cpu_count()} cores, {isa}); "
        f"rnncore {rnncore.__version__}, torch {torch.__version__}, onnxruntime {ort_version}, "
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


# ---- end-to-end: the character language model against the same model in PyTorch ----------------

LM = dict(embed=64, hidden=256, layers=2, batch=32, bptt=64, lr=2e-3, clip=1.0)
LM_TARGETS = {"lstm": 0.8, "gru": 0.6}  # rnncore / torch time per update (the training issue)


def _torch_lm(torch, model, cell):
    """The same network in torch.nn, with rnncore's initial weights copied in."""
    V, E, H, L = (model.config[k] for k in ("vocab_size", "embed", "hidden", "layers"))
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    net = torch.nn.ModuleDict({"embed": torch.nn.Embedding(V, E), "rnn": rnn_cls(E, H, L),
                               "head": torch.nn.Linear(H, V)})
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(model.params[name]))
    return net


def _torch_step(torch, net, opt, x, y, state, clip):
    """One TBPTT update of the torch model; returns (loss, detached state)."""
    opt.zero_grad()
    out, state = net["rnn"](net["embed"](x), state)
    logits = net["head"](out)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return float(loss.detach()), state


def _profile_rnncore_update(model, opt, x, y, clip, repeats=20):
    """Seconds per update in each part: the recurrent core, the embedding, the read-out with
    softmax cross-entropy, clipping + Adam (medians over `repeats` updates)."""
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import clip_grad_norm
    parts = {"core (LSTM/GRU fwd+bwd)": [], "embedding fwd+bwd": [],
             "read-out + softmax CE fwd+bwd": [], "clip + Adam": []}
    keys = list(parts)
    for _ in range(repeats):
        t = [time.perf_counter()]
        e = model.embed(x); t.append(time.perf_counter())
        h, _ = model.rnn(e); t.append(time.perf_counter())
        logits = model.head(h)
        loss, d = cross_entropy(logits, y)
        model.zero_grad()
        dh = model.head.backward(d); t.append(time.perf_counter())
        de, _ = model.rnn.backward(dh); t.append(time.perf_counter())
        model.embed.backward(de); t.append(time.perf_counter())
        clip_grad_norm(model, clip)
        opt.step(); t.append(time.perf_counter())
        parts[keys[1]].append((t[1] - t[0]) + (t[5] - t[4]))
        parts[keys[0]].append((t[2] - t[1]) + (t[4] - t[3]))
        parts[keys[2]].append(t[3] - t[2])
        parts[keys[3]].append(t[6] - t[5])
    return {k: float(np.median(v)) for k, v in parts.items()}


def run_lm(args):
    """rnncore's language model against torch's, same data, same initial weights, 2 threads,
    updates alternating in blocks; then validation loss after the same number of updates."""
    import rnncore
    import torch
    from rnncore.apps.lm import LanguageModel, Vocabulary, default_corpus
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import Adam, clip_grad_norm
    from rnncore.train.tbptt import batchify, evaluate, truncated_bptt

    threads = max(args.threads)
    rnncore.set_num_threads(threads)
    torch.set_num_threads(threads)
    text, source = default_corpus(args.lm_chars)
    split = int(len(text) * 0.95)
    vocab = Vocabulary.from_text(text[:split], "char")
    train = batchify(vocab.encode(text[:split]), LM["batch"])
    val = batchify(vocab.encode(text[split:]), LM["batch"])[:1025]
    k = LM["bptt"]
    steps, block = min(args.lm_steps, (len(train) - 1) // k), 10
    print(f"language model: {source}; vocabulary {len(vocab)}; embedding {LM['embed']}, "
          f"{LM['layers']} x {LM['hidden']}, batch {LM['batch']}, chunk {k}, Adam lr {LM['lr']}, "
          f"clip {LM['clip']}; {steps} updates each, alternating blocks of {block}; "
          f"{threads} threads")
    rows = []
    for cell in args.lm_cells:
        model = LanguageModel(len(vocab), LM["embed"], LM["hidden"], LM["layers"], cell, seed=0)
        net = _torch_lm(torch, model, cell)
        ropt = Adam(model, lr=LM["lr"])
        topt = torch.optim.Adam(net.parameters(), lr=LM["lr"])
        updates = truncated_bptt(model, cross_entropy, train[:-1], train[1:], k1=k)
        tx = torch.from_numpy(train)
        tstate, tpos = None, 0
        times = {"rnncore": [], "torch": []}
        done = 0
        while done < steps:
            n = min(block, steps - done)
            time.sleep(0.03)
            for _ in range(n):
                t0 = time.perf_counter()
                next(updates)
                clip_grad_norm(model, LM["clip"])
                ropt.step()
                times["rnncore"].append(time.perf_counter() - t0)
            time.sleep(0.03)
            for _ in range(n):
                t0 = time.perf_counter()
                _, tstate = _torch_step(torch, net, topt, tx[tpos:tpos + k], tx[tpos + 1:tpos + k + 1],
                                        tstate, LM["clip"])
                times["torch"].append(time.perf_counter() - t0)
                tpos += k
            done += n
        r_val, _ = evaluate(model, cross_entropy, val[:-1], val[1:])
        with torch.no_grad():
            tv = torch.from_numpy(val)
            out, _ = net["rnn"](net["embed"](tv[:-1]))
            logits = net["head"](out)
            t_val = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                            tv[1:].reshape(-1)))
        xb, yb = train[:k], train[1:k + 1]
        profile = _profile_rnncore_update(model, ropt, xb, yb, LM["clip"])
        tr, tt = (float(np.median(times[n][2:])) for n in ("rnncore", "torch"))
        row = dict(cell=cell, steps=steps, rnncore_s=tr, torch_s=tt, ratio=tr / tt,
                   target=LM_TARGETS.get(cell), rnncore_chars=LM["batch"] * k / tr,
                   torch_chars=LM["batch"] * k / tt, rnncore_val=r_val, torch_val=t_val,
                   profile=profile)
        rows.append(row)
        met = "" if row["target"] is None else (" (target <= %.1f: %s)" % (
            row["target"], "met" if row["ratio"] <= row["target"] else "missed"))
        print(f"  {cell}: {1e3 * tr:.1f} ms vs torch {1e3 * tt:.1f} ms per update, ratio "
              f"{row['ratio']:.2f}{met}; {row['rnncore_chars']:,.0f} vs {row['torch_chars']:,.0f} "
              f"chars/s; validation loss after {steps} updates {r_val:.4f} vs {t_val:.4f} "
              f"({100 * (r_val / t_val - 1):+.1f}%)")
        total = sum(profile.values())
        print("    rnncore update profile: " + ", ".join(
            f"{name} {1e3 * v:.1f} ms ({100 * v / total:.0f}%)" for name, v in profile.items()))
    return rows


def run_grad_norm_cost(args):
    """Backward with and without recording ||dL/dh_t||, alternating, per config."""
    import rnncore
    from rnncore.nn.registry import make_module
    rnncore.set_num_threads(max(args.threads))
    print(f"gradient-norm recording: backward time with / without, {max(args.threads)} threads")
    rng = np.random.default_rng(0)
    for cell, T, B, H in (("lstm", 100, 64, 256), ("lstm", 100, 1, 32), ("gru", 100, 16, 128)):
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


# ---- rnncore.torch: the bridge's own cost, the engine's ratios through it, a small model ---------

BRIDGE_MODEL = dict(vocab=96, embed=64, hidden=256, batch=32, seq_len=64, lr=2e-3, clip=1.0)


def _null_function(torch):
    """An autograd.Function with the bridge's signature that computes nothing: what any torch
    extension pays for autograd (apply, saving tensors, the engine, gradient accumulation)."""
    class Null(torch.autograd.Function):
        @staticmethod
        def forward(ctx, call, x, h0, c0, *weights):
            ctx.save_for_backward(x, h0, c0, *weights)
            ctx.set_materialize_grads(False)
            y = torch.from_numpy(np.empty(call, dtype=np.float32))
            return y, torch.from_numpy(np.empty(call[1:], dtype=np.float32)), None

        @staticmethod
        def backward(ctx, dy, dh_n, dc_n):
            x, _, _, *weights = ctx.saved_tensors
            return (None, torch.from_numpy(np.zeros(tuple(x.shape), np.float32)), None, None,
                    *(torch.from_numpy(np.zeros(tuple(w.shape), np.float32)) for w in weights))
    return Null


def _bridge_overhead(torch, rt, repeats):
    """Per-call cost of rnncore.torch.GRU over calling the C++ Stack (and the numpy module) on
    the same arrays, at a size where the arithmetic is negligible (T=1, B=1, H=8)."""
    import rnncore
    from rnncore._ext import core
    I = H = 8
    tm = rt.GRU(I, H)
    m = rnncore.GRU(I, H)
    m.load_state_dict(tm.state_dict())
    stack = core.Stack("gru", I, H, 1, False, np.float32)
    x = torch.zeros(1, 1, I)
    dy = torch.ones(1, 1, H)
    xn, dyn = x.numpy(), dy.numpy()
    weights = list(tm.parameters())
    null = _null_function(torch)

    def bridge_fwd():
        with torch.no_grad():
            tm(x)

    def bridge_fb():
        y, _ = tm(x)
        y.backward(dy)

    def stack_fb():
        stack.forward(xn, m.params, training=True)
        stack.backward(dyn, m.params, m.grads)

    def numpy_fb():
        m(xn)
        m.backward(dyn)

    def null_fb():
        y, _, _ = null.apply((1, 1, H), x, None, None, *weights)
        y.backward(dy)

    def numpy_fwd():
        m.eval()
        m(xn)
        m.train()

    def timed(f, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    n = repeats * 50
    for f in (bridge_fwd, bridge_fb, stack_fb, numpy_fb, null_fb, numpy_fwd):
        timed(f, 200)
    r = {name: timed(f, n) for name, f in (
        ("bridge_fwd", bridge_fwd), ("stack_fwd", lambda: stack.forward(xn, m.params)),
        ("numpy_fwd", numpy_fwd), ("bridge_fb", bridge_fb), ("stack_fb", stack_fb),
        ("numpy_fb", numpy_fb), ("null_fb", null_fb))}
    us = {k: 1e6 * v for k, v in r.items()}
    print(f"per-call cost, GRU T=1 B=1 H={H} (medians of {n} calls), microseconds:")
    print(f"  forward, no_grad: rnncore.torch {us['bridge_fwd']:.1f}, core.Stack "
          f"{us['stack_fwd']:.1f}, numpy rnncore.GRU (eval) {us['numpy_fwd']:.1f}: bridge "
          f"overhead {us['bridge_fwd'] - us['stack_fwd']:.1f} us (target < 20)")
    print(f"  forward + backward: rnncore.torch {us['bridge_fb']:.1f}, core.Stack "
          f"{us['stack_fb']:.1f}, numpy rnncore.GRU {us['numpy_fb']:.1f}: overhead "
          f"{us['bridge_fb'] - us['stack_fb']:.1f} us, of which torch's autograd (a Function of "
          f"the same signature computing nothing) {us['null_fb']:.1f} and the bridge's own code "
          f"{us['bridge_fb'] - us['stack_fb'] - us['null_fb']:.1f} (target < 20)")
    return us


def _bridge_grid(torch, rt, args):
    """rnncore.torch, the numpy module and torch.nn on the comparison's configs (the cells torch.nn
    has): the bridge should keep the engine's ratio to torch.nn."""
    from rnncore.nn.registry import make_module, module_variant
    print("rnncore.torch vs torch.nn (same weights), float32; ratio = time / torch.nn's:")
    for cell, T, B, H, *_rest in CONFIGS:
        L, bidir = _rest[2:] or (1, False)
        twin = torch_twin(cell)
        if twin is None or (args.only and not any(cell.startswith(o) for o in args.only)):
            continue
        if args.quick and H >= 1024:
            continue
        cls, kwargs = twin
        tm = cls(H, H, num_layers=L, bidirectional=bidir, **kwargs)
        ours = getattr(rt, module_variant(cell)[0].__name__)(H, H, num_layers=L, bidirectional=bidir,
                                                       **kwargs)
        ours.load_state_dict(tm.state_dict())
        m = make_module(cell, H, H, num_layers=L, bidirectional=bidir)
        m.load_state_dict(tm.state_dict())
        x = torch.randn(T, B, H)
        dy = torch.randn(T, B, (2 if bidir else 1) * H)
        xn, dyn = x.numpy(), dy.numpy()
        xg = x.clone().requires_grad_()

        def fwd(module):
            def f():
                with torch.no_grad():
                    module(x)
            return f

        def fb(module):
            def f():
                y, _ = module(xg)
                y.backward(dy)
            return f

        def numpy_fwd():
            m.eval()
            m(xn)

        def numpy_fb():
            m.train()
            m(xn)
            m.backward(dyn)

        t0 = time.perf_counter()
        fb(tm)()
        reps = repeats_for(time.perf_counter() - t0, args.quick)
        b_f, n_f, t_f = median_times([fwd(ours), numpy_fwd, fwd(tm)], reps)
        b_fb, n_fb, t_fb = median_times([fb(ours), numpy_fb, fb(tm)], reps)
        label = cell + ("" if L == 1 else f" x{L}") + (" bidir" if bidir else "")
        print(f"  {label:18s} T={T:<4d} B={B:<4d} H={H:<5d} | fwd ms: bridge {1e3 * b_f:.3f} "
              f"(ratio {b_f / t_f:.3f}), numpy module {1e3 * n_f:.3f} ({n_f / t_f:.3f}), "
              f"torch.nn {1e3 * t_f:.3f} | fwd+bwd ms: bridge {1e3 * b_fb:.3f} "
              f"({b_fb / t_fb:.3f}), numpy module {1e3 * n_fb:.3f} ({n_fb / t_fb:.3f}), "
              f"torch.nn {1e3 * t_fb:.3f}", flush=True)


def _bridge_model_step(torch, rt, args):
    """One training step (embedding + GRU + linear, cross-entropy, clipping, Adam) with
    rnncore.torch.GRU and with torch.nn.GRU, same initial weights, alternating blocks."""
    c = BRIDGE_MODEL
    nets = {}
    for name, gru in (("rnncore.torch.GRU", rt.GRU), ("torch.nn.GRU", torch.nn.GRU)):
        torch.manual_seed(0)  # the same weights: rnncore.torch initialises as torch.nn does
        nets[name] = torch.nn.ModuleDict({"embed": torch.nn.Embedding(c["vocab"], c["embed"]),
                                          "rnn": gru(c["embed"], c["hidden"]),
                                          "head": torch.nn.Linear(c["hidden"], c["vocab"])})
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c["vocab"], (c["seq_len"] + 1, c["batch"]), generator=g)
    losses = {}

    def step(name):
        net = nets[name]
        opt = torch.optim.Adam(net.parameters(), lr=c["lr"])
        losses[name] = []

        def f():
            opt.zero_grad()
            y, _ = net["rnn"](net["embed"](tokens[:-1]))
            logits = net["head"](y)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab"]),
                                                     tokens[1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), c["clip"])
            opt.step()
            losses[name].append(float(loss.detach()))
        return f

    names = list(nets)
    fns = [step(n) for n in names]
    t_ours, t_torch = median_times(fns, 12 if args.quick else 60)
    print(f"training step: embedding {c['vocab']}x{c['embed']} + GRU {c['embed']}->{c['hidden']} "
          f"+ linear, T={c['seq_len']} B={c['batch']}, cross-entropy, clipping, Adam: "
          f"rnncore.torch.GRU {1e3 * t_ours:.2f} ms vs torch.nn.GRU {1e3 * t_torch:.2f} ms, "
          f"ratio {t_ours / t_torch:.2f} ({'faster' if t_ours < t_torch else 'slower'}); "
          f"first losses {losses[names[0]][0]:.6f} vs {losses[names[1]][0]:.6f}")
    return t_ours, t_torch


def run_torch_bridge(args):
    """--torch-bridge: the per-call overhead, the comparison grid through the bridge, and a small
    model's training step, at max(--threads) threads."""
    import rnncore
    import rnncore.torch as rt
    import torch
    threads = max(args.threads)
    rnncore.set_num_threads(threads)
    torch.set_num_threads(threads)
    print(f"rnncore.torch, {threads} threads")
    _bridge_overhead(torch, rt, 20 if args.quick else 100)
    _bridge_model_step(torch, rt, args)
    _bridge_grid(torch, rt, args)


# Single cell steps (cell, B, H with I = H) and, at 2 threads, the targets: forward and
# forward+backward microseconds, and forward / (its GEMM alone).
STEP_CONFIGS = [
    ("lstm", 1, 32, {"fwd_us": 3.0, "fb_us": 8.0}),
    ("lstm", 64, 256, {"gemm_ratio": 1.3}),
    ("gru", 1, 32, {}),
    ("gru", 64, 256, {}),
]


def run_steps(args):
    """One cell step from Python: rnncore's LSTMCell/GRUCell vs torch.nn's, inference (eval /
    no_grad) and training (forward + backward of one step), and the step's GEMM alone,
    [x h] (B, I+H) times the stacked weights (I+H, G*H), in rnncore (rnncore._core.matmul) and
    torch (torch.mm): the floor a step cannot go below."""
    import rnncore
    import torch
    from rnncore._ext import core
    from rnncore.nn.registry import make_cell
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rnncore.set_num_threads(threads)
        for cell, B, H, targets in STEP_CONFIGS:
            if args.only and not any(cell.startswith(o) for o in args.only):
                continue
            rng = np.random.default_rng(0)
            lstm = cell == "lstm"
            ev = make_cell(cell, H, H, seed=0).eval()
            tr = make_cell(cell, H, H, seed=0)
            tm = (torch.nn.LSTMCell if lstm else torch.nn.GRUCell)(H, H)
            with torch.no_grad():
                for k, v in ev.params.items():
                    getattr(tm, k).copy_(torch.from_numpy(v))
            x = rng.standard_normal((B, H)).astype(np.float32)
            h = rng.standard_normal((B, H)).astype(np.float32)
            c = rng.standard_normal((B, H)).astype(np.float32)
            dh = rng.standard_normal((B, H)).astype(np.float32)
            state, dstate = ((h, c), (dh, dh)) if lstm else (h, dh)
            xt = torch.from_numpy(x)
            xg = torch.from_numpy(x.copy()).requires_grad_(True)
            st = (torch.from_numpy(h), torch.from_numpy(c)) if lstm else torch.from_numpy(h)
            dst = [torch.from_numpy(dh)] * (2 if lstm else 1)

            # agreement first: the new state and dx
            out = tr(x, state)
            dx, _ = tr.backward(dstate)
            tout = tm(xg, st)
            touts = list(tout) if lstm else [tout]
            torch.autograd.backward(touts, dst)
            ours = list(out) if lstm else [out]
            for a, b, what in list(zip(ours, touts, ("h", "c"))) + [(dx, xg.grad, "dx")]:
                b = b.detach().numpy()
                if not np.allclose(a, b, rtol=RTOL, atol=ATOL * max(1.0, np.abs(b).max())):
                    raise SystemExit(f"{cell} step B={B} H={H}: {what} differs from torch by "
                                     f"{np.abs(a - b).max():.3g}; not timing it")
            tr.zero_grad()

            def r_fwd():
                ev(x, state)

            def r_fb():
                tr(x, state)
                tr.backward(dstate)

            def t_fwd():
                with torch.no_grad():
                    tm(xt, st)

            def t_fb():
                o = tm(xg, st)
                torch.autograd.backward(list(o) if lstm else [o], dst)

            G = 4 if lstm else 3
            xh = rng.standard_normal((B, 2 * H)).astype(np.float32)
            w = rng.standard_normal((2 * H, G * H)).astype(np.float32)
            gout = np.empty((B, G * H), np.float32)
            xht, wt, goutt = torch.from_numpy(xh), torch.from_numpy(w), torch.from_numpy(gout)

            def r_gemm():
                core.matmul(xh, w, gout)

            def t_gemm():
                torch.mm(xht, wt, out=goutt)

            t0 = time.perf_counter()
            for _ in range(10):
                r_fb()
            per = (time.perf_counter() - t0) / 10
            reps = int(max(50, min(20000, (0.5 if args.quick else 2.0) / max(per, 1e-7))))
            rf, tf, rfb, tfb, rg, tg = median_times([r_fwd, t_fwd, r_fb, t_fb, r_gemm, t_gemm],
                                                    reps)
            gemm = min(rg, tg)
            row = dict(cell=cell, B=B, H=H, threads=threads, fwd=(rf, tf), fb=(rfb, tfb),
                       gemm=(rg, tg), targets=targets if threads == 2 else {})
            rows.append(row)
            verdicts = []
            if row["targets"].get("fwd_us"):
                verdicts.append(f"fwd <= {targets['fwd_us']} us "
                                f"{'met' if rf * 1e6 <= targets['fwd_us'] else 'missed'}")
            if row["targets"].get("fb_us"):
                verdicts.append(f"fwd+bwd <= {targets['fb_us']} us "
                                f"{'met' if rfb * 1e6 <= targets['fb_us'] else 'missed'}")
            if row["targets"].get("gemm_ratio"):
                verdicts.append(f"fwd / GEMM <= {targets['gemm_ratio']} "
                                f"{'met' if rf / gemm <= targets['gemm_ratio'] else 'missed'}")
            print(f"{cell}Cell step B={B:<3d} H={H:<4d} threads={threads} | fwd {rf * 1e6:8.2f} us vs "
                  f"torch {tf * 1e6:8.2f} ({rf / tf:4.2f}) | fwd+bwd {rfb * 1e6:8.2f} us vs "
                  f"{tfb * 1e6:8.2f} ({rfb / tfb:4.2f}) | GEMM alone rnncore {rg * 1e6:8.2f} us, "
                  f"torch {tg * 1e6:8.2f} us; fwd / best GEMM {rf / gemm:4.2f}"
                  + (" | " + "; ".join(verdicts) if verdicts else ""), flush=True)
    return rows


def add_arguments(ap):
    ap.add_argument("--quick", action="store_true", help="few repeats, skip H=1024")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", help="registry cells to run (prefix match): lstm gru rnn peephole")
    ap.add_argument("--markdown", help="write a Markdown table here")
    ap.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime comparison")
    ap.add_argument("--memory", action="store_true", help="memory measurements only")
    ap.add_argument("--lm", action="store_true", help="only the end-to-end language-model "
                    "training against the same model in PyTorch")
    ap.add_argument("--lm-steps", type=int, default=200, help="updates per library (--lm)")
    ap.add_argument("--lm-cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    ap.add_argument("--lm-chars", type=int, default=600_000, help="corpus characters (--lm)")
    ap.add_argument("--grad-norms", action="store_true",
                    help="only the cost of recording ||dL/dh_t|| in backward")
    ap.add_argument("--steps", action="store_true",
                    help="only single cell steps (LSTMCell/GRUCell) vs torch and their GEMM alone")
    ap.add_argument("--torch-bridge", action="store_true",
                    help="only rnncore.torch: its per-call overhead, the configs through it vs "
                    "torch.nn, and a small embedding + GRU + linear model's training step")


def run(args, error=None):
    if args.memory:
        memory()
        return 0
    if args.lm:
        run_lm(args)
        return 0
    if args.grad_norms:
        run_grad_norm_cost(args)
        return 0
    if args.torch_bridge:
        run_torch_bridge(args)
        return 0
    if args.steps:
        run_steps(args)
        return 0
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    rows = run_comparison(args)
    if args.markdown:
        write_markdown(rows, args.markdown, args)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="rnncore bench", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args, ap.error)
