"""What the training programs (`rnncore train ...`) share: their common flags, flag checks, the
output folder, the progress bar, one training loop (progress, periodic evaluation, Ctrl-C), the
--target bookkeeping, and padding a batch of token sequences.

An app declares which common flags it has and their defaults (add_common_arguments), checks
its flags (check_positive, check_target, output_folder), sets its threads (set_threads) and
runs train_loop with its own update and evaluation functions.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnncore._ext import __version__, get_num_threads, set_num_threads
from rnncore._interop import deferred_interrupts
from rnncore.nn.registry import CELLS
from rnncore.train.optim import clip_grad_norm

# ---- flags -----------------------------------------------------------------------------------

def finite_float(text):
    """argparse type: a finite float (inf and nan are refused when the flag is parsed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def threads_int(text):
    """argparse type of --threads: 0 (all cores) or a positive int."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all cores) or positive, got {value}")
    return value


# flag (attribute name) -> (type, help with {default} filled in, or None); in this order on --help
_COMMON = {
    "cell": (None, "a cell of the registry (default: {default})"),
    "embed": (int, None),
    "hidden": (int, None),
    "layers": (int, None),
    "batch": (int, None),
    "steps": (int, "updates (default {default})"),
    "lr": (finite_float, None),
    "clip": (finite_float, "max global gradient norm"),
    "eval_every": (int, None),
    "seed": (int, None),
    "threads": (threads_int, "0 = all cores"),
    "out": (None, "folder for the checkpoint (default ./{default})"),
    "no_progress": (bool, "no progress bar"),
}


def add_common_arguments(ap, defaults, helps=None):
    """Adds the common flags named by `defaults` (attribute name -> this app's default; for
    --no-progress any value) to ap (a parser or an argument group), in the order of _COMMON.
    helps: attribute name -> this app's help text, where it says more than the common one
    (None: no help text)."""
    helps = helps or {}
    unknown = set(defaults) - set(_COMMON)
    if unknown:
        raise ValueError(f"not common flags: {sorted(unknown)}")
    for name, (kind, text) in _COMMON.items():
        if name not in defaults:
            continue
        flag, default = "--" + name.replace("_", "-"), defaults[name]
        text = helps[name] if name in helps else text and text.format(default=default)
        if kind is bool:
            ap.add_argument(flag, action="store_true", help=text)
        elif name == "cell":
            ap.add_argument(flag, choices=list(CELLS), default=default, help=text)
        else:
            ap.add_argument(flag, type=kind, default=default, help=text)


def add_target_argument(ap, default, what):
    """--target: the held-out score (`what`) the run must reach, else exit code 1."""
    ap.add_argument("--target", type=finite_float, default=default,
                    help=f"held-out {what} to reach (default {default}); exit code 1 below it")


def check_positive(args, names, error):
    """error(...) for the first flag in `names` (attribute names) that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if not value > 0:
            error(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_target(args, error):
    if not 0 < args.target <= 1:
        error(f"--target must lie in (0, 1], got {args.target}")


def output_folder(path, error):
    """Creates the --out folder before any training and checks that it is a writable folder
    (a file, a path under a file or a read-only folder fails at once, exit code 2)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        error(f"--out: {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"--out: cannot create the folder {str(out)!r}: {e.strerror or e}")
    if not os.access(out, os.W_OK | os.X_OK):
        error(f"--out: the folder {str(out)!r} is not writable")
    return out


def set_threads(args):
    """Applies --threads (0 = all cores); returns the version and thread count the apps print
    in their opening line."""
    set_num_threads(args.threads)
    return __version__, get_num_threads()


# ---- the training loop -----------------------------------------------------------------------

class Progress:
    """A tqdm bar over `total` updates starting at `initial` (or nothing with disabled=True);
    write() prints a line above the bar, or plainly when there is no bar."""

    def __init__(self, total, disabled, unit="update", initial=0):
        self._bar = None
        if not disabled:
            from tqdm import tqdm  # optional: tqdm (rnncore[train])
            self._bar = tqdm(total=total, initial=initial, unit=unit, mininterval=0.5,
                             dynamic_ncols=True, file=sys.stdout)

    @property
    def shown(self):
        return self._bar is not None

    def update(self, postfix=None):
        """One step forward; postfix (a string) replaces the text after the bar."""
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(1)

    def write(self, line):
        (self._bar.write if self._bar is not None else print)(line)

    def close(self):
        if self._bar is not None:
            self._bar.close()


@dataclass
class LoopEnd:
    """How train_loop ended: the last update done, the seconds it ran, whether Ctrl-C ended it."""
    step: int
    seconds: float
    interrupted: bool


def train_loop(update, stop, *, start=0, evaluate=None, eval_every=0, eval_last=True,
               progress=None, postfix=None, interruptible=False, finish=None):
    """Runs update(step) -> loss for step = start + 1 .. stop, the one loop of the apps.

    After each update: the progress bar moves on (postfix(step, loss) -> its text, default
    "loss {loss:.4f}"; None keeps the old text); every `eval_every` updates (0: never), and
    after the last one when eval_last, evaluate(step, loss, seconds) -> a line written above the
    bar (None: nothing). With interruptible, Ctrl-C ends the loop after the last whole update
    (the caller saves a checkpoint to resume from); else it propagates. The loop closes
    `progress` (a Progress, or None for none).

    Ctrl-C never splits an update: SIGINT is held while update(step) runs (forward, backward,
    the optimiser's and the schedule's steps, the caller's counters) and delivered after it, so
    the state is the one before an update or after it. The progress bar and evaluate() may be
    interrupted anywhere. finish(LoopEnd) (e.g. the final save) runs after the loop, however it
    ended by Ctrl-C, with SIGINT held from the end of the last update to its return: a Ctrl-C
    in that span lets it finish, then raises KeyboardInterrupt."""
    postfix = postfix or (lambda step, loss: f"loss {loss:.4f}")
    t0 = time.perf_counter()
    done, interrupted = start, False
    with deferred_interrupts() as guard:
        try:
            for step in range(start + 1, stop + 1):
                loss = update(step)
                done = step
                with guard.opened():
                    if progress is not None:
                        progress.update(postfix(step, loss))
                    if evaluate is not None and _evaluates(step, stop, eval_every, eval_last):
                        line = evaluate(step, loss, time.perf_counter() - t0)
                        if line is not None:
                            (progress.write if progress is not None else print)(line)
            guard.deliver()  # a Ctrl-C during the last update still counts as one
        except KeyboardInterrupt:
            if not interruptible:
                raise
            interrupted = True
        finally:
            if progress is not None:
                progress.close()
        end = LoopEnd(done, time.perf_counter() - t0, interrupted)
        if finish is not None:
            finish(end)
    return end


def _evaluates(step, stop, eval_every, eval_last):
    if step == stop:
        return eval_last
    return bool(eval_every) and step % eval_every == 0


class Target:
    """--target of a held-out score: the first update that reached it and the closing words.
    fmt formats the target (".0%" or ".2f")."""

    def __init__(self, value, fmt):
        self.value, self.fmt, self.reached_at = value, fmt, None

    def check(self, score, step, seconds):
        if self.reached_at is None and score >= self.value:
            self.reached_at = (step, seconds)

    def after(self, steps, seconds):
        """'after 1000 updates (12 s); 98% first reached at update 300 (4.1 s)' (the second part
        only when it was reached)."""
        line = f"after {steps} updates ({seconds:.0f} s)"
        if self.reached_at is None:
            return line
        step, when = self.reached_at
        return line + f"; {self.value:{self.fmt}} first reached at update {step} ({when:.1f} s)"

    def verdict(self, score):
        reached = "reached" if score >= self.value else "NOT reached"
        return f"target {self.value:{self.fmt}} {reached}"

    def exit_code(self, score):
        return 0 if score >= self.value else 1


def backward_and_step(model, opt, dloss, clip, sched=None):
    """The end of every app's update: model.backward(dloss) into zeroed gradients, clipping to
    the global norm `clip`, the optimiser's step and the schedule's (when there is one)."""
    model.zero_grad()
    model.backward(dloss)
    clip_grad_norm(model, clip)
    opt.step()
    if sched is not None:
        sched.step()


# ---- data ------------------------------------------------------------------------------------

def pad_batch(sequences, pad=0):
    """A list of 1-D int arrays -> (tokens (T, B) int64 padded with `pad`, lengths (B,) int64)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    tokens = np.full((int(lengths.max(initial=0)), len(sequences)), pad, dtype=np.int64)
    for b, s in enumerate(sequences):
        tokens[:len(s), b] = s
    return tokens, lengths
