"""The captioning model of `rnncore train caption` (Show, Attend and Tell at toy scale): the
region encoder and the attentional LSTM decoder, and the image and word spaces it is built for
(a GRID x GRID grid of CELL x CELL RGB cells; the caption vocabulary). The images themselves are
drawn by the program, rnncore.apps.caption.
"""
from __future__ import annotations

import numpy as np

from rnncore.nn.attention import Attention
from rnncore.nn.cells import LSTMCell
from rnncore.nn.layers import Embedding, Linear
from rnncore.nn.model import Model
from rnncore.nn.module import Tape, no_grad

COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.9, 0.85, 0.1)}


SHAPES = ("circle", "square", "triangle", "cross")


GRID, CELL = 3, 10                     # a GRID x GRID grid of CELL x CELL pixel cells


REGIONS = GRID * GRID


PATCH = CELL * CELL * 3


PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


VOCABULARY = (PAD, BOS, EOS, "a", "above", "to", "the", "left", "of") + tuple(COLOURS) + SHAPES


STOI = {w: i for i, w in enumerate(VOCABULARY)}


def regions(images):
    """(B, H, W, 3) images -> (REGIONS, B, PATCH + REGIONS): each cell's pixels with the one-hot
    of its position, time-major as attention reads keys."""
    B = images.shape[0]
    cells = images.reshape(B, GRID, CELL, GRID, CELL, 3).transpose(1, 3, 0, 2, 4, 5)
    cells = cells.reshape(REGIONS, B, PATCH)
    where = np.broadcast_to(np.eye(REGIONS, dtype=images.dtype)[:, None, :], (REGIONS, B, REGIONS))
    return np.concatenate([cells, where], axis=2)


class Captioner(Model):
    """Region encoder + attentional LSTM decoder (see the module docstring).

    forward(images, tokens (L, B)) -> logits (L, B, V) with teacher forcing (tokens[t - 1]
    feeds step t, <bos> step 0); backward(dlogits). generate(images, max_len) -> greedy token ids
    (max_len, B) and the attention weights (max_len, B, REGIONS)."""

    def __init__(self, features=64, hidden=128, embed=32, attention=64, seed=0,
                 dtype=np.float32):
        super().__init__()
        self.config = dict(features=int(features), hidden=int(hidden), embed=int(embed),
                           attention=int(attention))
        V = len(VOCABULARY)
        self.encoder = Linear(PATCH + REGIONS, 2 * features, dtype=dtype, seed=seed)
        self.encoder2 = Linear(2 * features, features, dtype=dtype, seed=seed + 7)
        self.init_h = Linear(features, hidden, dtype=dtype, seed=seed + 1)
        self.init_c = Linear(features, hidden, dtype=dtype, seed=seed + 2)
        self.embed = Embedding(V, embed, dtype=dtype, seed=seed + 3)
        self.attend = Attention(hidden, features, score="additive", attention_size=attention,
                                dtype=dtype, seed=seed + 4)
        self.cell = LSTMCell(embed + features, hidden, dtype=dtype, seed=seed + 5)
        self.out = Linear(hidden + features, V, dtype=dtype, seed=seed + 6)
        self._init_core()

    _core_state = ("_pending",)  # a copy has no pending backward

    def _init_core(self):
        self._pending = Tape("Captioner")  # (hidden, feats, memory, emb.shape, h0, c0)

    def _encode(self, images):
        """-> (the encoder's hidden layer, region features (S, B, D), the attention memory,
        (h0, c0))."""
        images = np.asarray(images)
        side = GRID * CELL
        if images.ndim != 4 or images.shape[1:] != (side, side, 3):
            raise ValueError(f"images must have shape (B, {side}, {side}, 3), got "
                             f"{images.shape}")
        hidden = np.tanh(self.encoder(regions(images)))
        feats = np.tanh(self.encoder2(hidden))
        mean = feats.mean(axis=0)
        h0, c0 = np.tanh(self.init_h(mean)), np.tanh(self.init_c(mean))
        return hidden, feats, self.attend.memory(feats), (h0, c0)

    def forward(self, images, tokens):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != np.shape(images)[0]:
            raise ValueError(f"tokens must have shape (L, B) with B = {np.shape(images)[0]} "
                             f"images, got {tokens.shape}")
        L, B = tokens.shape
        recording = self._begin_record()
        if recording:  # an earlier forward's steps that were never back-propagated
            self.cell.clear_pending()
            self.attend.clear_pending()
        hidden, feats, memory, (h, c) = self._encode(images)
        h0, c0 = h, c
        previous = np.concatenate([np.full((1, B), STOI[BOS]), tokens[:-1]]).astype(np.int64)
        emb = self.embed(previous)                                  # (L, B, E)
        states, contexts = [], []
        for t in range(L):
            context, _ = self.attend(h, memory)
            h, c = self.cell(np.concatenate([emb[t], context], axis=1), (h, c))
            states.append(h)
            contexts.append(context)
        logits = self.out(np.concatenate([np.stack(states), np.stack(contexts)], axis=2))
        if recording:
            with self._lock:
                self._pending.push((hidden, feats, memory, emb.shape, h0, c0))
        return logits

    def backward(self, dlogits):
        with self._lock:
            hidden, feats, memory, emb_shape, h0, c0 = self._pending.last()
            dout = self.out.backward(dlogits)  # (L, B, H + D); a bad dlogits consumes nothing
            self._pending.pop()
        L, B, E = emb_shape
        H = self.cell.hidden_size
        demb = np.empty(emb_shape, dtype=dout.dtype)
        dh = np.zeros((B, H), dtype=dout.dtype)
        dc = np.zeros((B, H), dtype=dout.dtype)
        for t in reversed(range(L)):
            dx, (dh, dc) = self.cell.backward((dh + dout[t, :, :H], dc))
            demb[t] = dx[:, :E]
            dquery, _ = self.attend.backward(dout[t, :, H:] + dx[:, E:])
            dh = dh + dquery
        self.embed.backward(demb)
        dfeats = self.attend.backward_memory(memory)                 # (S, B, D)
        dmean = self.init_h.backward(dh * (1 - h0 * h0)) + self.init_c.backward(dc * (1 - c0 * c0))
        dfeats += dmean[None] / feats.shape[0]
        dhidden = self.encoder2.backward(dfeats * (1 - feats * feats))
        self.encoder.backward(dhidden * (1 - hidden * hidden))

    def generate(self, images, max_len=12):
        """Greedy decoding of the whole batch: (ids (steps, B), weights (steps, B, S)), steps <=
        max_len (fewer when every caption has its <eos>)."""
        with no_grad():
            _, _, memory, (h, c) = self._encode(images)
            B = images.shape[0]
            word = np.full(B, STOI[BOS], dtype=np.int64)
            ids, weights = [], []
            done = np.zeros(B, dtype=bool)
            for _ in range(max_len):
                context, w = self.attend(h, memory)
                h, c = self.cell(np.concatenate([self.embed(word), context], axis=1), (h, c))
                word = self.out(np.concatenate([h, context], axis=1)).argmax(-1)
                ids.append(word)
                weights.append(w)
                done |= word == STOI[EOS]
                if done.all():
                    break
        return np.stack(ids), np.stack(weights)
