"""Single-step cells: one time step per call, for loops written by hand (decoders, generation).

A cell in training mode remembers every forward step it has not yet back-propagated, so a manual
loop can run forward over t = 0..T-1 and then call backward T times (last step first), passing
the gradient flowing into each step's new state. Parameter names are PyTorch's cell names
(weight_ih, weight_hh, bias_ih, bias_hh), plus weight_peephole (3, H) for the peephole LSTM.
"""
from __future__ import annotations

import numpy as np

from . import _core, _registry
from ._base import Module, as_array, check_shape, positive_int


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
        G, H = self.cell_info.gates, self.hidden_size
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        identity = self._identity_init()
        self._add_param("weight_ih", rng.uniform(-k, k, (G * H, self.input_size)))
        self._add_param("weight_hh", np.eye(H) if identity else rng.uniform(-k, k, (G * H, H)))
        if self.bias:
            self._add_param("bias_ih", np.zeros(G * H) if identity else rng.uniform(-k, k, G * H))
            self._add_param("bias_hh", np.zeros(G * H) if identity else rng.uniform(-k, k, G * H))
        if self.cell_info.peephole_rows:
            self._add_param("weight_peephole", rng.uniform(-k, k, (self.cell_info.peephole_rows, H)))
        self._init_core()

    _core_state = ("_steps", "_inference_stack")

    def _init_core(self):
        self._steps = []  # stacks (workspaces) of forward steps not yet back-propagated (LIFO)
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
        # A training step keeps its own workspace until its backward; inference shares one.
        stack = self._new_stack() if self.training else self._inference_stack
        _, h_new, c_new = stack.forward(x2[None], self._core_params(self.params),
                                        h0=None if h is None else h[None],
                                        c0=None if c is None else c[None],
                                        training=self.training)
        if self.training:
            self._steps.append((stack, B, unbatched))
        return self._pack(h_new[0], None if c_new is None else c_new[0], unbatched)

    def backward(self, dstate):
        """Back-propagates the most recent forward step not yet back-propagated.

        dstate: gradient w.r.t. that step's new state (dh, or (dh, dc)). Adds parameter
        gradients into `grads`; returns (dx, dstate_prev) with dstate_prev shaped like the state."""
        if not self._steps:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a preceding training-mode forward step "
                "that has not been back-propagated yet")
        stack, B, unbatched = self._steps[-1]
        dh, dc = self._split(("dh", "dc"), dstate, B, unbatched)
        self._steps.pop()
        dx, dh0, dc0 = stack.backward(None, self._core_params(self.params),
                                      self._core_params(self.grads),
                                      dh_n=None if dh is None else dh[None],
                                      dc_n=None if dc is None else dc[None])
        dx = dx[0]
        return (dx[0] if unbatched else dx), self._pack(dh0[0], None if dc0 is None else dc0[0],
                                                         unbatched)

    def _drop_tape(self):
        self._steps.clear()


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
