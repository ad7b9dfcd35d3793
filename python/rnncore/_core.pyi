"""Types of rnncore._core, the compiled C++ engine (bindings/). Internal: the public API is the
rnncore package. tests/test_stubs.py keeps this file in step with the compiled module (names,
parameters and defaults)."""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

_Float = np.float32 | np.float64
_FloatArray = npt.NDArray[_Float]
_ArrayLike = npt.ArrayLike

class _CellEntry(TypedDict):
    name: str
    gates: int
    states: int
    peephole_rows: int
    stash_slots: int

CELLS: tuple[_CellEntry, ...]
__version__: str

class Stack:
    """num_layers x directions of one registry cell over whole sequences; owns the workspace a
    training forward fills and backward consumes."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dtype: npt.DTypeLike = ...,
                 precision: str = "float32") -> None: ...
    def forward(self, x: _ArrayLike, params: Mapping[str, _FloatArray],
                h0: _ArrayLike | None = None, c0: _ArrayLike | None = None,
                lengths: npt.NDArray[np.int64] | None = None, training: bool = False,
                dropout: float = 0.0, seed: int = 0
                ) -> tuple[_FloatArray, _FloatArray, _FloatArray | None]: ...
    def backward(self, dy: _ArrayLike | None, params: Mapping[str, _FloatArray],
                 grads: MutableMapping[str, _FloatArray], dh_n: _ArrayLike | None = None,
                 dc_n: _ArrayLike | None = None, grad_norms: bool = False
                 ) -> tuple[_FloatArray, _FloatArray, _FloatArray | None]: ...
    def release(self) -> None: ...
    @property
    def cell(self) -> str: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def grad_norms(self) -> npt.NDArray[np.float64] | None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def ready(self) -> bool: ...

class StepRecord:
    """What a training-mode Step.forward keeps for its backward (opaque)."""

    @property
    def consumed(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...

class Step:
    """One registry cell, one time step per call, weights packed once."""

    def __init__(self, cell: str, input_size: int, hidden_size: int,
                 dtype: npt.DTypeLike = ..., precision: str = "float32") -> None: ...
    def forward(self, x: _ArrayLike, h: _ArrayLike | None = None, c: _ArrayLike | None = None,
                training: bool = False
                ) -> tuple[_FloatArray, _FloatArray | None, StepRecord | None]: ...
    def backward(self, record: StepRecord, dh: _ArrayLike | None = None,
                 dc: _ArrayLike | None = None,
                 grads: MutableMapping[str, _FloatArray] = ...
                 ) -> tuple[_FloatArray, _FloatArray, _FloatArray | None]: ...
    def set_weights(self, params: Mapping[str, _FloatArray]) -> None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def packs(self) -> int: ...

def bf16_kernel() -> str: ...
def ctc_loss(log_probs: _FloatArray, targets: npt.NDArray[np.int64],
             input_lengths: npt.NDArray[np.int64], target_lengths: npt.NDArray[np.int64],
             blank: int = 0, zero_infinity: bool = False, want_grad: bool = True,
             grad_scale: _FloatArray | None = None
             ) -> tuple[_FloatArray, _FloatArray | None]: ...
def fma_peak(threads: int = 0, seconds: float = 0.2) -> float: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def matmul(a: _FloatArray, b: _FloatArray, out: _FloatArray | None = None,
           trans_a: bool = False, trans_b: bool = False, accumulate: bool = False
           ) -> _FloatArray: ...
