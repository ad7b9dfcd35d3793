"""precision="bf16" (rnncore.precision): the packed GEMMs take bf16 operands and accumulate in
float32; states, pointwise math and dW stay float32. Accuracy bounds (not speed) against the
float64 result, next to the float32 path's; the float32 default unchanged; the fallback where the
CPU has no bf16 kernel."""
import os
import subprocess
import sys

import numpy as np
import pytest

import rnncore
from rnncore._ext import core as _core
from rnncore.precision import bf16_kernel, bf16_supported, check_precision
from conftest import CELLS, make_module

needs_bf16 = pytest.mark.skipif(
    not bf16_supported(),
    reason=f"no bf16 kernel on this CPU (rnncore.precision.bf16_kernel() = {bf16_kernel()!r}: "
           "needs AVX512_BF16), precision='bf16' runs float32 here")

# Relative error bounds, max |a - a_fp64| / max |a_fp64|, for the shapes below (T <= 12). Rounding
# both operands to bf16 costs up to 2^-9 relative per product; a dozen steps of recurrence grow
# that to the measured 0.08-1.0% (outputs, states) and 0.05-0.8% (dx, dh0, dW, db) on this file's
# shapes. The bounds leave 2.5-3x margin.
FORWARD_BOUND = 2.5e-2
GRADIENT_BOUND = 2.5e-2
# ReLU's derivative jumps at 0: where a pre-activation within rounding of 0 changes sign, that
# unit's whole gradient at that step flips on or off (one flip of 1365 outputs gives a 4.5% dx
# error at 7x3x17x65, measured). So rnn_relu's gradients get a looser bound.
GRADIENT_BOUND_AT_KINKS = 0.15
# float32 on the same shapes: below 1e-5; the bf16 errors must be far above that, else the
# bf16 kernel did not run.
BF16_FLOOR = 3e-4


def bf16_round(a):
    """float32 -> nearest bfloat16 (ties to even), returned as float32 (finite inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def run_stack(cell, sizes, params, dtype, precision, x, states, lengths, dy, dstates):
    """One training forward and backward through _core.Stack -> dict of every result."""
    I, H, L, bidirectional = sizes
    st = _core.Stack(cell, I, H, L, bidirectional, dtype, precision)
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    p = {k: v.astype(dtype) for k, v in params.items()}
    y, h_n, c_n = st.forward(cast(x), p, cast(states[0]), cast(states[1]), lengths, True)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dx, dh0, dc0 = st.backward(cast(dy), p, grads, cast(dstates[0]), cast(dstates[1]))
    out = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
    out.update({"d" + k: g for k, g in grads.items()})
    return {k: v for k, v in out.items() if v is not None}


def problem(cell, T, B, I, H, L=1, bidirectional=False, lengths=False, seed=0):
    rng = np.random.default_rng(seed)
    m = make_module(cell, I, H, num_layers=L, bidirectional=bidirectional, seed=seed)
    D, cell_state = (2 if bidirectional else 1), m._has_cell_state
    state = lambda: rng.standard_normal((L * D, B, H)).astype(np.float32)  # noqa: E731
    return dict(
        sizes=(I, H, L, bidirectional), params=m.params,
        x=rng.standard_normal((T, B, I)).astype(np.float32),
        states=(state(), state() if cell_state else None),
        lengths=rng.integers(0, T + 1, B).astype(np.int64) if lengths else None,
        dy=rng.standard_normal((T, B, D * H)).astype(np.float32),
        dstates=(state(), state() if cell_state else None))


def rel_errors(results, reference):
    return {k: float(np.abs(results[k] - reference[k]).max() / max(np.abs(reference[k]).max(), 1e-30))
            for k in reference if reference[k].size}


def bound_for(cell, name):
    if name in ("y", "h_n", "c_n"):
        return FORWARD_BOUND
    return GRADIENT_BOUND_AT_KINKS if cell == "rnn_relu" else GRADIENT_BOUND


SHAPES = [  # (T, B, I, H): odd sizes for the vector tails of 16 columns and of k pairs
    (7, 3, 17, 65),
    (12, 9, 33, 40),
    (5, 1, 65, 17),
]


@needs_bf16
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_accuracy_against_float64_every_cell(cell, shape):
    T, B, I, H = shape
    pr = problem(cell, T, B, I, H)
    exact = run_stack(cell, dtype=np.float64, precision="float32", **pr)
    fp32 = rel_errors(run_stack(cell, dtype=np.float32, precision="float32", **pr), exact)
    bf16 = rel_errors(run_stack(cell, dtype=np.float32, precision="bf16", **pr), exact)
    for name, err in bf16.items():
        bound = bound_for(cell, name)
        assert err < bound, f"{cell} {shape}: {name} bf16 error {err:.3g} >= {bound}"
        assert fp32[name] < 1e-4, f"{cell} {shape}: {name} float32 error {fp32[name]:.3g}"
    # The bf16 kernel did run: its rounding shows in the outputs and in dx.
    assert bf16["y"] > BF16_FLOOR and bf16["dx"] > BF16_FLOOR, (bf16, fp32)


@needs_bf16
@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before"])
def test_stacked_bidirectional_with_lengths(cell):
    # Two layers (the second projects the concatenated directions), both directions (side by
    # side on two threads), lengths with padding: the same bounds.
    pr = problem(cell, 9, 6, 19, 33, L=2, bidirectional=True, lengths=True, seed=3)
    exact = run_stack(cell, dtype=np.float64, precision="float32", **pr)
    bf16 = rel_errors(run_stack(cell, dtype=np.float32, precision="bf16", **pr), exact)
    for name, err in bf16.items():
        bound = bound_for(cell, name)
        assert err < bound, f"{name} bf16 error {err:.3g} >= {bound}"


@needs_bf16
def test_one_step_matches_bf16_emulation():
    # T = 1, tanh RNN: y = tanh(bf16(x) bf16(W_ih)^T + b_ih + bf16(h0) bf16(W_hh)^T + b_hh) with
    # float32 sums; dx = bf16(dg) bf16(W_ih) where dg = dy (1 - y^2) in float32; dW_ih = dg^T x
    # and dW_hh = dg^T h0 from the float32 (unrounded) operands. Sizes with tails on both sides.
    rng = np.random.default_rng(7)
    B, I, H = 5, 37, 33
    m = make_module("rnn_tanh", I, H, seed=2)
    p = m.params
    x = rng.standard_normal((1, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    dy = rng.standard_normal((1, B, H)).astype(np.float32)
    st = _core.Stack("rnn_tanh", I, H, 1, False, np.float32, "bf16")
    y, _, _ = st.forward(x, p, h0, None, None, True)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dx, _, _ = st.backward(dy, p, grads, None, None)

    r = lambda a: bf16_round(a).astype(np.float64)  # noqa: E731
    pre = (r(x[0]) @ r(p["weight_ih_l0"]).T + p["bias_ih_l0"] + r(h0[0]) @ r(p["weight_hh_l0"]).T
           + p["bias_hh_l0"])
    np.testing.assert_allclose(y[0], np.tanh(pre), rtol=1e-5, atol=1e-6)
    dg = (dy[0] * (1 - y[0].astype(np.float32) ** 2)).astype(np.float32)
    np.testing.assert_allclose(dx[0], r(dg) @ r(p["weight_ih_l0"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["weight_ih_l0"], dg.T.astype(np.float64) @ x[0], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(grads["weight_hh_l0"], dg.T.astype(np.float64) @ h0[0], rtol=1e-5,
                               atol=1e-6)


@needs_bf16
@pytest.mark.parametrize("bidirectional", [False, True])
def test_worker_threads_compute_in_bf16(bidirectional):
    # With two threads each one packs W_hh for its slice of hidden units (forward: their rows;
    # backward: their columns of dL/dh), and with two directions each runs one direction: every
    # slice and direction must round to bf16, not only the calling thread's. x, W_ih and W_hh are
    # bf16 values already, so the only rounding left is that of h0 in the recurrent product and
    # of the gate gradients in dh0 = dG W_hh (T = 1): a slice packed in float32 would match the
    # float32 run to float32 rounding (about 1e-7) instead of differing by about 1e-3.
    H = 128
    pr = problem("lstm", 1, 16, 64, H, bidirectional=bidirectional, seed=5)
    pr["x"] = bf16_round(pr["x"])
    pr["params"] = {k: bf16_round(v) if k.startswith("weight") else v
                    for k, v in pr["params"].items()}
    rnncore.set_num_threads(2)
    fp32 = run_stack("lstm", dtype=np.float32, precision="float32", **pr)
    bf16 = run_stack("lstm", dtype=np.float32, precision="bf16", **pr)
    again = run_stack("lstm", dtype=np.float32, precision="bf16", **pr)
    for k in bf16:
        np.testing.assert_array_equal(bf16[k], again[k], err_msg=k)  # run to run, same threads
    y_diff = np.abs(bf16["y"] - fp32["y"])[0]  # (B, D*H)
    dh0_diff = np.abs(bf16["dh0"] - fp32["dh0"])  # (D, B, H)
    for d in range(2 if bidirectional else 1):
        for units in (slice(0, H // 2), slice(H // 2, H)):
            where = f"direction {d}, units {units.start}-{units.stop}"
            assert y_diff[:, d * H:(d + 1) * H][:, units].max() > 1e-5, f"{where}: y not bf16"
            assert dh0_diff[d][:, units].max() > 1e-5, f"{where}: dh0 not bf16"


@needs_bf16
def test_nan_stays_in_its_batch_row():
    # A's rows are rounded one by one: a NaN in sequence 2 must not reach the others' outputs or
    # their part of dx.
    pr = problem("gru", 5, 4, 23, 37, seed=6)
    pr["x"][1, 2, 5] = np.nan
    out = run_stack("gru", dtype=np.float32, precision="bf16", **pr)
    others = [0, 1, 3]
    assert np.isfinite(out["y"][:, others]).all() and np.isfinite(out["dx"][:, others]).all()
    assert np.isnan(out["y"][1:, 2]).all()


def test_float32_default_unchanged_and_scope_does_not_leak(rng):
    # The default and an explicit precision="float32" are the same path, also after a bf16 call
    # on the same thread.
    pr = problem("gru", 8, 4, 21, 35, seed=1)
    default = _core.Stack("gru", 21, 35)
    assert default.precision == "float32"
    cast = dict(dtype=np.float32, **pr)
    before = run_stack("gru", precision="float32", **cast)
    run_stack("gru", precision="bf16", **cast)
    after = run_stack("gru", precision="float32", **cast)
    y, h_n, _ = default.forward(pr["x"], pr["params"], pr["states"][0], None, None, False)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    np.testing.assert_array_equal(y, before["y"])
    np.testing.assert_array_equal(h_n, before["h_n"])


FALLBACK_SCRIPT = r"""
import numpy as np
from rnncore._ext import core as _core
assert _core.bf16_kernel() == "none", _core.bf16_kernel()
rng = np.random.default_rng(0)
p = {"weight_ih_l0": rng.standard_normal((136, 17)).astype(np.float32),
     "weight_hh_l0": rng.standard_normal((136, 34)).astype(np.float32)}
x = rng.standard_normal((5, 3, 17)).astype(np.float32)
out = [_core.Stack("lstm", 17, 34, precision=pr).forward(x, p, training=False)
       for pr in ("float32", "bf16")]
for a, b in zip(out[0], out[1]):
    assert np.array_equal(a, b)
print("fallback ok")
"""


def test_fallback_without_bf16_kernel_is_float32():
    env = dict(os.environ, RNNCORE_NO_BF16="1", OMP_WAIT_POLICY="passive")
    done = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "fallback ok" in done.stdout, done.stderr[-2000:]


def test_kernel_matches_cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")),
                         None)
    except OSError:
        flags = None
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags line to compare with")
    forced_off = os.environ.get("RNNCORE_NO_BF16", "0") not in ("", "0")
    expected = ("avx512_bf16" if {"avx512_bf16", "avx512f", "avx512bw"} <= set(flags)
                and not forced_off else "none")
    assert bf16_kernel() == expected
    assert bf16_supported() == (expected != "none")


def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match=r"precision must be 'float32' or 'bf16', got 'fp16'"):
        _core.Stack("lstm", 3, 4, 1, False, np.float32, "fp16")
    with pytest.raises(ValueError, match=r"precision='bf16' needs dtype float32, got float64"):
        _core.Stack("lstm", 3, 4, 1, False, np.float64, "bf16")
    with pytest.raises(ValueError, match=r"precision must be one of 'float32', 'bf16', got 'half'"):
        check_precision("half", np.float32)
    with pytest.raises(ValueError, match=r"precision='bf16' needs dtype float32, got float64"):
        check_precision("bf16", np.float64)
    assert check_precision("bf16", np.float32) == "bf16"


@pytest.mark.parametrize("cell", CELLS)
def test_module_precision_option(cell):
    pr = problem(cell, 6, 3, 9, 20, seed=4)
    m = make_module(cell, 9, 20, seed=4, precision="bf16")
    assert m.precision == "bf16" and "precision='bf16'" in repr(m)
    state = pr["states"] if m._has_cell_state else pr["states"][0]
    y, _ = m(pr["x"], state)
    expected = run_stack(cell, dtype=np.float32, precision="bf16", **pr)
    np.testing.assert_array_equal(y, expected["y"])
    assert make_module(cell, 9, 20).precision == "float32"


def test_module_precision_errors():
    with pytest.raises(ValueError, match=r"precision='bf16' needs dtype float32, got float64"):
        rnncore.GRU(3, 4, dtype=np.float64, precision="bf16")
    with pytest.raises(ValueError, match=r"precision must be one of 'float32', 'bf16', got 'fp8'"):
        rnncore.RNN(3, 4, precision="fp8")


@needs_bf16
@pytest.mark.parametrize("cell", CELLS)
def test_cell_steps_in_bf16(cell, rng):
    """Single-step cells take precision='bf16' too: a training step and its backward are close
    to the float32 cell's within the module bounds, and the float32 cell is unchanged."""
    from conftest import make_cell
    I, H, B = 24, 40, 5
    c32 = make_cell(cell, I, H, seed=3)
    c16 = make_cell(cell, I, H, seed=3, precision="bf16")
    assert c16.precision == "bf16" and c32.precision == "float32"
    x = rng.standard_normal((B, I)).astype(np.float32)
    lstm = isinstance(c32, rnncore.LSTMCell)
    state = tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in range(2 if lstm else 1))
    state = state if lstm else state[0]
    out32, out16 = c32(x, state), c16(x, state)
    d = tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in range(2 if lstm else 1))
    d = d if lstm else d[0]
    dx32, _ = c32.backward(d)
    dx16, _ = c16.backward(d)
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    h32, h16 = (out32[0], out16[0]) if lstm else (out32, out16)
    assert 0 < rel(h16, h32) < FORWARD_BOUND
    assert rel(dx16, dx32) < GRADIENT_BOUND * (6 if cell == "rnn_relu" else 1)
    for k in c32.grads:
        assert rel(c16.grads[k], c32.grads[k]) < GRADIENT_BOUND * (6 if cell == "rnn_relu" else 1), k
    with pytest.raises(ValueError, match=r"precision='bf16' needs dtype float32, got float64"):
        make_cell(cell, I, H, dtype=np.float64, precision="bf16")
