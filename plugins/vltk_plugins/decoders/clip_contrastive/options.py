"""Options of the ``clip-contrastive`` pretraining head (light: pydantic only, ``hooks.py`` imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vltk.api import Options


class ClipContrastiveOptions(Options):
    """Which contrastive loss, and the weights of the dense objectives trained beside it."""

    loss: Literal["clip", "siglip"] = Field(
        "clip",
        description="clip: open_clip's ClipLoss (softmax InfoNCE both ways); siglip: open_clip's SigLipLoss (sigmoid).",
    )
    align_weight: float = Field(
        1.0,
        ge=0.0,
        description=(
            "Weight of the patch-word alignment loss (FILIP-style token-wise max): for every countable object "
            "class, the best-matching patch's similarity to the class word must say whether the caption's scene "
            "shows it (binary cross-entropy). Trains the dense patch embeddings; 0 = off."
        ),
    )
    mim_weight: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Weight of masked image modelling (SimMIM-style pixel targets): mask_ratio of the patches are blanked "
            "in the input and a linear layer predicts their normalised pixels from the patch embeddings (L1). "
            "The contrastive and alignment losses then see the masked images too (FLIP). 0 = off."
        ),
    )
    mask_ratio: float = Field(0.4, gt=0.0, lt=1.0, description="Fraction of patches masked when mim_weight > 0.")


__all__ = ["ClipContrastiveOptions"]
