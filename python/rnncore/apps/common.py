"""What the application tasks (`rnncore train sentiment|trigger|caption`) share: flag checks, the
output folder, the progress bar, and the final state of a recurrent stack."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def check_positive(args, names, error):
    """error(...) for the first flag in `names` (attribute names) that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if not value > 0:
            error(f"--{name.replace('_', '-')} must be positive, got {value}")


def output_folder(path, error):
    """Creates the --out folder before any training (a bad path fails at once, exit code 2)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"--out: cannot create the folder {str(out)!r}: {e.strerror or e}")
    return out


class Progress:
    """A tqdm bar over `total` updates (or nothing with disabled=True); write() prints a line
    above the bar, or plainly when there is no bar."""

    def __init__(self, total, disabled, unit="update"):
        self._bar = None
        if not disabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=unit, mininterval=0.5, dynamic_ncols=True,
                             file=sys.stdout)

    def update(self, postfix):
        if self._bar is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(1)

    def write(self, line):
        (self._bar.write if self._bar is not None else print)(line)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def pad_batch(sequences, pad=0):
    """A list of 1-D int arrays -> (tokens (T, B) int64 padded with `pad`, lengths (B,) int64)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    tokens = np.full((int(lengths.max(initial=0)), len(sequences)), pad, dtype=np.int64)
    for b, s in enumerate(sequences):
        tokens[:len(s), b] = s
    return tokens, lengths
