"""The ``clip-resnet`` backbone: CLIP's ModifiedResNet (open_clip) for dense prediction and detection.

It wraps an open_clip ``CustomTextCLIP`` whose image tower is ``ModifiedResNet``; nothing of the ResNet is
re-implemented. What the wrapper adds:

* **the pyramid.** The outputs of layer1..layer4 are the stride 4/8/16/32 maps; their widths differ per level
  (256/512/1024/2048 for RN50), so the backbone states them in ``out_channels`` and the pipeline sizes decoders
  from it instead of ``embed_dim``.
* **dense text-space embeddings (DenseCLIP).** CLIP's attention pool keeps only its output token 0 and has a
  position embedding for a 7x7 grid. :func:`dense_attention_pool` runs the same weights (``q/k/v/c_proj``,
  ``positional_embedding``) with every one of the HW+1 tokens as a query and the spatial part of the position
  embedding bilinearly resized to the current grid, giving the global embedding z̄ (token 0) and a dense map z
  (tokens 1..HW), both in the text space. At a 7x7 grid it reproduces the stock pool exactly.
* **the detection split (CLIP the Gap).** :meth:`ClipResNetBackbone.stage_a` (stem..layer3, stride 16),
  :meth:`~ClipResNetBackbone.stage_b` (layer4, applied to RoI features) and :meth:`~ClipResNetBackbone.pool`.
* **what may train.** ``bn="frozen"`` and ``trainable=[...]`` are backbone options because they are facts of this
  network, not of an adapter. The adapter decides first (``setup`` sets ``requires_grad`` on every backbone
  parameter, e.g. all True for ``full``); the pipeline then calls :meth:`Backbone.restrict_trainable`, where this
  backbone switches its fixed parts off again. So ``adapter=full`` + ``trainable=[layer3, layer4, attnpool]``
  trains exactly those stages, and ``adapter=frozen`` trains nothing whatever ``trainable`` says.
* **the text side.** Same API as the open_clip ViT backbones (:class:`~vltk_plugins.common.clip_text.ClipTextSide`):
  :meth:`text_tower`, :meth:`tokenizer`, :meth:`encode_text`; the text tower is frozen, not a registered
  submodule, yet part of ``state_dict()``. Weights (open_clip or OpenAI files) load through
  :mod:`vltk_plugins.common.weights`.

A CNN has no token blocks: ``is_vit`` is False, so adapters that refine ViT blocks (Rein, LoRA, VPT) are refused
by the pipeline; block hooks that are passed anyway (``frozen``/``full`` are identities) are called after every
stage on ``[B, h*w, C_stage]`` tokens.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.api import Backbone, BlockHook, BuildContext, UserError, coerce_options
from vltk_plugins.backbones.clip_resnet.options import STAGES, ClipResNetOptions
from vltk_plugins.common.clip_text import OPENAI_MEAN, OPENAI_STD, ClipTextSide
from vltk_plugins.common.weights import TEXT_TOWER, WeightSpec, load_pretrained_or_warn

#: The ``tiny`` variant: one bottleneck per stage, width 8 (pyramid 32/64/128/256 channels, 4 pool heads),
#: joint width 64, a 2-block 64-wide text tower. Builds and runs in milliseconds.
TINY_RESNET_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def interpolate_position_embedding(positional: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[1 + s*s, C]`` -> ``[1 + h*w, C]``: the class position kept, the s x s spatial part bilinearly resized.

    DenseCLIP's rule (bilinear, ``align_corners=False``); the identity when the grid is already s x s.
    """
    side = math.isqrt(positional.shape[0] - 1)
    if side * side != positional.shape[0] - 1:
        raise ValueError(f"expected a square position grid plus one class position, got {tuple(positional.shape)}")
    if tuple(grid) == (side, side):
        return positional
    channels = positional.shape[1]
    spatial = positional[1:].reshape(1, side, side, channels).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial.float(), size=tuple(grid), mode="bilinear", align_corners=False)
    spatial = spatial.to(positional.dtype).reshape(channels, grid[0] * grid[1]).transpose(0, 1)
    return torch.cat([positional[:1], spatial], dim=0)


def dense_attention_pool(pool: nn.Module, features: Tensor, global_only: bool = False) -> tuple[Tensor, Tensor | None]:
    """CLIP's attention pool run densely (DenseCLIP): ``[B, C, h, w]`` -> ``(z̄ [B, D], z [B, D, h, w])``.

    ``pool`` is open_clip's ``AttentionPool2d`` (only its parameters are used). Tokens are the mean token
    followed by the h*w features, plus the position embedding resized to ``(h, w)``; all tokens attend to all
    (q = k = v), then ``c_proj``. Token 0 is the global embedding, tokens 1.. the dense map.
    ``global_only`` queries with token 0 alone (stock CLIP): the same z̄ for 1/(h*w+1) of the attention cost,
    which matters when the pool runs on thousands of RoIs (CLIP the Gap); the dense map is then None.
    """
    batch, channels, height, width = features.shape
    tokens = features.flatten(2).permute(2, 0, 1)  # [h*w, B, C]
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    positional = interpolate_position_embedding(pool.positional_embedding, (height, width))
    tokens = tokens + positional[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1] if global_only else tokens,
        key=tokens,
        value=tokens,
        embed_dim_to_check=channels,
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=pool.training,
        need_weights=False,
    )
    if global_only:
        return out[0], None
    dims = out.shape[-1]
    dense = out[1:].permute(1, 2, 0).reshape(batch, dims, height, width)
    return out[0], dense


class ClipResNetBackbone(ClipTextSide, Backbone):
    """CLIP ModifiedResNet: pyramid layer1..layer4, DenseCLIP embeddings, CLIP-the-Gap split, CLIP text tower.

    Facts: ``embed_dim`` = layer4 width (2048 for RN50/RN101), ``out_channels`` per level, ``num_layers`` = 4
    stages, ``patch_size`` = 32 (the total stride: inputs are padded to it), ``has_cls_token`` and ``is_vit``
    False, ``text_dim`` = CLIP's joint width. Detection: ``stride_a`` = 16, ``channels_a`` (layer3 width),
    ``channels_b`` (layer4 width).
    """

    is_vit = False

    def __init__(
        self,
        clip: nn.Module,
        *,
        bn: str = "train",
        trainable: Sequence[str] | None = None,
        label: str = "clip-resnet",
    ) -> None:
        super().__init__()
        visual = clip.visual
        if not hasattr(visual, "attnpool") or not hasattr(visual, "layer4"):
            raise ValueError(f"{label}: expected an open_clip ModifiedResNet image tower")
        if bn not in ("train", "frozen"):
            raise ValueError(f"{label}: bn must be 'train' or 'frozen', got {bn!r}")
        unknown = sorted(set(trainable or ()) - set(STAGES))
        if unknown:
            raise UserError(f"{label}: unknown stages in trainable: {unknown}; choose from {list(STAGES)}")
        self.visual = visual
        self.attach_clip(clip)
        layers = (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        self.out_channels: tuple[int, int, int, int] = tuple(layer[-1].bn3.num_features for layer in layers)  # type: ignore[assignment]
        self.embed_dim = self.out_channels[3]
        self.num_layers = 4
        self.patch_size = 32
        self.mean = OPENAI_MEAN
        self.std = OPENAI_STD
        self.has_cls_token = False
        self.text_dim = int(visual.output_dim)
        self.out_indices = (0, 1, 2, 3)
        self.stride_a = 16
        self.channels_a = self.out_channels[2]
        self.channels_b = self.out_channels[3]
        self.bn = bn
        self.trainable = tuple(STAGES if trainable is None else trainable)
        self.label = label
        self.restrict_trainable()
        self.train(self.training)

    # ------------------------------------------------------------------------------------------- what trains
    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules of one stage name (``stem``, ``layer1``..``layer4``, ``attnpool``)."""
        visual = self.visual
        if stage == "stem":
            return [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
        if stage in STAGES:
            return [getattr(visual, stage)]
        raise KeyError(stage)

    def _batch_norms(self) -> list[nn.BatchNorm2d]:
        return [module for module in self.visual.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]

    def restrict_trainable(self) -> None:
        """Switch off ``requires_grad`` of the stages not in ``trainable`` and, with ``bn="frozen"``, of every BN.

        Only ever turns gradients off: what the adapter froze stays frozen. The pipeline calls this right after
        ``adapter.setup(backbone)``; the constructor calls it too, for users of the backbone alone.
        """
        for stage in STAGES:
            if stage not in self.trainable:
                for module in self.stage_modules(stage):
                    module.requires_grad_(False)
        if self.bn == "frozen":
            for norm in self._batch_norms():
                norm.requires_grad_(False)

    def train(self, mode: bool = True) -> ClipResNetBackbone:
        """With ``bn="frozen"`` the BN layers stay in eval mode (stored statistics, no updates) in training too."""
        super().train(mode)
        if self.bn == "frozen":
            for norm in self._batch_norms():
                norm.eval()
        return self

    # ------------------------------------------------------------------------------------------------ forward
    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.label}: expected images [B, 3, H, W], got shape {tuple(x.shape)}")

    @staticmethod
    def _call_hooks(x: Tensor, index: int, block_hooks: Sequence[BlockHook]) -> Tensor:
        """Hooks see the stage output as tokens ``[B, h*w, C]`` (no cls token); a changed result is mapped back."""
        if not block_hooks:
            return x
        batch, channels, height, width = x.shape
        original = tokens = x.flatten(2).transpose(1, 2)
        for hook in block_hooks:
            updated = hook(tokens, index)
            if updated.shape != tokens.shape:
                raise ValueError(
                    f"clip-resnet: block hook {type(hook).__name__} returned {tuple(updated.shape)} after stage "
                    f"{index}, expected {tuple(tokens.shape)}"
                )
            tokens = updated
        if tokens is original:
            return x
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)

    def _pyramid(self, x: Tensor, block_hooks: Sequence[BlockHook]) -> list[Tensor]:
        self._check(x)
        visual = self.visual
        x = visual.stem(x)
        levels = []
        for index, layer in enumerate((visual.layer1, visual.layer2, visual.layer3, visual.layer4)):
            x = self._call_hooks(layer(x), index, block_hooks)
            levels.append(x)
        return levels

    def forward_features(
        self,
        x: Tensor,
        block_hooks: Sequence[BlockHook] = (),
        out_indices: Sequence[int] | None = None,
    ) -> list[Tensor]:
        """layer1..layer4 outputs ``[B, out_channels[i], H/s, W/s]``, s = 4, 8, 16, 32 (sizes floor).

        ``out_indices`` can only be the four stages in order (a CNN's levels are fixed).
        """
        if out_indices is not None and [int(index) % 4 for index in out_indices] != [0, 1, 2, 3]:
            raise UserError(f"{self.label}: the pyramid is layer1..layer4; out_indices must be [0, 1, 2, 3]")
        return self._pyramid(x, block_hooks)

    def embed(self, x: Tensor, block_hooks: Sequence[BlockHook] = ()) -> tuple[Tensor, Tensor]:
        """``(z̄ [B, text_dim], z [B, text_dim, H/32, W/32])``: DenseCLIP's dense attention pool of layer4.

        Same signature as the ViT backbones' ``embed``, so the pretraining head trains either family."""
        if not block_hooks:
            return dense_attention_pool(self.visual.attnpool, self.stage_b(self.stage_a(x)))
        return dense_attention_pool(self.visual.attnpool, self._pyramid(x, block_hooks)[3])

    def forward_with_embeddings(
        self, x: Tensor, block_hooks: Sequence[BlockHook] = ()
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Pyramid and ``(z̄, z)`` from one pass: the pool runs on the layer4 level itself."""
        levels = self._pyramid(x, block_hooks)
        global_embedding, dense = dense_attention_pool(self.visual.attnpool, levels[3])
        return levels, global_embedding, dense

    # --------------------------------------------------------------------------------- detection split (V_a/V_b)
    def stage_a(self, x: Tensor) -> Tensor:
        """V_a: stem, layer1, layer2, layer3 -> ``[B, channels_a, H/16, W/16]`` (floor sizes)."""
        self._check(x)
        visual = self.visual
        return visual.layer3(visual.layer2(visual.layer1(visual.stem(x))))

    def stage_b(self, features: Tensor) -> Tensor:
        """V_b part 1: layer4 -> ``[R, channels_b, h/2, w/2]`` (14x14 RoI features give 7x7)."""
        return self.visual.layer4(features)

    def pool(self, features: Tensor) -> Tensor:
        """V_b part 2: attention pool to the text space, ``[R, channels_b, h, w]`` -> ``[R, text_dim]``.

        The position embedding is resized to ``h x w``; at 7x7 this is exactly CLIP's ``attnpool``.
        """
        return dense_attention_pool(self.visual.attnpool, features, global_only=True)[0]

    def extra_repr(self) -> str:
        return (
            f"{self.label}, out_channels={list(self.out_channels)}, text_dim={self.text_dim}, bn={self.bn}, "
            f"trainable={list(self.trainable)}"
        )


def clip_resnet_config(options: ClipResNetOptions) -> dict[str, Any]:
    """The open_clip config of a variant (nothing built). Built at 224, the grid CLIP's weights have."""
    import open_clip

    if options.variant == "tiny":
        return copy.deepcopy(TINY_RESNET_CONFIG)
    config = open_clip.get_model_config(options.variant)
    config.pop("custom_text", None)
    return config


def clip_resnet_weight_spec(options: ClipResNetOptions, clip: nn.Module) -> WeightSpec:
    """How files load into the open_clip model ``clip`` built from ``options`` (open_clip or OpenAI layouts)."""
    side = math.isqrt(clip.visual.attnpool.positional_embedding.shape[0] - 1)
    return WeightSpec(
        backbone="clip-resnet",
        variant=options.variant,
        label=f"clip-resnet ({options.variant})",
        what="CLIP ResNet checkpoint",
        patch_key="visual.conv1.weight",
        pos_key="visual.attnpool.positional_embedding",
        grid=(side, side),
        optional=(TEXT_TOWER,),
    )


def _clip_resnet_model(options: ClipResNetOptions) -> nn.Module:
    import open_clip

    return open_clip.CustomTextCLIP(**clip_resnet_config(options), quick_gelu=options.quick_gelu)


def clip_resnet_weight_target(options: ClipResNetOptions) -> tuple[dict[str, Tensor], WeightSpec]:
    """The open_clip state dict (meta tensors) and spec of ``options``, for ``vltk convert``."""
    with torch.device("meta"):
        clip = _clip_resnet_model(options)
    return clip.state_dict(), clip_resnet_weight_spec(options, clip)


def build_clip_resnet(options: ClipResNetOptions, context: BuildContext | None = None) -> ClipResNetBackbone:
    """Build the ``clip-resnet`` backbone (``options`` may also be a mapping or None); ``context`` is not needed."""
    options = coerce_options(options, ClipResNetOptions, "clip-resnet")
    clip = _clip_resnet_model(options)
    spec = clip_resnet_weight_spec(options, clip)
    load_pretrained_or_warn(clip, options.pretrained, spec)
    return ClipResNetBackbone(clip, bn=options.bn, trainable=options.trainable, label=spec.label)


__all__ = [
    "TINY_RESNET_CONFIG",
    "ClipResNetBackbone",
    "build_clip_resnet",
    "clip_resnet_config",
    "clip_resnet_weight_spec",
    "clip_resnet_weight_target",
    "dense_attention_pool",
    "interpolate_position_embedding",
]
