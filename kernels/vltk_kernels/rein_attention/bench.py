"""``vltk bench`` case of the Rein token attention op: test, small-CPU and ViT-sized shapes.

Registered by the vltk kernels plugin through ``vltk_register_bench_cases``, like any plugin's case.
"""

from __future__ import annotations

from typing import Any

import torch

from vltk_kernels.benchmarking.cases import BenchCase, Dims, Shape, op_implementations
from vltk_kernels.rein_attention import rein_attention, rein_attention_lean, rein_attention_reference


def _inputs(dims: Dims, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    b, n, c, m = dims["B"], dims["N"], dims["C"], dims["M"]
    feats = torch.randn(b, n, c, generator=generator)
    tokens = torch.randn(m, c, generator=generator) * 0.5
    values = torch.randn(m - 1, c, generator=generator) * 0.5
    return feats.to(device, dtype), tokens.to(device, dtype), values.to(device, dtype), c**-0.5


def bench_case() -> BenchCase:
    """Features ``[B, N, C]`` against ``M`` tokens; the FLOPs are the two ``N x M x C`` matmuls."""
    return BenchCase(
        name="rein_attention",
        summary="Rein token attention softmax(f Tᵀ/√c)[..., 1:] V",
        shapes=(
            Shape("tiny", {"B": 1, "N": 37, "C": 48, "M": 11}, devices=()),
            Shape("small", {"B": 2, "N": 256, "C": 256, "M": 100}),
            Shape("vit-b-512", {"B": 2, "N": 1024, "C": 768, "M": 100}, note="ViT-B/16, 512² crop, one layer"),
            Shape("vit-l-512", {"B": 4, "N": 1024, "C": 1024, "M": 100}, devices=("cuda",), note="Rein's ViT-L"),
        ),
        make_inputs=_inputs,
        implementations=op_implementations(rein_attention, rein_attention_reference, rein_attention_lean),
        flops=lambda d: 4.0 * d["B"] * d["N"] * d["C"] * d["M"],
        bytes_moved=lambda d, s: s * (2 * d["B"] * d["N"] * d["C"] + 2 * d["M"] * d["C"]) + 4 * d["B"] * d["N"],
        min_extra_bytes=lambda d, s, bwd: (
            s * d["B"] * d["N"] * d["C"] * (2 if bwd else 1) + (s * 2 * d["M"] * d["C"] if bwd else 0)
        ),
    )


__all__ = ["bench_case"]
