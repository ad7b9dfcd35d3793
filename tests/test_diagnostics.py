"""Gradient-flow diagnostics: ||dL/dh_t|| recorded by the C++ backward equals the per-step
gradient norm of the reference loops; ||dh_T/dh_t|| equals the Jacobian built column by column
from the reference; the plot is written (or skipped with a note without matplotlib)."""
import sys

import numpy as np
import pytest

import rnncore
from rnncore import diagnostics
from rnncore.testing import reference
from conftest import CELLS, has_cell_state, make_module, ref_params_of


@pytest.mark.parametrize("cell", CELLS)
def test_recorded_norms_equal_the_reference_per_step_norms(cell, rng):
    """Two layers, bidirectional, ragged lengths, initial-state gradients: every layer-direction's
    ||dL/dh_t|| against the reference backward run layer by layer."""
    T, B, I, H, L, D = 6, 4, 3, 5, 2, 2
    m = make_module(cell, I, H, num_layers=L, bidirectional=True, dtype=np.float64, seed=3)
    m.record_grad_norms = True
    n_states = 2 if has_cell_state(cell) else 1
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 3, 0, 5])
    dy = rng.standard_normal((T, B, D * H))
    for b, n in enumerate(lengths):
        dy[n:, b] = 0
    dstate = [rng.standard_normal((L * D, B, H)) for _ in range(n_states)]
    y, _ = m(x, lengths=lengths)
    m.backward(dy, tuple(dstate) if n_states == 2 else dstate[0])
    assert m.grad_norms.shape == (L * D, T)

    inp, caches = x, []
    for layer in range(L):
        outs = []
        for d in range(D):
            zeros = tuple(np.zeros((B, H)) for _ in range(n_states))
            yd, _, cache = reference.forward(cell, inp, zeros,
                                             ref_params_of(m, f"_l{layer}" + ("_reverse" if d else "")),
                                             reverse=d == 1, lengths=lengths)
            outs.append(yd)
            caches.append(cache)
        inp = np.concatenate(outs, axis=2)
    expected = np.zeros((L * D, T))
    dout = dy
    for layer in reversed(range(L)):
        din = 0
        for d in range(D):
            i = layer * D + d
            dx, _, _ = reference.backward(caches[i], dout[..., d * H:(d + 1) * H],
                                          tuple(s[i] for s in dstate), grad_norms=expected[i])
            din = din + dx
        dout = din
    np.testing.assert_allclose(m.grad_norms, expected, rtol=1e-12, atol=1e-12)
    assert np.all(m.grad_norms[:, lengths.max():] == 0) or lengths.max() == T


def test_norms_do_not_depend_on_the_thread_count(rng):
    m = rnncore.LSTM(16, 64, num_layers=2, seed=0)
    m.record_grad_norms = True
    x = rng.standard_normal((30, 32, 16)).astype(np.float32)
    runs = []
    for threads in (1, 2):
        rnncore.set_num_threads(threads)
        y, _ = m(x)
        m.backward(np.ones_like(y))
        runs.append(m.grad_norms.copy())
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def test_not_recorded_unless_asked(rng):
    m = rnncore.GRU(3, 4, seed=0)
    y, _ = m(rng.standard_normal((5, 2, 3)))
    m.backward(np.ones_like(y))
    assert m.grad_norms is None
    with pytest.raises(RuntimeError, match="record_grad_norms"):
        diagnostics.gradient_norms(m)


def test_record_grad_norms_reaches_layers_inside_a_model(rng):
    class Net(rnncore.Model):
        def __init__(self):
            super().__init__()
            self.rnn = rnncore.LSTM(3, 4, num_layers=2, seed=0)
            self.head = rnncore.Linear(4, 2, seed=0)

    net = diagnostics.record_grad_norms(Net())
    y, _ = net.rnn(rng.standard_normal((7, 2, 3)))
    net.rnn.backward(np.ones_like(y))
    norms = diagnostics.gradient_norms(net)
    assert list(norms) == ["rnn"] and norms["rnn"].shape == (2, 7)
    with pytest.raises(ValueError, match="no rnncore recurrent layer"):
        diagnostics.record_grad_norms(rnncore.Sequential(rnncore.Linear(2, 2)))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_jacobian_norms_equal_the_reference_jacobian(cell, rng):
    """||dh_{T-1}/dh_t||_F built column by column: the reference back-propagates each unit vector
    e_i from h_{T-1} and the per-step gradient is row i of the Jacobian."""
    T, I, H = 8, 3, 5
    m = make_module(cell, I, H, dtype=np.float64, seed=4)
    x = rng.standard_normal((T, I))
    got = diagnostics.jacobian_norms(m, x)
    assert got.shape == (1, T)
    n_states = 2 if has_cell_state(cell) else 1
    zeros = tuple(np.zeros((1, H)) for _ in range(n_states))
    _, _, cache = reference.forward(cell, x[:, None, :], zeros, ref_params_of(m))
    squares = np.zeros(T)
    for i in range(H):
        dh = np.zeros((1, H))
        dh[0, i] = 1
        norms = np.zeros(T)
        reference.backward(cache, np.zeros((T, 1, H)), (dh,) + zeros[1:], grad_norms=norms)
        squares += norms ** 2
    np.testing.assert_allclose(got[0], np.sqrt(squares), rtol=1e-10)
    assert got[0, -1] == pytest.approx(np.sqrt(H))  # dh_{T-1}/dh_{T-1} = I
    assert m._tape is None  # the module itself was not used


def test_jacobian_norms_show_the_irnn_keeping_gradients_and_tanh_losing_them(rng):
    """Le, Jaitly & Hinton (2015): identity-initialised ReLU RNNs do not lose the gradient over
    time at initialisation; a small-weight tanh RNN loses it geometrically."""
    x = rng.standard_normal((60, 8, 1)) * 0.1
    irnn = rnncore.RNN(1, 32, nonlinearity="relu", dtype=np.float64, seed=0)
    tanh = rnncore.RNN(1, 32, dtype=np.float64, seed=0)
    j_irnn = diagnostics.jacobian_norms(irnn, x)[0]
    j_tanh = diagnostics.jacobian_norms(tanh, x)[0]
    assert j_irnn[0] > 0.2 * j_irnn[-1]  # the units that stay active keep theirs undiminished
    assert j_tanh[0] < 1e-3 * j_tanh[-1]


def test_jacobian_norms_reject_what_they_cannot_do():
    with pytest.raises(ValueError, match="unidirectional"):
        diagnostics.jacobian_norms(rnncore.GRU(2, 3, bidirectional=True), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="input_size=2"):
        diagnostics.jacobian_norms(rnncore.GRU(2, 3), np.zeros((4, 3)))
    with pytest.raises(TypeError, match="recurrent module"):
        diagnostics.jacobian_norms(rnncore.Linear(2, 3), np.zeros((4, 2)))


def test_plot_is_written_and_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    path = diagnostics.plot_gradient_flow({"tanh": np.geomspace(1, 1e-6, 20),
                                           "lstm": np.ones(20)}, tmp_path / "flow.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert diagnostics.plot_gradient_flow({"a": [1, 2]}, tmp_path / "none.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
