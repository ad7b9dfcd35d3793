"""Attention over a padded batch of encoder outputs, with an explicit backward.

    attn = rnncore.attention.Attention(query_size, key_size, score="general")
    context, weights = attn(query, keys, lengths=src_len)        # one step
    dquery, dkeys = attn.backward(dcontext)                        # (dweights=None)

Shapes (time-major, as the recurrent modules): query (B, Q), keys (S, B, K) (the encoder's
outputs: S source positions), context (B, K), weights (B, S). The source positions that count
are given by `lengths` (B,) (position s of row b counts when s < lengths[b]) or by `mask` (S, B)
(True / 1 = a real position, False / 0 = padding); neither = all count.

Scores e[b, s] of query q = query[b] against key k = keys[s, b]:
    "dot"       e = q . k                               (Luong et al. 2015; needs Q == K)
    "general"   e = q^T W k,   W = params["weight"] (Q, K)       (Luong "general")
    "additive"  e = v . tanh(W_q q + W_k k + b)          (Bahdanau et al. 2015)
                W_q = params["query_proj.weight"] (A, Q), W_k = params["key_proj.weight"] (A, K),
                b = params["key_proj.bias"] (A,) (bias=True), v = params["energy.weight"] (1, A)
then weights = softmax over the counted positions (padding gets exactly 0; a row with no counted
position is a ValueError) and context = sum_s weights[b, s] keys[s, b].

Backward (per row; dw = dweights + keys . dcontext):
    dkeys[s] += w_s dcontext,   de_s = w_s (dw_s - sum_r w_r dw_r)
and through the score: dot dq = sum_s de_s k_s, dk_s += de_s q; general with u = W^T q:
du = sum_s de_s k_s, dk_s += de_s u, dW += q du^T, dq = W du; additive with t = tanh(.):
dv += sum_s de_s t_s, g_s = de_s v (1 - t_s^2), dW_q += (sum_s g_s) q^T, dq = W_q^T sum_s g_s,
dW_k += sum_s g_s k_s^T, db += sum_s g_s, dk_s += W_k^T g_s. Padded positions have w = 0, hence
exactly zero gradient (their keys are replaced by zeros once, so even NaN padding stays out).

Decoders attend over the same keys at every step: `memory = attn.memory(keys, lengths=...)`
checks the keys and precomputes what does not depend on the query (additive: W_k k + b, once
per sequence instead of once per step); then each step is `attn(query, memory)`, whose backward
returns (dquery, None) and accumulates the key gradient in the memory; after the last step's
backward, `dkeys = attn.backward_memory(memory)` adds the key-side parameter gradients and
returns dL/dkeys (S, B, K). `attn(query, keys)` with plain keys does both in one call, and its
backward returns (dquery, dkeys).

Training-mode steps are kept on a stack, as rnncore's cells keep theirs: run forward over the
steps, then backward once per step, last step first. eval() / rnncore.no_grad() keep nothing.
`memory.select(rows)` gathers batch rows (beam search: np.repeat(arange(B), beam), reordering
hypotheses), for inference.

Parameters start uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)] (nn.Linear's rule); the names
are those of the equivalent torch.nn.Linear children, so a torch implementation loads them.
float32 or float64 (`dtype`); inputs of another float dtype are converted.
"""
from __future__ import annotations

import numpy as np

from rnncore._ext import core
from rnncore.nn.module import (
    Module,
    StepTape,
    as_array,
    check_lengths,
    check_parameter_memory,
    positive_int,
    to_numpy,
    uniform,
)

SCORES = ("dot", "general", "additive")


def matmul(a, b, out=None, trans_a=False, trans_b=False, accumulate=False):
    """op(a) op(b) (2-D) on rnncore's own threads: numpy's BLAS threads would compete with
    them for the cores (measured: a (64, 384) x (384, 128) product took 34 ms through numpy
    right after a core call on 2 busy cores, 48 us here)."""
    return core.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), out,
                        trans_a=trans_a, trans_b=trans_b, accumulate=accumulate)


class AttentionMemory:
    """The keys of one batch as attention reads them (made by Attention.memory()).

    keys (B, S, K) batch-major, padded positions zeroed; mask (B, S) bool or None (all count);
    projected (B, S, A) = W_k k + b for additive scores. In training mode the key gradients of
    the steps accumulate in dkeys (B, S, K) and dprojected (B, S, A) until backward_memory()."""

    def __init__(self, owner, keys, mask, projected, recording):
        self.owner = owner
        self.keys = keys
        self.mask = mask
        self.projected = projected
        self.recording = recording
        self.dkeys = None
        self.dprojected = None
        self.pending = 0  # training steps over this memory not yet back-propagated

    @property
    def batch_size(self):
        return self.keys.shape[0]

    @property
    def source_len(self):
        return self.keys.shape[1]

    def select(self, rows):
        """A memory of the batch rows `rows` (int array; repeats allowed), for inference (beam
        search expands each row to its hypotheses and reorders them)."""
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"rows must be an integer array, got dtype {rows.dtype}")
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.batch_size):
            raise IndexError(f"rows must lie in [0, {self.batch_size}) (the batch size), got "
                             f"values from {rows.min()} to {rows.max()}")
        take = lambda a: None if a is None else np.ascontiguousarray(a[rows])
        return AttentionMemory(self.owner, take(self.keys), take(self.mask),
                               take(self.projected), False)


class Attention(Module):
    """Dot, general (Luong) or additive (Bahdanau) attention; see the module docstring.

    query_size Q, key_size K; attention_size A (additive only; default K); bias (additive: the
    b of key_proj)."""

    _core_state = ("_pending",)

    def __init__(self, query_size, key_size, score="general", attention_size=None, bias=True,
                 dtype=np.float32, seed=None):
        super().__init__(dtype)
        self.query_size = positive_int("query_size", query_size)
        self.key_size = positive_int("key_size", key_size)
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score
        if score == "dot" and self.query_size != self.key_size:
            raise ValueError(f"score='dot' needs query_size == key_size, got query_size="
                             f"{self.query_size} and key_size={self.key_size}")
        self.attention_size = positive_int("attention_size", attention_size
                                           if attention_size is not None else self.key_size)
        self.bias = bool(bias)
        rng = np.random.default_rng(seed)
        Q, K, A = self.query_size, self.key_size, self.attention_size
        u = lambda fan_in, *shape: uniform(rng, 1.0 / np.sqrt(fan_in), shape, self.dtype)
        if score == "general":
            check_parameter_memory(repr(self), Q * K, self.dtype)
            self._add_param("weight", u(K, Q, K))
        elif score == "additive":
            check_parameter_memory(repr(self), A * (Q + K + 1 + self.bias), self.dtype)
            self._add_param("query_proj.weight", u(Q, A, Q))
            self._add_param("key_proj.weight", u(K, A, K))
            if self.bias:
                self._add_param("key_proj.bias", u(K, A))
            self._add_param("energy.weight", u(A, 1, A))
        self._init_core()

    def _init_core(self):
        self._pending = StepTape("Attention")  # training steps not yet back-propagated

    @property
    def pending_steps(self):
        """Training-mode steps not yet back-propagated."""
        return len(self._pending)

    def clear_pending(self):
        """Drops every pending training step without back-propagating it."""
        with self._lock:
            self._drop_tape()

    # ---- the keys -------------------------------------------------------------------------
    def memory(self, keys, mask=None, lengths=None):
        """keys (S, B, K) with mask (S, B) or lengths (B,) (not both) -> an AttentionMemory.

        ValueError when a batch row has no counted position (its softmax would be 0 / 0)."""
        k = as_array("keys", keys, self.dtype)
        if k.ndim != 3 or k.shape[2] != self.key_size:
            raise ValueError(f"keys must have shape (S, B, {self.key_size}) (source positions, "
                             f"batch, key_size), got {k.shape}")
        S, B = k.shape[0], k.shape[1]
        if mask is not None and lengths is not None:
            raise ValueError("give either mask or lengths, not both")
        m = None
        if lengths is not None:
            lens = check_lengths(lengths, S, B)
            m = np.arange(S)[None, :] < lens[:, None]          # (B, S)
        elif mask is not None:
            a = to_numpy(mask)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"mask must be a boolean or 0/1 array, got dtype {a.dtype}")
            if a.shape != (S, B):
                raise ValueError(f"mask must have shape (S, B) = {(S, B)} (the first two "
                                 f"dimensions of keys), got {a.shape}")
            if a.dtype.kind != "b":
                if not np.all((a == 0) | (a == 1)):
                    raise ValueError("mask must hold only 0/1 or booleans (1 = a real source "
                                     "position, 0 = padding)")
            m = np.ascontiguousarray(a.T != 0)
        elif B and not S:
            raise ValueError("keys has no source position (S = 0): attention needs at least one")
        if m is not None:
            empty = np.flatnonzero(~m.any(axis=1))
            if empty.size:
                raise ValueError(f"every batch row needs at least one unmasked source position "
                                 f"for attention; row {int(empty[0])} has none "
                                 f"({empty.size} such rows)")
            if m.all():
                m = None
        kb = np.ascontiguousarray(k.transpose(1, 0, 2))            # (B, S, K)
        if m is not None:
            kb[~m] = 0  # padding may hold anything (NaN included): it must not reach the sums
        projected = None
        if self.score == "additive":
            projected = matmul(kb.reshape(B * S, -1), self.params["key_proj.weight"],
                               trans_b=True).reshape(B, S, -1)        # (B, S, A)
            if self.bias:
                projected += self.params["key_proj.bias"]
        return AttentionMemory(self, kb, m, projected, self._recording())

    def backward_memory(self, memory):
        """After every step over `memory` has been back-propagated: adds the key-side parameter
        gradients (additive: key_proj) and returns dL/dkeys (S, B, K) (zero at padding)."""
        if not isinstance(memory, AttentionMemory) or memory.owner is not self:
            raise TypeError("memory must be an AttentionMemory made by this attention's memory()")
        with self._lock:
            if not memory.recording:
                raise RuntimeError("backward_memory() needs a memory made in training mode "
                                   "(outside rnncore.no_grad())")
            if memory.pending:
                raise RuntimeError(f"backward_memory(): {memory.pending} training steps over "
                                   "this memory have not been back-propagated yet")
            B, S, K = memory.keys.shape
            dkeys = memory.dkeys if memory.dkeys is not None else np.zeros((B, S, K), self.dtype)
            if self.score == "additive" and memory.dprojected is not None:
                g = memory.dprojected.reshape(B * S, -1)
                matmul(g, memory.keys.reshape(B * S, K), self.grads["key_proj.weight"],
                       trans_a=True, accumulate=True)
                if self.bias:
                    self.grads["key_proj.bias"] += g.sum(axis=0)
                dkeys += matmul(g, self.params["key_proj.weight"]).reshape(B, S, K)
            if memory.mask is not None:
                dkeys[~memory.mask] = 0
            memory.dkeys = memory.dprojected = None
            memory.recording = False  # consumed
        return np.ascontiguousarray(dkeys.transpose(1, 0, 2))

    # ---- one step -------------------------------------------------------------------------
    def forward(self, query, keys, mask=None, lengths=None):
        """query (B, Q) over keys (S, B, K) or an AttentionMemory -> (context (B, K),
        weights (B, S)). mask / lengths: with plain keys only (a memory has its own)."""
        own = not isinstance(keys, AttentionMemory)
        if own:
            memory = self.memory(keys, mask=mask, lengths=lengths)
        else:
            memory = keys
            if memory.owner is not self:
                raise ValueError("keys is an AttentionMemory of another Attention module")
            if mask is not None or lengths is not None:
                raise ValueError("mask / lengths belong to memory(); an AttentionMemory already "
                                 "has its own")
        q = as_array("query", query, self.dtype)
        B, S, K = memory.keys.shape
        if q.shape != (B, self.query_size):
            raise ValueError(f"query must have shape (B, query_size) = {(B, self.query_size)}, "
                             f"got {q.shape}")
        kb = memory.keys
        tanh = u = None
        if self.score == "dot":
            e = (kb @ q[:, :, None])[:, :, 0]
        elif self.score == "general":
            u = matmul(q, self.params["weight"])                     # (B, K)
            e = (kb @ u[:, :, None])[:, :, 0]
        else:
            pq = matmul(q, self.params["query_proj.weight"], trans_b=True)  # (B, A)
            tanh = np.tanh(memory.projected + pq[:, None, :])        # (B, S, A)
            e = np.einsum("bsa,a->bs", tanh, self.params["energy.weight"][0])
        w = _masked_softmax(e, memory.mask)
        context = np.einsum("bs,bsk->bk", w, kb)
        recording = self._recording() and memory.recording
        if recording:
            with self._lock:
                self._pending.push((memory, own, q, w, u, tanh))
                memory.pending += 1
        return context, w

    def backward(self, dcontext, dweights=None):
        """Back-propagates the most recent training step not yet back-propagated.

        dcontext (B, K), dweights (B, S) or None. Adds parameter gradients into `grads`;
        returns (dquery, dkeys): dkeys (S, B, K) when that step got plain keys, None when it got
        an AttentionMemory (its key gradient waits there for backward_memory())."""
        with self._lock:
            memory, own, q, w, u, tanh = self._pending.last()
            B, S, K = memory.keys.shape
            dc = as_array("dcontext", dcontext, self.dtype)
            if dc.shape != (B, K):
                raise ValueError(f"dcontext must have shape (B, key_size) = {(B, K)}, "
                                 f"got {dc.shape}")
            dw_in = None
            if dweights is not None:
                dw_in = as_array("dweights", dweights, self.dtype)
                if dw_in.shape != (B, S):
                    raise ValueError(f"dweights must have shape (B, S) = {(B, S)}, "
                                     f"got {dw_in.shape}")
            self._pending.pop()
            memory.pending -= 1

            kb = memory.keys
            if memory.dkeys is None:
                memory.dkeys = np.zeros_like(kb)
            dkeys = memory.dkeys
            dw = (kb @ dc[:, :, None])[:, :, 0]                      # (B, S)
            if dw_in is not None:
                dw += dw_in
            dkeys += w[:, :, None] * dc[:, None, :]
            de = w * (dw - np.sum(w * dw, axis=1, keepdims=True))    # zero where w == 0
            if self.score == "dot":
                dq = np.einsum("bs,bsk->bk", de, kb)
                dkeys += de[:, :, None] * q[:, None, :]
            elif self.score == "general":
                du = np.einsum("bs,bsk->bk", de, kb)                 # (B, K)
                dkeys += de[:, :, None] * u[:, None, :]
                matmul(q, du, self.grads["weight"], trans_a=True, accumulate=True)
                dq = matmul(du, self.params["weight"], trans_b=True)
            else:
                v = self.params["energy.weight"][0]
                self.grads["energy.weight"][0] += np.einsum("bs,bsa->a", de, tanh)
                g = de[:, :, None] * v * (1 - tanh * tanh)           # (B, S, A)
                gq = g.sum(axis=1)                                   # (B, A)
                matmul(gq, q, self.grads["query_proj.weight"], trans_a=True, accumulate=True)
                dq = matmul(gq, self.params["query_proj.weight"])
                if memory.dprojected is None:
                    memory.dprojected = g
                else:
                    memory.dprojected += g
        if own:
            return dq, self.backward_memory(memory)
        return dq, None

    def __repr__(self):
        extra = ""
        if self.score == "additive":
            extra = f", attention_size={self.attention_size}" + ("" if self.bias else
                                                                 ", bias=False")
        return (f"Attention({self.query_size}, {self.key_size}, score={self.score!r}{extra}, "
                f"dtype={self.dtype.name})")


def _masked_softmax(e, mask):
    """softmax over axis 1 of e (B, S) with mask (B, S) False -> weight exactly 0."""
    if e.size == 0:
        return np.zeros_like(e)
    if mask is not None:
        e = np.where(mask, e, -np.inf)
    p = np.exp(e - e.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p
