"""`rnncore bench --torch-bridge`: rnncore.torch's own per-call cost, the comparison's configs
through it against torch.nn, and a small model's training step with rnncore.torch.GRU against
torch.nn.GRU."""
from __future__ import annotations

import time

import numpy as np

from rnncore._ext import core
from rnncore.apps.bench.common import both_threads, median_times, repeats_for
from rnncore.apps.bench.configs import BRIDGE_MODEL, CONFIGS, OVERHEAD_CELL
from rnncore.nn.recurrent import GRU
from rnncore.nn.registry import make_module, module_variant
from rnncore.testing.torch_twin import torch_twin


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
    H = 8
    calls = _overhead_calls(torch, rt, H)
    n = repeats * 50
    for name in ("bridge_fwd", "bridge_fb", "stack_fb", "numpy_fb", "null_fb", "numpy_fwd"):
        _timed(calls[name], 200)
    us = {name: 1e6 * _timed(f, n) for name, f in calls.items()}
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


def _overhead_calls(torch, rt, H):
    """name -> one call (T=1, B=1, I=H) through the bridge, the C++ Stack, the numpy module and
    a torch autograd.Function that computes nothing, in the order they are reported."""
    tm = rt.GRU(H, H)
    m = GRU(H, H)
    m.load_state_dict(tm.state_dict())
    stack = core.Stack(OVERHEAD_CELL, H, H, 1, False, np.float32)
    x = torch.zeros(1, 1, H)
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

    return {"bridge_fwd": bridge_fwd, "stack_fwd": lambda: stack.forward(xn, m.params),
            "numpy_fwd": numpy_fwd, "bridge_fb": bridge_fb, "stack_fb": stack_fb,
            "numpy_fb": numpy_fb, "null_fb": null_fb}


def _timed(f, n):
    """Median seconds of n calls of f."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _bridge_grid(torch, rt, args):
    """rnncore.torch, the numpy module and torch.nn on the comparison's configs (the cells torch.nn
    has): the bridge should keep the engine's ratio to torch.nn."""
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
    for name, rnn_cls in (("rnncore.torch.GRU", rt.GRU), ("torch.nn.GRU", torch.nn.GRU)):
        torch.manual_seed(0)  # the same weights: rnncore.torch initialises as torch.nn does
        nets[name] = torch.nn.ModuleDict({"embed": torch.nn.Embedding(c["vocab"], c["embed"]),
                                          "rnn": rnn_cls(c["embed"], c["hidden"]),
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
    import rnncore.torch as rt  # optional: the torch door, the subject of this measurement
    import torch  # optional: torch (rnncore[torch])
    threads = max(args.threads)
    both_threads(torch, threads)
    print(f"rnncore.torch, {threads} threads")
    _bridge_overhead(torch, rt, 20 if args.quick else 100)
    _bridge_model_step(torch, rt, args)
    _bridge_grid(torch, rt, args)


