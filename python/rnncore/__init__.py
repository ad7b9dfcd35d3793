"""rnncore: recurrent neural networks (RNN, LSTM, peephole LSTM, GRU) with BPTT.

A C++ core (Eigen, SIMD, OpenMP) computes the forward pass and backpropagation through time;
this package wraps it in numpy modules with a PyTorch-like API and a small training layer
(layers, losses, optimisers, truncated BPTT, checkpoints, gradient-flow diagnostics). See
README.md and docs/.
"""
from ._core import get_num_threads, set_num_threads
from ._core import __version__  # compiled in from CMakeLists.txt's project(VERSION), as is the wheel's
from ._base import no_grad, parameters_changed
from .cuda import cuda_available, cuda_status
from . import precision
from .precision import bf16_kernel, bf16_supported
from .modules import GRU, LSTM, RNN, PeepholeLSTM
from .cells import GRUCell, LSTMCell, PeepholeLSTMCell, PendingStepsWarning, RNNCell

# the training layer: blocks, composition, losses, optimisers, truncated BPTT, checkpoints
from . import checkpoint, diagnostics, losses, optim, tbptt
# the lectures' applications
from . import attention, ctc, seq2seq
from .pyramid import PyramidEncoder
from .gradcheck import check_gradients
from .layers import Dropout, Embedding, LayerNorm, Linear
from .model import Model, Sequential

__all__ = [
    "RNN", "LSTM", "PeepholeLSTM", "GRU",
    "RNNCell", "LSTMCell", "PeepholeLSTMCell", "GRUCell",
    "set_num_threads", "get_num_threads", "PendingStepsWarning", "no_grad", "parameters_changed",
    "Linear", "Embedding", "Dropout", "LayerNorm", "Model", "Sequential",
    "check_gradients", "losses", "optim", "checkpoint", "diagnostics", "tbptt",
    "attention", "ctc", "seq2seq", "PyramidEncoder", "cuda_available", "cuda_status",
    "precision", "bf16_kernel", "bf16_supported",
]


def __getattr__(name):
    """rnncore.torch and rnncore.distributed import torch, so they load on first use only: a plain
    `import rnncore` stays free of torch."""
    if name in ("torch", "distributed", "onnx", "keras"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
