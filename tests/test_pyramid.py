"""Pyramid encoder (rnncore.pyramid): exact against plain rnncore layers with an explicit frame
pairing, odd lengths, lengths in a batch vs alone, float64 finite differences."""
import numpy as np
import pytest

import rnncore
from rnncore.pyramid import PyramidEncoder


def _explicit_pairs(y):
    """Written independently of pair_frames: even and odd frames side by side, a zero partner
    for an odd last frame."""
    T, B, F = y.shape
    out = np.zeros(((T + 1) // 2, B, 2 * F), dtype=y.dtype)
    for t in range(T):
        out[t // 2, :, (t % 2) * F:(t % 2 + 1) * F] = y[t]
    return out


@pytest.mark.parametrize("cell, T, layers", [("lstm", 13, 3), ("gru", 8, 2), ("lstm", 5, 4),
                                             (rnncore.GRU, 6, 3)])
def test_matches_plain_layers_and_explicit_pairing(rng, cell, T, layers):
    B, I, H = 3, 4, 5
    enc = PyramidEncoder(I, H, num_layers=layers, cell=cell, dtype=np.float64, seed=1)
    make = (lambda *a, **kw: rnncore.nn.registry.make_module(cell, *a, **kw)) \
        if isinstance(cell, str) else cell
    plain = [make(I if k == 0 else 4 * H, H, bidirectional=True, dtype=np.float64)
             for k in range(layers)]
    for k, m in enumerate(plain):
        m.load_state_dict(enc.layers[k].state_dict())
    x = rng.standard_normal((T, B, I))
    lengths = np.array([T, T - 2, 1])
    y, out_len = enc(x, lengths)

    inputs, lens, h = [], lengths, x
    for k, m in enumerate(plain):
        if k:
            h = _explicit_pairs(h)
            lens = -(-lens // 2)
        inputs.append(h.shape[0])
        h, _ = m(h, lengths=lens)
    np.testing.assert_array_equal(y, h)
    np.testing.assert_array_equal(out_len, lens)
    assert y.shape[0] == len(range(0, T, 2 ** (layers - 1)))  # ceil(T / 2^(L-1))

    dy = rng.standard_normal(y.shape)
    enc.zero_grad()
    dx = enc.backward(dy)
    d = dy
    for k in range(layers - 1, -1, -1):
        plain[k].zero_grad()
        d = plain[k].backward(d)[0]
        if k:  # the adjoint of the explicit pairing, again written out
            F = d.shape[2] // 2
            n = inputs[k - 1]
            back = np.zeros((n, B, F))
            for t in range(n):
                back[t] = d[t // 2, :, (t % 2) * F:(t % 2 + 1) * F]
            d = back
    np.testing.assert_array_equal(dx, d)
    for k, m in enumerate(plain):
        for name, g in m.grads.items():
            np.testing.assert_array_equal(enc.grads[f"layer{k}.{name}"], g)


def test_a_sequence_alone_equals_it_in_a_batch(rng):
    enc = PyramidEncoder(3, 4, num_layers=3, dtype=np.float64, seed=2)
    x = rng.standard_normal((11, 3, 3))
    lengths = np.array([11, 7, 5])
    y, out_len = enc(x, lengths)
    assert out_len.tolist() == [3, 2, 2]
    for b in range(3):
        alone, n = enc(x[:lengths[b], b:b + 1])
        assert n.tolist() == [out_len[b]]
        np.testing.assert_allclose(y[:out_len[b], b], alone[:, 0], rtol=1e-12, atol=1e-14)
        assert not y[out_len[b]:, b].any()


def test_finite_differences_float64(rng):
    enc = PyramidEncoder(2, 3, num_layers=3, cell="lstm", dtype=np.float64, seed=3)
    x = rng.standard_normal((7, 2, 2))
    lengths = np.array([7, 4])
    y, _ = enc(x, lengths)
    w = rng.standard_normal(y.shape)
    enc.zero_grad()
    dx = enc.backward(w)

    def loss():
        enc.eval()
        out = float(np.sum(enc(x, lengths)[0] * w))
        enc.train()
        return out

    eps = 1e-6
    for idx in [(0, 0, 0), (3, 1, 1), (5, 0, 1), (6, 0, 0)]:
        x[idx] += eps
        up = loss()
        x[idx] -= 2 * eps
        down = loss()
        x[idx] += eps
        np.testing.assert_allclose(dx[idx], (up - down) / (2 * eps), atol=1e-8)
    assert not dx[4:, 1].any()  # past sample 1's length
    for name in ("layer0.weight_ih_l0", "layer1.weight_hh_l0_reverse", "layer2.bias_ih_l0"):
        p, g = enc.params[name], enc.grads[name]
        for flat in rng.choice(p.size, 3, replace=False):
            idx = np.unravel_index(flat, p.shape)
            p[idx] += eps
            up = loss()
            p[idx] -= 2 * eps
            down = loss()
            p[idx] += eps
            np.testing.assert_allclose(g[idx], (up - down) / (2 * eps), atol=1e-8)


def test_errors():
    enc = PyramidEncoder(3, 4, num_layers=2)
    with pytest.raises(RuntimeError, match="training-mode forward"):
        enc.backward(np.zeros((2, 1, 8), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, input_size\)"):
        enc(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="num_layers must be a positive integer, got 0"):
        PyramidEncoder(3, 4, num_layers=0)
