"""Byte order and the other dtype properties at every entry (issue 20, item 2): an array in
another byte order (`>f4`, `>f8`, as h5py, FITS or np.frombuffer give), a misaligned one
(np.frombuffer at an odd offset) or a read-only one gives exactly the results of the native
array with the same values, at every entry: cells (x, h, c, dh, dc), recurrent modules (x, h0,
c0, lengths, dy, dh_n), layers, attention, parameters assigned or rebound, load_state_dict,
checkpoints, the losses and CTC; rnncore.torch takes tensors only (always native)."""
import numpy as np
import pytest

import rnncore
from rnncore.nn.attention import Attention
from rnncore.nn.module import as_array
from rnncore.train import checkpoint, ctc, losses, optim
from conftest import CELLS, has_cell_state, make_cell, make_module

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
VARIANTS = (">f4", ">f8", "misaligned", "read-only")


def _misaligned(a):
    b = np.frombuffer(b"\0" + a.tobytes(), dtype=a.dtype, offset=1).reshape(a.shape)
    assert not b.flags.aligned
    return b


def _variant(a, variant):
    """(native array with the values the variant holds, the variant)."""
    if variant in (">f4", ">f8", ">i8"):
        base = a.astype(np.dtype(variant).newbyteorder("="))
        big = base.astype(variant)
        assert big.dtype.byteorder == ">" and np.array_equal(big, base)
        return base, big
    if variant == "misaligned":
        return a, _misaligned(a)
    assert variant == "read-only"
    b = a.view()  # the same memory: results cannot differ by the data's address
    b.flags.writeable = False
    return a, b


def _pairs(variant, *arrays):
    natives, variants = zip(*(_variant(a, variant) for a in arrays))
    return list(natives), list(variants)


def _equal(got, want, what="", ulps=0):
    """Equal values and dtypes; ulps > 0: within that many epsilons of the largest (rnncore's
    matmul may round the last bit differently for operands at other addresses, so results on
    converted copies can differ from those on the caller's arrays there)."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), what
        for g, w in zip(got, want):
            _equal(g, w, what, ulps)
        return
    if want is None:
        assert got is None, what
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    if ulps:  # relative to the largest value: sums that cancel lose their relative precision
        eps = np.finfo(want.dtype).eps
        np.testing.assert_allclose(got, want, rtol=0, err_msg=what,
                                   atol=ulps * eps * max(1.0, float(np.abs(want).max())))
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


# ---- helpers of the module -----------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_as_array_gives_native_aligned_contiguous(variant, rng):
    base, a = _variant(rng.standard_normal((3, 5)), variant)
    for dtype in (F32, F64):
        out = as_array("x", a, dtype)
        assert out.dtype is dtype and out.flags.aligned and out.flags.c_contiguous
        np.testing.assert_array_equal(out, base.astype(dtype))
    # imported here so that the other tests of this file also run on older code (issue 20)
    from rnncore.nn.module import native
    n = native(a)
    assert n.dtype.isnative and n.flags.aligned and n.flags.c_contiguous
    np.testing.assert_array_equal(n, base)


# ---- cells ---------------------------------------------------------------------------------

def _cell_run(cell, dtype, x, states, dstates, training):
    c = make_cell(cell, 5, 4, dtype=dtype, seed=0)
    if not training:
        c.eval()
    s = tuple(states) if has_cell_state(cell) else states[0]
    out = c(x, s)
    if not training:
        return [out]
    ds = tuple(dstates) if has_cell_state(cell) else dstates[0]
    dx, dprev = c.backward(ds)
    return [out, dx, dprev, dict(c.grads)]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_inputs(cell, dtype, variant, training, rng):
    """x, h, c (forward) and dh, dc (backward), batched and unbatched."""
    n = 2 if has_cell_state(cell) else 1
    arrays = [rng.standard_normal((3, 5))] + [rng.standard_normal((3, 4)) for _ in range(2 * n)]
    natives, variants = _pairs(variant, *arrays)
    want = _cell_run(cell, dtype, natives[0], natives[1:1 + n], natives[1 + n:], training)
    got = _cell_run(cell, dtype, variants[0], variants[1:1 + n], variants[1 + n:], training)
    for g, w in zip(got, want):
        if isinstance(w, dict):
            for k in w:
                _equal(g[k], w[k], f"grads[{k}]")
        else:
            _equal(g, w, "cell step")
    # unbatched: x (I,), states (H,)
    natives, variants = _pairs(variant, *(a[0] for a in arrays))
    want = _cell_run(cell, dtype, natives[0], natives[1:1 + n], natives[1 + n:], False)
    got = _cell_run(cell, dtype, variants[0], variants[1:1 + n], variants[1 + n:], False)
    _equal(got, want, "unbatched cell step")


@pytest.mark.parametrize("variant", VARIANTS)
def test_cell_one_input_at_a_time(variant, rng):
    """Each of x, h, c alone in the variant (the others native): the fast path must not take it."""
    x, h, c = rng.standard_normal((2, 5)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    cell = make_cell("lstm", 5, 4, seed=0).eval()
    want = cell(x.astype(np.float32), (h.astype(np.float32), c.astype(np.float32)))
    for which in range(3):
        args = [a.astype(np.float32) for a in (x, h, c)]
        args[which] = _variant(args[which], variant if variant != ">f8" else ">f4")[1]
        _equal(cell(args[0], (args[1], args[2])), want, f"input {'xhc'[which]}")


# ---- recurrent modules ---------------------------------------------------------------------

def _module_run(cell, dtype, x, states, lengths, dy, dstates):
    m = make_module(cell, 5, 4, dtype=dtype, seed=0)
    s = tuple(states) if has_cell_state(cell) else states[0]
    y, h_n = m(x, s, lengths=lengths)
    ds = tuple(dstates) if has_cell_state(cell) else dstates[0]
    dx, dh0 = m.backward(dy, ds)
    return [y, h_n, dx, dh0] + [m.grads[k] for k in m.grads]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_module_inputs(cell, dtype, variant, rng):
    n = 2 if has_cell_state(cell) else 1
    x, dy = rng.standard_normal((6, 3, 5)), rng.standard_normal((6, 3, 4))
    states = [rng.standard_normal((1, 3, 4)) for _ in range(2 * n)]
    natives, variants = _pairs(variant, x, dy, *states)
    lengths = np.array([6, 2, 4])
    lvar = lengths.astype(">i8") if variant.startswith(">") else _variant(lengths, variant)[1]
    want = _module_run(cell, dtype, natives[0], natives[2:2 + n], lengths, natives[1],
                       natives[2 + n:])
    got = _module_run(cell, dtype, variants[0], variants[2:2 + n], lvar, variants[1],
                      variants[2 + n:])
    _equal(got, want, "recurrent module")


# ---- parameters assigned, rebound, loaded ---------------------------------------------------

def _param_modules(dtype):
    out = [(f"{c} cell", make_cell(c, 5, 4, dtype=dtype, seed=0), (3, 5)) for c in CELLS]
    out += [(f"{c} module", make_module(c, 5, 4, dtype=dtype, seed=0), (6, 3, 5)) for c in CELLS]
    out.append(("Linear", rnncore.Linear(5, 4, dtype=dtype, seed=0), (3, 5)))
    out.append(("LayerNorm", rnncore.LayerNorm(5, dtype=dtype), (3, 5)))
    return out


def _out(m, x):
    y = m(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("how", ["assigned", "rebound", "load_state_dict"])
@pytest.mark.parametrize("variant", [">f4", ">f8", "misaligned", "read-only"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_parameters_in_any_byte_order(dtype, variant, how, rng):
    """m.params[k] = array, m.params = {...}, m.load_state_dict({...}) with arrays in another
    byte order (of the module's dtype: a parameter's dtype is the module's), misaligned or
    read-only: the module computes with the same values."""
    if variant in (">f4", ">f8") and np.dtype(variant).itemsize != dtype.itemsize:
        variant = ">f8" if dtype == F64 else ">f4"
    for name, m, shape in _param_modules(dtype):
        m.eval()
        x = rng.standard_normal(shape).astype(dtype)
        new = {k: rng.uniform(-0.5, 0.5, v.shape).astype(dtype) for k, v in m.params.items()}
        given = {k: _variant(v, variant)[1] for k, v in new.items()}
        m.load_state_dict(new)
        want = _out(m, x)
        m.load_state_dict({k: np.zeros_like(v) for k, v in new.items()})
        _out(m, x)  # a cell packs the zeros
        if how == "assigned":
            for k, v in given.items():
                m.params[k] = v
        elif how == "rebound":
            m.params = dict(given)
        else:
            m.load_state_dict(given)
        for k, p in m.params.items():
            assert p.dtype.isnative and p.flags.aligned and p.flags.c_contiguous, (name, k)
        _equal(_out(m, x), want, f"{name}, parameters {how} as {variant}")


def test_native_parameters_are_kept_as_the_callers_arrays(rng):
    """A native, aligned array assigned is the parameter itself (edits in place reach it)."""
    m = rnncore.Linear(5, 4)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    m.params["weight"] = w
    assert m.params["weight"] is w


# ---- layers and attention -------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_layer_inputs(dtype, variant, rng):
    x, dy = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 4))
    (xn, dyn), (xv, dyv) = _pairs(variant, x, dy)
    for make in (lambda: rnncore.Linear(5, 4, dtype=dtype, seed=0),
                 lambda: rnncore.LayerNorm(5, dtype=dtype)):
        res = []
        for a, d in ((xn, dyn), (xv, dyv)):
            m = make()
            y = m(a)
            dd = d if y.shape[-1] == 4 else np.concatenate([d, d[..., :1]], axis=-1)
            res.append([y, m.backward(dd)] + [m.grads[k] for k in m.grads])
        _equal(res[1], res[0], type(make()).__name__, ulps=4)
    idx = np.array([[1, 0, 3], [2, 2, 1]])
    e = rnncore.Embedding(4, 3, dtype=dtype, seed=0)
    iv = idx.astype(">i8") if variant.startswith(">") else _variant(idx, variant)[1]
    _equal(e(iv), e(idx), "Embedding indices")


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_inputs(variant, rng):
    q, k, dc = rng.standard_normal((2, 3)), rng.standard_normal((5, 2, 4)), rng.standard_normal((2, 4))
    (qn, kn, dcn), (qv, kv, dcv) = _pairs(variant, q, k, dc)
    res = []
    for args in ((qn, kn, dcn), (qv, kv, dcv)):
        a = Attention(3, 4, seed=0)
        out = a(args[0], args[1])
        res.append([out, a.backward(args[2])] + [a.grads[n] for n in a.grads])
    _equal(res[1], res[0], "Attention")


# ---- checkpoints, optimiser state, losses, CTC, rnncore.torch -------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_round_trip(variant, tmp_path, rng):
    """save() with arrays and optimiser buffers in the variant writes the values; restore()
    reads them back equal (before: raw big-endian bytes under a little-endian type)."""
    m = rnncore.LSTM(3, 4, seed=0)
    opt = optim.Adam([m])
    state = opt.state_dict()
    buffers = {n: {b: rng.standard_normal(a.shape).astype(np.float32) for b, a in bs.items()}
               for n, bs in state["state"].items()}
    state["state"] = {n: {b: _variant(a, variant if variant != ">f8" else ">f4")[1]
                          for b, a in bs.items()} for n, bs in buffers.items()}
    opt.load_state_dict(state)
    carried = rng.standard_normal((1, 2, 4))
    base, given = _variant(carried, variant)
    path = checkpoint.save(tmp_path / "ck.safetensors", m, opt, arrays={"h": given})
    m2 = rnncore.LSTM(3, 4, seed=1)
    opt2 = optim.Adam([m2])
    ck = checkpoint.restore(path, m2, opt2)
    _equal(ck.arrays["h"], base, "checkpoint arrays")
    for n, bs in buffers.items():
        for b, a in bs.items():
            _equal(opt2.state_dict()["state"][n][b], a, f"optimizer state {n}.{b}")
    for k in m.params:
        _equal(m2.params[k], m.params[k], k)


@pytest.mark.parametrize("variant", VARIANTS)
def test_losses_and_ctc(variant, rng):
    for dtype in (F32, F64):
        logits = rng.standard_normal((4, 2, 5)).astype(dtype)
        ln, lv = _variant(logits, variant if variant[0] != ">" else ">" + dtype.str[1:])
        targets = np.array([[1, 2], [3, 3]])
        lp_n, lp_v = ctc.log_softmax(ln), ctc.log_softmax(lv)
        _equal(lp_v, lp_n, "log_softmax")
        lp_v = _variant(lp_n, variant if variant[0] != ">" else ">" + dtype.str[1:])[1]
        _equal(ctc.ctc_loss(lp_v, targets), ctc.ctc_loss(lp_n, targets), "ctc_loss")
        flat_n, flat_v = ln.reshape(8, 5), _variant(ln.reshape(8, 5).copy(),
                                                    variant if variant[0] != ">" else ">" + dtype.str[1:])[1]
        t = np.array([0, 1, 2, 3, 4, 0, 1, 2])
        _equal(losses.cross_entropy(flat_v, t), losses.cross_entropy(flat_n, t), "cross_entropy")
        _equal(losses.mse(flat_v, flat_n), losses.mse(flat_n, flat_n), "mse")
        # integer entries: targets and lengths in another byte order
        _equal(ctc.ctc_loss(lp_n, targets.astype(">i8"), np.array([4, 3]).astype(">i4")),
               ctc.ctc_loss(lp_n, targets, np.array([4, 3])), "ctc_loss, >i8 targets")
        _equal(losses.cross_entropy(flat_n, t.astype(">i8")), losses.cross_entropy(flat_n, t),
               "cross_entropy, >i8 targets")


def test_rnncore_torch_takes_tensors_only():
    """rnncore.torch's entries are torch tensors, always native; a numpy array is refused, and
    torch itself refuses a big-endian array in torch.from_numpy."""
    torch = pytest.importorskip("torch")
    import rnncore.torch as rt
    m = rt.LSTM(3, 4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        m(np.zeros((2, 1, 3), ">f4"))
    with pytest.raises((ValueError, TypeError)):
        torch.from_numpy(np.zeros(3, ">f4"))


@pytest.mark.parametrize("bad", ["c8", "?", "O", [("a", "<f4")]], ids=["complex", "bool", "object", "structured"])
def test_arrays_without_a_float_meaning_raise_type_error(bad, rng):
    """No silent reinterpretation: complex, bool, object and structured arrays raise TypeError at
    the cells' and modules' entries, and a parameter of another dtype than the module's raises
    TypeError naming it at the next step (not a silent cast)."""
    x = np.zeros((2, 3), dtype=bad) if bad != "O" else np.zeros((2, 3)).astype(object)
    cell = make_cell("lstm", 3, 4)
    with pytest.raises(TypeError, match="x must be"):
        cell(x)
    module = make_module("gru", 3, 4)
    with pytest.raises(TypeError):
        module(x[:, None, :])
    cell.params["weight_hh"] = cell.params["weight_hh"].astype(">f8")
    with pytest.raises(TypeError, match="weight_hh"):
        cell(np.zeros((2, 3), np.float32))
