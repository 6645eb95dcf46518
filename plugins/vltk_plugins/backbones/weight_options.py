"""Option pieces of the ViT backbones that convert pre-trained weights (``dinov2``, ``eva02``). No torch import.

Both run patch-14 checkpoints at patch 16 as Rein does, so both offer the same choice of conversion,
implemented once in :mod:`vltk_plugins.common.weights.resample`; options modules are imported when plugins load
(``vltk --help``), so the choice and its help text live here, free of torch.
"""

from __future__ import annotations

from typing import Literal

#: The ``patch_resample`` option (the modes of ``vltk_plugins.common.weights.resample``).
PatchResample = Literal["rein", "flexi"]

#: Its help text, shown by ``vltk show backbone dinov2`` / ``eva02``.
PATCH_RESAMPLE_HELP = (
    "How a checkpoint with another patch size or position grid is converted on load. rein (default): exactly "
    "Rein's conversion scripts, plain bicubic F.interpolate without antialias of the patch kernel (resized as an "
    "image) and of the position grid, i.e. the features Rein's released adapters and heads were trained on (a "
    "constant patch embeds (16/14)^2 larger than at patch 14). flexi: FlexiViT's pseudo-inverse resize of the "
    "kernel (timm resample_patch_embed, keeps patch embeddings) and an antialiased bicubic grid (timm "
    "resample_abs_pos_embed)."
)

__all__ = ["PATCH_RESAMPLE_HELP", "PatchResample"]
