"""The ``lseg-vit`` backbone: LSeg's encoder pair, a timm ImageNet ViT for pixels and a CLIP text tower for labels.

LSeg (isl-org/lang-seg ``lseg_vit.py``, ``_make_pretrained_clip_vitl16_384``) does not use CLIP's image tower: its
pixels go through DPT on ``timm.create_model("vit_large_patch16_384")`` (``net.pretrained.model``), hooked after
blocks 5/11/17/23, and only the text tower of ``clip.load("ViT-B/32")`` (``net.clip_pretrained``) encodes the
labels. This backbone is that pair, built from the real libraries: the image tower is timm's ViT (its blocks run
unchanged, adapters hook every one of them like any vltk ViT), the text tower is open_clip's text transformer of
the named config (frozen, as in LSeg, whose optimiser never sees it), attached through
:class:`~vltk_plugins.common.clip_text.ClipTextSide` exactly as the CLIP backbones attach theirs.

Embedding follows LSeg's ``forward_flex``: patch conv, cls token, the stored position grid resized **bilinearly**
(``F.interpolate``, ``align_corners=False``, no antialias) to the input's grid, then the blocks. Inputs are
normalised with mean = std = 0.5, LSeg's ``norm_mean``/``norm_std``.

Weights: ``image_pretrained`` (timm's state dict of the ViT, LSeg's ImageNet start), ``text_pretrained`` (a CLIP
file, of which the text tower is read: OpenAI's archives or open_clip's), and ``pretrained`` (this backbone's own
state dict, e.g. from a converted LSeg release), applied in that order.

Two pyramids (option ``pyramid``):

* ``resize`` (default): the usual vltk pyramid (:class:`~vltk_plugins.common.vit.TokenBackbone`), the Backbone
  contract every decoder reads.
* ``dpt``: what DPT's reassemble stage reads, the four hooked blocks' tokens at the patch stride, each
  patch token concatenated with its block's cls token, ``[B, 2C, H/p, W/p]`` (``ProjectReadout``'s input order:
  patch first). ``strides`` are all ``p`` and every level is ``2C`` wide. The reassemble itself (readout, 1x1
  conv, resampling) has weights and lives in the ``lseg`` decoder (``reassemble: dpt``), the one decoder that
  reads this pyramid (any other refuses nothing, so the choice is the user's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.api import BlockHook, BuildContext, UserError, coerce_options
from vltk_plugins.common.attention import install_attention
from vltk_plugins.common.clip_text import ClipTextSide
from vltk_plugins.common.vit import TokenBackbone, resolve_out_indices
from vltk_plugins.common.weights import read_state_dict, warn_random
from vltk_plugins.lseg.options import LSegViTOptions

#: LSeg's input normalisation (``lseg_module.py``: ``norm_mean = norm_std = [0.5, 0.5, 0.5]``).
LSEG_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LSEG_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: ``image_model`` -> (timm architecture, keyword overrides). ``tiny`` keeps the ViT block design at test size.
IMAGE_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_large_patch16_384": ("vit_large_patch16_384", {}),
    "vit_base_patch32_384": ("vit_base_patch32_384", {}),
    "tiny": ("vit_tiny_patch16_224", {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 64}),
}

#: The ``tiny`` text tower (as ``clip-vit``'s tiny): 2 blocks, 64 wide, 64-d joint space.
TINY_TEXT: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": False,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def dpt_hooks(num_layers: int) -> tuple[int, int, int, int]:
    """DPT's hooks, the last block of each quarter: [5, 11, 17, 23] for 24 blocks, [2, 5, 8, 11] for 12."""
    return tuple(max(0, (quarter + 1) * num_layers // 4 - 1) for quarter in range(4))  # type: ignore[return-value]


class _TextHolder(nn.Module):
    """The part of an open_clip model :class:`ClipTextSide` keeps: ``text`` and ``logit_scale`` (no image tower)."""

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.text = text
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))


class LSegViTBackbone(ClipTextSide, TokenBackbone):
    """timm ViT image tower (``trunk``) + an unregistered, frozen CLIP text tower; DPT token pyramid or resized."""

    def __init__(
        self, trunk: nn.Module, text: nn.Module, *, out_indices: Sequence[int] | None, pyramid: str, label: str
    ) -> None:
        num_layers = len(trunk.blocks)
        super().__init__(
            embed_dim=trunk.embed_dim,
            num_layers=num_layers,
            patch_size=trunk.patch_embed.patch_size[0],
            mean=LSEG_MEAN,
            std=LSEG_STD,
            out_indices=dpt_hooks(num_layers) if out_indices is None else out_indices,
            label=label,
        )
        self.trunk = trunk
        self.pyramid = pyramid
        self.attach_clip(_TextHolder(text))
        self.text_dim = int(text.output_dim)
        if pyramid == "dpt":
            self.out_channels = (2 * self.embed_dim,) * 4

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """All ``p`` for the DPT pyramid (the reassemble resamples), else 4/8/16/32."""
        if self.pyramid == "dpt":
            return (self.patch_size,) * 4  # type: ignore[return-value]
        return (4, 8, 16, 32)

    def _blocks(self) -> Sequence[nn.Module]:
        return self.trunk.blocks

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        trunk = self.trunk
        patches = trunk.patch_embed.proj(x).flatten(2).transpose(1, 2)  # LSeg calls the conv, not PatchEmbed
        cls = trunk.cls_token.to(patches.dtype).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.position_embedding(grid).to(patches.dtype)
        return trunk.norm_pre(trunk.pos_drop(tokens)), None

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """``pos_embed`` ``[1, 1 + h*w, C]`` at ``grid``: LSeg's ``_resize_pos_embed`` (bilinear, no antialias)."""
        stored = self.trunk.pos_embed
        side = math.isqrt(stored.shape[1] - 1)
        if (side, side) == tuple(grid):
            return stored
        cls, positions = stored[:, :1], stored[0, 1:]
        positions = positions.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        positions = F.interpolate(positions, size=tuple(grid), mode="bilinear")
        return torch.cat([cls, positions.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        return block(x)

    def forward_features(
        self, x: Tensor, block_hooks: Sequence[BlockHook] = (), out_indices: Sequence[int] | None = None
    ) -> list[Tensor]:
        """``pyramid=dpt``: 4 maps ``[B, 2C, H/p, W/p]`` = [patch | cls of the same block]; else the resized one."""
        if self.pyramid != "dpt":
            return super().forward_features(x, block_hooks, out_indices)
        indices = self.out_indices if out_indices is None else resolve_out_indices(out_indices, self.num_layers)
        grid = self.patch_grid(x)
        _, taken = self.forward_tokens(x, block_hooks, take=indices)
        levels = []
        for index in indices:
            tokens = taken[index]
            patches = self.tokens_to_map(tokens, grid)
            readout = tokens[:, 0, :, None, None].expand_as(patches)
            levels.append(torch.cat([patches, readout], dim=1))
        return levels

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """No image embeddings in the text space: LSeg's image tower is an ImageNet ViT, not CLIP's."""
        raise UserError(
            f"{self.label}: the image tower is an ImageNet ViT with no image-text space, so text score maps and "
            "visual-context prompts are unavailable; set prompter.score_concat_index=null and "
            "prompter.aux_loss_weight=0 (LSeg compares text with its decoder's pixel embeddings only)"
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pyramid={self.pyramid}"


def _text_tower(options: LSegViTOptions) -> nn.Module:
    import open_clip
    from open_clip.model import CLIPTextCfg, _build_text_tower

    if options.text_model == "tiny":
        config: dict[str, Any] | None = TINY_TEXT
    else:
        config = open_clip.get_model_config(options.text_model)
    if config is None or "text_cfg" not in config or config["text_cfg"].get("hf_model_name"):
        raise UserError(
            f"lseg-vit: text_model '{options.text_model}' is no open_clip config with a native text tower; use "
            "ViT-B-32-quickgelu (LSeg's default), RN50x16-quickgelu or tiny"
        )
    text_cfg = CLIPTextCfg(**config["text_cfg"])
    return _build_text_tower(config["embed_dim"], text_cfg, quick_gelu=bool(config.get("quick_gelu", False)))


def build_trunk(options: LSegViTOptions, *, initialise: bool = True) -> nn.Module:
    """timm's ViT of ``image_model``, random weights, no classifier (LSeg never runs the ImageNet head)."""
    import timm

    architecture, overrides = IMAGE_MODELS[options.image_model]
    return timm.create_model(
        architecture, pretrained=False, num_classes=0, weight_init="" if initialise else "skip", **overrides
    )


def _refuse(label: str, path: str, what: str, missing: list[str], unexpected: list[str], fix: str) -> None:
    if missing or unexpected:
        raise UserError(
            f"{label}: '{path}' is not {what} (missing: {', '.join(missing[:4]) or '-'}; unexpected: "
            f"{', '.join(unexpected[:4]) or '-'}); {fix}"
        )


def _load_strict(module: nn.Module, state: dict[str, Tensor], label: str, path: str, what: str, fix: str) -> None:
    """``module.load_state_dict(state)`` with every problem (keys, shapes) one :class:`UserError`."""
    own = module.state_dict()
    wrong = [f"{key} {list(value.shape)} vs {list(own[key].shape)}" for key, value in state.items()
             if key in own and tuple(value.shape) != tuple(own[key].shape)]  # fmt: skip
    if wrong:
        raise UserError(f"{label}: '{path}' does not fit ({'; '.join(wrong[:3])}, file vs model); {fix}")
    result = module.load_state_dict(state, strict=False)
    _refuse(label, path, what, list(result.missing_keys), list(result.unexpected_keys), fix)


def _load_image(backbone: LSegViTBackbone, path: str) -> None:
    """timm's ViT state dict into ``trunk`` (the classifier ``head`` is LSeg's dead weight, left out)."""
    state = read_state_dict(path, backbone.label, "timm ViT state dict")
    state = {key: value for key, value in state.items() if not key.startswith(("head.", "pre_logits."))}
    fix = "pass timm's state dict of backbone.image_model"
    _load_strict(backbone.trunk, state, backbone.label, path, "a timm ViT state dict of this architecture", fix)


#: OpenAI's (and open_clip's CLIP) names of the text half, outside any ``text.`` prefix.
_TEXT_KEYS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")


def _load_text(backbone: LSegViTBackbone, path: str) -> None:
    """The text tower (and ``logit_scale``) of a CLIP file: OpenAI/open_clip ``CLIP`` names or ``text.*``."""
    state = read_state_dict(path, backbone.label, "CLIP checkpoint")
    if any(key.startswith("text.") for key in state):
        text = {key: value for key, value in state.items() if key.startswith("text.")}
    else:
        text = {f"text.{key}": value for key, value in state.items() if key.startswith(_TEXT_KEYS)}
    if "logit_scale" in state:
        text["logit_scale"] = state["logit_scale"]
    holder = backbone.open_clip_model()
    fix = "pass a CLIP checkpoint whose text tower is backbone.text_model's"
    _load_strict(holder, text, backbone.label, path, "a CLIP checkpoint with this text tower", fix)


def _load(backbone: LSegViTBackbone, path: str) -> None:
    """This backbone's own state dict (``trunk.*``, ``text.*``, ``logit_scale``), e.g. a converted release's."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{backbone.label}: pretrained '{path}' does not exist; pass a local file or null")
    state = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if any(key.startswith("backbone.") for key in state):
        state = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    fix = "convert an LSeg release with vltk convert, or pass pretrained=null"
    _load_strict(backbone, state, backbone.label, path, "this backbone's state dict", fix)


def build_lseg_vit(options: LSegViTOptions, context: BuildContext | None = None) -> LSegViTBackbone:
    """Build the ``lseg-vit`` backbone (``options`` may also be a mapping or None); ``context`` is not needed."""
    options = coerce_options(options, LSegViTOptions, "lseg-vit")
    label = f"lseg-vit ({options.image_model} + {options.text_model} text)"
    own = options.pretrained is not None
    trunk = build_trunk(options, initialise=not own and options.image_pretrained is None)
    backbone = LSegViTBackbone(
        trunk, _text_tower(options), out_indices=options.out_indices, pyramid=options.pyramid, label=label
    )
    if options.image_pretrained is not None:
        _load_image(backbone, options.image_pretrained)
    if options.text_pretrained is not None:
        _load_text(backbone, options.text_pretrained)
    if own:
        _load(backbone, str(options.pretrained))
    elif options.image_pretrained is None:
        warn_random(f"{label} image tower", "timm ViT state dict (image_pretrained)")
    if not own and options.text_pretrained is None:
        warn_random(f"{label} text tower", "CLIP checkpoint (text_pretrained)")
    install_attention(backbone, options.attention)
    backbone.set_grad_checkpointing(options.grad_checkpointing)
    return backbone


__all__ = ["IMAGE_MODELS", "LSEG_MEAN", "LSEG_STD", "LSegViTBackbone", "build_lseg_vit", "build_trunk", "dpt_hooks"]
