"""The C++ stack driver (cpp/include/rnncore/stack.hpp) through rnncore._core.Stack: a stack is
its layers run one after another, inter-layer dropout is seeded and thread-independent, and bad
arguments raise clear exceptions."""
import numpy as np
import pytest

import rnncore
from rnncore._ext import core as _core
from rnncore.nn import registry as _registry

from conftest import CELLS, make_module, state_tuple


def _layer_modules(m):
    """One single-layer module per layer of m, with m's weights (renamed to layer 0)."""
    layers = []
    for layer in range(m.num_layers):
        in_size = m.input_size if layer == 0 else m.hidden_size * m.num_directions
        one = make_module(m.cell, in_size, m.hidden_size, bidirectional=m.bidirectional,
                          bias=m.bias, dtype=m.dtype)
        one.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in m.params.items()
                             if f"_l{layer}" in k})
        layers.append(one)
    return layers


@pytest.mark.parametrize("cell", CELLS)
def test_stack_equals_its_layers_run_one_after_another(cell, rng):
    T, B, I, H = 5, 4, 3, 6
    m = make_module(cell, I, H, num_layers=3, bidirectional=True, dtype=np.float64, seed=1)
    layers = _layer_modules(m)
    cs = _registry.info(cell).has_cell_state
    D, L = 2, 3
    x = rng.standard_normal((T, B, I))
    lengths = np.array([5, 2, 0, 4])
    h0 = [rng.standard_normal((L * D, B, H)) for _ in range(2 if cs else 1)]
    dy = rng.standard_normal((T, B, D * H))
    dhn = [rng.standard_normal((L * D, B, H)) for _ in range(2 if cs else 1)]

    y, st = m(x, tuple(h0) if cs else h0[0], lengths=lengths)
    m.zero_grad()
    dx, dst = m.backward(dy, tuple(dhn) if cs else dhn[0])

    inp, finals, outs = x, [], []
    for layer, one in enumerate(layers):
        sl = slice(layer * D, (layer + 1) * D)
        s0 = tuple(a[sl] for a in h0)
        inp, s = one(inp, s0 if cs else s0[0], lengths=lengths)
        finals.append(state_tuple(cell, s))
    np.testing.assert_allclose(inp, y, rtol=0, atol=1e-13)
    for k, final in enumerate(zip(*finals)):
        np.testing.assert_allclose(np.concatenate(final), state_tuple(cell, st)[k], atol=1e-13)

    dout, dstates = dy, []
    for layer in reversed(range(L)):
        one = layers[layer]
        sl = slice(layer * D, (layer + 1) * D)
        one.zero_grad()
        g = tuple(a[sl] for a in dhn)
        dout, ds = one.backward(dout, g if cs else g[0])
        dstates.insert(0, state_tuple(cell, ds))
        for k, v in one.grads.items():
            np.testing.assert_allclose(m.grads[k.replace("_l0", f"_l{layer}")], v, atol=1e-12,
                                       err_msg=k)
    np.testing.assert_allclose(dout, dx, atol=1e-12)
    for k, parts in enumerate(zip(*dstates)):
        np.testing.assert_allclose(np.concatenate(parts), state_tuple(cell, dst)[k], atol=1e-12)


def test_dropout_masks_are_seeded_and_the_same_for_any_thread_count(rng):
    x = rng.standard_normal((6, 9, 20)).astype(np.float32)
    outs = []
    for threads in (1, 2):
        rnncore.set_num_threads(threads)
        m = rnncore.GRU(20, 64, num_layers=2, dropout=0.3, bidirectional=True, seed=7)
        y, _ = m(x)
        dx, _ = m.backward(np.ones_like(y))
        outs.append((y, dx, m.grads["weight_ih_l1"].copy()))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    # a different seed draws different masks
    m = rnncore.GRU(20, 64, num_layers=2, dropout=0.3, bidirectional=True, seed=8)
    m.load_state_dict(rnncore.GRU(20, 64, num_layers=2, bidirectional=True, seed=7).state_dict())
    assert not np.array_equal(m(x)[0], outs[0][0])


def test_dropout_drops_the_requested_fraction_between_layers_only():
    """Layer 1 of a stack whose layer 1 is the identity read-out of layer 0 sees layer 0's output
    masked: the zero fraction matches p and kept values are scaled by 1 / (1 - p)."""
    p, H = 0.25, 64
    st = _core.Stack("rnn_relu", H, H, 2, False, np.float64)
    eye, zeros = np.eye(H), np.zeros(H)
    params = {"weight_ih_l0": eye, "weight_hh_l0": 0 * eye, "bias_ih_l0": zeros,
              "bias_hh_l0": zeros, "weight_ih_l1": eye, "weight_hh_l1": 0 * eye,
              "bias_ih_l1": zeros, "bias_hh_l1": zeros}
    x = np.ones((50, 8, H))
    y, _, _ = st.forward(x, params, training=True, dropout=p, seed=3)
    assert set(np.unique(y)) == {0.0, 1.0 / (1 - p)}
    assert abs((y == 0).mean() - p) < 0.01  # 25,600 draws: 4 standard deviations ~ 0.011
    y_eval, _, _ = st.forward(x, params, training=False, dropout=p, seed=3)
    np.testing.assert_array_equal(y_eval, x)


def test_core_stack_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown cell 'mgu' \(known: rnn_tanh"):
        _core.Stack("mgu", 3, 4)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        _core.Stack("lstm", 3, 4, dtype=np.int32)
    st = _core.Stack("lstm", 3, 4, 1, False, np.float32)
    good = {"weight_ih_l0": np.zeros((16, 3), np.float32), "weight_hh_l0": np.zeros((16, 4), np.float32)}
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(KeyError, match="params has no 'weight_hh_l0'"):
        st.forward(x, {"weight_ih_l0": good["weight_ih_l0"]})
    with pytest.raises(TypeError, match=r"params\[weight_ih_l0\] must have dtype float32, got float64"):
        st.forward(x, {**good, "weight_ih_l0": np.zeros((16, 3))})
    with pytest.raises(ValueError, match=r"params\[weight_hh_l0\] must have shape \(16, 4\), got \(4, 16\)"):
        st.forward(x, {**good, "weight_hh_l0": np.zeros((4, 16), np.float32)})
    with pytest.raises(KeyError, match="only one of bias_ih_l0 and bias_hh_l0"):
        st.forward(x, {**good, "bias_ih_l0": np.zeros(16, np.float32)})
    with pytest.raises(ValueError, match=r"lengths\[0\] = 3 is outside \[0, 2\]"):
        st.forward(x, good, lengths=np.array([3]))
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        st.forward(x, good, training=True, dropout=1.0)
    with pytest.raises(RuntimeError, match="needs the workspace of a training-mode forward"):
        st.backward(None, good, good)
    st.forward(x, good, training=True)
    assert st.ready and st.nbytes > 0
    st.release()
    assert not st.ready and st.nbytes == 0


def test_dtype_equal_by_value_not_identity():
    """A dtype object that is equal but not the same (as after pickling) is accepted."""
    import pickle
    m = rnncore.GRU(4, 6, seed=0)
    params = {k: np.frombuffer(pickle.loads(pickle.dumps(v)).tobytes(),
                               dtype=pickle.loads(pickle.dumps(v.dtype))).reshape(v.shape)
              for k, v in m.params.items()}
    st = _core.Stack("gru", 4, 6)
    x = np.ones((3, 2, 4), np.float32)
    np.testing.assert_array_equal(st.forward(x, params)[0], m(x)[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("copy_kind", ["pickle", "deepcopy"])
def test_modules_and_cells_survive_pickle_and_deepcopy(cell, copy_kind, rng):
    """In every state (fresh, after a training forward with a pending backward, in eval mode) a
    copy computes the same outputs as the original; it has no pending backward of its own."""
    import copy
    import pickle
    from conftest import make_cell

    def dup(obj):
        return pickle.loads(pickle.dumps(obj)) if copy_kind == "pickle" else copy.deepcopy(obj)

    x = rng.standard_normal((4, 3, 5))
    m = make_module(cell, 5, 6, num_layers=2, bidirectional=True, dropout=0.2, seed=1)
    c = make_cell(cell, 5, 6, seed=1)
    for state in ("fresh", "pending", "eval"):
        if state == "pending":
            m(x)
            c(x[0])
        if state == "eval":
            m.eval()
            c.eval()
        m2, c2 = dup(m), dup(c)
        y, _ = m(x)
        y2, _ = m2(x)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(state_tuple(cell, c(x[0]))[0], state_tuple(cell, c2(x[0]))[0])
        if state == "pending":
            m2_fresh = dup(m)
            with pytest.raises(RuntimeError, match="needs a preceding training-mode forward"):
                m2_fresh.backward(np.ones_like(y))
            m.backward(np.ones_like(y))  # the original's own tape is untouched
