"""What a benchmark case is: named problem sizes, an input builder and the implementations to compare.

Cases are plain data, so an op's own folder (``vltk_kernels/<op>/bench.py``) or a third-party plugin can declare
them without touching the harness; :mod:`vltk_kernels.benchmarking.run` turns one into result rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vltk_kernels._dispatch import use_backend

#: The implementation every other one is checked and compared against, unless a case names another.
BASELINE = "torch"

Dims = Mapping[str, int]


@dataclass(frozen=True)
class Shape:
    """A named problem size. ``devices`` lists where it runs by default (``vltk bench`` without ``--shapes``)."""

    name: str
    dims: Dims
    devices: tuple[str, ...] = ("cpu", "cuda")
    note: str = ""


@dataclass(frozen=True)
class BenchCase:
    """One benchmarkable op.

    ``make_inputs(dims, device, dtype)`` returns the positional arguments; floating tensors among them get
    gradients in the forward+backward pass. ``implementations`` maps a name to a callable taking those arguments;
    the entry named ``baseline`` is the reference every other one is checked and compared against.
    ``flops(dims)`` and ``bytes_moved(dims, itemsize)`` (the forward's minimum memory traffic) give TFLOP/s and
    GB/s on CUDA; ``min_extra_bytes(dims, itemsize, backward)`` is the theoretical minimum of the memory the call
    adds (outputs, and input gradients for the backward), printed next to the measured peak. ``plugin`` is the
    name of the plugin that registered the case (``vltk bench`` fills it in; it is not part of equality).
    """

    name: str
    shapes: tuple[Shape, ...]
    make_inputs: Callable[[Dims, torch.device, torch.dtype], tuple[Any, ...]]
    implementations: Mapping[str, Callable[..., Tensor]]
    baseline: str = BASELINE
    backward: bool = True
    flops: Callable[[Dims], float] | None = None
    bytes_moved: Callable[[Dims, int], float] | None = None
    min_extra_bytes: Callable[[Dims, int, bool], float] | None = None
    summary: str = ""
    plugin: str = field(default="vltk_kernels", compare=False)

    def shape(self, name: str) -> Shape:
        for shape in self.shapes:
            if shape.name == name:
                return shape
        raise KeyError(name)


def backend_implementations(
    op: Callable[..., Tensor], backends: Sequence[str] = ("triton", "torch")
) -> dict[str, Callable[..., Tensor]]:
    """``{backend: op run under use_backend(backend)}`` for an op that dispatches through vltk_kernels."""

    def bind(backend: str) -> Callable[..., Tensor]:
        def run(*args: Any) -> Tensor:
            with use_backend(backend):  # type: ignore[arg-type]
                return op(*args)

        run.__name__ = f"{getattr(op, '__name__', 'op')}[{backend}]"
        return run

    return {backend: bind(backend) for backend in backends}


def op_implementations(
    op: Callable[..., Tensor], reference: Callable[..., Tensor], lean: Callable[..., Tensor]
) -> dict[str, Callable[..., Tensor]]:
    """A built-in op's rows: ``triton`` (the public op forced to its kernel), ``torch`` (the reference: the baseline
    every row is checked and compared against) and ``lean`` (the PyTorch path the ``torch`` backend runs)."""
    return {**backend_implementations(op, ("triton",)), BASELINE: reference, "lean": lean}


__all__ = ["BASELINE", "BenchCase", "Dims", "Shape", "backend_implementations", "op_implementations"]
