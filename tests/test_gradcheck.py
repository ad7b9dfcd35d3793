"""Float64 central finite differences on the public modules: every input, initial state and
parameter, with random weights on every output and on the final states."""
import numpy as np
import pytest

from conftest import CELLS, has_cell_state, make_module, state_tuple


def check_module(cell, rng, lengths=None, **kw):
    T, B, I, H = 4, 3, 3, 3
    m = make_module(cell, I, H, dtype=np.float64, seed=7, **kw)
    L = m.num_layers * m.num_directions
    lstm = has_cell_state(cell)
    batch_first = kw.get("batch_first", False)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    s0 = [rng.standard_normal((L, B, H)) for _ in range(2 if lstm else 1)]
    y0, _ = m(x, tuple(s0) if lstm else s0[0], lengths=lengths)
    wy = rng.standard_normal(y0.shape)
    ws = [rng.standard_normal((L, B, H)) for _ in s0]

    def loss():
        y, sn = m(x, tuple(s0) if lstm else s0[0], lengths=lengths)
        return (wy * y).sum() + sum((w * s).sum() for w, s in zip(ws, state_tuple(cell, sn)))

    m.train()
    m.zero_grad()
    loss()
    dx, ds0 = m.backward(wy, tuple(ws) if lstm else ws[0])
    m.eval()  # finite differences need no workspace
    eps = 1e-6

    def numeric(arr):
        g = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            v = arr[idx]
            arr[idx] = v + eps
            lp = loss()
            arr[idx] = v - eps
            lm = loss()
            arr[idx] = v
            g[idx] = (lp - lm) / (2 * eps)
        return g

    for name, p in m.params.items():
        np.testing.assert_allclose(m.grads[name], numeric(p), atol=1e-7, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(dx, numeric(x), atol=1e-7, rtol=1e-6, err_msg="dx")
    for k, (g, s) in enumerate(zip(state_tuple(cell, ds0), s0)):
        np.testing.assert_allclose(g, numeric(s), atol=1e-7, rtol=1e-6, err_msg=f"dstate{k}")


@pytest.mark.parametrize("cell", CELLS)
def test_single_layer(cell, rng):
    check_module(cell, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_two_layers_bidirectional_with_lengths(cell, rng):
    check_module(cell, rng, lengths=np.array([4, 0, 2]), num_layers=2, bidirectional=True)


@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_without_bias(cell, rng):
    check_module(cell, rng, batch_first=True, bias=False)


def test_gru_lecture_form_through_the_module(rng):
    """rnncore.GRU(reset_after=False) with the z rows of both weights and both biases negated
    computes the lecture's h = (1 - z) h_prev + z h~ (DESIGN.md §3, docs/cells.md)."""
    import rnncore
    T, B, I, H = 6, 2, 3, 5
    m = rnncore.GRU(I, H, reset_after=False, dtype=np.float64, seed=1)
    Wz, Uz = m.params["weight_ih_l0"][H:2 * H].copy(), m.params["weight_hh_l0"][H:2 * H].copy()
    bz = m.params["bias_ih_l0"][H:2 * H] + m.params["bias_hh_l0"][H:2 * H]
    Wr, Ur = m.params["weight_ih_l0"][:H], m.params["weight_hh_l0"][:H]
    br = m.params["bias_ih_l0"][:H] + m.params["bias_hh_l0"][:H]
    Wn, Un = m.params["weight_ih_l0"][2 * H:], m.params["weight_hh_l0"][2 * H:]
    bin_, bhn = m.params["bias_ih_l0"][2 * H:], m.params["bias_hh_l0"][2 * H:]
    x = rng.standard_normal((T, B, I))
    sig = lambda a: 1 / (1 + np.exp(-a))
    h = np.zeros((B, H))
    ys = []
    for t in range(T):  # the lecture's cell, with its own z
        z = sig(x[t] @ Wz.T + h @ Uz.T + bz)
        r = sig(x[t] @ Wr.T + h @ Ur.T + br)
        cand = np.tanh(x[t] @ Wn.T + bin_ + (r * h) @ Un.T + bhn)
        h = (1 - z) * h + z * cand
        ys.append(h)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        m.params[name][H:2 * H] *= -1
    y, hn = m(x)
    np.testing.assert_allclose(y, np.stack(ys), atol=1e-12)
    np.testing.assert_allclose(hn[0], h, atol=1e-12)
