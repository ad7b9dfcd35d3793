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

import time

import numpy as np

from rnncore.apps.common import Progress, check_positive, output_folder
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
    ap.add_argument("--hidden", type=int, default=128, help="decoder LSTMCell size")
    ap.add_argument("--embed", type=int, default=32, help="word embedding size")
    ap.add_argument("--attention", type=int, default=64, help="additive attention size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="updates (default 2000)")
    ap.add_argument("--lr", type=float, default=3e-3,
                    help="peak learning rate (cosine schedule after 100 warm-up updates)")
    ap.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--target", type=float, default=0.95,
                    help="held-out exact match to reach (default 0.95); exit code 1 below it")
    ap.add_argument("--samples", type=int, default=6, help="held-out captions printed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--out", default="rnncore-caption",
                    help="folder for the checkpoint (default ./rnncore-caption)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    import rnncore
    from rnncore.train import checkpoint
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import Adam, CosineWarmup, clip_grad_norm

    check_positive(args, ("train_size", "test_size", "features", "hidden", "embed", "attention",
                          "batch", "steps", "lr", "clip", "eval_every"), error)
    if args.samples < 0:
        error(f"--samples must be >= 0, got {args.samples}")
    if not 0 < args.target <= 1:
        error(f"--target must lie in (0, 1], got {args.target}")
    out = output_folder(args.out, error)
    rnncore.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    images, tokens = make_dataset(rng, args.train_size)
    test_images, test_tokens = make_dataset(np.random.default_rng(args.seed + 10_000),
                                            args.test_size)
    model = Captioner(args.features, args.hidden, args.embed, args.attention, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    sched = CosineWarmup(opt, warmup_steps=min(100, args.steps), total_steps=args.steps,
                         min_lr=args.lr / 20)
    print(f"rnncore {rnncore.__version__} captioning (one to many, Show, Attend and Tell): "
          f"{args.train_size} training and {args.test_size} held-out images of "
          f"{GRID * CELL}x{GRID * CELL} pixels, {REGIONS} regions, {len(VOCABULARY)} words; "
          f"{model.num_parameters():,} parameters, {rnncore.get_num_threads()} threads")

    progress = Progress(args.steps, args.no_progress)
    history, exact, words, reached_at = [], 0.0, 0.0, None
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = rng.integers(0, args.train_size, size=args.batch)
        target = tokens[:, rows]
        logits = model(images[rows], target)
        loss, dlogits = cross_entropy(logits, target, mask=target != STOI[PAD])
        model.zero_grad()
        model.backward(dlogits)
        clip_grad_norm(model, args.clip)
        opt.step()
        sched.step()
        progress.update(f"loss {loss:.4f}")
        if step % args.eval_every == 0 or step == args.steps:
            exact, words, _ = evaluate(model, test_images, test_tokens)
            seconds = time.perf_counter() - t0
            history.append((step, seconds, exact, words))
            if reached_at is None and exact >= args.target:
                reached_at = (step, seconds)
            progress.write(f"update {step}: held-out exact match {exact:.1%}, word accuracy "
                           f"{words:.1%}, training loss {loss:.4f} ({seconds:.0f} s)")
    progress.close()
    seconds = time.perf_counter() - t0

    path = out / "caption.safetensors"
    checkpoint.save(path, model, opt, sched, step=args.steps,
                    config=dict(model.config, vocabulary=list(VOCABULARY)),
                    extra={"exact_match": exact, "word_accuracy": words, "history": history})
    _, _, ids = evaluate(model, test_images, test_tokens)
    print("held-out captions (generated | true):")
    for b in range(min(args.samples, args.test_size)):
        mine, truth = decode(ids[:, b]), decode(test_tokens[:, b])
        print(f"  {mine:<45} | {'same' if mine == truth else truth}")
    if args.samples:
        ids0, weights0 = model.generate(test_images[:1], max_len=test_tokens.shape[0])
        steps = [(VOCABULARY[int(i)], divmod(int(w.argmax()), GRID), float(w.max()))
                 for i, w in zip(ids0[:, 0], weights0[:, 0])]
        print("where the decoder looked (most attended cell (row, column) and its weight) while "
              "writing the first caption:")
        print("  " + "  ".join(f"{word} {cell} {weight:.2f}" for word, cell, weight in steps))
    print(f"checkpoint: {path}")
    when = (f"; {args.target:.0%} first reached at update {reached_at[0]} "
            f"({reached_at[1]:.1f} s)" if reached_at else "")
    print(f"held-out caption exact match: {exact:.1%} (word accuracy {words:.1%}) after "
          f"{args.steps} updates ({seconds:.0f} s){when}; target {args.target:.0%} "
          f"{'reached' if exact >= args.target else 'NOT reached'}")
    return 0 if exact >= args.target else 1
