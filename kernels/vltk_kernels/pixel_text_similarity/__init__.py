"""Pixel-text cosine similarity op (DenseCLIP score maps, LSeg logits), fused in Triton.

The Triton kernels (``triton.py``) normalise on the fly: no normalised copy of the ``[B, C, H, W]`` pixel
embeddings is ever written. The ``torch`` backend (every CPU run and every fallback) is
:func:`pixel_text_similarity_lean` (``lean.py``), which divides by the norms after the product the same way;
:func:`pixel_text_similarity_reference` is the readable specification both are tested against. The backend
follows :mod:`vltk_kernels._dispatch`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vltk_kernels._dispatch import autocast_inputs, compiling, dtype_problem, select_backend
from vltk_kernels.pixel_text_similarity.lean import pixel_text_similarity_lean
from vltk_kernels.pixel_text_similarity.reference import check_pixel_text_shapes, pixel_text_similarity_reference


def pixel_text_similarity(pixels: Tensor, texts: Tensor, temperature: float | None = None) -> Tensor:
    """Cosine similarity ``[B, K, H, W]`` — see :func:`pixel_text_similarity_reference`.

    ``temperature`` may also be a (learnable) tensor: the fused op then computes the cosines and the division
    happens in PyTorch, so its gradient still flows.
    """
    check_pixel_text_shapes(pixels, texts)
    cast = autocast_inputs(pixels, texts)
    problem = "the input is empty" if pixels.numel() == 0 or texts.numel() == 0 else dtype_problem(*cast)
    if select_backend("pixel_text_similarity", pixels.device, problem) == "torch":
        if compiling():  # the compiler fuses the reference's normalisation itself
            return pixel_text_similarity_reference(pixels, texts, temperature)
        return pixel_text_similarity_lean(pixels, texts, temperature)
    from vltk_kernels.pixel_text_similarity.triton import pixel_text_similarity_triton

    if isinstance(temperature, torch.Tensor):
        return pixel_text_similarity_triton(*cast) / temperature
    return pixel_text_similarity_triton(*cast, temperature)


__all__ = ["pixel_text_similarity", "pixel_text_similarity_lean", "pixel_text_similarity_reference"]
