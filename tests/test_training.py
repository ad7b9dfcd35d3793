"""Training end to end: the main job learns, the optimisers and gradient clipping do what they say."""
import numpy as np
import pytest

import rnncore
from conftest import CELLS
from rnncore.apps.cli import main
from rnncore.optim import SGD, Adam, clip_grad_norm


def first_and_final_loss(out):
    last = [line for line in out.splitlines() if line.startswith("loss ")][-1]
    return float(last.split()[1]), float(last.split()[3])


def test_main_job_loss_falls(capsys):
    assert main(["train", "echo", "--steps", "80", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    first, final = first_and_final_loss(out)
    assert first > 1.9  # chance level, ln 8 = 2.08
    assert final < 0.75 * first, out


@pytest.mark.parametrize("cell", CELLS)
def test_main_job_every_cell_learns(cell, capsys):
    assert main(["train", "echo", "--cell", cell, "--steps", "60", "--delay", "2", "--seq-len", "12"]) == 0
    out = capsys.readouterr().out
    first, final = first_and_final_loss(out)
    assert final < 0.75 * first, out


def test_main_job_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["train", "echo", "--delay", "40", "--seq-len", "30"])
    with pytest.raises(SystemExit):
        main(["train", "echo", "--hidden", "0"])


def test_gru_many_to_one_classifier_learns_sequence_parity_of_first_two():
    """A many-to-one classifier: XOR of the first two bits of a 10-step sequence, read from h_n.
    Only BPTT through 8+ steps can solve it. (16 units and 300 steps solved it for 5 of 8 seeds;
    32 units and 400 steps for each of seeds 0-11, final losses <= 0.003.)"""
    rng = np.random.default_rng(0)
    net = rnncore.GRU(1, 32, seed=0)
    w = rng.standard_normal((2, 32)).astype(np.float32) * 0.1
    params = {"w": w}
    losses = []
    opt_net = Adam(net, lr=2e-2)
    for step in range(400):
        bits = rng.integers(0, 2, size=(10, 32, 1)).astype(np.float32)
        labels = (bits[0, :, 0] != bits[1, :, 0]).astype(np.int64)
        _, h = net(bits * 2 - 1)
        logits = h[0] @ params["w"].T
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        losses.append(-np.log(p[np.arange(32), labels]).mean())
        d = p.copy()
        d[np.arange(32), labels] -= 1
        d /= 32
        dh = (d @ params["w"])[None].astype(np.float32)
        params["w"] -= 0.2 * (d.T @ h[0])
        net.zero_grad()
        net.backward(np.zeros((10, 32, 32), np.float32), dh)
        clip_grad_norm(net, 1.0)
        opt_net.step()
    assert np.mean(losses[:20]) > 0.6
    assert np.mean(losses[-20:]) < 0.3, np.mean(losses[-20:])


class Quadratic:
    """f(p) = 0.5 * |p - target|^2 with params/grads dicts like a module."""

    def __init__(self):
        self.params = {"p": np.array([3.0, -2.0, 1.0])}
        self.grads = {"p": np.zeros(3)}
        self.target = np.array([1.0, 1.0, 1.0])

    def loss(self):
        self.grads["p"][...] = self.params["p"] - self.target
        return 0.5 * float(((self.params["p"] - self.target) ** 2).sum())


@pytest.mark.parametrize("make", [lambda q: SGD(q, lr=0.1), lambda q: SGD(q, lr=0.05, momentum=0.9),
                                  lambda q: Adam(q, lr=0.1)])
def test_optimisers_minimise_a_quadratic(make):
    q = Quadratic()
    opt = make(q)
    start = q.loss()
    for _ in range(200):
        q.loss()
        opt.step()
    assert q.loss() < 1e-4 * start


def test_clip_grad_norm():
    q = Quadratic()
    q.grads["p"][...] = [3.0, 4.0, 0.0]
    assert clip_grad_norm(q, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(q.grads["p"], [0.6, 0.8, 0.0])
    assert clip_grad_norm(q, 10.0) == pytest.approx(1.0)
    np.testing.assert_allclose(q.grads["p"], [0.6, 0.8, 0.0])  # below the limit: unchanged
    with pytest.raises(ValueError, match="max_norm must be positive"):
        clip_grad_norm(q, 0)
