"""`rnncore train sentiment`: many-to-one classification where word order decides the label.

Sentences come from a small generated grammar of reviews, as in the lecture's "the food was
good, not bad at all" (positive) against "the food was bad, not good at all" (negative). Every
sentence holds exactly one positive and one negative adjective, and its label is decided by
where they stand: which clause counts ("..., not B at all", "not A, it was B", "A but B",
"although A, B", "B, although A", "i expected A, but it was B", "it is not true that A,
although B") and whether that clause is negated ("was not bad", "it is not true that").
Exchanging the two adjectives gives a sentence with the same words, counted, and the opposite
label, and the generator draws both with equal probability: a bag-of-words model therefore has
nothing to learn and stays at chance, while a recurrent classifier reading the words in order
can be exact.

Model: Embedding -> recurrent stack (any registry cell) run with `lengths` (no arithmetic on
padding: the core sorts the batch by length) -> the final state of the top layer -> Linear -> two
logits, softmax cross-entropy. The baseline, trained on the same sentences in the same run, is
logistic regression on word counts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rnncore.apps import common
from rnncore.models.sentiment import (
    DEFAULT_CELL,
    INTENSIFIERS,
    LABELS,
    NEGATIVE,
    NOUNS,
    PAD,
    POSITIVE,
    STOI,
    VOCABULARY,
    SentimentClassifier,
)
from rnncore.nn.layers import Linear
from rnncore.train import checkpoint
from rnncore.train.losses import bce_with_logits, cross_entropy
from rnncore.train.optim import Adam

TEMPLATES = ("not-at-all", "not-it-was", "but", "although-first", "although-last", "expected",
             "not-true")


@dataclass(frozen=True)
class Review:
    """One generated sentence: its words and its label (1 positive, 0 negative)."""
    words: tuple
    label: int

    @property
    def text(self):
        return " ".join(self.words).replace(" ,", ",")


def _polarity(adjective):
    return 1 if adjective in POSITIVE else 0


def _clause(noun, adjective, negated, intensifier):
    return (["the", noun, "was"] + (["not"] if negated else []) +
            ([intensifier] if intensifier else []) + [adjective])


def compose(template, a, b, nouns, negated, intensifiers):
    """The words of `template` with adjective a in the first slot and b in the second, and the
    label. nouns, negated and intensifiers are pairs (for the first and the second slot; an
    intensifier None is left out; templates that fix a slot's negation ignore its flag)."""
    (n1, n2), (neg1, neg2), (i1, i2) = nouns, negated, intensifiers
    if template == "not-at-all":        # the N was A, not B at all   -> A
        words = _clause(n1, a, False, i1) + [",", "not", b, "at", "all"]
        decisive, flipped = a, False
    elif template == "not-it-was":      # the N was not A, it was B   -> B
        words = _clause(n1, a, True, None) + [",", "it", "was"] + ([i2] if i2 else []) + [b]
        decisive, flipped = b, False
    elif template == "but":             # the N was A but the M was B -> B
        words = _clause(n1, a, neg1, i1) + ["but"] + _clause(n2, b, neg2, i2)
        decisive, flipped = b, neg2
    elif template == "although-first":  # although the N was A, the M was B -> B
        words = ["although"] + _clause(n1, a, neg1, i1) + [","] + _clause(n2, b, neg2, i2)
        decisive, flipped = b, neg2
    elif template == "although-last":   # the N was A, although the M was B -> A
        words = _clause(n1, a, neg1, i1) + [",", "although"] + _clause(n2, b, neg2, i2)
        decisive, flipped = a, neg1
    elif template == "expected":        # i expected the N to be A, but it was B -> B
        words = (["i", "expected", "the", n1, "to", "be", a, ",", "but", "it", "was"] +
                 (["not"] if neg2 else []) + ([i2] if i2 else []) + [b])
        decisive, flipped = b, neg2
    elif template == "not-true":        # it is not true that the N was A, although the M was B
        words = (["it", "is", "not", "true", "that"] + _clause(n1, a, neg1, i1) +
                 [",", "although"] + _clause(n2, b, neg2, i2))       # -> the opposite of A
        decisive, flipped = a, not neg1
    else:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return Review(tuple(words), _polarity(decisive) ^ int(flipped))


def draw_review(rng, mirrored=None):
    """A random review; with mirrored=True/False the adjectives' slot order is forced (the two
    values give the pair of sentences with equal word counts and opposite labels)."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    nouns = tuple(rng.choice(len(NOUNS), size=2, replace=False))
    nouns = (NOUNS[nouns[0]], NOUNS[nouns[1]])
    negated = tuple(bool(v) for v in rng.integers(0, 2, size=2))
    intensifiers = tuple(INTENSIFIERS[rng.integers(len(INTENSIFIERS))]
                         if rng.random() < 0.35 else None for _ in range(2))
    good = POSITIVE[rng.integers(len(POSITIVE))]
    bad = NEGATIVE[rng.integers(len(NEGATIVE))]
    swap = bool(rng.integers(0, 2)) if mirrored is None else bool(mirrored)
    a, b = (bad, good) if swap else (good, bad)
    return compose(template, a, b, nouns, negated, intensifiers)


def make_dataset(rng, n, exclude=frozenset()):
    """n distinct reviews, none of whose word sequences is in `exclude`."""
    seen, out = set(exclude), []
    while len(out) < n:
        r = draw_review(rng)
        if r.words not in seen:
            seen.add(r.words)
            out.append(r)
    return out


def encode(reviews):
    """reviews -> (tokens (T, B) int64 padded with PAD, lengths (B,), labels (B,))."""
    tokens, lengths = common.pad_batch([np.array([STOI[w] for w in r.words])
                                        for r in reviews], STOI[PAD])
    return tokens, lengths, np.array([r.label for r in reviews], dtype=np.int64)


def word_counts(reviews):
    """(N, V) float counts of every vocabulary word (the bag of words)."""
    counts = np.zeros((len(reviews), len(VOCABULARY)))
    for n, r in enumerate(reviews):
        for w in r.words:
            counts[n, STOI[w]] += 1
    return counts


# ---- the bag-of-words baseline ----------------------------------------------------------------

def train_bag_of_words(counts, labels, steps=200, lr=0.05):
    """Logistic regression on word counts (standardised): a float64 Linear(V, 1) trained
    full-batch with Adam on the sigmoid cross-entropy. Returns predict(counts) -> labels (0/1).
    (rnncore's Linear runs its GEMMs on rnncore's threads, not numpy's BLAS threads, which
    would fight them for the cores.)"""
    mean, std = counts.mean(axis=0), counts.std(axis=0) + 1e-9
    linear = Linear(counts.shape[1], 1, dtype=np.float64, seed=0)
    opt = Adam(linear, lr=lr)
    x, y = (counts - mean) / std, labels.astype(np.float64)[:, None]
    for _ in range(steps):
        _, dz = bce_with_logits(linear(x), y)
        linear.zero_grad()
        linear.backward(dz)
        opt.step()
    linear.eval()
    return lambda c: (linear((c - mean) / std)[:, 0] > 0).astype(np.int64)


# ---- the command ------------------------------------------------------------------------------

def add_arguments(ap):
    ap.add_argument("--train-size", type=int, default=10000,
                    help="training sentences (default 10000)")
    ap.add_argument("--test-size", type=int, default=2000,
                    help="held-out sentences, none of them in the training set (default 2000)")
    common.add_common_arguments(
        ap, dict(cell=DEFAULT_CELL, embed=32, hidden=64, layers=1, batch=64, steps=1000, lr=3e-3,
                 clip=1.0, eval_every=100, seed=0, threads=0, out="rnncore-sentiment",
                 no_progress=True))
    common.add_target_argument(ap, 0.98, "accuracy")


def run(args, error):
    common.check_positive(args, ("train_size", "test_size", "embed", "hidden", "layers",
                                 "batch", "steps", "lr", "clip", "eval_every"), error)
    common.check_target(args, error)
    out = common.output_folder(args.out, error)
    version, threads = common.set_threads(args)

    rng = np.random.default_rng(args.seed)
    train = make_dataset(rng, args.train_size)
    test = make_dataset(np.random.default_rng(args.seed + 10_000), args.test_size,
                        exclude={r.words for r in train})
    tokens, lengths, labels = encode(train)
    test_tokens, test_lengths, test_labels = encode(test)
    bag_test, bag_line = _baseline(train, labels, test, test_labels)

    model = SentimentClassifier(args.cell, args.embed, args.hidden, args.layers, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    print(f"rnncore {version} sentiment (many to one): {len(train)} training and "
          f"{len(test)} held-out sentences, {len(VOCABULARY)} words, lengths "
          f"{lengths.min()}-{lengths.max()}; {args.cell} {args.layers} x {args.hidden}, "
          f"{model.num_parameters():,} parameters, {threads} threads")
    for r in train[:3]:
        print(f"  {LABELS[r.label]:>8}: {r.text}")
    print(bag_line)

    def update(step):
        rows = rng.integers(0, len(train), size=args.batch)
        L = lengths[rows]
        logits = model(tokens[:int(L.max()), rows], L)
        loss, dlogits = cross_entropy(logits, labels[rows])
        common.backward_and_step(model, opt, dlogits, args.clip)
        return loss

    history, target = [], common.Target(args.target, ".0%")

    def evaluate(step, loss, seconds):
        accuracy = float((model.predict(test_tokens, test_lengths) == test_labels).mean())
        history.append((step, seconds, accuracy))
        target.check(accuracy, step, seconds)
        return (f"update {step}: held-out accuracy {accuracy:.1%}, training loss {loss:.3f} "
                f"({seconds:.0f} s)")

    end = common.train_loop(update, args.steps, evaluate=evaluate, eval_every=args.eval_every,
                            progress=common.Progress(args.steps, args.no_progress),
                            postfix=lambda step, loss: f"loss {loss:.3f}")
    accuracy = history[-1][2]  # the loop evaluates after its last update

    path = out / "sentiment.safetensors"
    checkpoint.save(path, model, opt, step=args.steps, config=dict(model.config,
                    vocabulary=list(VOCABULARY)),
                    extra={"accuracy": accuracy, "bag_of_words_accuracy": bag_test,
                           "history": history})
    _print_samples(model, test, test_tokens, test_lengths, test_labels)
    print(f"checkpoint: {path}")
    print(f"held-out accuracy: {args.cell} {accuracy:.1%} {target.after(args.steps, end.seconds)}"
          f"; bag of words {bag_test:.1%} (chance 50%); {target.verdict(accuracy)}")
    return target.exit_code(accuracy)


def _baseline(train, labels, test, test_labels):
    """(held-out accuracy of the bag-of-words baseline, the line that reports it)."""
    t0 = time.perf_counter()
    bag = train_bag_of_words(word_counts(train), labels)
    bag_train = float((bag(word_counts(train)) == labels).mean())
    bag_test = float((bag(word_counts(test)) == test_labels).mean())
    seconds = time.perf_counter() - t0
    return bag_test, (f"bag-of-words baseline (logistic regression on counts): training "
                      f"accuracy {bag_train:.1%}, held-out {bag_test:.1%} ({seconds:.1f} s)")


def _print_samples(model, test, test_tokens, test_lengths, test_labels):
    """Four held-out sentences and the first two the model gets wrong, with its predictions."""
    wrong = np.flatnonzero(model.predict(test_tokens, test_lengths) != test_labels)
    print("held-out samples (prediction: sentence):")
    for n in list(range(4)) + list(wrong[:2]):
        pred = int(model.predict(test_tokens[:, n:n + 1], test_lengths[n:n + 1])[0])
        mark = "" if pred == test[n].label else "   <- wrong"
        print(f"  {LABELS[pred]:>8}: {test[n].text}{mark}")
