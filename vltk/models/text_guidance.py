"""Text guidance as paper-agnostic parts: the concatenation of the pixel-text score map to a pyramid level and the
auxiliary pixel-text loss (DenseCLIP, Rao et al. 2022, §3.3-3.4; notes: shared/papers/denseclip_lseg_vltseg.md §A.2,
§A.6).

The score map itself is the prompter's (:meth:`vltk.interfaces.Prompter.score_map`): computing it calls a fused op,
and the core never imports the kernels. Any decoder gets text guidance without changes:
:class:`~vltk.models.DensePredictor` appends the K-channel score map to one level and the pipeline widens that
level's entry of the decoders' ``in_channels`` by K; the loss is added beside the decoder's own. The score map is a
cosine similarity in [-1, 1] (no temperature before concatenation, as DenseCLIP's segmentation code); the loss and
open-vocabulary logits divide it by τ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vltk.models.losses import logits_at_label_size


def concat_score_map(levels: Sequence[Tensor], scores: Tensor, index: int) -> list[Tensor]:
    """A new pyramid with ``scores`` appended to ``levels[index]`` along channels (bilinearly resized to that level
    when sizes differ, e.g. a patch-14 ViT whose grid is not the stride-16 level's size)."""
    levels = list(levels)
    level = levels[index]
    if scores.shape[-2:] != level.shape[-2:]:
        scores = F.interpolate(scores, size=level.shape[-2:], mode="bilinear", align_corners=False)
    levels[index] = torch.cat([level, scores.to(level.dtype)], dim=1)
    return levels


def pixel_text_loss(scores: Tensor, labels: Tensor, *, temperature: float, ignore_index: int = 255) -> Tensor:
    """Cross-entropy of ``scores / temperature`` (bilinearly upsampled to ``labels`` ``[B, H, W]``) — DenseCLIP's
    identity head. Averaged over **all** pixels, ignored ones counting as 0 (mmseg's default, like ``fpn``'s loss),
    so a fully ignored batch gives exactly 0."""
    logits, labels = logits_at_label_size(scores / temperature, labels)
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return per_pixel.mean()


def widen_in_channels(in_channels: Sequence[int], index: int | None, num_classes: int) -> list[int]:
    """Decoder input widths once a K-channel score map is appended to level ``index`` (None: unchanged)."""
    widths = [int(width) for width in in_channels]
    if index is not None:
        if not 0 <= index < len(widths):
            raise ValueError(f"score_concat_index {index} is not a pyramid level (0..{len(widths) - 1})")
        widths[index] += int(num_classes)
    return widths


__all__ = ["concat_score_map", "pixel_text_loss", "widen_in_channels"]
