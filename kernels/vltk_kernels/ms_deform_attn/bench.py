"""``vltk bench`` case of the multi-scale deformable attention op: test, small-CPU and Mask2Former-sized shapes.

Registered by the vltk kernels plugin through ``vltk_register_bench_cases``, like any plugin's case. A shape's
``H x W`` is the finest level; each of the ``L`` levels halves both sides, and every position of every level is a
query (as in Mask2Former's pixel decoder encoder).
"""

from __future__ import annotations

from typing import Any

import torch

from vltk_kernels.benchmarking.cases import BenchCase, Dims, Shape, op_implementations
from vltk_kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_lean, ms_deform_attn_reference


def _levels(dims: Dims) -> list[tuple[int, int]]:
    height, width = dims["H"], dims["W"]  # the finest level; each next level halves both sides
    return [(max(1, height >> level), max(1, width >> level)) for level in range(dims["L"])]


def _queries(dims: Dims) -> int:
    return sum(h * w for h, w in _levels(dims))


def _inputs(dims: Dims, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    levels = _levels(dims)
    total = sum(h * w for h, w in levels)
    b, heads, d, p = dims["B"], dims["nH"], dims["D"], dims["P"]
    value = torch.randn(b, total, heads, d, generator=generator)
    locations = torch.rand(b, total, heads, len(levels), p, 2, generator=generator)
    weights = torch.rand(b, total, heads, len(levels), p, generator=generator).softmax(-1)
    shapes = torch.tensor(levels, dtype=torch.int64, device=device)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return value.to(device, dtype), shapes, starts, locations.to(device, dtype), weights.to(device, dtype)


def bench_case() -> BenchCase:
    """Bilinear sampling of ``P`` points per head and level for every query; four taps per sample."""
    return BenchCase(
        name="ms_deform_attn",
        summary="multi-scale deformable attention sampling (Mask2Former pixel decoder)",
        shapes=(
            Shape("tiny", {"B": 1, "H": 8, "W": 10, "L": 3, "nH": 2, "D": 8, "P": 4}, devices=()),
            Shape(
                "small", {"B": 1, "H": 32, "W": 32, "L": 3, "nH": 8, "D": 32, "P": 4}, note="256² image, strides 8-32"
            ),
            Shape("m2f-512", {"B": 2, "H": 64, "W": 64, "L": 3, "nH": 8, "D": 32, "P": 4}, devices=("cuda",)),
            Shape("m2f-1024x2048", {"B": 1, "H": 128, "W": 256, "L": 3, "nH": 8, "D": 32, "P": 4}, devices=("cuda",)),
        ),
        make_inputs=_inputs,
        implementations=op_implementations(ms_deform_attn, ms_deform_attn_reference, ms_deform_attn_lean),
        flops=lambda d: 2.0 * 4 * d["B"] * _queries(d) * d["nH"] * d["L"] * d["P"] * d["D"],
        bytes_moved=lambda d, s: (
            s * d["B"] * _queries(d) * d["nH"] * (2 * d["D"] + 3 * d["L"] * d["P"])
        ),  # value read once (cache reuse), locations+weights, output
        min_extra_bytes=lambda d, s, bwd: (
            s * d["B"] * _queries(d) * d["nH"] * d["D"] * (2 if bwd else 1)
            + (s * 3 * d["B"] * _queries(d) * d["nH"] * d["L"] * d["P"] if bwd else 0)
        ),
    )


__all__ = ["bench_case"]
