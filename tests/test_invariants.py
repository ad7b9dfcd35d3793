"""Invariants that tie the pieces together: step-by-step cells equal whole sequences, reverse
equals forward on flipped sequences, a padded batch equals separate runs, threads agree."""
import numpy as np
import pytest

import rnncore
from conftest import CELLS, has_cell_state, make_cell, make_module, state_tuple
from conftest import pack_state as pack


@pytest.mark.parametrize("cell", CELLS)
def test_step_by_step_cells_equal_the_sequence_module(cell, rng):
    T, B, I, H = 6, 3, 4, 5
    m = make_module(cell, I, H, dtype=np.float64, seed=1)
    c = make_cell(cell, I, H, dtype=np.float64)
    c.load_state_dict({k[:-3]: v for k, v in m.params.items()})  # weight_ih_l0 -> weight_ih
    n = 2 if has_cell_state(cell) else 1
    x = rng.standard_normal((T, B, I))
    s0 = [rng.standard_normal((B, H)) for _ in range(n)]
    y, sn = m(x, pack(cell, [s[None] for s in s0]))
    states = pack(cell, s0)
    outs = []
    for t in range(T):
        states = c(x[t], states)
        outs.append(state_tuple(cell, states)[0])
    np.testing.assert_allclose(np.stack(outs), y, atol=1e-13)
    for a, b in zip(state_tuple(cell, states), state_tuple(cell, sn)):
        np.testing.assert_allclose(a, b[0], atol=1e-13)

    # Manual BPTT through the cell's stack of steps equals the module's backward.
    dy = rng.standard_normal((T, B, H))
    ds = [rng.standard_normal((B, H)) for _ in range(n)]
    dx_mod, ds0_mod = m.backward(dy, pack(cell, [d[None] for d in ds]))
    carry = [d.copy() for d in ds]
    dxs = [None] * T
    for t in reversed(range(T)):
        carry[0] = carry[0] + dy[t]
        dxs[t], prev = c.backward(pack(cell, carry))
        carry = list(state_tuple(cell, prev))
    np.testing.assert_allclose(np.stack(dxs), dx_mod, atol=1e-12)
    for a, b in zip(carry, state_tuple(cell, ds0_mod)):
        np.testing.assert_allclose(a, b[0], atol=1e-12)
    for k, g in c.grads.items():
        np.testing.assert_allclose(g, m.grads[k + "_l0"], atol=1e-12, err_msg=k)
    with pytest.raises(RuntimeError):
        c.backward(pack(cell, carry))  # the stack is empty now


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_direction_is_forward_on_flipped_sequences(cell, rng):
    T, B, I, H = 7, 4, 3, 5
    lengths = np.array([7, 3, 0, 5])
    bi = make_module(cell, I, H, dtype=np.float64, bidirectional=True, seed=2)
    fw = make_module(cell, I, H, dtype=np.float64, seed=0)
    fw.load_state_dict({k.replace("_reverse", ""): v for k, v in bi.params.items() if "_reverse" in k})
    x = rng.standard_normal((T, B, I))
    flipped = np.zeros_like(x)
    for b, n in enumerate(lengths):
        flipped[:n, b] = x[:n, b][::-1]
    y_bi, s_bi = bi(x, lengths=lengths)
    y_fw, s_fw = fw(flipped, lengths=lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(y_bi[:n, b, H:], y_fw[:n, b][::-1], atol=1e-13)
    for a, b_ in zip(state_tuple(cell, s_bi), state_tuple(cell, s_fw)):
        np.testing.assert_allclose(a[1], b_[0], atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_equals_separate_runs(cell, bidirectional, rng):
    T, I, H = 6, 3, 4
    lengths = [6, 2, 0, 4, 6]
    B = len(lengths)
    m = make_module(cell, I, H, dtype=np.float64, num_layers=2, bidirectional=bidirectional, seed=3)
    L = 2 * (2 if bidirectional else 1)
    n = 2 if has_cell_state(cell) else 1
    x = rng.standard_normal((T, B, I))
    s0 = [rng.standard_normal((L, B, H)) for _ in range(n)]
    dy = rng.standard_normal((T, B, H * L // 2))
    ds = [rng.standard_normal((L, B, H)) for _ in range(n)]
    m.zero_grad()
    y, sn = m(x, pack(cell, s0), lengths=lengths)
    dx, ds0 = m.backward(dy, pack(cell, ds))
    grads = {k: g.copy() for k, g in m.grads.items()}
    total = {k: np.zeros_like(g) for k, g in grads.items()}
    for b, n_b in enumerate(lengths):
        m.zero_grad()
        if n_b == 0:
            np.testing.assert_array_equal(y[:, b], 0)
            for a, s in zip(state_tuple(cell, sn), s0):
                np.testing.assert_array_equal(a[:, b], s[:, b])
            continue
        yb, sb = m(x[:n_b, b:b + 1], pack(cell, [s[:, b:b + 1] for s in s0]))
        dxb, dsb = m.backward(dy[:n_b, b:b + 1], pack(cell, [d[:, b:b + 1] for d in ds]))
        np.testing.assert_allclose(y[:n_b, b], yb[:, 0], atol=1e-13)
        np.testing.assert_array_equal(y[n_b:, b], 0)
        np.testing.assert_allclose(dx[:n_b, b], dxb[:, 0], atol=1e-12)
        np.testing.assert_array_equal(dx[n_b:, b], 0)
        for a, c_ in zip(state_tuple(cell, sn), state_tuple(cell, sb)):
            np.testing.assert_allclose(a[:, b], c_[:, 0], atol=1e-13)
        for a, c_ in zip(state_tuple(cell, ds0), state_tuple(cell, dsb)):
            np.testing.assert_allclose(a[:, b], c_[:, 0], atol=1e-12)
        for k in total:
            total[k] += m.grads[k]
    for k in grads:
        np.testing.assert_allclose(grads[k], total[k], atol=1e-11, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_one_and_two_threads_agree(cell, rng):
    m = make_module(cell, 24, 80, num_layers=2, bidirectional=True, seed=5)
    x = rng.standard_normal((5, 17, 24)).astype(np.float32)
    dy = rng.standard_normal((5, 17, 160)).astype(np.float32)
    out = []
    for threads in (1, 2):
        rnncore.set_num_threads(threads)
        m.zero_grad()
        y, _ = m(x, lengths=[5, 3] * 8 + [1])
        dx, _ = m.backward(dy)
        out.append((y, dx, {k: g.copy() for k, g in m.grads.items()}))
    (y1, dx1, g1), (y2, dx2, g2) = out
    np.testing.assert_allclose(y1, y2, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(dx1, dx2, atol=1e-6, rtol=1e-5)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], atol=2e-5, rtol=1e-4, err_msg=k)


def test_eval_mode_matches_training_mode_and_dropout_applies_only_in_training(rng):
    m = rnncore.LSTM(5, 6, num_layers=3, dropout=0.5, seed=0, dtype=np.float64)
    ref = rnncore.LSTM(5, 6, num_layers=3, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((4, 3, 5))
    m.eval()
    ref.eval()
    np.testing.assert_array_equal(m(x)[0], ref(x)[0])
    m.train()
    ref.train()
    y_drop, _ = m(x)
    y_ref, _ = ref(x)
    assert not np.allclose(y_drop, y_ref)
    # backward through dropout: finite differences with the same masks (the module's rng is
    # re-seeded so each forward draws the same masks)
    wy = rng.standard_normal(y_drop.shape)

    def loss():
        m._rng = np.random.default_rng(99)
        y, _ = m(x)
        return (wy * y).sum()

    m.zero_grad()
    loss()
    dx, _ = m.backward(wy)
    g = m.grads["weight_ih_l1"].copy()
    for arr, grad, idxs in ((m.params["weight_ih_l1"], g, [(0, 0), (5, 3), (23, 5)]),
                            (x, dx, [(0, 0, 0), (3, 2, 4)])):
        for idx in idxs:
            assert abs(central_difference(loss, arr, idx) - grad[idx]) < 1e-7


def central_difference(loss, arr, idx, eps=1e-6):
    v = arr[idx]
    arr[idx] = v + eps
    lp = loss()
    arr[idx] = v - eps
    lm = loss()
    arr[idx] = v
    return (lp - lm) / (2 * eps)
