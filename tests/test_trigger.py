"""rnncore train trigger: the generated spectrograms and their labels, the scores, a tiny run
that learns past a bound in seconds, the checkpoint, and bad flags."""
import argparse
import re

import numpy as np
import pytest

from rnncore import checkpoint, trigger
from rnncore.trigger import (BINS, TriggerDetector, event_counts, frame_scores, make_clip,
                             word_pattern)


def _parser():
    ap = argparse.ArgumentParser(prog="rnncore train trigger")
    trigger.add_arguments(ap)
    return ap


def test_the_falling_distractor_is_the_trigger_backwards():
    """Only the order of the frames tells the trigger from the falling distractor."""
    for frames, shift in ((20, 0.0), (27, -0.7), (24, 0.9)):
        t = word_pattern("trigger", frames, shift)
        np.testing.assert_allclose(word_pattern("falling", frames, shift)[::-1], t, atol=1e-12)
        assert t.shape == (frames, BINS) and t.max() > 0.9
    with pytest.raises(ValueError, match="word must be one of"):
        word_pattern("hello", 10, 0.0)


def test_labels_are_the_frames_right_after_each_trigger():
    rng = np.random.default_rng(5)
    seen = 0
    for _ in range(50):
        x, labels, ends = make_clip(rng, 300, 40)
        assert x.shape == (300, BINS) and x.dtype == np.float32
        expected = np.zeros(300)
        for end in ends:
            expected[end:end + 40] = 1
        np.testing.assert_array_equal(labels, expected)
        seen += len(ends)
    assert 30 < seen < 70  # 0, 1 or 2 triggers per clip


def test_frame_scores_and_event_counts():
    labels = np.zeros((20, 2))
    labels[5:10, 0] = 1
    labels[12:15, 1] = 1
    predicted = np.zeros((20, 2))
    predicted[7:12, 0] = 1      # 3 of 5 frames right, 2 frames late
    predicted[1:3, 1] = 1       # a false alarm; the second trigger is missed
    p, r, f1 = frame_scores(predicted, labels)
    assert (p, r) == (3 / 7, 3 / 8) and f1 == pytest.approx(2 * p * r / (p + r))
    assert event_counts(predicted, labels) == (1, 2, 1)


def test_tiny_run_learns_in_seconds(tmp_path, capsys):
    """400 updates on 400 clips of 120 frames, a 32-unit GRU (under a second): held-out frame
    F1 >= 0.88 (measured 0.960-0.966 over seeds 0-2)."""
    args = _parser().parse_args(["--frames", "120", "--label-frames", "15", "--train-clips",
                                 "400", "--test-clips", "100", "--hidden", "32", "--layers", "1",
                                 "--steps", "400", "--eval-every", "400", "--target", "0.88",
                                 "--threads", "1", "--no-progress", "--out", str(tmp_path)])
    assert trigger.run(args, _parser().error) == 0
    out = capsys.readouterr().out
    f1 = float(re.search(r"held-out frame F1: ([\d.]+)", out).group(1))
    assert f1 >= 0.88, out
    ck = checkpoint.load(tmp_path / "trigger.safetensors")
    assert ck.extra["f1"] == pytest.approx(f1, abs=1e-3) and ck.config["label_frames"] == 15
    model = TriggerDetector(ck.config["cell"], ck.config["hidden"], ck.config["layers"])
    checkpoint.restore(tmp_path / "trigger.safetensors", model)
    x, y, _ = trigger.make_dataset(np.random.default_rng(99), 50, 120, 15)
    assert frame_scores(model.predict(x) >= 0.5, y)[2] >= 0.85


@pytest.mark.parametrize("flag, value, message", [
    ("--label-frames", "0", "--label-frames must be positive"),
    ("--frames", "50", "--frames must be at least 96"),
])
def test_bad_flags_exit_with_code_2(flag, value, message, tmp_path, capsys):
    ap = _parser()
    args = ap.parse_args([flag, value, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        trigger.run(args, ap.error)
    assert e.value.code == 2 and message in capsys.readouterr().err
