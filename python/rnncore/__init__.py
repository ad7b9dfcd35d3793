"""rnncore: recurrent neural networks (RNN, LSTM, peephole LSTM, GRU) with BPTT.

A C++ core (Eigen, SIMD, OpenMP) computes the forward pass and backpropagation through time;
this package wraps it in numpy modules with a PyTorch-like API. See README.md and docs/.
"""
from ._core import get_num_threads, set_num_threads
from .modules import GRU, LSTM, RNN, PeepholeLSTM
from .cells import GRUCell, LSTMCell, PeepholeLSTMCell, PendingStepsWarning, RNNCell

from ._core import __version__  # compiled in from CMakeLists.txt's project(VERSION), as is the wheel's

__all__ = [
    "RNN", "LSTM", "PeepholeLSTM", "GRU",
    "RNNCell", "LSTMCell", "PeepholeLSTMCell", "GRUCell",
    "set_num_threads", "get_num_threads", "PendingStepsWarning",
]

# ---- the training layer (issue 9): blocks, composition, losses, optimisers, checkpoints --------
from . import checkpoint, losses, optim  # noqa: E402
from .gradcheck import check_gradients  # noqa: E402
from .layers import Dropout, Embedding, LayerNorm, Linear  # noqa: E402
from .model import Model, Sequential  # noqa: E402

__all__ += ["Linear", "Embedding", "Dropout", "LayerNorm", "Model", "Sequential",
            "check_gradients", "losses", "optim", "checkpoint"]
