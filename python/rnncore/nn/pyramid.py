"""The pyramid encoder of Listen, Attend and Spell (Chan et al. 2016).

Layer 0 reads the input frames; every layer above it reads pairs of neighbouring outputs of the
layer below, concatenated, so each halves the time steps:

    x (T, B, I) -> layer 0 -> (T, B, F) -> pairs -> (ceil(T/2), B, 2F) -> layer 1 -> ... -> y

with F = D * hidden_size (D = 2 when bidirectional). Frame t of layer k+1 reads frames 2t and
2t+1 of layer k: [y_k(2t), y_k(2t+1)] along the feature axis. A stack of num_layers layers
returns ceil-halved time num_layers - 1 times (T / 2^(num_layers-1) for T a multiple of it).

Odd lengths: the last frame is padded, never dropped. When a layer's number of frames is odd, a
zero frame is appended before pairing, so an odd last frame is read as [y_k(T-1), 0]; each
sequence's length becomes ceil(length / 2). Outputs past a sequence's length are zero (as in
every rnncore module), so a sequence of odd length inside a longer batch sees the same zero
partner as alone: the encoding of a sequence does not depend on its batch. No frame, and no
information, is lost, and a CTC output has at least ceil(T / 2^(num_layers-1)) frames.

forward(x, lengths=None) -> (y, out_lengths); backward(dy) -> dx (after a training forward),
adding every layer's parameter gradients into .grads (zero them with zero_grad()).
Time-major only.
"""
from __future__ import annotations

import numpy as np

from rnncore.nn.model import Model
from rnncore.nn.module import Tape, positive_int
from rnncore.nn.recurrent import LSTM
from rnncore.nn.registry import make_module


def halve_lengths(lengths):
    """Sequence lengths after one pyramid layer: ceil(length / 2)."""
    return (np.asarray(lengths, dtype=np.int64) + 1) // 2


def pair_frames(y):
    """(T, B, F) -> (ceil(T/2), B, 2F): frames 2t and 2t+1 side by side, a zero frame appended
    when T is odd."""
    T, B, F = y.shape
    if T % 2:
        y = np.concatenate([y, np.zeros((1, B, F), dtype=y.dtype)])
    return np.ascontiguousarray(y.reshape(-1, 2, B, F).transpose(0, 2, 1, 3)).reshape(-1, B, 2 * F)


def unpair_frames(dx, T):
    """The adjoint of pair_frames: (ceil(T/2), B, 2F) -> (T, B, F) (the padded frame's gradient
    is dropped)."""
    half, B, F2 = dx.shape
    d = dx.reshape(half, B, 2, F2 // 2).transpose(0, 2, 1, 3).reshape(2 * half, B, F2 // 2)
    return np.ascontiguousarray(d[:T])


class PyramidEncoder(Model):
    """num_layers recurrent layers; the ones above the first halve the time steps by pairing
    neighbouring frames (see the module docstring for the odd-length rule). cell: a registry
    cell name (e.g. "gru") or an rnncore sequence module class (default rnncore.LSTM).
    Children "layer0", "layer1", ...: each a one-layer rnncore module, so parameter names are
    "layer1.weight_ih_l0" and so on."""

    def __init__(self, input_size, hidden_size, num_layers=3, cell=LSTM, bidirectional=True,
                 dtype=np.float32, seed=None):
        super().__init__()
        positive_int("input_size", input_size)
        positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.hidden_size = int(hidden_size)
        self.output_size = (2 if bidirectional else 1) * self.hidden_size
        by_name = isinstance(cell, str)
        self.config = dict(input_size=int(input_size), hidden_size=int(hidden_size),
                           num_layers=self.num_layers, cell=cell if by_name else cell.__name__,
                           bidirectional=bool(bidirectional), dtype=np.dtype(dtype).name)
        for k in range(self.num_layers):
            size = input_size if k == 0 else 2 * self.output_size
            options = dict(bidirectional=bidirectional, dtype=dtype,
                           seed=None if seed is None else seed + k)
            self.add_module(f"layer{k}", make_module(cell, size, hidden_size, **options)
                            if by_name else cell(size, hidden_size, **options))
        self._init_core()

    _core_state = ("_pending",)  # a copy has no pending backward

    def _init_core(self):
        self._pending = Tape("PyramidEncoder")  # the frame counts of the layers below the top

    @property
    def layers(self):
        return [m for _, m in self.named_children()]

    def output_lengths(self, lengths):
        """Lengths after the encoder: ceil-halved num_layers - 1 times."""
        lengths = np.asarray(lengths, dtype=np.int64)
        for _ in range(self.num_layers - 1):
            lengths = halve_lengths(lengths)
        return lengths

    def forward(self, x, lengths=None):
        """x (T, B, input_size); lengths (B,) or None. Returns (y (T', B, output_size),
        out_lengths (B,) int64) with T' = T ceil-halved num_layers - 1 times."""
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (T, B, input_size) (time-major), got shape "
                             f"{x.shape}")
        if lengths is None:
            lengths = np.full(x.shape[1], x.shape[0], dtype=np.int64)
        lengths = np.asarray(lengths)
        recording = self._begin_record()  # the layers' records are replaced from here on
        frames = []  # frames[k]: the time steps of layer k's output, k below the top
        y = x
        for k, layer in enumerate(self.layers):
            if k:
                frames.append(y.shape[0])
                y = pair_frames(y)
                lengths = halve_lengths(lengths)
            y, _ = layer(y, lengths=lengths)
        if recording:
            with self._lock:
                self._pending.push(frames)
        return y, np.asarray(lengths, dtype=np.int64)

    def backward(self, dy):
        """dy (T', B, output_size) -> dx (T, B, input_size); adds parameter gradients."""
        with self._lock:
            frames = self._pending.last()
            d = self.layers[-1].backward(dy)[0]  # checks dy: a bad one consumes nothing
            self._pending.pop()
        for k in range(self.num_layers - 2, -1, -1):
            d = self.layers[k].backward(unpair_frames(d, frames[k]))[0]
        return d
