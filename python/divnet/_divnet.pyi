"""Type stub of the extension module (python/src/lib.rs); the documented API is divnet's."""

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import numpy as np
from numpy.typing import NDArray

__version__: str
SELECTION_METHODS: list[str]
DEFAULT_EPS: float
DEFAULT_CHUNK_ROWS: int
DEFAULT_RIDGE_FACTOR: float

def kernel(
    activations: Any, kind: str, beta: Union[str, float], eps: float, backend: str
) -> NDArray[np.float64]: ...
def gram(activations: Any, backend: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def sample(
    kernel: Any,
    activations: Any,
    method: str,
    k: Optional[int],
    samples: int,
    seed: int,
    next_weight: Any,
    beta: Union[str, float],
    eps: float,
    backend: str,
) -> list[list[int]]: ...
def compress_layer(
    activations: Any,
    chunks: Optional[Callable[[], Iterable[Any]]],
    width: Optional[int],
    weights: Mapping[str, Any],
    next: list[str],
    prev: list[str],
    k: Optional[int],
    keep_ratio: Optional[float],
    keep: Optional[list[int]],
    options: Mapping[str, Any],
) -> tuple[dict[str, NDArray[Any]], str]: ...
def compress(
    state_dict: Mapping[str, Any],
    calibration: Any,
    layers: Optional[list[str]],
    activation: str,
    k: Optional[list[int]],
    keep_ratio: Optional[list[float]],
    chunk_rows: int,
    options: Mapping[str, Any],
) -> tuple[dict[str, NDArray[Any]], str]: ...
def _activation_view(activations: Any) -> tuple[int, bool]: ...
