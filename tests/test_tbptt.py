"""Truncated BPTT: one window over the whole sequence is full BPTT; shorter windows equal a
hand-built chunked run (k1 = k2 and k1 < k2); a run resumed from an Update equals one that never
stopped."""
import numpy as np
import pytest

import rnncore
from rnncore.lm import LanguageModel
from rnncore.losses import cross_entropy
from rnncore.tbptt import batchify, evaluate, truncated_bptt


def _model(cell="lstm"):
    return LanguageModel(11, embed=5, hidden=7, layers=2, cell=cell, seed=0, dtype=np.float64)


def _data(rng, T=23, B=3):
    streams = batchify(rng.integers(0, 11, T * B + B), B)
    return streams[:-1], streams[1:]


def _grads(model):
    return {k: v.copy() for k, v in model.grads.items()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_one_window_over_the_whole_sequence_is_full_bptt(cell, rng):
    x, y = _data(rng)
    full = _model(cell)
    logits, _ = full.forward(x)
    loss, d = cross_entropy(logits, y)
    full.zero_grad()
    full.backward(d)
    tb = _model(cell)
    updates = list(truncated_bptt(tb, cross_entropy, x, y, k1=len(x)))
    assert len(updates) == 1 and updates[0].loss == loss
    for k, g in full.grads.items():
        np.testing.assert_array_equal(tb.grads[k], g, err_msg=k)


@pytest.mark.parametrize("k1, k2", [(5, 5), (4, 9), (3, 7), (6, 12)])
def test_windows_equal_a_hand_built_chunked_run(k1, k2, rng):
    """Per update: the state at the window's start from a plain forward of everything before it,
    a forward over the window, the loss on its k1 new steps, BPTT through all of it."""
    x, y = _data(rng)
    T = len(x)
    tb = _model()
    got = []
    for u in truncated_bptt(tb, cross_entropy, x, y, k1=k1, k2=k2):
        got.append((u.loss, u.start, u.stop, u.window_start, _grads(tb)))
    ref = _model()
    p, n = 0, 0
    while p < T:
        q = min(p + k1, T)
        w = max(0, q - k2)
        with rnncore.no_grad():
            _, s0 = ref.forward(x[:w]) if w > 0 else (None, None)
        logits, _ = ref.forward(x[w:q], s0)
        loss, d = cross_entropy(logits[p - w:], y[p:q])
        dl = np.zeros_like(logits)
        dl[p - w:] = d
        ref.zero_grad()
        ref.backward(dl)
        g_loss, g_start, g_stop, g_w, g_grads = got[n]
        assert (g_start, g_stop, g_w) == (p, q, w)
        assert g_loss == pytest.approx(loss, rel=1e-12)
        for k, g in ref.grads.items():
            np.testing.assert_allclose(g_grads[k], g, rtol=1e-10, atol=1e-12, err_msg=k)
        p, n = q, n + 1
    assert n == len(got)


@pytest.mark.parametrize("k1, k2", [(4, 4), (3, 8)])
def test_resuming_from_an_update_equals_not_stopping(k1, k2, rng):
    x, y = _data(rng, T=30)
    a = _model()
    whole = [(u.loss, _grads(a)) for u in truncated_bptt(a, cross_entropy, x, y, k1, k2)]
    b = _model()
    first = truncated_bptt(b, cross_entropy, x, y, k1, k2)
    for _ in range(3):
        u = next(first)  # stop after three updates ...
    rest = [(v.loss, _grads(b)) for v in  # ... and go on in a new run from where it stopped
            truncated_bptt(b, cross_entropy, x, y, k1, k2, start=u.stop, kept=u.kept)]
    assert len(rest) == len(whole) - 3
    for (la, ga), (lb, gb) in zip(whole[3:], rest):
        assert la == lb
        for k in ga:
            np.testing.assert_array_equal(ga[k], gb[k])


def test_state_is_carried_but_no_gradient_crosses_a_window_start(rng):
    """The second window starts from the first one's final state (its output depends on it), but
    backward sends nothing into that state: the first window's steps get no gradient from the
    second window's loss."""
    x, y = _data(rng, T=10)
    m = _model()
    updates = list(truncated_bptt(m, cross_entropy, x, y, k1=5))
    fresh = _model()
    logits_fresh, _ = fresh.forward(x[5:])
    logits_carried, _ = fresh.forward(x[5:], updates[0].state)
    assert not np.allclose(logits_fresh, logits_carried)


def test_batchify_and_argument_errors(rng):
    s = batchify(np.arange(10), 3)
    np.testing.assert_array_equal(s, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    with pytest.raises(ValueError, match="at least 2"):
        batchify(np.arange(5), 3)
    with pytest.raises(ValueError, match="must be 1-D"):
        batchify(np.zeros((2, 3)), 1)
    x, y = _data(rng)
    m = _model()
    with pytest.raises(ValueError, match="k2 must be >= k1"):
        next(truncated_bptt(m, cross_entropy, x, y, k1=5, k2=3))
    with pytest.raises(ValueError, match="k1 must be a positive int"):
        next(truncated_bptt(m, cross_entropy, x, y, k1=0))
    with pytest.raises(ValueError, match="same length"):
        next(truncated_bptt(m, cross_entropy, x, y[:-1], k1=5))


def test_evaluate_is_the_mean_over_every_target(rng):
    x, y = _data(rng)
    m = _model()
    loss, _ = evaluate(m, cross_entropy, x, y, chunk=4)
    whole, _ = cross_entropy(m.forward(x)[0], y)
    assert loss == pytest.approx(whole, rel=1e-12)
    assert m.rnn._tape is not None  # training mode: the last forward above kept its tape ...
    m.eval()
    assert evaluate(m, cross_entropy, x, y, chunk=100)[0] == pytest.approx(whole, rel=1e-12)
