"""Shared fixtures: a seeded generator, the odd sizes that hit vector tails, and helpers that
build a module for any cell and move parameters between rnncore and the reference."""
import numpy as np
import pytest

import rnncore
from rnncore import reference

SIZES = (1, 3, 17, 65)
CELLS = reference.CELLS

# reference key -> rnncore parameter name stem
REF_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
             "w_peephole": "weight_peephole"}


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _default_threads():
    rnncore.set_num_threads(0)
    yield
    rnncore.set_num_threads(0)


def make_module(cell, input_size, hidden_size, **kw):
    """The public module that runs `cell` (a name of reference.CELLS)."""
    if cell in ("rnn_tanh", "rnn_relu"):
        return rnncore.RNN(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return rnncore.LSTM(input_size, hidden_size, **kw)
    if cell == "peephole_lstm":
        return rnncore.PeepholeLSTM(input_size, hidden_size, **kw)
    return rnncore.GRU(input_size, hidden_size, reset_after=(cell == "gru"), **kw)


def make_cell(cell, input_size, hidden_size, **kw):
    """The public single-step cell that runs `cell`."""
    if cell in ("rnn_tanh", "rnn_relu"):
        return rnncore.RNNCell(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return rnncore.LSTMCell(input_size, hidden_size, **kw)
    if cell == "peephole_lstm":
        return rnncore.PeepholeLSTMCell(input_size, hidden_size, **kw)
    return rnncore.GRUCell(input_size, hidden_size, reset_after=(cell == "gru"), **kw)


def module_params(ref_params, suffix="_l0"):
    """reference parameters -> a state dict for a one-layer module."""
    return {REF_NAMES[k] + suffix: v for k, v in ref_params.items() if v is not None}


def ref_params_of(module, suffix="_l0"):
    """One layer-direction of a module -> reference parameters (float64 copies)."""
    out = {}
    for k, stem in REF_NAMES.items():
        name = stem + suffix
        if name in module.params:
            out[k] = module.params[name].astype(np.float64)
        elif k in ("b_ih", "b_hh"):
            out[k] = None
    return out


def state_tuple(cell, state):
    """Module state (h or (h, c)) -> tuple."""
    return tuple(state) if reference.has_cell_state(cell) else (state,)
