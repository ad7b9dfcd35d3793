"""Linear, Embedding, Dropout, LayerNorm: float64 finite differences (rnncore.check_gradients),
PyTorch 2.13 as an independent oracle, the tape rules, and the errors."""
import copy
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import rnncore
from rnncore.layers import scatter_add_rows

f64 = np.float64


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch 2.13 is not installed")


# ---- Linear -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(lead, bias, rng):
    m = rnncore.Linear(3, 4, bias=bias, dtype=f64, seed=1)
    rnncore.check_gradients(m, rng.standard_normal(lead + (3,)))


def test_linear_matches_torch(rng):
    torch = torch_or_skip()
    m = rnncore.Linear(6, 5, dtype=f64, seed=2)
    t = torch.nn.Linear(6, 5, dtype=torch.float64)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((4, 3, 6))
    dy = rng.standard_normal((4, 3, 5))
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    yt.backward(torch.from_numpy(dy))
    y = m(x)
    dx = m.backward(dy)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(m.grads["weight"], t.weight.grad.numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(m.grads["bias"], t.bias.grad.numpy(), rtol=1e-13, atol=1e-14)


def test_linear_init_shapes_and_accumulation(rng):
    m = rnncore.Linear(16, 3, seed=0)
    assert m.params["weight"].shape == (3, 16) and m.params["bias"].shape == (3,)
    assert m.params["weight"].dtype == np.float32
    bound = 1 / np.sqrt(16)
    assert np.abs(m.params["weight"]).max() <= bound and np.abs(m.params["bias"]).max() <= bound
    assert np.abs(m.params["weight"]).max() > 0.8 * bound  # uniform over the whole range
    x, dy = rng.standard_normal((7, 16)), rng.standard_normal((7, 3))
    m(x)
    m.backward(dy)
    once = m.grads["weight"].copy()
    m(x)
    m.backward(dy)
    np.testing.assert_allclose(m.grads["weight"], 2 * once, rtol=1e-6)  # backward adds
    assert m(x.astype(np.int64)).dtype == np.float32  # converted to the module's dtype
    m.zero_grad()
    assert not m.grads["weight"].any()


def test_linear_empty_batch(rng):
    m = rnncore.Linear(3, 2, dtype=f64)
    y = m(np.zeros((0, 5, 3)))
    assert y.shape == (0, 5, 2)
    assert m.backward(np.zeros((0, 5, 2))).shape == (0, 5, 3)
    assert not m.grads["weight"].any()


def test_linear_errors(rng):
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        rnncore.Linear(0, 3)
    m = rnncore.Linear(3, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\).*got \(4, 5\)"):
        m(np.zeros((4, 5)))
    with pytest.raises(TypeError, match="x must be a numeric array"):
        m(np.array([["a", "b", "c"]]))
    m(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2\).*got \(4, 3\)"):
        m.backward(np.zeros((4, 3)))
    m.backward(np.zeros((4, 2)))  # a failed check kept the tape; this consumes it
    with pytest.raises(RuntimeError, match="needs a preceding training-mode forward"):
        m.backward(np.zeros((4, 2)))
    m.eval()
    m(np.zeros((4, 3)))
    with pytest.raises(RuntimeError, match="needs a preceding training-mode forward"):
        m.backward(np.zeros((4, 2)))


# ---- Embedding ----------------------------------------------------------------------------------
def test_embedding_gradients(rng):
    m = rnncore.Embedding(7, 3, dtype=f64, seed=1)
    rnncore.check_gradients(m, rng.integers(0, 7, (5, 4)))


@pytest.mark.parametrize("vocab", [100, 10_000])
def test_embedding_backward_sums_repeated_indices(vocab, rng):
    m = rnncore.Embedding(vocab, 64, seed=0)
    idx = rng.integers(0, vocab, (64, 32))
    idx[:3, :3] = 5  # at least one index repeated many times
    y = m(idx)
    np.testing.assert_array_equal(y, m.params["weight"][idx])
    dy = rng.standard_normal((64, 32, 64)).astype(np.float32)
    assert m.backward(dy) is None
    expected = np.zeros((vocab, 64))
    np.add.at(expected, idx.reshape(-1), dy.reshape(-1, 64).astype(f64))
    np.testing.assert_allclose(m.grads["weight"], expected, rtol=1e-5, atol=1e-5)


def test_embedding_matches_torch_with_padding_idx(rng):
    torch = torch_or_skip()
    m = rnncore.Embedding(10, 4, padding_idx=-2, dtype=f64, seed=3)
    assert m.padding_idx == 8 and not m.params["weight"][8].any()
    t = torch.nn.Embedding(10, 4, padding_idx=8, dtype=torch.float64)
    t.load_state_dict({"weight": torch.from_numpy(m.params["weight"])})
    idx = rng.integers(0, 10, (6, 5))
    idx[0, :] = 8
    dy = rng.standard_normal((6, 5, 4))
    yt = t(torch.from_numpy(idx))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(m(idx), yt.detach().numpy())
    m.backward(dy)
    np.testing.assert_allclose(m.grads["weight"], t.weight.grad.numpy(), rtol=1e-13, atol=1e-14)
    assert not m.grads["weight"][8].any()


def test_embedding_backward_makes_no_vocabulary_sized_temporary(rng):
    vocab, dim = 200_000, 16  # weight and grads: 12.8 MB each
    m = rnncore.Embedding(vocab, dim, seed=0)
    idx = rng.integers(0, vocab, (64, 8))
    idx[:, 0] = 7
    m(idx)
    dy = np.ones((64, 8, dim), np.float32)
    tracemalloc.start()
    try:
        m.backward(dy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < m.grads["weight"].nbytes / 20, peak
    assert m.grads["weight"][7].sum() == pytest.approx(64 * dim)


def test_embedding_errors():
    m = rnncore.Embedding(5, 2)
    with pytest.raises(IndexError, match=r"\[0, 5\).*got 5 at position \(1, 0\)"):
        m(np.array([[0, 1], [5, 2]]))
    with pytest.raises(IndexError, match="got -1"):
        m(np.array([-1]))
    with pytest.raises(TypeError, match="indices must be an integer array, got dtype float64"):
        m(np.array([1.0]))
    with pytest.raises(ValueError, match="padding_idx must lie in"):
        rnncore.Embedding(5, 2, padding_idx=5)
    with pytest.raises(RuntimeError):
        m.backward(np.zeros((1, 2)))
    m(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 2\)"):
        m.backward(np.zeros((3, 2)))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 9), max_size=40))
def test_scatter_add_rows_equals_add_at(rows):
    rows = np.array(rows, dtype=np.intp)
    values = np.arange(rows.size * 3, dtype=f64).reshape(-1, 3) + 0.5
    got = np.ones((10, 3))
    scatter_add_rows(got, rows, values)
    expected = np.ones((10, 3))
    np.add.at(expected, rows, values)
    np.testing.assert_array_equal(got, expected)


# ---- Dropout ------------------------------------------------------------------------------------
def test_dropout_statistics_and_mask_reuse(rng):
    p = 0.3
    m = rnncore.Dropout(p, seed=4)
    x = np.ones((200, 500), np.float32)
    y = m(x)
    kept = y != 0
    n = x.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = m.backward(dy)
    np.testing.assert_allclose(dx, np.where(kept, dy / (1 - p), 0), rtol=1e-6)
    assert not np.array_equal(m(x) != 0, kept)  # a new mask per forward


def test_dropout_gradients_eval_and_edges(rng):
    x = rng.standard_normal((6, 5))
    rnncore.check_gradients(rnncore.Dropout(0.5, seed=1, dtype=f64), x)
    m = rnncore.Dropout(0.5, seed=1, dtype=f64).eval()
    np.testing.assert_array_equal(m(x), x)
    with pytest.raises(RuntimeError):
        m.backward(x)
    np.testing.assert_array_equal(rnncore.Dropout(0.0, dtype=f64)(x), x)
    m1 = rnncore.Dropout(1.0, dtype=f64)
    assert not m1(x).any() and not m1.backward(x).any()
    a, b = rnncore.Dropout(0.5, seed=9), rnncore.Dropout(0.5, seed=9)
    np.testing.assert_array_equal(a(x), b(x))  # the seed fixes the masks
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="p \\(the drop probability\\) must lie in"):
            rnncore.Dropout(bad)


# ---- LayerNorm ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,affine", [(3, True), ((2, 3), True), (4, False)])
def test_layernorm_gradients(shape, affine, rng):
    m = rnncore.LayerNorm(shape, elementwise_affine=affine, dtype=f64)
    if affine:  # away from the trivial start
        m.params["weight"][...] = rng.standard_normal(m.params["weight"].shape)
        m.params["bias"][...] = rng.standard_normal(m.params["bias"].shape)
    ns = (shape,) if isinstance(shape, int) else shape
    rnncore.check_gradients(m, rng.standard_normal((5,) + ns))


def test_layernorm_matches_torch(rng):
    torch = torch_or_skip()
    m = rnncore.LayerNorm((3, 5), eps=1e-3, dtype=f64)
    m.params["weight"][...] = rng.standard_normal((3, 5))
    m.params["bias"][...] = rng.standard_normal((3, 5))
    t = torch.nn.LayerNorm((3, 5), eps=1e-3, dtype=torch.float64)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((4, 2, 3, 5)) * 3 + 1
    dy = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(m(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.backward(dy), xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    for k, p in t.named_parameters():
        np.testing.assert_allclose(m.grads[k], p.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_layernorm_errors():
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2, 3\).*got \(4, 3, 2\)"):
        rnncore.LayerNorm((2, 3))(np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="eps must be a positive number"):
        rnncore.LayerNorm(3, eps=0)
    with pytest.raises(ValueError, match="normalized_shape must be a positive integer, got 0"):
        rnncore.LayerNorm((3, 0))


# ---- shared behaviour ---------------------------------------------------------------------------
LAYERS = [lambda: rnncore.Linear(3, 2, seed=1), lambda: rnncore.Embedding(6, 3, seed=1),
          lambda: rnncore.Dropout(0.5, seed=1), lambda: rnncore.LayerNorm(3)]
INPUTS = [lambda r: r.standard_normal((4, 3)), lambda r: r.integers(0, 6, (4, 3)),
          lambda r: r.standard_normal((4, 3)), lambda r: r.standard_normal((4, 3))]


@pytest.mark.parametrize("k", range(len(LAYERS)))
def test_copies_have_no_pending_backward_and_equal_state(k, rng):
    m = LAYERS[k]()
    x = INPUTS[k](rng)
    y = m(x)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with pytest.raises(RuntimeError):
            c.backward(np.zeros_like(y))
        for name, p in m.params.items():
            np.testing.assert_array_equal(c.params[name], p)
        c.eval()
        m.eval()
        np.testing.assert_array_equal(c(x), m(x))
        m.train()
    fresh = LAYERS[k]()
    fresh.load_state_dict(m.state_dict())
    assert repr(m).startswith(type(m).__name__ + "(")


def test_backward_refuses_a_forward_replaced_by_another_thread(rng):
    import threading
    m = rnncore.Linear(3, 2, seed=0)
    x = rng.standard_normal((4, 3))
    m(x)
    other = threading.Thread(target=lambda: m(x[:1]))
    other.start()
    other.join()
    with pytest.raises(RuntimeError, match="replaced by a later training forward from another"):
        m.backward(np.zeros((4, 2)))
    assert not m.grads["weight"].any()
    m(x)  # a new forward of this thread is back-propagated normally
    m.backward(np.ones((4, 2)))
    assert m.grads["weight"].any()
