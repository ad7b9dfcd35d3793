"""Multi-layer, optionally bidirectional recurrent modules over whole sequences.

Each (layer, direction) is one call into the C++ core per sequence batch (never one per step).
"""
from __future__ import annotations

import numbers
import threading

import numpy as np

from rnncore._ext import core
from rnncore.nn import cuda as _cuda_path
from rnncore.nn import registry as _registry
from rnncore.nn.module import (
    Module,
    as_array,
    check_lengths,
    check_parameter_memory,
    check_shape,
    positive_int,
    uniform,
)
from rnncore.nn.precision import check_precision


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

    _core_state = ("_stack", "_tape", "_forwards", "_unconsumed", "_cuda_stack")

    def _init_core(self):
        # The C++ stack: all layers and directions in one call; it keeps the training workspace
        # between steps so its memory is reused (eval() releases it).
        self._stack = core.Stack(self.cell, self.input_size, self.hidden_size, self.num_layers,
                                  self.bidirectional, self.dtype, self.precision)
        self._tape = None  # (T, B, unbatched, forward number, thread) that backward consumes
        self._forwards = 0  # training forwards so far
        # thread ident -> number of its last training forward, while not back-propagated
        self._unconsumed = {}

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

    # ---- input checks -------------------------------------------------------------------
    def _layout(self):
        return "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"

    def _check_input(self, x):
        x = as_array("x", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D {self._layout()} or 2-D unbatched (T, input_size), "
                             f"got {x.ndim}-D with shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"dimension, got shape {x.shape}")
        unbatched = x.ndim == 2
        return self._to_time_major(x, unbatched), unbatched

    def _state_shape(self, batch, unbatched):
        LD = self.num_layers * self.num_directions
        return (LD, self.hidden_size) if unbatched else (LD, batch, self.hidden_size)

    def _check_state(self, name, value, batch, unbatched):
        if value is None:
            return None
        if isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be an array of shape {self._state_shape(batch, unbatched)}, "
                            f"got a {type(value).__name__}")
        a = as_array(name, value, self.dtype)
        check_shape(name, a, self._state_shape(batch, unbatched),
                    " (num_layers * num_directions, B, hidden_size)" if not unbatched else
                    " (num_layers * num_directions, hidden_size)")
        return a.reshape(self._state_shape(batch, False)) if unbatched else a

    def _split_state(self, state, batch, unbatched):
        """The h0 argument -> (h0, c0) arrays of shape (L*D, B, H) or None."""
        return self._check_state("h0", state, batch, unbatched), None

    def _pack_state(self, h, c, unbatched):
        if unbatched:
            h = h[:, 0, :]
            c = None if c is None else c[:, 0, :]
        return h if not self._has_cell_state else (h, c)

    # ---- forward / backward -------------------------------------------------------------
    def forward(self, x, h0=None, lengths=None):
        """Runs the whole sequence. Returns (y, h_n), or (y, (h_n, c_n)) for LSTMs.

        x: (T, B, input_size) ((B, T, input_size) with batch_first), or unbatched (T, input_size).
        h0: initial state of shape (num_layers * num_directions, B, hidden_size), or the tuple
        (h0, c0) for LSTMs; zeros if None.
        lengths: int array (B,) of valid lengths (batched input only); outputs past a sequence's
        length are zero and its final state is the one after its last valid step."""
        if self._device is not None or _cuda_path.is_device_array(x):  # rnncore.cuda
            return _cuda_path.module_forward(self, x, h0, lengths)
        x, unbatched = self._check_input(x)
        T, B = x.shape[0], x.shape[1]
        h0, c0 = self._split_state(h0, B, unbatched)
        if lengths is not None and unbatched:
            raise ValueError("lengths is only accepted with batched (3-D) input")
        lengths = check_lengths(lengths, T, B)
        with self._lock:
            training = self._recording()
            if training:
                # The workspace is reused: a previous forward's tape is invalid from here on,
                # even if this call fails part-way.
                self._tape = None
            seed = int(self._rng.integers(2**63)) if training and self.dropout > 0 else 0
            y, h_n, c_n = self._stack.forward(x, self.params, h0=h0, c0=c0, lengths=lengths,
                                              training=training, dropout=self.dropout, seed=seed)
            if training:
                self._forwards += 1
                thread = threading.get_ident()
                self._tape = (T, B, unbatched, self._forwards, thread)
                self._unconsumed[thread] = self._forwards
        return self._from_time_major(y, unbatched), self._pack_state(h_n, c_n, unbatched)

    def _check_grad_state(self, grad, batch, unbatched):
        return self._check_state("dh_n", grad, batch, unbatched), None

    def backward(self, dy, dh_n=None):
        """BPTT through the last training-mode forward (consumed). Adds parameter gradients into
        `grads`; returns (dx, dh0), or (dx, (dh0, dc0)) for LSTMs, shaped like x and h0.

        dy: gradient of the loss w.r.t. y (same shape as y); dh_n: gradient w.r.t. h_n, or the
        tuple (dh_n, dc_n) for LSTMs (None = zero)."""
        if _cuda_path.pending_on_device(self):  # the forward ran on a device (rnncore.cuda)
            return _cuda_path.module_backward(self, dy, dh_n)
        with self._lock:
            tape = self._take_tape()
            T, B, unbatched = tape[:3]
            DH = self.num_directions * self.hidden_size
            y_shape = (T, DH) if unbatched else ((B, T, DH) if self.batch_first else (T, B, DH))
            try:
                dy = as_array("dy", dy, self.dtype)
                check_shape("dy", dy, y_shape, " (the shape of y)")
                dh_n, dc_n = self._check_grad_state(dh_n, B, unbatched)
            except Exception:
                self._tape = tape  # a bad argument does not consume the forward
                raise
            self._consumed(tape)
            record = bool(self.record_grad_norms)
            self.grad_norms = None
            dx, dh0, dc0 = self._stack.backward(self._to_time_major(dy, unbatched), self.params,
                                                self.grads, dh_n=dh_n, dc_n=dc_n,
                                                grad_norms=record)
            if record:
                self.grad_norms = self._stack.grad_norms
        return self._from_time_major(dx, unbatched), self._pack_state(dh0, dc0, unbatched)

    def _take_tape(self):
        """The tape backward consumes; RuntimeError if there is none, or if the calling thread's
        own training forward was replaced by another thread's (its backward would otherwise
        silently run through the other thread's sequence)."""
        if self._tape is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a preceding training-mode forward; "
                "there is none (never run, run in eval mode, or already consumed by backward)")
        mine = self._unconsumed.get(threading.get_ident())
        if mine is not None and mine != self._tape[3]:
            raise RuntimeError(
                f"{type(self).__name__}.backward(): this thread's training forward was replaced "
                "by a later training forward from another thread before its backward; one module "
                "cannot train in several threads at once (give each thread its own module, e.g. "
                "copy.deepcopy(module), or hold a lock around each forward + backward)")
        tape, self._tape = self._tape, None
        return tape

    def _consumed(self, tape):
        thread = tape[4]
        if self._unconsumed.get(thread) == tape[3]:
            del self._unconsumed[thread]

    def _to_time_major(self, a, unbatched):
        if unbatched:
            return a[:, None, :]
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a

    def _from_time_major(self, a, unbatched):
        if unbatched:
            return a[:, 0, :]
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a

    def _drop_tape(self):
        self._tape = None
        self._unconsumed.clear()
        self._stack.release()
        if self._cuda_stack is not None:
            self._cuda_stack.release()

    # ---- devices (rnncore.cuda) ---------------------------------------------------------
    _device = None  # CUDA device index of the parameters, None on the host
    _cuda_stack = None

    def to(self, device):
        """Moves parameters and gradients to 'cuda', 'cuda:N' (device arrays of torch or CuPy)
        or 'cpu' (numpy); returns self. Device modules take device arrays (docs/cuda.md)."""
        _cuda_path.module_to(self, device)
        self._device = _cuda_path._parse_device(device)
        return self

    def cpu(self):
        return self.to("cpu")

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

    def _split_state(self, state, batch, unbatched):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"h0 (the initial state of {type(self).__name__}) must be a tuple "
                            f"(h0, c0), got {type(state).__name__}")
        return (self._check_state("h0", state[0], batch, unbatched),
                self._check_state("c0", state[1], batch, unbatched))

    def _check_grad_state(self, grad, batch, unbatched):
        if grad is None:
            return None, None
        if not isinstance(grad, (tuple, list)) or len(grad) != 2:
            raise TypeError(f"dh_n (the final-state gradient of {type(self).__name__}) must be "
                            f"a tuple (dh_n, dc_n), got {type(grad).__name__}")
        return (self._check_state("dh_n", grad[0], batch, unbatched),
                self._check_state("dc_n", grad[1], batch, unbatched))


class RNN(_RNNBase):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu.

    With nonlinearity="relu", W_hh starts as the identity and the biases at zero (Le, Jaitly &
    Hinton 2015, "IRNN"), which lets a ReLU RNN carry information over long spans from the start.
    """
    variants = {"rnn_tanh": {"nonlinearity": "tanh"}, "rnn_relu": {"nonlinearity": "relu"}}

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, nonlinearity="tanh", dtype=np.float32,
                 seed=None, precision="float32"):
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

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, peephole=False, dtype=np.float32, seed=None,
                 precision="float32"):
        self.peephole = bool(peephole)
        super().__init__(_registry.select(LSTM, peephole=self.peephole), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype, seed,
                         precision)

    def _extra_repr(self):
        return ["peephole=True"] if self.peephole and type(self) is LSTM else []


class PeepholeLSTM(LSTM):
    """LSTM with diagonal peepholes (LSTM(..., peephole=True))."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None,
                 precision="float32"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, peephole=True, dtype=dtype, seed=seed, precision=precision)


class GRU(_RNNBase):
    """GRU with PyTorch's gate order [r, z, n] and h_t = (1 - z) n + z h_{t-1}.

    reset_after=True (default; PyTorch, cuDNN): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    reset_after=False (Cho et al. 2014):        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)."""
    variants = {"gru": {"reset_after": True}, "gru_reset_before": {"reset_after": False}}

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, reset_after=True, dtype=np.float32, seed=None,
                 precision="float32"):
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
