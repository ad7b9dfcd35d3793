"""Shared machinery of rnncore's modules: parameters, gradients, modes, state dicts, input checks,
and the module protocol of backward: every module that has one keeps what it consumes in
`self._pending`, a Tape (one slot: whole-sequence modules, layers, models) or a StepTape (many:
cells, attention), made in `_init_core` (so a copy has none); recording follows `_recording()`
(training mode, outside no_grad()); eval() drops it; a backward with nothing to consume raises
needs_forward()'s one RuntimeError; a bad argument to backward raises before the record is
popped, so it stays."""
from __future__ import annotations

import numbers
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnncore._typing import Array, ArrayLike


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
    for native in (np.dtype(np.float32), np.dtype(np.float64)):
        if dt == native:
            return native  # numpy's own object: the fast paths test dtypes with `is`
    raise ValueError(f"dtype must be float32 or float64, got {dt}")


def _is_torch_tensor(value):
    return hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy")


# torch dtypes that numpy has; other floating ones (bfloat16, float8 ...) are widened to float32,
# which holds every value of them exactly.
_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def to_numpy(value):
    """A numpy view or copy of value: torch tensors (any device, with or without grad, of any
    float dtype torch has) become numpy arrays; anything else goes through np.asarray."""
    if _is_torch_tensor(value):
        t = value.detach().cpu()
        if t.is_floating_point() and str(t.dtype) not in _NUMPY_FLOATS:
            t = t.float()
        return t.numpy(force=True)
    return np.asarray(value)


def native(a, dtype=None):
    """numpy array `a` as a C-contiguous, aligned array in native byte order, of `dtype` (by
    default a's own, in native byte order: the same values): at most one copy, none when `a`
    already is one. The one conversion every entry uses before arrays reach the compiled core
    (which reads raw memory), a file or a foreign library."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=") if dtype is None else dtype)
    if not a.flags.aligned:  # np.frombuffer at an odd offset: ascontiguousarray keeps it
        a = a.copy()
    return a


def native_float_dtype(dtype):
    """The dtype a float input computes in: float32 or float64 in native byte order when it is
    one of those (in any byte order), else float64."""
    dt = np.dtype(dtype)
    if dt.kind == "f" and dt.itemsize in (4, 8):
        return float_dtype(dt.newbyteorder("="))
    return np.dtype(np.float64)


def as_array(name, value, dtype):
    """Numeric array-like (numpy array, list, torch tensor) -> C-contiguous, aligned array of
    dtype in native byte order: what every entry of rnncore hands to the compiled core.

    The one place where inputs are converted (with native()): another byte order (`>f4`, `>f8`,
    as h5py, FITS or np.frombuffer give), another numeric dtype, a strided, misaligned or
    read-only array all give the same values as the native array would. At most one copy: none
    when value already is such an array (read-only ones included: the core only reads them)."""
    try:
        a = to_numpy(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from e
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array (float or int), got dtype {a.dtype}")
    return native(a, dtype)  # dtype is float_dtype's: native, so the byte order is converted


_ALIGNED_C = 0x0001 | 0x0100  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
_ndarray = np.ndarray


def ready(a, dtype):
    """Whether `a` can go to the compiled core as it is: a numpy array (not a subclass) of
    exactly the native `dtype` (float_dtype's result), C-contiguous and aligned. The fast paths'
    test; anything else goes through as_array."""
    return type(a) is _ndarray and a.dtype is dtype and (a.flags.num & _ALIGNED_C) == _ALIGNED_C


def native_parameter(value):
    """A parameter array as a module keeps it: numpy arrays in another byte order, misaligned or
    not C-contiguous become a native, aligned, C-contiguous copy of the same dtype (the same
    values); native ones, and device arrays, are kept as they are (the module then uses the
    caller's array itself, so writing it in place changes the module)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu" and (
            not value.dtype.isnative or (value.flags.num & _ALIGNED_C) != _ALIGNED_C):
        return native(value)
    return value


def check_shape(name, a, expected, what=""):
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}{what}, got {tuple(a.shape)}")


def check_lengths(lengths, seq_len, batch):
    """lengths -> int64 array (B,) with 0 <= len <= T, or None. Messages quote the value the
    caller passed (a uint64 2**64-1 or a float 1e20 is reported as such, not as its int64 cast)."""
    if lengths is None:
        return None
    a = to_numpy(lengths)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"lengths must be an integer array, got dtype {a.dtype}")
    check_shape("lengths", a, (batch,), " (one length per sequence of the batch)")
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            not_whole = ~np.isfinite(a) | (np.floor(a) != a)
        bad = np.flatnonzero(not_whole)
        if bad.size:
            i = int(bad[0])
            raise TypeError(f"lengths must be whole numbers (an integer array), got "
                            f"lengths[{i}] = {a[i].item()!r}")
    bad = np.flatnonzero((a < 0) | (a > seq_len))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"lengths must lie in [0, {seq_len}] (the sequence length), "
                         f"got lengths[{i}] = {a[i].item()!r}")
    return native(a, np.int64)


def _available_memory():
    """Bytes the process could still get: MemAvailable + SwapFree (Linux), else the physical
    memory, else None (unknown)."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_parameter_memory(what, count, dtype):
    """MemoryError, before anything is allocated, when `count` parameters of dtype and their
    gradients cannot fit in the memory available (instead of the kernel killing the process
    once the pages are touched)."""
    needed = 2 * int(count) * np.dtype(dtype).itemsize
    available = _available_memory()
    if available is not None and needed > available:
        raise MemoryError(f"{what} has {count:,} parameters: with their gradients that is "
                          f"{needed / 2**30:,.1f} GiB of {np.dtype(dtype).name}, but only "
                          f"{available / 2**30:,.1f} GiB of memory is available")


def uniform(rng, bound, shape, dtype):
    """U(-bound, bound) drawn straight in dtype (no float64 temporary for float32); for float64
    the same numbers as rng.uniform(-bound, bound, shape)."""
    a = rng.random(shape, dtype=np.dtype(dtype))
    a *= a.dtype.type(2 * bound)
    a -= a.dtype.type(bound)
    return a


_grad = threading.local()


def grad_enabled():
    """False inside `with rnncore.no_grad():` (in this thread)."""
    return getattr(_grad, "enabled", True)


class no_grad:
    """`with rnncore.no_grad():` forwards compute as in eval mode (no dropout, no workspace, no
    record for backward) whatever the modules' mode, and leave any pending backward untouched:
    for evaluating, sampling or advancing a state in the middle of training. Per thread."""

    def __enter__(self):
        self._saved = grad_enabled()
        _grad.enabled = False
        return self

    def __exit__(self, *exc):
        _grad.enabled = self._saved
        return False


# rnncore's parameter version: a process-wide counter that moves whenever parameters may have
# changed through rnncore (optimiser steps, load_state_dict, a parameter array added or replaced,
# parameters_changed()). What keeps a derived copy of parameters (the cells' packed weights)
# compares it with the version it was built at. One counter for every module: it costs a repack
# of the cells that step after an update, never a stale result.
_parameter_version = [0]


def parameters_changed():
    """Tells rnncore that parameter arrays were written in place outside rnncore's optimisers
    and load_state_dict (e.g. `cell.params["weight_hh"][3, 4] = 0`). Not needed for the cells,
    which compare their weights with those they packed before every step (nn/cells.py
    _sync_engine); kept for code that calls it: the cells then repack before their next step."""
    _parameter_version[0] += 1


class Parameters(OrderedDict):
    """A module's `params`: an OrderedDict whose assignments (a parameter array added or
    replaced) count as a parameter change (see parameters_changed). An assigned numpy array in
    another byte order, misaligned or strided is kept as a native copy (native_parameter)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, native_parameter(value))
        _parameter_version[0] += 1


def key_differences(expected, given):
    """(missing, unexpected): the keys of `expected` absent from `given`, and the keys of
    `given` absent from `expected`, each in its own order."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    return missing, unexpected


def check_keys(what, expected, given, noun="keys"):
    """KeyError "{what}: missing keys [...]; unexpected keys [...]" unless the keys agree: the
    one check of every strict load (modules, models, optimisers, schedules). noun="" when `what`
    already says what the keys are ("optimizer state: parameter names: missing [...]")."""
    missing, unexpected = key_differences(expected, given)
    if missing or unexpected:
        sep = f" {noun} " if noun else " "
        parts = ([f"missing{sep}{missing}"] if missing else []) + \
                ([f"unexpected{sep}{unexpected}"] if unexpected else [])
        raise KeyError(f"{what}: " + "; ".join(parts))


def walk_parameters(modules):
    """[(name, parameter, gradient)] of one module (or model) or a list of them, each parameter
    array once (tied arrays under their first name; names prefixed "i." when several modules are
    given): the one walk over parameters that the optimisers, distributed training, checkpoints
    and named_parameters() share."""
    mods = list(modules) if isinstance(modules, (list, tuple)) else [modules]
    if not mods:
        raise ValueError("modules must hold at least one module, got an empty list")
    out, seen = [], set()
    for i, m in enumerate(mods):
        params, grads = getattr(m, "params", None), getattr(m, "grads", None)
        if params is None or grads is None:
            raise TypeError(f"modules must be rnncore modules (with params and grads), got "
                            f"{type(m).__name__}")
        prefix = f"{i}." if len(mods) > 1 else ""
        for k, p in params.items():
            if id(p) not in seen:
                seen.add(id(p))
                out.append((prefix + k, p, grads[k]))
    return out


def needs_forward(owner, what="forward"):
    """The RuntimeError of a backward with nothing to consume, in the one wording every module
    uses (what: "forward", or "forward step" for the step-by-step modules)."""
    return RuntimeError(
        f"{owner}.backward() needs a preceding training-mode {what} that has not been "
        "back-propagated yet (never run, run in eval mode or under no_grad(), or already "
        "consumed by backward)")


class Tape:
    """What one backward consumes: the record of a module's last training-mode forward (one
    slot), with the thread that ran it. Used by every module with a whole-sequence backward
    (layers, recurrent modules, the pyramid encoder, the task models).

        tape.push(record)      a training forward (replaces any record still pending)
        record = tape.last()   what backward would take; RuntimeError when there is none
        ... check backward's arguments (a bad one raises here: the record stays) ...
        tape.pop()             consumes it
        tape.discard()         the pending record is void (its workspace is being reused)
        tape.clear()           drops everything (eval(), .to(), a copy)

    A thread whose own training forward was replaced by another thread's before its backward
    gets a RuntimeError from last() instead of back-propagating through the other thread's
    sequence (one module cannot train in several threads at once). Callers hold the module's
    lock."""

    def __init__(self, owner):
        self.owner = owner  # the module's class name, for messages
        self._slot = None  # (record, forward number, thread)
        self._forwards = 0  # training forwards so far
        self._unconsumed = {}  # thread ident -> number of its last forward not back-propagated

    def __len__(self):
        return 0 if self._slot is None else 1

    @property
    def pending(self):
        """The record backward would take now, or None."""
        return None if self._slot is None else self._slot[0]

    def push(self, record):
        self._forwards += 1
        thread = threading.get_ident()
        self._slot = (record, self._forwards, thread)
        self._unconsumed[thread] = self._forwards

    def last(self):
        if self._slot is None:
            raise needs_forward(self.owner)
        mine = self._unconsumed.get(threading.get_ident())
        if mine is not None and mine != self._slot[1]:
            raise RuntimeError(
                f"{self.owner}.backward(): this thread's training forward was replaced by a "
                "later training forward from another thread before its backward; one module "
                "cannot train in several threads at once (give each thread its own module, e.g. "
                "copy.deepcopy(module), or hold a lock around each forward + backward)")
        return self._slot[0]

    def pop(self):
        record, number, thread = self._slot
        self._slot = None
        if self._unconsumed.get(thread) == number:
            del self._unconsumed[thread]
        return record

    def discard(self):
        """Voids the pending record but keeps the threads' claims: a thread whose forward it
        was still learns, at its backward, that another thread's forward came in between."""
        self._slot = None

    def clear(self):
        self._slot = None
        self._unconsumed.clear()


class StepTape:
    """The training steps of a step-by-step module (the cells, attention) not yet
    back-propagated, last first, each with the thread that ran it: the many-slot Tape. backward
    takes the most recent one; a thread may not take a step another thread ran while it has
    pending steps of its own (one module cannot train in several threads at once). Callers hold
    the module's lock."""

    def __init__(self, owner):
        self.owner = owner  # the module's class name, for messages
        self._steps = []
        self._threads = {}  # thread ident -> its steps on the tape

    def __len__(self):
        return len(self._steps)

    @property
    def pending(self):
        """The step backward would take now, or None."""
        return self._steps[-1][0] if self._steps else None

    def push(self, step):
        thread = threading.get_ident()
        self._steps.append((step, thread))
        self._threads[thread] = self._threads.get(thread, 0) + 1

    def last(self):
        """The step backward would take now; RuntimeError when there is none or it is another
        thread's while this thread has its own."""
        if not self._steps:
            raise needs_forward(self.owner, "forward step")
        step, owner = self._steps[-1]
        me = threading.get_ident()
        if owner != me and self._threads.get(me):
            raise RuntimeError(
                f"{self.owner}.backward(): the most recent pending step was run by another "
                "thread, while this thread has pending steps of its own; one module cannot "
                "train in several threads at once (give each thread its own, e.g. "
                "copy.deepcopy(module))")
        return step

    def pop(self):
        step, owner = self._steps.pop()
        self._threads[owner] -= 1
        if not self._threads[owner]:
            del self._threads[owner]
        return step

    def clear(self):
        self._steps.clear()
        self._threads.clear()


class Module:
    """Parameters and gradients as dicts of live numpy arrays; train/eval modes; state dicts.

    `params[name]` arrays are updated in place by optimisers and by load_state_dict, so
    references to them stay valid. `grads` has the same keys and shapes; backward adds into it.

    Threads: the calls of one module (forward, backward, train/eval, load_state_dict) take its
    lock, so from several threads they run one at a time, each whole; different modules run
    concurrently.
    """

    def __init__(self, dtype):
        self.dtype = float_dtype(dtype)
        self.params = Parameters()
        self.grads = OrderedDict()
        self.training = True
        self._lock = threading.RLock()

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, value):
        # `m.params = {...}` (a dict rebound, not updated): kept as Parameters, its arrays
        # converted as an assignment would, and counted as a parameter change.
        if not isinstance(value, Parameters):
            if not isinstance(value, Mapping):
                raise TypeError(f"{type(self).__name__}.params must be a mapping (dict) of "
                                f"parameter name -> array, got {type(value).__name__}")
            value = Parameters(value)
        self._params = value
        _parameter_version[0] += 1

    def _add_param(self, name, value):
        self.params[name] = native(np.asarray(value), self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g[...] = 0  # also for device arrays (rnncore.cuda)

    def parameters_changed(self) -> None:
        """Call after writing this module's parameter arrays in place by hand (rnncore's
        optimisers and load_state_dict do it themselves): see rnncore.parameters_changed."""
        parameters_changed()

    def train(self, mode: bool = True) -> Module:
        with self._lock:
            self.training = bool(mode)
            if not self.training:
                self._drop_tape()
        return self

    def eval(self) -> Module:
        return self.train(False)

    # What backward consumes: a Tape (or, for the step-by-step modules, a StepTape) made in
    # _init_core by every module that has a backward; None for those without one.
    _pending = None

    @property
    def _tape(self):
        """The record backward would consume now (None when there is none)."""
        return None if self._pending is None else self._pending.pending

    def _drop_tape(self):
        if self._pending is not None:
            self._pending.clear()

    def _recording(self):
        """Whether a forward now records for backward: training mode, outside no_grad()."""
        return self.training and grad_enabled()

    def _begin_record(self):
        """At the start of a forward: _recording(), and when it records, the record still
        pending is void from here on (the forward replaces what it refers to: a workspace, the
        children's records), even if the forward fails part-way."""
        recording = self._recording()
        if recording and self._pending is not None:
            with self._lock:
                self._pending.discard()
        return recording

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Array]]:
        """[(name, live parameter array)], each array once, in registration order (as
        torch.nn.Module.named_parameters; the gradient of `name` is `grads[name]`)."""
        return [(prefix + name, p) for name, p, _ in walk_parameters(self)]

    def parameters(self) -> list[Array]:
        """The live parameter arrays, each once (see named_parameters)."""
        return [p for _, p, _ in walk_parameters(self)]

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def state_dict(self) -> OrderedDict[str, Array]:
        """An OrderedDict of copies of the parameters, with PyTorch's names."""
        with self._lock:
            return OrderedDict((k, v.copy()) for k, v in self.params.items())

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike], strict: bool = True) -> Module:
        """Copies values (numpy arrays or torch tensors of any float dtype) into the live
        parameter arrays.

        strict: missing or unexpected keys raise KeyError listing them. A wrong shape raises
        ValueError naming the key and both shapes. Nothing is written unless all checks pass."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict({type(self).__name__}): state_dict must be a mapping "
                            f"(dict) of parameter name -> array, got {type(state_dict).__name__}")
        keys = list(state_dict.keys())
        if strict:
            check_keys(f"load_state_dict({type(self).__name__})", self.params, keys)
        staged = []
        for k in keys:
            if k not in self.params:
                continue
            try:
                v = to_numpy(state_dict[k])
            except (TypeError, ValueError) as e:
                raise TypeError(f"load_state_dict: {k} must be a numeric array, got "
                                f"{type(state_dict[k]).__name__}") from e
            if v.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {k} must be numeric, got dtype {v.dtype}")
            if tuple(v.shape) != self.params[k].shape:
                raise ValueError(f"load_state_dict: {k} has shape {tuple(v.shape)}, "
                                 f"expected {self.params[k].shape}")
            staged.append((k, v))
        with self._lock:
            try:
                for k, v in staged:
                    self.params[k][...] = v
            finally:
                parameters_changed()
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # The C++ objects (workspaces, pending backward steps) and the lock are not part of the model:
    # a pickled or copied module leaves them behind and builds fresh ones, so the copy computes
    # the same outputs and has no pending backward.
    _core_state = ()

    def _init_core(self):
        pass

    def __getstate__(self):
        with self._lock:
            state = self.__dict__.copy()
        state.pop("_lock", None)
        for name in self._core_state:
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        if "params" in state:  # pickled before params became a property
            state = dict(state)
            state["_params"] = Parameters(state.pop("params"))
        self.__dict__.update(state)
        if "dtype" in state:
            self.dtype = float_dtype(self.dtype)
        self._lock = threading.RLock()
        self._init_core()
