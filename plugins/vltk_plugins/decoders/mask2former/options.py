"""Options of the ``mask2former`` decoder (pixel decoder + masked-attention transformer decoder + set loss).

Kept apart from the modules so the entry-point ``hooks.py`` imports it without torch. Defaults are the Mask2Former
head of Rein's configs (mmdet ``MSDeformAttnPixelDecoder`` + ``Mask2FormerTransformerDecoder``, 20.6M parameters
with four 1024-wide inputs and 19 classes); a tiny CPU recipe shrinks them, e.g. ``hidden_dim=64 enc_layers=2
dec_layers=3 num_points=1024``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vltk.api import Options

#: GroupNorm groups in the pixel decoder's convolutions (``dict(type="GN", num_groups=32)`` upstream).
GN_GROUPS = 32
#: Pyramid levels the deformable encoder and the transformer decoder use: strides 8/16/32 (fixed, as upstream).
NUM_FEATURE_LEVELS = 3


class Mask2FormerOptions(Options):
    """Knobs of Mask2Former. The pipeline supplies ``in_channels``, ``num_classes``, ``ignore_index`` and, when
    the adapter links its tokens to the decoder (Rein), ``query_dims``."""

    hidden_dim: int = Field(
        256,
        gt=0,
        description=(
            "Width of every decoder layer (pixel decoder, mask features, queries). Must be divisible by num_heads "
            "and by 32 (GroupNorm). With Rein's query link it must equal adapter.query_dims."
        ),
    )
    num_queries: int = Field(
        100,
        gt=0,
        description=(
            "Number of learned queries (query_feat/query_embed). Ignored when the adapter supplies queries: then the "
            "number of queries is the adapter's token count (Rein's token_length)."
        ),
    )
    num_heads: int = Field(8, gt=0, description="Attention heads of the deformable encoder and of the decoder.")
    enc_layers: int = Field(
        6, ge=0, description="Multi-scale deformable-attention encoder layers in the pixel decoder (0 = none)."
    )
    enc_ffn: int = Field(1024, gt=0, description="Hidden width of the encoder layers' feed-forward network.")
    enc_points: int = Field(
        4, gt=0, description="Sampling points per head and per level in each deformable-attention layer."
    )
    dec_layers: int = Field(
        9,
        gt=0,
        description=(
            "Transformer decoder layers (masked cross-attention cycling over strides 32/16/8, self-attention, FFN)."
        ),
    )
    dec_ffn: int = Field(2048, gt=0, description="Hidden width of the decoder layers' feed-forward network.")
    num_points: int = Field(
        12544,
        gt=0,
        description="Points sampled per mask for the matching costs and the mask losses (112x112 upstream).",
    )
    oversample_ratio: float = Field(
        3.0,
        ge=1.0,
        description="The loss draws num_points * oversample_ratio random candidates and keeps the most uncertain.",
    )
    importance_sample_ratio: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction of the loss points taken from the most uncertain candidates (|logit| smallest); the rest are "
            "uniformly random."
        ),
    )
    class_weight: float = Field(
        2.0, ge=0.0, description="Weight of the classification loss (cross-entropy) and of the class matching cost."
    )
    mask_weight: float = Field(
        5.0, ge=0.0, description="Weight of the sigmoid binary cross-entropy mask loss and matching cost."
    )
    dice_weight: float = Field(
        5.0, ge=0.0, description="Weight of the dice loss and matching cost (naive dice, eps 1)."
    )
    no_object_weight: float = Field(
        0.1,
        ge=0.0,
        description="Cross-entropy weight of the extra 'no object' class (every real class weighs 1).",
    )
    ignore_mode: Literal["background", "exclude"] = Field(
        "background",
        description=(
            "What ignored pixels (ignore_index, 255) mean to the mask losses and matching costs. background: they "
            "are background of every class mask, as mmseg/mmdet's Mask2Former (and so Rein) train: every query "
            "learns 'not here' on them. exclude: they carry no label; each sample point is weighted by the share "
            "of labelled pixels around it and its target averages the labelled ones only (vltk's earlier rule)."
        ),
    )
    target_padding: Literal["auto", "zeros", "border"] = Field(
        "auto",
        description=(
            "How target masks are sampled at points within half a pixel of the image edge. zeros: zero padding as "
            "mmcv's point_sample (a class touching the edge fades towards 0.25 in the corners); border: edge "
            "clamped. auto: zeros with ignore_mode=background, border with exclude (together exactly vltk's "
            "earlier behaviour)."
        ),
    )
    deep_supervision: bool = Field(
        True,
        description=(
            "Apply the loss to the prediction before the first decoder layer and after every layer (terms "
            "d0.loss_cls, ...), not only to the last one."
        ),
    )

    grad_checkpointing: bool = Field(
        False,
        description=(
            "Activation checkpointing: recompute every deformable encoder layer and every transformer decoder layer "
            "in the backward pass instead of keeping their activations (torch.utils.checkpoint, non-reentrant). "
            "Same gradients, less training memory, more compute."
        ),
    )

    @model_validator(mode="after")
    def _check_widths(self) -> Mask2FormerOptions:
        """Fail at configuration time with the option's name, not deep inside a layer constructor."""
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must be divisible by num_heads={self.num_heads} "
                "(each head gets hidden_dim / num_heads channels)"
            )
        if self.hidden_dim % GN_GROUPS:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must be divisible by {GN_GROUPS}: the pixel decoder uses "
                f"GroupNorm with {GN_GROUPS} groups (try 64, 128 or 256)"
            )
        return self


__all__ = ["GN_GROUPS", "NUM_FEATURE_LEVELS", "Mask2FormerOptions"]
