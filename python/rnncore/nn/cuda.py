"""rnncore on CUDA devices: the optional GPU path (rnncore._cuda, docs/cuda.md).

    import rnncore
    rnncore.cuda_available()               # a device, the module and cuBLAS are all there
    m = rnncore.LSTM(32, 256).to("cuda")   # parameters and gradients become device arrays
    y, (h_n, c_n) = m(x)                   # x: a torch CUDA tensor or a CuPy array
    m.backward(dy)                         # BPTT on the device, gradients added into m.grads

The modules (and rnncore.torch) run on the device of their input when it is a device array:
anything with __cuda_array_interface__ (torch CUDA tensors, CuPy, Numba) or with DLPack on a
CUDA device. Inputs, states and parameters are read in place (no host copies); outputs are
allocated with the input's own library (torch or CuPy) on its device, and the work is queued on
that library's current stream. The cells are the CPU path's, gate for gate (the same host+device
functions of cpp/include/rnncore/cells/), so results equal the CPU path's within float rounding.

`import rnncore` never needs any of this: rnncore._cuda is imported on first use, and when it is
missing (no nvcc at build time), cannot load, or finds no device, cuda_available() is False and
cuda_status() says why.

For the numpy modules this file is a backend, not a twin: rnncore.nn.recurrent picks it per call
and runs its own checks, tape and bookkeeping for both paths; from here it takes CudaStack (the
stack driver, core.Stack's calling convention), _Library via device_arrays() (the array
namespace: conversion, allocation, transposes in torch or CuPy), move_arrays() and parse_device()
for .to(). Nothing here reads or writes a module's members.
"""
from __future__ import annotations

import ctypes

import numpy as np

from rnncore._ext import cuda_module
from rnncore.nn import registry as _registry
from rnncore.nn.module import native

__all__ = ["CudaStack", "cuda_available", "cuda_status", "device_arrays", "is_device_array",
           "move_arrays", "parse_device"]

_DTYPES = {"<f4": "float32", "<f8": "float64", "<i8": "int64", "f4": "float32", "f8": "float64"}
_KDL_CUDA, _KDL_CUDA_MANAGED = 2, 13  # DLPack device types read in place
_DLPACK_FLOAT, _DLPACK_INT = 2, 0


def _load():
    """rnncore._cuda, or None (cuda_status() says why)."""
    return cuda_module()[0]


def cuda_status():
    """A line saying whether the GPU path can run here, and if not, why."""
    mod, error = cuda_module()
    if mod is None:
        return error
    if mod.device_count() == 0:
        return f"no usable CUDA device ({mod.device_error()})"
    try:
        library = mod.load_cublas()
    except RuntimeError as e:
        return str(e)
    return (f"{mod.device_count()} CUDA device(s), CUDA runtime {mod.runtime_version()}, "
            f"cuBLAS {library}")


def cuda_available():
    """True when rnncore._cuda was built, a CUDA device is visible and cuBLAS loads."""
    mod = _load()
    if mod is None or mod.device_count() == 0:
        return False
    try:
        mod.load_cublas()
    except RuntimeError:
        return False
    return True


def _require():
    mod, error = cuda_module()
    if mod is None:
        raise RuntimeError(error)
    return mod


# ---- device arrays ------------------------------------------------------------------------------

def is_device_array(obj):
    """Whether obj is an array in CUDA device memory (__cuda_array_interface__, or DLPack with a
    CUDA device). numpy arrays and CPU tensors are not."""
    if obj is None or isinstance(obj, (np.ndarray, np.generic, list, tuple, int, float)):
        return False
    if getattr(obj, "is_cuda", None) is True:  # torch (whose interface refuses tensors with grad)
        return True
    try:
        if hasattr(obj, "__cuda_array_interface__"):
            return True
    except Exception:  # a property that raises something else than AttributeError
        return False
    dlpack_device = getattr(obj, "__dlpack_device__", None)
    if dlpack_device is None:
        return False
    try:
        return int(dlpack_device()[0]) in (_KDL_CUDA, _KDL_CUDA_MANAGED)
    except Exception:
        return False


def _contiguous_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _dlpack_view(obj, stream=None):
    """(pointer, shape, dtype name, (device type, id), capsule) of a DLPack array, read from its
    (legacy, unversioned) capsule without consuming it; the capsule must stay alive while the
    memory is used (it keeps the producer's array alive). Non-contiguous arrays: ValueError."""
    try:
        capsule = obj.__dlpack__(stream=stream) if stream is not None else obj.__dlpack__()
    except TypeError:
        capsule = obj.__dlpack__()
    t = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    names = {(_DLPACK_FLOAT, 32): "float32", (_DLPACK_FLOAT, 64): "float64",
             (_DLPACK_INT, 64): "int64"}
    dtype = names.get((code, bits)) if lanes == 1 else None
    if dtype is None:
        dtype = f"DLPack type code {code}, {bits} bits, {lanes} lanes"
    if t.strides:
        itemsize = bits // 8
        strides = tuple(int(t.strides[i]) * itemsize for i in range(t.ndim))
        if any(n > 1 and s != c for n, s, c in
               zip(shape, strides, _contiguous_strides(shape, itemsize))):
            raise ValueError("a non-contiguous DLPack array (make it contiguous first)")
    pointer = (t.data or 0) + int(t.byte_offset)
    return pointer, shape, dtype, (int(t.device.device_type), int(t.device.device_id)), capsule


def _device_of(pointer):
    return _require().device_of(pointer)


def describe(obj, name, keep):
    """The descriptor (pointer, shape, dtype name, device) rnncore._cuda takes, for a device
    array; `keep` collects what must stay alive during the call. Errors name the argument."""
    if getattr(obj, "requires_grad", False) and hasattr(obj, "detach"):
        obj = obj.detach()  # torch refuses the interface of a tensor that requires grad
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        cai = None
    if cai is not None:
        shape = tuple(int(n) for n in cai["shape"])
        typestr = cai["typestr"]
        dtype = _DTYPES.get(typestr, typestr)
        itemsize = int(typestr[2:]) if typestr[2:].isdigit() else 0
        strides = cai.get("strides")
        if strides is not None and any(
                n > 1 and s != c for n, s, c in
                zip(shape, strides, _contiguous_strides(shape, itemsize))):
            raise ValueError(f"{name} must be C-contiguous (strides {tuple(strides)} for shape "
                             f"{shape})")
        pointer = int(cai["data"][0] or 0)
        device = _device_of(pointer) if pointer else _null_pointer_device(obj)
        keep.append(obj)
        return pointer, shape, dtype, device
    if getattr(obj, "__dlpack_device__", None) is not None:
        try:
            pointer, shape, dtype, (kind, index), capsule = _dlpack_view(obj)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if kind not in (_KDL_CUDA, _KDL_CUDA_MANAGED):
            raise ValueError(f"{name} must be in CUDA device memory, got DLPack device type "
                             f"{kind}")
        keep.extend((obj, capsule))
        return pointer, shape, dtype, index
    raise TypeError(f"{name} must be a CUDA device array (__cuda_array_interface__ or DLPack), "
                    f"got {type(obj).__name__}")


def _null_pointer_device(obj):
    """An empty array may have a null pointer: its device from the library's own attribute."""
    device = getattr(obj, "device", None)
    index = getattr(device, "index", None)
    if index is None:
        index = getattr(device, "id", None)
    return int(index) if index is not None else 0


# ---- the array library of the caller ------------------------------------------------------------

class _Library:
    """Allocation and a few views in the input's own array library (torch or CuPy)."""

    def __init__(self, like):
        module = type(like).__module__.split(".")[0]
        if module == "torch":
            import torch  # optional: torch
            self.kind, self.lib, self.device = "torch", torch, like.device
            self._dtypes = {"float32": torch.float32, "float64": torch.float64}
        elif module == "cupy":
            import cupy  # optional: CuPy
            self.kind, self.lib, self.device = "cupy", cupy, like.device
            self._dtypes = {"float32": np.float32, "float64": np.float64}
        else:
            raise TypeError(
                f"outputs can be allocated for torch CUDA tensors and CuPy arrays, got "
                f"{type(like).__module__}.{type(like).__name__}; pass one of those")

    def empty(self, shape, dtype):
        if self.kind == "torch":
            return self.lib.empty(shape, dtype=self._dtypes[dtype], device=self.device)
        with self.device:
            return self.lib.empty(shape, dtype=self._dtypes[dtype])

    def zeros(self, shape, dtype):
        if self.kind == "torch":
            return self.lib.zeros(shape, dtype=self._dtypes[dtype], device=self.device)
        with self.device:
            return self.lib.zeros(shape, dtype=self._dtypes[dtype])

    def stream(self):
        """The handle of the library's current stream on the device (0: the legacy default)."""
        if self.kind == "torch":
            return int(self.lib.cuda.current_stream(self.device).cuda_stream)
        with self.device:
            return int(self.lib.cuda.get_current_stream().ptr)

    def contiguous(self, a):
        if self.kind == "torch":
            return a.contiguous()
        return self.lib.ascontiguousarray(a)

    def astype(self, a, dtype):
        if self.kind == "torch":
            return a.to(self._dtypes[dtype])
        return a.astype(self._dtypes[dtype])

    def swap01(self, a):
        """(T, B, F) <-> (B, T, F), contiguous."""
        if self.kind == "torch":
            return a.transpose(0, 1).contiguous()
        return self.lib.ascontiguousarray(a.transpose(1, 0, 2))

    def to_host(self, a):
        if self.kind == "torch":
            return a.detach().cpu().numpy()
        return self.lib.asnumpy(a)

    # The array namespace of a module call on device arrays (numpy's is the host's, see
    # rnncore.nn.recurrent): arguments converted, lengths read on the host.
    def array(self, name, value, dtype):
        """A device array argument in dtype, contiguous (one copy at most)."""
        if not is_device_array(value):
            raise ValueError(f"{name} must be a CUDA device array like x, got "
                             f"{type(value).__name__}")
        found = describe_loose(value, name, [])[2]
        if found not in ("float32", "float64"):
            raise TypeError(f"{name} must be a float32 or float64 array, got {found}")
        if found != _dtype_name(dtype):
            value = self.astype(value, _dtype_name(dtype))
        return self.contiguous(value)

    def host(self, a):
        """a on the host if it is a device array (lengths are read there), else a itself."""
        return self.to_host(a) if is_device_array(a) else a


def _array_library(device):
    """The library that holds a module's parameters after .to(device): torch, else CuPy."""
    try:
        import torch  # optional: torch
        if torch.cuda.is_available():
            return "torch", torch
    except ImportError:
        pass
    try:
        import cupy  # optional: CuPy
        return "cupy", cupy
    except ImportError:
        pass
    raise RuntimeError(f"moving a module to {device!r} needs torch (with CUDA) or CuPy to hold "
                       "its device arrays; neither is usable here")


def _dtype_name(dtype):
    return np.dtype(dtype).name


# ---- the stack ----------------------------------------------------------------------------------

class CudaStack:
    """rnncore._cuda.Stack with rnncore._core.Stack's calling convention, on device arrays:
    forward(x, params, h0, c0, lengths, training, dropout, seed) -> (y, h_n, c_n) and
    backward(dy, params, grads, dh_n, dc_n, grad_norms) -> (dx, dh0, dc0), adding into grads
    (grad_norms=True: NotImplementedError, the CPU path only records them). Outputs are
    allocated like x (torch or CuPy, its device), the work queued on that library's current
    stream. lengths may be a host or a device array (it is read on the host)."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype=np.float32):
        self._stack = _require().Stack(cell, input_size, hidden_size, num_layers, bidirectional,
                                       dtype)
        self.states = _registry.info(cell).states
        self.directions = 2 if bidirectional else 1
        self.num_entries = num_layers * self.directions
        self.hidden_size = hidden_size
        self.input_size = input_size
        self.dtype = _dtype_name(dtype)
        self.grad_norms = None
        self._library = None

    @property
    def ready(self):
        return self._stack.ready

    @property
    def nbytes(self):
        return self._stack.nbytes

    def release(self):
        self._stack.release()

    def _describe_all(self, arrays, keep):
        return {name: describe(a, f"params[{name}]", keep) for name, a in arrays.items()}

    def forward(self, x, params, h0=None, c0=None, lengths=None, training=False, dropout=0.0,
                seed=0):
        keep = []
        lib = _Library(x)
        xd = describe(x, "x", keep)
        if len(xd[1]) != 3:
            raise ValueError(f"x must be 3-D (T, B, input_size), got shape {xd[1]}")
        T, B = xd[1][0], xd[1][1]
        LD, H = self.num_entries, self.hidden_size
        y = lib.empty((T, B, self.directions * H), self.dtype)
        h_n = lib.empty((LD, B, H), self.dtype)
        c_n = lib.empty((LD, B, H), self.dtype) if self.states == 2 else None
        if lengths is not None and is_device_array(lengths):
            lengths = lib.to_host(lengths)
        if lengths is not None:
            lengths = native(np.asarray(lengths), np.int64)
        self._stack.forward(
            xd, self._describe_all(params, keep),
            None if h0 is None else describe(h0, "h0", keep),
            None if c0 is None or self.states == 1 else describe(c0, "c0", keep),
            lengths, describe(y, "y", keep), describe(h_n, "h_n", keep),
            None if c_n is None else describe(c_n, "c_n", keep),
            bool(training), float(dropout), int(seed), lib.stream())
        if training:
            self._library = lib
        return y, h_n, c_n

    def backward(self, dy, params, grads, dh_n=None, dc_n=None, grad_norms=False):
        if grad_norms:
            raise NotImplementedError("gradient-norm recording (record_grad_norms) runs on the "
                                      "CPU path only; the CUDA path does not record them")
        pending = self._stack.pending
        if pending is None or self._library is None:
            raise RuntimeError(
                "backward() needs the workspace of a training-mode forward; it was never filled "
                "or was already consumed by an earlier backward()")
        T, B = pending
        lib = self._library
        keep = []
        LD, H = self.num_entries, self.hidden_size
        dx = lib.empty((T, B, self.input_size), self.dtype)
        dh0 = lib.empty((LD, B, H), self.dtype)
        dc0 = lib.empty((LD, B, H), self.dtype) if self.states == 2 else None
        self._stack.backward(
            self._describe_all(params, keep), self._describe_all(grads, keep),
            None if dy is None else describe(dy, "dy", keep),
            None if dh_n is None else describe(dh_n, "dh_n", keep),
            None if dc_n is None or self.states == 1 else describe(dc_n, "dc_n", keep),
            describe(dx, "dx", keep), describe(dh0, "dh0", keep),
            None if dc0 is None else describe(dc0, "dc0", keep), lib.stream())
        self._library = None
        return dx, dh0, dc0


# ---- the numpy modules on device arrays (their backend, chosen per call in rnncore.nn.recurrent) ---

def device_arrays(x, device, owner):
    """The array namespace of a module call whose x is a device array, or whose module is on a
    device: x's own library (torch or CuPy, see _Library) after checking that x and the module's
    parameters (on cuda:`device`; None: host arrays) are on the same device. owner: the
    module's class name, for messages."""
    if device is not None and not is_device_array(x):
        raise ValueError(
            f"{owner} is on cuda:{device} (moved with .to()), so x must be a CUDA device array "
            f"there, got {type(x).__name__}; move the module back with .cpu() to run on the host")
    x_device = describe_loose(x, "x", [])[3]
    if device is None:
        raise ValueError(
            f"x is a CUDA device array but {owner}'s parameters are host (numpy) arrays; move "
            f"the module first with .to('cuda:{max(x_device, 0)}')")
    lib = _Library(x)
    if x_device >= 0 and x_device != device:
        raise ValueError(f"x is on cuda:{x_device} but the module's parameters on cuda:{device}")
    return lib


def describe_loose(obj, name, keep):
    """describe() that accepts non-contiguous arrays (for checks before a contiguous copy)."""
    try:
        return describe(obj, name, keep)
    except ValueError as e:
        cai = getattr(obj, "__cuda_array_interface__", None)
        if "contiguous" not in str(e) or cai is None:
            raise
        return (int(cai["data"][0]), tuple(cai["shape"]), _DTYPES.get(cai["typestr"]), -1)


def parse_device(device):
    """'cpu' -> None; 'cuda', 'cuda:N', torch.device('cuda', N), an int N -> N."""
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    text = str(device)
    if text == "cpu":
        return None
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or an int, got {device!r}")


def move_arrays(tables, index, dtype, owner):
    """Replaces every array of `tables` (dicts name -> array, e.g. a module's params and grads)
    by a copy in dtype on cuda:`index` (device arrays of torch with CUDA, else CuPy), or on the
    host (numpy) for index None. owner: the module's class name, for messages."""
    if index is None:
        for table in tables:
            for name, a in table.items():
                if is_device_array(a):
                    table[name] = np.ascontiguousarray(_Library(a).to_host(a), dtype=dtype)
        return
    if not cuda_available():
        raise RuntimeError(f"cannot move {owner} to cuda:{index}: {cuda_status()}")
    for table in tables:
        for name, a in table.items():
            host = a if isinstance(a, np.ndarray) else _Library(a).to_host(a)
            table[name] = _device_array(np.ascontiguousarray(host, dtype=dtype), index)


def _device_array(host, index):
    """A copy of a host array on device `index`, in torch (with CUDA) or else CuPy."""
    kind, lib = _array_library(f"cuda:{index}")
    if kind == "torch":
        return lib.from_numpy(host).to(f"cuda:{index}")
    with lib.cuda.Device(index):
        return lib.asarray(host)
