"""The sentiment classifier of `rnncore train sentiment` (many to one): embedding -> recurrent
stack run with lengths -> the top layer's final state -> two logits; and the vocabulary it reads
(the words of the review grammar that rnncore.apps.sentiment generates).
"""
from __future__ import annotations

import numpy as np

from rnncore.nn.layers import Embedding, Linear
from rnncore.nn.model import Model
from rnncore.nn.module import Tape, no_grad
from rnncore.nn.recurrent import LSTM, last_layer_state, last_layer_state_backward
from rnncore.nn.registry import make_module, select

DEFAULT_CELL = select(LSTM, peephole=False)  # the registry cell of rnncore.LSTM


POSITIVE = ("good", "great", "excellent", "tasty", "friendly", "wonderful", "lovely", "fine")


NEGATIVE = ("bad", "awful", "terrible", "bland", "rude", "boring", "poor", "horrible")


NOUNS = ("food", "service", "movie", "plot", "staff", "room", "music", "view", "price", "acting")


INTENSIFIERS = ("very", "really", "extremely", "so", "quite")


FUNCTION_WORDS = ("the", "was", "not", "at", "all", ",", "it", "but", "although", "i",
                  "expected", "to", "be", "is", "true", "that")


PAD = "<pad>"


VOCABULARY = (PAD,) + FUNCTION_WORDS + NOUNS + INTENSIFIERS + POSITIVE + NEGATIVE


LABELS = ("negative", "positive")


STOI = {w: i for i, w in enumerate(VOCABULARY)}


class SentimentClassifier(Model):
    """Embedding -> recurrent stack (with lengths) -> top layer's final state -> Linear(2).

    forward(tokens (T, B) int, lengths (B,)) -> logits (B, 2); backward(dlogits) back-propagates
    through the final state only (the per-step outputs get no gradient)."""

    def __init__(self, cell=DEFAULT_CELL, embed=32, hidden=64, layers=1, seed=0, dtype=np.float32):
        super().__init__()
        self.config = dict(cell=cell, embed=int(embed), hidden=int(hidden), layers=int(layers))
        self.embed = Embedding(len(VOCABULARY), embed, padding_idx=STOI[PAD], dtype=dtype,
                               seed=seed)
        self.rnn = make_module(cell, embed, hidden, num_layers=layers, dtype=dtype, seed=seed + 1)
        self.head = Linear(hidden, len(LABELS), dtype=dtype, seed=seed + 2)
        self._init_core()

    _core_state = ("_pending",)  # a copy has no pending backward

    def _init_core(self):
        self._pending = Tape("SentimentClassifier")  # the shape of the recurrent outputs

    def forward(self, tokens, lengths):
        recording = self._begin_record()
        y, state = self.rnn(self.embed(tokens), None, lengths=lengths)
        if recording:
            with self._lock:
                self._pending.push(y.shape)
        return self.head(last_layer_state(self.rnn, state))

    def backward(self, dlogits):
        with self._lock:
            y_shape = self._pending.last()
            dlast = self.head.backward(dlogits)  # checks dlogits: a bad one consumes nothing
            self._pending.pop()
        dh_n = last_layer_state_backward(self.rnn, dlast, dlast.shape[0])
        dx, _ = self.rnn.backward(np.zeros(y_shape, dtype=self.rnn.dtype), dh_n)
        self.embed.backward(dx)

    def predict(self, tokens, lengths, chunk=1024):
        """Labels (B,) in inference mode, in chunks of `chunk` sentences."""
        out = []
        with no_grad():
            for s in range(0, tokens.shape[1], chunk):
                L = lengths[s:s + chunk]
                out.append(self.forward(tokens[:int(L.max(initial=0)), s:s + chunk], L).argmax(-1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
