"""`rnncore train trigger`: trigger-word detection, a many-to-many frame labeller.

As in the lecture's trigger-word model, the input is a spectrogram (frames x frequency bins) and
the output one probability per frame; the target is 1 on the `--label-frames` frames right after
each utterance of the trigger word ends and 0 elsewhere, so a detector that runs online (a
unidirectional network) fires just after it has heard the whole word.

The spectrograms are generated here: a noise floor with a slowly drifting low-frequency hum,
"words" as ridges of energy in the time-frequency plane, each drawn with a random duration
(+-20%), frequency shift (+-1 bin) and loudness:

    trigger     a sweep rising over 10 bins, with a harmonic 6 bins above it
    falling     the trigger played backwards (the same frames in the opposite order)
    high-rise   a shorter, shallower rise 6 bins higher
    tone        a steady tone with its harmonic, at a random pitch
    warble      two pitches alternating every 3 frames

Each clip holds 0-2 triggers and 1-4 distractors at random, non-overlapping times. The falling
distractor holds the very frames of the trigger: only their order tells them apart.

Model: a unidirectional stack (GRU by default) -> Linear(1) per frame, sigmoid cross-entropy.
Quality: frame precision, recall and F1 on held-out clips (a frame is predicted 1 when its
probability is >= 0.5), and the detected triggers (any predicted frame in a trigger's window)
and false alarms (runs of predicted frames touching no trigger's window).
"""
from __future__ import annotations

import numpy as np

from rnncore.apps import common
from rnncore.models.trigger import BINS, DEFAULT_CELL, TriggerDetector
from rnncore.train import checkpoint
from rnncore.train.losses import bce_with_logits
from rnncore.train.optim import Adam

TRIGGER_FRAMES = 24             # the trigger word's typical duration
WORDS = ("trigger", "falling", "high-rise", "tone", "warble")


def _ridge(centres, width=0.8):
    """(d, BINS) energy of a ridge following centres (d,) (a Gaussian across bins)."""
    f = np.arange(BINS)
    return np.exp(-0.5 * ((f[None, :] - centres[:, None]) / width) ** 2)


def word_pattern(word, frames, shift, pitch=0.0):
    """The (frames, BINS) energy of one utterance of `word`, shifted by `shift` bins."""
    u = np.arange(frames) / max(frames - 1, 1)        # 0 .. 1 through the word
    envelope = np.sqrt(np.sin(np.pi * (np.arange(frames) + 0.5) / frames))[:, None]
    if word == "trigger":
        c = 3.0 + shift + 10.0 * u
        e = _ridge(c) + 0.5 * _ridge(c + 6)
    elif word == "falling":
        c = 13.0 + shift - 10.0 * u
        e = _ridge(c) + 0.5 * _ridge(c + 6)
    elif word == "high-rise":
        c = 9.0 + shift + 6.0 * u
        e = _ridge(c) + 0.5 * _ridge(c + 6)
    elif word == "tone":
        c = np.full(frames, 4.0 + pitch * 12.0 + shift)
        e = _ridge(c) + 0.5 * _ridge(c + 6)
    elif word == "warble":
        c = np.where((np.arange(frames) // 3) % 2 == 0, 6.0, 11.0) + shift + pitch * 6.0
        e = _ridge(c)
    else:
        raise ValueError(f"word must be one of {WORDS}, got {word!r}")
    return envelope * e


def make_clip(rng, frames, label_frames):
    """One clip: (spectrogram (frames, BINS) float32, labels (frames,) 0/1, trigger end frames)."""
    t = np.arange(frames)
    hum_band = rng.uniform(0, 4)
    hum = 0.3 * rng.random() * (1 + np.sin(2 * np.pi * t / rng.uniform(60, 200)))[:, None] * \
        np.exp(-0.5 * ((np.arange(BINS) - hum_band) / 2.0) ** 2)[None, :]
    x = 0.25 * rng.random((frames, BINS)) + hum
    words = ["trigger"] * int(rng.integers(0, 3)) + \
        [WORDS[rng.integers(1, len(WORDS))] for _ in range(int(rng.integers(1, 5)))]
    rng.shuffle(words)
    durations = [max(6, int(round(TRIGGER_FRAMES * rng.uniform(0.8, 1.2)))) for _ in words]
    # random non-overlapping start times: the free frames split into len(words) + 1 random gaps
    free = frames - sum(durations) - 2 * len(words)
    while free < 0:  # a clip too short for all its words drops the last ones
        words.pop()
        free = frames - sum(durations[:len(words)]) - 2 * len(words)
    durations = durations[:len(words)]
    gaps = np.diff(np.concatenate(([0], np.sort(rng.integers(0, free + 1, size=len(words))))))
    labels = np.zeros(frames, dtype=np.float32)
    ends, start = [], 0
    for word, d, gap in zip(words, durations, gaps):
        start += int(gap) + 1
        x[start:start + d] += rng.uniform(0.6, 1.2) * word_pattern(
            word, d, rng.uniform(-1, 1), rng.random())
        if word == "trigger":
            end = start + d                         # first frame after the word
            labels[end:end + label_frames] = 1
            ends.append(end)
        start += d + 1
    return (x - 0.3).astype(np.float32), labels, ends


def make_dataset(rng, clips, frames, label_frames):
    """(x (frames, clips, BINS) float32 time-major, labels (frames, clips), trigger ends)."""
    data = [make_clip(rng, frames, label_frames) for _ in range(clips)]
    x = np.stack([d[0] for d in data], axis=1)
    y = np.stack([d[1] for d in data], axis=1)
    return x, y, [d[2] for d in data]


def frame_scores(predicted, labels):
    """(precision, recall, F1) of the frames predicted 1 against the labelled ones."""
    p, y = predicted.astype(bool), labels.astype(bool)
    tp = float((p & y).sum())
    precision = tp / max(float(p.sum()), 1.0)
    recall = tp / max(float(y.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return precision, recall, f1


def event_counts(predicted, labels):
    """(triggers detected, triggers, false alarms): a trigger counts as detected when any frame
    of its label window is predicted; a false alarm is a run of predicted frames with no
    labelled frame in it. Arrays (T, B)."""
    detected = triggers = false_alarms = 0
    for b in range(labels.shape[1]):
        for run, is_label in ((labels[:, b] > 0, True), (predicted[:, b] > 0, False)):
            edges = np.flatnonzero(np.diff(np.concatenate(([0], run.astype(np.int8), [0]))))
            other = predicted[:, b] > 0 if is_label else labels[:, b] > 0
            for s, e in zip(edges[::2], edges[1::2]):
                hit = bool(other[s:e].any())
                if is_label:
                    triggers += 1
                    detected += hit
                else:
                    false_alarms += not hit
    return detected, triggers, false_alarms


def add_arguments(ap):
    ap.add_argument("--frames", type=int, default=400, help="frames per clip (default 400)")
    ap.add_argument("--label-frames", type=int, default=50,
                    help="frames labelled 1 after each trigger ends (default 50)")
    ap.add_argument("--train-clips", type=int, default=4000)
    ap.add_argument("--test-clips", type=int, default=500)
    common.add_common_arguments(
        ap, dict(cell=DEFAULT_CELL, hidden=64, layers=2, batch=32, steps=800, lr=3e-3, clip=1.0,
                 eval_every=250, seed=0, threads=0, out="rnncore-trigger", no_progress=True),
        helps={"cell": f"a cell of the registry (default: {DEFAULT_CELL}, unidirectional)"})
    common.add_target_argument(ap, 0.95, "frame F1")


def run(args, error):
    common.check_positive(args, ("frames", "label_frames", "train_clips", "test_clips",
                                 "hidden", "layers", "batch", "steps", "lr", "clip",
                                 "eval_every"), error)
    if args.frames < 4 * TRIGGER_FRAMES:
        error(f"--frames must be at least {4 * TRIGGER_FRAMES} (room for a few words), got "
              f"{args.frames}")
    common.check_target(args, error)
    out = common.output_folder(args.out, error)
    version, threads = common.set_threads(args)

    rng = np.random.default_rng(args.seed)
    x, y, _ = make_dataset(rng, args.train_clips, args.frames, args.label_frames)
    test_x, test_y, _ = make_dataset(np.random.default_rng(args.seed + 10_000), args.test_clips,
                                     args.frames, args.label_frames)
    model = TriggerDetector(args.cell, args.hidden, args.layers, seed=args.seed)
    opt = Adam(model, lr=args.lr)
    print(f"rnncore {version} trigger-word detection (many to many): "
          f"{args.train_clips} training and {args.test_clips} held-out clips of {args.frames} "
          f"frames x {BINS} bins; {test_y.mean():.1%} of the frames labelled 1; {args.cell} "
          f"{args.layers} x {args.hidden}, {model.num_parameters():,} parameters, "
          f"{threads} threads")

    def update(step):
        rows = rng.integers(0, args.train_clips, size=args.batch)
        logits = model(x[:, rows])
        loss, dlogits = bce_with_logits(logits, y[:, rows])
        common.backward_and_step(model, opt, dlogits, args.clip)
        return loss

    history, target = [], common.Target(args.target, ".2f")

    def evaluate(step, loss, seconds):
        scores = frame_scores(model.predict(test_x) >= 0.5, test_y)
        history.append((step, seconds) + scores)
        target.check(scores[2], step, seconds)
        return (f"update {step}: held-out frame precision {scores[0]:.3f} recall "
                f"{scores[1]:.3f} F1 {scores[2]:.3f}, training loss {loss:.4f} "
                f"({seconds:.0f} s)")

    end = common.train_loop(update, args.steps, evaluate=evaluate, eval_every=args.eval_every,
                            progress=common.Progress(args.steps, args.no_progress))
    scores = history[-1][2:]  # the loop evaluates after its last update

    predicted = model.predict(test_x) >= 0.5
    detected, triggers, false_alarms = event_counts(predicted, test_y)
    path = out / "trigger.safetensors"
    checkpoint.save(path, model, opt, step=args.steps,
                    config=dict(model.config, frames=args.frames, label_frames=args.label_frames),
                    extra={"precision": scores[0], "recall": scores[1], "f1": scores[2],
                           "history": history})
    _print_clips(predicted, test_y, args.frames)
    print(f"held-out triggers detected: {detected} of {triggers}, false alarms: {false_alarms} "
          f"(in {args.test_clips} clips)")
    print(f"checkpoint: {path}")
    print(f"held-out frame F1: {scores[2]:.3f} (precision {scores[0]:.3f}, recall "
          f"{scores[1]:.3f}) {target.after(args.steps, end.seconds)}; "
          f"{target.verdict(scores[2])}")
    return target.exit_code(scores[2])


def _print_clips(predicted, labels, frames):
    """Held-out clips 0 and 1 as a line of marks, a character per 8 frames."""
    print("held-out clips 0 and 1 (a character per 8 frames; '#' labelled, '^' predicted, "
          "'*' both):")
    for b in range(min(2, labels.shape[1])):
        marks = []
        for s in range(0, frames, 8):
            lab, pred = labels[s:s + 8, b].mean() >= 0.5, predicted[s:s + 8, b].mean() >= 0.5
            marks.append("*" if lab and pred else "#" if lab else "^" if pred else ".")
        print("  " + "".join(marks))
