"""The cells of the C++ registry (cpp/include/rnncore/cells.hpp), as Python sees them.

`CELLS` is read from the compiled core, never written out here. The tables of public classes are
private: read them through module_variant / cell_variant (or make_module / make_cell). Public classes say which registry
cells they run through a `variants` mapping (cell name -> the constructor options that select it);
the tests and benchmarks build "the public module of cell X" with `make_module` / `make_cell`
instead of keeping lists of their own.
"""
from __future__ import annotations

from typing import NamedTuple

from rnncore._ext import core


class CellInfo(NamedTuple):
    name: str
    gates: int          # G: gate blocks of weight_ih / weight_hh
    states: int         # 1 (h) or 2 (h, c)
    peephole_rows: int  # 0, or 3 for the (3, H) peephole weight
    stash_slots: int    # H-wide values a training forward keeps per (step, row)

    @property
    def has_cell_state(self):
        return self.states == 2


CELLS = {c["name"]: CellInfo(**c) for c in core.CELLS}

# cell name -> (public class, constructor options); filled by the classes as they are defined.
_MODULES: dict = {}
_CELL_CLASSES: dict = {}


def info(cell):
    """The CellInfo of a registry cell; ValueError naming the known cells for any other name."""
    try:
        return CELLS[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; the registry has {', '.join(CELLS)}") from None


def _register(cls, table):
    for cell, options in cls.__dict__.get("variants", {}).items():
        info(cell)
        table.setdefault(cell, (cls, dict(options)))


def register_module(cls):
    """Records a sequence-module class's `variants` (cell -> options); every name must be a
    registry cell. Called by the classes as they are defined (__init_subclass__)."""
    _register(cls, _MODULES)


def register_cell(cls):
    """The same for a single-step cell class."""
    _register(cls, _CELL_CLASSES)


def select(cls, **options):
    """The registry cell of cls.variants whose options equal `options`."""
    for cell, opts in cls.variants.items():
        if all(options.get(k) == v for k, v in opts.items()):
            return cell
    raise ValueError(f"{cls.__name__} has no cell for {options}")


def module_variant(cell):
    """(public sequence-module class, constructor options) that runs registry cell `cell`, e.g.
    "gru_reset_before" -> (rnncore.GRU, {"reset_after": False})."""
    info(cell)
    cls, options = _MODULES[cell]
    return cls, dict(options)


def cell_variant(cell):
    """(public single-step cell class, constructor options) that runs registry cell `cell`."""
    info(cell)
    cls, options = _CELL_CLASSES[cell]
    return cls, dict(options)


def make_module(cell, input_size, hidden_size, **kwargs):
    """The public sequence module that runs registry cell `cell` (e.g. "gru_reset_before" ->
    rnncore.GRU(..., reset_after=False))."""
    cls, options = module_variant(cell)
    return cls(input_size, hidden_size, **options, **kwargs)


def make_cell(cell, input_size, hidden_size, **kwargs):
    """The public single-step cell that runs registry cell `cell`."""
    cls, options = cell_variant(cell)
    return cls(input_size, hidden_size, **options, **kwargs)
