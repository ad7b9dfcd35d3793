"""rnncore.torch cells (RNNCell, LSTMCell, PeepholeLSTMCell, GRUCell) against torch.nn's cells
in float64: outputs and every gradient of step loops, unbatched input, bias=False, state_dict
both ways, repacking after in-place parameter changes, gradcheck of every registry cell."""
import copy
import io

import pytest

torch = pytest.importorskip("torch")
import rnncore.torch as rt  # noqa: E402

I, H, B = 3, 5, 4
TWINS = [
    (rt.LSTMCell, torch.nn.LSTMCell, {}),
    (rt.GRUCell, torch.nn.GRUCell, {}),
    (rt.RNNCell, torch.nn.RNNCell, {}),
    (rt.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    (rt.LSTMCell, torch.nn.LSTMCell, {"bias": False}),
    (rt.GRUCell, torch.nn.GRUCell, {"bias": False}),
]
ALL = [(rt.LSTMCell, {}), (rt.PeepholeLSTMCell, {}), (rt.GRUCell, {}),
       (rt.GRUCell, {"reset_after": False}), (rt.RNNCell, {}), (rt.RNNCell, {"nonlinearity":
                                                                            "relu"})]


def pair(ours_cls, theirs_cls, kw, dtype=torch.float64):
    torch.manual_seed(3)
    theirs = theirs_cls(I, H, dtype=dtype, **kw)
    torch.manual_seed(3)
    ours = ours_cls(I, H, dtype=dtype, **kw)
    return theirs, ours


def states(out):
    return list(out) if isinstance(out, tuple) else [out]


def loop(cell, xs, hx):
    outs = []
    for x in xs:
        hx = cell(x, hx)
        outs += states(hx)
    return outs


def rand_hx(cell, shape):
    g = torch.Generator().manual_seed(5)
    mk = lambda: torch.randn(shape, dtype=torch.float64, generator=g).requires_grad_()  # noqa
    return (mk(), mk()) if isinstance(cell, (rt.LSTMCell, torch.nn.LSTMCell)) else mk()


@pytest.mark.parametrize("ours_cls,theirs_cls,kw", TWINS, ids=lambda v: getattr(v, "__name__",
                                                                                 str(v)))
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_hx", [True, False])
def test_step_loop_equals_torch_nn(ours_cls, theirs_cls, kw, batched, given_hx):
    theirs, ours = pair(ours_cls, theirs_cls, kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)  # same initialisation after the same seed
    assert repr(ours) == repr(theirs)
    shape = (B, I) if batched else (I,)
    xs = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    results = []
    for cell in (theirs, ours):
        hx = rand_hx(cell, (B, H) if batched else (H,)) if given_hx else None
        outs = loop(cell, xs, hx)
        g = torch.Generator().manual_seed(9)
        loss = sum((o * torch.randn(o.shape, dtype=o.dtype, generator=g)).sum() for o in outs)
        leaves = xs + (states(hx) if given_hx else []) + list(cell.parameters())
        results.append(([o.detach() for o in outs], torch.autograd.grad(loss, leaves)))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1 + list(g1), o2 + list(g2)):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls,kw", ALL, ids=str)
def test_gradcheck(cls, kw):
    torch.manual_seed(0)
    cell = cls(I, H, dtype=torch.float64, **kw)
    x = torch.randn(2, I, dtype=torch.float64, requires_grad=True)
    hx = rand_hx(cell, (2, H))
    hs = states(hx)

    def f(x, *args):  # two steps, so the second back-propagates into the first
        n = len(hs)
        # gradcheck perturbs its inputs through .data, which (by design) bumps no _version
        # counter; clones are new tensors, which the engine always repacks from
        st, params = args[:n], [p.clone() for p in args[n:]]
        names = [k for k, _ in cell.named_parameters()]
        hx = tuple(st) if n == 2 else st[0]
        first = torch.func.functional_call(cell, dict(zip(names, params)), (x, hx))
        second = torch.func.functional_call(cell, dict(zip(names, params)), (x * 0.5, first))
        return tuple(states(first) + states(second))

    assert torch.autograd.gradcheck(f, (x, *hs, *cell.parameters()))


@pytest.mark.parametrize("cls,kw", ALL, ids=str)
def test_repacks_after_in_place_changes(cls, kw):
    torch.manual_seed(0)
    cell = cls(I, H, dtype=torch.float64, **kw)
    x = torch.randn(B, I, dtype=torch.float64)
    before = states(cell(x))
    opt = torch.optim.SGD(cell.parameters(), lr=0.5)
    sum(o.sum() for o in states(cell(x))).backward()
    opt.step()  # in place: bumps the parameters' _version
    after = states(cell(x))
    reference = copy.deepcopy(cell)  # a fresh engine, packed from scratch
    for a, b, r in zip(before, after, states(reference(x))):
        assert not torch.equal(a, b)
        torch.testing.assert_close(b, r, rtol=0, atol=0)
    with torch.no_grad():
        cell.weight_hh.zero_()
    torch.testing.assert_close(states(cell(x))[0], states(copy.deepcopy(cell)(x))[0])


def test_state_dict_both_ways_and_dtype():
    theirs, ours = pair(rt.LSTMCell, torch.nn.LSTMCell, {}, dtype=torch.float32)
    torch.manual_seed(1)
    other = torch.nn.LSTMCell(I, H)
    ours.load_state_dict(other.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(B, I)
    for a, b in zip(states(other(x)), states(ours(x))):
        torch.testing.assert_close(b, a)
    ours64 = ours.to(torch.float64)
    assert ours64 is ours and ours.weight_ih.dtype == torch.float64
    for a, b in zip(states(other.double()(x.double())), states(ours(x.double()))):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("cls,kw", ALL, ids=str)
def test_save_load_weights_only(cls, kw):
    cell = cls(I, H, **kw)
    buf = io.BytesIO()
    torch.save(cell, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([cls]):
        loaded = torch.load(buf, weights_only=True)
    x = torch.randn(B, I)
    for a, b in zip(states(cell(x)), states(loaded(x))):
        assert torch.equal(a, b)
    clone = copy.deepcopy(cell)
    for a, b in zip(states(cell(x)), states(clone(x))):
        assert torch.equal(a, b)


def test_retain_graph_and_double_backward():
    cell = rt.GRUCell(I, H, dtype=torch.float64)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = cell(x, cell(x))
    loss = h.sum()
    (g1,) = torch.autograd.grad(loss, [x], retain_graph=True)
    (g2,) = torch.autograd.grad(loss, [x])
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="gradients of gradients"):
        torch.autograd.grad(cell(x).sum(), [x], create_graph=True)


def test_errors():
    cell = rt.LSTMCell(I, H)
    with pytest.raises(ValueError):
        cell(torch.randn(B, I + 1))
    with pytest.raises(RuntimeError):  # InputError is a RuntimeError too, as torch.nn raises
        cell(torch.randn(B, I), (torch.zeros(B + 1, H), torch.zeros(B + 1, H)))
    with pytest.raises(ValueError, match="dtype"):
        cell(torch.randn(B, I, dtype=torch.float64))
    with pytest.raises(TypeError):
        cell(torch.randn(B, I), torch.zeros(B, H))
    with pytest.raises(TypeError):
        rt.GRUCell(I, H, dtype=torch.float16)


@pytest.mark.parametrize("make", [
    lambda **kw: rt.LSTMCell(I, H, **kw), lambda **kw: rt.GRUCell(I, H, **kw),
    lambda **kw: rt.LSTM(I, H, num_layers=2, **kw), lambda **kw: rt.GRU(I, H, **kw),
    lambda **kw: rt.RNN(I, H, **kw), lambda **kw: rt.PeepholeLSTM(I, H, **kw)])
def test_precision_bf16(make):
    import rnncore
    torch.manual_seed(0)
    exact = make()
    torch.manual_seed(0)
    bf16 = make(precision="bf16")
    assert "precision='bf16'" in repr(bf16) and bf16.precision == "bf16"
    x = torch.randn(6, B, I) if isinstance(bf16, rt.LSTM.__mro__[1]) else torch.randn(B, I)
    x.requires_grad_()
    outs = [states(m(x)[0] if isinstance(m, rt.LSTM.__mro__[1]) else m(x)) for m in (exact, bf16)]
    grads = [torch.autograd.grad(sum(o.sum() for o in out), [x] + list(m.parameters()))
             for out, m in zip(outs, (exact, bf16))]
    # without a bf16 kernel (AVX2 CPUs) "bf16" runs the float32 path: identical results
    tol = dict(rtol=0, atol=0) if rnncore.bf16_kernel() == "none" else dict(rtol=0.05,
                                                                            atol=0.02)
    for a, b in zip(outs[0] + list(grads[0]), outs[1] + list(grads[1])):
        torch.testing.assert_close(b, a, **tol)
    with pytest.raises(ValueError, match="float32"):
        make(precision="bf16", dtype=torch.float64)
    with pytest.raises(ValueError, match="precision"):
        make(precision="fp8")
