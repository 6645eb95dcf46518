"""The ``dinov2`` backbone: timm's DINOv2 ``VisionTransformer`` behind the same block-hook/pyramid contract as eva02.

Rein's strongest backbone is DINOv2-L run at patch 16 rather than its native 14 (paper notes §1.5, §6), with
the pretrained 14x14 patch kernel converted to 16x16 and the 37x37 position grid to 32x32 (512 crops). Here the
model is built by timm (``vit_*_patch14_dinov2`` architectures, ``pretrained=False``, ``dynamic_img_size=True``
so any input that is a whole number of patches works) with the patch size and grid of
:class:`~vltk_plugins.backbones.dinov2.options.Dinov2Options`; the conversion happens when a local file is
loaded, through the loader the open_clip backbones use (:mod:`vltk_plugins.common.weights`), as
``patch_resample`` says: ``rein`` (default) resizes kernel and grid with plain bicubic ``F.interpolate`` (no
antialias), exactly Rein's ``convert_dinov2`` script, so Rein's released adapters and heads see the features
they were trained on; ``flexi`` uses FlexiViT's pseudo-inverse kernel resize (timm's ``resample_patch_embed``)
and an antialiased bicubic grid (timm's ``resample_abs_pos_embed``). Meta's files (``mask_token``,
``register_tokens``, block chunks, the giant's SwiGLU names), timm's, Rein's converted one, this backbone's own
(``trunk.*``) and mmseg checkpoints (``backbone.*``) are recognised and renamed onto timm's keys. The block
loop, hooks and the pyramid are :class:`~vltk_plugins.common.vit.TokenBackbone`'s: blocks are timm's own,
nothing is re-implemented.

Register tokens (DINOv2-reg) are hidden from hooks: adapters see ``[cls, patches]`` exactly as for the other
backbones, the registers go through every block in their usual place right after the cls token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from vltk.api import BuildContext, UserError, coerce_options
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.common.attention import install_attention
from vltk_plugins.common.vit import TokenBackbone
from vltk_plugins.common.weights import WeightSpec, load_pretrained_or_warn

#: ImageNet normalisation, which DINOv2 was trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: variant -> (timm architecture, keyword overrides). ``tiny`` keeps DINOv2's block design (LayerScale 1e-5,
#: GELU MLP) at a size that builds and runs in milliseconds.
DINOV2_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("vit_small_patch14_dinov2", {"embed_dim": 192, "depth": 4, "num_heads": 3}),
    "small": ("vit_small_patch14_dinov2", {}),
    "base": ("vit_base_patch14_dinov2", {}),
    "large": ("vit_large_patch14_dinov2", {}),
    "giant": ("vit_giant_patch14_dinov2", {}),
}


class Dinov2Backbone(TokenBackbone):
    """DINOv2 ViT (timm ``VisionTransformer``); hooks after every block, pyramid from the pre-norm patch tokens.

    The timm model is the registered submodule ``trunk``; its final ``norm`` is kept (for checkpoints) but not
    used by the pyramid, exactly as Rein takes ``x[:, 1:]`` before the norm.
    """

    def __init__(self, trunk: nn.Module, *, out_indices: Sequence[int] | None, label: str) -> None:
        if trunk.cls_token is None or not trunk.dynamic_img_size:
            raise ValueError(f"{label}: expected a timm VisionTransformer with a cls token and dynamic_img_size")
        super().__init__(
            embed_dim=trunk.embed_dim,
            num_layers=len(trunk.blocks),
            patch_size=trunk.patch_embed.patch_size[0],
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            out_indices=out_indices,
            label=label,
        )
        self.trunk = trunk
        self.num_hidden_tokens = int(trunk.num_reg_tokens)
        self.text_dim = None

    def _blocks(self) -> Sequence[nn.Module]:
        return self.trunk.blocks

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        trunk = self.trunk
        tokens = trunk.patch_embed(x)  # NHWC in dynamic mode
        tokens = trunk._pos_embed(tokens)  # position grid resampled to this input, cls (+ registers) prepended
        return trunk.norm_pre(trunk.patch_drop(tokens)), None

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        return block(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, registers={self.num_hidden_tokens}"


# ------------------------------------------------------------------------------------------------------ weights
def _check_registers(state: Mapping[str, Tensor], target: Mapping[str, Tensor], path: str, *, label: str) -> None:
    """A file with (without) register tokens for a model without (with) them: say which option fixes it."""
    if ("reg_token" in state) != ("reg_token" in target) and any(key.startswith("blocks.") for key in state):
        kind, fix = ("with", "registers=4") if "reg_token" in state else ("without", "registers=0")
        raise UserError(f"{label}: '{path}' holds a DINOv2 {kind} register tokens; set {fix}")


def dinov2_weight_spec(options: Dinov2Options, trunk: nn.Module) -> WeightSpec:
    """How files load into the timm ``trunk`` built from ``options`` (layouts, kernel and grid, conversion)."""
    label = _label(options)
    return WeightSpec(
        backbone="dinov2",
        variant=options.variant,
        label=label,
        what="DINOv2 checkpoint",
        patch_key="patch_embed.proj.weight",
        pos_key="pos_embed",
        grid=tuple(trunk.patch_embed.grid_size),
        num_prefix_tokens=0 if trunk.no_embed_class else trunk.num_prefix_tokens,
        patch_resample=options.patch_resample,
        validate=partial(_check_registers, label=label),
    )


def _label(options: Dinov2Options) -> str:
    return f"dinov2 ({options.variant}{', reg4' if options.registers else ''})"


def dinov2_weight_target(options: Dinov2Options) -> tuple[dict[str, Tensor], WeightSpec]:
    """The timm state dict (meta tensors: names and shapes only) and spec of ``options``, for ``vltk convert``."""
    import torch

    with torch.device("meta"):
        trunk = build_trunk(options, initialise=False)
    return trunk.state_dict(), dinov2_weight_spec(options, trunk)


# ---------------------------------------------------------------------------------------------------- builder
def build_trunk(options: Dinov2Options, *, initialise: bool = True) -> nn.Module:
    """The timm ``VisionTransformer`` of ``options`` with random weights (nothing downloaded).

    ``initialise=False`` skips timm's weight init (seconds for ViT-L on CPU) when a file overwrites every weight.
    """
    import timm

    architecture, overrides = DINOV2_VARIANTS[options.variant]
    if options.registers:
        architecture = architecture.replace("_patch14_dinov2", "_patch14_reg4_dinov2")
    return timm.create_model(
        architecture,
        pretrained=False,
        patch_size=options.patch_size,
        img_size=options.grid_side() * options.patch_size,
        dynamic_img_size=True,
        num_classes=0,
        drop_path_rate=options.drop_path_rate,
        weight_init="" if initialise else "skip",
        **overrides,
    )


def build_dinov2(options: Dinov2Options, context: BuildContext | None = None) -> Dinov2Backbone:
    """Build the ``dinov2`` backbone (``options`` may also be a mapping or None); ``context`` is not needed."""
    options = coerce_options(options, Dinov2Options, "dinov2")
    label = _label(options)
    trunk = build_trunk(options, initialise=options.pretrained is None)
    load_pretrained_or_warn(trunk, options.pretrained, dinov2_weight_spec(options, trunk))
    backbone = Dinov2Backbone(trunk, out_indices=options.out_indices, label=label)
    install_attention(backbone, options.attention)
    backbone.set_grad_checkpointing(options.grad_checkpointing)
    return backbone


__all__ = [
    "DINOV2_VARIANTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dinov2Backbone",
    "build_dinov2",
    "build_trunk",
    "dinov2_weight_spec",
    "dinov2_weight_target",
]
