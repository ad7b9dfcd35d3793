"""Shared machinery of rnncore's modules: parameters, gradients, modes, state dicts, input checks."""
from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def as_array(name, value, dtype):
    """Numeric array-like (numpy array, list, torch CPU tensor) -> C-contiguous array of dtype.

    At most one copy: none when value is already a C-contiguous array of that dtype."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from e
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array (float or int), got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def check_shape(name, a, expected, what=""):
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}{what}, got {tuple(a.shape)}")


def check_lengths(lengths, seq_len, batch):
    """lengths -> int64 array (B,) with 0 <= len <= T, or None."""
    if lengths is None:
        return None
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):
        lengths = lengths.detach().cpu().numpy()
    a = np.asarray(lengths)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.size and np.all(np.mod(a, 1) == 0):
            a = a.astype(np.int64)
        elif a.size or a.dtype.kind not in "f":
            raise TypeError(f"lengths must be an integer array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    check_shape("lengths", a, (batch,), " (one length per sequence of the batch)")
    bad = np.flatnonzero((a < 0) | (a > seq_len))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"lengths must lie in [0, {seq_len}] (the sequence length), "
                         f"got lengths[{i}] = {int(a[i])}")
    return a


def to_numpy(value):
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Module:
    """Parameters and gradients as dicts of live numpy arrays; train/eval modes; state dicts.

    `params[name]` arrays are updated in place by optimisers and by load_state_dict, so
    references to them stay valid. `grads` has the same keys and shapes; backward adds into it.
    """

    def __init__(self, dtype):
        self.dtype = float_dtype(dtype)
        self.params = OrderedDict()
        self.grads = OrderedDict()
        self.training = True

    def _add_param(self, name, value):
        self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode=True):
        self.training = bool(mode)
        if not self.training:
            self._drop_tape()
        return self

    def eval(self):
        return self.train(False)

    def _drop_tape(self):
        pass

    def num_parameters(self):
        return int(sum(p.size for p in self.params.values()))

    def state_dict(self):
        """An OrderedDict of copies of the parameters, with PyTorch's names."""
        return OrderedDict((k, v.copy()) for k, v in self.params.items())

    def load_state_dict(self, state_dict, strict=True):
        """Copies values (numpy arrays or torch tensors) into the live parameter arrays.

        strict: missing or unexpected keys raise KeyError listing them. A wrong shape raises
        ValueError naming the key and both shapes. Nothing is written unless all checks pass."""
        keys = list(state_dict.keys())
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in keys if k not in self.params]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict({type(self).__name__}): " + "; ".join(parts))
        staged = []
        for k in keys:
            if k not in self.params:
                continue
            v = to_numpy(state_dict[k])
            if v.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {k} must be numeric, got dtype {v.dtype}")
            if tuple(v.shape) != self.params[k].shape:
                raise ValueError(f"load_state_dict: {k} has shape {tuple(v.shape)}, "
                                 f"expected {self.params[k].shape}")
            staged.append((k, v))
        for k, v in staged:
            self.params[k][...] = v
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # The C++ objects (workspaces, pending backward steps) are not part of the model: a pickled or
    # copied module leaves them behind and builds fresh ones, so the copy computes the same
    # outputs and has no pending backward.
    _core_state = ()

    def _init_core(self):
        pass

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in self._core_state:
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_core()
