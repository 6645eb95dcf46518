"""``vltk bench`` case of the pixel-text cosine similarity op: test, small-CPU and segmentation-sized shapes.

Registered by the vltk kernels plugin through ``vltk_register_bench_cases``, like any plugin's case.
"""

from __future__ import annotations

from typing import Any

import torch

from vltk_kernels.benchmarking.cases import BenchCase, Dims, Shape, op_implementations
from vltk_kernels.pixel_text_similarity import (
    pixel_text_similarity,
    pixel_text_similarity_lean,
    pixel_text_similarity_reference,
)


def _inputs(dims: Dims, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(dims["B"], dims["C"], dims["H"], dims["W"], generator=generator)
    texts = torch.randn(dims["K"], dims["C"], generator=generator)
    return pixels.to(device, dtype), texts.to(device, dtype), 0.07


def bench_case() -> BenchCase:
    """Pixel embeddings ``[B, C, H, W]`` against ``K`` class embeddings; one ``K x C`` by ``C x HW`` matmul."""
    return BenchCase(
        name="pixel_text_similarity",
        summary="cosine similarity of pixel and text embeddings (DenseCLIP, LSeg)",
        shapes=(
            Shape("tiny", {"B": 1, "C": 40, "H": 17, "W": 19, "K": 19}, devices=()),
            Shape("small", {"B": 2, "C": 512, "H": 64, "W": 64, "K": 19}),
            Shape("cityscapes-512", {"B": 2, "C": 512, "H": 128, "W": 128, "K": 19}, note="512² crop at stride 4"),
            Shape("ade-512", {"B": 4, "C": 512, "H": 128, "W": 128, "K": 150}, devices=("cuda",)),
        ),
        make_inputs=_inputs,
        implementations=op_implementations(
            pixel_text_similarity, pixel_text_similarity_reference, pixel_text_similarity_lean
        ),
        flops=lambda d: 2.0 * d["B"] * d["K"] * d["C"] * d["H"] * d["W"],
        bytes_moved=lambda d, s: (
            s * (d["B"] * d["C"] * d["H"] * d["W"] + d["K"] * d["C"] + d["B"] * d["K"] * d["H"] * d["W"])
        ),
        min_extra_bytes=lambda d, s, bwd: (
            s * d["B"] * d["K"] * d["H"] * d["W"]
            + (s * (d["B"] * d["C"] * d["H"] * d["W"] + d["K"] * d["C"]) if bwd else 0)
        ),
    )


__all__ = ["bench_case"]
