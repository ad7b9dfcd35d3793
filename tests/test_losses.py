"""Losses against torch.nn.functional in float64 (values and gradients), stability at +-1e4,
masks, ignore_index, label smoothing, empty selections, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rnncore.losses import bce_with_logits, cross_entropy, mse


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch 2.13 is not installed")


def torch_loss_and_grad(torch, fn, x, *args, **kw):
    xt = torch.tensor(x, requires_grad=True)
    loss = fn(xt, *args, **kw)
    loss.backward()
    return loss.item(), xt.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_cross_entropy_matches_torch(torch, reduction, smoothing, scale, rng):
    T, B, C = 5, 3, 7
    logits = rng.standard_normal((T, B, C)) * scale
    targets = rng.integers(0, C, (T, B))
    targets[0, :] = -100  # padding
    loss, d = cross_entropy(logits, targets, ignore_index=-100, label_smoothing=smoothing,
                            reduction=reduction)
    ref, dref = torch_loss_and_grad(
        torch, torch.nn.functional.cross_entropy, logits.reshape(-1, C),
        torch.from_numpy(targets.reshape(-1)), ignore_index=-100, label_smoothing=smoothing,
        reduction=reduction)
    assert np.isfinite(loss) and np.isfinite(d).all()
    assert loss == pytest.approx(ref, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(d.reshape(-1, C), dref, rtol=1e-10, atol=1e-15)
    assert not d[0].any()


def test_cross_entropy_mask_equals_ignore_index(rng):
    logits = rng.standard_normal((4, 3, 5))
    targets = rng.integers(0, 5, (4, 3))
    mask = rng.random((4, 3)) < 0.6
    a = cross_entropy(logits, targets, mask=mask)
    b = cross_entropy(logits, np.where(mask, targets, -1), ignore_index=-1)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    c = cross_entropy(logits, targets, mask=mask.astype(np.float32), label_smoothing=0.1)
    assert np.isfinite(c[0])


def test_cross_entropy_float32_extreme_logits_and_nothing_counted():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e30, -1e30, 0.0]], np.float32)
    loss, d = cross_entropy(logits, np.array([1, 2, 0]))
    assert loss == pytest.approx((2e4 + np.log(3)) / 3, rel=1e-6)
    assert d.dtype == np.float32 and np.isfinite(d).all()
    np.testing.assert_allclose(d[0], [1 / 3, -1 / 3, 0], atol=1e-7)
    loss, d = cross_entropy(logits, np.array([1, 2, 0]), mask=np.zeros(3, bool))
    assert loss == 0.0 and not d.any()
    loss, d = cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64))
    assert loss == 0.0 and d.shape == (0, 4)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.floats(-1e4, 1e4), st.integers(0, 2**32 - 1))
def test_cross_entropy_gradient_by_finite_differences(n, c, shift, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) + shift  # softmax ignores the shift; the code must too
    targets = rng.integers(0, c, n)
    loss, d = cross_entropy(logits, targets, label_smoothing=0.1)
    assert np.isfinite(loss)
    eps = 1e-5 * max(1.0, abs(shift))
    i, j = rng.integers(0, n), rng.integers(0, c)
    up, down = logits.copy(), logits.copy()
    up[i, j] += eps
    down[i, j] -= eps
    numeric = (cross_entropy(up, targets, label_smoothing=0.1)[0]
               - cross_entropy(down, targets, label_smoothing=0.1)[0]) / (2 * eps)
    assert d[i, j] == pytest.approx(numeric, abs=1e-6 * max(1.0, abs(shift)))


def test_cross_entropy_errors():
    z = np.zeros((2, 3))
    with pytest.raises(IndexError, match=r"targets must lie in \[0, 3\).*got 3 at position \(1,\)"):
        cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\).*got \(3,\)"):
        cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'none'"):
        cross_entropy(z, np.array([0, 1]), reduction="none")
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        cross_entropy(z, np.array([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\)"):
        cross_entropy(z, np.array([0, 1]), mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="mask must hold only 0/1"):
        cross_entropy(z, np.array([0, 1]), mask=np.array([0.5, 1.0]))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_bce_with_logits_matches_torch(torch, reduction, scale, rng):
    x = rng.standard_normal((4, 5)) * scale
    y = rng.random((4, 5))
    y[0] = np.round(y[0])
    loss, d = bce_with_logits(x, y, reduction=reduction)
    ref, dref = torch_loss_and_grad(torch, torch.nn.functional.binary_cross_entropy_with_logits,
                                    x, torch.from_numpy(y), reduction=reduction)
    assert np.isfinite(loss) and loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(d, dref, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(torch, reduction, rng):
    x, y = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    loss, d = mse(x, y, reduction=reduction)
    ref, dref = torch_loss_and_grad(torch, torch.nn.functional.mse_loss, x, torch.from_numpy(y),
                                    reduction=reduction)
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(d, dref, rtol=1e-12)


@pytest.mark.parametrize("fn", [bce_with_logits, mse])
def test_elementwise_masks_broadcast_over_trailing_dimensions(fn, rng):
    x, y = rng.standard_normal((5, 3, 2)), rng.random((5, 3, 2))
    mask = rng.random((5, 3)) < 0.5
    mask[0, 0] = True
    loss, d = fn(x, y, mask=mask)
    ref, dref = fn(x[mask], y[mask])  # the counted rows alone
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(d[mask], dref, rtol=1e-12)
    assert not d[~mask].any()
    assert fn(x, y, mask=np.zeros((5,), bool)) [0] == 0.0
    with pytest.raises(ValueError, match="must have the shape of"):
        fn(x, y[:, :, :1])
    with pytest.raises(ValueError, match=r"mask must have shape \(5, 3, 2\) or a prefix"):
        fn(x, y, mask=np.ones((3,), bool))
