"""Type aliases of the public API (no rnncore imports: any layer may use them).

Array: what rnncore returns (a float32 or float64 numpy array). ArrayLike: what it accepts
(numpy arrays, nested lists, torch tensors of any float dtype: converted once)."""
from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]
ArrayLike = Union[npt.ArrayLike, Any]  # Any: torch tensors, which numpy's ArrayLike does not name
DTypeLike = npt.DTypeLike
LSTMState = Tuple[Array, Array]

__all__ = ["Array", "IntArray", "ArrayLike", "DTypeLike", "LSTMState"]
