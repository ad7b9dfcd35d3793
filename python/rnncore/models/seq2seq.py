"""Sequence to sequence with attention: a bidirectional encoder, an attentional decoder with input
feeding (Luong et al. 2015), teacher forcing, and greedy / batched beam-search decoding.

    model = rnncore.seq2seq.Seq2Seq(src_vocab, tgt_vocab, embed=32, hidden=128, cell=None,
                                    score="general")     # cell None: the plain LSTM
    logits = model(src, tgt_in, src_lengths)     # src (S, B), tgt_in (T, B) int; -> (T, B, V)
    loss, dlogits = rnncore.losses.cross_entropy(logits, tgt_out, mask=tgt_mask)
    model.backward(dlogits)                      # adds into model.grads
    hyps = model.greedy(src, src_lengths, max_len=20)          # list of token lists
    nbest = model.beam_search(src, src_lengths, beam=5, alpha=0.6, n_best=3)

The model, with E = embed, H = hidden (time-major; padding of src past src_lengths is ignored):
    encoder      y, h_n = bidirectional RNN(src_embed(src), lengths)  keys y (S, B, 2H)
    bridge       h_0 = tanh(W_b [h_n fwd; h_n bwd] + b_b), c_0 = 0   (decoder's first state)
    step t       x_t = [tgt_embed(tgt_in[t]); h~_{t-1}]   (input feeding, h~_{-1} = 0)
                 h_t (, c_t) = decoder cell(x_t, state_{t-1})        (e.g. rnncore.LSTMCell)
                 ctx_t, a_t = attention(h_t, keys)                   (rnncore.attention)
                 h~_t = tanh(W_c [ctx_t; h_t])                        (combine, no bias)
    output       logits_t = W_o h~_t + b_o                            (out, once for all steps)
The decoder runs forward step by step through the cells, then backward step by step, last step
first; the attention memory, the encoder and the embeddings get their gradients once after.

Decoding works through `step(tokens, state) -> (log_probs, state)` functions over a batch of N
rows: greedy_search and beam_search (rnncore.decode) serve any such model.
"""
from __future__ import annotations

import numpy as np

# re-exported: rnncore.seq2seq has always offered the decoding functions beside the model
from rnncore.decode import (  # noqa: F401
    Hypothesis,
    _check_int,
    beam_search,
    greedy_search,
    length_penalty,
    log_softmax,
)
from rnncore.nn import registry as _registry
from rnncore.nn.attention import Attention, matmul
from rnncore.nn.cells import LSTMCell
from rnncore.nn.layers import Embedding, Linear
from rnncore.nn.model import Model
from rnncore.nn.module import Tape, no_grad, positive_int, to_numpy
from rnncore.train.losses import cross_entropy


def default_cell():
    """The registry cell of a plain rnncore.LSTMCell (no peepholes): Seq2Seq's default."""
    return _registry.select(LSTMCell, peephole=False)


class Seq2Seq(Model):
    """Encoder-decoder with attention and input feeding; see the module docstring.

    src_vocab, tgt_vocab: vocabulary sizes; embed E, hidden H; cell: any cell of the registry
    (rnncore._registry.CELLS; None = the plain LSTM), for the encoder (its bidirectional
    sequence module) and the decoder (its single-step cell); score: the attention's ("general" or "additive"); bos, eos: target token ids
    decoding starts with and stops at. Child modules (parameter names "encoder.weight_ih_l0",
    ...): src_embed, encoder, bridge, tgt_embed, decoder, attention, combine, out."""

    def __init__(self, src_vocab, tgt_vocab, embed=32, hidden=128, cell=None, score="general",
                 bos=1, eos=2, dtype=np.float32, seed=None):
        super().__init__()
        cell = default_cell() if cell is None else cell
        if cell not in _registry.CELLS:
            raise ValueError(f"cell must be one of {', '.join(_registry.CELLS)} (the registry's "
                             f"cells), got {cell!r}")
        if score not in ("general", "additive"):
            raise ValueError(f"score must be 'general' or 'additive' (the decoder's H-wide "
                             f"query meets 2H-wide keys of the bidirectional encoder, so 'dot' "
                             f"does not apply), got {score!r}")
        src_vocab = positive_int("src_vocab", src_vocab)
        tgt_vocab = positive_int("tgt_vocab", tgt_vocab)
        E, H = positive_int("embed", embed), positive_int("hidden", hidden)
        for name, v in (("bos", bos), ("eos", eos)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) \
                    or not 0 <= v < tgt_vocab:
                raise ValueError(f"{name} must be a token id in [0, {tgt_vocab}) (tgt_vocab), "
                                 f"got {v!r}")
        self.config = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, embed=E, hidden=H,
                           cell=cell, score=score, bos=int(bos), eos=int(eos))
        self.bos, self.eos, self.cell, self.hidden, self.embed = int(bos), int(eos), cell, H, E
        self._has_c = _registry.info(cell).has_cell_state  # LSTMs: state (h, c)
        seeds = np.random.SeedSequence(seed).generate_state(8)
        s = lambda i: int(seeds[i])
        self.src_embed = Embedding(src_vocab, E, dtype=dtype, seed=s(0))
        self.encoder = _registry.make_module(cell, E, H, bidirectional=True, dtype=dtype,
                                             seed=s(1))
        self.bridge = Linear(2 * H, H, dtype=dtype, seed=s(2))
        self.tgt_embed = Embedding(tgt_vocab, E, dtype=dtype, seed=s(3))
        self.decoder = _registry.make_cell(cell, E + H, H, dtype=dtype, seed=s(4))
        self.attention = Attention(H, 2 * H, score=score, dtype=dtype, seed=s(5))
        self.combine = Linear(3 * H, H, bias=False, dtype=dtype, seed=s(6))
        self.out = Linear(H, tgt_vocab, dtype=dtype, seed=s(7))
        object.__setattr__(self, "dtype", self.out.dtype)
        self._init_core()

    _core_state = ("_pending",)  # a copy has no pending backward

    def _init_core(self):
        self._pending = Tape("Seq2Seq")  # (memory, h~ per step, [ctx; h] per step, h0, B, T)

    # ---- pieces ---------------------------------------------------------------------------
    def _tokens(self, name, a, vocab, shape=None):
        a = to_numpy(a)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array of token ids, got dtype {a.dtype}")
        if a.ndim != 2 or (shape is not None and a.shape[1] != shape):
            want = "(len, B)" if shape is None else f"(len, {shape})"
            raise ValueError(f"{name} must have shape {want} (time-major token ids), got "
                             f"{a.shape}")
        return a

    def encode(self, src, src_lengths=None):
        """src (S, B) int -> (attention memory, decoder's first state (h, c), what backward
        needs). Lengths: (B,) int, 1 <= len <= S (None: all S)."""
        src = self._tokens("src", src, None)
        S, B = src.shape
        if src_lengths is not None:
            src_lengths = to_numpy(src_lengths)
            if src_lengths.shape == (B,) and src_lengths.dtype.kind in "iu" \
                    and (src_lengths < 1).any():
                i = int(np.flatnonzero(src_lengths < 1)[0])
                raise ValueError(f"src_lengths must be >= 1 (attention needs a source position),"
                                 f" got src_lengths[{i}] = {src_lengths[i]}")
        emb = self.src_embed(src)
        y, state = self.encoder(emb, None, lengths=src_lengths)
        h_n = state[0] if self._has_c else state
        H = self.hidden
        hcat = np.concatenate([h_n[0], h_n[1]], axis=1)               # (B, 2H)
        h0 = np.tanh(self.bridge(hcat))
        c0 = np.zeros((B, H if self._has_c else 0), dtype=self.dtype)
        memory = self.attention.memory(y, lengths=src_lengths)
        return memory, (h0, c0), h0

    def _step(self, emb, h, c, htilde, memory):
        """One decoder step: -> (h, c, h~, z = [ctx; h], attention weights)."""
        x = np.concatenate([emb, htilde], axis=1)
        if self._has_c:
            h, c = self.decoder(x, (h, c))
        else:
            h = self.decoder(x, h)
        ctx, w = self.attention(h, memory)
        z = np.concatenate([ctx, h], axis=1)
        htilde = np.tanh(matmul(z, self.combine.params["weight"], trans_b=True))
        return h, c, htilde, z, w

    # ---- training -------------------------------------------------------------------------
    def forward(self, src, tgt_in, src_lengths=None):
        """Teacher forcing: src (S, B), tgt_in (T, B) int (BOS, y_1, ..., y_{T-1}); returns
        logits (T, B, tgt_vocab) for y_1 .. y_T. Training mode keeps what backward needs."""
        recording = self._begin_record()
        if recording:  # an earlier forward's steps that were never back-propagated
            self.decoder.clear_pending()
            self.attention.clear_pending()
        memory, (h, c), h0 = self.encode(src, src_lengths)
        B = memory.batch_size
        tgt_in = self._tokens("tgt_in", tgt_in, None, B)
        T = tgt_in.shape[0]
        emb = self.tgt_embed(tgt_in)                                  # (T, B, E)
        htilde = np.zeros((B, self.hidden), dtype=self.dtype)
        htildes, zs = [], []
        for t in range(T):
            h, c, htilde, z, _ = self._step(emb[t], h, c, htilde, memory)
            htildes.append(htilde)
            zs.append(z)
        Ht = np.stack(htildes) if T else np.zeros((0, B, self.hidden), dtype=self.dtype)
        logits = self.out(Ht)
        if recording:
            with self._lock:
                self._pending.push((memory, Ht, zs, h0, B, T))
        return logits

    def backward(self, dlogits):
        """Back-propagates the last training forward; adds every gradient into grads."""
        with self._lock:
            memory, Ht, zs, h0, B, T = self._pending.last()
            dHt = self.out.backward(dlogits)  # (T, B, H); checks dlogits: a bad one consumes nothing
            self._pending.pop()
        H, E = self.hidden, self.embed
        Wc = self.combine.params["weight"]
        dWc = self.combine.grads["weight"]
        demb = np.empty((T, B, E), dtype=self.dtype)
        dhtilde = np.zeros((B, H), dtype=self.dtype)
        dh = np.zeros((B, H), dtype=self.dtype)
        dc = np.zeros((B, H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            dpre = (dHt[t] + dhtilde) * (1 - Ht[t] * Ht[t])
            matmul(dpre, zs[t], dWc, trans_a=True, accumulate=True)
            dz = matmul(dpre, Wc)
            dq, _ = self.attention.backward(dz[:, :2 * H])
            dh = dh + dq + dz[:, 2 * H:]
            if self._has_c:
                dx, (dh, dc) = self.decoder.backward((dh, dc))
            else:
                dx, dh = self.decoder.backward(dh)
            demb[t] = dx[:, :E]
            dhtilde = dx[:, E:]
        self.tgt_embed.backward(demb)
        dkeys = self.attention.backward_memory(memory)                # (S, B, 2H)
        dhcat = self.bridge.backward(dh * (1 - h0 * h0))              # through tanh(bridge)
        dh_n = np.stack([dhcat[:, :H], dhcat[:, H:]])                 # (2, B, H)
        if self._has_c:
            dsrc, _ = self.encoder.backward(dkeys, (dh_n, np.zeros_like(dh_n)))
        else:
            dsrc, _ = self.encoder.backward(dkeys, dh_n)
        self.src_embed.backward(dsrc)
        return None

    def loss(self, src, tgt_in, tgt_out, src_lengths=None, tgt_lengths=None,
             label_smoothing=0.0):
        """Teacher-forced cross-entropy (mean over the target tokens within tgt_lengths);
        in training mode also back-propagates it. Returns (loss, logits)."""
        logits = self.forward(src, tgt_in, src_lengths)
        T, B = logits.shape[:2]
        mask = None
        if tgt_lengths is not None:
            mask = np.arange(T)[:, None] < np.asarray(tgt_lengths)[None, :]
        loss, dlogits = cross_entropy(logits, tgt_out, mask=mask,
                                      label_smoothing=label_smoothing)
        if self._tape is not None:
            self.backward(dlogits)
        return loss, logits

    # ---- decoding -------------------------------------------------------------------------
    def _decoder(self, memory, record=None):
        """step(tokens, (h, c, h~)) -> (log_probs, state) over `memory`'s rows (inference)."""
        W_emb = self.tgt_embed.params["weight"]
        W_out, b_out = self.out.params["weight"], self.out.params["bias"]

        def step(tokens, state):
            h, c, htilde = state
            h, c, htilde, _, w = self._step(W_emb[tokens], h, c, htilde, memory)
            if record is not None:
                record.append(w)
            return log_softmax(matmul(htilde, W_out, trans_b=True) + b_out), (h, c, htilde)
        return step

    def greedy(self, src, src_lengths=None, max_len=50, return_attention=False):
        """Greedy decoding of src (S, B): a list of B Hypothesis (tokens without BOS / EOS);
        with return_attention also the attention weights (steps, B, S) of every step."""
        with no_grad():
            memory, (h0, c0), _ = self.encode(src, src_lengths)
            B = memory.batch_size
            weights = []
            step = self._decoder(memory, weights if return_attention else None)
            state = (h0, c0, np.zeros((B, self.hidden), dtype=self.dtype))
            hyps = greedy_search(step, state, B, self.bos, self.eos, max_len)
        if return_attention:
            S = memory.source_len
            return hyps, (np.stack(weights) if weights else np.zeros((0, B, S)))
        return hyps

    def beam_search(self, src, src_lengths=None, beam=5, max_len=50, alpha=0.6, n_best=1):
        """Batched beam search (see beam_search): per batch row, its n_best Hypothesis."""
        beam = _check_int("beam", beam, 1)
        with no_grad():
            memory, (h0, c0), _ = self.encode(src, src_lengths)
            B = memory.batch_size
            expanded = memory.select(np.repeat(np.arange(B), beam))
            state = (h0, c0, np.zeros((B, self.hidden), dtype=self.dtype))
            return beam_search(self._decoder(expanded), state, B, beam, self.bos, self.eos,
                               max_len, alpha=alpha, n_best=n_best)
