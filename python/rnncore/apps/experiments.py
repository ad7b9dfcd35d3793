"""`rnncore experiment adding|copy`: the lectures' long-range experiments, every cell on one budget.

Two synthetic tasks whose answer depends on inputs far in the past, so a cell solves them only
if the gradient of the loss survives the trip back through many steps of BPTT:

- **The adding problem** (Hochreiter & Schmidhuber 1997; in the form of Le, Jaitly & Hinton 2015).
  Input x_t = (v_t, m_t) for t = 0 .. T-1: values v_t ~ U(0, 1) and a marker m_t that is 1 at
  exactly two steps, one drawn uniformly in the first half [0, T/2) and one in the second half
  [T/2, T). Target: y = sum_t m_t v_t, read from the last hidden state through a Linear layer,
  loss the mean squared error. Predicting 1 always (the mean of y) gives
  MSE = Var(v_a + v_b) = 2/12 = 0.1667: the baseline.
- **The copy-memory task** (Arjovsky, Shah & Bengio 2016). Ten categories a_0 .. a_9: a_0 is the
  blank, a_1 .. a_8 are data symbols, a_9 is the delimiter. Input (T + 20 steps, one-hot): 10
  symbols drawn uniformly from a_1 .. a_8, T - 1 blanks, the delimiter, 10 blanks. Target at
  every step: blanks for T + 10 steps, then the 10 symbols in order. Loss: softmax cross-entropy
  of a Linear read-out of every h_t, averaged over all T + 20 steps. Outputting blanks and then
  a uniform guess over the 8 symbols costs 10 ln 8 / (T + 20) nats per step: the baseline.

Model: one recurrent layer (any registry cell, rnncore.nn.registry.make_module) and a Linear
read-out. Every cell gets the same budget: the same initialisation seed and training batches (one
seeded generator, restarted for each cell), steps, batch size, hidden size, Adam optimiser,
learning rate (the IRNN's times IRNN_LR_SCALE, see below) and global-norm gradient clipping.
Test error is measured on a fixed held-out set whose generator depends only on the task and the
length. "Solved" means a final test error below SOLVED_FRACTION (10%) of the task's baseline. A
run whose loss or gradient norm stops being finite stops there and is reported as diverged.

Gradient flow: `rnncore.diagnostics.jacobian_norms` gives ||dh_{T-1}/dh_t||_F, t = 0 .. T-1, on
test sequences at initialisation and after training (on a float64 copy of the layer: a tanh RNN's
value at t = 0 falls below float32's range at T = 200). The table reports the ratio
    flow = ||dh_{T-1}/dh_0||_F / ||dh_{T-1}/dh_{T-1}||_F   (the last Jacobian is I: sqrt(H))
how much of a gradient at the last step reaches the first one through the recurrence alone.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rnncore._ext import __version__, get_num_threads, set_num_threads
from rnncore._interop import pyplot
from rnncore.nn import registry as _registry
from rnncore.nn.layers import Linear
from rnncore.train import diagnostics
from rnncore.train.losses import cross_entropy, mse
from rnncore.train.optim import Adam, clip_grad_norm

# The IRNN's learning rate is this times --lr (flag --irnn-lr-scale). Adam moves every weight by
# about lr per step whatever the size of its gradient, and a ReLU RNN whose W_hh drifts above the
# identity grows its state geometrically over the T steps: at lr 1e-2 (T = 100, hidden 64, batch
# 50) its training MSE averaged 8e7 over the first 100 steps, at 1e-3 it solved the task.
IRNN_LR_SCALE = 0.1
SOLVED_FRACTION = 0.1        # solved: final test error < 10% of the task's baseline
TEST_SEQUENCES = 1000        # size of each fixed held-out test set
EVAL_BATCH = 250             # test sequences per forward (eval mode keeps no workspace)
PROBE_SEQUENCES = 4          # test sequences that jacobian_norms averages over
_TEST_SEED = 20240917        # the test sets' generator: independent of --seed

# The copy-memory alphabet (Arjovsky et al. 2016): a_0 blank, a_1 .. a_8 data, a_9 delimiter.
COPY_SYMBOLS = 10            # symbols to remember
COPY_CATEGORIES = 8          # data categories
BLANK, DELIMITER = 0, COPY_CATEGORIES + 1
COPY_ALPHABET = COPY_CATEGORIES + 2


# ---- data ----------------------------------------------------------------------------------------
def adding_problem(rng, seq_len, batch, dtype=np.float32):
    """One batch of the adding problem: x (T, B, 2) time-major, target (B, 1).

    x[t, b] = (v, m): v ~ U(0, 1); m = 1 at one step in [0, T//2) and one in [T//2, T), else 0.
    target[b] = the sum of the two marked values."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one marker in each half), got {seq_len}")
    half = seq_len // 2
    values = rng.random((seq_len, batch))
    first = rng.integers(0, half, size=batch)
    second = rng.integers(half, seq_len, size=batch)
    markers = np.zeros((seq_len, batch))
    cols = np.arange(batch)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    target = (values[first, cols] + values[second, cols])[:, None].astype(dtype)
    return x, target


def copy_memory(rng, delay, batch, dtype=np.float32):
    """One batch of the copy-memory task with T = delay: x (T + 20, B, 10) one-hot, labels
    (T + 20, B) integer categories (blank 0, data 1 .. 8, delimiter 9).

    Input:  s_1 .. s_10, T - 1 blanks, delimiter, 10 blanks.
    Labels: T + 10 blanks, s_1 .. s_10."""
    if delay < 1:
        raise ValueError(f"delay must be at least 1 (the delimiter's step), got {delay}")
    n = COPY_SYMBOLS
    length = delay + 2 * n
    symbols = rng.integers(1, COPY_CATEGORIES + 1, size=(n, batch))
    inputs = np.full((length, batch), BLANK)
    inputs[:n] = symbols
    inputs[n + delay - 1] = DELIMITER
    labels = np.full((length, batch), BLANK)
    labels[delay + n:] = symbols
    x = np.eye(COPY_ALPHABET, dtype=dtype)[inputs]
    return x, labels


def adding_baseline(seq_len=None):
    """MSE of always predicting 1: Var(v_a + v_b) = 2 Var(U(0, 1)) = 1/6, for any length."""
    return 1.0 / 6.0


def copy_baseline(delay):
    """Cross-entropy per step (nats) of blanks, then a uniform guess over the 8 data symbols:
    10 ln 8 / (T + 20)."""
    return COPY_SYMBOLS * math.log(COPY_CATEGORIES) / (delay + 2 * COPY_SYMBOLS)


# ---- the two tasks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """What differs between the two experiments; the training loop is shared."""
    name: str
    title: str
    input_size: int
    output_size: int
    read_every_step: bool      # read-out of every h_t (copy) or of the last one (adding)
    make_batch: Callable       # (rng, length, batch) -> (x, target)
    baseline: Callable         # length -> baseline test error
    error_name: str
    defaults: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)

    def loss(self, out, target):
        return cross_entropy(out, target) if self.read_every_step else mse(out, target)


def cells():
    """Every registry cell, in the registry's order (the default of --cells)."""
    return list(_registry.CELLS)


def module_of(cell):
    """How the public API builds `cell`, e.g. "GRU(reset_after=False)" (rnncore._registry)."""
    cls, options = _registry.module_variant(cell)
    return f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


def legend(names):
    """"cells: rnn_tanh = RNN(nonlinearity='tanh'), ..." for the table's cell column."""
    return "cells: " + ", ".join(f"{c} = {module_of(c)}" for c in names)


def is_irnn(cell):
    """Whether `cell` is the IRNN: the ReLU RNN, whose W_hh starts as the identity (rnncore.RNN)."""
    return _registry.module_variant(cell)[1].get("nonlinearity") == "relu"


TASKS = {
    "adding": Task(
        name="adding", title="The adding problem", input_size=2, output_size=1,
        read_every_step=False, make_batch=adding_problem, baseline=adding_baseline,
        error_name="test MSE",
        defaults=dict(lengths=[10, 50, 200], steps=3000, batch=50, hidden=64, lr=1e-2, clip=1.0),
        quick=dict(lengths=[10], steps=300, batch=32, hidden=32, lr=1e-2, clip=1.0)),
    "copy": Task(
        name="copy", title="The copy-memory task", input_size=COPY_ALPHABET,
        output_size=COPY_ALPHABET, read_every_step=True, make_batch=copy_memory,
        baseline=copy_baseline, error_name="test CE (nats/step)",
        defaults=dict(lengths=[10, 50], steps=3000, batch=50, hidden=128, lr=1e-2, clip=1.0),
        quick=dict(lengths=[5], steps=1000, batch=32, hidden=64, lr=1e-2, clip=1.0)),
}


def held_out_set(task, length, size=TEST_SEQUENCES):
    """The fixed held-out set of `task` at `length`: the same for every --seed and every run."""
    rng = np.random.default_rng([_TEST_SEED, list(TASKS).index(task.name), length])
    return task.make_batch(rng, length, size)


# ---- one run: one cell, one length ---------------------------------------------------------------
@dataclass
class Result:
    cell: str
    length: int
    lr: float
    test_error: float          # nan when training diverged
    baseline: float
    steps_done: int
    seconds: float
    jacobian_init: np.ndarray  # ||dh_{T-1}/dh_t||_F, t = 0 .. T-1, at initialisation
    jacobian_trained: np.ndarray
    train_curve: list          # (step, mean training loss since the previous entry)
    test_accuracy: float = float("nan")  # copy: fraction of the 10 recalled symbols right

    @property
    def ratio(self):
        return float(self.test_error / self.baseline)

    @property
    def solved(self):
        return bool(np.isfinite(self.test_error) and self.ratio < SOLVED_FRACTION)

    @staticmethod
    def flow(jac):
        """||dh_{T-1}/dh_0|| / ||dh_{T-1}/dh_{T-1}||."""
        return float(jac[0] / jac[-1]) if jac[-1] > 0 else float("nan")


def build(task, cell, hidden, seed):
    """The recurrent layer (registry cell) and its Linear read-out, seeded."""
    net = _registry.make_module(cell, task.input_size, hidden, seed=seed)
    head = Linear(hidden, task.output_size, seed=seed + 1)
    return net, head


def flow_curve(net, probe):
    """||dh_{T-1}/dh_t||_F for t = 0 .. T-1 (rnncore.diagnostics.jacobian_norms) of a float64
    copy of net: at T = 200 a tanh RNN's value at t = 0 is far below float32's smallest number."""
    exact = _registry.make_module(net.cell, net.input_size, net.hidden_size, dtype=np.float64)
    exact.load_state_dict(net.state_dict())
    return diagnostics.jacobian_norms(exact, probe)[-1]


def predict(task, net, head, x):
    """Read-out of every step (T, B, C) or of the last state (B, 1), in eval mode, by chunks."""
    net.eval()
    head.eval()
    outs = []
    for start in range(0, x.shape[1], EVAL_BATCH):
        y, _ = net(x[:, start:start + EVAL_BATCH])
        outs.append(head(y if task.read_every_step else y[-1]))
    net.train()
    head.train()
    return np.concatenate(outs, axis=1 if task.read_every_step else 0)


def evaluate(task, net, head, x, target):
    """(test error, recall accuracy of the copied symbols or nan)."""
    out = predict(task, net, head, x)
    error, _ = task.loss(out, target)
    accuracy = float("nan")
    if task.read_every_step:
        recall = slice(-COPY_SYMBOLS, None)
        accuracy = float((out[recall].argmax(-1) == target[recall]).mean())
    return error, accuracy


def train_cell(task, cell, length, steps, batch, hidden, lr, clip, seed):
    """Trains one cell on one length; returns a Result. Training batches come from a generator
    seeded by `seed` alone, so every cell sees the same data. A non-finite loss or gradient norm
    stops the run before the update (test error nan: diverged)."""

    x_test, target_test = held_out_set(task, length)
    probe = x_test[:, :PROBE_SEQUENCES]
    net, head = build(task, cell, hidden, seed)
    jac_init = flow_curve(net, probe)
    opt = Adam([net, head], lr=lr)
    rng = np.random.default_rng(seed)
    curve, running, count, done = [], 0.0, 0, 0
    every = max(1, steps // 20)
    t0 = time.perf_counter()
    # A diverging run overflows float32 on its way to inf; it is detected below, not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, steps + 1):
            x, target = task.make_batch(rng, length, batch)
            net.zero_grad()
            head.zero_grad()
            y, _ = net(x)
            if task.read_every_step:
                loss, dout = task.loss(head(y), target)
                dy = head.backward(dout)
            else:
                loss, dout = task.loss(head(y[-1]), target)
                dy = np.zeros_like(y)
                dy[-1] = head.backward(dout)
            net.backward(dy)
            norm = clip_grad_norm([net, head], clip)
            if not (np.isfinite(loss) and np.isfinite(norm)):
                break
            opt.step()
            done = step
            running += loss
            count += 1
            if step % every == 0 or step == steps:
                curve.append((step, running / count))
                running, count = 0.0, 0
    seconds = time.perf_counter() - t0
    if done < steps:
        error, accuracy = float("nan"), float("nan")
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            error, accuracy = evaluate(task, net, head, x_test, target_test)
        if not np.isfinite(error):
            error = float("nan")
    with np.errstate(over="ignore", invalid="ignore"):
        jac_trained = flow_curve(net, probe)
    return Result(cell, length, lr, error, task.baseline(length), done, seconds, jac_init,
                  jac_trained, curve, accuracy)


# ---- report --------------------------------------------------------------------------------------
def _fmt(v, spec):
    return format(v, spec) if np.isfinite(v) else "nan"


def _status(r, steps):
    if r.steps_done < steps:
        return f"diverged at step {r.steps_done + 1}"
    if not np.isfinite(r.test_error):
        return "diverged"
    return "yes" if r.solved else "no"


def table(task, results, steps):
    """The results as a Markdown table (also readable as plain text)."""
    copy = task.read_every_step
    head = (f"| cell | T | lr | {task.error_name} | baseline | error / baseline | "
            + ("recall accuracy | " if copy else "")
            + "solved | flow at init | flow trained | seconds |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        rows.append(
            f"| {r.cell} | {r.length} | {r.lr:g} | {_fmt(r.test_error, '.3g')} | "
            f"{r.baseline:.4f} | {_fmt(r.ratio, '.3f')} | "
            + (f"{_fmt(r.test_accuracy, '.1%')} | " if copy else "")
            + f"{_status(r, steps)} | {_fmt(Result.flow(r.jacobian_init), '.1e')} | "
            f"{_fmt(Result.flow(r.jacobian_trained), '.1e')} | {r.seconds:.1f} |")
    return "\n".join(rows)


def plot(task, results, path):
    """One PNG: a semilog panel of ||dh_{T-1}/dh_t||_F per length, every cell in its colour,
    dashed at initialisation, solid after training. Returns path, or None (with a one-line note
    on stderr, as rnncore.diagnostics.plot_gradient_flow) without matplotlib."""
    plt = pyplot(path)
    if plt is None:
        return None
    lengths = sorted({r.length for r in results})
    names = list(dict.fromkeys(r.cell for r in results))
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(names)}
    ncol = 2 if len(lengths) == 1 else 4
    rows = -(-(len(names) + 2) // ncol)
    height = 3.6 + 0.22 * rows
    fig, axes = plt.subplots(1, len(lengths), figsize=(max(4.4 * len(lengths) + 0.6, 8), height),
                             squeeze=False)
    for ax, T in zip(axes[0], lengths):
        for r in results:
            if r.length != T:
                continue
            steps = np.arange(len(r.jacobian_init))
            for values, style in ((r.jacobian_init, "--"), (r.jacobian_trained, "-")):
                values = np.asarray(values, dtype=np.float64)
                shown = np.isfinite(values) & (values > 0)   # diverged or underflowed: left out
                ax.semilogy(steps[shown], values[shown], style, color=colours[r.cell], lw=1.2)
        ax.set_title(f"T = {T}")
        ax.set_xlabel("time step t")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("||dh_{last} / dh_t||_F")
    handles = [plt.Line2D([], [], color=colours[c], label=f"{c}: {module_of(c)}")
               for c in names]
    handles += [plt.Line2D([], [], color="gray", ls="--", label="at initialisation"),
                plt.Line2D([], [], color="gray", ls="-", label="after training")]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"{task.title}: gradient flow through the recurrence")
    fig.tight_layout(rect=(0, (0.22 * rows + 0.15) / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- command line --------------------------------------------------------------------------------
def cell_lr(cell, lr, irnn_lr_scale=IRNN_LR_SCALE):
    """The learning rate `cell` trains with: lr, times irnn_lr_scale for the IRNN."""
    return lr * irnn_lr_scale if is_irnn(cell) else lr


def _flag_value(v):
    return " ".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) \
        else str(v)


def _add_arguments(task):
    def add_arguments(ap):
        d = task.defaults
        unit = "delay T (sequences of T + 20 steps)" if task.name == "copy" else "sequence length T"
        ap.add_argument("--lengths", type=int, nargs="+", metavar="T",
                        help=f"the {unit} of each run (default: {_flag_value(d['lengths'])})")
        ap.add_argument("--cells", nargs="+", metavar="CELL",
                        help=f"registry cells to compare (default: all: {' '.join(cells())})")
        ap.add_argument("--steps", type=int, help=f"training steps per run (default {d['steps']})")
        ap.add_argument("--batch", type=int, help=f"sequences per step (default {d['batch']})")
        ap.add_argument("--hidden", type=int, help=f"hidden units (default {d['hidden']})")
        ap.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']:g})")
        ap.add_argument("--irnn-lr-scale", type=float, default=IRNN_LR_SCALE,
                        help=f"the IRNN (the ReLU RNN) trains with this times --lr (default "
                             f"{IRNN_LR_SCALE:g}: a ReLU RNN blows up at the others' rate; "
                             "1 = one rate for all)")
        ap.add_argument("--clip", type=float,
                        help=f"max global gradient norm (default {d['clip']:g})")
        ap.add_argument("--seed", type=int, default=0,
                        help="initialisation and training-data seed (default 0; the test sets "
                             "are fixed)")
        ap.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads, 0 = all cores (default 1: at these sizes one "
                             "thread is as fast as two, and far faster when the cores are shared)")
        ap.add_argument("--out", metavar="DIR",
                        help="write the Markdown table, the numbers (JSON) and the gradient-flow "
                             "plot (PNG) into DIR")
        ap.add_argument("--quick", action="store_true",
                        help="a tiny run (seconds): " + ", ".join(
                            f"--{k} {_flag_value(v)}" for k, v in task.quick.items())
                        + "; explicit flags still win")
    return add_arguments


def _settings(task, args, error):
    """The run's settings: explicit flags, else --quick's, else the defaults; checked."""
    base = task.quick if args.quick else task.defaults
    s = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    s["cells"] = list(args.cells) if args.cells else cells()
    s["irnn_lr_scale"] = args.irnn_lr_scale
    for cell in s["cells"]:
        if cell not in _registry.CELLS:
            error(f"--cells: expected registry cells ({', '.join(_registry.CELLS)}), "
                  f"got {cell!r}")
    low = 2 if task.name == "adding" else 1
    for T in s["lengths"]:
        if T < low:
            error(f"--lengths: each length must be at least {low}, got {T}")
    for name in ("steps", "batch", "hidden"):
        if s[name] <= 0:
            error(f"--{name} must be a positive integer, got {s[name]}")
    for name in ("lr", "clip", "irnn_lr_scale"):
        if not (math.isfinite(s[name]) and s[name] > 0):
            error(f"--{name.replace('_', '-')} must be a positive number, got {s[name]}")
    if args.threads < 0:
        error(f"--threads must be 0 (all cores) or positive, got {args.threads}")
    if args.out is not None:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            error(f"--out must be a directory, got the file {args.out!r}")
        try:  # now rather than after minutes of training
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            error(f"--out: cannot create the directory {args.out!r}: {e.strerror or e}")
        if not os.access(args.out, os.W_OK):
            error(f"--out: the directory {args.out!r} is not writable")
    return s


def measured_baseline(task, length):
    """The baseline predictor's error on the held-out set (the formula's value up to sampling):
    adding: always 1; copy: blank with certainty, then uniform over the 8 data symbols."""
    _, target = held_out_set(task, length)
    if not task.read_every_step:
        return mse(np.ones_like(target), target)[0]
    # log-probabilities as logits; -1e4 stands for log 0 (exp(-1e4) is an exact 0)
    logits = np.full(target.shape + (COPY_ALPHABET,), -1e4)
    logits[:-COPY_SYMBOLS, :, BLANK] = 0.0
    logits[-COPY_SYMBOLS:, :, 1:COPY_CATEGORIES + 1] = 0.0
    return cross_entropy(logits, target)[0]


def _run(task, args, error):
    s = _settings(task, args, error)
    set_num_threads(args.threads)
    command = f"rnncore experiment {task.name}" + "".join(
        f" --{k.replace('_', '-')} {_flag_value(v)}" for k, v in s.items()) + f" --seed {args.seed}"
    lrs = ", ".join(f"{c} {cell_lr(c, s['lr'], s['irnn_lr_scale']):g}"
                    for c in s["cells"] if cell_lr(c, s["lr"], s["irnn_lr_scale"]) != s["lr"])
    print(f"{task.title}: {len(s['cells'])} cells x {len(s['lengths'])} lengths, "
          f"{s['steps']} steps of batch {s['batch']}, hidden {s['hidden']}, Adam lr {s['lr']:g}"
          + (f" ({lrs})" if lrs else "") + f", clip {s['clip']:g}, seed {args.seed}, "
          f"{_threads()}")
    print("  " + legend(s["cells"]))
    for T in s["lengths"]:
        print(f"  T = {T}: baseline {task.error_name} {task.baseline(T):.4f} "
              f"(formula), {measured_baseline(task, T):.4f} (measured on the {TEST_SEQUENCES} "
              f"test sequences); solved below {SOLVED_FRACTION:.0%} of the formula's")
    sys.stdout.flush()
    results = []
    t0 = time.perf_counter()
    for T in s["lengths"]:
        for cell in s["cells"]:
            r = train_cell(task, cell, T, s["steps"], s["batch"], s["hidden"],
                           cell_lr(cell, s["lr"], s["irnn_lr_scale"]), s["clip"], args.seed)
            results.append(r)
            print(f"  {r.cell:16s} T = {T:4d}: "
                  f"{task.error_name} {_fmt(r.test_error, '.3g')} "
                  f"({_fmt(r.ratio, '.3f')} of baseline, {_status(r, s['steps'])}) "
                  f"in {r.seconds:.1f} s", flush=True)
    total = time.perf_counter() - t0
    text = table(task, results, s["steps"])
    last = "T+19" if task.read_every_step else "T-1"
    flow_note = (f"flow: ||dh_{{{last}}}/dh_0||_F / ||dh_{{{last}}}/dh_{{{last}}}||_F, the part of "
                 "a gradient at the last step that reaches the first through the recurrence "
                 f"(rnncore.diagnostics.jacobian_norms on {PROBE_SEQUENCES} test sequences)")
    print()
    print(text)
    print(flow_note)
    print(f"total {total:.1f} s")
    if args.out is not None:
        _write(task, args.out, s, args.seed, command, results, text, flow_note, total)
    return 0


def _threads():
    n = get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def _json_float(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _write(task, out, s, seed, command, results, text, flow_note, total):
    """DIR/<task>.md (table), DIR/<task>.json (every number), DIR/<task>_gradient_flow.png."""
    os.makedirs(out, exist_ok=True)
    path = plot(task, results, os.path.join(out, f"{task.name}_gradient_flow.png"))
    plots = [path] if path is not None else []
    md = os.path.join(out, f"{task.name}.md")
    with open(md, "w") as f:
        f.write(f"# {task.title}\n\n`{command}`\n\n{time.strftime('%Y-%m-%d')}, rnncore "
                f"{__version__}, {_threads()}, {total:.0f} s. "
                f"Solved: test error below {SOLVED_FRACTION:.0%} of the baseline. "
                f"{legend(s['cells'])}.\n\n{text}\n\n"
                f"{flow_note}.\n")
        for p in plots:
            f.write(f"\n![gradient flow]({os.path.basename(p)})\n")
    js = os.path.join(out, f"{task.name}.json")
    with open(js, "w") as f:
        json.dump({"task": task.name, "command": command, "settings": s, "seed": seed,
                   "results": [{
                       "cell": r.cell, "length": r.length, "lr": r.lr,
                       "test_error": _json_float(r.test_error), "baseline": r.baseline,
                       "solved": r.solved, "steps_done": r.steps_done, "seconds": r.seconds,
                       "test_accuracy": _json_float(r.test_accuracy),
                       "train_curve": [[n, _json_float(v)] for n, v in r.train_curve],
                       "jacobian_init": [_json_float(v) for v in r.jacobian_init],
                       "jacobian_trained": [_json_float(v) for v in r.jacobian_trained]}
                       for r in results]}, f, indent=1)
    print("wrote " + ", ".join([md, js] + plots))


def _runner(task):
    def run(args, error):
        return _run(task, args, error)
    return run


# `rnncore experiment NAME` -> (add_arguments, run), read by rnncore.cli
REGISTRY = {name: (_add_arguments(task), _runner(task)) for name, task in TASKS.items()}
