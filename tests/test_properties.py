"""Property-based tests (hypothesis): random cells, sizes including 0 and 1, layers, directions,
layouts, strides, dtypes, lengths, states and thread counts, checked against the float64
reference loops of rnncore.reference; and random bad input, which must always raise a clear
exception (TypeError, ValueError, KeyError or RuntimeError), never crash or return garbage.

CI runs a bounded number of examples; set RNNCORE_HYPOTHESIS_EXAMPLES for more (the issue that
introduced these ran about 38,000)."""
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnncore  # noqa: E402
from rnncore.testing import reference  # noqa: E402
from conftest import CELLS, has_cell_state, make_module, ref_params_of  # noqa: E402

EXAMPLES = int(os.environ.get("RNNCORE_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(CELLS))
    T, B = draw(st.sampled_from(range(8))), draw(st.sampled_from(range(5)))  # 0 included, not favoured
    c = dict(cell=cell, T=T, B=B, I=draw(st.integers(1, 5)), H=draw(st.integers(1, 19)),
             L=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
             batch_first=draw(st.booleans()), bias=draw(st.booleans()),
             dtype=draw(st.sampled_from([np.float32, np.float64])),
             layout=draw(st.sampled_from(["contiguous", "strided", "fortran"])),
             threads=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**16)))
    c["lengths"] = (draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
                    if B and draw(st.booleans()) else None)
    c["states"] = draw(st.booleans())
    c["final_grads"] = draw(st.booleans())
    return c


def _layout(a, layout):
    """The same values as a, laid out as asked (a non-contiguous view, or Fortran order)."""
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    return a


def _reference_module(m, x, states, lengths, dy, dstates):
    """The whole module in float64 through rnncore.reference, layer by layer and direction by
    direction: y, final states, dx, initial-state gradients and parameter gradients."""
    L, D, H = m.num_layers, m.num_directions, m.hidden_size
    inp, caches, finals = x, [], [[None] * (L * D) for _ in states]
    for layer in range(L):
        outs = []
        for d in range(D):
            i = layer * D + d
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            y, fin, cache = reference.forward(m.cell, inp, tuple(s[i] for s in states),
                                              ref_params_of(m, suffix), reverse=d == 1,
                                              lengths=lengths)
            outs.append(y)
            caches.append((suffix, cache))
            for k, f in enumerate(fin):
                finals[k][i] = f
        inp = np.concatenate(outs, axis=2)
    y = inp
    grads, dstate0 = {}, [[None] * (L * D) for _ in states]
    dout = dy
    for layer in reversed(range(L)):
        din = 0
        for d in range(D):
            i = layer * D + d
            suffix, cache = caches[i]
            dx, ds0, g = reference.backward(cache, dout[..., d * H:(d + 1) * H],
                                            tuple(s[i] for s in dstates))
            din = din + dx
            for k, v in enumerate(ds0):
                dstate0[k][i] = v
            for k, v in g.items():
                if v is not None:
                    grads[{"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih",
                           "b_hh": "bias_hh", "w_peephole": "weight_peephole"}[k] + suffix] = v
        dout = din
    return y, [np.stack(f) for f in finals], dout, [np.stack(s) for s in dstate0], grads


@given(configs())
@SETTINGS
def test_modules_match_the_reference(c):
    rnncore.set_num_threads(c["threads"])
    rng = np.random.default_rng(c["seed"])
    cell, T, B, I, H, L = c["cell"], c["T"], c["B"], c["I"], c["H"], c["L"]
    m = make_module(cell, I, H, num_layers=L, bidirectional=c["bidirectional"],
                    batch_first=c["batch_first"], bias=c["bias"], dtype=c["dtype"],
                    seed=c["seed"])
    D, n_states = m.num_directions, 2 if has_cell_state(cell) else 1
    x = rng.standard_normal((T, B, I))
    states = [rng.standard_normal((L * D, B, H)) if c["states"] else np.zeros((L * D, B, H))
              for _ in range(n_states)]
    dy = rng.standard_normal((T, B, D * H))
    dstates = [rng.standard_normal((L * D, B, H)) if c["final_grads"] else np.zeros((L * D, B, H))
               for _ in range(n_states)]
    lengths = None if c["lengths"] is None else np.array(c["lengths"], np.int64)
    if lengths is not None:  # the outputs past a length are zero and carry no gradient
        for b, n in enumerate(lengths):
            dy[n:, b] = 0

    def user(a):  # time-major (T, B, ...) -> the module's layout, cast and strided as drawn
        a = a.transpose(1, 0, 2) if c["batch_first"] else a
        return _layout(a.astype(c["dtype"]), c["layout"])

    def pack(arrs):
        arrs = [_layout(a.astype(c["dtype"]), c["layout"]) for a in arrs]
        return tuple(arrs) if n_states == 2 else arrs[0]

    y, fin = m(user(x), pack(states) if c["states"] else None, lengths=lengths)
    m.zero_grad()
    dx, ds0 = m.backward(user(dy), pack(dstates) if c["final_grads"] else None)
    ry, rfin, rdx, rds0, rgrads = _reference_module(m, x, states, lengths, dy, dstates)

    f64 = c["dtype"] == np.float64
    tol = dict(rtol=1e-9, atol=1e-10) if f64 else dict(rtol=2e-3, atol=2e-4)
    back = (lambda a: a.transpose(1, 0, 2)) if c["batch_first"] else (lambda a: a)
    assert y.dtype == c["dtype"] and dx.dtype == c["dtype"]
    np.testing.assert_allclose(back(y), ry, **tol)
    np.testing.assert_allclose(back(dx), rdx, **tol)
    fin = fin if n_states == 2 else (fin,)
    ds0 = ds0 if n_states == 2 else (ds0,)
    for k in range(n_states):
        np.testing.assert_allclose(fin[k], rfin[k], **tol)
        np.testing.assert_allclose(ds0[k], rds0[k], **tol)
    assert set(rgrads) == set(m.grads)
    for name, g in rgrads.items():
        np.testing.assert_allclose(m.grads[name], g, err_msg=name, **tol)


# ---- bad input ----------------------------------------------------------------------------------

CLEAR = (TypeError, ValueError, KeyError, RuntimeError)

junk_arrays = st.one_of(
    st.none(),
    st.integers(-3, 3).map(lambda n: np.ones((abs(n),) * min(abs(n), 4), np.float32)),
    st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 6)).map(
        lambda s: np.zeros(s, np.float32)),
    st.sampled_from([np.zeros((3, 2, 4), np.complex64), np.array([["a"]]), np.zeros((3, 2, 4), bool),
                     np.full((3, 2, 4), np.nan), np.zeros((3, 2, 4), object), "text", 3.5,
                     [[1, 2], [3]], (np.zeros((1, 2, 5)),) * 3, {"a": 1}, np.zeros((2, 3, 4))[::-1]]),
)
junk_lengths = st.one_of(
    st.none(),
    st.lists(st.integers(-2**70, 2**70), max_size=4).map(lambda v: np.array(v, dtype=object)),
    st.lists(st.integers(-5, 9), max_size=4).map(np.array),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4).map(np.array),
    st.sampled_from([np.array([2**64 - 1, 0], np.uint64), np.array([True, False]), "3", 2]),
)


@given(cell=st.sampled_from(CELLS), x=junk_arrays, h0=junk_arrays, lengths=junk_lengths,
       dy=junk_arrays, training=st.booleans())
@SETTINGS
def test_bad_input_raises_a_clear_exception(cell, x, h0, lengths, dy, training):
    m = make_module(cell, 4, 5, seed=0)
    m.train(training)
    try:
        y, _ = m(x, h0, lengths=lengths)
    except CLEAR as e:
        assert str(e)  # says what is wrong
        return
    assert np.all(np.isfinite(y) | np.isnan(np.asarray(x, np.float64)).any())
    if training:
        try:
            m.backward(dy)
        except CLEAR as e:
            assert str(e)
