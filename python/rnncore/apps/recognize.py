"""`rnncore train recognize`: text-line recognition with CTC, on images rendered in code.

Each sample is a random string of `--min-chars`..`--max-chars` characters of `--alphabet`,
rendered from the 5x7 bitmap font below into a grey image 12 pixels high: glyph widths differ
(each glyph is trimmed to its ink, so "I" and "1" are narrow), glyph columns are randomly doubled,
spacing between characters is random, the text moves up and down by a few pixels, the ink's
strength varies and Gaussian noise covers everything. The image is read column by column (12
features per step) by a bidirectional LSTM (or, with --pyramid, the pyramid encoder of
rnncore.pyramid, which halves the steps at every layer above the first); a linear layer gives
per-column scores over blank + the alphabet, trained with CTC (rnncore.ctc). Quality: the
character error rate (edit distance / characters) of greedy decoding on held-out strings.
"""
from __future__ import annotations

import time

import numpy as np

from rnncore.apps.common import (
    Progress,
    add_common_arguments,
    backward_and_step,
    finite_float,
    output_folder,
    set_threads,
    train_loop,
)
from rnncore.models.recognizer import ALPHABET, HEIGHT, Recognizer
from rnncore.train import checkpoint
from rnncore.train.ctc import ctc_loss, log_softmax
from rnncore.train.optim import Adam, CosineWarmup

# 5x7 glyphs, rows top to bottom, '#' = ink. Columns without ink are trimmed when rendering.
FONT = {
    "0": ".###./#...#/#..##/#.#.#/##..#/#...#/.###.", "1": "..#../.##../..#../..#../..#../..#../.###.",
    "2": ".###./#...#/....#/...#./..#../.#.../#####", "3": "####./....#/....#/.###./....#/....#/####.",
    "4": "...#./..##./.#.#./#..#./#####/...#./...#.", "5": "#####/#..../####./....#/....#/#...#/.###.",
    "6": "..##./.#.../#..../####./#...#/#...#/.###.", "7": "#####/....#/...#./..#../.#.../.#.../.#...",
    "8": ".###./#...#/#...#/.###./#...#/#...#/.###.", "9": ".###./#...#/#...#/.####/....#/...#./.##..",
    "A": ".###./#...#/#...#/#####/#...#/#...#/#...#", "B": "####./#...#/#...#/####./#...#/#...#/####.",
    "C": ".###./#...#/#..../#..../#..../#...#/.###.", "D": "###../#..#./#...#/#...#/#...#/#..#./###..",
    "E": "#####/#..../#..../####./#..../#..../#####", "F": "#####/#..../#..../####./#..../#..../#....",
    "G": ".###./#...#/#..../#.###/#...#/#...#/.####", "H": "#...#/#...#/#...#/#####/#...#/#...#/#...#",
    "I": "###/.#./.#./.#./.#./.#./###", "J": "..###/...#./...#./...#./...#./#..#./.##..",
    "K": "#...#/#..#./#.#../##.../#.#../#..#./#...#", "L": "#..../#..../#..../#..../#..../#..../#####",
    "M": "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#", "N": "#...#/#...#/##..#/#.#.#/#..##/#...#/#...#",
    "O": ".###./#...#/#...#/#...#/#...#/#...#/.###.", "P": "####./#...#/#...#/####./#..../#..../#....",
    "Q": ".###./#...#/#...#/#...#/#.#.#/#..#./.##.#", "R": "####./#...#/#...#/####./#.#../#..#./#...#",
    "S": ".####/#..../#..../.###./....#/....#/####.", "T": "#####/..#../..#../..#../..#../..#../..#..",
    "U": "#...#/#...#/#...#/#...#/#...#/#...#/.###.", "V": "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",
    "W": "#...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.", "X": "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",
    "Y": "#...#/#...#/.#.#./..#../..#../..#../..#..", "Z": "#####/....#/...#./..#../.#.../#..../#####",
}


def _glyph(char):
    rows = FONT[char].split("/")
    g = np.array([[c == "#" for c in r] for r in rows], dtype=np.float64)
    ink = np.flatnonzero(g.any(axis=0))
    return g[:, ink[0]:ink[-1] + 1]


GLYPHS = {c: _glyph(c) for c in FONT}


def render(text, rng, noise=0.2, stretch=0.2):
    """One image (HEIGHT, W) of `text`: trimmed glyphs, each column doubled with probability
    `stretch`, 1-3 blank columns between characters, 1-4 at each end, a vertical offset of 0-4
    rows, ink strength in [0.6, 1] and Gaussian noise of standard deviation `noise`."""
    columns = [np.zeros((7, rng.integers(1, 5)))]
    for i, ch in enumerate(text):
        g = GLYPHS[ch]
        g = np.repeat(g, 1 + (rng.random(g.shape[1]) < stretch), axis=1)
        if i:
            columns.append(np.zeros((7, rng.integers(1, 4))))
        columns.append(g)
    columns.append(np.zeros((7, rng.integers(1, 5))))
    line = np.concatenate(columns, axis=1) * rng.uniform(0.6, 1.0)
    img = np.zeros((HEIGHT, line.shape[1]))
    top = rng.integers(0, HEIGHT - 7 + 1)
    img[top:top + 7] = line
    return img + rng.normal(0.0, noise, img.shape)


def make_batch(rng, batch, alphabet, min_chars, max_chars, noise=0.2, dtype=np.float32):
    """-> x (W, B, HEIGHT) columns as time steps (zero-padded), widths (B,), labels (list of B
    lists of class ids, 1-based: class 0 is the blank), texts (B strings). The features are
    4 * pixel - 1: background near -1, ink near +2 (the raw [0, 1] pixels leave the LSTM's
    gates in their linear range and CTC on a long blank plateau: measured, 4x fewer updates)."""
    texts = ["".join(rng.choice(list(alphabet), size=rng.integers(min_chars, max_chars + 1)))
             for _ in range(batch)]
    images = [render(t, rng, noise) for t in texts]
    widths = np.array([im.shape[1] for im in images], dtype=np.int64)
    x = np.zeros((widths.max(), batch, HEIGHT), dtype=dtype)
    for b, im in enumerate(images):
        x[:widths[b], b] = 4.0 * im.T - 1.0
    labels = [[alphabet.index(c) + 1 for c in t] for t in texts]
    return x, widths, labels, texts


def edit_distance(a, b):
    """Levenshtein distance between two sequences (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def character_error_rate(decoded, labels):
    errors = sum(edit_distance(d, t) for d, t in zip(decoded, labels))
    return errors / max(1, sum(len(t) for t in labels))


def evaluate(model, data, beam_width=1):
    """Character error rate over data (a list of make_batch results), in eval mode."""
    was_training = model.training
    model.eval()
    decoded, labels = [], []
    for x, widths, lab, _ in data:
        decoded += model.decode(x, widths, beam_width)
        labels += lab
    model.train(was_training)
    return character_error_rate(decoded, labels), decoded


def add_arguments(ap):
    ap.add_argument("--alphabet", default=ALPHABET, help="characters to read (a subset of "
                    f"{ALPHABET}; default all of them)")
    ap.add_argument("--min-chars", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=10)
    ap.add_argument("--noise", type=finite_float, default=0.2, help="pixel noise standard deviation")
    ap.add_argument("--pyramid", action="store_true", help="pyramid encoder: the layers above "
                    "the first read pairs of frames (half the steps per layer)")
    add_common_arguments(ap, dict(hidden=96, layers=2, batch=32, steps=3000, lr=5e-3, clip=5.0,
                                  seed=0, threads=0, out="rnncore-recognize", no_progress=True),
                         helps={"steps": None, "out": "folder for the checkpoint"})
    ap.add_argument("--eval-size", type=int, default=1000, help="held-out strings")
    ap.add_argument("--beam", type=int, default=8, help="beam width of the decoded samples")


def _check_args(args, error):
    for name in ("min_chars", "max_chars", "hidden", "layers", "batch", "steps", "eval_size",
                 "beam"):
        if getattr(args, name) <= 0:
            error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.min_chars > args.max_chars:
        error(f"--min-chars ({args.min_chars}) must not exceed --max-chars ({args.max_chars})")
    unknown = sorted(set(args.alphabet) - set(FONT))
    if unknown or len(set(args.alphabet)) != len(args.alphabet) or not args.alphabet:
        error(f"--alphabet must be distinct characters of {ALPHABET}, got {args.alphabet!r}")
    if args.noise < 0:
        error(f"--noise must be >= 0, got {args.noise}")
    if not args.lr > 0 or not args.clip > 0:
        error(f"--lr and --clip must be positive, got {args.lr} and {args.clip}")


def run(args, error):
    _check_args(args, error)
    out = output_folder(args.out, error)  # before training: a bad --out loses no work
    version, threads = set_threads(args)
    rng = np.random.default_rng(args.seed)
    held_rng = np.random.default_rng([args.seed, 1])  # disjoint stream: held-out strings
    held_out = [make_batch(held_rng, min(100, args.eval_size - i), args.alphabet,
                           args.min_chars, args.max_chars, args.noise)
                for i in range(0, args.eval_size, 100)]
    model = Recognizer(args.alphabet, args.hidden, args.layers, args.pyramid, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    sched = CosineWarmup(opt, warmup_steps=min(100, args.steps), total_steps=args.steps,
                         min_lr=args.lr / 20)
    kind = (f"pyramid encoder ({args.layers} layers, steps / {2 ** (args.layers - 1)})"
            if args.pyramid else f"bidirectional LSTM ({args.layers} layers)")
    print(f"rnncore {version}: text-line recognition with CTC, {kind}, hidden "
          f"{args.hidden}, {model.num_parameters():,} parameters, {threads} "
          f"threads")
    print(f"  strings of {args.min_chars}-{args.max_chars} characters of {args.alphabet!r}, "
          f"{HEIGHT}-pixel columns, noise {args.noise}; {args.steps} updates of {args.batch}")
    train_time, losses = [0.0], []

    def update(step):
        x, widths, labels, _ = make_batch(rng, args.batch, args.alphabet, args.min_chars,
                                          args.max_chars, args.noise)
        t = time.perf_counter()
        logits, lengths = model(x, widths)
        loss, dlogits = ctc_loss(log_softmax(logits), labels, lengths, zero_infinity=True)
        backward_and_step(model, opt, dlogits, args.clip, sched)
        train_time[0] += time.perf_counter() - t
        losses.append(loss)
        return loss

    # the bar shows the mean loss of the last 20 updates; without it, a line per tenth of the run
    def postfix(step, loss):
        return f"loss={np.mean(losses[-20:]):.3f}" if step % 20 == 0 else None

    def report(step, loss, seconds):
        return f"step {step:5d}  ctc loss {np.mean(losses[-20:]):.4f}"

    progress = Progress(args.steps, args.no_progress)
    lines = not progress.shown
    end = train_loop(update, args.steps, progress=progress, postfix=postfix, evaluate=report,
                     eval_every=max(1, args.steps // 10) if lines else 0, eval_last=lines)
    cer, decoded = evaluate(model, held_out)
    path = checkpoint.save(out / "recognize.safetensors", model, opt, sched, step=args.steps,
                           config=dict(model.config, min_chars=args.min_chars,
                                       max_chars=args.max_chars, noise=args.noise,
                                       held_out_cer=cer))
    _print_samples(model, held_out[0], decoded, args)
    print(f"checkpoint: {path}")
    print(f"held-out character error rate {cer:.2%} (greedy, {args.eval_size} "
          f"strings) after {args.steps} updates, {end.seconds:.0f} s ({train_time[0]:.0f} s in "
          f"training steps)")
    return 0


def _print_samples(model, batch, decoded, args):
    """The first 8 held-out strings: the truth, greedy decoding and beam search."""
    x, widths, _, texts = batch
    model.eval()
    beam = model.decode(x[:, :8], widths[:8], args.beam)
    print("\nheld-out samples (truth -> greedy | beam):")
    for b in range(min(8, len(texts))):
        greedy = "".join(args.alphabet[i - 1] for i in decoded[b])
        beamed = "".join(args.alphabet[i - 1] for i in beam[b])
        print(f"  {texts[b]:>{args.max_chars}} -> {greedy:<{args.max_chars}} | {beamed}")
