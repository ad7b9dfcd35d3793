"""The oracle itself: reference.py against finite differences and against PyTorch 2.13."""
import numpy as np
import pytest

from conftest import CELLS, cells_with_torch_twin, torch_twin
from rnncore.testing import reference


def weighted_loss(cell, p, x, state, reverse, lengths, wy, ws):
    y, sn, _ = reference.forward(cell, x, state, p, reverse=reverse, lengths=lengths)
    return (wy * y).sum() + sum((w * s).sum() for w, s in zip(ws, sn))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 0, 2]])
def test_reference_backward_matches_finite_differences(cell, reverse, lengths, rng):
    T, B, I, H = 4, 3, 5, 4
    p = reference.init_params(cell, I, H, rng)
    x = rng.standard_normal((T, B, I))
    state = tuple(rng.standard_normal((B, H)) for _ in range(2 if reference.has_cell_state(cell) else 1))
    wy = rng.standard_normal((T, B, H))
    ws = tuple(rng.standard_normal((B, H)) for _ in state)
    _, _, cache = reference.forward(cell, x, state, p, reverse=reverse, lengths=lengths)
    dx, dstate, dp = reference.backward(cache, wy, ws)
    f = lambda p_, x_, s_: weighted_loss(cell, p_, x_, s_, reverse, lengths, wy, ws)
    eps = 1e-6

    def fd(get, set_, shape):
        out = np.zeros(shape)
        for idx in np.ndindex(*shape):
            v = get(idx)
            set_(idx, v + eps)
            lp = f(*current())
            set_(idx, v - eps)
            lm = f(*current())
            set_(idx, v)
            out[idx] = (lp - lm) / (2 * eps)
        return out

    q = {k: (None if v is None else v.copy()) for k, v in p.items()}
    xs = x.copy()
    ss = [s.copy() for s in state]
    current = lambda: (q, xs, tuple(ss))
    for k, v in q.items():
        num = fd(lambda i: q[k][i], lambda i, val: q[k].__setitem__(i, val), v.shape)
        np.testing.assert_allclose(dp[k], num, atol=1e-7, rtol=1e-6, err_msg=k)
    num = fd(lambda i: xs[i], lambda i, val: xs.__setitem__(i, val), xs.shape)
    np.testing.assert_allclose(dx, num, atol=1e-7, rtol=1e-6, err_msg="dx")
    for j in range(len(ss)):
        num = fd(lambda i: ss[j][i], lambda i, val: ss[j].__setitem__(i, val), ss[j].shape)
        np.testing.assert_allclose(dstate[j], num, atol=1e-7, rtol=1e-6, err_msg=f"dstate{j}")


@pytest.mark.parametrize("cell", cells_with_torch_twin())
@pytest.mark.parametrize("direction", ["forward", "reverse", "packed"])
def test_reference_matches_torch(cell, direction, rng):
    import torch  # PyTorch 2.13 is an independent oracle
    T, B, I, H = 5, 4, 3, 6
    torch_cls, kw = torch_twin(cell)
    bidir = direction == "reverse"
    tm = torch_cls(I, H, bidirectional=bidir, dtype=torch.float64, **kw)
    sfx = "_l0_reverse" if bidir else "_l0"
    sd = tm.state_dict()
    p = {"w_ih": sd["weight_ih" + sfx].numpy(), "w_hh": sd["weight_hh" + sfx].numpy(),
         "b_ih": sd["bias_ih" + sfx].numpy(), "b_hh": sd["bias_hh" + sfx].numpy()}
    lengths = [5, 2, 4, 1] if direction == "packed" else None
    lstm = reference.has_cell_state(cell)
    D = 2 if bidir else 1
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((D, B, H))
    c0 = rng.standard_normal((D, B, H))
    wy = rng.standard_normal((T, B, H))
    wh = rng.standard_normal((B, H))
    wc = rng.standard_normal((B, H))
    d = D - 1
    state = (h0[d], c0[d]) if lstm else (h0[d],)
    y, sn, cache = reference.forward(cell, x, state, p, reverse=bidir, lengths=lengths)
    dx, ds0, dp = reference.backward(cache, wy, (wh, wc) if lstm else (wh,))

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    hx = (h0t, c0t) if lstm else h0t
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        yt, st = tm(packed, hx)
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)
    else:
        yt, st = tm(xt, hx)
    hn = st[0] if lstm else st
    yt_d = yt[:, :, d * H:(d + 1) * H]
    loss = (yt_d * torch.tensor(wy)).sum() + (hn[d] * torch.tensor(wh)).sum()
    if lstm:
        loss = loss + (st[1][d] * torch.tensor(wc)).sum()
    loss.backward()
    np.testing.assert_allclose(y, yt_d.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(sn[0], hn[d].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ds0[0], h0t.grad.numpy()[d], atol=1e-12)
    if lstm:
        np.testing.assert_allclose(sn[1], st[1][d].detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(ds0[1], c0t.grad.numpy()[d], atol=1e-12)
    for k, stem in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
        np.testing.assert_allclose(dp[k], dict(tm.named_parameters())[stem + sfx].grad.numpy(),
                                   atol=1e-12, err_msg=k)


def test_lecture_gru_form_is_reset_before_with_z_negated(rng):
    """The lecture writes h = (1 - z) h_prev + z h~ (z = sigmoid(W_z x + U_z h + b_z),
    h~ = tanh(W x + U (r * h_prev) + b)). rnncore's gru_reset_before computes the same after
    negating the z rows of both weights and both biases (docs/cells.md)."""
    T, B, I, H = 5, 3, 4, 6
    W = {g: rng.standard_normal((H, I)) * 0.5 for g in "rzn"}
    U = {g: rng.standard_normal((H, H)) * 0.5 for g in "rzn"}
    b = {g: rng.standard_normal(H) * 0.5 for g in "rzn"}
    x = rng.standard_normal((T, B, I))
    h = rng.standard_normal((B, H))
    h0 = h.copy()
    sig = lambda a: 1 / (1 + np.exp(-a))
    lecture = []
    for t in range(T):
        z = sig(x[t] @ W["z"].T + h @ U["z"].T + b["z"])
        r = sig(x[t] @ W["r"].T + h @ U["r"].T + b["r"])
        cand = np.tanh(x[t] @ W["n"].T + (r * h) @ U["n"].T + b["n"])
        h = (1 - z) * h + z * cand
        lecture.append(h)
    p = {"w_ih": np.concatenate([W["r"], -W["z"], W["n"]]),
         "w_hh": np.concatenate([U["r"], -U["z"], U["n"]]),
         "b_ih": np.concatenate([b["r"], -b["z"], b["n"]]),
         "b_hh": np.zeros(3 * H)}
    y, (hn,), _ = reference.forward("gru_reset_before", x, (h0,), p)
    np.testing.assert_allclose(y, np.stack(lecture), atol=1e-12)
    np.testing.assert_allclose(hn, h, atol=1e-12)
