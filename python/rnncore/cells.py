"""Single-step cells: one time step per call, for loops written by hand (decoders, generation).

A cell in training mode remembers every forward step it has not yet back-propagated, so a manual
loop can run forward over t = 0..T-1 and then call backward T times (last step first), passing
the gradient flowing into each step's new state. Parameter names are PyTorch's cell names
(weight_ih, weight_hh, bias_ih, bias_hh), plus weight_peephole (3, H) for the peephole LSTM.
"""
from __future__ import annotations

import threading
import warnings
from collections import Counter

import numpy as np

from . import _core, _registry
from ._base import Module, as_array, check_parameter_memory, check_shape, positive_int, uniform


class PendingStepsWarning(RuntimeWarning):
    """A cell in training mode holds the workspaces of many forward steps that no backward has
    consumed (memory grows with every step until backward(), eval() or clear_pending())."""


class _CellBase(Module):
    _has_cell_state = False
    variants = {}  # registry cell -> the constructor options that select it

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _registry.register(cls, _registry._CELL_CLASSES)

    def __init__(self, cell, input_size, hidden_size, bias, dtype, seed):
        super().__init__(dtype)
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

    _core_state = ("_steps", "_owners", "_pending_bytes", "_warned", "_inference_stack")

    # Pending training steps past this many bytes of workspace warn once (PendingStepsWarning).
    pending_warn_bytes = 1 << 30

    def _init_core(self):
        self._steps = []  # (stack, B, unbatched, thread) of steps not yet back-propagated (LIFO)
        self._owners = Counter()  # thread ident -> its steps in _steps
        self._pending_bytes = 0
        self._warned = False
        self._inference_stack = self._new_stack()

    # The C++ stack driver reads parameters by the sequence modules' names (weight_ih_l0, ...):
    # views of the same live arrays under those names.
    def _core_params(self, table):
        return {k + "_l0": v for k, v in table.items()}

    def _new_stack(self):
        return _core.Stack(self.cell, self.input_size, self.hidden_size, 1, False, self.dtype)

    def _identity_init(self):
        """W_hh = I and zero biases (IRNN), as rnncore.RNN(nonlinearity="relu")."""
        return False

    def _state(self, name, value, batch, unbatched):
        if value is None:
            return None
        if isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be an array, got a {type(value).__name__}")
        a = as_array(name, value, self.dtype)
        check_shape(name, a, (self.hidden_size,) if unbatched else (batch, self.hidden_size))
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
        x = as_array("x", x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, {self.input_size}) or ({self.input_size},), "
                             f"got {x.shape}")
        unbatched = x.ndim == 1
        x2 = x.reshape(1, -1) if unbatched else x
        B = x2.shape[0]
        h, c = self._split(("h", "c"), state, B, unbatched)
        with self._lock:
            training = self._recording()
            # A training step keeps its own workspace until its backward; inference shares one.
            stack = self._new_stack() if training else self._inference_stack
            _, h_new, c_new = stack.forward(x2[None], self._core_params(self.params),
                                            h0=None if h is None else h[None],
                                            c0=None if c is None else c[None],
                                            training=training)
            if training:
                self._push_step(stack, B, unbatched)
        return self._pack(h_new[0], None if c_new is None else c_new[0], unbatched)

    def _push_step(self, stack, B, unbatched):
        thread = threading.get_ident()
        self._steps.append((stack, B, unbatched, thread))
        self._owners[thread] += 1
        self._pending_bytes += stack.nbytes
        if self._pending_bytes > self.pending_warn_bytes and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__} holds {len(self._steps)} training-mode forward steps "
                f"({self._pending_bytes / 2**20:.0f} MiB of workspace) that no backward has "
                "consumed, and each further step adds to them; call backward() for them, "
                "clear_pending() to drop them, or eval() for inference",
                PendingStepsWarning, stacklevel=3)

    def _pop_step(self):
        stack, B, unbatched, thread = self._steps.pop()
        self._owners[thread] -= 1
        if not self._owners[thread]:
            del self._owners[thread]
        self._pending_bytes -= stack.nbytes
        return stack, B, unbatched

    @property
    def pending_steps(self):
        """Training-mode forward steps not yet back-propagated."""
        return len(self._steps)

    def clear_pending(self):
        """Drops every pending training step (and its workspace) without back-propagating it."""
        with self._lock:
            self._drop_tape()

    def backward(self, dstate):
        """Back-propagates the most recent forward step not yet back-propagated.

        dstate: gradient w.r.t. that step's new state (dh, or (dh, dc)). Adds parameter
        gradients into `grads`; returns (dx, dstate_prev) with dstate_prev shaped like the state."""
        with self._lock:
            if not self._steps:
                raise RuntimeError(
                    f"{type(self).__name__}.backward() needs a preceding training-mode forward "
                    "step that has not been back-propagated yet")
            _, B, unbatched, owner = self._steps[-1]
            me = threading.get_ident()
            if owner != me and self._owners[me]:
                raise RuntimeError(
                    f"{type(self).__name__}.backward(): the most recent pending step was run by "
                    "another thread, while this thread has pending steps of its own; one cell "
                    "cannot train in several threads at once (give each thread its own cell, "
                    "e.g. copy.deepcopy(cell))")
            dh, dc = self._split(("dh", "dc"), dstate, B, unbatched)
            stack = self._pop_step()[0]
            dx, dh0, dc0 = stack.backward(None, self._core_params(self.params),
                                          self._core_params(self.grads),
                                          dh_n=None if dh is None else dh[None],
                                          dc_n=None if dc is None else dc[None])
        dx = dx[0]
        return (dx[0] if unbatched else dx), self._pack(dh0[0], None if dc0 is None else dc0[0],
                                                         unbatched)

    def _drop_tape(self):
        self._steps.clear()
        self._owners.clear()
        self._pending_bytes = 0
        self._warned = False


class RNNCell(_CellBase):
    """One step of h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""
    variants = {"rnn_tanh": {"nonlinearity": "tanh"}, "rnn_relu": {"nonlinearity": "relu"}}

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=np.float32,
                 seed=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_registry.select(RNNCell, nonlinearity=nonlinearity), input_size,
                         hidden_size, bias, dtype, seed)

    def _identity_init(self):
        return self.nonlinearity == "relu"


class LSTMCell(_CellBase):
    """One LSTM step; state (h, c). peephole=True adds diagonal peepholes."""
    variants = {"lstm": {"peephole": False}, "peephole_lstm": {"peephole": True}}
    _has_cell_state = True

    def __init__(self, input_size, hidden_size, bias=True, peephole=False, dtype=np.float32,
                 seed=None):
        self.peephole = bool(peephole)
        super().__init__(_registry.select(LSTMCell, peephole=self.peephole), input_size,
                         hidden_size, bias, dtype, seed)


class PeepholeLSTMCell(LSTMCell):
    """LSTMCell(..., peephole=True)."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None):
        super().__init__(input_size, hidden_size, bias, peephole=True, dtype=dtype, seed=seed)


class GRUCell(_CellBase):
    """One GRU step; reset_after selects the candidate form (see rnncore.GRU)."""
    variants = {"gru": {"reset_after": True}, "gru_reset_before": {"reset_after": False}}

    def __init__(self, input_size, hidden_size, bias=True, reset_after=True, dtype=np.float32,
                 seed=None):
        self.reset_after = bool(reset_after)
        super().__init__(_registry.select(GRUCell, reset_after=self.reset_after), input_size,
                         hidden_size, bias, dtype, seed)
