"""`rnncore train echo`: train a small recurrent tagger on a generated task that needs memory.

The task needs memory, so it only improves through backpropagation through time: each sequence
is `--seq-len` random symbols, and at every step t >= delay the network must output the symbol it
saw `--delay` steps earlier (a many-to-many tagger with a linear read-out of every h_t). Chance
level is ln(vocab); a working LSTM drives the loss towards 0.
"""
from __future__ import annotations

import numpy as np

from rnncore.apps.common import (
    add_common_arguments,
    check_positive,
    set_threads,
    train_loop,
)
from rnncore.nn.layers import Linear
from rnncore.nn.registry import make_module
from rnncore.train.losses import cross_entropy
from rnncore.train.optim import Adam, clip_grad_norm


def make_batch(rng, batch, seq_len, vocab, delay, dtype):
    tokens = rng.integers(0, vocab, size=(seq_len, batch))
    x = np.eye(vocab, dtype=dtype)[tokens]  # (T, B, vocab) one-hot
    return x, tokens[:-delay]  # targets of steps delay .. T-1


def add_arguments(ap):
    add_common_arguments(ap, dict(cell="lstm"))
    ap.add_argument("--seq-len", type=int, default=30)
    ap.add_argument("--delay", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8)
    add_common_arguments(ap, dict(hidden=64, batch=32, steps=200, lr=1e-2, clip=1.0, seed=0,
                                  threads=0), helps={"steps": None})


def run(args, error):
    """error(message) reports a bad flag (argparse's parser.error: exit code 2)."""
    check_positive(args, ("seq_len", "vocab", "hidden", "batch", "steps", "delay", "lr",
                          "clip"), error)
    if args.delay >= args.seq_len:
        error(f"--delay must be smaller than --seq-len ({args.seq_len}), got {args.delay}")
    version, _ = set_threads(args)

    rng = np.random.default_rng(args.seed)
    dtype = np.float32
    net = make_module(args.cell, args.vocab, args.hidden, seed=args.seed)
    head = Linear(args.hidden, args.vocab, seed=args.seed)
    opt = Adam([net, head], lr=args.lr)
    print(f"rnncore {version}: {net!r} learns to echo each symbol {args.delay} steps "
          f"later (chance loss ln({args.vocab}) = {np.log(args.vocab):.3f})")
    d = args.delay
    losses, every = [], max(1, args.steps // 15)

    def update(step):
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
        losses.append(loss)
        if step == 1 or step % every == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss:.4f}  accuracy {acc:5.1%}  grad-norm {norm:7.3f}")
        return loss

    end = train_loop(update, args.steps)
    first, last = losses[0], losses[-1]
    print(f"loss {first:.4f} -> {last:.4f} in {args.steps} steps, {end.seconds:.2f} s")
    return 0 if last < first else 1
