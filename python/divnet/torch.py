"""Compress layers of a PyTorch model from calibration batches.

``import divnet.torch`` needs PyTorch (``import divnet`` does not). The functions here run
the calibration batches through the model, record the input of the layer that reads the
compressed neurons with a forward pre-hook, and stream it to divnet one batch at a time:
the calibration set's activations are never concatenated. The forward pass of each batch
stops at the hook, so the layers after it do not run.

- :func:`compress_mlp`: every hidden ``nn.Linear`` of an MLP (an ``nn.Sequential`` of
  Linear layers and elementwise activations), each observed through the already compressed
  ones, as ``divnet compress`` does;
- :func:`compress`: any layers, each described by a :class:`Layer`: the modules producing
  the activations (sliced) and the ones reading them (fused), e.g. a transformer FFN with
  ``Layer(prev=["mlp.gate_proj", "mlp.up_proj"], next="mlp.down_proj")``;
- :func:`load_compressed`: resize a model's Linear layers to a compressed state dict and
  load it.

Calibration batches: a tensor or numpy array of inputs (cut into ``chunk_rows`` rows per
batch), or a re-iterable of batches: a list, or a ``torch.utils.data.DataLoader``. divnet
may read a layer's activations more than once (each read runs the batches again), so a
one-shot iterator or generator is refused. A batch that is a tuple or list, as a
DataLoader yields ``(inputs, labels)``, is run as ``model(batch[0])``; a dict as
``model(**batch)``; anything else as ``model(batch)``; ``forward=`` replaces this. Floating
tensors are moved to the model's device and dtype. The model runs in eval mode under
``torch.no_grad()``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from . import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_EPS,
    DEFAULT_RIDGE_FACTOR,
    Backend,
    Beta,
    Fusion,
    InvalidInputError,
    _options,
    compress_layer,
)

Calibration = Union[torch.Tensor, np.ndarray, Sequence[Any], Any]
"""Inputs (a tensor or array, cut into ``chunk_rows`` rows per batch) or a re-iterable of
batches (a list, a DataLoader)."""


@dataclass(frozen=True)
class Layer:
    """One layer of neurons to compress.

    Args:
        prev: the module(s) producing the neurons (``nn.Linear``-like, weight [n, in]):
            their rows, and bias entries, are kept for the kept neurons only. Several for a
            gated FFN (gate and up projections).
        next: the module(s) reading the neurons (weight [out, n]): they absorb the dropped
            neurons by least squares. The activations are recorded at the input of the
            first one (its first call in a forward pass); every one must read that input.
    """

    prev: Union[str, Sequence[str]]
    next: Union[str, Sequence[str]]

    def __post_init__(self) -> None:
        for field_name in ("prev", "next"):
            value = getattr(self, field_name)
            names = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, field_name, names)
        if not self.next:
            raise InvalidInputError("a Layer needs the module(s) reading its neurons (next)")


class _StopForward(BaseException):
    """Raised by the recording hook: the rest of the forward pass is not needed. A
    BaseException, so that a model's own ``except Exception`` does not swallow it."""


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, Optional[torch.dtype]]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), None


def _batches(calibration: Calibration, chunk_rows: int) -> Iterator[Any]:
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        inputs = torch.as_tensor(calibration)
        for start in range(0, inputs.shape[0], chunk_rows):
            yield inputs[start : start + chunk_rows]
    else:
        yield from calibration


def _run_batch(
    model: nn.Module, batch: Any, forward: Optional[Callable[[nn.Module, Any], Any]]
) -> None:
    if forward is not None:
        forward(model, batch)
        return
    device, dtype = _model_device_dtype(model)

    def place(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and dtype is not None:
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)
        return x

    if isinstance(batch, Mapping):
        model(**{key: place(value) for key, value in batch.items()})
    elif isinstance(batch, (tuple, list)):
        model(place(batch[0]))
    else:
        model(place(batch))


def _as_chunk(x: torch.Tensor) -> np.ndarray:
    """A recorded input as rows of neurons (every leading dimension is a sample), as numpy
    float16/32/64 on the CPU: float32 and float16 reach divnet without another copy."""
    rows = x.detach().reshape(-1, x.shape[-1])
    if rows.dtype not in (torch.float16, torch.float32, torch.float64):
        rows = rows.float()
    return rows.cpu().contiguous().numpy()


def _recorded_inputs(
    model: nn.Module,
    module_name: str,
    calibration: Calibration,
    forward: Optional[Callable[[nn.Module, Any], Any]],
    chunk_rows: int,
) -> Callable[[], Iterator[np.ndarray]]:
    """A function whose every call runs the calibration batches through `model` again and
    yields, batch by batch, the input of `module_name`."""
    module = model.get_submodule(module_name)

    def one_pass() -> Iterator[np.ndarray]:
        recorded: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            recorded.append(args[0])
            raise _StopForward

        handle = module.register_forward_pre_hook(hook)
        try:
            for batch in _batches(calibration, chunk_rows):
                with torch.no_grad():
                    try:
                        _run_batch(model, batch, forward)
                    except _StopForward:
                        pass
                if not recorded:
                    raise InvalidInputError(
                        f"{module_name} was not called by the forward pass of a calibration "
                        "batch: its input cannot be recorded"
                    )
                chunk = _as_chunk(recorded.pop())
                recorded.clear()
                yield chunk
        finally:
            handle.remove()

    return one_pass


def _module_tensors(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        module = model.get_submodule(name)
        for kind in ("weight", "bias"):
            value = getattr(module, kind, None)
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{kind}" if name else kind] = value
    return tensors


def _install(model: nn.Module, tensors: Mapping[str, Any]) -> None:
    """Replaces the parameters named in `tensors` (``MODULE.weight``, ``MODULE.bias``) by
    the given values, whatever their new shapes, keeping each parameter's dtype, device
    and ``requires_grad``; a bias that did not exist is created like the weight. Linear
    layers' ``in_features`` / ``out_features`` follow the new weight."""
    for name, value in tensors.items():
        module_name, _, kind = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, kind, None)
        like: torch.Tensor = old if isinstance(old, torch.Tensor) else getattr(module, "weight")
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value)
        new = torch.as_tensor(value).detach().to(device=like.device, dtype=like.dtype).clone()
        setattr(module, kind, nn.Parameter(new, requires_grad=like.requires_grad))
        if kind == "weight" and new.dim() == 2:
            for attribute, size in (("in_features", new.shape[1]), ("out_features", new.shape[0])):
                if hasattr(module, attribute):
                    setattr(module, attribute, int(size))


def load_compressed(model: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
    """Loads a compressed state dict into `model` (in place, and returns it): parameters
    whose shape changed, and biases that fusion created, are replaced first, then
    ``model.load_state_dict(state_dict)`` checks every name."""
    own = dict(model.named_parameters())
    changed = {
        name: value
        for name, value in state_dict.items()
        if name.endswith((".weight", ".bias"))
        and (name not in own or tuple(own[name].shape) != tuple(value.shape))
    }
    _install(model, changed)
    model.load_state_dict({name: torch.as_tensor(v) for name, v in state_dict.items()})
    return model


def _per_layer(value: Any, count: int, option: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise InvalidInputError(
                f"{len(value)} {option} values given for {count} layers: give one for all "
                "or one per layer"
            )
        return list(value)
    return [value] * count


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _compress(
    model: nn.Module,
    layers: Sequence[Layer],
    calibration: Calibration,
    indices: Sequence[int],
    options: dict[str, Any],
    k: Any,
    keep_ratio: Any,
    forward: Optional[Callable[[nn.Module, Any], Any]],
    chunk_rows: int,
    inplace: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    start = time.perf_counter()
    if isinstance(calibration, Iterator):
        raise InvalidInputError(
            "calibration: an iterator can be run only once, and divnet may need several "
            "passes: give a tensor, a list of batches or a DataLoader"
        )
    if not layers:
        raise InvalidInputError("no layer to compress")
    work = model if inplace else copy.deepcopy(model)
    ks = _per_layer(k, len(layers), "k")
    ratios = _per_layer(keep_ratio, len(layers), "keep_ratio")
    params_before = _param_count(work)
    reports: list[dict[str, Any]] = []
    backend = ""
    was_training = work.training
    work.eval()
    try:
        for position, (layer, index) in enumerate(zip(layers, indices)):
            names = [*layer.next, *layer.prev]
            new_tensors, report = compress_layer(
                _recorded_inputs(work, layer.next[0], calibration, forward, chunk_rows),
                _module_tensors(work, names),
                list(layer.next),
                list(layer.prev),
                k=ks[position],
                keep_ratio=ratios[position],
                **{**options, "seed": options["seed"] + index},
            )
            _install(
                work,
                {n: v for n, v in new_tensors.items() if n.rpartition(".")[0] in names},
            )
            backend = report.pop("backend")
            report["index"] = index
            reports.append(report)
    finally:
        work.train(was_training)
    return work.state_dict(), {
        "backend": backend,
        "samples": reports[0]["samples"],
        "params_before": params_before,
        "params_after": _param_count(work),
        "layers": reports,
        "seconds": time.perf_counter() - start,
    }


def compress(
    model: nn.Module,
    layers: Sequence[Layer],
    calibration: Calibration,
    *,
    k: Union[int, Sequence[int], None] = None,
    keep_ratio: Union[float, Sequence[float], None] = None,
    method: str = "kdpp",
    fusion: Fusion = "fuse",
    ridge_factor: float = DEFAULT_RIDGE_FACTOR,
    beta: Beta = "paper",
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    backend: Backend = "auto",
    forward: Optional[Callable[[nn.Module, Any], Any]] = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    inplace: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Compress the given layers of `model` in order, each observed through the ones
    compressed before it.

    For each :class:`Layer`, the calibration batches run through the model and the input of
    ``layer.next[0]`` is streamed to :func:`divnet.compress_layer` batch by batch; the kept
    neurons' rows of the ``prev`` modules stay, the ``next`` modules absorb the dropped
    neurons. With ``fusion="fuse"`` a ``next`` module without a bias gets one when the fused
    constant needs it (a model built from its config then cannot load the state dict: use
    ``fusion="fuse-no-bias"`` for such models, e.g. Llama's bias-free projections).

    Args:
        model: the network; left untouched unless ``inplace``.
        layers: what to compress, in order.
        calibration: inputs or batches (see :data:`Calibration`).
        k, keep_ratio: neurons to keep (a count or a fraction of the layer's width): one
            value for all layers or one per layer; neither with ``method="dpp"``.
        method, fusion, ridge_factor, beta, eps, backend: as in
            :func:`divnet.compress_layer`.
        seed: seed of the random methods; layer ``i`` of ``layers`` uses ``seed + i``.
        forward: ``forward(model, batch)`` runs one batch, when the default way (see the
            module's documentation) does not fit.
        chunk_rows: rows per batch when ``calibration`` is one tensor or array.
        inplace: compress `model` itself instead of a copy.

    Returns:
        ``(state_dict, report)``: the compressed model's state dict (new shapes; load it
        with :func:`load_compressed`), and a report shaped like ``divnet compress``'s
        (``backend``, ``samples``, ``params_before``, ``params_after``, ``layers`` with each
        layer's kept indices, ridge and relative error, ``seconds``).
    """
    options = _options(method, fusion, ridge_factor, beta, eps, seed, backend)
    indices = range(len(layers))
    return _compress(
        model,
        layers,
        calibration,
        indices,
        options,
        k,
        keep_ratio,
        forward,
        chunk_rows,
        inplace,
    )


def _check_between(model: nn.Module, linear_names: Sequence[str]) -> None:
    """In an ``nn.Sequential``, the modules between Linear layers must have no parameters:
    slicing a layer's rows would leave, say, a BatchNorm's per-neuron parameters behind."""
    if not isinstance(model, nn.Sequential):
        return
    for name, child in model.named_children():
        if name in linear_names:
            continue
        owned = [n for n, _ in child.named_parameters()]
        if owned:
            raise InvalidInputError(
                f"module {name} ({type(child).__name__}) between the Linear layers has "
                "parameters: compress_mlp handles Linear layers with elementwise activations "
                "between them (describe other layers with divnet.torch.compress)"
            )


def compress_mlp(
    model: nn.Module,
    calibration: Calibration,
    *,
    layers: Optional[Sequence[str]] = None,
    k: Union[int, Sequence[int], None] = None,
    keep_ratio: Union[float, Sequence[float], None] = None,
    method: str = "kdpp",
    fusion: Fusion = "fuse",
    ridge_factor: float = DEFAULT_RIDGE_FACTOR,
    beta: Beta = "paper",
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    backend: Backend = "auto",
    forward: Optional[Callable[[nn.Module, Any], Any]] = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    inplace: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Compress the hidden ``nn.Linear`` layers of an MLP, as ``divnet compress`` does.

    The Linear layers, in the order the model registers them, must be applied in that order
    with elementwise functions (ReLU, GELU, dropout, ...) between them; every one but the
    last is hidden. Each hidden layer in turn is observed through the already compressed
    ones, keeps a subset of its neurons, and the next Linear layer absorbs the dropped ones.

    Args:
        layers: names of the hidden Linear layers to compress (all by default).
        k, keep_ratio: one value for all compressed layers, or one per layer.
        seed: hidden layer ``l`` (0-based, counting every hidden layer) uses ``seed + l``,
            as in :func:`divnet.compress`.

    The other arguments and the result are those of :func:`compress`.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise InvalidInputError(
            "the model has a single layer: there is no hidden layer to compress"
        )
    _check_between(model, linears)
    hidden = linears[:-1]
    chosen = hidden if layers is None else list(layers)
    for name in chosen:
        if name not in hidden:
            raise InvalidInputError(
                f"{name} is not a hidden Linear layer of the model (hidden: {', '.join(hidden)})"
            )
    specs = [Layer(prev=name, next=linears[hidden.index(name) + 1]) for name in chosen]
    indices = [hidden.index(name) for name in chosen]
    options = _options(method, fusion, ridge_factor, beta, eps, seed, backend)
    return _compress(
        model,
        specs,
        calibration,
        indices,
        options,
        k,
        keep_ratio,
        forward,
        chunk_rows,
        inplace,
    )


__all__ = ["Layer", "compress", "compress_mlp", "load_compressed", "Calibration"]
