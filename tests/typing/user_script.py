"""A user's training script, checked with `mypy --strict` (tests/test_typing.py): rnncore's
public API must give mypy real types, not Any."""
from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

import rnncore
from rnncore import checkpoint, losses, optim
from rnncore._typing import Array

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # mypy checks with the newest Python's typing; at run time on 3.9/3.10 a no-op
    def assert_type(value: object, _type: object) -> object:
        return value


def make_data(rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    x = rng.standard_normal((20, 8, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=(20, 8))
    return x, labels


def train(steps: int, path: str) -> float:
    rng = np.random.default_rng(0)
    lstm = rnncore.LSTM(5, 16, num_layers=2, seed=0)
    head = rnncore.Linear(16, 3, seed=1)
    opt = optim.Adam([lstm, head], lr=1e-2)
    loss = float("nan")
    for _ in range(steps):
        x, labels = make_data(rng)
        y, (h_n, c_n) = lstm(x)
        assert_type(y, Array)  # a real type, not Any: mypy fails here otherwise
        assert_type(c_n, Array)
        logits = head(y)
        loss, dlogits = losses.cross_entropy(logits, labels)
        lstm.zero_grad()
        head.zero_grad()
        dx, (dh0, dc0) = lstm.backward(head.backward(dlogits))
        assert_type(dc0, Array)
        optim.clip_grad_norm([lstm, head], 1.0)
        opt.step()
    cell = rnncore.GRUCell(5, 16, seed=2)
    h = cell(np.zeros((8, 5), np.float32))
    assert_type(h, Array)
    assert h.shape == (8, 16)
    checkpoint.save(path, rnncore.Sequential(lstm, head), optimizer=opt, step=steps)
    names: list[str] = [name for name, _ in lstm.named_parameters()]
    assert names
    return loss


def with_torch() -> None:
    import torch
    import rnncore.torch as rt
    model = rt.LSTM(5, 16, batch_first=True)
    out, (h, c) = model(torch.zeros(2, 7, 5))
    out.sum().backward()
    cell = rt.LSTMCell(5, 16)
    h1, c1 = cell(torch.zeros(2, 5))
    (h1.sum() + c1.sum()).backward()


if __name__ == "__main__":
    print(train(3, "/tmp/typed.safetensors"))
