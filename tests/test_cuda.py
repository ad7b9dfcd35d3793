"""The CUDA path (rnncore._cuda, rnncore.cuda; docs/cuda.md).

Two kinds of tests. Those of the first half need no GPU and always run where their module is
there: the build detection, `import rnncore` without CUDA, the device-array descriptors
(__cuda_array_interface__ and DLPack), the argument checks of rnncore._cuda (made before any
CUDA call), the dispatch of the modules and the dropout mask's host instantiation. Those of the
second half run the GPU path against the CPU path and torch.nn (cuDNN) and skip, saying why,
unless rnncore.cuda.cuda_available() and torch has CUDA. They are written to run as they are on
a machine with a GPU; this project's machines have nvcc but no GPU, so there they skip.
"""
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnncore
from conftest import UNDER_ASAN
from rnncore._ext import core as _core
from rnncore.nn import registry as _registry
from rnncore import cuda as rcuda

ROOT = Path(__file__).resolve().parents[1]
CELLS = list(_registry.CELLS)  # the registry's cells (cells.hpp), read from the core


def _find_nvcc():
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _cuda_module():
    try:
        from rnncore import _cuda
    except ImportError:
        pytest.skip("rnncore was built without its CUDA module (no nvcc at build time)")
    return _cuda


# ---- without a GPU: build, import, descriptors, checks, dispatch --------------------------------

def test_the_cuda_module_is_built_when_nvcc_is_found():
    # CMake builds rnncore._cuda whenever it finds a CUDA compiler (RNNCORE_CUDA=AUTO): where
    # nvcc is on this machine, the installed package must have the module.
    if _find_nvcc() is None:
        pytest.skip("nvcc not found, so the build rightly left rnncore._cuda out")
    if os.environ.get("RNNCORE_CUDA", "AUTO").upper() == "OFF":
        pytest.skip("RNNCORE_CUDA=OFF in the environment: the build was told to leave it out")
    from rnncore import _cuda
    assert _cuda.runtime_version().split(".")[0].isdigit()
    assert isinstance(_cuda.device_count(), int)


def test_import_rnncore_never_needs_cuda():
    # A process where rnncore._cuda cannot be imported: rnncore works, the GPU path says why not.
    code = (
        "import sys; sys.modules['rnncore._cuda'] = None\n"
        "import numpy as np, rnncore\n"
        "y, h = rnncore.GRU(3, 4)(np.zeros((2, 1, 3), np.float32))\n"
        "assert rnncore.cuda.cuda_available() is False\n"
        "print(rnncore.cuda.cuda_status())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "built without its CUDA module" in out.stdout


def test_status_is_one_line_and_agrees_with_availability():
    status = rcuda.cuda_status()
    assert isinstance(status, str) and status and "\n" not in status.strip()
    assert isinstance(rcuda.cuda_available(), bool)
    if not rcuda.cuda_available():
        assert "device" in status or "cuBLAS" in status or "built without" in status


@pytest.mark.parametrize("mode", ["AUTO", "ON"])
def test_cmake_without_a_cuda_compiler(tmp_path, mode):
    # AUTO: one line saying the CUDA build was skipped and why; ON: a clear configure error.
    # (Configured for the benchmarks rather than the Python module, which would need pybind11's
    # CMake files; the CUDA decision comes before either is looked for.)
    cmake = shutil.which("cmake")
    if cmake is None or not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("needs cmake and a source checkout")
    env = dict(os.environ, CUDACXX=str(tmp_path / "no-nvcc-here"))
    out = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DRNNCORE_CUDA={mode}",
         "-DRNNCORE_BUILD_BENCH=ON", "-DRNNCORE_BUILD_PYTHON=OFF", "-DRNNCORE_CUDA_CHECK=OFF",
         "-DRNNCORE_INSTALL=OFF", f"-DPython_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, env=env, timeout=300)
    text = out.stdout + out.stderr
    if "rnncore: Eigen" not in text:
        pytest.skip("CMake found no Eigen headers here (pip install cmeel-eigen)")
    if mode == "AUTO":
        skipped = [line for line in text.splitlines() if "CUDA build skipped" in line]
        assert len(skipped) == 1 and "no CUDA compiler found" in skipped[0], text
        assert "rnncore._cuda with" not in text
    else:
        assert out.returncode != 0
        assert "RNNCORE_CUDA=ON but no CUDA compiler found" in text, text


def test_dlpack_descriptor_of_a_host_array():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    pointer, shape, dtype, device, capsule = rcuda._dlpack_view(a)
    assert (pointer, shape, dtype, device) == (a.ctypes.data, (3, 4), "float64", (1, 0))
    assert rcuda._dlpack_view(np.zeros(5, np.int64))[2] == "int64"
    with pytest.raises(ValueError, match="non-contiguous"):
        rcuda._dlpack_view(a[:, ::2])
    with pytest.raises(ValueError, match="x must be in CUDA device memory"):
        rcuda.describe(a, "x", [])


class FakeDeviceArray:
    """Something with __cuda_array_interface__ (memory it does not have: for checks only)."""

    def __init__(self, shape, typestr="<f4", pointer=1 << 20, strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (pointer, False), "strides": strides,
                                         "version": 3}


class FakeDLPack:
    def __init__(self, kind):
        self.kind = kind

    def __dlpack_device__(self):
        return (self.kind, 0)


def test_which_arrays_are_device_arrays():
    assert not rcuda.is_device_array(np.zeros(3))
    assert not rcuda.is_device_array(None) and not rcuda.is_device_array([1.0])
    assert rcuda.is_device_array(FakeDeviceArray((2, 3)))
    assert rcuda.is_device_array(FakeDLPack(2)) and not rcuda.is_device_array(FakeDLPack(1))
    torch = pytest.importorskip("torch")
    assert not rcuda.is_device_array(torch.zeros(3))


def test_cuda_array_interface_descriptor(monkeypatch):
    monkeypatch.setattr(rcuda, "_device_of", lambda pointer: 0)
    keep = []
    d = rcuda.describe(FakeDeviceArray((2, 3), "<f8", pointer=4096), "h0", keep)
    assert d == (4096, (2, 3), "float64", 0) and len(keep) == 1
    # C-contiguous strides given explicitly are fine; others are refused by name.
    assert rcuda.describe(FakeDeviceArray((2, 3), strides=(12, 4)), "x", [])[1] == (2, 3)
    with pytest.raises(ValueError, match=r"x must be C-contiguous \(strides \(4, 8\)"):
        rcuda.describe(FakeDeviceArray((2, 3), strides=(4, 8)), "x", [])
    with pytest.raises(TypeError, match="x must be a CUDA device array.*got list"):
        rcuda.describe([1.0], "x", [])


def _descriptor(shape, dtype="float32", device=0, pointer=1 << 20):
    return (pointer, tuple(shape), dtype, device)


def _stack_arguments(cell, I, H, T, B, dtype="float32"):
    info = _registry.info(cell)
    G = info.gates
    params = {"weight_ih_l0": _descriptor((G * H, I), dtype),
              "weight_hh_l0": _descriptor((G * H, H), dtype),
              "bias_ih_l0": _descriptor((G * H,), dtype),
              "bias_hh_l0": _descriptor((G * H,), dtype)}
    if info.peephole_rows:
        params["weight_peephole_l0"] = _descriptor((3, H), dtype)
    c = _descriptor((1, B, H), dtype) if info.states == 2 else None
    return dict(x=_descriptor((T, B, I), dtype), params=params, h0=None, c0=None, lengths=None,
                y=_descriptor((T, B, H), dtype), h_n=_descriptor((1, B, H), dtype), c_n=c,
                training=True, dropout=0.0, seed=0, stream=0)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_stack_checks_arguments_before_any_cuda_call(cell):
    _cuda = _cuda_module()
    I, H, T, B = 3, 4, 5, 2
    stack = _cuda.Stack(cell, I, H, 1, False, np.float32)
    good = _stack_arguments(cell, I, H, T, B)

    def call(**changes):
        stack.forward(**{**good, **changes})

    with pytest.raises(ValueError, match=r"params\[weight_ih_l0\] must have shape \(\d+, 3\), "
                                         r"got \(\d+, 4\)"):
        params = dict(good["params"], weight_ih_l0=_descriptor((_registry.info(cell).gates * H, 4)))
        call(params=params)
    with pytest.raises(TypeError, match="h0 must have dtype float32, got float64"):
        call(h0=_descriptor((1, B, H), "float64"))
    with pytest.raises(ValueError, match=r"y must be on cuda:0 \(where x is\), got cuda:1"):
        call(y=_descriptor((T, B, H), device=1))
    with pytest.raises(ValueError, match="x must be a CUDA device array, got host memory"):
        call(x=_descriptor((T, B, I), device=-1))
    with pytest.raises(ValueError, match=r"lengths\[1\] must be in \[0, 5\], got 6"):
        call(lengths=np.array([5, 6]))
    with pytest.raises(KeyError, match="has no 'weight_hh_l0'"):
        call(params={k: v for k, v in good["params"].items() if k != "weight_hh_l0"})
    with pytest.raises(RuntimeError, match="training-mode forward"):
        stack.backward(params=good["params"], grads=good["params"], dy=None, dh_n=None,
                       dc_n=None, dx=None, dh0=None, dc0=None, stream=0)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        _cuda.Stack(cell, I, H, 1, False, np.int32)
    assert not stack.ready and stack.pending is None and stack.nbytes == 0


def test_a_valid_call_without_a_device_raises_instead_of_crashing():
    _cuda = _cuda_module()
    if rcuda.cuda_available():
        pytest.skip("a device is present: this checks the behaviour without one")
    stack = _cuda.Stack("lstm", 3, 4, 1, False, np.float32)
    with pytest.raises(RuntimeError, match="rnncore CUDA: .*(cuBLAS|cuda|CUDA)"):
        stack.forward(**_stack_arguments("lstm", 3, 4, 5, 2))
    assert not stack.ready


def test_dropout_mask_matches_the_cpu_path():
    # The device kernel's mask function, run on the host, against the CPU path's masks: a
    # 2-layer ReLU RNN whose layers pass positive inputs through unchanged (identity W_ih, zero
    # W_hh and biases) returns dropout(x) of layer 0, so y / x is the CPU mask.
    _cuda = _cuda_module()
    T, B, H, p, seed = 4, 3, 5, 0.4, 1234
    stack = _core.Stack("rnn_relu", H, H, 2, False, np.float64)
    eye, zero = np.eye(H), np.zeros((H, H))
    params = {f"{k}_l{l}": v for l in range(2) for k, v in
              (("weight_ih", eye), ("weight_hh", zero), ("bias_ih", np.zeros(H)),
               ("bias_hh", np.zeros(H)))}
    x = np.random.default_rng(0).uniform(1.0, 2.0, (T, B, H))
    y, _, _ = stack.forward(x, params, training=True, dropout=p, seed=seed)
    cpu_mask = (y / x).ravel()
    gpu_mask = np.array([_cuda.dropout_scale(p, seed, 0, e) for e in range(T * B * H)])
    np.testing.assert_allclose(gpu_mask, cpu_mask, rtol=1e-12)
    assert 0 < np.count_nonzero(gpu_mask == 0) < gpu_mask.size


def test_modules_dispatch_device_arrays_to_the_cuda_path(monkeypatch):
    m = rnncore.LSTM(3, 4)
    # A device input for a module still on the host: told to move the module, not copied.
    monkeypatch.setattr(rcuda, "_device_of", lambda pointer: 0)
    with pytest.raises(ValueError, match=r"parameters are host \(numpy\) arrays; move the module "
                                         r"first with \.to\('cuda:0'\)"):
        m(FakeDeviceArray((5, 2, 3)))
    assert m._tape is None and m._cuda_stack is None  # nothing pending, no device stack made
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or an int"):
        m.to("tpu")
    if not rcuda.cuda_available():
        with pytest.raises(RuntimeError, match="cannot move LSTM to cuda:0"):
            m.to("cuda")
    assert isinstance(m.params["weight_ih_l0"], np.ndarray)
    assert m.to("cpu") is m  # host to host: nothing moves
    y, (h, c) = m(np.zeros((5, 2, 3), np.float32))
    m.backward(np.ones_like(y))  # the CPU path is untouched by the hooks
    m.zero_grad()
    assert all(not g.any() for g in m.grads.values())


# ---- on a GPU: parity with the CPU path and with torch.nn (cuDNN) -------------------------------

def _gpu_torch():
    if UNDER_ASAN:
        pytest.skip("not under AddressSanitizer: the CUDA driver maps device memory where ASan "
                    "keeps its shadow (it would need ASAN_OPTIONS=protect_shadow_gap=0)")
    if not rcuda.cuda_available():
        pytest.skip(f"no GPU path here: {rcuda.cuda_status()}")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here (the GPU tests use torch CUDA tensors)")
    return torch


def _module(cell, dtype, **kw):
    args = dict(num_layers=2, dtype=dtype, seed=0)
    args.update(kw)
    return _registry.make_module(cell, 3, 5, **args)


def _torch_pair(torch, cell, **kw):
    """(torch.nn twin, rnncore.torch module) of a registry cell, or a skip when torch has none."""
    import rnncore.torch as rt
    from rnncore.testing.torch_twin import torch_twin
    twin = torch_twin(cell)
    if twin is None:
        pytest.skip(f"torch.nn has no module computing {cell}")
    cls, options = _registry.module_variant(cell)
    theirs = twin[0](3, 6, **twin[1], **kw)
    ours = getattr(rt, cls.__name__)(3, 6, **options, **kw)
    return theirs, ours


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def _close(torch, device_value, host_value, dtype, what):
    if host_value is None:
        assert device_value is None, what
        return
    np.testing.assert_allclose(device_value.detach().cpu().numpy(), host_value, **_tol(dtype),
                               err_msg=what)


def _states(torch, cell, rng, L, B, H, dtype):
    h0 = rng.standard_normal((L, B, H)).astype(dtype)
    if _registry.info(cell).states == 2:
        return (h0, rng.standard_normal((L, B, H)).astype(dtype))
    return h0


def _to_device(torch, value):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(_to_device(torch, v) for v in value)
    return torch.from_numpy(np.ascontiguousarray(value)).cuda()


def _unpack(state):
    return state if isinstance(state, tuple) else (state, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_matches_the_cpu_path(cell, bidirectional, dtype):
    # Forward (training and inference), BPTT (dx, dh0, every parameter gradient), with initial
    # states and variable lengths (one sequence of length 0, one of full length).
    torch = _gpu_torch()
    T, B, H, L = 7, 4, 5, 2
    host = _module(cell, dtype, bidirectional=bidirectional)
    dev = copy.deepcopy(host).to("cuda")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    D = 2 if bidirectional else 1
    state = _states(torch, cell, rng, L * D, B, H, dtype)
    lengths = np.array([7, 3, 0, 5])
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    for lens in (None, lengths):
        y, hs = host(x, state, lengths=lens)
        dx, dstate = host.backward(dy)
        yd, hsd = dev(_to_device(torch, x), _to_device(torch, state), lengths=lens)
        dxd, dstated = dev.backward(_to_device(torch, dy))
        what = f"{cell} bidirectional={bidirectional} lengths={lens is not None}"
        _close(torch, yd, y, dtype, "y " + what)
        for a, b in zip(_unpack(hsd), _unpack(hs)):
            _close(torch, a, b, dtype, "final state " + what)
        _close(torch, dxd, dx, dtype, "dx " + what)
        for a, b in zip(_unpack(dstated), _unpack(dstate)):
            _close(torch, a, b, dtype, "initial-state gradient " + what)
        for name in host.grads:
            _close(torch, dev.grads[name], host.grads[name], dtype, f"grad {name} " + what)
        host.zero_grad()
        dev.zero_grad()
        host.eval()
        dev.eval()
        y, hs = host(x, state, lengths=lens)
        yd, hsd = dev(_to_device(torch, x), _to_device(torch, state), lengths=lens)
        _close(torch, yd, y, dtype, "inference y " + what)
        host.train()
        dev.train()


@pytest.mark.parametrize("cell", CELLS)
def test_gpu_dropout_batch_first_and_unbatched_match_the_cpu_path(cell):
    torch = _gpu_torch()
    dtype = np.float64
    host = _module(cell, dtype, dropout=0.5, batch_first=True, seed=3)
    dev = copy.deepcopy(host).to("cuda")  # the same rng state: the same dropout seeds
    x = np.random.default_rng(2).standard_normal((4, 6, 3))
    y, _ = host(x)
    yd, _ = dev(_to_device(torch, x))
    _close(torch, yd, y, dtype, "batch_first with dropout")
    dy = np.ones_like(y)
    dx, _ = host.backward(dy)
    dxd, _ = dev.backward(_to_device(torch, dy))
    _close(torch, dxd, dx, dtype, "dx with dropout")
    host.eval()
    dev.eval()
    y, _ = host(x[0])
    yd, _ = dev(_to_device(torch, x[0]))
    _close(torch, yd, y, dtype, "unbatched")


def test_gpu_empty_batches_and_sequences():
    torch = _gpu_torch()
    host = _module("lstm", np.float64)
    dev = copy.deepcopy(host).to("cuda")
    for shape in ((0, 3, 3), (4, 0, 3)):
        x = np.zeros(shape)
        y, (h, c) = host(x)
        yd, (hd, cd) = dev(_to_device(torch, x))
        assert tuple(yd.shape) == y.shape and tuple(hd.shape) == h.shape
        _close(torch, hd, h, np.float64, f"h_n for x of shape {shape}")
        dx, _ = host.backward(np.zeros_like(y))
        dxd, _ = dev.backward(_to_device(torch, np.zeros_like(y)))
        assert tuple(dxd.shape) == dx.shape


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_rnncore_torch_matches_torch_nn_on_cuda(cell, bidirectional, monkeypatch):
    # rnncore.torch on CUDA tensors against torch.nn on the same GPU (cuDNN), from the same
    # weights: outputs, final states, and the gradients of x and every parameter.
    torch = _gpu_torch()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN in true float32
    torch.manual_seed(0)
    theirs, ours = _torch_pair(torch, cell, num_layers=2, bidirectional=bidirectional)
    theirs, ours = theirs.cuda(), ours.cuda()
    ours.load_state_dict(theirs.state_dict())
    packed = torch.nn.utils.rnn.pack_padded_sequence
    x = torch.randn(9, 5, 3, device="cuda")
    lengths = torch.tensor([9, 8, 5, 2, 1])
    outs, grads = [], []
    for m in (theirs, ours):
        xi = x.clone().requires_grad_()
        y, state = m(packed(xi, lengths))
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y)
        states = state if isinstance(state, tuple) else (state,)
        (y.square().sum() + sum(s.sum() for s in states)).backward()
        outs.append([y] + list(states))
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(outs[1] + grads[1], outs[0] + grads[0]):
        torch.testing.assert_close(a, b, rtol=5e-4, atol=5e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_gpu_gradients_pass_a_float64_gradient_check(cell):
    # Finite differences through rnncore.torch on CUDA float64 tensors (torch.autograd.gradcheck),
    # with variable lengths and both directions.
    torch = _gpu_torch()
    import rnncore.torch as rt
    cls, options = _registry.module_variant(cell)
    m = getattr(rt, cls.__name__)(2, 3, bidirectional=True, dtype=torch.float64, **options).cuda()
    x = torch.randn(4, 2, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    lengths = torch.tensor([4, 2])

    def f(x, *weights):
        params = dict(zip(m._flat_weights_names, weights))
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
        y, _ = torch.func.functional_call(m, params, (seq,))
        return y.data

    weights = [w.detach().clone().requires_grad_() for w in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *weights), eps=1e-6, atol=1e-6)


def test_gpu_repeated_training_steps_reuse_memory_and_release_it():
    torch = _gpu_torch()
    dev = _module("gru", np.float32).to("cuda")
    x = _to_device(torch, np.ones((6, 3, 3), np.float32))
    for _ in range(3):
        y, _ = dev(x)
        dev.backward(torch.ones_like(y))
    held = dev._cuda_stack.nbytes
    assert held > 0
    dev.eval()
    assert dev._cuda_stack.nbytes == 0
    dev.cpu()
    assert isinstance(dev.params["weight_ih_l0"], np.ndarray)
    y, _ = dev(np.ones((6, 3, 3), np.float32))  # back on the host path
    assert isinstance(y, np.ndarray)


# ---- the Python side of the GPU path, end to end, on a stand-in device --------------------------

class HostBackedStack:
    """Stands in for rnncore._cuda.Stack: takes the same descriptors, but of host memory, and
    computes with rnncore._core.Stack. With it the whole Python side (modules' dispatch, .to(),
    batch_first, unbatched input, lengths, states, the tape, gradients, CudaStack, the
    descriptors) runs without a GPU and is compared with the plain CPU module."""

    def __init__(self, cell, I, H, L, bidirectional, dtype):
        self.core = _core.Stack(cell, I, H, L, bidirectional, dtype)
        self.pending = None

    @staticmethod
    def view(d):
        if d is None:
            return None
        pointer, shape, dtype, device = d
        assert device == 0, d
        n = int(np.prod(shape))
        ctype = {"float32": np.float32, "float64": np.float64, "int64": np.int64}[dtype]
        buf = (np.ctypeslib.as_ctypes_type(ctype) * max(n, 1)).from_address(pointer)
        return np.ctypeslib.as_array(buf)[:n].reshape(shape)

    @property
    def ready(self):
        return self.pending is not None

    nbytes = 0

    def release(self):
        self.core.release()
        self.pending = None

    def forward(self, x, params, h0, c0, lengths, y, h_n, c_n, training, dropout, seed, stream):
        v = self.view
        out = self.core.forward(v(x), {k: v(d) for k, d in params.items()}, h0=v(h0), c0=v(c0),
                                lengths=lengths, training=training, dropout=dropout, seed=seed)
        for dst, src in zip((v(y), v(h_n), v(c_n)), out):
            if dst is not None:
                dst[...] = src
        if training:
            self.pending = x[1][:2]

    def backward(self, params, grads, dy, dh_n, dc_n, dx, dh0, dc0, stream):
        v = self.view
        out = self.core.backward(v(dy), {k: v(d) for k, d in params.items()},
                                 {k: v(d) for k, d in grads.items()}, dh_n=v(dh_n),
                                 dc_n=v(dc_n))
        for dst, src in zip((v(dx), v(dh0), v(dc0)), out):
            if dst is not None:
                dst[...] = src
        self.pending = None


@pytest.fixture
def host_backed_device(monkeypatch):
    """torch CPU tensors play device arrays on 'cuda:0', computed by HostBackedStack."""
    torch = pytest.importorskip("torch")

    class Module:
        Stack = HostBackedStack

    def describe(obj, name, keep):
        if getattr(obj, "requires_grad", False):
            obj = obj.detach()
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"{name} must be a CUDA device array, got {type(obj).__name__}")
        if not obj.is_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
        keep.append(obj)
        return obj.data_ptr(), tuple(obj.shape), str(obj.dtype).replace("torch.", ""), 0

    monkeypatch.setattr(rcuda, "_require", lambda: Module)
    monkeypatch.setattr(rcuda, "cuda_available", lambda: True)
    monkeypatch.setattr(rcuda, "is_device_array", lambda a: isinstance(a, torch.Tensor))
    monkeypatch.setattr(rcuda, "describe", describe)
    monkeypatch.setattr(rcuda, "_device_array", lambda host, index: torch.from_numpy(host.copy()))
    monkeypatch.setattr(rcuda._Library, "stream", lambda self: 0)
    return torch


@pytest.mark.parametrize("cell", CELLS)
def test_python_side_of_the_gpu_path_matches_the_cpu_module(cell, host_backed_device):
    torch = host_backed_device
    dtype = np.float64
    host = _module(cell, dtype, bidirectional=True, batch_first=True, dropout=0.3, seed=4)
    dev = copy.deepcopy(host).to("cuda")
    assert all(isinstance(p, torch.Tensor) for p in dev.params.values())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 3))  # batch_first: B = 4, T = 6
    state = _states(torch, cell, rng, 4, 4, 5, dtype)
    lengths = np.array([6, 0, 3, 5])
    dy = rng.standard_normal((4, 6, 10))
    dev_lengths = torch.from_numpy(lengths)  # lengths may be a device array too
    for lens, dlens in ((None, None), (lengths, dev_lengths)):
        y, hs = host(x, state, lengths=lens)
        yd, hsd = dev(torch.from_numpy(x), _to_cpu_tensors(torch, state), lengths=dlens)
        dx, ds = host.backward(dy)
        dxd, dsd = dev.backward(torch.from_numpy(dy))
        for a, b in [(yd, y), (dxd, dx)] + list(zip(_unpack(hsd), _unpack(hs))) + \
                list(zip(_unpack(dsd), _unpack(ds))) + \
                [(dev.grads[k], host.grads[k]) for k in host.grads]:
            _close(torch, a, b, dtype, cell)
    with pytest.raises(RuntimeError, match="needs a preceding training-mode forward"):
        dev.backward(torch.from_numpy(dy))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 6, 10\)"):
        dev(torch.from_numpy(x))
        dev.backward(torch.zeros(6, 4, 10, dtype=torch.float64))
    dev.backward(torch.from_numpy(dy))  # the bad dy left the forward in place
    with pytest.raises(ValueError, match="so x must be a CUDA device array there, got ndarray"):
        dev(x)
    dev.zero_grad()
    assert all(not g.any() for g in dev.grads.values())
    dev.eval()
    host.eval()
    x32 = x[0].astype(np.float32)  # unbatched, inference, another float dtype (converted)
    y, _ = host(x32)
    yd, _ = dev(torch.from_numpy(x32))
    _close(torch, yd, y, dtype, "unbatched " + cell)
    dev.cpu()
    assert all(isinstance(p, np.ndarray) for p in dev.params.values())
    np.testing.assert_array_equal(dev(x)[0], host(x)[0])


def _to_cpu_tensors(torch, value):
    if isinstance(value, tuple):
        return tuple(torch.from_numpy(v) for v in value)
    return torch.from_numpy(value)
