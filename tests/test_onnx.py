"""ONNX export and import (rnncore.onnx) against onnxruntime and onnx's own reference evaluator.

Exported models run in onnxruntime (float32, its CPU operators have no float64) with the outputs
and final states of the rnncore module, for every registry cell, both directions, stacks,
batch_first, initial states and lengths (0 and T included). Import is checked on ONNX nodes
written here straight from random ONNX-layout weights (never through the exporter), run by
onnxruntime, and by round trips."""
import numpy as np
import pytest

from conftest import CELLS, has_cell_state, make_module

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:
    pytest.skip(f"onnx and onnxruntime are needed for the ONNX tests (pip install "
                f"'rnncore[onnx]'): {e}", allow_module_level=True)

from rnncore import onnx as rnn_onnx
from rnncore.lm import LanguageModel

F32_TOL = dict(rtol=1e-5, atol=2e-6)


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def float32_exact(module):
    """Round the module's parameters to float32 values, so that a float32 export holds exactly
    the weights of the (float64) module and only onnxruntime's own rounding differs."""
    for p in module.params.values():
        p[...] = p.astype(np.float32)
    return module


def states(cell, state):
    return tuple(state) if has_cell_state(cell) else (state,)


# (bidirectional, num_layers, batch_first)
LAYOUTS = [(False, 1, False), (True, 1, False), (False, 2, True), (True, 2, True)]


@pytest.mark.parametrize("bidirectional,num_layers,batch_first", LAYOUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_export_runs_in_onnxruntime_with_states_and_lengths(cell, bidirectional, num_layers,
                                                            batch_first, rng):
    I, H, T, B = 3, 5, 7, 4
    m = make_module(cell, I, H, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=batch_first, dtype=np.float64, seed=7)
    if not rnn_onnx._exportable(cell):
        with pytest.raises(ValueError, match="no standard ONNX operator"):
            rnn_onnx.to_onnx(m)
        return
    float32_exact(m).eval()
    LD = num_layers * m.num_directions
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    init = [rng.standard_normal((LD, B, H)).astype(np.float32)
            for _ in range(2 if has_cell_state(cell) else 1)]
    lengths = np.array([T, 3, 0, 1], dtype=np.int64)
    y, final = m(x, tuple(init) if has_cell_state(cell) else init[0], lengths=lengths)

    model = rnn_onnx.to_onnx(m, initial_state=True, lengths=True, dtype=np.float32)
    feed = {"x": x, "h0": init[0], "lengths": lengths}
    if has_cell_state(cell):
        feed["c0"] = init[1]
    got = session(model).run(None, feed)
    assert len(got) == 1 + len(init)
    np.testing.assert_allclose(got[0], y, **F32_TOL)
    for g, want in zip(got[1:], states(cell, final)):
        np.testing.assert_allclose(g, want, **F32_TOL)
    # the length-0 sequence keeps its initial state, in rnncore and in the exported graph
    np.testing.assert_array_equal(got[1][:, 2], init[0][:, 2])


def test_export_defaults_file_and_names(tmp_path, rng):
    m = make_module("lstm", 4, 6, num_layers=2, seed=1).eval()  # float32
    path = tmp_path / "lstm.onnx"
    model = rnn_onnx.to_onnx(m, path)
    s = session(path.read_bytes())
    assert [i.name for i in s.get_inputs()] == ["x"]
    assert [o.name for o in s.get_outputs()] == ["y", "h_n", "c_n"]
    assert [n.op_type for n in model.graph.node].count("LSTM") == 2
    x = rng.standard_normal((9, 2, 4)).astype(np.float32)
    y, (h, c) = m(x)
    got = s.run(None, {"x": x})
    for g, want in zip(got, (y, h, c)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    # batch size and length are free dimensions of the same model
    x2 = rng.standard_normal((3, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(s.run(None, {"x": x2})[0], m(x2)[0], rtol=1e-5, atol=1e-5)


# onnx 1.23's reference RNN knows the Tanh and Affine activations only, not Relu: the ReLU RNN's
# export is checked against onnxruntime (float32) above instead.
@pytest.mark.parametrize("cell", [c for c in CELLS if c != "rnn_relu"])
def test_float64_export_equals_onnx_reference_evaluator(cell, rng):
    """The float64 graph, evaluated by onnx's own numpy implementation of the operators (an
    independent reading of the ONNX specification), equals rnncore to float64 rounding."""
    from onnx.reference import ReferenceEvaluator
    if not rnn_onnx._exportable(cell):
        pytest.skip(f"{cell} has no ONNX operator")
    m = make_module(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    x = rng.standard_normal((6, 2, 3))
    init = [rng.standard_normal((4, 2, 4)) for _ in range(2 if has_cell_state(cell) else 1)]
    y, final = m(x, tuple(init) if has_cell_state(cell) else init[0])
    model = rnn_onnx.to_onnx(m, initial_state=True)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    feed = dict(zip(("x", "h0", "c0"), [x] + init))
    got = ReferenceEvaluator(model).run(None, feed)
    for g, want in zip(got, (y,) + states(cell, final)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before", "rnn_relu"])
def test_language_model_export(cell, rng):
    lm = LanguageModel(13, embed=5, hidden=6, layers=2, cell=cell, dropout=0.25, seed=4,
                       dtype=np.float64)
    for p in lm.params.values():
        p[...] = p.astype(np.float32)
    lm.eval()
    model = rnn_onnx.to_onnx(lm, initial_state=True, dtype=np.float32)
    ops = [n.op_type for n in model.graph.node]
    assert "Gather" in ops and "MatMul" in ops and "Add" in ops
    s = session(model)
    tokens = rng.integers(0, 13, size=(8, 3))
    logits, state = lm.forward(tokens, None)
    # carry the state into a second block, as generation does
    tokens2 = rng.integers(0, 13, size=(4, 3))
    logits2, state2 = lm.forward(tokens2, state)
    names = ["h0", "c0"] if has_cell_state(cell) else ["h0"]
    zeros = {n: np.zeros((2, 3, 6), np.float32) for n in names}
    got = s.run(None, {"tokens": tokens, **zeros})
    np.testing.assert_allclose(got[0], logits, **F32_TOL)
    carried = dict(zip(names, [g.astype(np.float32) for g in got[1:]]))
    got2 = s.run(None, {"tokens": tokens2, **carried})
    np.testing.assert_allclose(got2[0], logits2, **F32_TOL)
    for g, want in zip(got2[1:], states(cell, state2)):
        np.testing.assert_allclose(g, want, **F32_TOL)


@pytest.mark.parametrize("cell", [c for c in CELLS if rnn_onnx._exportable(c)])
def test_import_round_trip_is_exact(cell):
    m = make_module(cell, 3, 4, num_layers=3, bidirectional=True, bias=cell != "gru",
                    dtype=np.float64, seed=5)
    back = rnn_onnx.from_onnx(rnn_onnx.to_onnx(m))
    assert type(back) is type(m) and back.cell == m.cell
    assert (back.num_layers, back.bidirectional, back.bias, back.dtype) == (3, True, m.bias,
                                                                            np.float64)
    assert back.params.keys() == m.params.keys()
    for k, v in m.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)


# ---- import of ONNX nodes written here, run by onnxruntime ------------------------------------

def onnx_node_model(op, W, R, B=None, P=None, x_name="x", **attributes):
    """A one-node ONNX model from ONNX-layout weights: inputs x and initial_h (and initial_c)."""
    D, GH, I = W.shape
    H = R.shape[2]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    inputs = [x_name, "W", "R", "B" if B is not None else "", "", "h0"]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
    graph_in = [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, ["T", "N", I]),
                helper.make_tensor_value_info("h0", TensorProto.FLOAT, [D, "N", H])]
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        inputs += ["c0", "P" if P is not None else ""]
        graph_in.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [D, "N", H]))
        outputs.append("Y_c")
        if P is not None:
            inits.append(numpy_helper.from_array(P, "P"))
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(op, inputs, outputs, name=f"my_{op.lower()}",
                            **{"hidden_size": H, **attributes})
    graph_out = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", D, "N", H])] + [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, [D, "N", H]) for o in outputs[1:]]
    graph = helper.make_graph([node], "one_node", graph_in, graph_out, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# (op, gates, direction, bias, peephole, attributes) -> the registry cell it must become
NODES = [
    ("LSTM", 4, "forward", True, False, {}, "lstm"),
    ("LSTM", 4, "bidirectional", True, True, {}, "peephole_lstm"),
    ("LSTM", 4, "forward", False, True, {"activations": ["Sigmoid", "Tanh", "Tanh"]},
     "peephole_lstm"),
    ("GRU", 3, "bidirectional", True, False, {"linear_before_reset": 1}, "gru"),
    ("GRU", 3, "forward", True, False, {}, "gru_reset_before"),
    ("RNN", 1, "bidirectional", True, False, {"activations": ["Relu", "Relu"]}, "rnn_relu"),
    ("RNN", 1, "forward", False, False, {}, "rnn_tanh"),
]


@pytest.mark.parametrize("op,G,direction,bias,peephole,attributes,cell", NODES)
def test_import_matches_onnxruntime_on_a_hand_written_node(op, G, direction, bias, peephole,
                                                           attributes, cell, rng):
    D, I, H, T, N = (2 if direction == "bidirectional" else 1), 3, 4, 6, 2
    r = lambda *shape: (0.6 * rng.standard_normal(shape)).astype(np.float32)
    W, R = r(D, G * H, I), r(D, G * H, H)
    B = r(D, 2 * G * H) if bias else None
    P = r(D, 3 * H) if peephole else None
    model = onnx_node_model(op, W, R, B, P, direction=direction, **attributes)
    x, h0, c0 = r(T, N, I), r(D, N, H), r(D, N, H)
    feed = {"x": x, "h0": h0, **({"c0": c0} if op == "LSTM" else {})}
    Y, *finals = session(model).run(None, feed)

    m = rnn_onnx.from_onnx(model)
    assert m.cell == cell and m.dtype == np.float32 and m.bias == bias
    assert m.bidirectional == (D == 2) and (m.input_size, m.hidden_size) == (I, H)
    y, final = m(x, (h0, c0) if op == "LSTM" else h0)
    # Y (T, D, N, H) -> rnncore's (T, N, D*H)
    np.testing.assert_allclose(y, Y.transpose(0, 2, 1, 3).reshape(T, N, D * H), **F32_TOL)
    for got, want in zip(finals, final if op == "LSTM" else (final,)):
        np.testing.assert_allclose(want, got, **F32_TOL)


def test_import_sources_and_node_selection(tmp_path):
    m = make_module("gru", 3, 4, num_layers=2, seed=2)
    model = rnn_onnx.to_onnx(m, tmp_path / "gru.onnx")
    names = [n.name for n in model.graph.node if n.op_type == "GRU"]
    from_path = rnn_onnx.from_onnx(tmp_path / "gru.onnx")
    from_bytes = rnn_onnx.from_onnx(model.SerializeToString())
    for k in m.params:
        np.testing.assert_array_equal(from_path.params[k], m.params[k])
        np.testing.assert_array_equal(from_bytes.params[k], m.params[k])
    top = rnn_onnx.from_onnx(model, nodes=names[1])
    assert top.num_layers == 1 and top.input_size == 4
    np.testing.assert_array_equal(top.params["weight_ih_l0"], m.params["weight_ih_l1"])
    assert rnn_onnx.from_onnx(model, nodes=[-1]).input_size == 4
    first = rnn_onnx.from_onnx(model, nodes=0, batch_first=True)
    assert first.batch_first and first.input_size == 3
    with pytest.raises(ValueError, match="no LSTM/GRU/RNN node named 'nope'"):
        rnn_onnx.from_onnx(model, nodes="nope")
    with pytest.raises(ValueError, match="index 5 out of range"):
        rnn_onnx.from_onnx(model, nodes=5)
    with pytest.raises(ValueError, match="not layers of one stack|differs|takes"):
        rnn_onnx.from_onnx(model, nodes=[1, 0])
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        rnn_onnx.from_onnx(42)


def weights(rng, G, D=1, I=3, H=4):
    return (rng.standard_normal((D, G * H, I)).astype(np.float32),
            rng.standard_normal((D, G * H, H)).astype(np.float32))


@pytest.mark.parametrize("attributes,message", [
    ({"direction": "reverse"}, "rnncore has no reverse-only layer"),
    ({"clip": 3.0}, "'clip' has no rnncore counterpart"),
    ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, r"activations \['HardSigmoid'"),
    ({"input_forget": 1}, "input_forget=1"),
    ({"hidden_size": 5}, "hidden_size attribute 5 does not match"),
])
def test_import_refuses_what_rnncore_does_not_compute(attributes, message, rng):
    model = onnx_node_model("LSTM", *weights(rng, 4), **attributes)
    with pytest.raises(ValueError, match=message):
        rnn_onnx.from_onnx(model)


def test_import_refusals_of_graph_structure(rng):
    # weights computed at run time: nothing to import
    W, R = weights(rng, 3)
    model = onnx_node_model("GRU", W, R)
    model.graph.initializer.pop(0)  # W becomes a graph input
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, W.shape))
    with pytest.raises(ValueError, match="input W .* is not an initializer or a Constant"):
        rnn_onnx.from_onnx(model)
    # two GRUs reading the same x side by side are not a stack
    one = onnx_node_model("GRU", *weights(rng, 3, I=4, H=4))
    node = helper.make_node("GRU", ["x", "W", "R"], ["Y2"], name="beside", hidden_size=4)
    one.graph.node.append(node)
    with pytest.raises(ValueError, match="not layers of one stack"):
        rnn_onnx.from_onnx(one)
    assert rnn_onnx.from_onnx(one, nodes="beside").num_layers == 1
    # no recurrent node at all
    relu = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g",
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN node"):
        rnn_onnx.from_onnx(helper.make_model(relu))


def test_export_refusals():
    m = make_module("lstm", 2, 3)
    with pytest.raises(TypeError, match="rnncore RNN, LSTM, PeepholeLSTM or GRU module"):
        rnn_onnx.to_onnx(object())
    with pytest.raises(ValueError, match=r"opset must be an int in \[14, .*got 13"):
        rnn_onnx.to_onnx(m, opset=13)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        rnn_onnx.to_onnx(m, dtype=np.float16)
    lm = LanguageModel(5, embed=2, hidden=3, layers=1)
    with pytest.raises(ValueError, match="lengths=True is for recurrent modules"):
        rnn_onnx.to_onnx(lm, lengths=True)
