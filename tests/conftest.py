"""Shared fixtures: a seeded generator, the odd sizes that hit vector tails, the registry's cells
and helpers that build a module for any cell, find its torch twin and move parameters between
rnncore and the reference."""
import importlib.util

import numpy as np
import pytest

import rnncore
from rnncore.nn import registry as _registry
from rnncore.nn.registry import make_cell, make_module  # noqa: F401  (the tests import them from here)
from rnncore.testing.torch_twin import torch_twin

SIZES = (1, 3, 17, 65)
CELLS = tuple(_registry.CELLS)  # the C++ registry's cells, in its order

# reference key -> rnncore parameter name stem
REF_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
             "w_peephole": "weight_peephole"}


def _under_asan():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


UNDER_ASAN = _under_asan()  # running in CI's sanitizer pass (.ci/sanitize.sh)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _default_threads():
    rnncore.set_num_threads(0)
    yield
    rnncore.set_num_threads(0)


def has_cell_state(cell):
    return _registry.CELLS[cell].has_cell_state


def cells_with_torch_twin():
    """Parameters for the registry cells torch.nn also computes (one skipped entry when torch is
    not installed, so the tests report why they did not run)."""
    if importlib.util.find_spec("torch") is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason="PyTorch 2.13 is not installed"))]
    return [cell for cell in CELLS if torch_twin(cell) is not None]


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
    return tuple(state) if has_cell_state(cell) else (state,)


def pack_state(cell, states):
    """Sequence of state arrays -> the module's form (h or (h, c))."""
    return tuple(states) if has_cell_state(cell) else states[0]
