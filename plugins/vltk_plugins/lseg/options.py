"""Options of the ``lseg`` decoder (LSeg, Li et al., ICLR 2022). No torch import: ``hooks.py`` registers these.

The decoder's size does not depend on the label set: the number of outputs follows the text embeddings a prompter
hands it, so one checkpoint serves any list of labels at inference.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vltk.api import Options

#: LSeg's fixed logit scale is ``1 / TEMPERATURE`` (``exp(log(1/0.07))``, not learned).
TEMPERATURE = 0.07


class LSegOptions(Options):
    """Knobs of the LSeg head: DPT-like fusion width, output stride, spatial-regularisation blocks, loss weight."""

    width: int = Field(
        256,
        gt=0,
        description=(
            "Channels of the fusion path (LSeg/DPT `features`=256). Each pyramid level is projected to this width by "
            "a 3x3 conv, then fused coarse-to-fine by residual conv units; a 1x1 conv maps to the text dimension."
        ),
    )
    norm: Literal["bn", "none"] = Field(
        "bn", description="Normalisation inside the residual conv units: 'bn' (LSeg uses DPT with BatchNorm) or none."
    )
    output_stride: Literal[2, 4] = Field(
        2,
        description=(
            "Stride of the pixel embeddings and logits: 2 as LSeg (the last fusion block upsamples x2 to H/2), or 4 "
            "to skip that upsampling (4x less memory for the K-channel logits; useful with many labels)."
        ),
    )
    num_spatial_blocks: int = Field(
        0,
        ge=0,
        le=2,
        description=(
            "How many times LSeg's spatial-regularisation block runs on the logits (paper `block_depth`; 0 = off). "
            "The block's one 3x3 conv is shared by every label channel and every repetition (as LSeg's code), so "
            "the head stays equivariant to the order of the labels. The paper's best: 2 bottleneck blocks."
        ),
    )
    spatial_block: Literal["bottleneck", "depthwise"] = Field(
        "bottleneck",
        description=(
            "bottleneck: shared 3x3 conv per label channel + the max over labels added back; depthwise: the shared "
            "conv only. Each repetition but the last is followed by the activation."
        ),
    )
    activation: Literal["lrelu", "tanh", "relu"] = Field(
        "lrelu", description="Activation between spatial-regularisation blocks (LSeg's default: leaky ReLU)."
    )
    loss_weight: float = Field(1.0, ge=0.0, description="Multiplier of the per-pixel cross-entropy ('loss_ce').")


__all__ = ["TEMPERATURE", "LSegOptions"]
