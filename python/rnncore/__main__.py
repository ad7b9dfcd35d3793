"""`python -m rnncore` (or the `rnncore` command): train a small LSTM on a generated task.

The task needs memory, so it only improves through backpropagation through time: each sequence
is `--seq-len` random symbols, and at every step t >= delay the network must output the symbol it
saw `--delay` steps earlier (a many-to-many tagger with a linear read-out of every h_t). Chance
level is ln(vocab); a working LSTM drives the loss towards 0.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


class Readout:
    """Linear layer h -> logits with its own params/grads dicts (works with rnncore.optim)."""

    def __init__(self, hidden, classes, rng, dtype):
        k = 1.0 / np.sqrt(hidden)
        self.params = {"weight": rng.uniform(-k, k, (classes, hidden)).astype(dtype),
                       "bias": np.zeros(classes, dtype)}
        self.grads = {k_: np.zeros_like(v) for k_, v in self.params.items()}

    def forward(self, h):
        self.h = h
        return h @ self.params["weight"].T + self.params["bias"]

    def backward(self, dlogits):
        self.grads["weight"] += dlogits.T @ self.h
        self.grads["bias"] += dlogits.sum(0)
        return dlogits @ self.params["weight"]


def softmax_cross_entropy(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels] + 1e-12).mean()
    accuracy = float((p.argmax(1) == labels).mean())
    d = p
    d[np.arange(n), labels] -= 1
    return float(loss), d / n, accuracy


def make_batch(rng, batch, seq_len, vocab, delay, dtype):
    tokens = rng.integers(0, vocab, size=(seq_len, batch))
    x = np.eye(vocab, dtype=dtype)[tokens]  # (T, B, vocab) one-hot
    return x, tokens[:-delay]  # targets of steps delay .. T-1


def main(argv=None):
    import rnncore
    from rnncore import _registry
    from rnncore.optim import Adam, clip_grad_norm

    ap = argparse.ArgumentParser(prog="rnncore", description=__doc__.split("\n\n")[0])
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
    args = ap.parse_args(argv)
    for name in ("seq_len", "vocab", "hidden", "batch", "steps", "delay"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.delay >= args.seq_len:
        ap.error(f"--delay must be smaller than --seq-len ({args.seq_len}), got {args.delay}")
    rnncore.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    dtype = np.float32
    net = _registry.make_module(args.cell, args.vocab, args.hidden, seed=args.seed)
    head = Readout(args.hidden, args.vocab, rng, dtype)
    opt = Adam([net, head], lr=args.lr)
    print(f"rnncore {rnncore.__version__}: {net!r} learns to echo each symbol {args.delay} steps "
          f"later (chance loss ln({args.vocab}) = {np.log(args.vocab):.3f})")
    t0 = time.perf_counter()
    first = last = None
    for step in range(1, args.steps + 1):
        x, labels = make_batch(rng, args.batch, args.seq_len, args.vocab, args.delay, dtype)
        y, _ = net(x)
        T, B, H = y.shape
        d = args.delay
        logits = head.forward(y[d:].reshape(-1, H))
        loss, dlogits, acc = softmax_cross_entropy(logits, labels.reshape(-1))
        net.zero_grad()
        head.grads["weight"].fill(0)
        head.grads["bias"].fill(0)
        dy = np.zeros_like(y)
        dy[d:] = head.backward(dlogits).reshape(T - d, B, H)
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


if __name__ == "__main__":
    sys.exit(main())
