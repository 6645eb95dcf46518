"""The ``eva02`` and ``clip-vit`` backbones: open_clip models wrapped so adapters reach every block.

Both wrap an open_clip ``CustomTextCLIP`` and never re-implement its blocks. What the wrapper owns is the
bookkeeping the :class:`~vltk.interfaces.Backbone` contract asks for and open_clip does not offer:

* **any input size.** open_clip builds towers for one image size. For EVA02 the timm trunk is created with
  ``dynamic_img_size=True`` (timm then resamples the absolute position embedding and rebuilds RoPE for every
  grid); for CLIP's native ``VisionTransformer`` the wrapper resamples ``positional_embedding`` with timm's
  ``resample_abs_pos_embed`` and caches the result per grid while the embedding is not being trained.
* **block hooks.** The wrapper iterates ``trunk.blocks`` / ``transformer.resblocks`` itself and calls
  ``x = hook(x, layer_idx)`` after every block with batch-first ``[B, 1 + N, C]`` tokens (cls first), and a
  hook's optional ``before_block`` before it (extra trailing tokens such as VPT prompts; EVA02 gives them an
  identity RoPE rotation). That loop is :class:`~vltk_plugins.common.vit.TokenBackbone`, shared with the timm
  ``dinov2`` backbone.
* **the 4-level pyramid.** Patch tokens of ``out_indices`` are reshaped to ``[B, C, H/p, W/p]`` and resized
  parameter-free to strides 4/8/16/32 (bilinear up, max-pool down), as Rein's backbones do (also
  :class:`~vltk_plugins.common.vit.TokenBackbone`).
* **the text space.** :meth:`embed` returns open_clip's global image embedding and, MaskCLIP-style, the same final
  norm + projection applied to every patch token (no attention surgery); :meth:`text_tower` and
  :meth:`tokenizer` (:class:`~vltk_plugins.common.clip_text.ClipTextSide`, shared with ``clip-resnet``) give
  prompters the matching text encoder and an offline tokenizer.

open_clip does not pass timm kwargs through its config, so ``dynamic_img_size`` and a patch-size override reach
timm through tiny registered entry points (``vltk_<arch>_p<patch>_dyn``) that call timm's own architecture
function with those two overrides: one model build, no architecture copied.

Weights: ``pretrained=None`` gives random weights (one warning); otherwise a local file in any layout the
backbone reads (``eva02``: open_clip, BAAI's EVA02 and EVA02-CLIP releases, Rein's converted EVA02-L, timm;
``clip-vit``: open_clip, OpenAI's TorchScript archives and their state dicts), renamed onto open_clip's keys. A
checkpoint with another patch size or position grid is converted (Rein runs EVA02-L and CLIP-L at patch 16 this
way; ``eva02`` as its ``patch_resample`` says, ``clip-vit`` with FlexiViT's resize); any other shape difference
is a :class:`~vltk.api.UserError`. The loading and conversion are :mod:`vltk_plugins.common.weights`, shared
with ``clip-resnet`` and ``dinov2``; :func:`eva02_weight_target` and :func:`clip_vit_weight_target` give
``vltk convert`` the target layout without building real weights.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vltk.api import BlockHook, BuildContext, UserError, coerce_options, did_you_mean
from vltk_plugins.backbones.open_clip_vit.options import ClipViTOptions, Eva02Options
from vltk_plugins.common.attention import install_attention
from vltk_plugins.common.clip_text import OPENAI_MEAN, OPENAI_STD, ClipTextSide
from vltk_plugins.common.lean_mlp import install_lean_swiglu
from vltk_plugins.common.vit import TokenBackbone
from vltk_plugins.common.weights import TEXT_TOWER, OptionalPart, WeightSpec, load_pretrained_or_warn

#: variant -> (timm architecture, native patch, open_clip config name or None for the built-in tiny/small CLIP).
EVA02_VARIANTS: dict[str, tuple[str, int, str | None]] = {
    "tiny": ("eva02_tiny_patch14_224", 16, None),
    "small": ("eva02_small_patch14_224", 16, None),
    "base": ("eva02_base_patch16_clip_224", 16, "EVA02-B-16"),
    "large": ("eva02_large_patch14_clip_224", 14, "EVA02-L-14"),
}

#: Text towers and joint widths of the EVA02 variants that have no released CLIP weights. Small on purpose:
#: tiny is what the tests and the CPU recipe build, so it must construct and run in a fraction of a second.
_EVA02_SMALL_CLIP: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 256,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
    "small": {
        "embed_dim": 384,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
    },
}

#: The image-text projection of an EVA02-CLIP tower (timm's head, or open_clip's extra ``head.proj``): absent from
#: BAAI's MIM pre-training files and timm's headless ones.
EVA02_PROJECTION = OptionalPart(
    "image-text projection", ("visual.head", "visual.trunk.head"), "embed() and text-space heads are meaningless"
)

#: The ``clip-vit`` ``tiny`` variant: 4 blocks, 64 wide, patch 16; builds in milliseconds.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class OpenClipBackbone(ClipTextSide, TokenBackbone):
    """Shared machinery of the open_clip ViT backbones: the token loop of :class:`TokenBackbone` + the text side.

    The open_clip model is kept whole in a non-registered attribute (:meth:`open_clip_model`); only its image
    tower is a registered submodule (``visual``), so ``parameters()``, adapters' freezing, optimizers, DDP and
    layer-decay rules see the image tower alone. The text tower is frozen, stays in eval mode, follows the
    backbone's ``.to()``/``.half()`` (see :meth:`_apply`) and is handed to prompters by :meth:`text_tower`; a
    prompter that wants to train it registers it as its own submodule and unfreezes it there.
    ``state_dict()`` nevertheless holds it (``text.*``, ``logit_scale``): the backbone's state dict is exactly an
    open_clip checkpoint, so a run's checkpoint restores a random text tower too and can serve as ``pretrained``.
    """

    def __init__(
        self,
        clip: nn.Module,
        *,
        embed_dim: int,
        num_layers: int,
        patch_size: int,
        out_indices: Sequence[int] | None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        label: str,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim,
            num_layers=num_layers,
            patch_size=patch_size,
            mean=OPENAI_MEAN,
            std=OPENAI_STD,
            out_indices=out_indices,
            label=label,
        )
        self.visual = clip.visual
        self.attach_clip(clip, tokenizer_kwargs)
        self.text_dim = int(clip.text.output_dim)

    @abstractmethod
    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Final tokens -> (global ``[B, D]``, per-patch ``[B, N, D]``) in the text space."""

    def embed(self, x: Tensor, block_hooks: Sequence[BlockHook] = ()) -> tuple[Tensor, Tensor]:
        """``(global [B, D], dense [B, D, H/p, W/p])`` in the CLIP text space (not L2-normalised).

        global: open_clip's image embedding (its pooling, final norm and projection). dense: MaskCLIP-style, the
        same final norm + projection applied to every patch token of the last block; simple and
        attention-free, it is what DenseCLIP-like decoders compare with text embeddings.
        """
        grid = self.patch_grid(x)
        tokens, _ = self.forward_tokens(x, block_hooks)
        global_embedding, dense = self._head(tokens)
        batch, _, dims = dense.shape
        return global_embedding, dense.transpose(1, 2).reshape(batch, dims, grid[0], grid[1])


def identity_rope_for_extra(rope: Tensor | None, tokens: int) -> Tensor | None:
    """timm's concatenated ``[sin | cos]`` RoPE table for ``tokens`` rotated tokens: rows beyond the grid (extra
    tokens a hook appended, e.g. VPT prompts) get sin 0 / cos 1, an identity rotation, like the cls token."""
    if rope is None or rope.shape[-2] >= tokens:
        return rope
    half = rope.shape[-1] // 2
    extra = tokens - rope.shape[-2]
    identity = torch.cat([rope.new_zeros(extra, half), rope.new_ones(extra, half)], dim=-1)
    return torch.cat([rope, identity.expand(*rope.shape[:-2], extra, 2 * half)], dim=-2)


class Eva02Backbone(OpenClipBackbone):
    """EVA02-CLIP image tower (open_clip ``TimmModel`` around a timm ``Eva`` with ``dynamic_img_size``).

    Blocks get timm's RoPE for the current grid, exactly as ``Eva.forward_features`` passes it.
    """

    def __init__(self, clip: nn.Module, *, out_indices: Sequence[int] | None, label: str) -> None:
        trunk = clip.visual.trunk
        if trunk.num_prefix_tokens != 1 or not trunk.dynamic_img_size or getattr(trunk, "rope_mixed", False):
            raise ValueError(f"{label}: expected a timm Eva trunk with one cls token, dynamic_img_size, axial RoPE")
        super().__init__(
            clip,
            embed_dim=trunk.embed_dim,
            num_layers=len(trunk.blocks),
            patch_size=trunk.patch_embed.patch_size[0],
            out_indices=out_indices,
            label=label,
        )

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    def _blocks(self) -> Sequence[nn.Module]:
        return self.visual.trunk.blocks

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        trunk = self.visual.trunk
        tokens = trunk.patch_embed(x)  # NHWC in dynamic mode
        tokens, rope = trunk._pos_embed(tokens)  # resampled abs pos embed + RoPE for this grid, cls prepended
        return trunk.norm_pre(tokens), rope

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        return block(x, rope=identity_rope_for_extra(context, x.shape[1] - self.visual.trunk.num_prefix_tokens))

    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        trunk, head = self.visual.trunk, self.visual.head
        tokens = trunk.norm(tokens)
        global_embedding = head(trunk.forward_head(tokens))
        dense = head(trunk.head(trunk.head_drop(trunk.fc_norm(tokens[:, 1:]))))
        return global_embedding, dense


class ClipViTBackbone(OpenClipBackbone):
    """open_clip's native ``VisionTransformer`` (OpenAI / LAION CLIP); position embedding resampled per grid."""

    def __init__(
        self,
        clip: nn.Module,
        *,
        out_indices: Sequence[int] | None,
        tokenizer_kwargs: Mapping[str, Any] | None,
        label: str,
    ) -> None:
        visual = clip.visual
        if visual.attn_pool is not None:
            raise UserError(f"{label}: attentional-pool image towers (CoCa) have no per-patch tokens to use")
        super().__init__(
            clip,
            embed_dim=visual.transformer.width,
            num_layers=len(visual.transformer.resblocks),
            patch_size=visual.patch_size[0],
            out_indices=out_indices,
            tokenizer_kwargs=tokenizer_kwargs,
            label=label,
        )
        self._pos_cache: dict[tuple[Any, ...], Tensor] = {}

    def _blocks(self) -> Sequence[nn.Module]:
        return self.visual.transformer.resblocks

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """``positional_embedding`` resampled (bicubic, timm) to ``grid``: ``[1 + h*w, C]``.

        Cached per grid while the embedding is not being trained; the key includes the tensor's version, so
        loading new weights or an optimizer step invalidates it.
        """
        from timm.layers import resample_abs_pos_embed

        positional = self.visual.positional_embedding
        if tuple(grid) == tuple(self.visual.grid_size):
            return positional

        def resample() -> Tensor:
            return resample_abs_pos_embed(
                positional.unsqueeze(0), new_size=list(grid), old_size=list(self.visual.grid_size), num_prefix_tokens=1
            ).squeeze(0)

        # the cache is an eager-mode saving: under torch.compile the resampling is part of the graph instead
        cacheable = not (positional.requires_grad and torch.is_grad_enabled()) and not torch.compiler.is_compiling()
        if not cacheable:
            return resample()
        key = (tuple(grid), positional.device, positional.dtype, positional._version, positional.data_ptr())
        if key in self._pos_cache:
            return self._pos_cache[key]
        resampled = resample()
        if len(self._pos_cache) >= 8:
            self._pos_cache.clear()
        self._pos_cache[key] = resampled
        return resampled

    def _embed_tokens(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Any]:
        visual = self.visual
        patches = visual.conv1(x).flatten(2).transpose(1, 2)  # [B, N, C]
        cls = visual.class_embedding.to(patches.dtype).view(1, 1, -1).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.position_embedding(grid).to(patches.dtype)
        # open_clip's patch dropout is skipped: dense prediction needs the full grid.
        return visual.ln_pre(tokens), None

    def _run_block(self, block: nn.Module, x: Tensor, context: Any) -> Tensor:
        if self.visual.transformer.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)  # sequence-first blocks, batch-first hooks

    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        visual = self.visual
        pooled, _ = visual._pool(tokens)  # open_clip's own pooling and final norm order
        dense = visual.ln_post(tokens[:, 1:])
        if visual.proj is not None:
            pooled, dense = pooled @ visual.proj, dense @ visual.proj
        return pooled, dense

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ClipViTBackbone:
        self._pos_cache.clear()
        return super()._apply(fn, recurse)


# ---------------------------------------------------------------------------------------------------- builders
def timm_entrypoint(architecture: str, patch_size: int, image_size: int = 224) -> str:
    """Register (once per process) and return a timm name building ``architecture`` at ``patch_size`` and
    ``image_size`` with ``dynamic_img_size=True``: how those kwargs reach timm through open_clip's
    ``timm_model_name`` (open_clip's ``TimmModel`` passes none of them)."""
    import timm
    from timm.models import register_model

    size = "" if image_size == 224 else f"_i{image_size}"
    name = f"vltk_{architecture}_p{patch_size}{size}_dyn"
    if timm.is_model(name):
        return name

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return timm.create_model(
            architecture,
            pretrained=False,
            patch_size=patch_size,
            img_size=image_size,
            dynamic_img_size=True,
            **kwargs,
        )

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    globals()[name] = entrypoint  # register_model lists the name in this module's __all__: make it importable
    register_model(entrypoint)
    return name


def eva02_config(options: Eva02Options) -> dict[str, Any]:
    """The open_clip ``CustomTextCLIP`` config of an EVA02 variant (nothing built: cheap, used by tests)."""
    import open_clip

    architecture, native_patch, config_name = EVA02_VARIANTS[options.variant]
    patch_size = options.patch_size or native_patch
    image_size = options.image_size or 224
    if image_size % patch_size:
        raise UserError(
            f"eva02 ({options.variant}): image_size {image_size} is not a multiple of the patch size {patch_size}; "
            f"e.g. image_size={image_size // patch_size * patch_size}"
        )
    if config_name is not None:
        config = open_clip.get_model_config(config_name)
    else:
        small = _EVA02_SMALL_CLIP[options.variant]
        config = {
            "embed_dim": small["embed_dim"],
            "vision_cfg": {"image_size": 224, "timm_pool": "token", "timm_proj": "linear"},
            "text_cfg": dict(small["text_cfg"]),
        }
    config.pop("custom_text", None)
    config["vision_cfg"] = {
        **config["vision_cfg"],
        "image_size": image_size,
        "timm_model_name": timm_entrypoint(architecture, patch_size, image_size),
        "timm_model_pretrained": False,
        "timm_drop_path": options.drop_path_rate,
        "patch_dropout": 0.0,
    }
    return config


def eva02_weight_spec(options: Eva02Options, clip: nn.Module) -> WeightSpec:
    """How files load into the open_clip model ``clip`` built from ``options``."""
    return WeightSpec(
        backbone="eva02",
        variant=options.variant,
        label=f"eva02 ({options.variant})",
        what="EVA02 checkpoint",
        patch_key="visual.trunk.patch_embed.proj.weight",
        pos_key="visual.trunk.pos_embed",
        grid=tuple(clip.visual.trunk.patch_embed.grid_size),
        patch_resample=options.patch_resample,
        optional=(TEXT_TOWER, EVA02_PROJECTION),
    )


def eva02_weight_target(options: Eva02Options) -> tuple[dict[str, Tensor], WeightSpec]:
    """The open_clip state dict (meta tensors: names and shapes only) and spec of ``options``, for ``vltk convert``."""
    import open_clip

    with torch.device("meta"):
        clip = open_clip.CustomTextCLIP(**eva02_config(options))
    return clip.state_dict(), eva02_weight_spec(options, clip)


def build_eva02(options: Eva02Options, context: BuildContext | None = None) -> Eva02Backbone:
    """Build the ``eva02`` backbone (``options`` may also be a mapping or None); ``context`` is not needed."""
    import open_clip

    options = coerce_options(options, Eva02Options, "eva02")
    clip = open_clip.CustomTextCLIP(**eva02_config(options))
    spec = eva02_weight_spec(options, clip)
    load_pretrained_or_warn(clip, options.pretrained, spec)
    backbone = Eva02Backbone(clip, out_indices=options.out_indices, label=spec.label)
    install_attention(backbone, options.attention)
    install_lean_swiglu(backbone)  # half the MLP activations a block keeps for backward (frozen or not)
    backbone.set_grad_checkpointing(options.grad_checkpointing)
    return backbone


def _native_vit_names() -> list[str]:
    import open_clip

    names = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        if (
            not vision.get("timm_model_name")
            and isinstance(vision.get("layers", 12), int)
            and not vision.get("attentional_pool")
            and not text.get("hf_model_name")
            and not text.get("hf_tokenizer_name")
            and "multimodal_cfg" not in config
        ):
            names.append(name)
    return names


def clip_vit_config(options: ClipViTOptions) -> dict[str, Any]:
    """The open_clip config for ``clip-vit``; unsupported names/configs raise :class:`UserError` (offline only)."""
    import open_clip

    if options.variant == "tiny":
        config = copy.deepcopy(TINY_CLIP_CONFIG)
    else:
        name = options.model
        if name.startswith("hf-hub:"):
            raise UserError(f"clip-vit: '{name}' needs the Hugging Face hub; vltk builds models offline")
        config = open_clip.get_model_config(name)
        if config is None:
            names = _native_vit_names()
            raise UserError(
                f"clip-vit: unknown open_clip model '{name}';{did_you_mean(name, names)} "
                f"native-ViT configs: {', '.join(names)}"
            )
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        if vision.get("timm_model_name") or not isinstance(vision.get("layers", 12), int):
            raise UserError(
                f"clip-vit: '{name}' has no native open_clip ViT image tower (timm or ResNet); use the eva02 "
                "backbone for EVA02 configs"
            )
        if text.get("hf_model_name") or text.get("hf_tokenizer_name") or "multimodal_cfg" in config:
            raise UserError(f"clip-vit: '{name}' needs a Hugging Face text tower/tokenizer or is CoCa (unsupported)")
    config.pop("custom_text", None)
    config["vision_cfg"] = {**config["vision_cfg"], "patch_dropout": 0.0}
    if options.patch_size is not None:
        config["vision_cfg"]["patch_size"] = options.patch_size
    return config


def _clip_vit_label(options: ClipViTOptions) -> str:
    return f"clip-vit ({'tiny' if options.variant == 'tiny' else options.model})"


def _clip_vit_model(options: ClipViTOptions, config: dict[str, Any]) -> nn.Module:
    import open_clip

    try:
        return open_clip.CustomTextCLIP(**config)
    except TypeError as error:
        raise UserError(f"{_clip_vit_label(options)}: this open_clip config is not supported ({error})") from None


def clip_vit_weight_spec(options: ClipViTOptions, clip: nn.Module) -> WeightSpec:
    """How files load into the open_clip model ``clip`` built from ``options`` (FlexiViT patch conversion)."""
    return WeightSpec(
        backbone="clip-vit",
        variant=options.variant,
        label=_clip_vit_label(options),
        what="CLIP checkpoint",
        patch_key="visual.conv1.weight",
        pos_key="visual.positional_embedding",
        grid=tuple(clip.visual.grid_size),
        optional=(TEXT_TOWER,),
    )


def clip_vit_weight_target(options: ClipViTOptions) -> tuple[dict[str, Tensor], WeightSpec]:
    """The open_clip state dict (meta tensors) and spec of ``options``, for ``vltk convert``."""
    with torch.device("meta"):
        clip = _clip_vit_model(options, clip_vit_config(options))
    return clip.state_dict(), clip_vit_weight_spec(options, clip)


def build_clip_vit(options: ClipViTOptions, context: BuildContext | None = None) -> ClipViTBackbone:
    """Build the ``clip-vit`` backbone (``options`` may also be a mapping or None); ``context`` is not needed."""
    options = coerce_options(options, ClipViTOptions, "clip-vit")
    config = clip_vit_config(options)
    tokenizer_kwargs = config.get("text_cfg", {}).get("tokenizer_kwargs") or {}
    clip = _clip_vit_model(options, config)
    spec = clip_vit_weight_spec(options, clip)
    load_pretrained_or_warn(clip, options.pretrained, spec)
    backbone = ClipViTBackbone(
        clip, out_indices=options.out_indices, tokenizer_kwargs=tokenizer_kwargs, label=spec.label
    )
    install_attention(backbone, options.attention)
    backbone.set_grad_checkpointing(options.grad_checkpointing)
    return backbone


__all__ = [
    "EVA02_VARIANTS",
    "TINY_CLIP_CONFIG",
    "ClipViTBackbone",
    "Eva02Backbone",
    "OpenClipBackbone",
    "EVA02_PROJECTION",
    "build_clip_vit",
    "build_eva02",
    "clip_vit_config",
    "clip_vit_weight_spec",
    "clip_vit_weight_target",
    "eva02_config",
    "eva02_weight_spec",
    "eva02_weight_target",
    "identity_rope_for_extra",
    "timm_entrypoint",
]
