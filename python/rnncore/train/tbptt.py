"""Truncated backpropagation through time (Williams & Peng 1990; Sutskever 2013, TBPTT(k1, k2)).

A long sequence is processed forward for ever: the hidden state at the end of one stretch is the
initial state of the next, so the network can carry information across any distance. The
gradient is only back-propagated k2 steps: every k1 steps (k1 <= k2) the network runs forward over
the last k2 steps, from the state it had k2 steps ago, takes the loss on the k1 new steps, and
back-propagates through all k2. The state passed across a window's start is a constant: no
gradient crosses it. k1 = k2 = k is the common "chunks of k" training; a chunk as long as the
sequence is full BPTT.

    streams = rnncore.tbptt.batchify(tokens, batch_size)          # (L, B): B parallel streams
    for update in rnncore.tbptt.truncated_bptt(model, loss_fn, streams[:-1], streams[1:], k1=64):
        clip_grad_norm(model, 1.0)
        optimizer.step()                       # gradients of this window, zeroed before it

The model protocol (rnncore.lm.LanguageModel follows it; any Model can):
    outputs, state = model.forward(inputs, state)    # inputs (T, B, ...); state None = zeros
    model.backward(doutputs)                         # BPTT through that forward; adds to grads
    model.zero_grad()
and loss_fn(outputs, targets) -> (loss, doutputs), a mean over the targets it is given (the
losses of rnncore.losses).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnncore.nn.module import no_grad


def batchify(sequence, batch_size):
    """A 1-D sequence (tokens) -> (L, B) array of B parallel streams, stream b being the b-th of
    B equal contiguous pieces (the remainder is dropped), time along axis 0."""
    a = np.asarray(sequence)
    if a.ndim != 1:
        raise ValueError(f"sequence must be 1-D, got shape {a.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    length = a.size // batch_size
    if length < 2:
        raise ValueError(f"a sequence of {a.size} items makes streams of {length} items for "
                         f"batch_size={batch_size}; at least 2 are needed (an input and its target)")
    return np.ascontiguousarray(a[:length * batch_size].reshape(batch_size, length).T)


@dataclass
class Update:
    """One TBPTT update: the loss on the new steps [start, stop) (a mean per target), the window
    [window_start, stop) that was back-propagated, and the state at stop (carried onwards)."""
    loss: float
    start: int
    stop: int
    window_start: int
    state: Any
    kept: list  # (position, state) pairs a resumed run needs (truncated_bptt(kept=...))

    @property
    def steps(self):
        return self.stop - self.start


def _check_k(k1, k2):
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"{name} must be a positive int, got {k!r}")
    if k2 < k1:
        raise ValueError(f"k2 must be >= k1 (back-propagate at least the steps updated on), "
                         f"got k1={k1}, k2={k2}")


def truncated_bptt(model, loss_fn, inputs, targets, k1, k2=None, state=None, start=0,
                   kept=None):
    """Generator of Updates over inputs / targets (time along axis 0), TBPTT(k1, k2).

    Before each window's backward it calls model.zero_grad(); after it, it yields, so the caller
    clips and steps the optimiser on that window's gradients. Windows: new steps [p, q) with
    q = min(p + k1, T); the window is [max(0, q - k2), q), its initial state the state at its
    start (kept from earlier windows, or advanced under rnncore.no_grad() from the nearest kept
    one when k2 is not a multiple of k1); the loss is taken on the new steps only.
    state: the state before step 0 (None = zeros); the last Update's state is the state after T.
    start, kept: resume at step `start` (a boundary an earlier run reached) with that run's
    Update.kept, the (position, state) pairs later windows may start from; without kept, the
    state at `start` is `state`."""
    k2 = k1 if k2 is None else k2
    _check_k(k1, k2)
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    T = len(inputs)
    if len(targets) != T:
        raise ValueError(f"inputs and targets must have the same length along time (axis 0), "
                         f"got {T} and {len(targets)}")
    # States at update boundaries p = 0, k1, 2*k1, ...: (p, state), enough to start any window.
    kept = deque(kept if kept is not None else [(start, state)], maxlen=k2 // k1 + 2)
    p, floor = start, kept[0][0]  # no window starts before the earliest state there is
    while p < T:
        q = min(p + k1, T)
        w = max(floor, q - k2)
        start, s0 = next((b, s) for b, s in reversed(kept) if b <= w)
        if start < w:  # k2 not a multiple of k1: advance the kept state to the window's start
            with no_grad():
                _, s0 = model.forward(inputs[start:w], s0)
        outputs, final = model.forward(inputs[w:q], s0)
        new = slice(p - w, q - w)
        loss, dnew = loss_fn(outputs[new], targets[p:q])
        doutputs = np.zeros_like(outputs)
        doutputs[new] = dnew
        model.zero_grad()
        model.backward(doutputs)
        kept.append((q, final))
        yield Update(float(loss), p, q, w, final, list(kept))
        p = q


def evaluate(model, loss_fn, inputs, targets, chunk=256, state=None):
    """Mean loss over the whole sequence, run forward in chunks under no_grad with the state
    carried (the model's loss_fn must return a mean). Returns (mean loss, final state)."""
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    total, count = 0.0, 0
    with no_grad():
        for p in range(0, len(inputs), chunk):
            outputs, state = model.forward(inputs[p:p + chunk], state)
            loss, _ = loss_fn(outputs, targets[p:p + chunk])
            n = targets[p:p + chunk].size
            total += float(loss) * n
            count += n
    return (total / count if count else float("nan")), state
