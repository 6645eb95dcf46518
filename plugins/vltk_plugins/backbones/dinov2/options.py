"""Options of the ``dinov2`` backbone. No torch import: ``hooks.py`` registers this model.

A separate module from the open_clip backbones' options (``backbones/open_clip_vit/options.py``) because DINOv2
is a timm ``VisionTransformer`` rather than an open_clip model: vision-only (no text tower), loaded from Meta's
or timm's state dicts, and run at patch 16 by default as Rein does (the pretrained patch-14 kernel and position
grid are converted when loaded, by default exactly as Rein's conversion script does). The pieces every ViT
backbone shares (``attention``, the ``out_indices`` check) come from :mod:`vltk_plugins.common.vit_options`, the
``patch_resample`` choice (shared with ``eva02``) from :mod:`vltk_plugins.backbones.weight_options`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vltk.api import Options
from vltk_plugins.backbones.weight_options import PATCH_RESAMPLE_HELP, PatchResample
from vltk_plugins.common.vit_options import (
    ATTENTION_HELP,
    GRAD_CHECKPOINTING_HELP,
    AttentionChoice,
    check_out_indices,
)

#: The position-grid side DINOv2 was trained with at patch 14 (518 / 14) and the one Rein converts it to for
#: 512 crops at patch 16 (512 / 16).
NATIVE_GRID_P14 = 37
REIN_GRID_P16 = 32


class Dinov2Options(Options):
    """DINOv2 ViT (timm ``vit_*_patch14_dinov2`` architectures, built without weights, any input size).

    ``tiny`` is a 4-block, 192-wide model with DINOv2's block design (LayerScale 1e-5) for tests and CPU smoke
    runs; ``small``/``base``/``large``/``giant`` are DINOv2's ViT-S/B/L/g. ``large`` is Rein's main backbone.
    """

    variant: Literal["tiny", "small", "base", "large", "giant"] = Field(
        default="tiny",
        description=(
            "Size: tiny (192 wide, 4 blocks, 3 heads; tests/CPU), small (384, 12), base (768, 12), "
            "large (1024, 24; Rein's DINOv2-L), giant (1536, 40, SwiGLU; DINOv2 ViT-g)."
        ),
    )
    pretrained: str | None = Field(
        default=None,
        description=(
            "Path of a local DINOv2 state dict: Meta's release (e.g. dinov2_vitl14_pretrain.pth, with or "
            "without registers, block chunks too), Rein's converted file (dinov2_converted.pth), a timm state "
            "dict, this backbone's own or an mmseg checkpoint with it under 'backbone.'; raw or under "
            "'state_dict'/'model'/'module', .safetensors also works. Patch-14 weights are converted to "
            "patch_size (kernel and position grid, see patch_resample). null = random weights (a warning says "
            "so). Nothing is downloaded."
        ),
    )
    out_indices: list[int] | None = Field(
        default=None,
        description=(
            "The 4 blocks (0-based, negative counts from the end) whose patch tokens become the stride "
            "4/8/16/32 maps. null = Rein's choice generalised to L blocks: [L//3-1, L//2-1, 2L//3-1, L-1], "
            "i.e. [7, 11, 15, 23] for ViT-L."
        ),
    )
    patch_size: Literal[14, 16] = Field(
        default=16,
        description=(
            "Patch size. 16 (default) is Rein's setting: DINOv2's patch-14 kernel and its 37x37 position grid are "
            "converted when the weights are loaded, as patch_resample says (by default plain bicubic, exactly "
            "Rein's convert_dinov2). 14 keeps DINOv2's own patch embedding."
        ),
    )
    image_size: int | None = Field(
        default=None,
        ge=16,
        le=4096,
        description=(
            "Image size the stored position grid is built for (side = image_size / patch_size); other input "
            "sizes resample it on the fly. null = 518 at patch 14 (DINOv2's 37x37 grid) and 512 at patch 16 "
            "(Rein's 32x32 conversion for 512 crops; use 1024 for its 1024 setting)."
        ),
    )
    registers: Literal[0, 4] = Field(
        default=0,
        description=(
            "Register tokens (DINOv2 with registers, Darcet et al. 2024): 4 for the '*_reg4' weights. They run "
            "through every block but adapters never see them (hooks get [cls, patches])."
        ),
    )
    patch_resample: PatchResample = Field(default="rein", description=PATCH_RESAMPLE_HELP)
    drop_path_rate: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Stochastic depth rate of the blocks (timm's linear decay over depth); matters only for training.",
    )
    attention: AttentionChoice = Field(default="auto", description=ATTENTION_HELP)
    grad_checkpointing: bool = Field(default=False, description=GRAD_CHECKPOINTING_HELP)

    @field_validator("out_indices")
    @classmethod
    def _four_indices(cls, value: list[int] | None) -> list[int] | None:
        return check_out_indices(value)

    @model_validator(mode="after")
    def _whole_grid(self) -> Dinov2Options:
        if self.image_size is not None and self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; e.g. "
                f"{self.image_size // self.patch_size * self.patch_size}"
            )
        return self

    def grid_side(self) -> int:
        """Side of the stored position grid (37 at patch 14, 32 at patch 16 unless ``image_size`` says)."""
        if self.image_size is not None:
            return self.image_size // self.patch_size
        return NATIVE_GRID_P14 if self.patch_size == 14 else REIN_GRID_P16


__all__ = ["Dinov2Options"]
