"""The trigger-word detector of `rnncore train trigger` (many to many): a unidirectional recurrent
stack over spectrogram frames (BINS frequency bins) and a per-frame logit of "the trigger word
has just ended". The clips are made by the program, rnncore.apps.trigger.
"""
from __future__ import annotations

import numpy as np

from rnncore.nn.layers import Linear
from rnncore.nn.model import Model
from rnncore.nn.module import no_grad
from rnncore.nn.recurrent import GRU
from rnncore.nn.registry import make_module, select

DEFAULT_CELL = select(GRU, reset_after=True)  # the registry cell of rnncore.GRU


BINS = 24                       # frequency bins of the spectrogram


class TriggerDetector(Model):
    """Unidirectional recurrent stack -> Linear(1) per frame: logits (T, B) of "the trigger word
    has just ended"."""

    def __init__(self, cell=DEFAULT_CELL, hidden=64, layers=2, seed=0, dtype=np.float32):
        super().__init__()
        self.config = dict(cell=cell, hidden=int(hidden), layers=int(layers), bins=BINS)
        self.rnn = make_module(cell, BINS, hidden, num_layers=layers, dtype=dtype, seed=seed)
        self.head = Linear(hidden, 1, dtype=dtype, seed=seed + 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)[..., 0]

    def backward(self, dlogits):
        dx, _ = self.rnn.backward(self.head.backward(dlogits[..., None]))
        return dx

    def predict(self, x, chunk=256):
        """Frame probabilities (T, B) in inference mode."""
        out = []
        with no_grad():
            for s in range(0, x.shape[1], chunk):
                out.append(1.0 / (1.0 + np.exp(-self.forward(x[:, s:s + chunk]))))
        return np.concatenate(out, axis=1)
