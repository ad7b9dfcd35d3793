"""`rnncore bench --steps`: one cell step from Python against torch.nn's, and the step's GEMM
alone, the floor a step cannot go below."""
from __future__ import annotations

import time

import numpy as np

from rnncore._ext import core
from rnncore.apps.bench.common import ATOL, RTOL, both_threads, median_times
from rnncore.apps.bench.configs import STEP_CONFIGS, STEP_TWINS
from rnncore.nn.registry import make_cell


def run_steps(args):
    """One cell step from Python: rnncore's LSTMCell/GRUCell vs torch.nn's, inference (eval /
    no_grad) and training (forward + backward of one step), and the step's GEMM alone,
    [x h] (B, I+H) times the stacked weights (I+H, G*H), in rnncore (rnncore._core.matmul) and
    torch (torch.mm): the floor a step cannot go below."""
    import torch  # optional: torch (rnncore[torch]), the other side of the comparison
    rows = []
    for threads in args.threads:
        both_threads(torch, threads)
        for cell, B, H, targets in STEP_CONFIGS:
            if args.only and not any(cell.startswith(o) for o in args.only):
                continue
            rng = np.random.default_rng(0)
            calls = _step_calls(torch, cell, B, H, rng) + _gemm_calls(torch, cell, B, H, rng)
            t0 = time.perf_counter()
            for _ in range(10):
                calls[2]()  # rnncore's forward + backward
            per = (time.perf_counter() - t0) / 10
            reps = int(max(50, min(20000, (0.5 if args.quick else 2.0) / max(per, 1e-7))))
            rf, tf, rfb, tfb, rg, tg = median_times(calls, reps)
            row = dict(cell=cell, B=B, H=H, threads=threads, fwd=(rf, tf), fb=(rfb, tfb),
                       gemm=(rg, tg), targets=targets if threads == 2 else {})
            rows.append(row)
            _print_row(row)
    return rows


def _step_calls(torch, cell, B, H, rng):
    """[rnncore forward, torch forward, rnncore forward + backward, torch forward + backward] of
    one step, after checking that both give the same new state and dx."""
    twin, has_c = STEP_TWINS[cell]
    ev = make_cell(cell, H, H, seed=0).eval()
    tr = make_cell(cell, H, H, seed=0)
    tm = getattr(torch.nn, twin)(H, H)
    with torch.no_grad():
        for k, v in ev.params.items():
            getattr(tm, k).copy_(torch.from_numpy(v))
    x = rng.standard_normal((B, H)).astype(np.float32)
    h = rng.standard_normal((B, H)).astype(np.float32)
    c = rng.standard_normal((B, H)).astype(np.float32)
    dh = rng.standard_normal((B, H)).astype(np.float32)
    state, dstate = ((h, c), (dh, dh)) if has_c else (h, dh)
    xt = torch.from_numpy(x)
    xg = torch.from_numpy(x.copy()).requires_grad_(True)
    st = (torch.from_numpy(h), torch.from_numpy(c)) if has_c else torch.from_numpy(h)
    dst = [torch.from_numpy(dh)] * (2 if has_c else 1)

    # agreement first: the new state and dx
    out = tr(x, state)
    dx, _ = tr.backward(dstate)
    tout = tm(xg, st)
    touts = list(tout) if has_c else [tout]
    torch.autograd.backward(touts, dst)
    ours = list(out) if has_c else [out]
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
        torch.autograd.backward(list(o) if has_c else [o], dst)

    return [r_fwd, t_fwd, r_fb, t_fb]


def _gemm_calls(torch, cell, B, H, rng):
    """[rnncore's, torch's] product of one step's [x h] (B, 2H) and stacked weights (2H, G*H)."""
    G = make_cell(cell, H, H).params["weight_hh"].shape[0] // H
    xh = rng.standard_normal((B, 2 * H)).astype(np.float32)
    w = rng.standard_normal((2 * H, G * H)).astype(np.float32)
    gout = np.empty((B, G * H), np.float32)
    xht, wt, goutt = torch.from_numpy(xh), torch.from_numpy(w), torch.from_numpy(gout)

    def r_gemm():
        core.matmul(xh, w, gout)

    def t_gemm():
        torch.mm(xht, wt, out=goutt)

    return [r_gemm, t_gemm]


def _print_row(row):
    (rf, tf), (rfb, tfb), (rg, tg) = row["fwd"], row["fb"], row["gemm"]
    targets, gemm = row["targets"], min(rg, tg)
    verdicts = []
    if targets.get("fwd_us"):
        verdicts.append(f"fwd <= {targets['fwd_us']} us "
                        f"{'met' if rf * 1e6 <= targets['fwd_us'] else 'missed'}")
    if targets.get("fb_us"):
        verdicts.append(f"fwd+bwd <= {targets['fb_us']} us "
                        f"{'met' if rfb * 1e6 <= targets['fb_us'] else 'missed'}")
    if targets.get("gemm_ratio"):
        verdicts.append(f"fwd / GEMM <= {targets['gemm_ratio']} "
                        f"{'met' if rf / gemm <= targets['gemm_ratio'] else 'missed'}")
    print(f"{row['cell']}Cell step B={row['B']:<3d} H={row['H']:<4d} threads={row['threads']} | "
          f"fwd {rf * 1e6:8.2f} us vs torch {tf * 1e6:8.2f} ({rf / tf:4.2f}) | fwd+bwd "
          f"{rfb * 1e6:8.2f} us vs {tfb * 1e6:8.2f} ({rfb / tfb:4.2f}) | GEMM alone rnncore "
          f"{rg * 1e6:8.2f} us, torch {tg * 1e6:8.2f} us; fwd / best GEMM {rf / gemm:4.2f}"
          + (" | " + "; ".join(verdicts) if verdicts else ""), flush=True)
