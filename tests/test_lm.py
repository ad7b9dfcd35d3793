"""The language-model main job: corpus, vocabulary, learning on a tiny corpus, sampling,
checkpoint resume bitwise equal to not stopping, and the CLI around it."""
import random

import numpy as np
import pytest

import rnncore
from rnncore import checkpoint
from rnncore.apps.cli import main
from rnncore.lm import LanguageModel, Vocabulary, default_corpus, generate, load_model


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """~49,000 characters of a small regular language: names drawn at random, digits cycling."""
    rnd = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta"]
    text = "".join(f"def {rnd.choice(words)}_{i % 10}(x):\n    return x + {i % 10}\n"
                   for i in range(1500))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text)
    return path


TINY = ["--embed", "16", "--hidden", "48", "--layers", "1", "--batch", "16", "--bptt", "32",
        "--warmup", "10", "--lr", "1e-2", "--threads", "1", "--no-progress",
        "--sample-length", "40"]


def _bpc(out):
    line = [s for s in out.splitlines() if s.startswith("validation bits/char:")][-1]
    words = line.split()
    return float(words[2]), float(words[6])


def test_default_corpus_is_the_standard_library_and_deterministic():
    text, source = default_corpus(50_000)
    assert len(text) == 50_000 and "def " in text and "standard library" in source
    assert default_corpus(50_000)[0] == text


@pytest.mark.parametrize("level", ["char", "word"])
def test_vocabulary_round_trip_and_unknown_tokens(level):
    text = "def f(x):\n    return x  + 1\n"
    v = Vocabulary.from_text(text, level)
    assert v.decode(v.encode(text)) == text
    assert v.itos[0] == "\ufffd" and v.encode("§")[0] == 0
    small = Vocabulary.from_text(text * 3 + "rare", "word", max_size=4)
    assert len(small) == 4 and small.encode("rare")[0] == 0


def test_tiny_corpus_is_learned_in_seconds(tiny_corpus, tmp_path, capsys):
    """150 updates (about a second): validation bits per character from 5.0 (untrained, 33
    symbols) to below 0.45 (measured 0.31; the digits and names drawn at random cost about 0.25),
    and the sample follows the corpus' format."""
    assert main(["train", "lm", "--corpus", str(tiny_corpus), "--steps", "150",
                 "--eval-every", "50", "--out", str(tmp_path)] + TINY) == 0
    out = capsys.readouterr().out
    before, after = _bpc(out)
    assert before > 4.5 and after < 0.45, out
    assert "return x + " in (tmp_path / "samples.txt").read_text()
    assert (tmp_path / "lm.safetensors").exists() and (tmp_path / "loss.png").exists()


@pytest.mark.parametrize("k2", [None, "48"])
def test_resume_is_bitwise_the_same_as_not_stopping(tiny_corpus, tmp_path, capsys, k2):
    """40 updates in one go against 25 (--stop-after, the same 40-update schedule) + a resumed 15,
    with dropout (the generators' states matter) and with k2 > k1 (so do the kept window-start
    states)."""
    common = ["train", "lm", "--corpus", str(tiny_corpus), "--eval-every", "1000",
              "--dropout", "0.1", "--layers", "2"] + TINY + (["--k2", k2] if k2 else [])
    assert main(common + ["--steps", "40", "--out", str(tmp_path / "whole")]) == 0
    assert main(common + ["--steps", "40", "--stop-after", "25",
                          "--out", str(tmp_path / "part")]) == 0
    ck = checkpoint.load(tmp_path / "part" / "lm.safetensors")
    assert main(common + ["--steps", "40", "--out", str(tmp_path / "part2"), "--resume",
                          str(tmp_path / "part" / "lm.safetensors")]) == 0
    capsys.readouterr()
    whole = checkpoint.load(tmp_path / "whole" / "lm.safetensors")
    resumed = checkpoint.load(tmp_path / "part2" / "lm.safetensors")
    assert ck.step == 25 and resumed.step == whole.step == 40
    for k, v in whole.model.items():
        np.testing.assert_array_equal(resumed.model[k], v, err_msg=k)


def test_part_run_checkpoint_differs_from_the_whole_run(tiny_corpus, tmp_path, capsys):
    """The resume test above would pass trivially if the parameters never moved."""
    common = ["train", "lm", "--corpus", str(tiny_corpus), "--eval-every", "1000"] + TINY
    main(common + ["--steps", "10", "--out", str(tmp_path / "a")])
    main(common + ["--steps", "20", "--out", str(tmp_path / "b")])
    capsys.readouterr()
    a = checkpoint.load(tmp_path / "a" / "lm.safetensors").model
    b = checkpoint.load(tmp_path / "b" / "lm.safetensors").model
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_sample_command_and_generation_options(tiny_corpus, tmp_path, capsys):
    main(["train", "lm", "--corpus", str(tiny_corpus), "--steps", "60", "--eval-every", "1000",
          "--out", str(tmp_path)] + TINY)
    capsys.readouterr()
    ckpt = str(tmp_path / "lm.safetensors")
    assert main(["sample", ckpt, "--prompt", "def ", "--length", "30", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def ") and len(out) >= 30
    model, vocab = load_model(ckpt)
    greedy = generate(model, vocab, "def ", 25, temperature=0)
    assert generate(model, vocab, "def ", 25, temperature=0) == greedy
    assert generate(model, vocab, "def ", 25, temperature=1.0, top_k=1,
                    rng=np.random.default_rng(5)) == greedy
    with pytest.raises(SystemExit) as e:
        main(["sample", str(tmp_path / "missing.safetensors")])
    assert e.value.code == 2
    not_lm = tmp_path / "other.safetensors"
    checkpoint.save(not_lm, rnncore.Linear(2, 2))
    with pytest.raises(checkpoint.CheckpointError, match="not a language-model checkpoint"):
        load_model(not_lm)


def test_word_level_runs_and_reports_perplexity(tiny_corpus, tmp_path, capsys):
    assert main(["train", "lm", "--corpus", str(tiny_corpus), "--level", "word", "--steps",
                 "30", "--eval-every", "1000", "--out", str(tmp_path)] + TINY) == 0
    assert "validation perplexity:" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be positive"),
    (["--bptt", "16", "--k2", "8"], "--k2 must be >= --bptt"),
    (["--val-fraction", "0.7"], "--val-fraction must lie in"),
    (["--corpus", "/no/such/file"], "no such file"),
    (["--cell", "lstn"], "invalid choice"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
])
def test_bad_flags_exit_with_code_2(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "lm"] + flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_help_of_every_command(capsys):
    for argv, says in ((["--help"], "experiment"), (["train", "lm", "--help"], "--bptt"),
                       (["sample", "--help"], "--temperature"), (["train", "echo", "--help"], "--delay"),
                       (["experiment", "--help"], "adding"), (["bench", "--help"], "--quick")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert says in capsys.readouterr().out, argv


def test_language_model_gradients_by_finite_differences(rng):
    """Embedding, two GRU layers and the read-out: sampled entries of three parameters against
    central differences of <logits, dl>."""
    model = LanguageModel(7, embed=3, hidden=4, layers=2, cell="gru", seed=0, dtype=np.float64)
    tokens = rng.integers(0, 7, (5, 2))
    logits, _ = model.forward(tokens)
    dl = rng.standard_normal(logits.shape)
    model.zero_grad()
    model.backward(dl)
    eps = 1e-6
    for name in ("rnn.weight_hh_l1", "embed.weight", "head.bias"):
        p, g = model.params[name], model.grads[name]
        idx = tuple(rng.integers(0, s) for s in p.shape)
        old = p[idx]
        p[idx] = old + eps
        up = float(np.sum(model.forward(tokens)[0] * dl))
        p[idx] = old - eps
        down = float(np.sum(model.forward(tokens)[0] * dl))
        p[idx] = old
        assert g[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9), name
