"""Single-step cells: one time step per call, for loops written by hand (decoders, generation).

A cell in training mode remembers every forward step it has not yet back-propagated, so a manual
loop can run forward over t = 0..T-1 and then call backward T times (last step first), passing
the gradient flowing into each step's new state. Parameter names are PyTorch's cell names
(weight_ih, weight_hh, bias_ih, bias_hh), plus weight_peephole (3, H) for the peephole LSTM.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from rnncore._ext import core
from rnncore._typing import Array, ArrayLike, DTypeLike, LSTMState
from rnncore.nn import module as _base
from rnncore.nn import registry as _registry
from rnncore.nn.module import (
    _ALIGNED_C,
    Module,
    StepTape,
    as_array,
    check_parameter_memory,
    check_shape,
    positive_int,
    ready,
    uniform,
)
from rnncore.nn.precision import check_precision

_ndarray = np.ndarray
_version = _base._parameter_version  # the process-wide parameter version (a one-item list)
_Parameters = _base.Parameters


class PendingStepsWarning(RuntimeWarning):
    """A cell in training mode holds the workspaces of many forward steps that no backward has
    consumed (memory grows with every step until backward(), eval() or clear_pending())."""


class _CellBase(Module):
    _has_cell_state = False
    variants = {}  # registry cell -> the constructor options that select it

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _registry.register_cell(cls)

    def __init__(self, cell, input_size, hidden_size, bias, dtype, seed, precision="float32"):
        super().__init__(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.cell = cell
        self.cell_info = _registry.info(cell)
        G, H, I, P = self.cell_info.gates, self.hidden_size, self.input_size, self.cell_info.peephole_rows
        check_parameter_memory(f"{type(self).__name__}({I}, {H})",
                               G * H * (I + H) + (2 * G * H if self.bias else 0) + P * H, self.dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        u = lambda *shape: uniform(rng, k, shape, self.dtype)
        zeros = lambda *shape: np.zeros(shape, dtype=self.dtype)
        identity = self._identity_init()
        self._add_param("weight_ih", u(G * H, I))
        self._add_param("weight_hh", np.eye(H, dtype=self.dtype) if identity else u(G * H, H))
        if self.bias:
            self._add_param("bias_ih", zeros(G * H) if identity else u(G * H))
            self._add_param("bias_hh", zeros(G * H) if identity else u(G * H))
        if P:
            self._add_param("weight_peephole", u(P, H))
        self._init_core()

    _core_state = ("_pending", "_pending_bytes", "_warned", "_engine", "_engine_version",
                   "_engine_seen", "_flat")

    # Pending training steps past this many bytes of records warn once (PendingStepsWarning).
    pending_warn_bytes = 1 << 30

    def _init_core(self):
        self._pending = StepTape(type(self).__name__)  # (record, B, unbatched) per pending step
        self._pending_bytes = 0
        self._warned = False
        # The step engine keeps its own packed copy of the weights. Before every step
        # _sync_engine checks that it is current (see there), so no step computes with stale
        # weights whatever was done to the parameter arrays.
        self._engine = core.Step(self.cell, self.input_size, self.hidden_size, self.dtype,
                                  getattr(self, "precision", "float32"))
        self._engine_version = None
        self._engine_seen = None  # (params dict, ((name, array), ...), ((array, bytes), ...))
        self._gather_params()

    def _gather_params(self):
        """Moves the parameter arrays into one buffer (`_flat`; `params` holds views of it, in
        order), so that the step's staleness check is one comparison instead of one per array.
        Done when the cell is built and again when it is unpickled or copied."""
        self._flat = None
        arrays = list(self.params.values())
        if not arrays or not all(ready(a, self.dtype) for a in arrays):
            return
        flat = np.empty(sum(a.size for a in arrays), self.dtype)
        offset = 0
        for name, a in list(self.params.items()):
            view = flat[offset:offset + a.size].reshape(a.shape)
            view[...] = a
            offset += a.size
            self.params[name] = view
        self._flat = flat

    def _sync_engine(self):
        """Repacks the engine's weights unless they are those of `params` now, byte for byte:
        the same dict, the same arrays under the same names, the parameter version unchanged,
        and the arrays' bytes equal to a private copy taken when they were packed (a bytearray
        compared with an array is one memcmp, no copy; one for all of them while they are the
        views of `_flat`, else one per array). This catches what the version cannot (writes in
        place by hand, through torch tensors or other views of the arrays, a params dict
        rebound) at the cost of reading the weights once per step. Callers hold the lock."""
        params = self._params  # (not the property: this runs before every step)
        seen = self._engine_seen
        if (seen is not None and seen[0] is params and len(params) == len(seen[1])
                and self._engine_version == _version[0]):
            # A Parameters dict's assignments move the version: its arrays are the same ones
            # while the version stands; another dict's are compared one by one.
            for name, a in () if type(params) is _Parameters else seen[1]:
                if params.get(name) is not a:
                    break
            else:
                for a, packed in seen[2]:
                    if packed != a:
                        break
                else:
                    return
        version = _version[0]
        self._engine.set_weights(params)
        # set_weights has checked every array (dtype, shape, C-contiguous), so bytearray() can
        # take its bytes
        named = tuple(params.items())
        flat = self._flat
        # every array a view of _flat: comparing _flat covers them all
        whole = flat is not None and all(a.base is flat for _, a in named)
        compared = (flat,) if whole else tuple(a for _, a in named)
        self._engine_seen = (params, named, tuple((a, bytearray(a)) for a in compared))
        self._engine_version = version

    def _identity_init(self):
        """W_hh = I and zero biases (IRNN), as rnncore.RNN(nonlinearity="relu")."""
        return False

    def _array(self, name, value):
        # The common case (a native, aligned C-contiguous array of the cell's dtype) without
        # as_array's conversions.
        if ready(value, self.dtype):
            return value
        return as_array(name, value, self.dtype)

    def _state(self, name, value, batch, unbatched):
        if value is None:
            return None
        shape = (self.hidden_size,) if unbatched else (batch, self.hidden_size)
        dt = self.dtype  # ready() inlined (backward's states take this path on every step)
        if (type(value) is _ndarray and value.dtype is dt and value.shape == shape
                and (value.flags.num & _ALIGNED_C) == _ALIGNED_C):
            return value.reshape(1, -1) if unbatched else value  # the common case, no copies
        if isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be an array, got a {type(value).__name__}")
        a = as_array(name, value, self.dtype)
        check_shape(name, a, shape)
        return a.reshape(batch, self.hidden_size)

    def _split(self, name, state, batch, unbatched):
        if not self._has_cell_state:
            return self._state(name[0], state, batch, unbatched), None
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{'state' if name[0] == 'h' else 'dstate'} must be a tuple "
                            f"({name[0]}, {name[1]}) for {type(self).__name__}, got "
                            f"{type(state).__name__}")
        return (self._state(name[0], state[0], batch, unbatched),
                self._state(name[1], state[1], batch, unbatched))

    def _pack(self, h, c, unbatched):
        if unbatched:
            h = h[0]
            c = None if c is None else c[0]
        return (h, c) if self._has_cell_state else h

    def forward(self, x, state=None):
        """One step. x: (B, input_size) or (input_size,); state: h (B, H), or (h, c) for LSTM
        cells, zeros if None. Returns the new state in the same form."""
        # The common case, batched native arrays of the cell's dtype (module.ready: byte order,
        # alignment, layout), goes straight to the engine, which checks their shapes itself;
        # anything else (and any error) takes the checked path, which converts what it can
        # (as_array) and words the errors.
        # (ready() inlined: a call per array is a share of a small step's time)
        dt = self.dtype
        if (type(x) is _ndarray and x.dtype is dt and x.ndim == 2
                and (x.flags.num & _ALIGNED_C) == _ALIGNED_C):
            if state is None:
                h = c = None
            elif self._has_cell_state:
                h, c = state if type(state) is tuple and len(state) == 2 else (0, 0)
            else:
                h, c = state, None
            if ((h is None or (type(h) is _ndarray and h.dtype is dt
                               and (h.flags.num & _ALIGNED_C) == _ALIGNED_C))
                    and (c is None or (type(c) is _ndarray and c.dtype is dt
                                       and (c.flags.num & _ALIGNED_C) == _ALIGNED_C))):
                try:
                    h_new, c_new = self._step(x, h, c, False)
                except (TypeError, ValueError):
                    pass  # the checked path converts what it can, or raises in its own words
                else:
                    return (h_new, c_new) if self._has_cell_state else h_new
        return self._checked_forward(x, state)

    __call__ = forward  # one call frame less per step than Module.__call__

    def _checked_forward(self, x, state):
        x = self._array("x", x)
        if x.ndim == 2 and x.shape[1] == self.input_size:
            unbatched = False
        elif x.ndim == 1 and x.shape[0] == self.input_size:
            unbatched = True
            x = x.reshape(1, -1)
        else:
            raise ValueError(f"x must have shape (B, {self.input_size}) or ({self.input_size},), "
                             f"got {x.shape}")
        h, c = self._split(("h", "c"), state, x.shape[0], unbatched)
        h_new, c_new = self._step(x, h, c, unbatched)
        return self._pack(h_new, c_new, unbatched)

    def _step(self, x, h, c, unbatched):
        """One engine step (x (B, I), states (B, H) or None) under the module's lock; in training
        mode the step's record goes on the tape for backward."""
        with self._lock:
            self._sync_engine()
            training = self._recording()
            h_new, c_new, record = self._engine.forward(x, h, c, training)
            if training:
                self._push_step(record, x.shape[0], unbatched)
        return h_new, c_new

    def _push_step(self, record, B, unbatched):
        self._pending.push((record, B, unbatched))
        self._pending_bytes += record.nbytes
        if self._pending_bytes > self.pending_warn_bytes and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__} holds {len(self._pending)} training-mode forward steps "
                f"({self._pending_bytes / 2**20:.0f} MiB of records) that no backward has "
                "consumed, and each further step adds to them; call backward() for them, "
                "clear_pending() to drop them, or eval() for inference",
                PendingStepsWarning, stacklevel=3)

    @property
    def pending_steps(self):
        """Training-mode forward steps not yet back-propagated."""
        return len(self._pending)

    def clear_pending(self):
        """Drops every pending training step (and its record) without back-propagating it."""
        with self._lock:
            self._drop_tape()

    def backward(self, dstate):
        """Back-propagates the most recent forward step not yet back-propagated.

        dstate: gradient w.r.t. that step's new state (dh, or (dh, dc)). Adds parameter
        gradients into `grads`; returns (dx, dstate_prev) with dstate_prev shaped like the state."""
        with self._lock:
            _, B, unbatched = self._pending.last()
            dh, dc = self._split(("dh", "dc"), dstate, B, unbatched)
            self._sync_engine()
            record = self._pending.pop()[0]
            self._pending_bytes -= record.nbytes
            dx, dh0, dc0 = self._engine.backward(record, dh, dc, self.grads)
        return (dx[0] if unbatched else dx), self._pack(dh0, dc0, unbatched)

    def _drop_tape(self):
        super()._drop_tape()
        self._pending_bytes = 0
        self._warned = False


class _HiddenStateCell(_CellBase):
    """A cell whose state is one array h (RNNCell, GRUCell), as mypy sees it."""
    if TYPE_CHECKING:  # what mypy sees: the state is one array h
        def forward(self, x: ArrayLike, state: ArrayLike | None = None) -> Array: ...
        def __call__(self, x: ArrayLike, state: ArrayLike | None = None) -> Array: ...
        def backward(self, dstate: ArrayLike) -> tuple[Array, Array]: ...


class RNNCell(_HiddenStateCell):
    """One step of h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""
    variants = {"rnn_tanh": {"nonlinearity": "tanh"}, "rnn_relu": {"nonlinearity": "relu"}}

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", dtype: DTypeLike = np.float32,
                 seed: int | None = None, precision: str = "float32") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_registry.select(RNNCell, nonlinearity=nonlinearity), input_size,
                         hidden_size, bias, dtype, seed, precision)

    def _identity_init(self):
        return self.nonlinearity == "relu"



class LSTMCell(_CellBase):
    """One LSTM step; state (h, c). peephole=True adds diagonal peepholes."""
    variants = {"lstm": {"peephole": False}, "peephole_lstm": {"peephole": True}}
    _has_cell_state = True

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 peephole: bool = False, dtype: DTypeLike = np.float32,
                 seed: int | None = None, precision: str = "float32") -> None:
        self.peephole = bool(peephole)
        super().__init__(_registry.select(LSTMCell, peephole=self.peephole), input_size,
                         hidden_size, bias, dtype, seed, precision)

    if TYPE_CHECKING:  # what mypy sees: the state is the pair (h, c)
        def forward(self, x: ArrayLike, state: tuple[ArrayLike, ArrayLike] | None = None
                    ) -> LSTMState: ...
        def __call__(self, x: ArrayLike, state: tuple[ArrayLike, ArrayLike] | None = None
                     ) -> LSTMState: ...
        def backward(self, dstate: tuple[ArrayLike, ArrayLike]) -> tuple[Array, LSTMState]: ...


class PeepholeLSTMCell(LSTMCell):
    """LSTMCell(..., peephole=True)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 precision: str = "float32") -> None:
        super().__init__(input_size, hidden_size, bias, peephole=True, dtype=dtype, seed=seed,
                         precision=precision)


class GRUCell(_HiddenStateCell):
    """One GRU step; reset_after selects the candidate form (see rnncore.GRU)."""
    variants = {"gru": {"reset_after": True}, "gru_reset_before": {"reset_after": False}}

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 reset_after: bool = True, dtype: DTypeLike = np.float32,
                 seed: int | None = None, precision: str = "float32") -> None:
        self.reset_after = bool(reset_after)
        super().__init__(_registry.select(GRUCell, reset_after=self.reset_after), input_size,
                         hidden_size, bias, dtype, seed, precision)

