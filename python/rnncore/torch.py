"""rnncore's engine behind torch.nn: LSTM, GRU, RNN and PeepholeLSTM as torch.nn.Modules.

    import rnncore.torch as rt
    rnn = rt.LSTM(32, 256, num_layers=2, batch_first=True)   # was torch.nn.LSTM(...)
    y, (h_n, c_n) = rnn(x)                                    # x: tensor or PackedSequence
    loss(y).backward()                                        # rnncore's BPTT

Drop-in for torch.nn.LSTM / GRU / RNN: the same constructor arguments, parameter names, shapes,
order and initialisation (with the same torch.manual_seed the weights are equal), the same
state_dict, inputs ((T, B, I), batch_first, unbatched (T, I), PackedSequence, initial states) and
return values. Beyond torch.nn: PeepholeLSTM (and LSTM(peephole=True)) and
GRU(reset_after=False), the registry cells torch has no module for (docs/torch.md).

How it runs: one torch.autograd.Function per call hands the tensors' memory to rnncore._core.Stack
(torch.Tensor.numpy() of a contiguous CPU tensor is a view; the outputs come back through
torch.from_numpy, also views), so contiguous CPU float32/float64 tensors are never copied. A
Stack keeps one pending training workspace, while an autograd graph may hold several calls of
one layer before its backward (two forwards, one loss.backward()); so each recording call takes
a Stack of its own from the module's small pool and returns it when its backward has run (a
graph dropped without backward frees its Stack with it). A second backward through the same
graph (retain_graph=True) recomputes the forward first, with the same dropout seed.

CUDA tensors run on rnncore's CUDA path (rnncore.cuda, docs/cuda.md) when it was built and a
device is there: module and inputs on one device, read in place, outputs allocated by torch.
Not supported (a clear error): other non-CPU tensors, CUDA tensors without rnncore's CUDA path
(and CUDA tensors in cells), float16/bfloat16 parameters, proj_size > 0, double backward
(gradients of gradients).
Cells (RNNCell, LSTMCell, PeepholeLSTMCell, GRUCell) are drop-ins for torch.nn's cells on the
persistent step engine (core.Step, weights packed once, repacked when a parameter's identity,
memory or _version counter moved), one autograd.Function per step; CPU only.

Tracers: torch.compile reaches the engine through the custom ops rnncore::stack_forward /
rnncore::stack_backward; torch.jit.trace, torch.export and torch.onnx.export see torch's own
recurrent ops (torch._VF.lstm, ...) on the same parameters. torch.save pickles no engine
object. precision="bf16" as on the numpy modules. docs/torch.md says what works where.
Only this module imports torch: `import rnncore` stays torch-free.
"""
from __future__ import annotations

import math
import numbers
import threading
import warnings
from typing import Any

import numpy as np
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import torch
from rnncore._ext import core
from rnncore.nn import cuda as _cuda_path
from rnncore.nn import precision as _precision
from rnncore.nn import recurrent as _numpy_modules
from rnncore.nn import registry as _registry

__all__ = ["RNN", "LSTM", "PeepholeLSTM", "GRU", "RNNCell", "LSTMCell", "PeepholeLSTMCell",
           "GRUCell", "InputError"]

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}

# Free Stacks a module keeps for reuse (each with its workspace from its last training forward);
# more are made when more forwards are pending at once, and dropped when they come back.
_MAX_FREE_STACKS = 4


class InputError(ValueError, RuntimeError):
    """A wrong input or state shape. A ValueError as everywhere in rnncore, and a RuntimeError,
    which torch.nn's recurrent modules raise for the same mistakes (drop-in code catching either
    keeps working)."""


class _Engine:
    """A module's C++ side: a pool of Stacks (acquire() one per forward, release() it when done)
    and numpy views of the parameters the last call used.

    Not part of the model: pickling (torch.save of a module, copy.deepcopy) makes an empty one of
    the same shape."""

    def __init__(self, cell, input_size, hidden_size, num_layers, bidirectional,
                 precision="float32"):
        self._args = (cell, input_size, hidden_size, num_layers, bidirectional)
        self._precision = precision
        self._free = []  # (numpy dtype, Stack)
        self._lock = threading.Lock()
        # (weights, their data pointers, torch dtype, {name: numpy view}) of the last call:
        # building the views costs more than checking that the tensors are still the same ones
        # on the same memory (an in-place update keeps both; .to(), .data = ... change memory).
        self.views = None

    def acquire(self, dtype, device=None):
        # Stacks of the CUDA path (device: a CUDA torch.device) are pooled apart by device.
        key = dtype if device is None else (dtype, str(device))
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i][0] == key:
                    return self._free.pop(i)[1]
        if device is not None:
            if self._precision != "float32":
                raise NotImplementedError(f"precision={self._precision!r} runs on the CPU only; "
                                          "rnncore's CUDA path computes in float32")
            return _cuda_path.CudaStack(*self._args, dtype)
        _precision.check_precision(self._precision, dtype)
        return core.Stack(*self._args, dtype, self._precision)

    def release(self, dtype, stack, device=None):
        key = dtype if device is None else (dtype, str(device))
        with self._lock:
            if len(self._free) < _MAX_FREE_STACKS:
                self._free.append((key, stack))

    def clear(self):
        with self._lock:
            self._free.clear()
        self.views = None

    def __len__(self):
        return len(self._free)

    def __reduce__(self):
        return (_Engine, self._args + (self._precision,))


class _Call:
    """What one forward call hands to _StackFunction besides the tensors."""
    __slots__ = ("engine", "names", "dtype", "params", "lengths", "dropout", "seed", "stack",
                 "device")

    def __init__(self, engine, names, dtype, params, lengths, dropout, seed, device=None):
        self.engine, self.names, self.dtype, self.params = engine, names, dtype, params
        self.lengths, self.dropout, self.seed = lengths, dropout, seed
        self.stack = None  # the Stack holding this call's workspace until its backward
        self.device = device  # a CUDA torch.device for the CUDA path, else None

    def acquire(self):
        if self.device is None:
            return self.engine.acquire(self.dtype)
        return self.engine.acquire(self.dtype, self.device)

    def release(self, stack):
        if self.device is None:
            self.engine.release(self.dtype, stack)
        else:
            self.engine.release(self.dtype, stack, self.device)

    def run(self, stack, x, h0, c0, training):
        return stack.forward(_view(x), self.params, h0=_view(h0), c0=_view(c0),
                             lengths=self.lengths, training=training, dropout=self.dropout,
                             seed=self.seed)


def _view(t):
    """The numpy view of a contiguous CPU tensor; CUDA tensors go to the CUDA path as they are
    (None stays None)."""
    if t is None:
        return None
    return t.detach() if t.is_cuda else t.detach().numpy()


def _tensor(a):
    return None if a is None or isinstance(a, torch.Tensor) else torch.from_numpy(a)


class _StackFunction(torch.autograd.Function):
    """(y, h_n, c_n) = Stack.forward(x, h0, c0, weights); backward = Stack.backward (BPTT).

    x, h0, c0 and the weights arrive contiguous, on the CPU, in the module's dtype; h0/c0 may be
    None (zeros), c_n is None for cells without a cell state."""

    @staticmethod
    def forward(ctx, call, x, h0, c0, *weights):
        stack = call.acquire()
        try:
            y, h_n, c_n = call.run(stack, x, h0, c0, training=True)
        except BaseException:
            call.release(stack)
            raise
        call.stack = stack
        ctx.call = call
        # Saved so that autograd refuses a backward after any of them was changed in place
        # (an optimiser step between forward and backward, say), and for a recompute.
        ctx.save_for_backward(x, h0, c0, *weights)
        ctx.set_materialize_grads(False)
        return _tensor(y), _tensor(h_n), _tensor(c_n)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        if torch.is_grad_enabled():
            # backward(create_graph=True). The BPTT in C++ records no graph, so the gradients
            # computed here could not be differentiated again; rather than let a gradient
            # penalty through this layer silently count as zero, refuse.
            raise RuntimeError(
                "rnncore.torch layers do not support gradients of gradients: backward with "
                "create_graph=True (or torch.autograd.grad(..., create_graph=True)) reached an "
                "rnncore.torch layer; use torch.nn's layer where second derivatives are needed")
        call = ctx.call
        x, h0, c0, *weights = ctx.saved_tensors
        stack, call.stack = call.stack, None
        if stack is None:  # this graph's backward already ran once (retain_graph=True)
            stack = call.acquire()
            try:
                call.run(stack, x, h0, c0, training=True)
            except BaseException:
                call.release(stack)
                raise
        grads = {name: torch.zeros_like(w) if w.is_cuda else np.zeros(tuple(w.shape), call.dtype)
                 for name, w in zip(call.names, weights)}
        try:
            dx, dh0, dc0 = stack.backward(
                None if dy is None else _view(dy.contiguous()), call.params, grads,
                dh_n=None if dh_n is None else _view(dh_n.contiguous()),
                dc_n=None if dc_n is None else _view(dc_n.contiguous()))
        finally:
            call.release(stack)
        needs = ctx.needs_input_grad
        out = [None,
               _tensor(dx) if needs[1] else None,
               _tensor(dh0) if needs[2] else None,
               _tensor(dc0) if needs[3] else None]
        out.extend(_tensor(grads[name]) if need else None
                   for name, need in zip(call.names, needs[4:]))
        return tuple(out)


def _tracing():
    """Whether torch is tracing the call (torch.jit.trace, torch.compile, torch.export and the
    dynamo ONNX exporter): then the modules run torch's own ops on the same parameters, which
    every tracer and exporter knows (docs/torch.md, "compile, export, ONNX")."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _torch_mode(cell):
    """torch.nn's mode of the module computing registry cell `cell` ("LSTM", "GRU",
    "RNN_TANH", "RNN_RELU"; torch._VF's op is its lower case), None when torch.nn has none.
    Read from the registry's variants (docs/adding_a_cell.md: no cell names here)."""
    cls, options = _registry.module_variant(cell)
    if cls is _numpy_modules.LSTM:
        return None if options.get("peephole") else "LSTM"
    if cls is _numpy_modules.GRU:
        return "GRU" if options.get("reset_after", True) else None
    if cls is _numpy_modules.RNN:
        return "RNN_" + options.get("nonlinearity", "tanh").upper()
    return None


def _no_torch_twin(module):
    return NotImplementedError(
        f"{module._name()} (registry cell {module.cell!r}) has no torch.nn twin, so it cannot be "
        "traced, compiled or exported (torch.jit.trace, torch.compile, torch.export, "
        "torch.onnx.export); only LSTM, GRU (reset_after=True) and RNN can")


# ---- custom ops: the engine as torch.library ops, for torch.compile ----------------------------
# torch.compile cannot trace into the autograd.Function above (it hands numpy views to C++), so
# compiled calls reach the engine through two custom ops with fake (shape) implementations:
# rnncore::stack_forward (y, h_n, c_n) and rnncore::stack_backward (a training forward again,
# then BPTT: the ops keep no workspace between them, so a compiled training step runs the
# forward twice). Stacks for the ops come from one pool per (cell, sizes, dtype).

_op_pool = {}
_op_lock = threading.Lock()


def _op_stack(key):
    with _op_lock:
        free = _op_pool.get(key)
        if free:
            return free.pop()
    return core.Stack(*key)


def _op_release(key, stack):
    with _op_lock:
        free = _op_pool.setdefault(key, [])
        if len(free) < _MAX_FREE_STACKS:
            free.append(stack)


def _op_call(x, h0, c0, weights, names, cell, num_layers, bidirectional, training, dropout,
             seed, precision):
    names = names.split(",")  # one string: custom ops take no list of strings
    key = (cell, x.shape[2], h0.shape[2], num_layers, bidirectional, _NUMPY_DTYPES[x.dtype],
           precision)
    stack = _op_stack(key)
    params = {n: w.detach().contiguous().numpy() for n, w in zip(names, weights)}
    y, h_n, c_n = stack.forward(x.detach().contiguous().numpy(), params,
                                h0=h0.detach().contiguous().numpy(),
                                c0=c0.detach().contiguous().numpy() if c0.numel() else None,
                                training=training, dropout=dropout, seed=int(seed))
    return key, stack, params, y, h_n, c_n


@torch.library.custom_op("rnncore::stack_forward", mutates_args=())
def _stack_forward(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                   weights: list[torch.Tensor], names: str, cell: str, num_layers: int,
                   bidirectional: bool, dropout: float, seed: torch.Tensor, precision: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y (T, B, D*H), h_n, c_n) of a Stack over time-major x; c0/c_n are empty (0,) tensors
    for cells without a cell state."""
    key, stack, _, y, h_n, c_n = _op_call(x, h0, c0, weights, names, cell, num_layers,
                                          bidirectional, dropout > 0, dropout, seed, precision)
    _op_release(key, stack)
    return (torch.from_numpy(y), torch.from_numpy(h_n),
            torch.from_numpy(c_n) if c_n is not None else c0.new_empty((0,)))


@_stack_forward.register_fake
def _(x, h0, c0, weights, names, cell, num_layers, bidirectional, dropout, seed, precision):
    D = 2 if bidirectional else 1
    return (x.new_empty((x.shape[0], x.shape[1], D * h0.shape[2])), torch.empty_like(h0),
            torch.empty_like(c0))


@torch.library.custom_op("rnncore::stack_backward", mutates_args=())
def _stack_backward(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                    weights: list[torch.Tensor], dy: torch.Tensor, dh_n: torch.Tensor,
                    dc_n: torch.Tensor, names: str, cell: str, num_layers: int,
                    bidirectional: bool, dropout: float, seed: torch.Tensor, precision: str
                    ) -> list[torch.Tensor]:
    """[dx, dh0, dc0, *dweights]: the training forward again (same dropout seed), then BPTT."""
    key, stack, params, *_ = _op_call(x, h0, c0, weights, names, cell, num_layers,
                                      bidirectional, True, dropout, seed, precision)
    names = names.split(",")
    grads = {n: np.zeros(tuple(w.shape), _NUMPY_DTYPES[x.dtype]) for n, w in zip(names, weights)}
    try:
        dx, dh0, dc0 = stack.backward(dy.contiguous().numpy(), params, grads,
                                      dh_n=dh_n.contiguous().numpy(),
                                      dc_n=dc_n.contiguous().numpy() if dc_n.numel() else None)
    finally:
        _op_release(key, stack)
    return [torch.from_numpy(dx), torch.from_numpy(dh0),
            torch.from_numpy(dc0) if dc0 is not None else c0.new_zeros(c0.shape),
            *(torch.from_numpy(grads[n]) for n in names)]


@_stack_backward.register_fake
def _(x, h0, c0, weights, dy, dh_n, dc_n, names, cell, num_layers, bidirectional, dropout,
      seed, precision):
    return [torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0),
            *(torch.empty_like(w) for w in weights)]


def _stack_setup(ctx, inputs, output):
    x, h0, c0, weights, *args = inputs
    ctx.save_for_backward(x, h0, c0, *weights)
    ctx.args = args


def _stack_grad(ctx, dy, dh_n, dc_n):
    x, h0, c0, *weights = ctx.saved_tensors
    grads = _stack_backward(x, h0, c0, weights, dy, dh_n, dc_n, *ctx.args)
    return (grads[0], grads[1], grads[2], list(grads[3:])) + (None,) * len(ctx.args)


_stack_forward.register_autograd(_stack_grad, setup_context=_stack_setup)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def _check_size(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return int(value)


def _cuda_tensor_ok(t):
    """Whether t is a CUDA tensor that rnncore's CUDA path can run on here."""
    return t.device.type == "cuda" and _cuda_path.cuda_available()


class _RNNBase(torch.nn.Module):
    """What LSTM, GRU and RNN share: parameters as torch.nn registers them, input and state
    checks, PackedSequence / batch_first / unbatched handling, and the call into the core."""

    _has_cell_state = False
    _numpy_class = None  # the rnncore numpy module whose `variants` name the registry cells
    mode = None

    def __init__(self, cell_options, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 precision="float32"):
        super().__init__()
        self.precision = _precision.check_precision(
            precision, _NUMPY_DTYPES.get(dtype or torch.get_default_dtype(), np.float32))
        self.cell = _registry.select(self._numpy_class, **cell_options)
        info = _registry.info(self.cell)
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.bias = _check_bool("bias", bias)
        self.batch_first = _check_bool("batch_first", batch_first)
        self.bidirectional = _check_bool("bidirectional", bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1) (the chance that an "
                             f"element is zeroed), got {dropout!r}")
        self.dropout = float(dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        if dtype is not None and dtype not in _NUMPY_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (rnncore computes in "
                            f"those), got {dtype}")
        self.proj_size = 0
        self.num_directions = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        G, H = info.gates, self.hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [("weight_ih", (G * H, layer_input)), ("weight_hh", (G * H, H))]
                if bias:
                    shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                if info.peephole_rows:
                    shapes.append(("weight_peephole", (info.peephole_rows, H)))
                names = [stem + suffix for stem, _ in shapes]
                for name, (_, shape) in zip(names, shapes):
                    self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self._engine = _Engine(self.cell, self.input_size, H, self.num_layers, self.bidirectional,
                               self.precision)
        self.reset_parameters()

    def reset_parameters(self):
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, in registration order: torch.nn's
        initialisation, so the same torch.manual_seed gives the same weights."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -bound, bound)

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self):
        """A no-op, as torch.nn's on the CPU (kept so that code calling it keeps working)."""

    def train(self, mode=True):
        super().train(mode)
        if not mode:  # as rnncore's eval(): keep no training workspace
            self._engine.clear()
        return self

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.precision != "float32":
            s += f", precision={self.precision!r}"
        return s + self._extra_repr()

    def _extra_repr(self):
        return ""

    # ---- checks -----------------------------------------------------------------------------
    def _name(self):
        return f"rnncore.torch.{type(self).__name__}"

    def _check_tensor(self, what, t, dtype):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{self._name()}: {what} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
        if t.device.type != "cpu" and not _cuda_tensor_ok(t):
            raise NotImplementedError(
                f"{self._name()} runs on CPU tensors only (and CUDA tensors with rnncore's CUDA "
                f"path: {_cuda_path.cuda_status()}), but {what} is on {t.device}; move the "
                f"module and its inputs to the CPU (.cpu()), or use a torch.nn layer on "
                f"{t.device}")
        if t.dtype != dtype:
            raise ValueError(f"{self._name()}: {what} dtype ({t.dtype}) does not match weight "
                             f"dtype ({dtype}); convert it with .to({dtype}), or the module "
                             f"with .to({t.dtype})")

    def _weights(self):
        """(weights, torch dtype, {name: numpy view}) of the parameters, checked: one float32
        or float64 dtype, on the CPU, contiguous (a non-contiguous one is copied for the call)."""
        try:  # the registered parameters (torch.func.functional_call swaps them there too)
            weights = [self._parameters[name] for name in self._flat_weights_names]
        except KeyError:  # one was replaced by a plain attribute or a parametrization
            weights = [getattr(self, name) for name in self._flat_weights_names]
        views = self._engine.views
        if views is not None and len(views[0]) == len(weights) and all(
                w is v and w.data_ptr() == p for w, v, p in zip(weights, views[0], views[1])):
            return weights, views[2], views[3]
        dtype = weights[0].dtype
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"{self._name()} computes in float32 or float64; its parameters are "
                            f"{dtype} (convert with .float() or .double())")
        for name, w in zip(self._flat_weights_names, weights):
            if w.device != weights[0].device or (w.device.type != "cpu" and
                                                 not _cuda_tensor_ok(w)):
                raise NotImplementedError(
                    f"{self._name()} runs on CPU tensors only (and CUDA tensors of one device "
                    f"with rnncore's CUDA path: {_cuda_path.cuda_status()}), but its parameter "
                    f"{name} is on {w.device} (the first on {weights[0].device}); move the "
                    f"module to one device (.cpu()), or use a torch.nn layer there")
            if w.dtype != dtype:
                raise TypeError(f"{self._name()}: parameter {name} is {w.dtype}, the others "
                                f"{dtype}; all parameters must have one dtype")
        params = {name: _view(w.detach().contiguous())
                  for name, w in zip(self._flat_weights_names, weights)}
        if all(w.is_contiguous() for w in weights):
            self._engine.views = (weights, [w.data_ptr() for w in weights], dtype, params)
        return weights, dtype, params

    def _state_size(self, batch):
        return (self.num_layers * self.num_directions, batch, self.hidden_size)

    def _check_state(self, what, t, dtype, expected, batched):
        """An initial state, checked against `expected` (L*D, B, H), as (L*D, B, H) contiguous."""
        self._check_tensor(what, t, dtype)
        layout = f"(num_layers * num_directions, {'B, ' if batched else ''}hidden_size)"
        if t.dim() != (3 if batched else 2):
            raise InputError(
                f"{self._name()}: for {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                f"{what} should also be {3 if batched else 2}-D {layout} but got {t.dim()}-D "
                f"with shape {tuple(t.shape)}")
        shape = expected if batched else (expected[0], expected[2])
        if tuple(t.shape) != shape:
            raise InputError(f"{self._name()}: expected {what} of shape {shape} {layout}, got "
                             f"{tuple(t.shape)}")
        return (t if batched else t.unsqueeze(1)).contiguous()

    def _split_hx(self, hx):
        """hx -> [h0] or [h0, c0] (entries may be None)."""
        if hx is None:
            return [None]
        if isinstance(hx, (tuple, list)):
            raise TypeError(f"{self._name()}: hx must be a tensor (num_layers * num_directions, "
                            f"B, hidden_size), got a {type(hx).__name__}")
        return [hx]

    def _pack_hx(self, states):
        return states[0]

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, input, hx=None):
        """y, h_n = rnn(input, h0) (LSTM: y, (h_n, c_n) = lstm(input, (h0, c0))), as torch.nn.

        input: (T, B, input_size), (B, T, input_size) with batch_first, unbatched (T, input_size)
        or a PackedSequence (then y is one, with the same batch_sizes and indices). States:
        (num_layers * num_directions, B, hidden_size), 2-D for unbatched input; zeros if None."""
        if _tracing():
            if (torch.compiler.is_compiling() and not torch.compiler.is_exporting()
                    and not isinstance(input, PackedSequence)):
                return self._op_forward(input, hx)
            return self._torch_forward(input, hx)
        weights, dtype, params = self._weights()
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        self._check_input(data, dtype, packed)
        batched = packed or data.dim() == 3
        x, lengths_t = self._time_major(data, input.batch_sizes if packed else None, batched)
        sorted_indices = input.sorted_indices if packed else None
        states = self._initial_states(hx, dtype, x.shape[1], batched, sorted_indices)
        if (x.device != weights[0].device or
                any(s is not None and s.device != x.device for s in states)):
            raise NotImplementedError(
                f"{self._name()}: input, states and parameters must be on one device, got input "
                f"on {x.device} and parameters on {weights[0].device}")
        dropout = self.dropout if self.training and self.num_layers > 1 else 0.0
        seed = int(torch.empty((), dtype=torch.int64).random_()) if dropout > 0 else 0
        call = _Call(self._engine, self._flat_weights_names, _NUMPY_DTYPES[dtype], params,
                     None if lengths_t is None else lengths_t.numpy(), dropout, seed,
                     x.device if x.is_cuda else None)
        y, h_n, c_n = self._run(call, x, states, weights)
        out_states = [h_n, c_n][:len(states)]
        if packed:
            y = PackedSequence(pack_padded_sequence(y, lengths_t).data, input.batch_sizes,
                               sorted_indices, input.unsorted_indices)
            if input.unsorted_indices is not None:
                out_states = [s.index_select(1, input.unsorted_indices) for s in out_states]
        elif not batched:
            y = y.squeeze(1)
            out_states = [s.squeeze(1) for s in out_states]
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, self._pack_hx(out_states)

    def to_numpy(self):
        """The rnncore numpy module (rnncore.LSTM, GRU, RNN, PeepholeLSTM) of this module's
        configuration, precision and dtype, holding a copy of its weights: for
        rnncore.onnx.to_onnx (which calls it) or torch-free inference."""
        cls, options = _registry.module_variant(self.cell)
        dtype = self._flat_weights_dtype()
        module = cls(self.input_size, self.hidden_size, num_layers=self.num_layers,
                     bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                     bidirectional=self.bidirectional, dtype=_NUMPY_DTYPES[dtype],
                     precision=self.precision, **options)
        module.load_state_dict({name: getattr(self, name).detach().cpu().numpy().copy()
                                for name in self._flat_weights_names})
        return module

    def _flat_weights_dtype(self):
        dtype = getattr(self, self._flat_weights_names[0]).dtype
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"{self._name()}: parameters are {dtype}; rnncore's numpy modules "
                            "hold float32 or float64")
        return dtype

    def _op_forward(self, input, hx):
        """forward through the rnncore::stack_forward custom op (torch.compile)."""
        weights = [getattr(self, name) for name in self._flat_weights_names]
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        states = self._split_hx(hx)
        shape = self._state_size(x.shape[1])
        states = [x.new_zeros(shape) if s is None else (s if batched else s.unsqueeze(1))
                  for s in states]
        c0 = states[1] if self._has_cell_state else x.new_empty((0,))
        # dropout between layers (training mode): the seed a tensor drawn from torch's
        # generator, so that the compiled graph draws a new one every call, as eager does
        dropout = self.dropout if self.training and self.num_layers > 1 else 0.0
        seed = torch.randint(0, 2**62, (), dtype=torch.int64)
        y, h_n, c_n = _stack_forward(x.contiguous(), states[0].contiguous(), c0.contiguous(),
                                     weights, ",".join(self._flat_weights_names), self.cell,
                                     self.num_layers, self.bidirectional, dropout, seed,
                                     self.precision)
        out_states = [h_n, c_n] if self._has_cell_state else [h_n]
        if not batched:
            y = y.squeeze(1)
            out_states = [s.squeeze(1) for s in out_states]
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, self._pack_hx(out_states)

    def _torch_forward(self, input, hx):
        """forward with torch's own recurrent op (torch._VF.lstm / gru / rnn_tanh / rnn_relu,
        what torch.nn's modules call) on this module's parameters: the path of traced, compiled
        and exported calls."""
        mode = _torch_mode(self.cell)
        if mode is None:
            raise _no_torch_twin(self)
        weights = [getattr(self, name) for name in self._flat_weights_names]
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = None
        batched = True
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = batch_sizes[0]
        else:
            batched = input.dim() == 3
            if not batched:
                input = input.unsqueeze(1)
            elif self.batch_first:
                input = input.transpose(0, 1)
            batch = input.size(1)
        states = self._split_hx(hx)
        shape = self._state_size(batch)
        ref = data if packed else input
        states = [torch.zeros(shape, dtype=ref.dtype, device=ref.device) if s is None
                  else (s if batched else s.unsqueeze(1)) for s in states]
        if sorted_indices is not None:
            states = [s.index_select(1, sorted_indices) for s in states]
        hx_arg = states if self._has_cell_state else states[0]
        dropout = self.dropout if self.num_layers > 1 else 0.0
        fn = getattr(torch._VF, mode.lower())
        if packed:
            result = fn(data, batch_sizes, hx_arg, weights, self.bias, self.num_layers, dropout,
                        self.training, self.bidirectional)
        else:
            result = fn(input, hx_arg, weights, self.bias, self.num_layers, dropout,
                        self.training, self.bidirectional, False)
        y, out_states = result[0], list(result[1:])
        if packed:
            y = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                out_states = [s.index_select(1, unsorted_indices) for s in out_states]
        elif not batched:
            y = y.squeeze(1)
            out_states = [s.squeeze(1) for s in out_states]
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, self._pack_hx(out_states)

    def __getstate__(self):
        # the engine (Stacks, views) is no part of the model: the pickle (torch.save of the
        # module, copy.deepcopy) holds only torch's and this module's public classes
        state = self.__dict__.copy()
        state.pop("_engine", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._engine = _Engine(self.cell, self.input_size, self.hidden_size, self.num_layers,
                               self.bidirectional, self.precision)

    def _check_input(self, data, dtype, packed):
        """The input tensor (a PackedSequence's data): type, device, dtype, rank, features."""
        self._check_tensor("input", data, dtype)
        if data.dim() not in ((2,) if packed else (2, 3)):
            raise InputError(
                f"{self._name()}: input must be " + (
                    "a PackedSequence of 2-D data (sum of lengths, input_size)" if packed else
                    f"3-D {'(B, T, input_size)' if self.batch_first else '(T, B, input_size)'} "
                    "or 2-D unbatched (T, input_size)") +
                f", got {data.dim()}-D with shape {tuple(data.shape)}")
        if data.shape[-1] != self.input_size:
            raise InputError(f"{self._name()}: input must have input_size={self.input_size} "
                             f"features in its last dimension, got shape {tuple(data.shape)}")

    def _time_major(self, data, batch_sizes, batched):
        """-> (x (T, B, input_size) contiguous, lengths tensor or None); batch_sizes: a
        PackedSequence's, None for a plain tensor."""
        lengths_t = None
        if batch_sizes is not None:
            x, lengths_t = pad_packed_sequence(PackedSequence(data, batch_sizes))
        elif not batched:
            x = data.unsqueeze(1)
        else:
            x = data.transpose(0, 1) if self.batch_first else data
        return x.contiguous(), lengths_t

    def _initial_states(self, hx, dtype, batch, batched, sorted_indices):
        """hx -> [h0] or [h0, c0], each (L*D, B, H) contiguous or None, in the packed batch's
        sorted order."""
        expected = self._state_size(batch)
        names = ("hx", "cx") if self._has_cell_state else ("hx",)
        states = [None if s is None else self._check_state(n, s, dtype, expected, batched)
                  for n, s in zip(names, self._split_hx(hx))]
        if sorted_indices is not None:
            states = [None if s is None else s.index_select(1, sorted_indices) for s in states]
        return states

    def _run(self, call, x, states, weights):
        """(y, h_n, c_n) through autograd when a gradient is wanted, else one plain call."""
        h0, c0 = (states + [None])[:2]
        record = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in weights)
            or any(s is not None and s.requires_grad for s in states))
        if record:
            return _StackFunction.apply(call, x, h0, c0, *weights)
        # no graph: inference (dropout, when active, still runs the training forward)
        stack = call.acquire()
        try:
            return tuple(map(_tensor, call.run(stack, x, h0, c0, call.dropout > 0)))
        finally:
            call.release(stack)


class _LSTMStates:
    _has_cell_state = True

    def _split_hx(self, hx):
        if hx is None:
            return [None, None]
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{self._name()}: hx must be a tuple (h0, c0) of tensors, got "
                            f"{type(hx).__name__}")
        return list(hx)

    def _pack_hx(self, states):
        return tuple(states)


class RNN(_RNNBase):
    """torch.nn.RNN on rnncore: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh
    or relu. Same arguments (nonlinearity is the 4th positional one, as in torch)."""
    _numpy_class = _numpy_modules.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None, *, precision: str = "float32") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or "
                             "'relu'.")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__({"nonlinearity": nonlinearity}, input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, device, dtype, precision)


class LSTM(_LSTMStates, _RNNBase):
    """torch.nn.LSTM on rnncore (gates [i, f, g, o]); peephole=True adds diagonal peepholes
    weight_peephole_l{k} (3, H), rows [i, f, o] (see PeepholeLSTM). proj_size must be 0."""
    _numpy_class = _numpy_modules.LSTM
    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device: Any = None, dtype: Any = None, *,
                 peephole: bool = False, precision: str = "float32") -> None:
        if proj_size != 0:
            raise ValueError(f"rnncore.torch.LSTM has no projections: proj_size must be 0, got "
                             f"{proj_size!r} (torch.nn.LSTM has them)")
        self.peephole = _check_bool("peephole", peephole)
        super().__init__({"peephole": peephole}, input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, device, dtype, precision)

    def _extra_repr(self):
        return ", peephole=True" if self.peephole and type(self) is LSTM else ""


class PeepholeLSTM(LSTM):
    """LSTM with diagonal peepholes (Gers & Schmidhuber; ONNX's P input): the input and forget
    gates look at c_{t-1}, the output gate at the new c_t. LSTM(..., peephole=True)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None, *, precision: str = "float32") -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype, peephole=True,
                         precision=precision)


class GRU(_RNNBase):
    """torch.nn.GRU on rnncore (gates [r, z, n], h_t = (1 - z) n + z h_{t-1}).

    reset_after=True (torch's): n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
    reset_after=False (Cho et al. 2014; Keras' reset_after=False): n = tanh(W_in x + b_in +
    W_hn (r * h) + b_hn), which torch.nn has no module for."""
    _numpy_class = _numpy_modules.GRU
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None, *, reset_after: bool = True,
                 precision: str = "float32") -> None:
        self.reset_after = _check_bool("reset_after", reset_after)
        super().__init__({"reset_after": reset_after}, input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, device, dtype, precision)

    def _extra_repr(self):
        return "" if self.reset_after else ", reset_after=False"


# ---- cells: one time step per call, on the persistent step engine (rnncore._core.Step) -------

class _StepEngines:
    """A cell module's core.Step per numpy dtype, with the weights packed once and repacked only
    when a parameter changed: a different tensor or memory, or a bumped `_version` (torch bumps
    it on every in-place change: optimiser steps, load_state_dict, init_, `with no_grad(): w +=`).

    Not part of the model: pickling (torch.save of a module, copy.deepcopy) leaves it out and
    the unpickled module makes a fresh one."""

    __slots__ = ("args", "precision", "steps")

    def __init__(self, cell, input_size, hidden_size, precision="float32"):
        self.args = (cell, input_size, hidden_size)
        self.precision = precision
        self.steps = {}  # numpy dtype -> [Step, key of the packed weights]

    def get(self, np_dtype, names, weights):
        entry = self.steps.get(np_dtype)
        if entry is None:
            _precision.check_precision(self.precision, np_dtype)
            entry = self.steps[np_dtype] = [core.Step(*self.args, np_dtype, self.precision),
                                            None]
        key = [(w, w.data_ptr(), w._version) for w in weights]
        old = entry[1]
        if old is None or len(old) != len(key) or any(
                a[0] is not b[0] or a[1] != b[1] or a[2] != b[2] for a, b in zip(old, key)):
            entry[0].set_weights({n: w.detach().contiguous().numpy()
                                  for n, w in zip(names, weights)})
            entry[1] = key
        return entry[0]


def _np(t):
    return None if t is None else t.detach().numpy()


class _StepFunction(torch.autograd.Function):
    """(h', c') = Step.forward(x, h, c); backward = Step.backward of the step's record.

    x, h, c arrive contiguous CPU tensors of the weights' dtype (h, c may be None: zeros)."""

    @staticmethod
    def forward(ctx, step, names, x, h, c, *weights):
        h1, c1, record = step.forward(x.numpy(), _np(h), _np(c), True)
        ctx.step, ctx.names, ctx.record = step, names, record
        # saved so that autograd refuses a backward after an in-place change of any of them,
        # and for a recompute when the graph is back-propagated twice (retain_graph=True)
        ctx.save_for_backward(x, h, c, *weights)
        ctx.set_materialize_grads(False)
        return torch.from_numpy(h1), None if c1 is None else torch.from_numpy(c1)

    @staticmethod
    def backward(ctx, dh, dc):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "rnncore.torch cells do not support gradients of gradients (create_graph=True "
                "reached an rnncore.torch cell); use torch.nn's cell where second derivatives "
                "are needed")
        x, h, c, *weights = ctx.saved_tensors
        record, ctx.record = ctx.record, None
        step = ctx.step
        if record is None:  # second backward through a retained graph: recompute the step
            record = step.forward(x.numpy(), _np(h), _np(c), True)[2]
        needs = ctx.needs_input_grad
        grads = {n: torch.zeros_like(w) for n, w, need in zip(ctx.names, weights, needs[5:])
                 if need}
        dx, dh0, dc0 = step.backward(
            record, None if dh is None else dh.contiguous().numpy(),
            None if dc is None else dc.contiguous().numpy(),
            {n: g.numpy() for n, g in grads.items()})
        return (None, None,
                torch.from_numpy(dx) if needs[2] else None,
                torch.from_numpy(dh0) if needs[3] and h is not None else None,
                torch.from_numpy(dc0) if needs[4] and c is not None and dc0 is not None
                else None,
                *(grads.get(n) for n in ctx.names))


class _CellBase(torch.nn.Module):
    """What RNNCell, LSTMCell, PeepholeLSTMCell and GRUCell share: torch.nn's parameters
    (weight_ih (G*H, I), weight_hh (G*H, H), bias_ih, bias_hh (G*H,)), initialisation, input and
    state checks (batched (B, I) or unbatched (I,) input) and the call into core.Step."""

    _has_cell_state = False

    def __init__(self, cell, input_size, hidden_size, bias=True, device=None, dtype=None,
                 precision="float32"):
        super().__init__()
        self.cell = cell
        self.precision = _precision.check_precision(
            precision, _NUMPY_DTYPES.get(dtype or torch.get_default_dtype(), np.float32))
        info = _registry.info(cell)
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.bias = _check_bool("bias", bias)
        if dtype is not None and dtype not in _NUMPY_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (rnncore computes in "
                            f"those), got {dtype}")
        factory = {"device": device, "dtype": dtype}
        G, H, I = info.gates, self.hidden_size, self.input_size
        shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, H))]
        if bias:
            shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
        if info.peephole_rows:
            shapes.append(("weight_peephole", (info.peephole_rows, H)))
        for name, shape in shapes:
            self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, **factory)))
        if not bias:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._names = tuple(name for name, _ in shapes)
        self._engine = _StepEngines(cell, I, H, self.precision)
        self.reset_parameters()

    def reset_parameters(self):
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter in registration order, as torch.nn."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -bound, bound)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_engine", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._engine = _StepEngines(self.cell, self.input_size, self.hidden_size, self.precision)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.precision != "float32":
            s += f", precision={self.precision!r}"
        return s + self._extra_repr()

    def _extra_repr(self):
        return ""

    def _name(self):
        return f"rnncore.torch.{type(self).__name__}"

    def _check(self, what, t, dtype, shape):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{self._name()}: {what} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
        if t.device.type != "cpu":
            raise NotImplementedError(
                f"{self._name()} runs on CPU tensors only (rnncore's step engine has no CUDA "
                f"path), but {what} is on {t.device}; use torch.nn's cell there")
        if t.dtype != dtype:
            raise ValueError(f"{self._name()}: {what} dtype ({t.dtype}) does not match weight "
                             f"dtype ({dtype}); convert it with .to({dtype}), or the module "
                             f"with .to({t.dtype})")
        if tuple(t.shape) != shape:
            raise InputError(f"{self._name()}: expected {what} of shape {shape}, got "
                             f"{tuple(t.shape)}")
        return t if t.is_contiguous() else t.contiguous()

    def _split_hx(self, hx):
        if hx is not None and isinstance(hx, (tuple, list)):
            raise TypeError(f"{self._name()}: hx must be a tensor, got {type(hx).__name__}")
        return hx, None

    def _torch_forward(self, input, hx):
        """forward with torch.nn's cell code on these parameters (traced/compiled/exported)."""
        mode = _torch_mode(self.cell)
        twin = None if mode is None else {"LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell
                                          }.get(mode, torch.nn.RNNCell)
        if twin is None:
            raise _no_torch_twin(self)
        return twin.forward(self, input, hx)

    def forward(self, input, hx=None):
        """h' = cell(input, h) (LSTM cells: (h', c') = cell(input, (h, c))), as torch.nn's
        cells: input (B, input_size) or unbatched (input_size,), states (B, hidden_size) or
        (hidden_size,), zeros when hx is None."""
        params = self._parameters
        weights = [params[n] for n in self._names]
        dtype = weights[0].dtype
        if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2):
            raise InputError(f"{self._name()}: Expected input to be 1D or 2D, got "
                             f"{getattr(input, 'dim', lambda: type(input).__name__)()}"
                             f"{'D' if isinstance(input, torch.Tensor) else ''} instead")
        unbatched = input.dim() == 1
        if _tracing():
            return self._torch_forward(input, hx)
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"{self._name()} computes in float32 or float64; its parameters are "
                            f"{dtype} (convert with .float() or .double())")
        x = input.unsqueeze(0) if unbatched else input
        B = x.shape[0]
        x = self._check("input", x, dtype, (B, self.input_size))
        h, c = self._split_hx(hx)
        if h is not None:
            h = self._check("hx", h.unsqueeze(0) if unbatched and h.dim() == 1 else h, dtype,
                            (B, self.hidden_size))
        if c is not None:
            c = self._check("cx", c.unsqueeze(0) if unbatched and c.dim() == 1 else c, dtype,
                            (B, self.hidden_size))
        for name, w in zip(self._names, weights):
            if w.device.type != "cpu" or w.dtype != dtype:
                raise NotImplementedError(
                    f"{self._name()}: parameter {name} is {w.dtype} on {w.device}; all "
                    f"parameters must be CPU tensors of one dtype (float32 or float64)")
        step = self._engine.get(_NUMPY_DTYPES[dtype], self._names, weights)
        if torch.is_grad_enabled() and (
                x.requires_grad or any(w.requires_grad for w in weights)
                or (h is not None and h.requires_grad) or (c is not None and c.requires_grad)):
            h1, c1 = _StepFunction.apply(step, self._names, x, h, c, *weights)
        else:
            h1, c1, _ = step.forward(x.numpy(), _np(h), _np(c), False)
            h1 = torch.from_numpy(h1)
            c1 = None if c1 is None else torch.from_numpy(c1)
        if unbatched:
            h1 = h1.squeeze(0)
            c1 = None if c1 is None else c1.squeeze(0)
        return (h1, c1) if self._has_cell_state else h1


class RNNCell(_CellBase):
    """torch.nn.RNNCell on rnncore: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.
    Same arguments (nonlinearity after bias, as in torch)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device: Any = None, dtype: Any = None, *,
                 precision: str = "float32") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity
        super().__init__(_registry.select(_numpy_modules.RNN, nonlinearity=nonlinearity),
                         input_size, hidden_size, bias, device, dtype,
                         precision)

    def _extra_repr(self):
        return "" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity}"


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell on rnncore (gates [i, f, g, o]): (h', c') = cell(x, (h, c))."""

    _has_cell_state = True
    _peephole = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, *, precision: str = "float32") -> None:
        super().__init__(_registry.select(_numpy_modules.LSTM, peephole=self._peephole),
                         input_size, hidden_size, bias, device, dtype, precision)

    def _split_hx(self, hx):
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{self._name()}: hx must be a tuple (h, c) of tensors, got "
                            f"{type(hx).__name__}")
        return hx[0], hx[1]


class PeepholeLSTMCell(LSTMCell):
    """LSTMCell with diagonal peepholes: weight_peephole (3, H), rows [i, f, o] (as
    PeepholeLSTM; torch.nn has no twin)."""

    _peephole = True


class GRUCell(_CellBase):
    """torch.nn.GRUCell on rnncore (gates [r, z, n]); reset_after=False is the reset-before GRU
    (Cho et al. 2014), which torch.nn has no cell for."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, *, reset_after: bool = True,
                 precision: str = "float32") -> None:
        self.reset_after = _check_bool("reset_after", reset_after)
        super().__init__(_registry.select(_numpy_modules.GRU, reset_after=reset_after),
                         input_size, hidden_size,
                         bias, device, dtype, precision)

    def _extra_repr(self):
        return "" if self.reset_after else ", reset_after=False"
