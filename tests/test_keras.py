"""Keras weights <-> rnncore (rnncore.keras), with Keras 3 itself on its torch backend as the
oracle: the same weights and inputs give the same outputs and final states, for LSTM, GRU with
reset_after True and False (Keras' reset-before GRU, which torch lacks), SimpleRNN tanh and relu,
alone, bidirectional and stacked, with initial states; and back into Keras layers.

The numpy-level conversion (keras_weights / load_keras_weights) is also tested without Keras."""
import os

import numpy as np
import pytest

import rnncore
from conftest import CELLS, has_cell_state, make_module
from rnncore import keras as rnn_keras

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
    _why_not = None if keras.backend.backend() == "torch" else (
        f"the Keras tests run Keras 3 on its torch backend; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}")
except ImportError as e:
    keras = None
    _why_not = f"Keras 3 is not installed (pip install keras torch): {e}"
needs_keras = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

# Keras 3.15 on torch runs the LSTM and the reset-after GRU through torch's fused kernels (exact
# in float64), but ops.matmul of two float64 tensors in float32 (its result_type of two
# torch.float64 dtypes is float32), which the SimpleRNN and reset-before GRU loops use.
TOL = dict(rtol=1e-6, atol=1e-6)
# (num_layers, bidirectional)
LAYOUTS = [(1, False), (1, True), (2, False), (2, True)]


def keras_layer(module_like, units, **kwargs):
    """The Keras layer that computes what an rnncore module computes, chosen from the module's
    own settings (not from rnncore.keras's table), or None."""
    if isinstance(module_like, rnncore.LSTM):
        return None if module_like.peephole else keras.layers.LSTM(units, **kwargs)
    if isinstance(module_like, rnncore.GRU):
        return keras.layers.GRU(units, reset_after=module_like.reset_after, **kwargs)
    if isinstance(module_like, rnncore.RNN):
        return keras.layers.SimpleRNN(units, activation=module_like.nonlinearity, **kwargs)
    raise AssertionError(f"no Keras layer known for {module_like!r}")


def keras_stack(cell, I, H, num_layers, bidirectional, rng, **kwargs):
    """Built Keras layers with random weights (biases included), float64; None if none."""
    like = make_module(cell, 1, 1)
    layers = []
    for k in range(num_layers):
        layer = keras_layer(like, H, return_sequences=True, dtype="float64", **kwargs)
        if layer is None:
            return None
        if bidirectional:
            layer = keras.layers.Bidirectional(layer, dtype="float64")
        layer.build((None, None, I if k == 0 else H * (2 if bidirectional else 1)))
        for v in layer.weights:
            v.assign(rng.uniform(-0.6, 0.6, tuple(v.shape)))
        layers.append(layer)
    return layers


def run_keras(layers, x, initial=None):
    """y and the per-layer final states (lists of numpy arrays, Keras' order)."""
    y, finals = x, []
    for k, layer in enumerate(layers):
        out = layer(y, initial_state=None if initial is None else initial[k])
        y, states = (out[0], out[1:]) if isinstance(out, (list, tuple)) else (out, [])
        finals.append([s.detach().cpu().numpy() for s in states])
    return y.detach().cpu().numpy(), finals


def to_rnncore_states(cell, per_layer, D):
    """Keras' per-layer state lists ([h, (c)] per direction) -> rnncore's h or (h, c)."""
    n = 2 if has_cell_state(cell) else 1
    stacked = [np.stack([s[d * n + j] for s in per_layer for d in range(D)]) for j in range(n)]
    return tuple(stacked) if n == 2 else stacked[0]


def state_list(state):
    return list(state) if isinstance(state, tuple) else [state]


@needs_keras
@pytest.mark.parametrize("num_layers,bidirectional", LAYOUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_keras_layers_load_and_save_back(cell, num_layers, bidirectional, rng):
    I, H, B, T = 3, 4, 2, 6
    D = 2 if bidirectional else 1
    layers = keras_stack(cell, I, H, num_layers, bidirectional, rng, return_state=True)
    if layers is None:  # no Keras layer computes this cell
        with pytest.raises(ValueError, match="no Keras layer|which no Keras layer"):
            rnn_keras.to_keras(make_module(cell, I, H))
        return
    x = rng.standard_normal((B, T, I))
    n = 2 if has_cell_state(cell) else 1
    initial = [[rng.standard_normal((B, H)) for _ in range(n * D)] for _ in range(num_layers)]
    y, finals = run_keras(layers, x, initial)

    m = rnn_keras.from_keras(layers)
    assert (m.cell, m.num_layers, m.bidirectional, m.batch_first, m.dtype) == (
        cell, num_layers, bidirectional, True, np.float64)
    h0 = to_rnncore_states(cell, initial, D)
    y_m, final_m = m(x, h0)
    np.testing.assert_allclose(y_m, y, **TOL)
    for got, want in zip(state_list(final_m), state_list(to_rnncore_states(cell, finals, D))):
        np.testing.assert_allclose(got, want, **TOL)

    # change the weights in rnncore, write them back into the same Keras layers
    for p in m.params.values():
        p += rng.uniform(-0.2, 0.2, p.shape)
    assert rnn_keras.to_keras(m, layers) == layers
    y2, finals2 = run_keras(layers, x, initial)
    y2_m, final2_m = m(x, h0)
    assert np.abs(y2 - y).max() > 1e-3
    np.testing.assert_allclose(y2_m, y2, **TOL)
    for got, want in zip(state_list(final2_m), state_list(to_rnncore_states(cell, finals2, D))):
        np.testing.assert_allclose(got, want, **TOL)


@needs_keras
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("cell", [c for c in CELLS if rnn_keras._cell_form(c) is not None])
def test_new_keras_layers_from_a_module(cell, num_layers, bidirectional, rng):
    m = make_module(cell, 3, 5, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=True, bias=cell != "rnn_relu", dtype=np.float64, seed=8)
    if cell == "rnn_relu":  # its biases start at zero and W_hh at the identity: perturb them
        for p in m.params.values():
            p += rng.uniform(-0.3, 0.3, p.shape)
    layers = rnn_keras.to_keras(m)
    assert len(layers) == num_layers
    assert all(layer.dtype == "float64" for layer in layers)
    x = rng.standard_normal((2, 7, 3))
    y, _ = run_keras(layers, x)
    np.testing.assert_allclose(y, m(x)[0], **TOL)
    # and from those Keras layers back: the same outputs
    np.testing.assert_allclose(rnn_keras.from_keras(layers)(x)[0], m(x)[0], rtol=1e-12,
                               atol=1e-12)


@needs_keras
def test_from_a_keras_model_and_float32(rng):
    model = keras.Sequential([
        keras.Input((None, 3)),
        keras.layers.GRU(4, return_sequences=True, reset_after=False),
        keras.layers.GRU(4, reset_after=False),
        keras.layers.Dense(2),
    ])
    m = rnn_keras.from_keras(model, batch_first=False)
    assert (m.num_layers, m.reset_after, m.dtype, m.batch_first) == (2, False, np.float32, False)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    last = model.layers[1](model.layers[0](x)).detach().numpy()  # the second GRU's final h
    _, h_n = m(x.transpose(1, 0, 2))
    np.testing.assert_allclose(h_n[-1], last, rtol=1e-5, atol=1e-5)
    assert rnn_keras.from_keras(model, dtype=np.float64).dtype == np.float64


@needs_keras
def test_keras_settings_rnncore_does_not_compute(rng):
    def built(layer, in_size=3):
        layer.build((None, None, in_size))
        return layer
    cases = [
        (keras.layers.LSTM(4, recurrent_activation="hard_sigmoid"),
         "recurrent_activation='hard_sigmoid'"),
        (keras.layers.SimpleRNN(4, activation="sigmoid"), "activation='sigmoid'"),
        (keras.layers.GRU(4, activation="relu"), "activation='relu'"),
        (keras.layers.GRU(4, go_backwards=True), "go_backwards=True"),
        (keras.layers.Bidirectional(keras.layers.LSTM(4), merge_mode="sum"), "merge_mode='sum'"),
    ]
    for layer, message in cases:
        with pytest.raises(ValueError, match=message):
            rnn_keras.from_keras(built(layer))
    with pytest.raises(ValueError, match="not built"):
        rnn_keras.from_keras(keras.layers.LSTM(4))
    with pytest.raises(ValueError, match=r"layers\[1\] differs from layers\[0\] in units"):
        rnn_keras.from_keras([built(keras.layers.LSTM(4)), built(keras.layers.LSTM(5), 4)])
    with pytest.raises(ValueError, match=r"layers\[1\] differs from layers\[0\] in cell"):
        rnn_keras.from_keras([built(keras.layers.GRU(4)),
                              built(keras.layers.GRU(4, reset_after=False), 4)])
    with pytest.raises(ValueError, match=r"layers\[1\] takes 3 inputs, expected 4"):
        rnn_keras.from_keras([built(keras.layers.LSTM(4)), built(keras.layers.LSTM(4))])
    with pytest.raises(TypeError, match=r"layers\[1\] must be a Keras LSTM"):
        rnn_keras.from_keras([built(keras.layers.LSTM(4)), keras.layers.Dense(3)])
    m = make_module("gru", 3, 4)
    with pytest.raises(ValueError, match=r"layers\[0\] has units=5, the module .* needs 4"):
        rnn_keras.to_keras(m, [keras.layers.GRU(5)])
    with pytest.raises(ValueError, match=r"layers\[0\] has cell='gru_reset_before'"):
        rnn_keras.to_keras(m, keras.layers.GRU(4, reset_after=False))
    with pytest.raises(ValueError, match="2 Keras recurrent layers for a module with num_layers=1"):
        rnn_keras.to_keras(m, [keras.layers.GRU(4), keras.layers.GRU(4)])


# ---- numpy level: no Keras needed -------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_keras_weights_round_trip_without_keras(cell, rng):
    m = make_module(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=6)
    if rnn_keras._cell_form(cell) is None:
        with pytest.raises(ValueError, match="which no Keras layer computes"):
            rnn_keras.keras_weights(m)
        return
    weights = rnn_keras.keras_weights(m)
    G = m.gates
    split = cell == "gru"
    bias_shape = (2, G * 4) if split else (G * 4,)
    assert [w.shape for w in weights[0]] == [(3, G * 4), (4, G * 4), bias_shape] * 2
    assert [w.shape for w in weights[1]] == [(8, G * 4), (4, G * 4), bias_shape] * 2
    back = rnn_keras.load_keras_weights(make_module(cell, 3, 4, num_layers=2, bidirectional=True,
                                                    dtype=np.float64, seed=99), weights)
    x = rng.standard_normal((5, 2, 3))
    np.testing.assert_allclose(back(x)[0], m(x)[0], rtol=1e-13, atol=1e-13)
    if not split:  # the two biases merge into Keras' one: bias_hh comes back as zero
        assert not back.params["bias_hh_l0"].any()


def test_keras_gate_orders_written_out():
    """The mapping on a module whose gate blocks are numbered: Keras' LSTM keeps [i, f, c, o],
    Keras' GRU holds [z, r, h] = our blocks [1, 0, 2] of [r, z, n]."""
    for cell, keras_blocks in (("lstm", [0, 1, 2, 3]), ("gru_reset_before", [1, 0, 2])):
        m = make_module(cell, 1, 1, dtype=np.float64)
        G = m.gates
        m.params["weight_ih_l0"][:, 0] = np.arange(G)
        m.params["bias_ih_l0"][:] = np.arange(G)
        m.params["bias_hh_l0"][:] = 10 * np.arange(G)
        kernel, _, bias = rnn_keras.keras_weights(m)[0]
        assert kernel[0].tolist() == keras_blocks
        assert bias.tolist() == [11 * k for k in keras_blocks]


def test_load_keras_weights_refusals():
    m = make_module("lstm", 3, 4, num_layers=2)
    good = rnn_keras.keras_weights(m)
    with pytest.raises(ValueError, match=r"a list of 2 per-layer lists \(num_layers\), got 1"):
        rnn_keras.load_keras_weights(m, good[:1])
    with pytest.raises(ValueError, match=r"weights\[1\] must hold 3 arrays"):
        rnn_keras.load_keras_weights(m, [good[0], good[1][:2]])
    bad = [good[0], [good[1][0][:3], good[1][1], good[1][2]]]
    with pytest.raises(ValueError, match=r"weights\[1\]\[0\], the kernel, must have shape "
                                         r"\(4, 16\), got \(3, 16\)"):
        rnn_keras.load_keras_weights(m, bad)
    with pytest.raises(TypeError, match="rnncore RNN, LSTM or GRU module"):
        rnn_keras.keras_weights(object())
