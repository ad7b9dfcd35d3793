"""`rnncore train echo`: train a small recurrent tagger on a generated task that needs memory.

The task needs memory, so it only improves through backpropagation through time: each sequence
is `--seq-len` random symbols, and at every step t >= delay the network must output the symbol it
saw `--delay` steps earlier (a many-to-many tagger with a linear read-out of every h_t). Chance
level is ln(vocab); a working LSTM drives the loss towards 0.
"""
from __future__ import annotations

import time

import numpy as np


def make_batch(rng, batch, seq_len, vocab, delay, dtype):
    tokens = rng.integers(0, vocab, size=(seq_len, batch))
    x = np.eye(vocab, dtype=dtype)[tokens]  # (T, B, vocab) one-hot
    return x, tokens[:-delay]  # targets of steps delay .. T-1


def add_arguments(ap):
    from rnncore.nn import registry as _registry
    ap.add_argument("--cell", choices=list(_registry.CELLS), default="lstm",
                    help="a cell of the registry (default: lstm)")
    ap.add_argument("--seq-len", type=int, default=30)
    ap.add_argument("--delay", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")


def run(args, error):
    """error(message) reports a bad flag (argparse's parser.error: exit code 2)."""
    import rnncore
    from rnncore.nn import registry as _registry
    from rnncore.nn.layers import Linear
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import Adam, clip_grad_norm

    for name in ("seq_len", "vocab", "hidden", "batch", "steps", "delay"):
        if getattr(args, name) <= 0:
            error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.delay >= args.seq_len:
        error(f"--delay must be smaller than --seq-len ({args.seq_len}), got {args.delay}")
    rnncore.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    dtype = np.float32
    net = _registry.make_module(args.cell, args.vocab, args.hidden, seed=args.seed)
    head = Linear(args.hidden, args.vocab, seed=args.seed)
    opt = Adam([net, head], lr=args.lr)
    print(f"rnncore {rnncore.__version__}: {net!r} learns to echo each symbol {args.delay} steps "
          f"later (chance loss ln({args.vocab}) = {np.log(args.vocab):.3f})")
    t0 = time.perf_counter()
    first = last = None
    d = args.delay
    for step in range(1, args.steps + 1):
        x, labels = make_batch(rng, args.batch, args.seq_len, args.vocab, d, dtype)
        y, _ = net(x)
        logits = head(y[d:])
        loss, dlogits = cross_entropy(logits, labels)
        acc = float((logits.argmax(-1) == labels).mean())
        net.zero_grad()
        head.zero_grad()
        dy = np.zeros_like(y)
        dy[d:] = head.backward(dlogits)
        net.backward(dy)
        norm = clip_grad_norm([net, head], args.clip)
        opt.step()
        first = loss if first is None else first
        last = loss
        if step == 1 or step % max(1, args.steps // 15) == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss:.4f}  accuracy {acc:5.1%}  grad-norm {norm:7.3f}")
    dt = time.perf_counter() - t0
    print(f"loss {first:.4f} -> {last:.4f} in {args.steps} steps, {dt:.2f} s")
    return 0 if last < first else 1
