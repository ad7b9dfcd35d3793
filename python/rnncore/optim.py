"""Optimisers and gradient clipping over a module's `params` / `grads` dicts (updated in place)."""
from __future__ import annotations

import numpy as np


def _pairs(modules):
    if not isinstance(modules, (list, tuple)):
        modules = [modules]
    out = []
    for m in modules:
        for k, p in m.params.items():
            out.append((p, m.grads[k]))
    return out


def clip_grad_norm(modules, max_norm):
    """Scales all gradients so their global L2 norm is at most max_norm (Pascanu et al. 2013,
    the remedy for exploding gradients in BPTT). Returns the norm before clipping."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    pairs = _pairs(modules)
    total = float(np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for _, g in pairs)))
    if total > max_norm:
        scale = max_norm / (total + 1e-12)
        for _, g in pairs:
            g *= g.dtype.type(scale)
    return total


class SGD:
    """p -= lr * (g + weight_decay * p), with optional classical momentum."""

    def __init__(self, modules, lr=0.1, momentum=0.0, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.pairs = _pairs(modules)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [np.zeros_like(p) for p, _ in self.pairs]

    def step(self):
        for (p, g), v in zip(self.pairs, self.velocity):
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                v *= self.momentum
                v += d
                d = v
            p -= p.dtype.type(self.lr) * d


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction."""

    def __init__(self, modules, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.pairs = _pairs(modules)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [np.zeros_like(p) for p, _ in self.pairs]
        self.v = [np.zeros_like(p) for p, _ in self.pairs]
        self.t = 0

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for (p, g), m, v in zip(self.pairs, self.m, self.v):
            if self.weight_decay:
                g = g + self.weight_decay * p
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)
