"""The numpy sequence modules' to(dtype) (issue 21, item 6): float32 <-> float64 conversion of
parameters and gradients, returning the module; .to("cpu") keeps meaning a device."""
import numpy as np
import pytest

import rnncore


@pytest.mark.parametrize("cls", [rnncore.LSTM, rnncore.GRU, rnncore.RNN, rnncore.PeepholeLSTM])
def test_to_dtype_converts_and_returns_self(cls):
    module = cls(3, 5, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    y32 = module(x)[0]
    assert module.to(np.float64) is module
    assert module.dtype == np.float64 and "dtype=float64" in repr(module)
    assert all(p.dtype == np.float64 for p in module.parameters())
    assert all(g.dtype == np.float64 for g in module.grads.values())
    y64, _ = module(x.astype(np.float64))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)
    module.train()
    y, _ = module(x.astype(np.float64))
    module.backward(np.ones_like(y))
    assert module.grads["weight_hh_l0"].dtype == np.float64
    assert module.to("cpu") is module and module.dtype == np.float64
    assert module.to("float32").dtype == np.float32 and module.double().dtype == np.float64


def test_to_dtype_refusals():
    with pytest.raises(ValueError):
        rnncore.GRU(3, 5).to(np.float16)
    with pytest.raises(ValueError, match="float32"):
        rnncore.GRU(3, 5, precision="bf16").to(np.float64)
