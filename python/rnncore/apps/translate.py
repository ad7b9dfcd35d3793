"""`rnncore train translate`: date-format translation with an attentional encoder-decoder.

Dates written in many human formats ("the 3rd of March 1999", "3/3/99", "March 3, 1999",
"03.03.1999", "Wednesday, 3 March 1999", ...) are translated character by character into ISO
"1999-03-03" (rnncore.seq2seq.Seq2Seq). Everything is generated in code. Conventions that make
the task well posed: slashes are month/day (US), dots and spaced forms are day-month; two-digit
years mean 1950..2049, the range every date is drawn from. The held-out dates (every tenth
day) never occur in training, in any format.
"""
from __future__ import annotations

import datetime
import string
import time

import numpy as np

from rnncore._interop import pyplot
from rnncore.apps.common import (
    Progress,
    add_common_arguments,
    check_positive,
    output_folder,
    set_threads,
    train_loop,
)
from rnncore.models.seq2seq import Seq2Seq, default_cell
from rnncore.train import checkpoint
from rnncore.train.optim import Adam, CosineWarmup, clip_grad_norm

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST = datetime.date(1950, 1, 1).toordinal()
LAST = datetime.date(2049, 12, 31).toordinal()

PAD, BOS, EOS = 0, 1, 2
SRC_CHARS = string.ascii_letters + string.digits + " ,./-"
TGT_CHARS = string.digits + "-"


def ordinal(n):
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# each takes a datetime.date and returns one human spelling of it
FORMATS = [
    lambda d: f"the {ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{d.month}/{d.day}/{d.year % 100:02d}",
    lambda d: f"{d.month}/{d.day}/{d.year}",
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    lambda d: f"{MONTHS[d.month - 1]} {ordinal(d.day)}, {d.year}",
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{d.day}.{d.month}.{d.year % 100:02d}",
    lambda d: f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()][:3]} {d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{ordinal(d.day)} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{d.day:02d} {MONTHS[d.month - 1][:3].upper()} {d.year % 100:02d}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
]


def random_dates(rng, n, held_out):
    """n dates of 1950..2049: training dates (day number % 10 != 0) or held-out ones."""
    days = rng.integers(0, (LAST - FIRST) // 10, size=n) * 10
    if not held_out:
        days += rng.integers(1, 10, size=n)
    days = np.minimum(FIRST + days, LAST)
    return [datetime.date.fromordinal(int(o)) for o in days]


def make_pairs(rng, n, held_out=False):
    """n (human spelling, ISO date) pairs; a third of the spellings lower-cased."""
    out = []
    for d in random_dates(rng, n, held_out):
        text = FORMATS[int(rng.integers(len(FORMATS)))](d)
        if rng.random() < 1 / 3:
            text = text.lower()
        out.append((text, d.isoformat()))
    return out


class CharCodec:
    """Characters <-> ids; ids 0, 1, 2 are PAD, BOS, EOS."""

    def __init__(self, chars):
        self.chars = chars
        self.index = {c: i + 3 for i, c in enumerate(chars)}

    def __len__(self):
        return len(self.chars) + 3

    def encode(self, text):
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary "
                             f"{self.chars!r}") from None

    def decode(self, ids):
        return "".join(self.chars[i - 3] for i in ids if i >= 3)


SRC, TGT = CharCodec(SRC_CHARS), CharCodec(TGT_CHARS)


def batch_arrays(pairs):
    """pairs -> src (S, B), src_lengths, tgt_in (T, B), tgt_out (T, B), tgt_lengths."""
    srcs = [SRC.encode(s) for s, _ in pairs]
    tgts = [TGT.encode(t) + [EOS] for _, t in pairs]
    B = len(pairs)
    S, T = max(map(len, srcs)), max(map(len, tgts))
    src = np.full((S, B), PAD, dtype=np.int64)
    tgt_out = np.full((T, B), PAD, dtype=np.int64)
    for b, (s, t) in enumerate(zip(srcs, tgts)):
        src[:len(s), b] = s
        tgt_out[:len(t), b] = t
    tgt_in = np.concatenate([np.full((1, B), BOS, dtype=np.int64), tgt_out[:-1]])
    return (src, np.array([len(s) for s in srcs]), tgt_in, tgt_out,
            np.array([len(t) for t in tgts]))


def translate(model, texts, beam=1, max_len=12, return_attention=False):
    """Human spellings -> ISO strings (greedy, or beam search with beam > 1)."""
    src, lengths, *_ = batch_arrays([(t, "") for t in texts])
    if beam > 1:
        return [TGT.decode(h[0].tokens) for h in model.beam_search(src, lengths, beam, max_len)]
    out = model.greedy(src, lengths, max_len, return_attention=return_attention)
    if return_attention:
        hyps, weights = out
        return [TGT.decode(h.tokens) for h in hyps], weights
    return [TGT.decode(h.tokens) for h in out]


def exact_match(model, pairs, beam=1, batch=500):
    """Fraction of pairs translated exactly."""
    right = 0
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        got = translate(model, [s for s, _ in chunk], beam=beam)
        right += sum(g == t for g, (_, t) in zip(got, chunk))
    return right / max(len(pairs), 1)


def train(model, steps, batch, lr, clip, rng, warmup=100, progress=None, eval_pairs=None,
          eval_every=0):
    """Teacher-forced training with Adam (cosine schedule) and gradient clipping, every
    `eval_every` updates but the last the held-out exact match on eval_pairs written above
    `progress` (a Progress, closed at the end, or None); returns (the per-update losses, the
    optimiser, the schedule)."""
    opt = Adam(model, lr=lr)
    sched = CosineWarmup(opt, warmup_steps=min(warmup, steps), total_steps=steps,
                         min_lr=lr / 20)
    losses = []
    model.train()

    def update(step):
        src, src_len, tgt_in, tgt_out, tgt_len = batch_arrays(make_pairs(rng, batch))
        model.zero_grad()
        loss, _ = model.loss(src, tgt_in, tgt_out, src_len, tgt_len)
        clip_grad_norm(model, clip)
        opt.step()
        sched.step()
        losses.append(loss)
        return loss

    def evaluate(step, loss, seconds):
        model.eval()
        acc = exact_match(model, eval_pairs)
        model.train()
        return f"update {step}: training loss {loss:.4f}, held-out exact match {acc:.2%}"

    train_loop(update, steps, progress=progress, eval_every=eval_every, eval_last=False,
               evaluate=evaluate if eval_pairs is not None else None)
    return losses, opt, sched


def add_arguments(ap):
    add_common_arguments(
        ap, dict(steps=2500, batch=64, embed=32, hidden=128, cell=default_cell(), lr=3e-3,
                 clip=1.0, eval_every=500, seed=0, threads=0, out="rnncore-translate",
                 no_progress=True),
        helps={"out": "folder for the checkpoint and the attention heatmap (default "
                      "./rnncore-translate)"})
    ap.add_argument("--score", choices=["general", "additive"], default="general",
                    help="attention score (default general)")
    ap.add_argument("--eval-size", type=int, default=2000, help="held-out pairs (default 2000)")
    ap.add_argument("--beam", type=int, default=4, help="beam width for the beam-search score")


def _heatmap(model, text, path):
    plt = pyplot(path, "attention heatmap")
    if plt is None:
        return None
    (iso,), weights = translate(model, [text], return_attention=True)
    w = weights[:len(iso) + 1, 0, :len(text)]  # the output characters and EOS
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * len(text) + 1.5), 4.2))
    im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(text)), list(text))
    ax.set_yticks(range(len(iso) + 1), list(iso) + ["<eos>"])
    ax.set_xlabel("source characters")
    ax.set_ylabel("output characters")
    ax.set_title(f"attention: {text!r} -> {iso!r}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args, error):
    check_positive(args, ("steps", "batch", "embed", "hidden", "eval_size", "beam"), error)
    if args.eval_every < 0:
        error(f"--eval-every must be >= 0, got {args.eval_every}")
    if not args.lr > 0 or not args.clip > 0:
        error(f"--lr and --clip must be positive, got {args.lr} and {args.clip}")
    out = output_folder(args.out, error)  # before training: a bad --out loses no work
    version, threads = set_threads(args)
    rng = np.random.default_rng(args.seed)
    held_out = make_pairs(np.random.default_rng(args.seed + 10_000), args.eval_size,
                          held_out=True)
    model = Seq2Seq(len(SRC), len(TGT), args.embed, args.hidden, args.cell, args.score,
                    bos=BOS, eos=EOS, seed=args.seed)
    print(f"rnncore {version} date translation: {len(FORMATS)} formats -> ISO, "
          f"{model.num_parameters():,} parameters ({args.cell}, hidden {args.hidden}, "
          f"{args.score} attention), {args.steps} updates of {args.batch}, "
          f"{threads} threads")
    t0 = time.perf_counter()
    losses, opt, sched = train(model, args.steps, args.batch, args.lr, args.clip, rng,
                               progress=Progress(args.steps, args.no_progress),
                               eval_pairs=held_out, eval_every=args.eval_every)
    seconds = time.perf_counter() - t0
    model.eval()
    greedy = exact_match(model, held_out)
    beam = exact_match(model, held_out, beam=args.beam)
    ckpt = out / "translate.safetensors"
    checkpoint.save(ckpt, model, opt, sched, step=args.steps,
                    config=dict(model.config, src_chars=SRC_CHARS, tgt_chars=TGT_CHARS),
                    extra={"exact_match_greedy": greedy, f"exact_match_beam{args.beam}": beam})
    samples = [f(datetime.date(1999, 3, 3)) for f in FORMATS[:4]] + \
        [text for text, _ in held_out[:6]]
    print()
    for text, iso in zip(samples, translate(model, samples)):
        print(f"  {text:32s} -> {iso}")
    heat = _heatmap(model, "Wednesday, 3 March 1999", out / "attention.png")
    print(f"\ncheckpoint: {ckpt}")
    if heat:
        print(f"attention heatmap: {heat}")
    print(f"held-out exact match after {args.steps} updates ({seconds:.0f} s): greedy "
          f"{greedy:.2%}, beam {args.beam} {beam:.2%} on {len(held_out)} unseen dates "
          f"(training loss {losses[0]:.3f} -> {np.mean(losses[-50:]):.4f})")
    return 0 if greedy >= 0.99 else 1
