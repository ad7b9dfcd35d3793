"""The error and edge-case contract of DESIGN.md §4, for every module and cell class."""
import numpy as np
import pytest

import rnncore
from conftest import CELLS, has_cell_state, make_cell, make_module, state_tuple
from rnncore.nn import registry as _registry


def hx_for(cell, *arrays):
    return tuple(arrays) if has_cell_state(cell) else arrays[0]


@pytest.fixture(params=CELLS)
def cell(request):
    return request.param


# ---- construction ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"input_size": 0}, "input_size must be a positive integer, got 0"),
    ({"hidden_size": -3}, "hidden_size must be a positive integer, got -3"),
    ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, "dropout must be"),
    ({"dtype": np.float16}, "dtype must be float32 or float64, got float16"),
])
def test_bad_constructor_arguments(cell, kw, match):
    args = {"input_size": 3, "hidden_size": 4}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        make_module(cell, args.pop("input_size"), args.pop("hidden_size"), **args)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        rnncore.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        rnncore.RNNCell(3, 4, nonlinearity="gelu")


def test_cell_constructor_sizes(cell):
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        make_cell(cell, 3, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        make_cell(cell, 2.5, 3)


# ---- inputs --------------------------------------------------------------------------------
def test_wrong_rank(cell):
    m = make_module(cell, 3, 4)
    with pytest.raises(ValueError, match=r"x must be 3-D .* got 4-D with shape \(2, 2, 2, 3\)"):
        m(np.zeros((2, 2, 2, 3)))
    with pytest.raises(ValueError, match="got 1-D"):
        m(np.zeros(3))


def test_wrong_feature_size(cell):
    m = make_module(cell, 3, 4)
    with pytest.raises(ValueError, match=r"input_size=3 .* got shape \(5, 2, 7\)"):
        m(np.zeros((5, 2, 7)))


def test_non_numeric_input(cell):
    m = make_module(cell, 3, 4)
    with pytest.raises(TypeError, match="x must be a numeric array"):
        m(np.array([[["a", "b", "c"]]]))
    with pytest.raises(TypeError, match="x must be a numeric array"):
        m(np.empty((2, 1, 3), dtype=object))


def test_wrong_state_shapes_are_never_broadcast(cell):
    m = make_module(cell, 3, 4)
    x = np.zeros((5, 4, 3), np.float32)
    h_batch1 = np.zeros((1, 1, 4))
    good = np.zeros((1, 4, 4))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 4, 4\).* got \(1, 1, 4\)"):
        m(x, hx_for(cell, h_batch1, good))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 4, 4\).* got \(4, 4\)"):
        m(x, hx_for(cell, np.zeros((4, 4)), good))
    if has_cell_state(cell):
        with pytest.raises(ValueError, match=r"c0 must have shape \(1, 4, 4\).* got \(1, 4, 5\)"):
            m(x, (good, np.zeros((1, 4, 5))))


def test_state_of_the_wrong_kind(cell):
    m = make_module(cell, 3, 4)
    x = np.zeros((5, 2, 3), np.float32)
    h = np.zeros((1, 2, 4))
    if has_cell_state(cell):
        with pytest.raises(TypeError, match=r"h0 \(the initial state of .*\) must be a tuple \(h0, c0\), got ndarray"):
            m(x, h)
        y, _ = m(x)
        with pytest.raises(TypeError, match=r"dh_n \(the final-state gradient of .*\) must be a tuple \(dh_n, dc_n\)"):
            m.backward(np.zeros_like(y), h)
    else:
        with pytest.raises(TypeError, match="h0 must be an array .* got a tuple"):
            m(x, (h, h))


def test_keyword_names_of_the_public_api(cell, rng):
    """DESIGN.md section 4 names the arguments: forward(x, h0=None, lengths=None) and
    backward(dy, dh_n=None); code outside the repository calls them by keyword."""
    m = make_module(cell, 3, 4)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h = rng.standard_normal((1, 2, 4)).astype(np.float32)
    state = (h, h.copy()) if has_cell_state(cell) else h
    lengths = np.array([5, 3])
    y, s_n = m(x, state, lengths)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, ds0 = m.backward(dy, s_n)
    m.zero_grad()
    y_kw, _ = m(x, h0=state, lengths=lengths)
    dx_kw, ds0_kw = m.backward(dy=dy, dh_n=s_n)
    np.testing.assert_array_equal(y_kw, y)
    np.testing.assert_array_equal(dx_kw, dx)
    as_list = lambda s: list(s) if isinstance(s, tuple) else [s]
    assert len(as_list(ds0_kw)) == len(as_list(ds0))
    for a, b in zip(as_list(ds0_kw), as_list(ds0)):
        np.testing.assert_array_equal(a, b)


def test_lengths_errors(cell):
    m = make_module(cell, 3, 4)
    x = np.zeros((5, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\].*lengths\[1\] = 6"):
        m(x, lengths=[5, 6, 1])
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\].*lengths\[2\] = -1"):
        m(x, lengths=[5, 2, -1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\).* got \(2,\)"):
        m(x, lengths=[5, 2])
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        m(x, lengths=["a", "b", "c"])
    with pytest.raises(ValueError, match="lengths is only accepted with batched"):
        m(np.zeros((5, 3), np.float32), lengths=[5])


def test_backward_before_forward_twice_and_after_eval(cell):
    m = make_module(cell, 3, 4)
    x = np.ones((5, 2, 3), np.float32)
    with pytest.raises(RuntimeError, match="needs a preceding training-mode forward"):
        m.backward(np.ones((5, 2, 4)))
    y, _ = m(x)
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="already consumed"):
        m.backward(np.ones_like(y))
    m.eval()
    y, _ = m(x)
    with pytest.raises(RuntimeError, match="eval mode"):
        m.backward(np.ones_like(y))


def test_wrong_dy_shape_keeps_the_pending_forward(cell):
    m = make_module(cell, 3, 4)
    y, _ = m(np.ones((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(5, 2, 4\).* got \(5, 2, 3\)"):
        m.backward(np.ones((5, 2, 3)))
    dx, _ = m.backward(np.ones_like(y))  # the failed call did not consume the forward
    assert dx.shape == (5, 2, 3)


def test_cell_errors(cell):
    c = make_cell(cell, 3, 4)
    with pytest.raises(RuntimeError, match="needs a preceding training-mode forward step"):
        c.backward(hx_for(cell, np.ones((2, 4)), np.ones((2, 4))))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\) or \(3,\), got \(2, 5\)"):
        c(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 4\), got \(1, 4\)"):
        c(np.ones((2, 3)), hx_for(cell, np.ones((1, 4)), np.ones((2, 4))))
    if has_cell_state(cell):
        with pytest.raises(TypeError, match=r"state must be a tuple \(h, c\)"):
            c(np.ones((2, 3)), np.ones((2, 4)))


# ---- conversions ---------------------------------------------------------------------------
def test_dtype_conversion_and_contiguity(cell, rng):
    m = make_module(cell, 3, 4, seed=0)
    x64 = rng.standard_normal((6, 5, 3))
    y, _ = m(x64)
    assert y.dtype == np.float32
    y32, _ = m(x64.astype(np.float32))
    np.testing.assert_array_equal(y, y32)
    # non-contiguous input: a strided view gives the same result as its contiguous copy
    big = rng.standard_normal((12, 5, 6)).astype(np.float32)
    view = big[::2, :, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(m(view)[0], m(np.ascontiguousarray(view))[0])
    # int input is numeric: accepted and converted
    yi, _ = m(np.arange(30).reshape(2, 5, 3) % 3)
    assert yi.dtype == np.float32 and np.isfinite(yi).all()


def test_unbatched_input_equals_batch_of_one(cell, rng):
    m = make_module(cell, 3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 3))
    h0 = rng.standard_normal((1, 4))
    c0 = rng.standard_normal((1, 4))
    y, st = m(x, hx_for(cell, h0, c0))
    dx, ds = m.backward(np.ones_like(y))
    y1, st1 = m(x[:, None], hx_for(cell, h0[:, None], c0[:, None]))
    dx1, ds1 = m.backward(np.ones_like(y1))
    assert y.shape == (6, 4) and dx.shape == (6, 3)
    np.testing.assert_array_equal(y, y1[:, 0])
    np.testing.assert_array_equal(dx, dx1[:, 0])
    for a, b in zip(state_tuple(cell, st), state_tuple(cell, st1)):
        assert a.shape == (1, 4)
        np.testing.assert_array_equal(a, b[:, 0])
    for a, b in zip(state_tuple(cell, ds), state_tuple(cell, ds1)):
        np.testing.assert_array_equal(a, b[:, 0])


# ---- empty dimensions and zero lengths -------------------------------------------------------
def test_zero_time_steps(cell, rng):
    m = make_module(cell, 3, 4, num_layers=2, bidirectional=True)
    h0 = rng.standard_normal((4, 2, 4)).astype(np.float32)
    c0 = rng.standard_normal((4, 2, 4)).astype(np.float32)
    y, st = m(np.zeros((0, 2, 3), np.float32), hx_for(cell, h0, c0))
    assert y.shape == (0, 2, 8)
    np.testing.assert_array_equal(state_tuple(cell, st)[0], h0)
    if has_cell_state(cell):
        np.testing.assert_array_equal(st[1], c0)
    dh = rng.standard_normal((4, 2, 4)).astype(np.float32)
    dx, ds = m.backward(y, hx_for(cell, dh, dh))
    assert dx.shape == (0, 2, 3)
    np.testing.assert_array_equal(state_tuple(cell, ds)[0], dh)


def test_zero_batch(cell):
    m = make_module(cell, 3, 4, num_layers=2)
    y, st = m(np.zeros((5, 0, 3), np.float32))
    assert y.shape == (5, 0, 4)
    assert state_tuple(cell, st)[0].shape == (2, 0, 4)
    for g in m.grads.values():
        g.fill(7.0)
    m.zero_grad()
    dx, _ = m.backward(y)
    assert dx.shape == (5, 0, 3)
    assert all(not g.any() for g in m.grads.values())


def test_length_zero_sequence_keeps_its_state(cell, rng):
    m = make_module(cell, 3, 4, dtype=np.float64, bidirectional=True, seed=2)
    x = rng.standard_normal((5, 3, 3))
    h0 = rng.standard_normal((2, 3, 4))
    c0 = rng.standard_normal((2, 3, 4))
    y, st = m(x, hx_for(cell, h0, c0), lengths=[5, 0, 2])
    assert not y[:, 1].any() and not y[2:, 2].any()
    for a, b in zip(state_tuple(cell, st), (h0, c0)):
        np.testing.assert_array_equal(a[:, 1], b[:, 1])
    dh = rng.standard_normal((2, 3, 4))
    dc = rng.standard_normal((2, 3, 4))
    dy = rng.standard_normal(y.shape)
    dx, ds = m.backward(dy, hx_for(cell, dh, dc))
    np.testing.assert_array_equal(state_tuple(cell, ds)[0][:, 1], dh[:, 1])
    if has_cell_state(cell):
        np.testing.assert_array_equal(ds[1][:, 1], dc[:, 1])
    assert not dx[:, 1].any() and not dx[2:, 2].any()


# ---- state dicts ---------------------------------------------------------------------------
def test_load_state_dict_errors_write_nothing(cell):
    m = make_module(cell, 3, 4)
    before = m.state_dict()
    sd = m.state_dict()
    sd.pop("weight_hh_l0")
    sd["weight_xx_l0"] = np.zeros(3)
    with pytest.raises(KeyError, match=r"missing keys \['weight_hh_l0'\].*unexpected keys \['weight_xx_l0'\]"):
        m.load_state_dict(sd)
    sd = {k: v + 1 for k, v in m.state_dict().items()}
    sd["bias_hh_l0"] = np.zeros(5)
    G = _registry.info(cell).gates
    with pytest.raises(ValueError, match=rf"bias_hh_l0 has shape \(5,\), expected \({G * 4},\)"):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing partially written


def test_load_state_dict_keeps_live_arrays(cell):
    m = make_module(cell, 3, 4)
    ref = m.params["weight_ih_l0"]
    sd = {k: np.full_like(v, 0.5) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert m.params["weight_ih_l0"] is ref and (ref == 0.5).all()
    partial = {"weight_ih_l0": np.zeros_like(ref)}
    m.load_state_dict(partial, strict=False)
    assert not ref.any()


# ---- numerical robustness --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bounded_cell", [c for c in CELLS if c != "rnn_relu"])
def test_extreme_inputs_saturate_without_nan(bounded_cell, dtype, rng):
    # relu is unbounded, so it cannot saturate: test_relu_rnn_with_huge_inputs_has_no_nan
    cell = bounded_cell
    m = make_module(cell, 4, 5, dtype=dtype, seed=3, bidirectional=True)
    x = rng.standard_normal((6, 4, 4)) * 1e30
    x[2, 1, 3] = np.inf
    x[4, 2, 0] = -np.inf
    y, st = m(x)
    dx, ds = m.backward(np.ones_like(y), tuple(np.ones_like(s) for s in st) if has_cell_state(cell) else np.ones_like(st))
    assert np.isfinite(y).all()
    for s in state_tuple(cell, st) + state_tuple(cell, ds):
        assert np.isfinite(s).all()
    assert np.isfinite(dx).all()
    for name, g in m.grads.items():
        if name.startswith("weight_ih_l0"):
            # d/dW of W x at an infinite feature is (saturated gate gradient 0) * inf: undefined.
            # Exactly those two columns are NaN; the rest is finite.
            assert np.isfinite(np.delete(g, [0, 3], axis=1)).all(), name
        else:
            assert np.isfinite(g).all(), name


def test_relu_rnn_with_huge_inputs_has_no_nan(rng):
    m = rnncore.RNN(4, 5, nonlinearity="relu", dtype=np.float64, seed=3)
    x = rng.standard_normal((6, 4, 4)) * 1e30
    y, h = m(x)
    dx, dh = m.backward(np.ones_like(y))
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert all(np.isfinite(g).all() for g in m.grads.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_stays_in_its_sample(cell, dtype, rng):
    m = make_module(cell, 3, 6, dtype=dtype, seed=4, num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 4, 3))
    y_clean, st_clean = m(x)
    x[2, 1, 0] = np.nan
    y, st = m(x)
    others = [0, 2, 3]
    np.testing.assert_array_equal(y[:, others], y_clean[:, others])
    for a, b in zip(state_tuple(cell, st), state_tuple(cell, st_clean)):
        np.testing.assert_array_equal(a[:, others], b[:, others])
    assert np.isnan(y[:, 1]).any()


def test_the_core_refuses_non_native_byte_order_and_misaligned_arrays():
    # The bindings' last line of defence (the Python layer converts before): a '>f4' array has
    # float32's kind and size, and its bytes read as native floats would be garbage.
    from rnncore._ext import core
    stack = core.Stack("gru", 3, 4)
    m = rnncore.GRU(3, 4, seed=0)
    x = np.ones((2, 1, 3), np.float32)
    with pytest.raises(TypeError, match=r"x must have dtype float32, got >f4 in big-endian byte order"):
        stack.forward(x.astype(">f4"), m.params)
    raw = np.zeros(2 * 3 * 4 + 1, np.uint8).tobytes()
    odd = np.frombuffer(raw, np.float32, count=6, offset=1).reshape(2, 1, 3)
    assert not odd.flags.aligned
    with pytest.raises(ValueError, match="x must be aligned"):
        stack.forward(odd, m.params)
    with pytest.raises(TypeError, match=r"got >f8 in big-endian byte order"):
        core.matmul(np.ones((2, 2), ">f8"), np.ones((2, 2), ">f8"))
    y, _, _ = stack.forward(x, m.params)  # the native array computes
    assert np.array_equal(y, m.eval()(x)[0])
