"""Pixel-text cosine similarity op (DenseCLIP score maps, LSeg logits). Reference only until a Triton backend
plugs in here."""

from __future__ import annotations

from torch import Tensor

from vltk_kernels.pixel_text_similarity.reference import pixel_text_similarity_reference


def pixel_text_similarity(pixels: Tensor, texts: Tensor, temperature: float | None = None) -> Tensor:
    """Cosine similarity ``[B, K, H, W]`` — see :func:`pixel_text_similarity_reference`."""
    return pixel_text_similarity_reference(pixels, texts, temperature)


__all__ = ["pixel_text_similarity", "pixel_text_similarity_reference"]
