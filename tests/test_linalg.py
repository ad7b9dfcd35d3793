"""rnncore._core.matmul: the dense products of the layers around the core, on rnncore's threads."""
import numpy as np
import pytest

import rnncore
from rnncore._ext import core as _core


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (37, 5, 130), (3, 300, 17), (0, 4, 3), (4, 3, 0)])
def test_matmul_equals_numpy(dtype, trans_a, trans_b, m, n, k, rng):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for threads in (1, 2):
        rnncore.set_num_threads(threads)
        out = _core.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        assert out.dtype == dtype and out.shape == (m, n)
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * max(k, 1))
        acc = np.ones((m, n), dtype)
        assert _core.matmul(a, b, acc, trans_a=trans_a, trans_b=trans_b, accumulate=True) is acc
        np.testing.assert_allclose(acc, expected + 1, rtol=tol, atol=tol * max(k, 1))


def test_matmul_rejects_mismatches():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner sizes differ"):
        _core.matmul(a, np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="b must have dtype float32"):
        _core.matmul(a, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 2\)"):
        _core.matmul(a, np.ones((4, 2), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.matmul(a, np.ones((2, 4), np.float32).T)
    with pytest.raises(TypeError, match="2-D"):
        _core.matmul(np.ones(3, np.float32), a)
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        _core.matmul(a, np.ones((4, 2), np.float32), accumulate=True)
