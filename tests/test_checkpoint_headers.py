"""Checkpoints record what they were written by (cell variant, precision, the app's flags), and
every malformed header, even one whose checksum was recomputed to match, raises CheckpointError
naming the field: never TypeError, KeyError or RecursionError."""
import json

import numpy as np
import pytest

import rnncore
from rnncore import checkpoint
from rnncore.optim import Adam, CosineWarmup
from rnncore.train.checkpoint import CheckpointError


@pytest.mark.parametrize("saved, restored, says", [
    (lambda: rnncore.GRU(3, 4, reset_after=False), lambda: rnncore.GRU(3, 4),
     ["GRU(reset_after=True)", "GRU(reset_after=False)"]),
    (lambda: rnncore.GRU(3, 4), lambda: rnncore.GRU(3, 4, reset_after=False),
     ["GRU(reset_after=False)", "GRU(reset_after=True)"]),
    (lambda: rnncore.RNN(3, 4, nonlinearity="relu"), lambda: rnncore.RNN(3, 4),
     ["nonlinearity='tanh'", "nonlinearity='relu'"]),
    (lambda: rnncore.RNN(3, 4), lambda: rnncore.RNN(3, 4, nonlinearity="relu"),
     ["nonlinearity='relu'", "nonlinearity='tanh'"]),
    (lambda: rnncore.GRUCell(3, 4, reset_after=False), lambda: rnncore.GRUCell(3, 4),
     ["GRUCell(reset_after=True)", "GRUCell(reset_after=False)"]),
])
def test_a_checkpoint_of_another_cell_variant_is_refused_naming_both(tmp_path, saved, restored,
                                                                     says):
    """Same parameter names and shapes: before the variants were recorded these restored
    silently into the wrong cell."""
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, saved())
    model = restored()
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(CheckpointError, match="another cell variant") as e:
        checkpoint.restore(path, model)
    for text in says:
        assert text in str(e.value)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())
    checkpoint.restore(path, saved())  # its own variant restores


def test_the_variant_and_precision_of_every_recurrent_module_are_recorded(tmp_path):
    from rnncore.lm import LanguageModel
    model = LanguageModel(5, embed=3, hidden=4, layers=1, cell="gru_reset_before")
    checkpoint.save(tmp_path / "lm.safetensors", model)
    assert checkpoint.load(tmp_path / "lm.safetensors").modules == {
        "rnn": {"class": "GRU", "cell": "gru_reset_before", "precision": "float32"}}
    checkpoint.save(tmp_path / "bf16.safetensors", rnncore.LSTM(3, 4, precision="bf16"))
    assert checkpoint.load(tmp_path / "bf16.safetensors").modules[""]["precision"] == "bf16"


# ---- crafted headers ----------------------------------------------------------------------------
def _parts(path):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _craft(path, out, change_meta=None, change_metadata=None):
    """A copy of the checkpoint at `path` with its meta JSON changed by change_meta(meta) (and
    the safetensors metadata by change_metadata), the sha256 recomputed so that only the
    header's content is wrong."""
    header, body = _parts(path)
    metadata = header["__metadata__"]
    if change_meta is not None:
        meta = json.loads(metadata["meta"])
        meta = change_meta(meta) or meta
        metadata["meta"] = meta if isinstance(meta, str) else json.dumps(meta)
        tensors = checkpoint._safetensors().load(path.read_bytes())
        metadata["sha256"] = checkpoint._digest(metadata["meta"], tensors)
    if change_metadata is not None:
        change_metadata(metadata)
    blob = json.dumps(header).encode()
    out.write_bytes(len(blob).to_bytes(8, "little") + blob + body)
    return out


def _set(path, value):
    """change_meta setting meta[path[0]][path[1]]... = value (DELETE removes it)."""
    def change(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        if value is DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return change


DELETE = object()
DEEP = "[" * 100_000 + "]" * 100_000

CASES = [  # (change_meta, field named in the message)
    (_set(["step"], -1), "step"),
    (_set(["step"], "x"), "step"),
    (_set(["step"], 1.5), "step"),
    (_set(["step"], True), "step"),
    (_set(["step"], None), "step"),
    (_set(["step"], DELETE), "step"),
    (_set(["module_rngs"], DELETE), "module_rngs"),
    (_set(["module_rngs"], []), "module_rngs"),
    (_set(["module_rngs"], {"drop._rng": 3}), "module_rngs"),
    (_set(["module_rngs", "drop._rng", "state"], "x"), "module_rngs"),
    (_set(["module_rngs", "drop._rng", "bit_generator"], 7), "module_rngs"),
    (_set(["rng"], 5), "rng"),
    (_set(["rng", "state"], {"state": "x", "inc": []}), "rng"),
    (_set(["rng", "bit_generator"], "os"), "rng"),
    (_set(["optimizer"], "Adam"), "optimizer"),
    (_set(["optimizer", "type"], 3), "optimizer.type"),
    (_set(["optimizer", "type"], "SGD"), "optimizer"),
    (_set(["optimizer", "hyperparameters"], []), "optimizer.hyperparameters"),
    (_set(["optimizer", "hyperparameters", "lr"], "x"), "lr"),
    (_set(["optimizer", "hyperparameters"], DELETE), "optimizer.hyperparameters"),
    (_set(["optimizer", "step"], -1), "optimizer.step"),
    (_set(["optimizer", "step"], "x"), "optimizer.step"),
    (_set(["optimizer", "params"], "rnn"), "optimizer.params"),
    (_set(["optimizer", "params"], [1, 2]), "optimizer.params"),
    (_set(["scheduler"], [1]), "scheduler"),
    (_set(["scheduler", "total_steps"], "x"), "total_steps"),
    (_set(["scheduler", "last_step"], DELETE), "last_step"),
    (_set(["modules"], []), "modules"),
    (_set(["modules", "rnn", "cell"], 3), "modules"),
    (_set(["modules", "rnn"], DELETE), None),  # an older file: not checked, restores
    (lambda meta: [meta], "meta"),
    (lambda meta: "7", "meta"),
    (lambda meta: DEEP, "meta"),
    (_set(["config"], json.loads("[" * 50 + "]" * 50)), None),  # deep but fine
]


@pytest.fixture
def saved(tmp_path):
    from rnncore.lm import LanguageModel
    model = LanguageModel(5, embed=3, hidden=4, layers=1, dropout=0.1)
    opt = Adam(model, lr=1e-2)
    sched = CosineWarmup(opt, warmup_steps=2, total_steps=10)
    path = tmp_path / "good.safetensors"
    checkpoint.save(path, model, opt, sched, step=3, rng=np.random.default_rng(0))

    def fresh():
        m = LanguageModel(5, embed=3, hidden=4, layers=1, dropout=0.1)
        o = Adam(m, lr=1e-2)
        return m, o, CosineWarmup(o, warmup_steps=2, total_steps=10), np.random.default_rng(1)
    return path, fresh


@pytest.mark.parametrize("change, field", CASES, ids=range(len(CASES)))
def test_every_malformed_meta_field_raises_checkpoint_error_naming_it(saved, tmp_path, change,
                                                                      field):
    path, fresh = saved
    bad = _craft(path, tmp_path / "bad.safetensors", change_meta=change)
    model, opt, sched, rng = fresh()
    before = {k: v.copy() for k, v in model.params.items()}
    if field is None:
        checkpoint.restore(bad, model, opt, sched, rng=rng)
        return
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(bad, model, opt, sched, rng=rng)
    assert field in str(e.value), str(e.value)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


@pytest.mark.parametrize("change, says", [
    (lambda md: md.update(meta=5), "'meta'"),
    (lambda md: md.update(sha256=["x"]), "'sha256'"),
    (lambda md: md.pop("meta"), "'meta'"),
    (lambda md: md.update(format=[1]), "format"),
])
def test_malformed_safetensors_metadata_raises_checkpoint_error(saved, tmp_path, change, says):
    path, _ = saved
    bad = _craft(path, tmp_path / "bad.safetensors", change_metadata=change)
    with pytest.raises(CheckpointError, match=says):
        checkpoint.load(bad)


def test_a_deeply_nested_safetensors_header_raises_checkpoint_error(tmp_path):
    blob = DEEP.encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(blob).to_bytes(8, "little") + blob)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        checkpoint.load(path)
