"""Loss plumbing shared by every dense decoder (FPN, LSeg, Mask2Former, DenseCLIP's pixel-text loss).

Decoders predict at their own stride while labels come at image size, sometimes with a channel axis. Bringing
the two together the same way everywhere (mmseg's convention: labels ``[B, H, W]``, logits bilinearly upsampled
with ``align_corners=False``) keeps the losses of different heads comparable.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def as_label_map(targets: Tensor) -> Tensor:
    """Labels as ``[B, H, W]`` int64; a ``[B, 1, H, W]`` map is squeezed, any other shape is an error."""
    if targets.dim() == 4 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.dim() != 3:
        raise ValueError(f"targets must be [B, H, W] class indices, got shape {tuple(targets.shape)}")
    return targets.long()


def logits_at_label_size(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits [B, K, H, W], labels [B, H, W])`` with the logits bilinearly upsampled to the labels' size."""
    targets = as_label_map(targets)
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits, targets


__all__ = ["as_label_map", "logits_at_label_size"]
