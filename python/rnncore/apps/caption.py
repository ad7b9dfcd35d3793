"""`rnncore train caption`: image captioning, one to many, with attention (Show, Attend and Tell).

The images are generated here: a 3 x 3 grid of 10 x 10 pixel cells (30 x 30 RGB), two coloured
shapes (red, green, blue, yellow x circle, square, triangle, cross) in two cells of the same row
or the same column, each with a random size, a jitter of its position in the cell and of its
colour, on a noisy background. The caption names them in reading order (the upper, or the left,
one first): "a red circle above a blue square", "a green cross to the left of a yellow triangle".

Model (Xu et al. 2015, "Show, Attend and Tell", at toy scale):
  encoder   each cell's pixels with its position (one-hot of 9) -> Linear -> tanh -> Linear
            -> tanh: 9 region features (S = 9, B, D); the image encoding is their mean
  decoder   h0, c0 = tanh(Linear(mean)); at each step t, additive attention of h_{t-1} over the
            regions gives a context; LSTMCell([embedding of the previous word, context]) -> h_t;
            Linear([h_t, context]) -> the next word's logits
Training: teacher forcing, softmax cross-entropy over the caption and its <eos>; the decoder
steps through rnncore.LSTMCell and rnncore.attention.Attention (each keeps its pending steps
for backward), the per-step Linear layers run once over all steps. Decoding: greedy, the whole
batch at once. Quality: held-out exact match of the whole caption, and word accuracy.
"""
from __future__ import annotations

import numpy as np

from rnncore.apps import common
from rnncore.models.captioner import (
    CELL,
    COLOURS,
    EOS,
    GRID,
    PAD,
    REGIONS,
    SHAPES,
    STOI,
    VOCABULARY,
    Captioner,
)
from rnncore.train import checkpoint
from rnncore.train.losses import cross_entropy
from rnncore.train.optim import Adam, CosineWarmup


def shape_mask(shape, size, dx, dy):
    """(CELL, CELL) bool mask of `shape` of half-size `size` pixels, centred at the cell's
    centre moved by (dx, dy) pixels."""
    y, x = np.mgrid[0:CELL, 0:CELL] + 0.5
    u, v = x - CELL / 2 - dx, y - CELL / 2 - dy
    if shape == "circle":
        return u * u + v * v <= size * size
    if shape == "square":
        return (np.abs(u) <= size * 0.85) & (np.abs(v) <= size * 0.85)
    if shape == "triangle":   # apex up
        return (v >= -size) & (v <= size) & (np.abs(u) <= (v + size) * 0.5)
    if shape == "cross":
        w = max(size * 0.35, 0.6)
        return ((np.abs(u) <= w) & (np.abs(v) <= size)) | ((np.abs(v) <= w) & (np.abs(u) <= size))
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def make_example(rng):
    """(image (GRID*CELL, GRID*CELL, 3) float32, caption words)."""
    image = rng.uniform(0.0, 0.2) + 0.08 * rng.standard_normal((GRID * CELL, GRID * CELL, 3))
    if rng.random() < 0.5:      # same column: one above the other
        col = rng.integers(GRID)
        rows = np.sort(rng.choice(GRID, size=2, replace=False))
        cells, relation = [(rows[0], col), (rows[1], col)], ["above"]
    else:                       # same row: one left of the other
        row = rng.integers(GRID)
        cols = np.sort(rng.choice(GRID, size=2, replace=False))
        cells, relation = [(row, cols[0]), (row, cols[1])], ["to", "the", "left", "of"]
    names = []
    for r, c in cells:
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        mask = shape_mask(shape, rng.uniform(2.8, 4.0), *rng.uniform(-0.6, 0.6, size=2))
        rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.1, 0.1, size=3), 0, 1)
        patch = image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
        patch[mask] = rgb + 0.05 * rng.standard_normal((int(mask.sum()), 3))
        names.append(["a", colour, shape])
    return image.astype(np.float32), names[0] + relation + names[1]


def make_dataset(rng, n):
    """(images (n, 30, 30, 3), tokens (L + 1, n) int64 caption + <eos> padded with <pad>)."""
    data = [make_example(rng) for _ in range(n)]
    images = np.stack([d[0] for d in data])
    L = max(len(d[1]) for d in data) + 1
    tokens = np.full((L, n), STOI[PAD], dtype=np.int64)
    for b, (_, words) in enumerate(data):
        ids = [STOI[w] for w in words] + [STOI[EOS]]
        tokens[:len(ids), b] = ids
    return images, tokens


def decode(ids):
    """Token ids up to the first <eos> -> the caption string."""
    words = []
    for i in ids:
        if int(i) == STOI[EOS]:
            break
        words.append(VOCABULARY[int(i)])
    return " ".join(words)


def add_arguments(ap):
    ap.add_argument("--train-size", type=int, default=20000,
                    help="training images (default 20000)")
    ap.add_argument("--test-size", type=int, default=1000, help="held-out images (default 1000)")
    ap.add_argument("--features", type=int, default=64, help="region feature size")
    ap.add_argument("--attention", type=int, default=64, help="additive attention size")
    common.add_common_arguments(
        ap, dict(embed=32, hidden=128, batch=64, steps=2000, lr=3e-3, clip=1.0, eval_every=250,
                 seed=0, threads=0, out="rnncore-caption", no_progress=True),
        helps={"hidden": "decoder LSTMCell size", "embed": "word embedding size",
               "lr": "peak learning rate (cosine schedule after 100 warm-up updates)"})
    common.add_target_argument(ap, 0.95, "exact match")
    ap.add_argument("--samples", type=int, default=6, help="held-out captions printed")


def evaluate(model, images, tokens, chunk=500):
    """(exact match, word accuracy, generated ids) of greedy captions against tokens (L, B)."""
    generated = []
    for s in range(0, images.shape[0], chunk):
        ids, _ = model.generate(images[s:s + chunk], max_len=tokens.shape[0])
        if ids.shape[0] < tokens.shape[0]:   # every caption ended early: pad with <eos>
            pad = np.full((tokens.shape[0] - ids.shape[0], ids.shape[1]), STOI[EOS])
            ids = np.concatenate([ids, pad])
        generated.append(ids)
    ids = np.concatenate(generated, axis=1)
    counted = tokens != STOI[PAD]
    right = (ids == tokens) | ~counted
    exact = float(right.all(axis=0).mean())
    words = float((ids == tokens)[counted].mean())
    return exact, words, ids


def run(args, error):
    common.check_positive(args, ("train_size", "test_size", "features", "hidden", "embed",
                                 "attention", "batch", "steps", "lr", "clip", "eval_every"),
                          error)
    if args.samples < 0:
        error(f"--samples must be >= 0, got {args.samples}")
    common.check_target(args, error)
    out = common.output_folder(args.out, error)
    version, threads = common.set_threads(args)

    rng = np.random.default_rng(args.seed)
    images, tokens = make_dataset(rng, args.train_size)
    test_images, test_tokens = make_dataset(np.random.default_rng(args.seed + 10_000),
                                            args.test_size)
    model = Captioner(args.features, args.hidden, args.embed, args.attention, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    sched = CosineWarmup(opt, warmup_steps=min(100, args.steps), total_steps=args.steps,
                         min_lr=args.lr / 20)
    print(f"rnncore {version} captioning (one to many, Show, Attend and Tell): "
          f"{args.train_size} training and {args.test_size} held-out images of "
          f"{GRID * CELL}x{GRID * CELL} pixels, {REGIONS} regions, {len(VOCABULARY)} words; "
          f"{model.num_parameters():,} parameters, {threads} threads")

    def update(step):
        rows = rng.integers(0, args.train_size, size=args.batch)
        target = tokens[:, rows]
        logits = model(images[rows], target)
        loss, dlogits = cross_entropy(logits, target, mask=target != STOI[PAD])
        common.backward_and_step(model, opt, dlogits, args.clip, sched)
        return loss

    history, target = [], common.Target(args.target, ".0%")

    def evaluate_now(step, loss, seconds):
        exact, words, _ = evaluate(model, test_images, test_tokens)
        history.append((step, seconds, exact, words))
        target.check(exact, step, seconds)
        return (f"update {step}: held-out exact match {exact:.1%}, word accuracy "
                f"{words:.1%}, training loss {loss:.4f} ({seconds:.0f} s)")

    end = common.train_loop(update, args.steps, evaluate=evaluate_now,
                            eval_every=args.eval_every,
                            progress=common.Progress(args.steps, args.no_progress))
    exact, words = history[-1][2:]  # the loop evaluates after its last update

    path = out / "caption.safetensors"
    checkpoint.save(path, model, opt, sched, step=args.steps,
                    config=dict(model.config, vocabulary=list(VOCABULARY)),
                    extra={"exact_match": exact, "word_accuracy": words, "history": history})
    _print_samples(model, test_images, test_tokens, args.samples)
    print(f"checkpoint: {path}")
    print(f"held-out caption exact match: {exact:.1%} (word accuracy {words:.1%}) "
          f"{target.after(args.steps, end.seconds)}; {target.verdict(exact)}")
    return target.exit_code(exact)


def _print_samples(model, test_images, test_tokens, samples):
    """`samples` held-out captions beside the true ones, and where the decoder looked while
    writing the first."""
    _, _, ids = evaluate(model, test_images, test_tokens)
    print("held-out captions (generated | true):")
    for b in range(min(samples, test_images.shape[0])):
        mine, truth = decode(ids[:, b]), decode(test_tokens[:, b])
        print(f"  {mine:<45} | {'same' if mine == truth else truth}")
    if samples:
        ids0, weights0 = model.generate(test_images[:1], max_len=test_tokens.shape[0])
        steps = [(VOCABULARY[int(i)], divmod(int(w.argmax()), GRID), float(w.max()))
                 for i, w in zip(ids0[:, 0], weights0[:, 0])]
        print("where the decoder looked (most attended cell (row, column) and its weight) while "
              "writing the first caption:")
        print("  " + "  ".join(f"{word} {cell} {weight:.2f}" for word, cell, weight in steps))
