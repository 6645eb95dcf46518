"""Run one case: every (shape, dtype, pass, implementation) combination the settings ask for, as result rows.

Each row is a plain dict (JSON-ready): the timings, the peak extra memory next to the theoretical minimum, the
max error against the baseline, and on CUDA TFLOP/s and GB/s. One failing implementation becomes an ``error``
row instead of hiding the others' results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vltk_kernels._dispatch import triton_unavailable_reason
from vltk_kernels.benchmarking.cases import BenchCase, Shape
from vltk_kernels.benchmarking.measure import (
    differentiable,
    fresh_inputs,
    max_abs_error,
    measure_memory,
    time_cpu,
    time_cuda,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_NOTE = (
    "CPU without CUDA: Triton runs in the interpreter (numpy, one program at a time), so its times and memory say "
    "nothing about GPU speed; only the times and memory of the torch reference and the lean PyTorch path, and the "
    "interpreter's correctness (max_abs_err), are meaningful here."
)


@dataclass
class BenchSettings:
    """What to run of each case, and how long the CPU timer keeps sampling."""

    device: torch.device
    dtypes: Sequence[str]
    backends: Sequence[str] | None = None  # None: every implementation of a case
    shapes: Sequence[str] | None = None  # None: the shapes whose ``devices`` include this device
    backward: bool = True
    repeats: int = 5
    min_time_s: float = 0.2
    max_time_s: float = 20.0


def run_case(case: BenchCase, settings: BenchSettings, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Every (shape, dtype, pass, implementation) row of one case."""
    device = settings.device
    names = (
        list(case.implementations)
        if settings.backends is None
        else [b for b in settings.backends if b in case.implementations]
    )
    if case.baseline not in names and case.baseline in case.implementations:
        names.append(case.baseline)  # speed-ups and errors need it
    shapes = (
        [s for s in case.shapes if device.type in s.devices]
        if settings.shapes is None
        else [case.shape(n) for n in settings.shapes if n in {s.name for s in case.shapes}]
    )
    passes = ["fwd", "fwd+bwd"] if settings.backward and case.backward else ["fwd"]
    rows: list[dict] = []
    for shape in shapes:
        for dtype_name in settings.dtypes:
            dtype = DTYPES[dtype_name]
            args = case.make_inputs(shape.dims, device, dtype)
            itemsize = torch.empty((), dtype=dtype).element_size()
            for pass_name in passes:
                group: list[dict] = []
                for name in names:
                    log(f"{case.name} {shape.name} {dtype_name} {pass_name} {name}")
                    group.append(_run_one(case, shape, dtype_name, pass_name, name, args, itemsize, settings))
                baseline = next((r for r in group if r["impl"] == case.baseline and r["status"] == "ok"), None)
                for row in group:
                    # an interpreted kernel's time is no GPU estimate, so no ratio is derived from it
                    if baseline is not None and row["status"] == "ok" and "note" not in row:
                        row["speedup_vs_baseline"] = baseline["median_ms"] / row["median_ms"]
                rows.extend(group)
    return rows


def _run_one(
    case: BenchCase,
    shape: Shape,
    dtype_name: str,
    pass_name: str,
    name: str,
    args: tuple,
    itemsize: int,
    settings: BenchSettings,
) -> dict:
    device = settings.device
    backward = pass_name == "fwd+bwd"
    fn = case.implementations[name]
    row: dict[str, Any] = {
        "op": case.name,
        "shape": shape.name,
        "dims": dict(shape.dims),
        "dtype": dtype_name,
        "pass": pass_name,
        "impl": name,
        "status": "ok",
    }
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            return {**row, "status": "skipped", "reason": reason}
    interpreted = name == "triton" and device.type == "cpu"
    try:
        if name != case.baseline:
            row["max_abs_err"] = max_abs_error(fn, case.implementations[case.baseline], args, backward)
        inputs = fresh_inputs(args, backward)
        leaves = differentiable(inputs) if backward else []
        grad = None
        if backward:
            with torch.no_grad():
                grad = torch.ones_like(fn(*fresh_inputs(args, False)))

        def call() -> None:
            if backward:
                for leaf in leaves:
                    leaf.grad = None
                fn(*inputs).backward(grad)
            else:
                with torch.no_grad():
                    fn(*inputs)

        if device.type == "cuda":
            median, p20, p80 = time_cuda(call, leaves or None)
        else:  # the interpreter is slow and its time is not a GPU estimate: one timed run is enough
            repeats = 1 if interpreted else settings.repeats
            median, p20, p80 = time_cpu(call, repeats, 0.0 if interpreted else settings.min_time_s, settings.max_time_s)
        row.update(median_ms=median, p20_ms=p20, p80_ms=p80)
        if not interpreted:
            peak, method = measure_memory(fn, args, backward, device)
            row.update(peak_extra_mb=peak / 2**20, memory_method=method)
        if case.min_extra_bytes is not None:
            row["min_extra_mb"] = case.min_extra_bytes(shape.dims, itemsize, backward) / 2**20
        if device.type == "cuda" and not backward:
            if case.flops is not None:
                row["tflops"] = case.flops(shape.dims) / (median * 1e-3) / 1e12
            if case.bytes_moved is not None:
                row["gbps"] = case.bytes_moved(shape.dims, itemsize) / (median * 1e-3) / 1e9
        if interpreted:
            row["note"] = "Triton interpreter on CPU: time not a GPU estimate"
    except Exception as error:  # one failing implementation must not hide the others' results
        row.update(status="error", reason=f"{type(error).__name__}: {error}")
    return row


__all__ = ["CPU_NOTE", "DTYPES", "BenchSettings", "run_case"]
