"""examples/word_language_model.py, a training script written for torch.nn, with either backend:
in float64 without dropout every training loss is the same, and the whole model saves and
reloads with torch.load(weights_only=True)."""
import importlib.util
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def script(monkeypatch):
    # registered as a module so that torch.save can pickle the script's model class by name
    spec = importlib.util.spec_from_file_location("word_language_model",
                                                  ROOT / "examples" / "word_language_model.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "word_language_model", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["LSTM", "GRU", "RNN"])
def test_both_backends_give_the_same_losses(model, tmp_path, monkeypatch):
    wlm = script(monkeypatch)
    losses = {}
    for backend in ("torch", "rnncore"):
        args = wlm.parser().parse_args([
            "--backend", backend, "--model", model, "--double", "--max-batches", "6",
            "--emsize", "16", "--nhid", "16", "--batch-size", "4", "--bptt", "12",
            "--log-interval", "0", "--save", str(tmp_path / f"{backend}.pt")])
        losses[backend] = wlm.run(args)
    assert len(losses["torch"]) == 6
    assert losses["rnncore"] == pytest.approx(losses["torch"], rel=1e-10, abs=1e-12)
