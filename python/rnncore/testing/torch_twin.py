"""Which torch.nn module computes what a registry cell computes: a rule, not a table.

Used by the tests (through conftest.py) and by rnncore.benchmark, so both pick the same
counterparts. A registry cell runs through a public rnncore class with the options of that
class's `variants` entry (rnncore.nn.registry.module_variant). Its torch twin is the torch.nn class of
the same name, given every one of those options that torch accepts; an option torch does not
have must hold the rnncore class's default value, because that default is the plain cell torch
computes (LSTM(peephole=False), GRU(reset_after=True)). Any other cell has no twin
(peephole_lstm, gru_reset_before). Imports torch only when called.
"""
from __future__ import annotations

import inspect

from rnncore.nn import registry as _registry


def torch_twin(cell):
    """(torch.nn class, constructor kwargs) that computes registry cell `cell`, or None."""
    import torch  # optional: torch (the tests skip without it)

    cls, options = _registry.module_variant(cell)
    twin = getattr(torch.nn, cls.__name__, None)
    if not (isinstance(twin, type) and issubclass(twin, torch.nn.RNNBase)):
        return None
    ours = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for name, value in options.items():
        try:
            twin(1, 1, **{name: value})
        except TypeError:  # torch has no such option: only our default is torch's cell
            if name not in ours or ours[name].default != value:
                return None
        except ValueError:  # torch has the option, but not this value
            return None
        else:
            kwargs[name] = value
    return twin, kwargs
