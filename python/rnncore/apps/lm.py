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
from pathlib import Path

import numpy as np

from rnncore._interop import pyplot
from rnncore.models.lm import (
    DEFAULT_CELL,
    LanguageModel,
    Vocabulary,
    default_corpus,
    generate,
    load_model,
    state_arrays,
    state_from_arrays,
)

# ---- training -----------------------------------------------------------------------------------

def add_arguments(ap):
    from rnncore.nn.registry import CELLS
    data = ap.add_argument_group("data")
    data.add_argument("--corpus", help="a UTF-8 text file (default: the standard library's "
                      "own source files, embedded in every Python)")
    data.add_argument("--max-chars", type=int, default=2_000_000,
                      help="characters of the corpus to use (default 2,000,000)")
    data.add_argument("--val-fraction", type=float, default=0.05,
                      help="the last part of the text held out for validation (default 0.05)")
    data.add_argument("--level", choices=["char", "word"], default="char",
                      help="predict the next character (default) or the next word")
    data.add_argument("--vocab-size", type=int, default=10000,
                      help="word level: most frequent tokens kept (default 10000)")
    model = ap.add_argument_group("model")
    model.add_argument("--cell", choices=list(CELLS), default=DEFAULT_CELL)
    model.add_argument("--embed", type=int, default=64)
    model.add_argument("--hidden", type=int, default=256)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--dropout", type=float, default=0.0)
    train = ap.add_argument_group("training")
    train.add_argument("--batch", type=int, default=32, help="parallel streams (default 32)")
    train.add_argument("--bptt", type=int, default=64, help="k1: steps per update (default 64)")
    train.add_argument("--k2", type=int, help="steps back-propagated (>= --bptt; default = --bptt)")
    train.add_argument("--steps", type=int, default=4000, help="updates (default 4000: about 3 "
                       "minutes on 2 cores)")
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--warmup", type=int, default=100, help="warm-up updates of the cosine "
                       "schedule (default 100)")
    train.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    train.add_argument("--eval-every", type=int, default=500)
    train.add_argument("--eval-chars", type=int, default=65536,
                       help="validation characters (tokens) per evaluation (default 65536)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=0, help="0 = all cores")
    train.add_argument("--resume", help="a checkpoint of an earlier run to continue (with the "
                       "same flags: the schedule and the data follow --steps)")
    train.add_argument("--stop-after", type=int, help="stop (and save) after this many updates "
                       "of the --steps schedule, to --resume later; Ctrl-C also saves")
    out = ap.add_argument_group("output")
    out.add_argument("--out", default="rnncore-lm", help="folder for the checkpoint, the "
                     "loss plot and the samples (default ./rnncore-lm)")
    out.add_argument("--sample-length", type=int, default=300)
    out.add_argument("--temperature", type=float, default=0.7)
    out.add_argument("--top-k", type=int, default=None)
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def _train_loop(args, model, opt, sched, streams, validate, history, progress, run, stop, k2,
                level, t0):
    """Updates until step `stop`, keeping `run` (step, position, kept window states, tokens
    seen) current after every update, so that an interrupt can save exactly where it was."""
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import clip_grad_norm
    from rnncore.train.tbptt import truncated_bptt
    name = _metric(1.0, level)[0]
    inputs, targets = streams[:-1], streams[1:]
    while run["step"] < stop:
        updates = truncated_bptt(model, cross_entropy, inputs, targets, args.bptt, k2,
                                 start=run["position"], kept=run["kept"])
        for update in updates:
            clip_grad_norm(model, args.clip)
            opt.step()
            sched.step()
            step = run["step"] = run["step"] + 1
            run["tokens"] += update.steps * args.batch
            run["position"], run["kept"] = update.stop, update.kept
            history["train"].append((step, update.loss))
            if progress is not None:
                rate = run["tokens"] / (time.perf_counter() - t0)
                progress.set_postfix_str(f"loss {update.loss:.3f}  {rate:,.0f} tokens/s",
                                         refresh=False)
                progress.update(1)
            if step % args.eval_every == 0 or step == stop:
                vloss = validate()
                history["val"].append((step, vloss))
                msg = (f"update {step}: validation {name} {_metric(vloss, level)[1]:.3f}, "
                       f"training loss {update.loss:.3f}")
                (progress.write if progress is not None else print)(msg)
            if step >= stop:
                break
        else:  # the streams ran out: a new epoch from the start, state reset
            run["position"], run["kept"] = 0, None


def run(args, error):
    _check_args(args, error)
    import rnncore
    from rnncore.train import checkpoint
    from rnncore.train.losses import cross_entropy
    from rnncore.train.optim import Adam, CosineWarmup
    from rnncore.train.tbptt import batchify, evaluate

    rnncore.set_num_threads(args.threads)
    if args.corpus:
        text = Path(args.corpus).read_text(encoding="utf-8", errors="replace")[:args.max_chars]
        source = f"{args.corpus} ({len(text):,} characters)"
    else:
        text, source = default_corpus(args.max_chars)
    split = int(len(text) * (1 - args.val_fraction))
    train_text, val_text = text[:split], text[split:]
    resumed = checkpoint.load(args.resume) if args.resume else None
    if resumed is not None:
        vocab = Vocabulary(resumed.config["vocab"], resumed.config["level"])
    else:
        vocab = Vocabulary.from_text(train_text, args.level,
                                     args.vocab_size if args.level == "word" else None)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    streams = batchify(train_ids, args.batch)
    val = batchify(val_ids, args.batch)[:args.eval_chars // args.batch + 1]
    k2 = args.k2 or args.bptt

    if resumed is not None:  # the checkpoint's model, whatever the flags say
        c = resumed.config
        args.embed, args.hidden, args.layers, args.cell, args.dropout = (
            c["embed"], c["hidden"], c["layers"], c["cell"], c["dropout"])
    model = LanguageModel(len(vocab), args.embed, args.hidden, args.layers, args.cell,
                          args.dropout, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    sched = CosineWarmup(opt, warmup_steps=min(args.warmup, args.steps), total_steps=args.steps,
                         min_lr=args.lr / 20)
    config = dict(model.config, vocab=vocab.itos, level=vocab.level, bptt=args.bptt, k2=k2,
                  batch=args.batch, source=source)
    step, position, kept, history = 0, 0, None, {"train": [], "val": []}
    if resumed is not None:
        ck = checkpoint.restore(args.resume, model, opt, sched)
        step = ck.step
        position = ck.extra["position"]
        history = ck.extra["history"]
        kept = [(p, state_from_arrays(ck.arrays, f"kept{i}.")) for i, p in
                enumerate(ck.extra["kept_positions"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "lm.safetensors"
    name, _ = _metric(1.0, vocab.level)
    print(f"rnncore {rnncore.__version__} language model, {vocab.level} level")
    print(f"  text: {source}")
    print(f"  {len(train_ids):,} training and {len(val_ids):,} validation tokens, vocabulary "
          f"{len(vocab):,}; model: {model.num_parameters():,} parameters "
          f"({args.cell}, {args.layers} x {args.hidden}, embedding {args.embed})")
    print(f"  {args.steps} updates of {args.batch} streams x {args.bptt} steps "
          f"(TBPTT k1={args.bptt}, k2={k2}), Adam lr {args.lr} (cosine, warm-up {args.warmup}), "
          f"clip {args.clip}, {rnncore.get_num_threads()} threads")

    def validate():
        loss, _ = evaluate(model, cross_entropy, val[:-1], val[1:], chunk=256)
        return loss

    if step == 0:
        loss0 = validate()
        history["val"].append((0, loss0))
        print(f"  before training: validation {name} {_metric(loss0, vocab.level)[1]:.3f}")
    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=args.steps, initial=step, unit="update", mininterval=0.5,
                        dynamic_ncols=True, file=sys.stdout)
    t0 = time.perf_counter()
    stop = min(args.steps, args.stop_after or args.steps)
    run_state = {"step": step, "position": position, "kept": kept, "tokens": 0}
    interrupted = False
    try:
        _train_loop(args, model, opt, sched, streams, validate, history, progress, run_state,
                    stop, k2, vocab.level, t0)
    except KeyboardInterrupt:
        interrupted = True
    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - t0
    step, position, kept, tokens_seen = (run_state[k] for k in ("step", "position", "kept",
                                                                 "tokens"))
    if interrupted:
        print(f"\ninterrupted after {step} updates: saving a checkpoint to resume from")
    final = history["val"][-1][1]
    first = history["val"][0][1]
    kept = kept or []
    arrays = {}
    for i, (_, s) in enumerate(kept):
        arrays.update({f"kept{i}.{k}": v for k, v in state_arrays(s).items()})
    checkpoint.save(ckpt_path, model, opt, sched, step=step, config=config, arrays=arrays,
                    extra={"position": position, "kept_positions": [p for p, _ in kept],
                           "history": history})
    rng = np.random.default_rng(args.seed)
    samples = []
    for temperature in sorted({args.temperature, 1.0}):
        text = generate(model, vocab, "def ", args.sample_length, temperature, args.top_k, rng)
        samples.append(f"--- temperature {temperature}, prompt 'def ' ---\ndef {text}")
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    plot = _plot(history, out / "loss.png")
    print(f"\nvalidation {name}: {_metric(first, vocab.level)[1]:.3f} before training -> "
          f"{_metric(final, vocab.level)[1]:.3f} after {step} updates "
          f"({seconds:.0f} s here, {tokens_seen / max(seconds, 1e-9):,.0f} tokens/s)")
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
    ap.add_argument("--temperature", type=float, default=0.7)
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
