"""Shared by the weight converters (rnncore.onnx, rnncore.keras), the plots and the training
programs: gate-block reordering, matplotlib when it is there, and Ctrl-C held back while a
piece of work must run whole (deferred_interrupts)."""
from __future__ import annotations

import signal
import sys
import threading

import numpy as np


def blocks(a, order, hidden_size):
    """The gate blocks of a (G*H, ...) array in another order: block k of the result is block
    order[k] of a."""
    return np.concatenate([a[j * hidden_size:(j + 1) * hidden_size] for j in order], axis=0)


def inverse(order):
    """The order that undoes `order` (blocks(blocks(a, order), inverse(order)) == a)."""
    inv = [0] * len(order)
    for k, j in enumerate(order):
        inv[j] = k
    return tuple(inv)


def pyplot(path, what="plot"):
    """matplotlib.pyplot on the file-only Agg backend, or None with a one-line note on stderr
    (matplotlib is the optional 'plot' extra): callers then write no file."""
    try:
        import matplotlib  # optional: matplotlib (rnncore[plot])
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed (pip install 'rnncore[plot]'); no {what} "
              f"written to {path}", file=sys.stderr)
        return None
    return plt


# ---- Ctrl-C held back ------------------------------------------------------------------------
class _Guard:
    """What deferred_interrupts() yields. SIGINT that arrives inside the block is held (the
    block runs whole) and delivered when the block ends; deliver() delivers a held one now, and
    inside `with guard.opened():` SIGINT is delivered at once (work that may stop anywhere)."""

    def __init__(self, active):
        self.active = active
        self.pending = None       # (signum, frame) of a held SIGINT
        self.open = False
        self.previous = None      # the handler to deliver it to (KeyboardInterrupt by default)

    def handle(self, signum, frame):
        if self.open:
            self.previous(signum, frame)
        else:
            self.pending = (signum, frame)

    def deliver(self):
        """Delivers a held SIGINT now (by default: raises KeyboardInterrupt)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.previous(*pending)

    def opened(self):
        return _Opened(self)


class _Opened:
    def __init__(self, guard):
        self.guard = guard

    def __enter__(self):
        if self.guard.active:
            self.guard.open = True   # first, so that a SIGINT from here on is not held
            self.guard.deliver()

    def __exit__(self, *exc):
        self.guard.open = False


_ACTIVE = []  # the outermost guard of the main thread, while one is active


class deferred_interrupts:
    """Context manager: a Ctrl-C (SIGINT) inside the block waits until the block ends, then
    goes to the handler that was installed before (KeyboardInterrupt by default). Nested blocks
    share the outermost one. Off the main thread, or where SIGINT is not handled in Python
    (ignored, or the C default), it changes nothing: signals only reach the main thread."""

    def __enter__(self):
        if _ACTIVE and threading.current_thread() is threading.main_thread():
            # nested: held again while this block runs, even inside an opened() part
            self._outer, self._was_open = _ACTIVE[0], _ACTIVE[0].open
            self._outer.open = False
            return self._outer
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
        guard = _Guard(callable(previous))
        if guard.active:
            guard.previous = previous
            signal.signal(signal.SIGINT, guard.handle)
            _ACTIVE.append(guard)
        self._guard = guard
        return guard

    def __exit__(self, *exc):
        outer = self.__dict__.pop("_outer", None)
        if outer is not None:
            if self._was_open:
                _Opened(outer).__enter__()
            return False
        guard = self.__dict__.pop("_guard", None)
        if guard is None or not guard.active:
            return False
        guard.open = False
        signal.signal(signal.SIGINT, guard.previous)
        _ACTIVE.clear()
        guard.deliver()
        return False
