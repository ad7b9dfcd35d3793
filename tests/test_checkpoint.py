"""Checkpoints: resuming is bitwise the same as not stopping; atomic writes; truncated, corrupted,
foreign and mismatched files raise CheckpointError naming the file and change nothing."""
import json
import os

import numpy as np
import pytest

import rnncore
from rnncore import checkpoint
from rnncore.checkpoint import CheckpointError
from rnncore.losses import cross_entropy
from rnncore.optim import SGD, Adam, CosineWarmup, ReduceLROnPlateau, StepLR, clip_grad_norm

V, T, B = 7, 6, 3


class Net(rnncore.Model):
    def __init__(self, seed, hidden=8, dtype=np.float32):
        super().__init__()
        self.embed = rnncore.Embedding(V, 5, dtype=dtype, seed=seed)
        # two layers with dropout between them: the LSTM's own generator must come back too
        self.rnn = rnncore.LSTM(5, hidden, num_layers=2, dropout=0.3, dtype=dtype, seed=seed + 1)
        self.head = rnncore.Linear(hidden, V, dtype=dtype, seed=seed + 2)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)

    def backward(self, dlogits):
        dh, _ = self.rnn.backward(self.head.backward(dlogits))
        self.embed.backward(dh)


def make(seed=0, **kw):
    model = Net(seed, **kw)
    opt = Adam(model, lr=0.05)
    return model, opt, CosineWarmup(opt, warmup_steps=3, total_steps=12)


def train(model, opt, sched, rng, steps, losses):
    for _ in range(steps):
        tokens = rng.integers(0, V, (T + 1, B))
        loss, dlogits = cross_entropy(model(tokens[:-1]), tokens[1:])
        model.zero_grad()
        model.backward(dlogits)
        clip_grad_norm(model, 1.0)
        opt.step()
        sched.step()
        losses.append(loss)


def snapshot(model, opt=None):
    out = {k: v.copy() for k, v in model.params.items()}
    if opt is not None:
        out.update({f"{n}.{b}": a.copy() for n, bufs in opt.state.items() for b, a in bufs.items()})
        out["lr"], out["step"] = opt.lr, opt.step_count
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after 4 training steps, and the objects that wrote it."""
    model, opt, sched = make()
    rng = np.random.default_rng(100)
    train(model, opt, sched, rng, 4, [])
    path = tmp_path / "ck.safetensors"
    checkpoint.save(path, model, opt, sched, step=4, rng=rng, config={"hidden": 8},
                    extra={"note": "four steps", "best": float("inf")})
    return path, model, opt, sched, rng


def test_resume_is_bitwise_identical_to_not_stopping(saved):
    path, model, opt, sched, rng = saved
    straight = make()
    straight_rng = np.random.default_rng(100)
    straight_losses = []
    train(*straight, straight_rng, 10, straight_losses)

    fresh = make(seed=99)  # other weights, other dropout generator
    fresh_rng = np.random.default_rng(12345)
    ck = checkpoint.restore(path, *fresh, rng=fresh_rng)
    assert ck.step == 4 and ck.config == {"hidden": 8}
    assert ck.extra == {"note": "four steps", "best": float("inf")}
    resumed_losses = straight_losses[:4]
    train(*fresh, fresh_rng, 6, resumed_losses)
    assert resumed_losses == straight_losses
    assert_same(snapshot(fresh[0], fresh[1]), snapshot(straight[0], straight[1]))


def test_load_reads_without_changing_anything(saved):
    path, model, opt, sched, rng = saved
    ck = checkpoint.load(path)
    assert list(ck.model) == sorted(model.params)
    assert_same(dict(ck.model), snapshot(model))
    assert ck.optimizer["type"] == "Adam" and ck.optimizer["step"] == 4
    assert list(ck.optimizer["state"]["rnn.weight_hh_l1"]) == ["exp_avg", "exp_avg_sq"]
    assert ck.scheduler["type"] == "CosineWarmup" and ck.scheduler["last_step"] == 4
    assert ck.rng().integers(1 << 60) == rng.integers(1 << 60)
    assert list(ck.module_rngs) == ["rnn._rng"]
    fresh = Net(5)
    fresh.load_state_dict(ck.model)
    assert_same(snapshot(fresh), snapshot(model))


def test_the_metadata_is_standard_json(saved):
    from safetensors import safe_open
    path = saved[0]
    with safe_open(str(path), framework="numpy") as f:
        md = f.metadata()
        keys = set(f.keys())
    assert md["format"] == "rnncore-checkpoint"
    meta = json.loads(md["meta"], parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    assert meta["extra"]["best"] == {"__float__": "inf"}
    assert "model.rnn.weight_ih_l0" in keys and "optim.rnn.weight_ih_l0.exp_avg_sq" in keys


def test_plateau_schedule_and_sgd_without_buffers_round_trip(tmp_path):
    model = Net(0)
    opt = SGD(model, lr=0.1)
    sched = ReduceLROnPlateau(opt, patience=0)  # best = inf until the first step
    path = checkpoint.save(tmp_path / "p.safetensors", model, opt, sched)
    model2 = Net(1)
    opt2 = SGD(model2, lr=0.7)
    sched2 = ReduceLROnPlateau(opt2, patience=3)
    checkpoint.restore(path, model2, opt2, sched2)
    assert sched2.best == float("inf") and sched2.patience == 0 and opt2.lr == 0.1
    assert sched2.step(1.0) == sched.step(1.0) and sched2.step(2.0) == sched.step(2.0)


def test_writes_are_atomic(saved, monkeypatch):
    path, model, opt, sched, _ = saved
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\['x'\] must be JSON-serialisable.*got object"):
        checkpoint.save(path, model, extra={"x": object()})
    with pytest.raises(TypeError, match="key 1 is not a string"):
        checkpoint.save(path, model, config={1: 2})

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(path, model, opt, sched, step=9)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    checkpoint.save(path, model, step=5)
    assert checkpoint.load(path).step == 5 and os.listdir(path.parent) == [path.name]


def refused(path, match, *objects):
    """restore() raises CheckpointError(match) naming the file, and changes nothing."""
    model = objects[0] if objects else Net(3)
    opt = objects[1] if len(objects) > 1 else None
    before = snapshot(model, opt)
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.restore(path, *(objects or (model,)))
    assert str(info.value).startswith(str(path)) and isinstance(info.value, ValueError)
    assert_same(snapshot(model, opt), before)


def test_truncated_corrupted_and_foreign_files(saved, tmp_path):
    path = saved[0]
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "bad.safetensors"
    for cut, match in ((len(data) - 10, "truncated: the header promises"),
                       (8 + n // 2, "truncated"), (5, "truncated or not a checkpoint"),
                       (0, "truncated")):
        bad.write_bytes(data[:cut])
        refused(bad, match)
    flipped = bytearray(data)
    flipped[-3] ^= 0x10  # one bit of one tensor
    bad.write_bytes(bytes(flipped))
    refused(bad, "corrupted: the checksum")
    pattern = b'\\"step\\": 4'  # inside the header, the meta JSON is an escaped string
    digit = data.index(pattern) + len(pattern) - 1
    edited = bytearray(data)
    edited[digit] = ord("5")  # a well-formed edit of the metadata
    bad.write_bytes(bytes(edited))
    refused(bad, "corrupted: the checksum")
    broken = bytearray(data)
    broken[9] = ord("#")
    bad.write_bytes(bytes(broken))
    refused(bad, "corrupted header")
    bad.write_text("hello, world\n" * 20)
    refused(bad, "not a checkpoint")
    from safetensors.numpy import save_file
    save_file({"a": np.zeros(3, np.float32)}, str(bad))
    refused(bad, "not an rnncore checkpoint")
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_mismatched_models_optimisers_and_schedules(saved):
    path = saved[0]
    refused(path, r"model.rnn.weight_ih_l0 has shape \(32, 5\) in the file, the model's is "
                  r"\(36, 5\)", Net(0, hidden=9))
    refused(path, "model.embed.weight has dtype float32 in the file, the model's is float64",
            Net(0, dtype=np.float64))

    class Bigger(Net):
        def __init__(self):
            super().__init__(0)
            self.extra = rnncore.Linear(2, 2)

    refused(path, r"missing in the file \['extra.weight', 'extra.bias'\]", Bigger())
    model = Net(3)
    refused(path, "the optimizer does not match the file's: the state_dict is of a Adam "
                  "optimiser, this one is SGD", model, SGD(model, lr=0.1))
    opt = Adam(model, lr=0.3)
    refused(path, "the scheduler does not match the file's: the state_dict is of a "
                  "CosineWarmup schedule, this one is StepLR", model, opt, StepLR(opt, 2))
    assert opt.lr == 0.3
    other = Adam([model, Net(4)], lr=0.3)
    refused(path, r"the optimizer does not match the file's: optimizer state: parameter names: "
                  r"missing \['0.embed.weight'", model, other)

    class WithDropout(Net):  # the same parameters, one more generator
        def __init__(self):
            super().__init__(0)
            self.drop = rnncore.Dropout(0.1)

    refused(path, r"random generators \['drop._rng', 'rnn._rng'\] do not match the file's "
                  r"\['rnn._rng'\]", WithDropout())
    model, opt, sched = make(seed=7)
    plain = Net(3)
    checkpoint.save(path, plain)
    refused(path, "holds no optimizer state", model, opt)
