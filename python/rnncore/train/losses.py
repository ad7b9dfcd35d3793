"""Losses that return (loss, dlogits): the reduced loss as a Python float and its gradient
w.r.t. the first argument (same shape and dtype), ready for the model's backward.

Reduction: "mean" divides by the number of counted terms (positions not masked out and not
equal to ignore_index; for the elementwise losses, counted elements), "sum" does not. When
nothing is counted, the loss is 0.0 and the gradient zero (never NaN). All of them are stable
for logits of +-1e4 and far beyond (+-1e30 in float32): no exp of a positive number is taken.
"""
from __future__ import annotations

import numbers

import numpy as np

from rnncore.nn.module import native, native_float_dtype, to_numpy

_REDUCTIONS = ("mean", "sum")


def _float_input(name, value):
    a = to_numpy(value)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    return native(a, native_float_dtype(a.dtype))


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _mask(mask, shape, what):
    """mask -> bool array broadcastable to `shape` whose shape is a prefix of it (None: all)."""
    if mask is None:
        return None
    m = to_numpy(mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"mask must be a boolean or 0/1 array, got dtype {m.dtype}")
    if m.dtype.kind != "b":
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("mask must hold only 0/1 (or booleans); use it to leave positions "
                             "out, not to weight them")
        m = m != 0
    if tuple(m.shape) != tuple(shape[:m.ndim]):
        raise ValueError(f"mask must have shape {what}, got {tuple(m.shape)}")
    return m


def _scale(count, reduction):
    """The factor that turns the sum into the reduced loss (None: nothing counted, mean)."""
    if reduction == "sum":
        return 1.0
    return 1.0 / count if count else None


def cross_entropy(logits, targets, mask=None, ignore_index=None, label_smoothing=0.0,
                  reduction="mean"):
    """Softmax cross-entropy over the last axis: logits (..., C), integer targets (...).

    With p = softmax(z) computed as exp(z - logsumexp(z)) and q = (1 - s) onehot(y) + s / C
    (s = label_smoothing, as torch.nn.functional.cross_entropy):
        loss_n = -sum_c q_c log p_c = logsumexp(z) - (1 - s) z_y - s mean_c(z_c)
        dloss_n/dz = p - q
    Counted positions: mask (bool or 0/1, shape (...)) true and targets != ignore_index; their
    targets must lie in [0, C). Returns (loss, dlogits), dlogits zero at uncounted positions."""
    z = _float_input("logits", logits)
    if z.ndim == 0:
        raise ValueError("logits must have shape (..., C) (classes in the last dimension), got ()")
    C = z.shape[-1]
    t, counted = _class_targets(targets, z.shape[:-1], C, mask, ignore_index, label_smoothing,
                                reduction)
    count = int(counted.sum())
    scale = _scale(count, reduction)
    if scale is None or z.size == 0:
        return 0.0, np.zeros_like(z)

    rows = z.reshape(-1, C)
    y = np.where(counted, t, 0).reshape(-1).astype(np.intp)
    shifted = rows - rows.max(axis=1, keepdims=True)   # <= 0: exp cannot overflow
    z_y = shifted[np.arange(len(y)), y]
    smooth = float(label_smoothing)
    mean_z = shifted.mean(axis=1) if smooth else None
    p = np.exp(shifted, out=shifted)
    sum_exp = p.sum(axis=1)
    p /= sum_exp[:, None]
    lse = np.log(sum_exp)
    per_position = lse - z_y
    if smooth:
        per_position = (1.0 - smooth) * per_position + smooth * (lse - mean_z)
    w = counted.reshape(-1)
    loss = float(np.sum(per_position[w], dtype=np.float64) * scale)

    grad = p
    grad[np.arange(len(y)), y] -= 1.0 - smooth
    if smooth:
        grad -= smooth / C
    grad *= (w * scale).astype(grad.dtype)[:, None]
    return loss, grad.reshape(z.shape)


def _class_targets(targets, shape, C, mask, ignore_index, label_smoothing, reduction):
    """(targets as an integer array of `shape`, the bool array of counted positions), the
    arguments checked (in this order): counted targets lie in [0, C)."""
    t = to_numpy(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array (class indices), got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"targets must have shape {shape} (logits' shape without the "
                         f"class dimension), got {tuple(t.shape)}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
    _check_reduction(reduction)
    counted = np.ones(t.shape, dtype=bool)
    m = _mask(mask, t.shape, f"{tuple(t.shape)} (the shape of targets)")
    if m is not None:
        counted &= m
    if ignore_index is not None:
        counted &= t != ignore_index
    bad = counted & ((t < 0) | (t >= C))
    if bad.any():
        where = np.unravel_index(int(np.flatnonzero(bad)[0]), t.shape)
        raise IndexError(f"targets must lie in [0, {C}) (the number of classes) at counted "
                         f"positions, got {int(t[where])} at position "
                         f"{tuple(int(i) for i in where)}")
    return t, counted


def _elementwise_setup(name_a, a, name_b, b, mask, reduction):
    x = _float_input(name_a, a)
    y = to_numpy(b)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{name_b} must be a numeric array, got dtype {y.dtype}")
    y = np.asarray(y, dtype=x.dtype)
    if y.shape != x.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {x.shape}, got {y.shape}")
    _check_reduction(reduction)
    m = _mask(mask, x.shape, f"{x.shape} or a prefix of it (the shape of {name_a})")
    if m is None:
        count = x.size
    else:
        count = int(m.sum()) * int(np.prod(x.shape[m.ndim:], dtype=np.int64))
        m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
    return x, y, m, count


def _reduce(per_element, grad, m, scale):
    if m is not None:
        per_element = np.where(m, per_element, 0)
        grad *= m
    grad *= grad.dtype.type(scale)
    return float(np.sum(per_element, dtype=np.float64) * scale), grad


def bce_with_logits(logits, targets, mask=None, reduction="mean"):
    """Binary cross-entropy on logits x with targets y in [0, 1] (same shape):
        loss = max(x, 0) - x y + log(1 + exp(-|x|))   (= -y log s(x) - (1 - y) log(1 - s(x)))
        dloss/dx = sigmoid(x) - y
    mask: bool or 0/1 array whose shape is a prefix of logits' shape (broadcast over the rest);
    "mean" divides by the number of counted elements."""
    x, y, m, count = _elementwise_setup("logits", logits, "targets", targets, mask, reduction)
    scale = _scale(count, reduction)
    if scale is None or x.size == 0:
        return 0.0, np.zeros_like(x)
    e = np.exp(-np.abs(x))                      # in (0, 1]: no overflow for any x
    per_element = np.maximum(x, 0) - x * y + np.log1p(e)
    sigmoid = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)
    return _reduce(per_element, sigmoid - y, m, scale)


def mse(pred, target, mask=None, reduction="mean"):
    """Mean squared error: loss = mean((pred - target)^2), dloss/dpred = 2 (pred - target) / n.
    mask: bool or 0/1 array whose shape is a prefix of pred's shape (broadcast over the rest)."""
    x, y, m, count = _elementwise_setup("pred", pred, "target", target, mask, reduction)
    scale = _scale(count, reduction)
    if scale is None or x.size == 0:
        return 0.0, np.zeros_like(x)
    diff = x - y
    return _reduce(diff * diff, 2 * diff, m, scale)
