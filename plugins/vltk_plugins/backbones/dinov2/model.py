"""The ``dinov2`` backbone: timm's DINOv2 ``VisionTransformer`` behind the same block-hook/pyramid contract as eva02.

Rein's strongest backbone is DINOv2-L run at patch 16 rather than its native 14 (paper notes §1.5, §6), with
the pretrained 14x14 patch kernel converted to 16x16 and the 37x37 position grid to 32x32 (512 crops). Here the
model is built by timm (``vit_*_patch14_dinov2`` architectures, ``pretrained=False``, ``dynamic_img_size=True``
so any input that is a whole number of patches works) with the patch size and grid of
:class:`~vltk_plugins.backbones.dinov2.options.Dinov2Options`; the conversion happens when a local file is
loaded, through the helpers the open_clip backbones use (:func:`vltk_plugins.common.weights.resample_spatial`):
the kernel by FlexiViT's pseudo-inverse resize (timm's ``resample_patch_embed``), the position grid by an
antialiased bicubic resize (timm's ``resample_abs_pos_embed``). The block loop, hooks and the pyramid are
:class:`~vltk_plugins.common.vit.TokenBackbone`'s: blocks are timm's own, nothing is re-implemented.

Register tokens (DINOv2-reg) are hidden from hooks: adapters see ``[cls, patches]`` exactly as for the other
backbones, the registers go through every block in their usual place right after the cls token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from vltk.api import BuildContext, UserError, coerce_options
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.common.attention import install_attention
from vltk_plugins.common.vit import TokenBackbone
from vltk_plugins.common.weights import check_fit, read_state_dict, resample_spatial, warn_random

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

_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")  # Meta's block_chunks>0 layout: blocks.<chunk>.<index>.
_SWIGLU_NAMES = {"mlp.w12.": "mlp.fc1.", "mlp.w3.": "mlp.fc2."}  # Meta's giant SwiGLU -> timm's SwiGLUPacked


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
def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """This backbone's own state dict (``trunk.*``) or an mmseg-style backbone-only one (``backbone.*``)."""
    for prefix in ("trunk.", "backbone."):
        if all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def convert_meta_state_dict(state: Mapping[str, Tensor], *, no_embed_class: bool) -> dict[str, Tensor]:
    """Meta's DINOv2 key layout -> timm's (a timm state dict passes through unchanged).

    Meta's files carry a ``mask_token`` (iBOT masking, unused for inference), name the registers
    ``register_tokens``, may store blocks in chunks and call the giant's SwiGLU layers ``w12``/``w3``. Meta adds
    the cls position to the cls token inside the model; timm's register models (``no_embed_class``) keep no cls
    position, so for those it is folded into ``cls_token`` here, which gives the same first-block input.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        for old, new in _SWIGLU_NAMES.items():
            key = key.replace(old, new)
        converted["reg_token" if key == "register_tokens" else key] = value
    positions, cls = converted.get("pos_embed"), converted.get("cls_token")
    if no_embed_class and "register_tokens" in state and positions is not None and cls is not None:
        converted["cls_token"] = cls + positions[:, :1]
        converted["pos_embed"] = positions[:, 1:]
    return converted


def load_dinov2_weights(trunk: nn.Module, path: str, *, label: str) -> None:
    """Load a local DINOv2 file into the timm ``trunk``, converting layout, patch size and position grid.

    Shape differences other than the patch kernel and the (square) position grid, unknown keys and missing keys
    raise :class:`UserError` naming the key and what to check.
    """
    what = "DINOv2 checkpoint"
    state = _strip_prefix(read_state_dict(path, label, what))
    state = convert_meta_state_dict(state, no_embed_class=bool(trunk.no_embed_class))
    target = trunk.state_dict()
    has_registers = "reg_token" in target
    if ("reg_token" in state) != has_registers and any(key.startswith("blocks.") for key in state):
        kind, fix = ("with", "registers=4") if "reg_token" in state else ("without", "registers=0")
        raise UserError(f"{label}: '{path}' holds a DINOv2 {kind} register tokens; set {fix}")
    resample_spatial(
        state,
        target,
        "patch_embed.proj.weight",
        "pos_embed",
        tuple(trunk.patch_embed.grid_size),
        label,
        num_prefix_tokens=0 if trunk.no_embed_class else trunk.num_prefix_tokens,
    )
    missing = check_fit(state, target, path=path, label=label)
    if missing:
        raise UserError(f"{label}: '{path}' lacks {len(missing)} keys (first: {missing[:3]}); check variant")
    trunk.load_state_dict(state, strict=True)


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
    label = f"dinov2 ({options.variant}{', reg4' if options.registers else ''})"
    trunk = build_trunk(options, initialise=options.pretrained is None)
    if options.pretrained is None:
        warn_random(label, "DINOv2 checkpoint")
    else:
        load_dinov2_weights(trunk, options.pretrained, label=label)
    backbone = Dinov2Backbone(trunk, out_indices=options.out_indices, label=label)
    install_attention(backbone, options.attention)
    return backbone


__all__ = [
    "DINOV2_VARIANTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dinov2Backbone",
    "build_dinov2",
    "build_trunk",
    "convert_meta_state_dict",
    "load_dinov2_weights",
]
