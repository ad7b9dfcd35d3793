"""rnncore train sentiment: the grammar (word order decides, word counts do not), a tiny run
that learns past a bound in seconds while the bag-of-words baseline stays at chance, the
checkpoint, and bad flags."""
import argparse
import re

import numpy as np
import pytest

import rnncore
from rnncore import checkpoint, sentiment
from rnncore.sentiment import (LABELS, SentimentClassifier, compose, draw_review, encode,
                               word_counts)


def _parser():
    ap = argparse.ArgumentParser(prog="rnncore train sentiment")
    sentiment.add_arguments(ap)
    return ap


def test_the_lecture_pair_and_negation_scope():
    pos = compose("not-at-all", "good", "bad", ("food", "staff"), (False, False), (None, None))
    neg = compose("not-at-all", "bad", "good", ("food", "staff"), (False, False), (None, None))
    assert (pos.text, LABELS[pos.label]) == ("the food was good, not bad at all", "positive")
    assert (neg.text, LABELS[neg.label]) == ("the food was bad, not good at all", "negative")
    but = compose("but", "good", "bad", ("food", "staff"), (False, True), ("very", None))
    assert but.text == "the food was very good but the staff was not bad" and but.label == 1
    last = compose("although-last", "awful", "great", ("room", "view"), (False, False),
                   (None, None))
    assert last.text == "the room was awful, although the view was great" and last.label == 0
    nt = compose("not-true", "good", "bad", ("food", "staff"), (True, False), (None, None))
    assert nt.text.startswith("it is not true that the food was not good") and nt.label == 1
    with pytest.raises(ValueError, match="template must be one of"):
        compose("sarcasm", "good", "bad", ("food", "staff"), (False, False), (None, None))


def test_exchanging_the_adjectives_keeps_the_counts_and_flips_the_label():
    for seed in range(300):
        a = draw_review(np.random.default_rng(seed), mirrored=False)
        b = draw_review(np.random.default_rng(seed), mirrored=True)
        assert a.words != b.words and a.label != b.label
        np.testing.assert_array_equal(word_counts([a]), word_counts([b]))


def test_encode_pads_and_gives_lengths():
    reviews = sentiment.make_dataset(np.random.default_rng(0), 5)
    tokens, lengths, labels = encode(reviews)
    assert tokens.shape == (lengths.max(), 5) and list(lengths) == [len(r.words) for r in reviews]
    assert (tokens[lengths[0]:, 0] == sentiment.STOI[sentiment.PAD]).all()
    assert list(labels) == [r.label for r in reviews]


def test_tiny_run_learns_while_bag_of_words_stays_at_chance(tmp_path, capsys):
    """250 updates on 2000 sentences (about a second): held-out accuracy >= 95% (measured
    100%); the bag-of-words baseline within 50% +- 8% on 600 held-out sentences (4 standard
    deviations of a coin)."""
    args = _parser().parse_args(["--train-size", "2000", "--test-size", "600", "--steps", "250",
                                 "--eval-every", "250", "--hidden", "32", "--embed", "16",
                                 "--target", "0.95", "--threads", "1", "--no-progress",
                                 "--out", str(tmp_path)])
    assert sentiment.run(args, _parser().error) == 0
    out = capsys.readouterr().out
    m = re.search(r"held-out accuracy: lstm ([\d.]+)%.*bag of words ([\d.]+)%", out)
    rnn, bag = float(m.group(1)) / 100, float(m.group(2)) / 100
    assert rnn >= 0.95 and abs(bag - 0.5) <= 0.08, out

    ck = checkpoint.load(tmp_path / "sentiment.safetensors")
    assert ck.extra["accuracy"] == pytest.approx(rnn, abs=1e-3)
    model = SentimentClassifier(ck.config["cell"], ck.config["embed"], ck.config["hidden"],
                                ck.config["layers"])
    checkpoint.restore(tmp_path / "sentiment.safetensors", model)
    test = sentiment.make_dataset(np.random.default_rng(7), 200)
    tokens, lengths, labels = encode(test)
    assert (model.predict(tokens, lengths) == labels).mean() >= 0.9


def test_final_state_gradient_matches_finite_differences():
    """The many-to-one backward (top layer's final state, variable lengths) in float64."""
    from rnncore.losses import cross_entropy
    rng = np.random.default_rng(3)
    model = SentimentClassifier("gru", embed=4, hidden=5, layers=2, seed=1, dtype=np.float64)
    tokens, lengths, labels = encode(sentiment.make_dataset(rng, 4))
    model.zero_grad()
    _, dlogits = cross_entropy(model(tokens, lengths), labels)
    model.backward(dlogits)

    def loss():
        with rnncore.no_grad():
            return cross_entropy(model(tokens, lengths), labels)[0]

    for name in ("rnn.weight_hh_l0", "rnn.weight_ih_l1", "embed.weight"):
        p, g = model.params[name], model.grads[name]
        for idx in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(3)]:
            if name == "embed.weight":
                idx = (int(tokens[0, 0]),) + idx[1:]
            old = p[idx]
            p[idx] = old + 1e-6
            up = loss()
            p[idx] = old - 1e-6
            down = loss()
            p[idx] = old
            assert g[idx] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9), name


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "--steps must be positive"),
    ("--target", "1.5", "--target must lie in"),
])
def test_bad_flags_exit_with_code_2(flag, value, message, tmp_path, capsys):
    ap = _parser()
    args = ap.parse_args([flag, value, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        sentiment.run(args, ap.error)
    assert e.value.code == 2 and message in capsys.readouterr().err
