"""Options of the ``lseg`` decoder (LSeg, Li et al., ICLR 2022). No torch import: ``hooks.py`` registers these.

The decoder's size does not depend on the label set: the number of outputs follows the text embeddings a prompter
hands it, so one checkpoint serves any list of labels at inference.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vltk.api import Options
from vltk_plugins.common.vit_options import (
    ATTENTION_HELP,
    GRAD_CHECKPOINTING_HELP,
    AttentionChoice,
    check_out_indices,
)

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
    reassemble: Literal["none", "dpt"] = Field(
        "none",
        description=(
            "none: the backbone's own 4-level pyramid goes straight into the 3x3 'scratch' convs (any vltk "
            "backbone). dpt: LSeg's image path, DPT's reassemble stage: the backbone hands over the hooked "
            "blocks' tokens at the patch stride (backbone lseg-vit with pyramid=dpt), each level gets the readout, "
            "a 1x1 conv to its reassemble width and a resampling to stride 4/8/16/32 (ConvTranspose up, 3x3 "
            "stride-2 conv down). What LSeg's releases hold (net.pretrained.act_postprocess1..4)."
        ),
    )
    reassemble_widths: list[int] = Field(
        [256, 512, 1024, 1024],
        description=(
            "Widths of the 4 reassembled levels (reassemble=dpt only): LSeg/DPT use 256/512/1024/1024 on ViT-L/16 "
            "and 96/192/384/768 on ViT-B/32."
        ),
    )
    readout: Literal["project", "add", "ignore"] = Field(
        "project",
        description=(
            "How the cls token enters each reassembled level (reassemble=dpt only), DPT's use_readout: project = "
            "Linear(2C->C)+GELU on [patch, cls] (LSeg's default), add = patch + cls, ignore = patch tokens alone."
        ),
    )

    @field_validator("reassemble_widths")
    @classmethod
    def _four_widths(cls, value: list[int]) -> list[int]:
        if len(value) != 4 or any(width <= 0 for width in value):
            raise ValueError(f"needs 4 positive widths (one per level), got {value}")
        return value


class LSegViTOptions(Options):
    """LSeg's encoder pair: a timm ImageNet ViT for the pixels, the text tower of an OpenAI CLIP for the labels.

    LSeg (isl-org/lang-seg ``lseg_vit.py``) runs DPT on ``vit_large_patch16_384`` (``clip_vitl16_384``) or
    ``vit_base_patch32_384`` (``clip_vitb32_384``) and encodes labels with CLIP ViT-B/32's text tower (RN50x16's
    for ``clipRN50x16_vitl16_384``); CLIP's own image tower is loaded but never run, so it is not built here.
    """

    image_model: Literal["vit_large_patch16_384", "vit_base_patch32_384", "tiny"] = Field(
        "vit_large_patch16_384",
        description=(
            "timm architecture of the image encoder (built without weights): vit_large_patch16_384 (LSeg's "
            "clip_vitl16_384), vit_base_patch32_384 (clip_vitb32_384), or tiny (4 blocks, 32 wide, patch 16, "
            "64x64 grid; tests)."
        ),
    )
    text_model: str = Field(
        "ViT-B-32-quickgelu",
        description=(
            "open_clip config whose text tower encodes the labels: ViT-B-32-quickgelu (OpenAI ViT-B/32, LSeg's "
            "default; 512-d), RN50x16-quickgelu (768-d), or tiny (2 blocks, 64 wide; tests)."
        ),
    )
    image_pretrained: str | None = Field(
        None,
        description=(
            "Path of a timm state dict of image_model (e.g. timm's vit_large_patch16_384 weights, which LSeg starts "
            "from; raw, under 'state_dict'/'model', or .safetensors). Its ImageNet head is ignored. Nothing is "
            "downloaded."
        ),
    )
    text_pretrained: str | None = Field(
        None,
        description=(
            "Path of a CLIP checkpoint whose text tower is loaded (OpenAI's TorchScript archive ViT-B-32.pt, a state "
            "dict saved from it, or an open_clip checkpoint of text_model); its image tower is ignored."
        ),
    )
    pretrained: str | None = Field(
        None,
        description=(
            "Path of a file with this backbone's own state dict (trunk.*, text.*, logit_scale; raw, under "
            "'state_dict'/'model', or with a 'backbone.' prefix as in a vltk checkpoint), loaded after "
            "image_pretrained/text_pretrained. A converted LSeg release already holds it. All three null = random "
            "weights (a warning says so)."
        ),
    )
    pyramid: Literal["resize", "dpt"] = Field(
        "resize",
        description=(
            "resize: vltk's usual parameter-free pyramid at strides 4/8/16/32 (C wide), the Backbone contract every "
            "decoder reads. dpt: LSeg's image path, the 4 hooked blocks' tokens at the patch stride, each patch "
            "token followed by its block's cls token ([B, 2C, H/p, W/p], DPT's readout input), for decoder lseg "
            "with reassemble=dpt only (what a converted LSeg release uses)."
        ),
    )
    out_indices: list[int] | None = Field(
        None,
        description=(
            "The 4 blocks (0-based) feeding the pyramid. null = DPT's hooks: [5, 11, 17, 23] for 24 blocks, "
            "[2, 5, 8, 11] for 12, i.e. the last block of each quarter."
        ),
    )
    attention: AttentionChoice = Field(default="auto", description=ATTENTION_HELP)
    grad_checkpointing: bool = Field(default=False, description=GRAD_CHECKPOINTING_HELP)

    @field_validator("out_indices")
    @classmethod
    def _four_indices(cls, value: list[int] | None) -> list[int] | None:
        return check_out_indices(value)


__all__ = ["TEMPERATURE", "LSegOptions", "LSegViTOptions"]
