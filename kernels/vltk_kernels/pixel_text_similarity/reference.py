"""Reference (pure PyTorch, differentiable) for the pixel-text cosine similarity: the specification a kernel must
match. DenseCLIP's score maps and LSeg's logits are this op (LSeg with the fixed temperature 0.07)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_pixel_text_shapes(pixels: Tensor, texts: Tensor) -> None:
    """Raise ``ValueError`` naming the shapes unless pixels are ``[B,C,H,W]`` and texts ``[K,C]`` or ``[B,K,C]``."""
    if pixels.dim() != 4 or texts.dim() not in (2, 3):
        raise ValueError(
            f"expected pixels [B,C,H,W] and texts [K,C] or [B,K,C]; got {tuple(pixels.shape)}, {tuple(texts.shape)}"
        )
    if texts.shape[-1] != pixels.shape[1] or (texts.dim() == 3 and texts.shape[0] != pixels.shape[0]):
        raise ValueError(
            f"shape mismatch: pixels {tuple(pixels.shape)} and texts {tuple(texts.shape)} "
            "(channels must agree; a 3-d texts tensor needs the same batch size)"
        )


def pixel_text_similarity_reference(pixels: Tensor, texts: Tensor, temperature: float | None = None) -> Tensor:
    """Cosine similarity of every pixel embedding with every text embedding.

    pixels ``[B, C, H, W]``, texts ``[K, C]`` (shared by the batch) or ``[B, K, C]`` (per image, e.g. DenseCLIP's
    context-refined prompts) -> ``[B, K, H, W]``, divided by ``temperature`` when given. Both sides are
    L2-normalised with ``F.normalize`` (eps 1e-12), so a zero vector gives similarity 0, not NaN.
    """
    check_pixel_text_shapes(pixels, texts)
    pixels = F.normalize(pixels, dim=1)
    texts = F.normalize(texts, dim=-1)
    if texts.dim() == 2:
        scores = torch.einsum("bchw,kc->bkhw", pixels, texts)
    else:
        scores = torch.einsum("bchw,bkc->bkhw", pixels, texts)
    if temperature is not None:
        scores = scores / temperature
    return scores
