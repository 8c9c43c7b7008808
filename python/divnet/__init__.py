"""divnet: compress trained neural networks with Diversity Networks.

Mariet & Sra, "Diversity Networks: Neural Network Compression Using Determinantal Point
Processes" (ICLR 2016): keep a diverse subset of a hidden layer's neurons, drawn from a
determinantal point process over their activations, and fuse the dropped neurons into the
next layer by least squares.

This package is the Python front end of the ``divnet`` Rust library (the same code as the
``divnet`` command line, with the same defaults and error messages):

- :func:`kernel`, :func:`gram`: the RBF kernel / Gram matrix over a layer's neurons;
- :func:`sample`: k-DPP and DPP draws, greedy MAP, random and importance selection;
- :func:`compress_layer`: one layer of any network, from its activations and weights;
- :func:`compress`: every hidden layer of an MLP state dict, as ``divnet compress``;
- :mod:`divnet.torch` (needs PyTorch): the same on ``torch.nn`` modules, with activations
  recorded by forward hooks batch by batch.

Arrays: numpy arrays (or anything ``numpy.asarray`` takes, PyTorch tensors included) of
float16, float32 or float64, in C or Fortran order. float32 and float16 activations in C
order are read in place; other layouts and float64 are converted once to float32. The GIL is
released while the library works, so other Python threads keep running.

Backends: ``backend="auto"`` (the default) runs the WGSL kernels on a real GPU and the CPU
implementations otherwise (no adapter, or a software one such as lavapipe); ``"gpu"`` forces
the GPU, ``"cpu"`` the CPU. Which backend ran, and why, is logged at INFO level on the
``divnet`` logger. A GPU failure under ``"auto"`` reruns the work on the CPU with a
``RuntimeWarning``.

Errors are :class:`DivnetError` subclasses (also ``ValueError``, ``RuntimeError``, ... as
fits) whose message is the one line the command line prints for the same problem.
"""

from __future__ import annotations

import json
import logging
import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable, Literal, Optional, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import (
    DivnetError,
    FileError,
    ForkedProcessError,
    FormatError,
    GpuError,
    InvalidInputError,
    NoAdapterError,
    NumericalError,
)

# Mesa's device-select Vulkan layer prints "error: XDG_RUNTIME_DIR is invalid" in every
# process that opens a Vulkan instance on a headless machine; divnet picks its adapter itself,
# as the divnet command does (it sets the same variable at start-up).
if "XDG_RUNTIME_DIR" not in os.environ:
    os.environ.setdefault("NODEVICE_SELECT", "1")

from . import _divnet

__version__: str = _divnet.__version__

#: The selection methods, in the order the command line lists them.
SELECTION_METHODS: tuple[str, ...] = tuple(_divnet.SELECTION_METHODS)
#: Added to the RBF kernel's diagonal so that it is positive definite (``--eps``).
DEFAULT_EPS: float = _divnet.DEFAULT_EPS
#: Ridge of the fusion system, as a fraction of the mean eigenvalue of the kept neurons'
#: centred Gram matrix; the constant is not damped (``--ridge-factor``).
DEFAULT_RIDGE_FACTOR: float = _divnet.DEFAULT_RIDGE_FACTOR
#: Calibration rows pushed through an MLP at a time (``--chunk-rows``).
DEFAULT_CHUNK_ROWS: int = _divnet.DEFAULT_CHUNK_ROWS

Beta = Union[str, float]
"""``"paper"`` (10 / m, the paper's default), ``"median"`` (1 / the median squared distance
between neurons) or a positive number."""
Backend = Literal["auto", "gpu", "cpu"]
Fusion = Literal["fuse", "fuse-no-bias", "prune"]

logging.getLogger("divnet").addHandler(logging.NullHandler())


def _to_numpy(value: Any) -> Any:
    """A PyTorch tensor as a numpy array (bfloat16 as float32), anything else unchanged."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    return value


def _tensor_name(prefix: str, kind: str) -> str:
    """``PREFIX.weight``, or ``weight`` for the empty prefix of a bare layer's state dict."""
    return f"{prefix}.{kind}" if prefix else kind


class _ArrayView(Mapping):
    """A state dict whose values are handed out as numpy arrays, converted on access (so
    that only the tensors divnet reads leave the GPU)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._tensors = tensors

    def __getitem__(self, name: str) -> Any:
        return _to_numpy(self._tensors[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _names(value: Union[str, Sequence[str]]) -> list[str]:
    """Tensor prefixes: one name, a comma-separated list (as the command line takes them),
    or a sequence of names."""
    if isinstance(value, str):
        return [name for name in value.split(",") if name]
    return list(value)


def _count(name: str, value: Any) -> int:
    """A non-negative integer argument (Python or numpy), or the error the command line gives
    for a negative one, instead of an OverflowError from the extension."""
    number = operator.index(value)
    if number < 0:
        raise InvalidInputError(f"{name} must be at least 0, got {number}")
    return number


def kernel(
    activations: ArrayLike,
    *,
    kind: Literal["rbf", "gram"] = "rbf",
    beta: Beta = "paper",
    eps: float = DEFAULT_EPS,
    backend: Backend = "auto",
) -> NDArray[np.float64]:
    """The n x n matrix over a layer's neurons, as ``divnet kernel`` writes it.

    Args:
        activations: m x n (samples x neurons), float16/32/64.
        kind: ``"rbf"``: ``L_ij = exp(-beta ||v_i - v_j||^2) + eps I``, the DPP kernel over
            the neuron activation vectors ``v_i`` (columns); ``"gram"``: ``G = A^T A``.
        beta: the RBF bandwidth (see :data:`Beta`); ``"paper"`` is 10 / m.
        eps: added to the RBF kernel's diagonal.
        backend: ``"auto"``, ``"gpu"`` or ``"cpu"``.

    Returns:
        A new n x n float64 array.
    """
    return _divnet.kernel(_to_numpy(activations), kind, beta, eps, backend)


def gram(
    activations: ArrayLike, *, backend: Backend = "auto"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The Gram statistics of a layer: ``G = A^T A`` (n x n) and ``s = A^T 1`` (n), float64,
    accumulated from float32 products with compensated sums (what fusion and importance
    selection use).

    Args:
        activations: m x n (samples x neurons), float16/32/64.
        backend: ``"auto"``, ``"gpu"`` or ``"cpu"``.
    """
    g, s = _divnet.gram(_to_numpy(activations), backend)
    return g, s


@overload
def sample(
    kernel: Optional[ArrayLike] = ...,
    *,
    activations: Optional[ArrayLike] = ...,
    method: str = ...,
    k: Optional[int] = ...,
    samples: None = ...,
    seed: int = ...,
    next_weight: Optional[ArrayLike] = ...,
    beta: Beta = ...,
    eps: float = ...,
    backend: Backend = ...,
) -> list[int]: ...


@overload
def sample(
    kernel: Optional[ArrayLike] = ...,
    *,
    activations: Optional[ArrayLike] = ...,
    method: str = ...,
    k: Optional[int] = ...,
    samples: int,
    seed: int = ...,
    next_weight: Optional[ArrayLike] = ...,
    beta: Beta = ...,
    eps: float = ...,
    backend: Backend = ...,
) -> list[list[int]]: ...


def sample(
    kernel: Optional[ArrayLike] = None,
    *,
    activations: Optional[ArrayLike] = None,
    method: str = "kdpp",
    k: Optional[int] = None,
    samples: Optional[int] = None,
    seed: int = 0,
    next_weight: Optional[ArrayLike] = None,
    beta: Beta = "paper",
    eps: float = DEFAULT_EPS,
    backend: Backend = "auto",
) -> Union[list[int], list[list[int]]]:
    """Neurons to keep: sorted 0-based indices, as ``divnet sample`` prints them.

    Give either the n x n ``kernel`` L or the layer's ``activations`` (m x n, from which the
    RBF kernel is built with ``beta``, ``eps`` and ``backend``).

    Args:
        method: ``"kdpp"`` (exactly k, the paper's method), ``"dpp"`` (the kernel chooses
            the size; no k), ``"greedy"`` (greedy MAP, deterministic), ``"random"`` (k
            uniformly at random) or ``"importance"`` (the k largest
            ``||W_next[:, i]|| * RMS(a_i)``: needs ``activations`` and ``next_weight``).
        k: how many neurons (every method but ``"dpp"``).
        samples: ``None`` for one selection (a list of indices); a number for that many
            draws (a list of lists) from one random stream: the same seed gives the same
            lines as ``divnet sample --samples N --seed S``. Only for the random methods.
        seed: seed of the random methods.
        next_weight: n_out x n, the next layer's weight (``"importance"`` only).
    """
    draws = _divnet.sample(
        None if kernel is None else _to_numpy(kernel),
        None if activations is None else _to_numpy(activations),
        method,
        None if k is None else _count("k", k),
        1 if samples is None else _count("samples", samples),
        _count("seed", seed),
        None if next_weight is None else _to_numpy(next_weight),
        beta,
        eps,
        backend,
    )
    return draws[0] if samples is None else draws


Activations = Union[ArrayLike, Iterable[ArrayLike], Callable[[], Iterable[ArrayLike]]]
"""A layer's activations: one m x n array; or its row chunks (k_i x n arrays) as a list, an
object that iterates anew each time, or a function returning a fresh iterable per call.
The library may read the chunks more than once (it asks for a new pass each time), so a
one-shot iterator or generator is refused."""


def _chunk_passes(activations: Any) -> Callable[[], Iterator[Any]]:
    """A function giving one pass over the chunks per call, chunks as numpy arrays."""
    if callable(activations):
        make = activations
    elif isinstance(activations, Iterator):
        raise InvalidInputError(
            "activations: an iterator can be read only once, and divnet may need a second "
            "pass: give a list of chunks, or a function returning a new iterator"
        )
    else:

        def make() -> Iterable[Any]:
            return activations

    def passes() -> Iterator[Any]:
        return (_to_numpy(chunk) for chunk in make())

    return passes


def _options(
    method: str, fusion: str, ridge_factor: float, beta: Beta, eps: float, seed: int, backend: str
) -> dict[str, Any]:
    """The options both compression functions share, as the extension takes them."""
    return {
        "method": method,
        "fusion": fusion,
        "ridge_factor": ridge_factor,
        "beta": beta,
        "eps": eps,
        "seed": seed,
        "backend": backend,
    }


def _is_array(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) == 0 or not hasattr(value[0], "shape")
    return hasattr(value, "__array__") or hasattr(value, "__array_interface__")


def compress_layer(
    activations: Activations,
    weights: Mapping[str, Any],
    next: Union[str, Sequence[str]],
    prev: Union[str, Sequence[str]] = (),
    *,
    k: Optional[int] = None,
    keep_ratio: Optional[float] = None,
    keep: Optional[Sequence[int]] = None,
    method: str = "kdpp",
    fusion: Fusion = "fuse",
    ridge_factor: float = DEFAULT_RIDGE_FACTOR,
    beta: Beta = "paper",
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    backend: Backend = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compress one hidden layer of any network, as ``divnet compress-layer`` does.

    The layer's activations decide which neurons to keep; the layer(s) reading them
    (``next``: ``NAME.weight`` [n_out, n], optional ``NAME.bias``) absorb the dropped ones by
    least squares (a bias is created when the fused constant needs one, unless
    ``fusion="fuse-no-bias"``); the layers producing them (``prev``: e.g. the gate and up
    projections of a transformer FFN) keep only the rows of the kept neurons.

    Args:
        activations: m x n (samples x neurons), or its row chunks (see :data:`Activations`).
        weights: a state dict (numpy arrays or PyTorch tensors, float16/32/64); only the
            ``next`` and ``prev`` tensors are read.
        next: tensor prefix(es) of the layer(s) reading the activations.
        prev: tensor prefix(es) of the layer(s) producing them.
        k, keep_ratio, keep: how many neurons to keep (a count, a fraction of n) or which
            (0-based indices, skipping selection); exactly one, or none with
            ``method="dpp"``.
        method: one of :data:`SELECTION_METHODS`: ``"kdpp"`` (the default), ``"dpp"``,
            ``"greedy"``, ``"random"``, ``"importance"``, the rules built for fusion
            ``"fusion-greedy"`` and ``"fusion-swap"`` (deterministic; fusion-swap is the most
            accurate with fusion in the README's measurements), ``"quality-kdpp"`` or
            ``"quality-greedy"``.
        fusion: ``"fuse"`` (least squares on the kept neurons and a constant),
            ``"fuse-no-bias"`` (the paper's objective, biases untouched) or ``"prune"``.
        ridge_factor: the fusion system's ridge, as a fraction of the mean eigenvalue of the
            kept neurons' centred Gram matrix (the constant is not damped).
        beta, eps: the RBF kernel of the DPP methods (see :func:`kernel`).
        seed: seed of the random methods.
        backend: ``"auto"``, ``"gpu"`` or ``"cpu"``.

    Returns:
        ``(new_weights, report)``: a new dict with every entry of ``weights``, the rewritten
        tensors replaced by numpy arrays of their dtypes and new shapes; and the report
        (kept indices, method, ridge, ``relative_error`` of the next layer's
        pre-activation, seconds per stage, ...) as ``--report`` writes it; its ``inputs``
        say what the arrays were (``--report`` names its files there).
    """
    next_names, prev_names = _names(next), _names(prev)
    if _is_array(activations):
        array, passes, width = _to_numpy(activations), None, None
    else:
        array, passes = None, _chunk_passes(activations)
        if not next_names:
            # The library's words, as for a whole array.
            raise InvalidInputError("name the layer(s) that read the activations (next)")
        weight_name = _tensor_name(next_names[0], "weight")
        if weight_name not in weights:
            raise FormatError(f"weights: no tensor {weight_name}")
        width = int(np.shape(_to_numpy(weights[weight_name]))[-1])
    changed, report = _divnet.compress_layer(
        array,
        passes,
        width,
        _ArrayView(weights),
        next_names,
        prev_names,
        None if k is None else _count("k", k),
        keep_ratio,
        None if keep is None else _keep_list(keep),
        _options(method, fusion, ridge_factor, beta, eps, _count("seed", seed), backend),
    )
    out = dict(weights)
    out.update(changed)
    return out, json.loads(report)


def _keep_list(keep: Any) -> list[int]:
    """0-based indices of the neurons to keep; a boolean mask is refused (its False entries
    would read as index 0)."""
    if np.asarray(keep).dtype == bool:
        raise InvalidInputError(
            "keep: give the indices of the neurons to keep, not a boolean mask "
            "(numpy.flatnonzero(mask) turns one into the other)"
        )
    return [_count("keep index", i) for i in keep]


def _per_layer(value: Any, convert: Callable[[Any], Any]) -> Optional[list[Any]]:
    """One value for every layer, or one per layer (a list, tuple or 1-D array)."""
    if value is None:
        return None
    if np.ndim(value) == 1:
        return [convert(v) for v in value]
    return [convert(value)]


def compress(
    state_dict: Mapping[str, Any],
    calibration: ArrayLike,
    *,
    k: Union[int, Sequence[int], None] = None,
    keep_ratio: Union[float, Sequence[float], None] = None,
    method: str = "kdpp",
    layers: Optional[Sequence[str]] = None,
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu",
    fusion: Fusion = "fuse",
    ridge_factor: float = DEFAULT_RIDGE_FACTOR,
    beta: Beta = "paper",
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    backend: Backend = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compress every hidden layer of an MLP, as ``divnet compress`` does: each hidden layer
    in turn is observed on the calibration inputs through the already compressed layers
    before it, a subset of its neurons is kept, and the dropped ones are fused into the
    next layer.

    Args:
        state_dict: the MLP's tensors, ``NAME.weight`` [out, in] and optional ``NAME.bias``
            (numpy arrays or PyTorch tensors, float16/32/64).
        calibration: m x d inputs (one sample per row).
        k, keep_ratio: neurons to keep per hidden layer (a count or a fraction): one value
            for all layers or one per hidden layer; neither with ``method="dpp"``.
        method: one of :data:`SELECTION_METHODS`: ``"kdpp"`` (the default), ``"dpp"``,
            ``"greedy"``, ``"random"``, ``"importance"``, the rules built for fusion
            ``"fusion-greedy"`` and ``"fusion-swap"`` (deterministic; fusion-swap is the most
            accurate with fusion in the README's measurements), ``"quality-kdpp"`` or
            ``"quality-greedy"``.
        layers: the layer prefixes in order (``["fc1", "fc2", "fc3"]``); inferred from the
            chain of shapes when omitted.
        activation: the function between layers.
        fusion: ``"fuse"``, ``"fuse-no-bias"`` or ``"prune"`` (see :func:`compress_layer`).
        seed: seed of the random methods; hidden layer ``l`` uses ``seed + l``.
        chunk_rows: calibration rows pushed through the network at a time.

    Returns:
        ``(new_state_dict, report)``: a new dict with every entry of ``state_dict``, the
        layers' tensors replaced by numpy arrays of their dtypes and new widths; and the
        report (per layer: kept indices, ridge, relative error; parameter counts) as
        ``divnet compress --report`` writes it.
    """
    changed, report = _divnet.compress(
        _ArrayView(state_dict),
        _to_numpy(calibration),
        None if layers is None else _names(layers),
        activation,
        _per_layer(k, lambda v: _count("k", v)),
        _per_layer(keep_ratio, float),
        chunk_rows,
        _options(method, fusion, ridge_factor, beta, eps, _count("seed", seed), backend),
    )
    out = dict(state_dict)
    out.update(changed)
    return out, json.loads(report)


__all__ = [
    "kernel",
    "gram",
    "sample",
    "compress_layer",
    "compress",
    "SELECTION_METHODS",
    "DEFAULT_EPS",
    "DEFAULT_RIDGE_FACTOR",
    "DEFAULT_CHUNK_ROWS",
    "DivnetError",
    "InvalidInputError",
    "FormatError",
    "FileError",
    "ForkedProcessError",
    "NoAdapterError",
    "GpuError",
    "NumericalError",
]
