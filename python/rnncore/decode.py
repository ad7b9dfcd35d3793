"""Decoding for sequence models: greedy search and batched beam search with GNMT length
normalisation, EOS handling and n-best lists, over any `step(tokens, state) -> (log_probs,
state)` function of a batch of rows (rnncore.seq2seq.Seq2Seq provides one; the tests use
hand-built ones). beam_search runs every hypothesis of every batch row as one batch of B*beam.
(CTC decoding, greedy and prefix beam search over frame posteriors, is in rnncore.ctc.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def log_softmax(z):
    """log softmax over the last axis, stable for any finite input."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def length_penalty(length, alpha):
    """GNMT's length normalisation (Wu et al. 2016): ((5 + length) / 6) ** alpha; a hypothesis
    is ranked by log_prob / length_penalty. alpha = 0: raw log-probability."""
    return ((5.0 + np.asarray(length, dtype=np.float64)) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """One decoded sequence: tokens (BOS and EOS excluded), its total log-probability, the
    length-normalised score beams are ranked by, and whether it ended with EOS."""
    tokens: list
    log_prob: float
    score: float
    finished: bool


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def greedy_search(step, state, batch, bos, eos, max_len):
    """Picks the most probable token at every step until EOS (or max_len tokens).

    step(tokens (N,), state) -> (log_probs (N, V), state); state: a tuple of arrays whose first
    dimension is N (here N = batch). Returns a list of `batch` Hypothesis."""
    batch = _check_int("batch", batch, 0)
    max_len = _check_int("max_len", max_len, 1)
    tokens = np.full(batch, bos, dtype=np.int64)
    out = np.zeros((batch, 0), dtype=np.int64)
    log_prob = np.zeros(batch)
    length = np.full(batch, -1)  # tokens before EOS, -1 while running
    for t in range(max_len):
        logp, state = step(tokens, state)
        tokens = logp.argmax(axis=1)
        running = length < 0
        log_prob[running] += logp[np.arange(batch), tokens][running]
        out = np.concatenate([out, tokens[:, None]], axis=1)
        length[running & (tokens == eos)] = t
        if not (length < 0).any():
            break
    hyps = []
    for b in range(batch):
        n = int(length[b]) if length[b] >= 0 else out.shape[1]
        hyps.append(Hypothesis(out[b, :n].tolist(), float(log_prob[b]),
                               float(log_prob[b]), bool(length[b] >= 0)))
    return hyps


def beam_search(step, state, batch, beam, bos, eos, max_len, alpha=0.6, n_best=1):
    """Batched beam search with length normalisation and n-best output.

    step, state: as in greedy_search; the state's rows are expanded to batch * beam (hypothesis
    j of batch row b at row b * beam + j) and every step runs them all as one batch.
    At each step the 2 * beam best extensions of each row's beams are ranked by total
    log-probability: EOS extensions among the first `beam` become finished hypotheses (kept with
    score log_prob / length_penalty(length incl. EOS, alpha)), and the best `beam` non-EOS
    extensions continue. A row stops once it has `beam` finished hypotheses. At max_len, a row
    with fewer than n_best finished hypotheses is filled up with its best running ones
    (finished=False), ranked with the finished ones by score; a row with n_best or more finished
    ones returns finished hypotheses only. Returns, per batch row, its n_best hypotheses
    (Hypothesis) by descending score. beam = 1 gives the greedy result."""
    batch = _check_int("batch", batch, 0)
    k = _check_int("beam", beam, 1)
    max_len = _check_int("max_len", max_len, 1)
    n_best = _check_int("n_best", n_best, 1)
    if n_best > k:
        raise ValueError(f"n_best must be <= beam ({k}), got {n_best}")
    N = batch * k
    state = tuple(np.repeat(a, k, axis=0) for a in state)
    scores = np.full((batch, k), -np.inf)
    scores[:, 0] = 0.0  # one live hypothesis per row at the start
    tokens = np.full(N, bos, dtype=np.int64)
    history = np.zeros((N, 0), dtype=np.int64)
    finished = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    rows = np.arange(batch)[:, None]
    for t in range(max_len):
        if batch == 0:
            break
        logp, state = step(tokens, state)
        V = logp.shape[1]
        cand = (scores.reshape(N, 1) + logp).reshape(batch, k * V)
        m = min(2 * k, k * V)
        top = np.argpartition(-cand, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(cand, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)                   # (B, m) best first
        top_scores = np.take_along_axis(cand, top, axis=1)
        top_tokens = top % V
        is_eos = top_tokens == eos
        first = min(k, m)
        ended = is_eos[:, :first] & np.isfinite(top_scores[:, :first]) & ~done[:, None]
        for b, j in zip(*np.nonzero(ended)):
            parent = b * k + top[b, j] // V
            s = float(top_scores[b, j])
            finished[b].append(Hypothesis(history[parent].tolist(), s,
                                          s / float(length_penalty(t + 1, alpha)), True))
        # the best k non-EOS extensions continue (a stable sort puts them first, in order)
        keep = np.argsort(is_eos, axis=1, kind="stable")[:, :k]
        if keep.shape[1] < k:  # tiny vocabularies: fewer than k candidates
            keep = np.pad(keep, ((0, 0), (0, k - keep.shape[1])), mode="edge")
        chosen = np.take_along_axis(top, keep, axis=1)
        scores = np.take_along_axis(top_scores, keep, axis=1)
        scores[np.take_along_axis(is_eos, keep, axis=1)] = -np.inf
        if keep.shape[1] and m < k:
            scores[:, m:] = -np.inf
        parent = (rows * k + chosen // V).reshape(N)
        tokens = (chosen % V).reshape(N)
        history = np.concatenate([history[parent], tokens[:, None]], axis=1)
        state = tuple(a[parent] for a in state)
        done |= np.array([len(f) >= k for f in finished])
        if done.all():
            break
    out = []
    for b in range(batch):
        hyps = finished[b]
        if len(hyps) < n_best:
            for j in range(k):
                s = float(scores[b, j])
                if np.isfinite(s):
                    toks = history[b * k + j].tolist()
                    hyps.append(Hypothesis(toks, s, s / float(length_penalty(len(toks), alpha)),
                                           False))
        hyps.sort(key=lambda h: -h.score)
        out.append(hyps[:n_best])
    return out
