"""Options of the ``eva02`` and ``clip-vit`` backbones. No torch import: ``hooks.py`` registers these models.

Both backbones wrap open_clip models (EVA02-CLIP through open_clip's timm tower, CLIP through open_clip's own
``VisionTransformer``) and share the knobs that decide what gets built and loaded: the weights file, the blocks
that feed the pyramid and the patch size. Whether a name such as ``model="ViT-B-16"`` exists is checked when the
backbone is built (that needs open_clip, hence torch), with a did-you-mean error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vltk.api import Options
from vltk_plugins.backbones.weight_options import PATCH_RESAMPLE_HELP, PatchResample
from vltk_plugins.common.vit_options import (
    ATTENTION_HELP,
    GRAD_CHECKPOINTING_HELP,
    AttentionChoice,
    check_out_indices,
)

_FILES = (
    "torch.save'd state dict, raw or under 'state_dict'/'model'/'module', .safetensors, or an mmseg checkpoint "
    "with the backbone under 'backbone.'"
)
_EVA02_PRETRAINED_HELP = (
    "Path of a local EVA02 weights file: open_clip's EVA02 (timm tower), BAAI's EVA02-CLIP release "
    "(EVA02_CLIP_L_psz14_s4B.pt), BAAI's EVA02 MIM release (eva02_L_pt_m38m_p14to16.pt) or Rein's "
    f"eva02_L_converted.pth made from it, or a timm Eva state dict ({_FILES}). Files without a text tower or "
    "image-text projection leave those random, with a warning. null = random weights (a warning says so). "
    "Nothing is downloaded."
)
_CLIP_PRETRAINED_HELP = (
    "Path of a local CLIP weights file: an open_clip checkpoint, OpenAI's TorchScript archive (ViT-B-16.pt) or "
    f"a state dict saved from it ({_FILES}). A vision-only file (e.g. a saved backbone) is accepted too; the "
    "text tower then stays random with a warning. null = random weights (a warning says so). Nothing is "
    "downloaded."
)
_OUT_INDICES_HELP = (
    "The 4 blocks (0-based, negative counts from the end) whose patch tokens become the stride 4/8/16/32 "
    "maps. null = Rein's choice generalised to L blocks: [L//3-1, L//2-1, 2L//3-1, L-1], i.e. [7, 11, 15, 23] "
    "for 24 blocks and [3, 5, 7, 11] for 12."
)
_PATCH_HELP = (
    "Patch size of the patch embedding. null = the variant's own ({own}). A checkpoint with another patch "
    "size is converted at load time (patch kernel and position grid resampled), which is how Rein runs its "
    "backbones at patch 16."
)


class Eva02Options(Options):
    """EVA02-CLIP ViT. ``tiny``/``small`` are timm's EVA02 tiny/small architectures at patch 16 with a small
    random text tower (no released CLIP weights: for tests and CPU recipes); ``base``/``large`` are open_clip's
    ``EVA02-B-16`` / ``EVA02-L-14`` and load the released open_clip checkpoints."""

    variant: Literal["tiny", "small", "base", "large"] = Field(
        default="tiny",
        description=(
            "Size: tiny (192 wide, 12 blocks), small (384, 12), base (768, 12; open_clip EVA02-B-16), "
            "large (1024, 24; open_clip EVA02-L-14, the Rein EVA02-L backbone)."
        ),
    )
    pretrained: str | None = Field(default=None, description=_EVA02_PRETRAINED_HELP)
    out_indices: list[int] | None = Field(default=None, description=_OUT_INDICES_HELP)
    patch_size: int | None = Field(default=None, ge=4, le=32, description=_PATCH_HELP.format(own="16; 14 for large"))
    image_size: int | None = Field(
        default=None,
        ge=16,
        le=4096,
        description=(
            "Image size the stored position grid is built for (side = image_size / patch size); other input "
            "sizes resample it on the fly. null = 224, the grid of the released weights. Rein's EVA02-L setting "
            "is patch_size=16 image_size=512, the 32x32 grid of its eva02_L_converted.pth (loaded as it is)."
        ),
    )
    patch_resample: PatchResample = Field(default="rein", description=PATCH_RESAMPLE_HELP)
    drop_path_rate: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Stochastic depth rate of the timm blocks (linear decay over depth); Rein uses 0.2 for EVA02-L.",
    )
    attention: AttentionChoice = Field(default="auto", description=ATTENTION_HELP)
    grad_checkpointing: bool = Field(default=False, description=GRAD_CHECKPOINTING_HELP)

    @field_validator("out_indices")
    @classmethod
    def _four_indices(cls, value: list[int] | None) -> list[int] | None:
        return check_out_indices(value)


class ClipViTOptions(Options):
    """CLIP ViT from any open_clip config with a native ``VisionTransformer`` image tower and a native text tower
    (``ViT-B-16``, ``ViT-L-14``, ``ViT-L-14-quickgelu`` for OpenAI weights...), or the built-in ``tiny`` one.
    open_clip's ViT has no stochastic depth, hence no ``drop_path_rate`` here."""

    model: str = Field(
        default="ViT-B-16",
        description=(
            "open_clip model config name (see open_clip.list_models()); use the '-quickgelu' names with OpenAI "
            "weights. Ignored by variant=tiny."
        ),
    )
    variant: Literal["tiny"] | None = Field(
        default=None,
        description=(
            "tiny = a built-in 4-block, 64-wide, patch-16 CLIP with a 2-block text tower that builds in "
            "milliseconds (tests, smoke runs); null = build `model`."
        ),
    )
    pretrained: str | None = Field(default=None, description=_CLIP_PRETRAINED_HELP)
    out_indices: list[int] | None = Field(default=None, description=_OUT_INDICES_HELP)
    patch_size: int | None = Field(default=None, ge=4, le=32, description=_PATCH_HELP.format(own="from the config"))
    attention: AttentionChoice = Field(default="auto", description=ATTENTION_HELP)
    grad_checkpointing: bool = Field(default=False, description=GRAD_CHECKPOINTING_HELP)

    @field_validator("out_indices")
    @classmethod
    def _four_indices(cls, value: list[int] | None) -> list[int] | None:
        return check_out_indices(value)


__all__ = ["ClipViTOptions", "Eva02Options"]
