"""Every error of the `rnncore` command: one line on stderr, exit status 2, no traceback, found
before any training starts (bad values when the flags are parsed; unusable output folders, input
files and --resume checkpoints before the first update). `--debug` shows the traceback."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rnncore
from rnncore import checkpoint
from rnncore.apps import cli

TRAIN = list(cli.COMMANDS["train"])
PYTHON_DIR = str(Path(rnncore.__file__).resolve().parent.parent)
LM = ["--embed", "4", "--hidden", "8", "--layers", "1", "--batch", "4", "--bptt", "8",
      "--eval-chars", "64", "--threads", "1", "--no-progress", "--sample-length", "5"]
SECONDS = 20  # every error must come before training: far sooner than any default run


def _fails_in_one_line(argv, capsys, says=None):
    """Runs the command; asserts status 2, one line on stderr, no traceback; returns the line."""
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert seconds < SECONDS, (argv, seconds)
    if says is not None:
        assert says in err, err
    return err.strip()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("def f(x):\n    return x + 1\n" * 200)
    return path


@pytest.fixture(scope="module")
def lm_checkpoint(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    assert cli.main(["train", "lm", "--corpus", str(corpus), "--steps", "4", "--stop-after", "2",
                     "--out", str(out)] + LM) in (0, 1)
    return out / "lm.safetensors"


@pytest.fixture(scope="module")
def bad_checkpoints(lm_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    data = lm_checkpoint.read_bytes()
    (folder / "corrupt.safetensors").write_bytes(data[:100] + bytes(200) + data[300:])
    (folder / "truncated.safetensors").write_bytes(data[:len(data) // 2])
    (folder / "garbage.safetensors").write_bytes(b"\x07not a checkpoint at all")
    (folder / "empty.safetensors").write_bytes(b"")
    checkpoint.save(folder / "linear.safetensors", rnncore.Linear(2, 2), config={"n": 1})
    checkpoint.save(folder / "listconfig.safetensors", rnncore.Linear(2, 2), config=[1, 2])
    return folder


BAD_FILES = ["corrupt", "truncated", "garbage", "empty", "linear", "listconfig"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_resume_from_a_bad_checkpoint(corpus, bad_checkpoints, tmp_path, capsys, name):
    """Corrupt, truncated, foreign bytes, empty, and checkpoints that are not a language
    model's (TypeError: 'NoneType' object is not subscriptable before)."""
    line = _fails_in_one_line(
        ["train", "lm", "--corpus", str(corpus), "--steps", "4", "--out", str(tmp_path),
         "--resume", str(bad_checkpoints / f"{name}.safetensors")] + LM, capsys, "--resume")
    assert f"{name}.safetensors" in line


@pytest.mark.parametrize("name", BAD_FILES)
def test_sample_of_a_bad_checkpoint(bad_checkpoints, capsys, name):
    _fails_in_one_line(["sample", str(bad_checkpoints / f"{name}.safetensors")], capsys,
                       f"{name}.safetensors")


@pytest.mark.parametrize("flag, value", [("--batch", "8"), ("--hidden", "16"), ("--bptt", "4"),
                                         ("--cell", "gru"), ("--lr", "0.5"),
                                         ("--level", "word")])
def test_resume_with_other_run_flags_says_which_and_stops(corpus, lm_checkpoint, tmp_path,
                                                          capsys, flag, value):
    """--batch 8 raised a traceback before; --hidden was silently ignored."""
    argv = ["train", "lm", "--corpus", str(corpus), "--steps", "4", "--out", str(tmp_path),
            "--resume", str(lm_checkpoint)] + LM + [flag, value]
    line = _fails_in_one_line(argv, capsys, f"{flag} ")
    assert "was trained with other flags" in line and "--steps" in line  # and what may change


def test_resume_may_change_the_training_flags(corpus, lm_checkpoint, tmp_path, capsys):
    assert cli.main(["train", "lm", "--corpus", str(corpus), "--steps", "3", "--out",
                     str(tmp_path), "--resume", str(lm_checkpoint), "--eval-every", "7",
                     "--seed", "5", "--temperature", "0.2"] + LM) in (0, 1)
    capsys.readouterr()
    assert checkpoint.load(tmp_path / "lm.safetensors").step == 3


def test_an_empty_or_too_short_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("abc")
    for path in (empty, short):
        _fails_in_one_line(["train", "lm", "--corpus", str(path), "--out", str(tmp_path / "o")]
                           + LM, capsys, "too short")
    _fails_in_one_line(["train", "lm", "--corpus", str(tmp_path), "--out", str(tmp_path / "o")]
                       + LM, capsys, "--corpus")  # a folder


@pytest.mark.parametrize("command", TRAIN)
@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--clip", "-inf"),
                                         ("--threads", "-1"), ("--lr", "-1"), ("--clip", "0")])
def test_bad_values_of_every_train_command_are_refused_at_once(command, flag, value, capsys):
    """--lr inf and --threads -1 were accepted by every train command; recognize checked
    neither --lr nor --clip."""
    _fails_in_one_line(["train", command, flag, value, "--steps", "1"], capsys, flag)


@pytest.mark.parametrize("argv", [["train", "lm", "--temperature", "nan"],
                                  ["train", "lm", "--temperature", "inf"],
                                  ["train", "lm", "--dropout", "nan"],
                                  ["train", "lm", "--val-fraction", "nan"],
                                  ["sample", "x.safetensors", "--temperature", "nan"],
                                  ["train", "recognize", "--noise", "nan"],
                                  ["train", "sentiment", "--target", "nan"]])
def test_non_finite_values_are_refused_when_parsed(argv, capsys):
    """--temperature nan crashed after training before."""
    _fails_in_one_line(argv, capsys, argv[-2])


@pytest.mark.parametrize("command", [c for c in TRAIN if c != "echo"])
def test_out_that_is_a_file_or_under_one_fails_before_training(command, tmp_path, capsys):
    """translate and recognize created --out only after training (40-200 s lost)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under"):
        _fails_in_one_line(["train", command, "--out", str(out)], capsys, "--out")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_out_that_is_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _fails_in_one_line(["train", "translate", "--out", str(locked)], capsys, "not writable")


def test_subprocess_one_line_and_debug_shows_the_traceback(bad_checkpoints):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    argv = [sys.executable, "-m", "rnncore", "sample", str(bad_checkpoints / "corrupt.safetensors")]
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    debug = subprocess.run(argv + ["--debug"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
