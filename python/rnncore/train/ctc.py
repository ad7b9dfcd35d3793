"""Connectionist temporal classification (Graves et al. 2006): loss, gradient and decoding.

The loss takes what torch.nn.functional.ctc_loss takes: log_probs (T, B, C) = log_softmax of the
network's logits over the classes (the blank included), targets, and per-sample input and
target lengths. The recursions (alpha/beta, in log space) and the gradient run in the C++ core
(cpp/src/ctc.cpp), one sample per thread. As rnncore.losses, ctc_loss returns (loss, dlogits):
the gradient with respect to the logits z of log_probs = log_softmax(z), ready for the layer
that produced z (it is also what torch's autograd reports for log_probs).

    loss, dlogits = ctc_loss(log_softmax(logits), targets, input_lengths, target_lengths)
    labels = greedy_decode(log_probs, input_lengths)            # best path, collapsed
    nbest = prefix_beam_search(log_probs, input_lengths, beam_width=8)

Rules (bad input raises ValueError naming the argument, the expected and the actual value):
every sequence has 1 <= input_length <= T frames; 0 <= target_length <= input_length; labels lie
in [0, C) and differ from blank. A target that fits but needs more frames than it has because a
repeated label needs a blank between its copies ("aa" in 2 frames) is an impossible alignment:
its loss is +inf (its gradient NaN, as torch), or 0 with zero_infinity=True.
"""
from __future__ import annotations

import heapq
import numbers

import numpy as np

from rnncore._ext import core
from rnncore.nn.module import native, native_float_dtype, to_numpy

_REDUCTIONS = ("mean", "sum", "none")


def log_softmax(logits, axis=-1):
    """log_softmax over `axis` (stable for any finite input): z - logsumexp(z)."""
    z = np.asarray(logits)
    z = z.astype(native_float_dtype(z.dtype), copy=False)  # >f4 computes (and returns) float32
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _int_array(name, value, ndim=None):
    a = to_numpy(value)
    if a.dtype.kind not in "iu":
        if a.size or a.dtype.kind != "f":  # np.asarray([]) is float64: an empty list is fine
            raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
        a = a.astype(np.int64)
    if ndim is not None and a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimension(s), got "
                         f"shape {a.shape}")
    return native(a, np.int64)


def _log_probs(log_probs):
    a = to_numpy(log_probs)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"log_probs must be a float array, got dtype {a.dtype}")
    if a.ndim != 3:
        raise ValueError(f"log_probs must have shape (T, B, C) (time, batch, classes), got "
                         f"shape {a.shape}")
    return native(a, native_float_dtype(a.dtype))


def _lengths(name, value, batch, default):
    if value is None:
        return np.full(batch, default, dtype=np.int64)
    a = _int_array(name, value, ndim=(1,))
    if a.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one per sample), got {a.shape}")
    return a


def _targets(targets, target_lengths, batch):
    """-> padded (B, S) int64 and target_lengths (B,). Accepts (B, S) padded, 1-D concatenated
    (with target_lengths, as torch) or a list of B label sequences (lengths from the list)."""
    if isinstance(targets, (list, tuple)) and target_lengths is None and len(targets) == batch \
            and all(np.ndim(t) == 1 for t in targets):
        seqs = [_int_array(f"targets[{b}]", t) for b, t in enumerate(targets)]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        padded = np.zeros((batch, max(lengths, default=0)), dtype=np.int64)
        for b, s in enumerate(seqs):
            padded[b, :len(s)] = s
        return padded, lengths
    t = _int_array("targets", targets, ndim=(1, 2))
    if target_lengths is None:
        if t.ndim == 1:
            raise ValueError("target_lengths is required with 1-D (concatenated) targets")
        return t, np.full(batch, t.shape[1], dtype=np.int64)
    lengths = _lengths("target_lengths", target_lengths, batch, 0)
    if t.ndim == 2:
        if t.shape[0] != batch:
            raise ValueError(f"targets must have shape ({batch}, S) (one row per sample), got "
                             f"{t.shape}")
        return t, lengths
    if (lengths < 0).any():
        b = int(np.flatnonzero(lengths < 0)[0])
        raise ValueError(f"target_lengths[{b}] must be >= 0, got {int(lengths[b])}")
    if int(lengths.sum()) != t.shape[0]:
        raise ValueError(f"1-D targets must hold sum(target_lengths) = {int(lengths.sum())} "
                         f"labels, got {t.shape[0]}")
    padded = np.zeros((batch, int(lengths.max(initial=0))), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for b in range(batch):
        padded[b, :lengths[b]] = t[starts[b]:starts[b + 1]]
    return padded, lengths


def _blank(blank):
    if isinstance(blank, bool) or not isinstance(blank, numbers.Integral):
        raise TypeError(f"blank must be an int, got {type(blank).__name__} {blank!r}")
    return int(blank)


def ctc_loss(log_probs, targets, input_lengths=None, target_lengths=None, blank=0,
             reduction="mean", zero_infinity=False):
    """CTC negative log-likelihood and its gradient, as torch.nn.functional.ctc_loss.

    log_probs (T, B, C): log_softmax of the logits (float32 or float64; the gradient has this
    dtype). targets: (B, S) padded, 1-D concatenated (with target_lengths) or a list of B label
    sequences. input_lengths, target_lengths (B,): None means T, and S for padded targets.
    reduction: "mean" (each sample's loss divided by its target length, at least 1, then the
    mean over the batch: torch's rule), "sum", or "none" (loss is the (B,) array of per-sample
    losses and the gradient is that of their sum).

    Returns (loss, dlogits): loss a Python float (an array for "none"); dlogits (T, B, C) the
    gradient w.r.t. the logits z of log_probs = log_softmax(z), zero past each input length.
    An empty batch (B = 0) gives loss 0.0 and an empty gradient."""
    lp = _log_probs(log_probs)
    T, B, C = lp.shape
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    blank = _blank(blank)
    padded, t_len = _targets(targets, target_lengths, B)
    in_len = _lengths("input_lengths", input_lengths, B, T)
    if reduction == "mean":
        scale = 1.0 / (max(B, 1) * np.maximum(t_len, 1).astype(lp.dtype))
    else:
        scale = np.ones(B, dtype=lp.dtype)
    losses, grad = core.ctc_loss(lp, padded, in_len, t_len, blank, bool(zero_infinity), True,
                                  np.ascontiguousarray(scale, dtype=lp.dtype))
    if reduction == "none":
        return losses, grad
    if B == 0:
        return 0.0, grad
    total = np.sum(losses.astype(np.float64) * (scale if reduction == "mean" else 1.0))
    return float(total), grad


def ctc_loss_reference(log_probs, targets, input_lengths, target_lengths, blank=0):
    """Plain float64 numpy loop of the alpha recursion (the specification the core is tested
    against besides torch): per-sample negative log-likelihoods (B,)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    out = np.empty(lp.shape[1])
    for b in range(lp.shape[1]):
        labels = [blank]
        for k in np.asarray(targets[b])[:int(target_lengths[b])]:
            labels += [int(k), blank]
        L, T = len(labels), int(input_lengths[b])
        alpha = np.full(L, -np.inf)
        alpha[0] = lp[0, b, blank]
        if L > 1:
            alpha[1] = lp[0, b, labels[1]]
        for t in range(1, T):
            prev = alpha.copy()
            for s in range(L):
                terms = [prev[s]]
                if s >= 1:
                    terms.append(prev[s - 1])
                if s >= 2 and labels[s] != blank and labels[s] != labels[s - 2]:
                    terms.append(prev[s - 2])
                alpha[s] = np.logaddexp.reduce(terms) + lp[t, b, labels[s]]
        out[b] = -np.logaddexp.reduce(alpha[-2:] if L > 1 else alpha[-1:])
    return out


# ---- decoding -----------------------------------------------------------------------------------

def _decode_inputs(log_probs, input_lengths, blank):
    lp = _log_probs(log_probs)
    T, B, C = lp.shape
    blank = _blank(blank)
    if not 0 <= blank < C:
        raise ValueError(f"blank must lie in [0, {C}) (the number of classes), got {blank}")
    lengths = _lengths("input_lengths", input_lengths, B, T)
    bad = (lengths < 0) | (lengths > T)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise ValueError(f"input_lengths[{b}] must lie in [0, {T}], got {int(lengths[b])}")
    return lp, lengths, blank


def greedy_decode(log_probs, input_lengths=None, blank=0):
    """Best-path decoding: the most probable class of every frame, repeats collapsed, blanks
    dropped. log_probs (T, B, C) (log-probabilities or logits: only the argmax matters).
    Returns a list of B label lists."""
    lp, lengths, blank = _decode_inputs(log_probs, input_lengths, blank)
    best = lp.argmax(axis=2)  # (T, B)
    keep = best != blank
    keep[1:] &= best[1:] != best[:-1]
    return [best[:lengths[b], b][keep[:lengths[b], b]].tolist() for b in range(lp.shape[1])]


def prefix_beam_search(log_probs, input_lengths=None, beam_width=8, blank=0, n_best=1,
                       prune=None):
    """CTC prefix beam search: keeps the beam_width most probable label prefixes, each with the
    exact total probability (over every alignment) of the frames read so far, split into
    "ends in blank" and "ends in a label" so that repeats merge only across a blank.

    log_probs (T, B, C) log-softmax outputs. Each frame extends the prefixes by the beam_width
    most probable classes of that frame (all classes when beam_width >= C) and, when prune is a
    number, only by classes with log-probability >= prune. Returns, per sample, a list of up to
    n_best (labels, log_prob) pairs, best first; log_prob is the log-probability of that labelling
    summed over the alignments the search kept (exact when nothing was pruned). beam_width=1 is
    not greedy decoding (greedy_decode follows the best frame labels; width 1 keeps the best
    prefix summed over its alignments): the two can differ, docs/recognition.md shows a case."""
    lp, lengths, blank = _decode_inputs(log_probs, input_lengths, blank)
    for name, v in (("beam_width", beam_width), ("n_best", n_best)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    C = lp.shape[2]
    k = min(int(beam_width), C)
    results = []
    for b in range(lp.shape[1]):
        frames = lp[:lengths[b], b].astype(np.float64)
        beam = {(): (0.0, -np.inf)}  # prefix -> (log p ending in blank, log p ending in label)
        for y in frames:
            classes = np.argpartition(-y, k - 1)[:k] if k < C else np.arange(C)
            if prune is not None:
                classes = classes[y[classes] >= prune]
            classes = [int(c) for c in classes if c != blank]
            nxt = {}

            def add(prefix, pb, pnb):
                old = nxt.get(prefix)
                nxt[prefix] = (pb, pnb) if old is None else (np.logaddexp(old[0], pb),
                                                             np.logaddexp(old[1], pnb))

            for prefix, (pb, pnb) in beam.items():
                total = np.logaddexp(pb, pnb)
                # stay: a blank, or the last label repeated (collapses into it)
                add(prefix, total + y[blank], pnb + y[prefix[-1]] if prefix else -np.inf)
                for c in classes:
                    # a repeated label starts a new copy only after a blank
                    via = pb if prefix and c == prefix[-1] else total
                    add(prefix + (c,), -np.inf, via + y[c])
            beam = dict(heapq.nlargest(int(beam_width), nxt.items(),
                                       key=lambda kv: np.logaddexp(*kv[1])))
        ranked = heapq.nlargest(int(n_best), beam.items(), key=lambda kv: np.logaddexp(*kv[1]))
        results.append([(list(p), float(np.logaddexp(*s))) for p, s in ranked])
    return results
