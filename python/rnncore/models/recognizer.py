"""The text-line recogniser of `rnncore train recognize`: columns of a text-line image (HEIGHT
pixels tall) -> a bidirectional LSTM stack or the pyramid encoder -> per-column logits over the
CTC blank and the alphabet, with greedy or prefix-beam decoding. The lines are rendered by the
program, rnncore.apps.recognize.
"""
from __future__ import annotations

import numpy as np

from rnncore.nn.layers import Linear
from rnncore.nn.model import Model
from rnncore.nn.pyramid import PyramidEncoder
from rnncore.nn.recurrent import LSTM
from rnncore.train.ctc import greedy_decode, log_softmax, prefix_beam_search

HEIGHT = 12           # image rows: the 7-row glyphs plus room to move up and down


ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Recognizer(Model):
    """Columns (W, B, HEIGHT) -> encoder (bidirectional LSTM stack or pyramid) -> Linear ->
    logits (W', B, 1 + len(alphabet)) (class 0 is the CTC blank)."""

    def __init__(self, alphabet=ALPHABET, hidden=96, layers=2, pyramid=False, seed=0,
                 dtype=np.float32):
        super().__init__()
        self.alphabet = alphabet
        self.config = dict(alphabet=alphabet, hidden=int(hidden), layers=int(layers),
                           pyramid=bool(pyramid), dtype=np.dtype(dtype).name)
        if pyramid:
            self.encoder = PyramidEncoder(HEIGHT, hidden, num_layers=layers, dtype=dtype,
                                          seed=seed)
        else:
            self.encoder = LSTM(HEIGHT, hidden, num_layers=layers, bidirectional=True,
                                dtype=dtype, seed=seed)
        self.head = Linear(2 * hidden, 1 + len(alphabet), dtype=dtype, seed=seed + 100)

    def forward(self, x, widths):
        if self.config["pyramid"]:
            y, lengths = self.encoder(x, widths)
        else:
            (y, _), lengths = self.encoder(x, lengths=widths), np.asarray(widths)
        return self.head(y), lengths

    def backward(self, dlogits):
        self.encoder.backward(self.head.backward(dlogits))

    def decode(self, x, widths, beam_width=1):
        """Class ids (1-based into the alphabet) read from a batch of columns: greedy decoding
        when beam_width == 1, else the best of a prefix beam search."""
        logits, lengths = self.forward(x, widths)
        if beam_width == 1:
            ids = greedy_decode(logits, lengths)
        else:
            ids = [r[0][0] for r in prefix_beam_search(log_softmax(logits), lengths, beam_width)]
        return ids
