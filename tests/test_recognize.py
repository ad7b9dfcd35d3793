"""`rnncore train recognize` (rnncore.recognize): rendering, edit distance, and tiny trainings
that learn past measured bounds in seconds."""
import argparse
import re

import numpy as np
import pytest

from rnncore import checkpoint, recognize


def _args(tmp_path, *argv):
    ap = argparse.ArgumentParser()
    recognize.add_arguments(ap)
    return ap.parse_args(["--out", str(tmp_path), "--no-progress", "--threads", "2", *argv])


def _error(message):
    raise SystemExit(message)


def test_rendering_and_batches():
    rng = np.random.default_rng(0)
    clean = recognize.render("I1W", rng, noise=0.0, stretch=0.0)
    assert clean.shape[0] == recognize.HEIGHT
    ink = (clean > 0).any(axis=0)
    # trimmed glyphs: I and 1 are 3 columns wide, W 5, separated by 1-3 blank columns
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], ink, [0]]))))[::2]
    assert runs.tolist() == [3, 3, 5]
    x, widths, labels, texts = recognize.make_batch(rng, 5, "AB", 2, 4)
    assert x.shape == (widths.max(), 5, recognize.HEIGHT) and x.dtype == np.float32
    for b in range(5):
        assert labels[b] == [" AB".index(c) for c in texts[b]] and 2 <= len(texts[b]) <= 4
        assert not x[widths[b]:, b].any()


def test_edit_distance_and_cer():
    assert recognize.edit_distance("kitten", "sitting") == 3
    assert recognize.edit_distance([], [1, 2]) == 2
    assert recognize.character_error_rate([[1, 2], [3]], [[1, 2, 3], [3]]) == 0.25


def _cer(output):
    return float(re.search(r"character error rate ([0-9.]+)%", output).group(1)) / 100


@pytest.mark.parametrize("pyramid", [False, True])
def test_tiny_training_reads_the_strings(tmp_path, capsys, pyramid):
    # Measured (2 threads, seed 0): CER 0.79% (BiLSTM) and 0.20% (pyramid) after 400 updates
    # in about 3 s each; an untrained model reads nothing (CER 100%).
    flags = ["--alphabet", "0123", "--min-chars", "1", "--max-chars", "4", "--hidden", "32",
             "--steps", "400", "--lr", "1e-2", "--eval-size", "200", "--beam", "4"]
    if pyramid:
        flags += ["--pyramid"]
    assert recognize.run(_args(tmp_path, *flags), _error) == 0
    out = capsys.readouterr().out
    assert _cer(out) <= 0.05, out
    ck = checkpoint.load(tmp_path / "recognize.safetensors")
    assert ck.config["pyramid"] == pyramid
    assert abs(ck.config["held_out_cer"] - _cer(out)) <= 5e-5  # printed to 0.01%


@pytest.mark.parametrize("flags, words", [
    (["--alphabet", "ab"], "--alphabet must be distinct characters"),
    (["--alphabet", "AA"], "--alphabet must be distinct characters"),
    (["--min-chars", "5", "--max-chars", "3"], "--min-chars (5) must not exceed --max-chars (3)"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--noise", "-1"], "--noise must be >= 0"),
])
def test_bad_flags(tmp_path, flags, words):
    with pytest.raises(SystemExit, match=re.escape(words)):
        recognize.run(_args(tmp_path, *flags), _error)
