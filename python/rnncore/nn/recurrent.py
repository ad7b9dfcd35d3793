"""Multi-layer, optionally bidirectional recurrent modules over whole sequences.

One call into a stack driver per sequence batch (never one per step), which walks the layers
and directions. Each call picks its backend once: host arrays run on rnncore._core.Stack with
numpy as the array namespace; device arrays (rnncore.cuda) on rnncore.nn.cuda.CudaStack, which
has the same calling convention, with the input's own library (torch or CuPy) as the namespace.
The argument checks, the Tape, the dropout seed and the thread bookkeeping are the same code for
both.
"""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from rnncore._ext import core
from rnncore._typing import Array, ArrayLike, DTypeLike, LSTMState
from rnncore.nn import cuda as _cuda
from rnncore.nn import registry as _registry
from rnncore.nn.module import (
    Module,
    Tape,
    as_array,
    check_lengths,
    check_parameter_memory,
    check_shape,
    float_dtype,
    positive_int,
    uniform,
)
from rnncore.nn.precision import check_precision


class _NumpyArrays:
    """The array namespace of the host path (the device path's is rnncore.nn.cuda._Library)."""

    @staticmethod
    def array(name, value, dtype):
        return as_array(name, value, dtype)

    @staticmethod
    def swap01(a):
        """(T, B, F) <-> (B, T, F), contiguous."""
        return np.ascontiguousarray(a.transpose(1, 0, 2))

    @staticmethod
    def host(a):
        return a


HOST_ARRAYS = _NumpyArrays()


class _RNNBase(Module):
    _has_cell_state = False
    variants = {}  # registry cell -> the constructor options that select it

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _registry.register_module(cls)

    def __init__(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype, seed, precision="float32"):
        super().__init__(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.cell = cell
        self.cell_info = _registry.info(cell)
        self.gates = self.cell_info.gates
        self._rng = np.random.default_rng(seed)
        # Gradient-flow diagnostics: with record_grad_norms set, every backward leaves
        # grad_norms[l * D + d, t] = ||dL/dh_t|| of layer l, direction d (rnncore.diagnostics).
        self.record_grad_norms = False
        self.grad_norms = None
        check_parameter_memory(repr(self), self._parameter_count(), self.dtype)
        self._init_params()
        self._init_core()

    _core_state = ("_stack", "_pending", "_cuda_stack")

    def _init_core(self):
        # The C++ stack: all layers and directions in one call; it keeps the training workspace
        # between steps so its memory is reused (eval() releases it).
        self._stack = core.Stack(self.cell, self.input_size, self.hidden_size, self.num_layers,
                                  self.bidirectional, self.dtype, self.precision)
        self._cuda_stack = None  # the CUDA stack, made on the first call with device arrays
        self._pending = Tape(type(self).__name__)  # (T, B, unbatched, stack, array namespace)

    # ---- parameters ---------------------------------------------------------------------
    def _suffix(self, direction):
        return "_reverse" if direction == 1 else ""

    def _parameter_count(self):
        H, G, D = self.hidden_size, self.gates, self.num_directions
        per_direction = G * H * H + (2 * G * H if self.bias else 0) + self.cell_info.peephole_rows * H
        inputs = self.input_size + (self.num_layers - 1) * D * H
        return D * (self.num_layers * per_direction + G * H * inputs)

    def _init_params(self):
        # Drawn straight in the module's dtype, one array at a time: construction peaks at the
        # parameters and gradients themselves.
        H, G = self.hidden_size, self.gates
        k = 1.0 / np.sqrt(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else H * self.num_directions
            for d in range(self.num_directions):
                s = f"_l{layer}{self._suffix(d)}"
                u = lambda *shape: uniform(self._rng, k, shape, self.dtype)
                self._add_param("weight_ih" + s, u(G * H, in_size))
                self._add_param("weight_hh" + s, self._init_weight_hh(u))
                if self.bias:
                    self._add_param("bias_ih" + s, self._init_bias(u))
                    self._add_param("bias_hh" + s, self._init_bias(u))
                if self.cell_info.peephole_rows:
                    self._add_param("weight_peephole" + s, u(self.cell_info.peephole_rows, H))

    def _init_weight_hh(self, uniform):
        return uniform(self.gates * self.hidden_size, self.hidden_size)

    def _init_bias(self, uniform):
        return uniform(self.gates * self.hidden_size)

    # ---- the backend of a call ----------------------------------------------------------
    def _arrays(self, x):
        """The array namespace of a call with input x: numpy for host arrays, x's own library
        for device arrays (after checking that x and the parameters are on one device)."""
        if self._device is None and not _cuda.is_device_array(x):
            return HOST_ARRAYS
        return _cuda.device_arrays(x, self._device, type(self).__name__)

    def _stack_for(self, xp):
        """The stack driver that computes on xp's arrays. The caller holds the lock."""
        if xp is HOST_ARRAYS:
            return self._stack
        if self._cuda_stack is None:
            self._cuda_stack = _cuda.CudaStack(self.cell, self.input_size, self.hidden_size,
                                               self.num_layers, self.bidirectional, self.dtype)
        return self._cuda_stack

    # ---- input checks -------------------------------------------------------------------
    def _layout(self):
        return "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"

    def _check_input(self, xp, x):
        x = xp.array("x", x, self.dtype)
        shape = tuple(x.shape)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D {self._layout()} or 2-D unbatched (T, input_size), "
                             f"got {x.ndim}-D with shape {shape}")
        if shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"dimension, got shape {shape}")
        unbatched = x.ndim == 2
        return self._to_time_major(xp, x, unbatched), unbatched

    def _state_shape(self, batch, unbatched):
        LD = self.num_layers * self.num_directions
        return (LD, self.hidden_size) if unbatched else (LD, batch, self.hidden_size)

    def _check_state(self, xp, name, value, batch, unbatched):
        if value is None:
            return None
        if isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be an array of shape {self._state_shape(batch, unbatched)}, "
                            f"got a {type(value).__name__}")
        a = xp.array(name, value, self.dtype)
        check_shape(name, a, self._state_shape(batch, unbatched),
                    " (num_layers * num_directions, B, hidden_size)" if not unbatched else
                    " (num_layers * num_directions, hidden_size)")
        return a.reshape(self._state_shape(batch, False)) if unbatched else a

    def _split_state(self, xp, state, batch, unbatched):
        """The h0 argument -> (h0, c0) arrays of shape (L*D, B, H) or None."""
        return self._check_state(xp, "h0", state, batch, unbatched), None

    def _check_grad_state(self, xp, grad, batch, unbatched):
        """The dh_n argument -> (dh_n, dc_n) arrays of shape (L*D, B, H) or None."""
        return self._check_state(xp, "dh_n", grad, batch, unbatched), None

    def _pack_state(self, h, c, unbatched):
        if unbatched:
            h = h.reshape((h.shape[0], h.shape[2]))
            c = None if c is None else c.reshape((c.shape[0], c.shape[2]))
        return h if not self._has_cell_state else (h, c)

    def _to_time_major(self, xp, a, unbatched):
        if unbatched:
            return a.reshape((a.shape[0], 1, a.shape[1]))
        return xp.swap01(a) if self.batch_first else a

    def _from_time_major(self, xp, a, unbatched):
        if unbatched:
            return a.reshape((a.shape[0], a.shape[2]))
        return xp.swap01(a) if self.batch_first else a

    # ---- forward / backward -------------------------------------------------------------
    def forward(self, x: ArrayLike, h0: Any = None, lengths: ArrayLike | None = None
                ) -> tuple[Array, Any]:
        """Runs the whole sequence. Returns (y, h_n), or (y, (h_n, c_n)) for LSTMs.

        x: (T, B, input_size) ((B, T, input_size) with batch_first), or unbatched (T, input_size).
        h0: initial state of shape (num_layers * num_directions, B, hidden_size), or the tuple
        (h0, c0) for LSTMs; zeros if None.
        lengths: int array (B,) of valid lengths (batched input only); outputs past a sequence's
        length are zero and its final state is the one after its last valid step.
        Device arrays (torch CUDA tensors, CuPy) run on the device once the module is there
        (.to("cuda")); the outputs are then arrays of x's library."""
        xp = self._arrays(x)
        x, unbatched = self._check_input(xp, x)
        T, B = int(x.shape[0]), int(x.shape[1])
        h0, c0 = self._split_state(xp, h0, B, unbatched)
        if lengths is not None and unbatched:
            raise ValueError("lengths is only accepted with batched (3-D) input")
        lengths = check_lengths(xp.host(lengths), T, B)
        with self._lock:
            stack = self._stack_for(xp)
            training = self._begin_record()  # the workspace is reused: an earlier record is void
            seed = int(self._rng.integers(2**63)) if training and self.dropout > 0 else 0
            y, h_n, c_n = stack.forward(x, self.params, h0=h0, c0=c0, lengths=lengths,
                                        training=training, dropout=self.dropout, seed=seed)
            if training:
                self._pending.push((T, B, unbatched, stack, xp))
        return self._from_time_major(xp, y, unbatched), self._pack_state(h_n, c_n, unbatched)

    def backward(self, dy: ArrayLike, dh_n: Any = None) -> tuple[Array, Any]:
        """BPTT through the last training-mode forward (consumed), on the backend that forward
        ran on. Adds parameter gradients into `grads`; returns (dx, dh0), or (dx, (dh0, dc0))
        for LSTMs, shaped like x and h0.

        dy: gradient of the loss w.r.t. y (same shape as y); dh_n: gradient w.r.t. h_n, or the
        tuple (dh_n, dc_n) for LSTMs (None = zero)."""
        with self._lock:
            T, B, unbatched, stack, xp = self._pending.last()
            DH = self.num_directions * self.hidden_size
            y_shape = (T, DH) if unbatched else ((B, T, DH) if self.batch_first else (T, B, DH))
            dy = xp.array("dy", dy, self.dtype)  # a bad argument does not consume the forward
            check_shape("dy", dy, y_shape, " (the shape of y)")
            dh_n, dc_n = self._check_grad_state(xp, dh_n, B, unbatched)
            self._pending.pop()
            record = bool(self.record_grad_norms)
            self.grad_norms = None
            dx, dh0, dc0 = stack.backward(self._to_time_major(xp, dy, unbatched), self.params,
                                          self.grads, dh_n=dh_n, dc_n=dc_n, grad_norms=record)
            if record:
                self.grad_norms = stack.grad_norms
        return self._from_time_major(xp, dx, unbatched), self._pack_state(dh0, dc0, unbatched)

    def _drop_tape(self):
        super()._drop_tape()
        self._stack.release()
        if self._cuda_stack is not None:
            self._cuda_stack.release()

    # ---- devices (rnncore.cuda) ---------------------------------------------------------
    _device = None  # CUDA device index of the parameters, None on the host

    def to(self, device):
        """Moves parameters and gradients to 'cuda', 'cuda:N' (device arrays of torch or CuPy)
        or 'cpu' (numpy); returns self. Device modules take device arrays (docs/cuda.md). The
        training workspace is dropped (as by eval()); an optimiser built before the move holds
        the old arrays.

        to(np.float64) / to("float32") (a float dtype instead of a device) converts the
        parameters and gradients of a host module to that dtype and returns self, the same way
        (new arrays, the workspace dropped)."""
        if not (isinstance(device, str) and device.split(":")[0] in ("cuda", "cpu")):
            try:
                dtype = np.dtype(device)
            except TypeError:
                dtype = None
            if dtype is not None:
                return self._to_dtype(dtype)
        index = _cuda.parse_device(device)
        with self._lock:
            self._drop_tape()
            self._cuda_stack = None
            _cuda.move_arrays((self.params, self.grads), index, self.dtype, type(self).__name__)
            self._device = index
        return self

    def cpu(self) -> _RNNBase:
        return self.to("cpu")

    def _to_dtype(self, dtype):
        dtype = float_dtype(dtype)
        if self._device is not None:
            raise NotImplementedError(f"{type(self).__name__}.to({dtype.name}): convert on the "
                                      "host (.to('cpu') first), then move")
        check_precision(self.precision, dtype)
        if dtype == self.dtype:
            return self
        with self._lock:
            self._drop_tape()
            for name in list(self.params):
                self.params[name] = self.params[name].astype(dtype)
                self.grads[name] = self.grads[name].astype(dtype)
            self.dtype = dtype
            self._init_core()
        return self

    def double(self):
        """to(np.float64)."""
        return self.to(np.float64)

    def float(self):
        """to(np.float32)."""
        return self.to(np.float32)

    def __repr__(self):
        opts = [f"{self.input_size}", f"{self.hidden_size}"]
        if self.num_layers != 1:
            opts.append(f"num_layers={self.num_layers}")
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                opts.append(f"{name}={getattr(self, name)}")
        opts.extend(self._extra_repr())
        opts.append(f"dtype={self.dtype.name}")
        if self.precision != "float32":
            opts.append(f"precision={self.precision!r}")
        return f"{type(self).__name__}({', '.join(opts)})"

    def _extra_repr(self):
        return []


class _LSTMStateMixin:
    _has_cell_state = True

    def _split_state(self, xp, state, batch, unbatched):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"h0 (the initial state of {type(self).__name__}) must be a tuple "
                            f"(h0, c0), got {type(state).__name__}")
        return (self._check_state(xp, "h0", state[0], batch, unbatched),
                self._check_state(xp, "c0", state[1], batch, unbatched))

    def _check_grad_state(self, xp, grad, batch, unbatched):
        if grad is None:
            return None, None
        if not isinstance(grad, (tuple, list)) or len(grad) != 2:
            raise TypeError(f"dh_n (the final-state gradient of {type(self).__name__}) must be "
                            f"a tuple (dh_n, dc_n), got {type(grad).__name__}")
        return (self._check_state(xp, "dh_n", grad[0], batch, unbatched),
                self._check_state(xp, "dc_n", grad[1], batch, unbatched))


class _HiddenState(_RNNBase):
    """A module whose state is one array h (RNN, GRU), as mypy sees it."""
    if TYPE_CHECKING:  # what mypy sees: the state is one array h
        def forward(self, x: ArrayLike, h0: ArrayLike | None = None,
                    lengths: ArrayLike | None = None) -> tuple[Array, Array]: ...
        def __call__(self, x: ArrayLike, h0: ArrayLike | None = None,
                     lengths: ArrayLike | None = None) -> tuple[Array, Array]: ...
        def backward(self, dy: ArrayLike, dh_n: ArrayLike | None = None
                     ) -> tuple[Array, Array]: ...


class RNN(_HiddenState):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu.

    With nonlinearity="relu", W_hh starts as the identity and the biases at zero (Le, Jaitly &
    Hinton 2015, "IRNN"), which lets a ReLU RNN carry information over long spans from the start.
    """
    variants = {"rnn_tanh": {"nonlinearity": "tanh"}, "rnn_relu": {"nonlinearity": "relu"}}

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 nonlinearity: str = "tanh", dtype: DTypeLike = np.float32,
                 seed: int | None = None, precision: str = "float32") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_registry.select(RNN, nonlinearity=nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype, seed, precision)

    def _init_weight_hh(self, uniform):
        if self.nonlinearity == "relu":
            return np.eye(self.hidden_size, dtype=self.dtype)
        return super()._init_weight_hh(uniform)

    def _init_bias(self, uniform):
        if self.nonlinearity == "relu":
            return np.zeros(self.hidden_size, dtype=self.dtype)
        return super()._init_bias(uniform)

    def _extra_repr(self):
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "tanh" else []


class LSTM(_LSTMStateMixin, _RNNBase):
    """LSTM with PyTorch's gate order [i, f, g, o]; peephole=True adds diagonal peepholes
    (input and forget gates see c_{t-1}, the output gate sees c_t)."""
    variants = {"lstm": {"peephole": False}, "peephole_lstm": {"peephole": True}}

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 peephole: bool = False, dtype: DTypeLike = np.float32,
                 seed: int | None = None, precision: str = "float32") -> None:
        self.peephole = bool(peephole)
        super().__init__(_registry.select(LSTM, peephole=self.peephole), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype, seed,
                         precision)

    if TYPE_CHECKING:  # what mypy sees: an LSTM's state is the pair (h, c)
        def forward(self, x: ArrayLike, h0: tuple[ArrayLike, ArrayLike] | None = None,
                    lengths: ArrayLike | None = None) -> tuple[Array, LSTMState]: ...
        def __call__(self, x: ArrayLike, h0: tuple[ArrayLike, ArrayLike] | None = None,
                     lengths: ArrayLike | None = None) -> tuple[Array, LSTMState]: ...
        def backward(self, dy: ArrayLike, dh_n: tuple[ArrayLike, ArrayLike] | None = None
                     ) -> tuple[Array, LSTMState]: ...

    def _extra_repr(self):
        return ["peephole=True"] if self.peephole and type(self) is LSTM else []


class PeepholeLSTM(LSTM):
    """LSTM with diagonal peepholes (LSTM(..., peephole=True))."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DTypeLike = np.float32, seed: int | None = None,
                 precision: str = "float32") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, peephole=True, dtype=dtype, seed=seed, precision=precision)


class GRU(_HiddenState):
    """GRU with PyTorch's gate order [r, z, n] and h_t = (1 - z) n + z h_{t-1}.

    reset_after=True (default; PyTorch, cuDNN): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    reset_after=False (Cho et al. 2014):        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)."""
    variants = {"gru": {"reset_after": True}, "gru_reset_before": {"reset_after": False}}

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, dtype: DTypeLike = np.float32,
                 seed: int | None = None, precision: str = "float32") -> None:
        self.reset_after = bool(reset_after)
        super().__init__(_registry.select(GRU, reset_after=self.reset_after), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype, seed,
                         precision)

    def _extra_repr(self):
        return [] if self.reset_after else ["reset_after=False"]


def last_layer_state(rnn, h_n):
    """The final hidden state of the top layer, (B, D * H) (both directions concatenated), from
    a module's h_n (or (h_n, c_n))."""
    h = h_n[0] if isinstance(h_n, tuple) else h_n
    D = rnn.num_directions
    return np.concatenate(list(h[-D:]), axis=-1) if D > 1 else h[-1]


def last_layer_state_backward(rnn, dlast, batch):
    """The dh_n argument of rnn.backward that sends dlast (B, D * H) into the top layer's final
    state (zero elsewhere; zero dc_n for LSTMs)."""
    D, H = rnn.num_directions, rnn.hidden_size
    dh = np.zeros((rnn.num_layers * D, batch, H), dtype=rnn.dtype)
    for d in range(D):
        dh[(rnn.num_layers - 1) * D + d] = dlast[:, d * H:(d + 1) * H]
    return (dh, np.zeros_like(dh)) if isinstance(rnn, LSTM) else dh
