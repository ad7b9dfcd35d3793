"""rnncore.torch: torch.nn modules on rnncore's engine, against torch.nn itself (float64).

The registry cells torch.nn also computes (conftest.torch_twin) are compared with torch.nn
output for output and gradient for gradient, in every num_layers / bidirectional / batch_first /
packed combination; the others (peephole LSTM, reset-before GRU) against the float64 numpy
reference (forward) and finite differences (torch.autograd.gradcheck). Skipped without torch.
"""
import copy
import io
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import rnncore
from conftest import CELLS, has_cell_state, torch_twin
from rnncore.nn import registry as _registry
from rnncore.testing import reference

torch = pytest.importorskip("torch", reason="PyTorch 2.13 is not installed: rnncore.torch "
                                            "needs it, and torch.nn is the oracle")
import rnncore.torch as rt  # noqa: E402  (needs torch)
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

TWIN_CELLS = [c for c in CELLS if torch_twin(c) is not None]
OTHER_CELLS = [c for c in CELLS if torch_twin(c) is None]
T, B, I, H = 5, 4, 3, 4
LENGTHS = [5, 2, 4, 1]  # unsorted: the PackedSequence carries sorted/unsorted indices
REF_KEYS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh",
            "weight_peephole": "w_peephole"}


def make_torch_module(cell, input_size, hidden_size, **kwargs):
    """The rnncore.torch module that runs registry cell `cell` (the class named like the numpy
    module of that cell, with the same options)."""
    cls, options = _registry.module_variant(cell)
    return getattr(rt, cls.__name__)(input_size, hidden_size, **options, **kwargs)


def twin_pair(cell, num_layers=1, bidirectional=False, batch_first=False, dtype=torch.float64,
              input_size=I, hidden_size=H, seed=0):
    """(torch.nn module, rnncore.torch module), built after the same torch.manual_seed."""
    cls, kwargs = torch_twin(cell)
    torch.manual_seed(seed)
    theirs = cls(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                 batch_first=batch_first, dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    ours = make_torch_module(cell, input_size, hidden_size, num_layers=num_layers,
                             bidirectional=bidirectional, batch_first=batch_first, dtype=dtype)
    return theirs, ours


def states_of(cell, hx):
    return list(hx) if has_cell_state(cell) else [hx]


def as_hx(cell, states):
    return tuple(states) if has_cell_state(cell) else states[0]


def loss_weights(like, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in like]


def run(module, cell, x, states, weights=None):
    """Forward, a loss weighting every output randomly, and the gradients of every input, state
    and parameter. Returns (outputs, gradients)."""
    y, hx = module(x, None if states is None else as_hx(cell, states))
    y_data = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    outs = [y_data] + states_of(cell, hx)
    weights = weights or loss_weights(outs, 7)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    leaves = [x.data if hasattr(x, "batch_sizes") else x] + (states or [])
    leaves += list(module.parameters())
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs], list(grads)


def assert_close(ours, theirs, what, atol=1e-12, rtol=1e-10):
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def inputs(cell, num_layers, bidirectional, batch_first, packed, seed=1):
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x[..., :] *= 1.5
    states = [torch.randn(num_layers * D, B, H, generator=g, dtype=torch.float64)
              for _ in range(2 if has_cell_state(cell) else 1)]
    x.requires_grad_()
    for s in states:
        s.requires_grad_()
    if packed:
        x = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first,
                                 enforce_sorted=False)
    return x, states


# ---- import, construction, parameters -----------------------------------------------------------
def test_import_rnncore_does_not_import_torch():
    code = ("import sys, rnncore, numpy as np; m = rnncore.GRU(3, 4); m(np.zeros((2, 1, 3))); "
            "assert 'torch' not in sys.modules, 'import rnncore imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("cell", TWIN_CELLS)
def test_parameters_state_dict_and_init_match_torch_nn(cell):
    theirs, ours = twin_pair(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_t)  # names and order
    for k in sd_t:  # the same torch.manual_seed gives the same initial weights
        assert sd_o[k].shape == sd_t[k].shape and sd_o[k].dtype == sd_t[k].dtype
        assert torch.equal(sd_o[k], sd_t[k]), k
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert repr(ours) == repr(theirs)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert [[p.shape for p in ws] for ws in ours.all_weights] == \
        [[p.shape for p in ws] for ws in theirs.all_weights]
    ours.flatten_parameters()  # a no-op, as torch.nn's on the CPU
    # state dicts go both ways
    torch.manual_seed(3)
    other = type(theirs)(I, H, num_layers=2, bidirectional=True,
                         **torch_twin(cell)[1]).state_dict()
    ours.load_state_dict(other)
    theirs.load_state_dict(ours.state_dict())
    assert all(torch.equal(theirs.state_dict()[k], other[k]) for k in other)


def test_bias_false_and_extra_cells_have_their_parameters():
    m = rt.GRU(3, 4, bias=False, reset_after=False)
    assert list(m.state_dict()) == ["weight_ih_l0", "weight_hh_l0"]
    assert repr(m) == "GRU(3, 4, bias=False, reset_after=False)"
    p = rt.PeepholeLSTM(3, 4, bidirectional=True)
    assert list(p.state_dict()) == [
        f"{stem}_l0{s}" for s in ("", "_reverse")
        for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peephole")]
    assert p.weight_peephole_l0.shape == (3, 4)
    assert isinstance(p, rt.LSTM) and p.peephole and p.cell == "peephole_lstm"
    assert rt.LSTM(3, 4, peephole=True).cell == "peephole_lstm"
    r = rt.RNN(3, 4, 2, "relu")  # nonlinearity is the 4th positional argument, as in torch
    assert (r.nonlinearity, r.num_layers, r.mode) == ("relu", 2, "RNN_RELU")


def test_constructor_errors():
    with pytest.raises(ValueError, match="proj_size must be 0, got 2"):
        rt.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\).*got 1"):
        rt.GRU(3, 4, num_layers=2, dropout=1)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero, got 0"):
        rt.GRU(3, 0)
    with pytest.raises(TypeError, match="input_size should be of type int, got: float"):
        rt.GRU(3.0, 4)
    with pytest.raises(TypeError, match="batch_first should be of type bool, got: int"):
        rt.GRU(3, 4, batch_first=1)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        rt.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match="torch.float32 or torch.float64.*torch.float16"):
        rt.LSTM(3, 4, dtype=torch.float16)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rt.GRU(3, 4, dropout=0.5)


# ---- parity with torch.nn ----------------------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", TWIN_CELLS)
def test_outputs_and_every_gradient_equal_torch_nn(cell, num_layers, bidirectional, batch_first,
                                                   packed):
    theirs, ours = twin_pair(cell, num_layers, bidirectional, batch_first)
    for with_state in (True, False):
        x, states = inputs(cell, num_layers, bidirectional, batch_first, packed)
        states = states if with_state else None
        out_t, grads_t = run(theirs, cell, x, states)
        out_o, grads_o = run(ours, cell, x, states, loss_weights(out_t, 7))
        names = ["y", "h_n", "c_n"][:len(out_t)]
        for name, a, b in zip(names, out_o, out_t):
            assert_close(a, b, name)
        leaves = ["x"] + (["h0", "c0"][:len(states)] if states else [])
        leaves += [n for n, _ in theirs.named_parameters()]
        assert len(grads_o) == len(leaves)
        for name, a, b in zip(leaves, grads_o, grads_t):
            assert_close(a, b, f"gradient of {name}")


@pytest.mark.parametrize("cell", TWIN_CELLS)
def test_unbatched_input_equals_torch_nn(cell):
    theirs, ours = twin_pair(cell, num_layers=2, bidirectional=True, batch_first=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, I, generator=g, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(4, H, generator=g, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if has_cell_state(cell) else 1)]
    out_t, grads_t = run(theirs, cell, x, states)
    out_o, grads_o = run(ours, cell, x, states, loss_weights(out_t, 7))
    assert out_o[0].shape == (T, 2 * H) and out_o[1].shape == (4, H)
    for a, b in zip(out_o + grads_o, out_t + grads_t):
        assert_close(a, b, "unbatched")


@pytest.mark.parametrize("cell", TWIN_CELLS)
def test_float32_equals_torch_nn(cell):
    theirs, ours = twin_pair(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    x = torch.randn(7, 3, I, requires_grad=True)
    out_t, grads_t = run(theirs, cell, x, None)
    out_o, grads_o = run(ours, cell, x, None, loss_weights(out_t, 7))
    for a, b in zip(out_o + grads_o, out_t + grads_t):
        assert a.dtype == torch.float32
        assert_close(a, b, "float32", atol=2e-5, rtol=2e-4)


# ---- the cells torch.nn does not have ----------------------------------------------------------
def stacked_reference(cell, module, x, states, lengths):
    """The float64 numpy reference (rnncore.reference, one layer-direction at a time) stacked
    as the module stacks it: layer l > 0 reads both directions of layer l - 1."""
    D = module.num_directions
    p = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    inp = x
    finals = [[], []]
    for layer in range(module.num_layers):
        ys = []
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            params = {REF_KEYS[stem]: p.get(stem + s) for stem in REF_KEYS}
            if not module.bias:
                params["b_ih"] = params["b_hh"] = None
            if params["w_peephole"] is None:
                del params["w_peephole"]
            k = layer * D + d
            y, st, _ = reference.forward(cell, inp, tuple(s0[k] for s0 in states), params,
                                         reverse=bool(d), lengths=lengths)
            ys.append(y)
            for i, v in enumerate(st):
                finals[i].append(v)
        inp = np.concatenate(ys, axis=2)
    return inp, [np.stack(f) for f in finals[:len(states)]]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", OTHER_CELLS)
def test_cells_torch_lacks_equal_the_reference(cell, bidirectional, packed):
    torch.manual_seed(0)
    m = make_torch_module(cell, I, H, num_layers=2, bidirectional=bidirectional,
                          dtype=torch.float64)
    x, states = inputs(cell, 2, bidirectional, False, packed)
    y, hx = m(x, as_hx(cell, states))
    if packed:
        y, _ = pad_packed_sequence(y, total_length=T)
        xs, _ = pad_packed_sequence(x, total_length=T)
    else:
        xs = x
    y_ref, finals = stacked_reference(cell, m, xs.detach().numpy(),
                                      [s.detach().numpy() for s in states],
                                      LENGTHS if packed else None)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, atol=1e-12, rtol=1e-10)
    for a, b in zip(states_of(cell, hx), finals):
        np.testing.assert_allclose(a.detach().numpy(), b, atol=1e-12, rtol=1e-10)


def test_lecture_gru_is_reset_before_gru_with_z_negated():
    """The torch module of GRU(reset_after=False) computes the lecture's GRU
    h_t = (1 - z) h_{t-1} + z h~ once the z rows are negated (docs/cells.md)."""
    torch.manual_seed(0)
    m = rt.GRU(I, H, reset_after=False, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        y, _ = m(x)
    w = {k: v.numpy() for k, v in m.state_dict().items()}
    z = slice(H, 2 * H)
    h = np.zeros((B, H))
    sig = lambda a: 1 / (1 + np.exp(-a))
    for t in range(T):
        xt = x[t].numpy()
        gx, gh = xt @ w["weight_ih_l0"].T + w["bias_ih_l0"], w["bias_hh_l0"].copy()
        r = sig(gx[:, :H] + h @ w["weight_hh_l0"][:H].T + gh[:H])
        zl = sig(-(gx[:, z] + h @ w["weight_hh_l0"][z].T + gh[z]))  # the lecture's z
        n = np.tanh(gx[:, 2 * H:] + (r * h) @ w["weight_hh_l0"][2 * H:].T + gh[2 * H:])
        h = (1 - zl) * h + zl * n
        np.testing.assert_allclose(y[t].numpy(), h, atol=1e-12)


# ---- gradcheck -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell):
    # Finite differences run the layer hundreds of times at sizes where a second thread only
    # adds a barrier per step (and, on a busy machine, waits for a descheduled partner).
    rnncore.set_num_threads(1)
    torch.manual_seed(0)
    m = make_torch_module(cell, 2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if has_cell_state(cell) else 1)]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    lengths = torch.tensor([4, 1, 3])

    n_states = len(states)

    def f(x, *rest):
        hx, ps = as_hx(cell, list(rest[:n_states])), rest[n_states:]
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, hx = torch.func.functional_call(m, dict(zip(names, ps)), (packed, hx))
        return (y.data,) + tuple(states_of(cell, hx))

    assert torch.autograd.gradcheck(f, (x, *states, *params), atol=1e-7, rtol=1e-5)


# ---- several calls in one graph, retained graphs, dropped graphs ---------------------------------
def test_two_forwards_one_backward_equals_torch_nn():
    theirs, ours = twin_pair("lstm", num_layers=2, bidirectional=True, input_size=H * 2,
                             hidden_size=H)
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(T, B, 2 * H, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(T + 2, 2, 2 * H, generator=g, dtype=torch.float64, requires_grad=True)
    results = []
    for m in (theirs, ours):
        y1, _ = m(x1)
        y2, (h2, _) = m(x2)
        y3, _ = m(y1 * 0.5)  # the layer fed its own output: three calls pending at once
        loss = (y1 ** 2).sum() + (y2 * 0.3).sum() + h2.sum() + (y3 ** 3).sum()
        grads = torch.autograd.grad(loss, [x1, x2] + list(m.parameters()))
        results.append(grads)
    for a, b in zip(*results):
        assert_close(a, b, "two forwards, one backward")
    assert len(ours._engine) <= 3  # the Stacks came back to the pool


def test_retained_graph_backpropagates_twice():
    theirs, ours = twin_pair("gru", num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 2, I, dtype=torch.float64)
    for m in (theirs, ours):
        m.zero_grad()
        y, h = m(x)
        loss = (y ** 2).sum() + h.sum()
        loss.backward(retain_graph=True)
        m(x2)[0].sum().backward()  # reuses the Stack of the first forward
        loss.backward()  # recomputes the forward on a Stack of its own
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_close(a.grad, b.grad, f"gradient of {n} after two backward passes")
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y, _ = ours(x)
        y.sum().backward()
        y.sum().backward()


def test_dropped_graphs_free_their_stacks():
    m = rt.LSTM(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for _ in range(10):
        y, _ = m(x)  # recorded (the parameters require grad), never back-propagated
        del y
    assert len(m._engine) == 0
    y, _ = m(x)
    y.sum().backward()
    assert len(m._engine) == 1
    m.eval()
    assert len(m._engine) == 0


def test_backward_after_an_in_place_update_is_refused():
    m = rt.GRU(I, H)
    y, _ = m(torch.randn(T, B, I))
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.5)  # as an optimiser step between forward and backward would
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_double_backward_is_refused():
    m = rt.GRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    with pytest.raises(RuntimeError, match="do not support gradients of gradients"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(y.sum(), x)  # the graph is still there for a plain backward
    assert gx.shape == x.shape


# ---- modes, dtypes, memory -----------------------------------------------------------------------
@pytest.mark.parametrize("cell", TWIN_CELLS)
def test_no_grad_and_inference_mode(cell):
    theirs, ours = twin_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y_ref, _ = theirs(x)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            y, hx = ours(x)
        assert y.grad_fn is None and not y.requires_grad
        assert_close(y, y_ref.detach(), "no_grad output")
    assert len(ours._engine) == 1  # one Stack, reused, never a workspace kept for backward


def test_dropout_is_seeded_by_torch_and_backward_sees_the_same_mask():
    m = rt.GRU(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    y1, _ = m(x)
    torch.manual_seed(11)
    y2, _ = m(x)
    y3, _ = m(x)
    assert torch.equal(y1, y2) and not torch.equal(y2, y3)
    with torch.no_grad():  # training mode: dropout applies under no_grad too, as in torch.nn
        torch.manual_seed(11)
        assert torch.equal(m(x)[0], y1)
    m.eval()
    no_dropout = rt.GRU(I, H, num_layers=3, dtype=torch.float64)
    no_dropout.load_state_dict(m.state_dict())
    assert torch.equal(m(x)[0], no_dropout(x)[0])
    m.train()
    # finite differences see the same masks when every evaluation starts from one seed
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        torch.manual_seed(5)
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))[0]
    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-7, rtol=1e-5)


def test_dtype_conversion_and_mixed_input_errors():
    m = rt.LSTM(I, H)
    x32 = torch.randn(T, B, I)
    y32, _ = m(x32)
    m.double()
    y64, _ = m(x32.double())
    assert y64.dtype == torch.float64
    assert_close(y64.float(), y32, "double()", atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"input dtype \(torch.float32\) does not match weight "
                                         r"dtype \(torch.float64\)"):
        m(x32)
    with pytest.raises(ValueError, match="hx dtype"):
        m(x32.double(), (torch.zeros(1, B, H), torch.zeros(1, B, H, dtype=torch.float64)))
    m.half()
    with pytest.raises(TypeError, match="float32 or float64; its parameters are torch.float16"):
        m(x32.half())


def test_input_and_state_errors_name_the_argument():
    m = rt.LSTM(I, H, num_layers=2)
    x = torch.randn(T, B, I)
    bad = [
        (lambda: m(torch.randn(T, B, I + 1)), r"input_size=3.*got shape \(5, 4, 4\)"),
        (lambda: m(torch.randn(2, T, B, I)), "input must be 3-D.*got 4-D"),
        (lambda: m(x, (torch.zeros(2, B + 1, H), torch.zeros(2, B + 1, H))),
         r"expected hx of shape \(2, 4, 4\).*got \(2, 5, 4\)"),
        (lambda: m(x, (torch.zeros(2, B, H), torch.zeros(2, H))), "cx should also be 3-D"),
        (lambda: m(x[:, 0], (torch.zeros(2, 1, H), torch.zeros(2, 1, H))),
         "unbatched 2-D input, hx should also be 2-D"),
    ]
    for call, pattern in bad:
        for kind in (ValueError, RuntimeError):  # ours, and what torch.nn raises there
            with pytest.raises(kind, match=pattern):
                call()
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h0, c0\)"):
        m(x, torch.zeros(2, B, H))
    with pytest.raises(TypeError, match="hx must be a tensor"):
        rt.GRU(I, H)(x, (torch.zeros(1, B, H),))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got ndarray"):
        m(x.numpy())


def test_non_cpu_tensors_raise_a_clear_error():
    m = rt.GRU(I, H)
    with pytest.raises(NotImplementedError, match="CPU tensors only.*input is on meta"):
        m(torch.randn(T, B, I, device="meta"))
    m_meta = rt.GRU(I, H, device="meta")
    with pytest.raises(NotImplementedError, match="parameter weight_ih_l0 is on meta"):
        m_meta(torch.randn(T, B, I))
    if torch.cuda.is_available() and not rnncore.cuda_available():
        with pytest.raises(NotImplementedError, match="CPU tensors only.*cuda"):
            m.cuda()(torch.randn(T, B, I, device="cuda"))


# ---- no copies -----------------------------------------------------------------------------------
class RecordingStack:
    """Wraps a _core.Stack and keeps the arrays it was handed and returned."""

    def __init__(self, stack, log):
        self.stack, self.log = stack, log

    def forward(self, x, params, **kw):
        out = self.stack.forward(x, params, **kw)
        self.log.append(("forward", x, params, kw, out))
        return out

    def backward(self, dy, params, grads, **kw):
        out = self.stack.backward(dy, params, grads, **kw)
        self.log.append(("backward", dy, params, grads, out))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contiguous_cpu_tensors_are_never_copied(dtype, monkeypatch):
    m = rt.LSTM(I, H, dtype=dtype)
    log = []
    acquire = m._engine.acquire
    monkeypatch.setattr(m._engine, "acquire", lambda dt: RecordingStack(acquire(dt), log))
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=dtype)
    y, (h_n, c_n) = m(x, (h0, c0))
    dy = torch.randn(T, B, H, dtype=dtype)
    y.backward(dy)
    (_, xa, params, kw, (ya, hna, cna)), (_, dya, params_b, grads, (dxa, dh0a, _)) = log
    same = lambda t, a: t.data_ptr() == a.__array_interface__["data"][0]
    assert same(x, xa) and same(h0, kw["h0"]) and same(c0, kw["c0"])
    assert all(same(p, params[n]) for n, p in m.named_parameters()) and params_b is params
    assert same(y, ya) and same(h_n, hna) and same(c_n, cna)
    assert same(dy, dya)
    assert same(x.grad, dxa) and same(h0.grad, dh0a)
    assert all(same(p.grad, grads[n]) for n, p in m.named_parameters())


def test_non_contiguous_tensors_give_the_same_results():
    theirs, ours = twin_pair("lstm", num_layers=2)
    g = torch.Generator().manual_seed(3)
    big = torch.randn(T, 2 * B, I, generator=g, dtype=torch.float64)
    x_strided = big[:, ::2].requires_grad_()  # a view with strides: copied once for the call
    x_dense = big[:, ::2].contiguous().requires_grad_()
    states = [torch.randn(2, B, H, generator=g, dtype=torch.float64).transpose(0, 1)
              .contiguous().transpose(0, 1).requires_grad_() for _ in range(2)]
    assert not x_strided.is_contiguous() and not states[0].is_contiguous()
    out_a, grads_a = run(ours, "lstm", x_strided, states)
    out_b, grads_b = run(ours, "lstm", x_dense, [s.detach().contiguous().requires_grad_()
                                                   for s in states])
    for a, b in zip(out_a + grads_a, out_b + grads_b):
        assert torch.equal(a, b)


def test_parameter_views_follow_the_parameters():
    """The numpy views of the parameters are kept between calls; every way of changing a
    parameter is seen by the next call."""
    theirs, ours = twin_pair("gru")
    x = torch.randn(T, B, I, dtype=torch.float64)

    def check():
        with torch.no_grad():
            assert_close(ours(x)[0], theirs(x)[0], "after a parameter change")
    check()
    with torch.no_grad():
        for m in (theirs, ours):  # in place (as optimisers and load_state_dict do)
            m.weight_hh_l0.mul_(-0.5)
    check()
    w = torch.randn(3 * H, I, dtype=torch.float64)
    for m in (theirs, ours):  # new memory behind the same Parameter
        m.weight_ih_l0.data = w.clone()
    check()
    w = torch.randn(H, 3 * H, dtype=torch.float64)
    for m in (theirs, ours):  # a non-contiguous parameter (copied for the call)
        m.weight_hh_l0 = torch.nn.Parameter(w.t())
    assert not ours.weight_hh_l0.is_contiguous()
    check()
    theirs = theirs.float()
    ours = ours.float()
    x = x.float()
    with torch.no_grad():
        assert_close(ours(x)[0], theirs(x)[0], "after .float()", atol=1e-5, rtol=1e-4)


# ---- training with torch's tools -----------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_with_torch_optimiser_and_clipping_equals_torch_nn(cell):
    theirs, ours = twin_pair(cell, num_layers=2, batch_first=True)
    results = []
    for rnn in (theirs, ours):
        torch.manual_seed(1)
        head = torch.nn.Linear(H, 2, dtype=torch.float64)
        params = list(rnn.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=0.05)
        g = torch.Generator().manual_seed(2)
        losses = []
        for _ in range(6):
            x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
            target = torch.randint(0, 2, (B,), generator=g)
            opt.zero_grad()
            y, _ = rnn(x)
            loss = torch.nn.functional.cross_entropy(head(y[:, -1]), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
            losses.append(loss.item())
        results.append((losses, [p.detach().clone() for p in params]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-10)
    for a, b in zip(results[1][1], results[0][1]):
        assert_close(a, b, "weights after 6 Adam steps", atol=1e-10, rtol=1e-8)


def test_save_load_pickle_and_deepcopy():
    torch.manual_seed(0)
    m = rt.PeepholeLSTM(I, H, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    y, _ = m(x)  # a pending graph and a Stack in use do not travel
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = rt.PeepholeLSTM(I, H, num_layers=2, bidirectional=True)
    m2.load_state_dict(torch.load(buf))  # weights_only=True, the default
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m3 = torch.load(buf, weights_only=False)
    m4 = copy.deepcopy(m)
    m5 = pickle.loads(pickle.dumps(m))
    with torch.no_grad():
        ref = m(x)[0]
        for other in (m2, m3, m4, m5):
            assert torch.equal(other(x)[0], ref)
    assert m4._engine is not m._engine and len(m4._engine) <= 1
    y.sum().backward()
    assert m.weight_peephole_l0.grad is not None and m4.weight_peephole_l0.grad is None


def test_one_module_from_several_threads():
    theirs, ours = twin_pair("gru", num_layers=2)
    xs = [torch.randn(T, B, I, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
          for i in range(4)]
    for m in (theirs, ours):
        m.zero_grad()

    def work(i):
        for _ in range(5):
            y, _ = ours(xs[i])
            (y ** 2).sum().backward()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        for _ in range(5):
            (theirs(xs[i])[0] ** 2).sum().backward()
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_close(a.grad, b.grad, f"gradient of {n} summed over threads", atol=1e-10,
                     rtol=1e-10)
