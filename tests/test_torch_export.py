"""rnncore.torch under torch's tracers and exporters, and saved/loaded as torch users do:
torch.compile(fullgraph=True) (rnncore's engine through the rnncore::stack_forward/backward
custom ops), torch.export.export, torch.jit.trace and torch.onnx.export (torch's own recurrent
ops on the same parameters, exported as ONNX LSTM/GRU/RNN and run in onnxruntime without
rnncore), each against the torch.nn twin; torch.save/torch.load(weights_only=True), deepcopy,
state_dict both ways, .to(dtype)."""
import copy
import io
import pickletools
import warnings

import pytest

torch = pytest.importorskip("torch")
import rnncore.torch as rt  # noqa: E402

TWINS = [(rt.LSTM, torch.nn.LSTM, {}), (rt.GRU, torch.nn.GRU, {}),
         (rt.RNN, torch.nn.RNN, {}), (rt.RNN, torch.nn.RNN, {"nonlinearity": "relu"})]
IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
# torch's own compile and export machinery warns (deprecations inside inductor, the legacy
# ONNX exporter); they are not this package's warnings
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


class Model(torch.nn.Module):
    """embedding-free tagger: rnn (2 layers, bidirectional, batch_first) + linear head."""

    def __init__(self, rnn_cls, dtype=torch.float64, **kw):
        super().__init__()
        self.rnn = rnn_cls(3, 5, num_layers=2, batch_first=True, bidirectional=True, dtype=dtype,
                           **kw)
        self.head = torch.nn.Linear(10, 2, dtype=dtype)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def pair(ours_cls, theirs_cls, kw, dtype=torch.float64):
    torch.manual_seed(0)
    theirs = Model(theirs_cls, dtype, **kw)
    ours = Model(ours_cls, dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def x_of(dtype=torch.float64, B=2, T=4):
    return torch.randn(B, T, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("ours_cls,theirs_cls,kw", TWINS, ids=IDS)
def test_compile_fullgraph(ours_cls, theirs_cls, kw):
    theirs, ours = pair(ours_cls, theirs_cls, kw)
    x = x_of()
    ref = theirs(x)
    ref.square().sum().backward()
    compiled = torch.compile(ours, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_compile_registry_cell_without_twin():
    torch.manual_seed(0)
    model = Model(rt.PeepholeLSTM)
    x = x_of()
    ref = model(x)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), ref)


@pytest.mark.parametrize("ours_cls,theirs_cls,kw", TWINS, ids=IDS)
def test_export_and_jit_trace(ours_cls, theirs_cls, kw):
    theirs, ours = pair(ours_cls, theirs_cls, kw)
    ours.eval()
    x, x2 = x_of(), x_of(B=3, T=6)
    ep = torch.export.export(ours, (x,))
    torch.testing.assert_close(ep.module()(x), theirs(x))
    traced = torch.jit.trace(ours, (x,))
    torch.testing.assert_close(traced(x2), theirs(x2))


@pytest.mark.parametrize("ours_cls,theirs_cls,kw", TWINS, ids=IDS)
def test_onnx_export_runs_in_onnxruntime(ours_cls, theirs_cls, kw, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    theirs, ours = pair(ours_cls, theirs_cls, kw, dtype=torch.float32)
    ours.eval()
    x = x_of(torch.float32)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ours, (x,), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"LSTM", "GRU", "RNN"} & ops
    session = ort.InferenceSession(str(path))
    for x_in in (x, x_of(torch.float32, B=3, T=7)):
        (y,) = session.run(None, {"x": x_in.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), theirs(x_in).detach(), rtol=1e-4,
                                   atol=1e-5)


def test_tracing_a_cell_without_twin_says_so():
    model = Model(rt.GRU, reset_after=False).eval()
    with pytest.raises(NotImplementedError, match="no torch.nn twin"):
        torch.jit.trace(model, (x_of(),))


@pytest.mark.parametrize("cls", [rt.LSTM, rt.GRU, rt.RNN, rt.PeepholeLSTM])
def test_save_load_weights_only_with_public_classes(cls):
    model = Model(cls)
    buf = io.BytesIO()
    torch.save(model, buf)
    globals_in_pickle = set()
    import zipfile
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "STACK_GLOBAL") and arg:
            globals_in_pickle.add(arg)
    ours = {g for g in globals_in_pickle if g.startswith("rnncore")}
    assert ours == {f"rnncore.torch {cls.__name__}"}  # no engine object, no private class
    buf.seek(0)
    with torch.serialization.safe_globals([Model, cls, torch.nn.Linear]):
        loaded = torch.load(buf, weights_only=True)
    x = x_of()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert clone.rnn._engine is not model.rnn._engine


@pytest.mark.parametrize("ours_cls,theirs_cls,kw", TWINS, ids=IDS)
def test_state_dict_both_ways_and_to_dtype(ours_cls, theirs_cls, kw):
    theirs, ours = pair(ours_cls, theirs_cls, kw, dtype=torch.float32)
    torch.manual_seed(5)
    other = Model(theirs_cls, torch.float32, **kw)
    ours.load_state_dict(other.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = x_of(torch.float32)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.to(torch.float64) is ours
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    torch.testing.assert_close(ours(x.double()), theirs.double()(x.double()))


@pytest.mark.parametrize("cls,kw", [(rt.GRU, {}), (rt.LSTM, {}), (rt.PeepholeLSTM, {}),
                                    (rt.GRU, {"reset_after": False})],
                         ids=["gru", "lstm", "peephole_lstm", "gru_reset_before"])
def test_rnncore_onnx_exports_torch_modules_with_lengths(cls, kw, tmp_path):
    """rnncore.onnx.to_onnx(an rnncore.torch module, lengths=True): variable-length input (what
    torch's exporters refuse as PackedSequence), cells torch has no op for too."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import rnncore.onnx
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    module = cls(3, 5, num_layers=2, bidirectional=True, **kw).eval()
    path = tmp_path / "m.onnx"
    rnncore.onnx.to_onnx(module, path, lengths=True)
    x = torch.randn(6, 3, 3)
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        y, _ = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
    y, _ = pad_packed_sequence(y, total_length=6)
    session = ort.InferenceSession(str(path))
    got = session.run(["y"], {"x": x.numpy(), "lengths": lengths.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ours_cls,theirs_cls", [(rt.LSTMCell, torch.nn.LSTMCell),
                                                 (rt.GRUCell, torch.nn.GRUCell),
                                                 (rt.RNNCell, torch.nn.RNNCell)],
                         ids=["lstm", "gru", "rnn"])
def test_cells_compile_export_trace(ours_cls, theirs_cls):
    torch.manual_seed(0)
    ours = ours_cls(3, 5, dtype=torch.float64)
    theirs = theirs_cls(3, 5, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def loop(cell, x):
        h = None
        for t in range(x.shape[0]):
            h = cell(x[t], h)
        return h[0] if isinstance(h, tuple) else h

    torch.testing.assert_close(torch.compile(lambda x: loop(ours, x), fullgraph=True)(x),
                               loop(theirs, x))
    torch.testing.assert_close(torch.export.export(ours, (x[0],)).module()(x[1]), theirs(x[1]))
    torch.testing.assert_close(torch.jit.trace(ours, (x[0],))(x[2]), theirs(x[2]))


def test_compile_dropout_training_mode():
    """Dropout between layers under torch.compile: the rnncore::stack_* ops take the seed as a
    tensor drawn from torch's generator (a new mask each call, repeatable by torch.manual_seed),
    and the backward op replays the forward's mask."""
    torch.manual_seed(0)
    model = rt.LSTM(3, 5, num_layers=2, dropout=0.5, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    x = x_of().transpose(0, 1).contiguous()
    torch.manual_seed(1)
    y1 = compiled(x)[0]
    y1.sum().backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(1)
    y2 = compiled(x)[0]
    y3 = compiled(x)[0]
    assert torch.equal(y1, y2) and not torch.equal(y2, y3)
    y2.sum().backward()
    for a, p in zip(g1, model.parameters()):
        assert torch.equal(a, p.grad)
    with torch.no_grad():  # the mask is one: dropout=0 on a module of the same weights agrees
        model.eval()
        torch.testing.assert_close(compiled(x)[0], model(x)[0])
