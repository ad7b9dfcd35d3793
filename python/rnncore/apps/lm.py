"""`rnncore train lm` (the main job) and `rnncore sample`: a language model that learns to write.

Embedding -> stacked LSTM (or any registry cell) -> Linear -> softmax over the next token,
trained with truncated BPTT (rnncore.tbptt), Adam, a cosine schedule with warm-up and gradient
clipping, on text that every machine with Python has and that is not ours: the standard
library's own source files (sorted by name, concatenated up to --max-chars), split into training
and validation text. Character level by default (bits per character); --level word predicts the
next word (the lecture's "predict the next word"; perplexity).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rnncore._ext import __version__
from rnncore._interop import pyplot
from rnncore.apps.common import (
    Progress,
    add_common_arguments,
    finite_float,
    output_folder,
    set_threads,
    train_loop,
)
from rnncore.models.lm import (
    DEFAULT_CELL,
    LanguageModel,
    Vocabulary,
    check_config,
    default_corpus,
    generate,
    load_model,
    state_arrays,
    state_from_arrays,
)
from rnncore.train import checkpoint
from rnncore.train.losses import cross_entropy
from rnncore.train.optim import Adam, CosineWarmup, clip_grad_norm
from rnncore.train.tbptt import batchify, evaluate, truncated_bptt

# ---- training -----------------------------------------------------------------------------------

def add_arguments(ap):
    data = ap.add_argument_group("data")
    data.add_argument("--corpus", help="a UTF-8 text file (default: the standard library's "
                      "own source files, embedded in every Python)")
    data.add_argument("--max-chars", type=int, default=2_000_000,
                      help="characters of the corpus to use (default 2,000,000)")
    data.add_argument("--val-fraction", type=finite_float, default=0.05,
                      help="the last part of the text held out for validation (default 0.05)")
    data.add_argument("--level", choices=["char", "word"], default="char",
                      help="predict the next character (default) or the next word")
    data.add_argument("--vocab-size", type=int, default=10000,
                      help="word level: most frequent tokens kept (default 10000)")
    model = ap.add_argument_group("model")
    add_common_arguments(model, dict(cell=DEFAULT_CELL, embed=64, hidden=256, layers=2),
                         helps={"cell": None})
    model.add_argument("--dropout", type=finite_float, default=0.0)
    train = ap.add_argument_group("training")
    add_common_arguments(
        train, dict(batch=32, steps=4000, lr=3e-3, clip=1.0, eval_every=500, seed=0, threads=0),
        helps={"batch": "parallel streams (default 32)",
               "steps": "updates (default 4000: about 3 minutes on 2 cores)"})
    train.add_argument("--bptt", type=int, default=64, help="k1: steps per update (default 64)")
    train.add_argument("--k2", type=int, help="steps back-propagated (>= --bptt; default = --bptt)")
    train.add_argument("--warmup", type=int, default=100, help="warm-up updates of the cosine "
                       "schedule (default 100)")
    train.add_argument("--eval-chars", type=int, default=65536,
                       help="validation characters (tokens) per evaluation (default 65536)")
    train.add_argument("--resume", help="a checkpoint of an earlier run to continue: the model, "
                       "data and update flags must be the run's (" + ", ".join(
                           map(_flag, RUN_FLAGS)) + "); these may change: " + ", ".join(
                           map(_flag, FREE_FLAGS)))
    train.add_argument("--stop-after", type=int, help="stop (and save) after this many updates "
                       "of the --steps schedule, to --resume later; Ctrl-C also saves")
    out = ap.add_argument_group("output")
    add_common_arguments(out, dict(out="rnncore-lm", no_progress=True),
                         helps={"out": "folder for the checkpoint, the loss plot and the "
                                       "samples (default ./rnncore-lm)"})
    out.add_argument("--sample-length", type=int, default=300)
    out.add_argument("--temperature", type=finite_float, default=0.7)
    out.add_argument("--top-k", type=int, default=None)


# --resume: the flags a run is defined by (saved in the checkpoint's config, compared on resume),
# and those that may change between its parts (how far, how often to evaluate, where to write).
RUN_FLAGS = ("cell", "embed", "hidden", "layers", "dropout", "level", "vocab_size", "corpus",
             "max_chars", "val_fraction", "batch", "bptt", "k2", "lr", "clip", "warmup")
FREE_FLAGS = ("steps", "stop_after", "eval_every", "eval_chars", "seed", "threads", "out",
              "no_progress", "sample_length", "temperature", "top_k")


def _flag(name):
    return "--" + name.replace("_", "-")


def _run_flags(args):
    """The RUN_FLAGS values of this command line, as the checkpoint's config records them."""
    flags = {name: getattr(args, name) for name in RUN_FLAGS}
    flags["k2"] = args.k2 or args.bptt
    flags["corpus"] = os.path.abspath(args.corpus) if args.corpus else None
    return flags


# what a checkpoint written before config["flags"] existed says of its run's flags
_OLD_FLAGS = ("cell", "embed", "hidden", "layers", "dropout", "level", "batch", "bptt", "k2")


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_resume(args, resumed, error):
    """error(...) unless --resume's checkpoint is a language model's of a run with these
    RUN_FLAGS (those its config records: older files lack some)."""
    config = check_config(args.resume, resumed.config)
    extra = resumed.extra
    if not (isinstance(extra, dict) and _count(extra.get("position"))
            and isinstance(extra.get("kept_positions"), list)
            and all(_count(p) for p in extra["kept_positions"])
            and isinstance(extra.get("history"), dict)
            and all(isinstance(extra["history"].get(k), list) for k in ("train", "val"))):
        error(f"--resume: {args.resume}: not a checkpoint of rnncore train lm (its extra has "
              "no stream position, kept windows and history)")
    saved = config.get("flags")
    if not isinstance(saved, dict):
        saved = {k: config[k] for k in _OLD_FLAGS if k in config}
    differ = [f"{_flag(name)} {saved[name]} (given {value})"
              for name, value in _run_flags(args).items()
              if name in saved and saved[name] != value
              and not (name == "vocab_size" and config["level"] == "char")]
    if differ:
        error(f"--resume: {args.resume} was trained with other flags: {'; '.join(differ)}. "
              f"Repeat the run's flags; only {', '.join(map(_flag, FREE_FLAGS))} may change")


def _check_args(args, error):
    for name in ("max_chars", "vocab_size", "embed", "hidden", "layers", "batch", "bptt",
                 "steps", "eval_every", "eval_chars", "sample_length"):
        if getattr(args, name) <= 0:
            error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.stop_after is not None and args.stop_after <= 0:
        error(f"--stop-after must be positive, got {args.stop_after}")
    if args.k2 is not None and args.k2 < args.bptt:
        error(f"--k2 must be >= --bptt ({args.bptt}), got {args.k2}")
    if not 0 < args.val_fraction < 0.5:
        error(f"--val-fraction must lie in (0, 0.5), got {args.val_fraction}")
    if not 0 <= args.dropout < 1:
        error(f"--dropout must lie in [0, 1), got {args.dropout}")
    if not args.lr > 0 or not args.clip > 0:
        error(f"--lr and --clip must be positive, got {args.lr} and {args.clip}")
    if args.temperature < 0:
        error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k <= 0:
        error(f"--top-k must be positive, got {args.top_k}")
    if args.corpus and not os.path.isfile(args.corpus):
        error(f"--corpus: no such file {args.corpus!r}")
    if args.resume and not os.path.isfile(args.resume):
        error(f"--resume: no such file {args.resume!r}")


def _check_text(args, n_train, n_val, error):
    """error(...) when the corpus is too short for --batch streams of at least 2 tokens."""
    need = 2 * args.batch
    if n_train < need or n_val < need:
        where = f"--corpus {args.corpus!r}" if args.corpus else "the corpus"
        error(f"{where} is too short: {n_train} training and {n_val} validation tokens, "
              f"--batch {args.batch} needs at least {need} of each (--val-fraction "
              f"{args.val_fraction})")


def _metric(loss, level):
    """(name, value): bits per character, or perplexity for words."""
    return ("bits/char", loss / math.log(2)) if level == "char" else ("perplexity", math.exp(loss))


def _plot(history, path):
    plt = pyplot(path, "loss plot")
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = zip(*history["train"]) if history["train"] else ((), ())
    ax.plot(steps, losses, lw=0.8, alpha=0.7, label="training (per update)")
    if history["val"]:
        vs, vl = zip(*history["val"])
        ax.plot(vs, vl, "o-", label="validation")
    ax.set_xlabel("update")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class _Run:
    """Where training stands after the last whole update: what a checkpoint saves to resume."""
    step: int = 0
    position: int = 0         # the streams' position of the next update
    kept: list = None         # (position, state) of the windows TBPTT keeps (k2 > k1)
    tokens: int = 0           # tokens trained on in this process
    history: dict = field(default_factory=lambda: {"train": [], "val": []})


def run(args, error):
    _check_args(args, error)
    out = output_folder(args.out, error)
    resumed = None
    if args.resume:
        try:
            resumed = checkpoint.load(args.resume)
            _check_resume(args, resumed, error)
        except checkpoint.CheckpointError as e:
            error(f"--resume: {e}")
    _, threads = set_threads(args)
    text, source = _read_text(args, error)
    split = int(len(text) * (1 - args.val_fraction))
    train_text, val_text = text[:split], text[split:]
    if resumed is not None:
        vocab = Vocabulary(resumed.config["vocab"], resumed.config["level"])
    else:
        vocab = Vocabulary.from_text(train_text, args.level,
                                     args.vocab_size if args.level == "word" else None)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    _check_text(args, len(train_ids), len(val_ids), error)
    streams = batchify(train_ids, args.batch)
    val = batchify(val_ids, args.batch)[:args.eval_chars // args.batch + 1]
    k2 = args.k2 or args.bptt
    try:
        model, opt, sched, state = _build(args, vocab, resumed)
    except checkpoint.CheckpointError as e:
        error(f"--resume: {e}")
    config = dict(model.config, vocab=vocab.itos, level=vocab.level, bptt=args.bptt, k2=k2,
                  batch=args.batch, source=source, flags=_run_flags(args))
    _print_setup(args, vocab, source, len(train_ids), len(val_ids), model, k2, threads)

    def validate():
        loss, _ = evaluate(model, cross_entropy, val[:-1], val[1:], chunk=256)
        return loss

    if state.step == 0:
        loss0 = validate()
        state.history["val"].append((0, loss0))
        name, value = _metric(loss0, vocab.level)
        print(f"  before training: validation {name} {value:.3f}")
    ckpt_path = out / "lm.safetensors"

    def finish(end):  # Ctrl-C waits until the checkpoint is written (train_loop)
        if end.interrupted:
            print(f"\ninterrupted after {state.step} updates: saving a checkpoint to resume from")
        _save(ckpt_path, model, opt, sched, state, config)

    end = _train(args, model, opt, sched, streams, validate, state, k2, vocab.level, finish)
    return _report(args, model, vocab, out, state, end.seconds, ckpt_path)


def _read_text(args, error):
    """(the corpus text, a line saying where it came from)."""
    if args.corpus:
        try:
            text = Path(args.corpus).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            error(f"--corpus: cannot read {args.corpus!r}: {e.strerror or e}")
        text = text[:args.max_chars]
        return text, f"{args.corpus} ({len(text):,} characters)"
    return default_corpus(args.max_chars)


def _build(args, vocab, resumed):
    """The model, optimiser, schedule and training state: new, or --resume's checkpoint (its
    flags checked by _check_resume)."""
    model = LanguageModel(len(vocab), args.embed, args.hidden, args.layers, args.cell,
                          args.dropout, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    sched = CosineWarmup(opt, warmup_steps=min(args.warmup, args.steps), total_steps=args.steps,
                         min_lr=args.lr / 20)
    state = _Run()
    if resumed is not None:
        ck = checkpoint.restore(args.resume, model, opt, sched)
        state.step, state.position, state.history = (ck.step, ck.extra["position"],
                                                      ck.extra["history"])
        state.kept = [(p, state_from_arrays(ck.arrays, f"kept{i}.")) for i, p in
                      enumerate(ck.extra["kept_positions"])]
    return model, opt, sched, state


def _print_setup(args, vocab, source, n_train, n_val, model, k2, threads):
    print(f"rnncore {__version__} language model, {vocab.level} level")
    print(f"  text: {source}")
    print(f"  {n_train:,} training and {n_val:,} validation tokens, vocabulary "
          f"{len(vocab):,}; model: {model.num_parameters():,} parameters "
          f"({args.cell}, {args.layers} x {args.hidden}, embedding {args.embed})")
    print(f"  {args.steps} updates of {args.batch} streams x {args.bptt} steps "
          f"(TBPTT k1={args.bptt}, k2={k2}), Adam lr {args.lr} (cosine, warm-up {args.warmup}), "
          f"clip {args.clip}, {threads} threads")


def _tbptt_updates(model, streams, args, k2, state):
    """Truncated-BPTT updates without end: at the end of the streams a new epoch starts from
    their beginning, state reset. Each generator starts where `state` stands."""
    inputs, targets = streams[:-1], streams[1:]
    while True:
        yield from truncated_bptt(model, cross_entropy, inputs, targets, args.bptt, k2,
                                  start=state.position, kept=state.kept)
        state.position, state.kept = 0, None


def _train(args, model, opt, sched, streams, validate, state, k2, level, finish):
    """Updates until --stop-after (or --steps), keeping `state` current after every update, so
    that Ctrl-C can save exactly where it was; then finish(end) (the save)."""
    updates = _tbptt_updates(model, streams, args, k2, state)
    history = state.history

    def update(step):
        u = next(updates)
        clip_grad_norm(model, args.clip)
        opt.step()
        sched.step()
        state.step = step
        state.tokens += u.steps * args.batch
        state.position, state.kept = u.stop, u.kept
        history["train"].append((step, u.loss))
        return u.loss

    def postfix(step, loss):
        rate = state.tokens / (time.perf_counter() - t0)
        return f"loss {loss:.3f}  {rate:,.0f} tokens/s"

    def report(step, loss, seconds):
        vloss = validate()
        history["val"].append((step, vloss))
        name, value = _metric(vloss, level)
        return f"update {step}: validation {name} {value:.3f}, training loss {loss:.3f}"

    t0 = time.perf_counter()
    stop = min(args.steps, args.stop_after or args.steps)
    return train_loop(update, stop, start=state.step, evaluate=report,
                      eval_every=args.eval_every, postfix=postfix, interruptible=True,
                      progress=Progress(args.steps, args.no_progress, initial=state.step),
                      finish=finish)


def _save(path, model, opt, sched, state, config):
    """The checkpoint: model, optimiser, schedule, and where the streams and kept windows
    stand, so that --resume continues bitwise as if never stopped."""
    kept = state.kept or []
    arrays = {}
    for i, (_, s) in enumerate(kept):
        arrays.update({f"kept{i}.{k}": v for k, v in state_arrays(s).items()})
    checkpoint.save(path, model, opt, sched, step=state.step, config=config, arrays=arrays,
                    extra={"position": state.position, "kept_positions": [p for p, _ in kept],
                           "history": state.history})
    return path


def _report(args, model, vocab, out, state, seconds, ckpt_path):
    """Samples, the loss plot and the closing lines; the exit code: 0 when validation improved."""
    history = state.history
    final, first = history["val"][-1][1], history["val"][0][1]
    rng = np.random.default_rng(args.seed)
    samples = []
    for temperature in sorted({args.temperature, 1.0}):
        text = generate(model, vocab, "def ", args.sample_length, temperature, args.top_k, rng)
        samples.append(f"--- temperature {temperature}, prompt 'def ' ---\ndef {text}")
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    plot = _plot(history, out / "loss.png")
    name = _metric(1.0, vocab.level)[0]
    print(f"\nvalidation {name}: {_metric(first, vocab.level)[1]:.3f} before training -> "
          f"{_metric(final, vocab.level)[1]:.3f} after {state.step} updates "
          f"({seconds:.0f} s here, {state.tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    print("\n" + samples[0] + "\n")
    print(f"checkpoint: {ckpt_path}   (rnncore sample {ckpt_path} --prompt 'import ')")
    print(f"samples:    {out / 'samples.txt'}")
    if plot:
        print(f"loss plot:  {plot}")
    return 0 if final < first else 1


# ---- rnncore sample -----------------------------------------------------------------------------

def add_sample_arguments(ap):
    ap.add_argument("checkpoint", help="a checkpoint written by rnncore train lm")
    ap.add_argument("--prompt", default="", help="text to continue (default: a new line)")
    ap.add_argument("--length", type=int, default=500, help="tokens to generate (default 500)")
    ap.add_argument("--temperature", type=finite_float, default=0.7)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)


def run_sample(args, error):
    if not os.path.isfile(args.checkpoint):
        error(f"no such checkpoint file {args.checkpoint!r}")
    if args.length <= 0:
        error(f"--length must be positive, got {args.length}")
    if args.temperature < 0:
        error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k <= 0:
        error(f"--top-k must be positive, got {args.top_k}")
    model, vocab = load_model(args.checkpoint)
    text = generate(model, vocab, args.prompt, args.length, args.temperature, args.top_k,
                    np.random.default_rng(args.seed))
    sys.stdout.write(args.prompt + text + "\n")
    return 0
