"""rnncore: recurrent neural networks (RNN, LSTM, peephole LSTM, GRU) with BPTT.

A C++ core (Eigen, SIMD, OpenMP) computes the forward pass and backpropagation through time;
this package wraps it in numpy modules with a PyTorch-like API and a small training layer
(layers, losses, optimisers, truncated BPTT, checkpoints, gradient-flow diagnostics). See
README.md, docs/ and, for how the package is laid out, docs/architecture.md.

This file is the public face: it re-exports, and registers the modules that moved into the
subpackages (nn/, train/, models/, apps/, testing/) under their public names, so that
`rnncore.optim.Adam` or `from rnncore.ctc import ctc_loss` keep working (PUBLIC_MODULES).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from rnncore._ext import __version__, cpu_info, get_num_threads, set_num_threads
from rnncore.nn.module import no_grad, parameters_changed
from rnncore.nn.cuda import cuda_available, cuda_status
from rnncore.nn.precision import bf16_kernel, bf16_supported
from rnncore.nn.recurrent import GRU, LSTM, RNN, PeepholeLSTM
from rnncore.nn.cells import GRUCell, LSTMCell, PeepholeLSTMCell, PendingStepsWarning, RNNCell
from rnncore.nn.layers import Dropout, Embedding, LayerNorm, Linear
from rnncore.nn.model import Model, Sequential
from rnncore.nn.pyramid import PyramidEncoder
from rnncore.testing.gradcheck import check_gradients

# Public module name (rnncore.<name>) -> the module that holds it now. One table, read by the
# finder below and tested against docs/api.md's list of import paths. Library modules load with
# the package; programs, oracles and the framework doors (torch) load on first use.
PUBLIC_MODULES = {
    # the library (nn/)
    "modules": "rnncore.nn.recurrent", "cells": "rnncore.nn.cells",
    "layers": "rnncore.nn.layers", "model": "rnncore.nn.model",
    "attention": "rnncore.nn.attention", "pyramid": "rnncore.nn.pyramid",
    "precision": "rnncore.nn.precision", "cuda": "rnncore.nn.cuda",
    # the training layer (train/)
    "optim": "rnncore.train.optim", "losses": "rnncore.train.losses",
    "ctc": "rnncore.train.ctc", "tbptt": "rnncore.train.tbptt",
    "checkpoint": "rnncore.train.checkpoint", "diagnostics": "rnncore.train.diagnostics",
    # task models (models/)
    "seq2seq": "rnncore.models.seq2seq", "lm": "rnncore.models.lm",
    # programs (apps/), loaded on first use
    "cli": "rnncore.apps.cli", "translate": "rnncore.apps.translate",
    "sentiment": "rnncore.apps.sentiment", "trigger": "rnncore.apps.trigger",
    "caption": "rnncore.apps.caption", "recognize": "rnncore.apps.recognize",
    "echo": "rnncore.apps.echo", "experiments": "rnncore.apps.experiments",
    "benchmark": "rnncore.apps.bench",
    # test oracles (testing/)
    "reference": "rnncore.testing.reference", "gradcheck": "rnncore.testing.gradcheck",
}
_EAGER = ("modules", "cells", "layers", "model", "attention", "pyramid", "precision", "cuda",
          "optim", "losses", "ctc", "tbptt", "checkpoint", "diagnostics", "seq2seq")
_DOORS = ("torch", "distributed", "onnx", "keras")  # top-level modules that import optional packages


_real_specs: dict = {}


class _PublicNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `rnncore.<public name>` as the module that holds it (the same module object, so
    classes, isinstance and pickles are shared). The real module keeps its own __spec__."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in PUBLIC_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(PUBLIC_MODULES[spec.name.partition(".")[2]])
        _real_specs[spec.name] = module.__spec__  # the import system overwrites it: restored below
        return module

    def exec_module(self, module):
        module.__spec__ = _real_specs.pop(module.__spec__.name)


if not any(isinstance(f, _PublicNames) for f in sys.meta_path):
    sys.meta_path.insert(0, _PublicNames())
for _name in _EAGER:
    globals()[_name] = importlib.import_module(f"{__name__}.{_name}")
del _name

__all__ = [
    "RNN", "LSTM", "PeepholeLSTM", "GRU",
    "RNNCell", "LSTMCell", "PeepholeLSTMCell", "GRUCell",
    "set_num_threads", "get_num_threads", "PendingStepsWarning", "no_grad", "parameters_changed",
    "Linear", "Embedding", "Dropout", "LayerNorm", "Model", "Sequential",
    "check_gradients", "losses", "optim", "checkpoint", "diagnostics", "tbptt",
    "attention", "ctc", "seq2seq", "PyramidEncoder", "cuda_available", "cuda_status",
    "precision", "bf16_kernel", "bf16_supported", "__version__", "cpu_info",
]


def __getattr__(name):
    """The framework doors (rnncore.torch, .distributed, .onnx, .keras import optional packages)
    and the programs load on first use only: a plain `import rnncore` stays free of torch."""
    if name in _DOORS or name in PUBLIC_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
