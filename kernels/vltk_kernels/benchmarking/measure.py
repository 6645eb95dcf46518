"""How one call is measured: wall-clock and ``do_bench`` timers, peak extra memory, error against the baseline.

Kept apart from the case loop (:mod:`vltk_kernels.benchmarking.run`) because the pieces are useful on their
own: ``benchmarks/vit_attention.py`` uses :class:`PeakTracker` for a non-kernel comparison.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTracker(TorchDispatchMode):
    """Peak bytes of tensor storages created while active (inputs and their views/in-place results excluded).

    Works on any device: every op's outputs are seen at the dispatch level and a storage's bytes are released
    when its Python object dies (storages are preserved objects, so that happens with the C++ storage). Memory
    inside an opaque op (a Triton kernel's scratch) is not seen: on CUDA use the allocator's statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._tracked:
            self._tracked.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs, _ = tree_flatten((args, kwargs))
        input_ptrs = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, Tensor)}
        outputs, _ = tree_flatten(out)
        for tensor in outputs:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            nbytes = storage.nbytes()
            key = id(storage)
            if nbytes == 0 or key in self._tracked or storage.data_ptr() in input_ptrs:
                continue
            self._tracked.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def time_cpu(fn: Callable[[], Any], repeats: int, min_time_s: float, max_time_s: float) -> tuple[float, float, float]:
    """(median, p20, p80) in ms: one warm-up, then at least ``repeats`` runs and ``min_time_s`` seconds."""
    fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_time_s:
        begin = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - begin))
        if time.perf_counter() - started > max_time_s:
            break
    samples.sort()
    return statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8)


def time_cuda(fn: Callable[[], Any], grad_to_none: list[Tensor] | None) -> tuple[float, float, float]:
    """(median, p20, p80) in ms from ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs)."""
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
    return median, p20, p80


def differentiable(args: Sequence[Any]) -> list[Tensor]:
    """The floating-point tensors among a call's arguments: the ones the backward gives gradients for."""
    return [x for x in args if isinstance(x, Tensor) and x.is_floating_point()]


def fresh_inputs(args: tuple[Any, ...], requires_grad: bool) -> tuple[Any, ...]:
    """Detached copies of the tensor arguments (floating ones as autograd leaves when ``requires_grad``)."""
    return tuple(
        x.detach().clone().requires_grad_(requires_grad and x.is_floating_point()) if isinstance(x, Tensor) else x
        for x in args
    )


def max_abs_error(fn: Callable[..., Tensor], reference: Callable[..., Tensor], args: tuple, backward: bool) -> float:
    """Largest |difference| of the output (and input gradients) against the reference run in fp32."""
    upcast = tuple(x.float() if isinstance(x, Tensor) and x.is_floating_point() else x for x in args)
    mine, ref = fresh_inputs(args, backward), fresh_inputs(upcast, backward)
    out, expected = fn(*mine), reference(*ref)
    errors = [(out.float() - expected).abs().max().item()]
    if backward:
        generator = torch.Generator().manual_seed(1)
        grad = torch.randn(expected.shape, generator=generator).to(expected.device)
        got = torch.autograd.grad(out, differentiable(mine), grad.to(out.dtype))
        want = torch.autograd.grad(expected, differentiable(ref), grad)
        errors += [(g.float() - w).abs().max().item() for g, w in zip(got, want, strict=True)]
    return max(errors)


def measure_memory(fn: Callable[..., Tensor], args: tuple, backward: bool, device: torch.device) -> tuple[float, str]:
    """Peak bytes the call adds beyond its inputs: CUDA allocator statistics, else the dispatch-level tracker."""
    inputs = fresh_inputs(args, backward)
    grad = None
    if backward:
        with torch.no_grad():
            grad = torch.ones_like(fn(*fresh_inputs(args, False)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(*inputs)
        if backward:
            out.backward(grad)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before), "cuda allocator peak"
    tracker = PeakTracker()
    with tracker:
        if backward:
            out = fn(*inputs)
            out.backward(grad)
        else:
            with torch.no_grad():
                out = fn(*inputs)
    del out
    return float(tracker.peak), "tensor storages created during the call (dispatch tracker)"


__all__ = [
    "PeakTracker",
    "differentiable",
    "fresh_inputs",
    "max_abs_error",
    "measure_memory",
    "time_cpu",
    "time_cuda",
]
