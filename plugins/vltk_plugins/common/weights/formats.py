"""The weight layouts vltk's backbones read: how each is recognised and how it maps onto open_clip/timm keys.

A backbone is an open_clip model (``eva02``, ``clip-vit``, ``clip-resnet``) or a timm ``VisionTransformer``
(``dinov2``), so its state dict is in open_clip's or timm's layout. Files in other layouts are renamed onto those
keys here, once, with the facts taken from the reference code (read, not copied):

* **EVA02 (BAAI)**, the MIM pre-training release (``eva02_L_pt_m38m_p14to16.pt``, under ``model``) and Rein's
  ``eva02_L_converted.pth`` made from it (no wrapper, patch 16, 32x32 grid): EVA02's own module names. Per block
  ``attn.q_proj/k_proj/v_proj`` with separate ``attn.q_bias``/``attn.v_bias`` (B/L, "subln") or a fused
  ``attn.qkv`` (Ti/S), ``attn.inner_attn_ln``, ``mlp.w1/w2/w3`` + ``mlp.ffn_ln`` (B/L) or ``mlp.w12/w3`` (Ti/S),
  plus ``mask_token``, ``lm_head.*`` and the RoPE tables ``rope.freqs_cos/sin`` (again under every block's
  ``attn.rope.``, the module being shared) that inference does not use. timm's ``Eva`` is a
  port with renamed modules (timm's ``eva.checkpoint_filter_fn`` documents the mapping): ``inner_attn_ln`` ->
  ``attn.norm``, ``ffn_ln`` -> ``mlp.norm``, ``w1/w2`` -> ``fc1_g/fc1_x``, ``w12`` -> ``fc1``, ``w3`` ->
  ``fc2``, and with separate projections ``q_bias/v_bias`` -> ``q_proj.bias/v_proj.bias``; the RoPE tables are
  recomputed by timm for every grid, so they are dropped with the MIM-only entries.
* **EVA02-CLIP (BAAI)** (``EVA02_CLIP_L_psz14_s4B.pt``...): the same vision names under ``visual.`` with the
  final ``visual.norm`` and the image-text projection ``visual.head`` (timm's ``trunk.head`` when open_clip has no
  extra projection), and an OpenAI-style text tower (``transformer.*``, ``token_embedding``... at the top level,
  or under ``text.``), which open_clip's ``convert_to_custom_text_state_dict`` moves under ``text.``.
* **OpenAI CLIP** (TorchScript archives ``ViT-B-16.pt``, ``RN50.pt`` and state dicts saved from them): open_clip's
  ``CLIP`` layout plus the scalars ``input_resolution``, ``context_length``, ``vocab_size``, which open_clip drops
  (:data:`~vltk_plugins.common.weights.read.OPENAI_EXTRA_KEYS`, taken out when the file is read).
* **open_clip** and **timm** state dicts: already the backbones' layout (either text layout; a bare image tower
  gets its ``visual.``/``visual.trunk.`` prefix back).
* **DINOv2 (Meta)** (``dinov2_vitl14_pretrain.pth``, Rein's ``dinov2_converted.pth``): timm's names except a
  ``mask_token`` (iBOT, unused), ``register_tokens`` (timm: ``reg_token``), ``blocks.<chunk>.<index>.`` when
  saved with ``block_chunks > 0``, the giant's SwiGLU ``w12``/``w3`` (timm: ``fc1``/``fc2``), and, for register
  models, a cls position that timm folds into ``cls_token``.

:func:`detect_format` names the layout of a :class:`~vltk_plugins.common.weights.read.Checkpoint` (the first of
:data:`FORMATS` whose signature matches); a format's ``convert`` returns the tensors under the target's keys and,
per new key, the file's key (for errors that name what the user can find in the file).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from vltk_plugins.common.weights.read import Checkpoint

#: A converted state dict and, per key, the key it had in the file.
Converted = tuple[dict[str, Tensor], dict[str, str]]


@dataclass(frozen=True)
class ConvertContext:
    """What a conversion needs to know about the model it converts for.

    ``target``: the model's state dict (only names and shapes are read, so meta tensors do); ``num_prefix_tokens``:
    rows before the grid in the target's position embedding (0 for timm's DINOv2 with registers, which keeps no
    cls position).
    """

    target: Mapping[str, Tensor]
    num_prefix_tokens: int = 1


@dataclass(frozen=True)
class WeightFormat:
    """One layout: ``name`` (the id in messages), ``title`` (what a user recognises), the registered backbone
    that reads it, a signature test on the read checkpoint and the conversion onto that backbone's keys."""

    name: str
    title: str
    backbone: str
    detect: Callable[[Checkpoint], bool]
    convert: Callable[[dict[str, Tensor], ConvertContext], Converted]


# ------------------------------------------------------------------------------------------------ signatures
def _matches(keys: Mapping[str, Tensor], pattern: str) -> bool:
    compiled = re.compile(pattern)
    return any(compiled.search(key) for key in keys)


#: Module names only BAAI's EVA02 code uses (timm's port renamed them), relative to the image tower.
_EVA_OFFICIAL = r"(^|\.)blocks\.\d+\.(mlp\.(w1|w2|w3|w12|ffn_ln)\.|attn\.inner_attn_ln\.)|(^|\.)rope\.freqs_(cos|sin)$"
#: Module names of the EVA family (official or timm), never of a DINOv2/plain ViT.
_EVA_FAMILY = r"(^|\.)blocks\.\d+\.attn\.(q_bias|q_proj\.weight)$|(^|\.)blocks\.\d+\.mlp\.fc1_g\."
#: DINOv2's LayerScale, in timm's or Meta's (possibly chunked) blocks.
_DINOV2_BLOCK = r"^blocks\.\d+(\.\d+)?\.ls1\.gamma$"
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _has_openai_markers(checkpoint: Checkpoint) -> bool:
    return bool(checkpoint.extras) or checkpoint.container == "TorchScript"


def _is_openai_vit(checkpoint: Checkpoint) -> bool:
    return (
        _has_openai_markers(checkpoint)
        and "visual.proj" in checkpoint.state
        and "visual.conv1.weight" in checkpoint.state
    )


def _is_openai_resnet(checkpoint: Checkpoint) -> bool:
    return _has_openai_markers(checkpoint) and "visual.attnpool.c_proj.weight" in checkpoint.state


def _is_eva02_clip(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state
    return "visual.patch_embed.proj.weight" in keys and _matches(keys, r"^visual\.blocks\.\d+\.")


def _is_eva02_official(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state  # DINOv2-g shares the name mlp.w12, never LayerScale's ls1
    return "patch_embed.proj.weight" in keys and _matches(keys, _EVA_OFFICIAL) and not _matches(keys, _DINOV2_BLOCK)


def _is_open_clip_eva02(checkpoint: Checkpoint) -> bool:
    return _matches(checkpoint.state, r"^(visual\.)?trunk\.blocks\.\d+\.")


def _is_timm_eva(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state
    eva = _matches(keys, r"^blocks\.\d+\.attn\.") and _matches(keys, _EVA_FAMILY)
    return "patch_embed.proj.weight" in keys and eva and not _matches(keys, _DINOV2_BLOCK)


def _is_open_clip_vit(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state
    if "visual.conv1.weight" in keys:
        return "visual.class_embedding" in keys
    return "conv1.weight" in keys and "class_embedding" in keys and "text_projection" not in keys


def _is_open_clip_resnet(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state
    return _matches(keys, r"^(visual\.)?attnpool\.c_proj\.weight$") and _matches(keys, r"^(visual\.)?layer1\.")


def _is_dinov2_meta(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state
    if not _matches(keys, _DINOV2_BLOCK):
        return False
    return (
        "mask_token" in keys
        or "register_tokens" in keys
        or any(_CHUNKED_BLOCK.match(key) for key in keys)
        or _matches(keys, r"^blocks\.\d+\.mlp\.w12\.")
    )


def _is_timm_dinov2(checkpoint: Checkpoint) -> bool:
    keys = checkpoint.state
    return "cls_token" in keys and "patch_embed.proj.weight" in keys and _matches(keys, _DINOV2_BLOCK)


# ------------------------------------------------------------------------------------------------ conversions
def _renamed(state: Mapping[str, Tensor], rename: Callable[[str], str | None]) -> Converted:
    """``state`` under ``rename(key)`` (``None`` drops the entry), with each new key's file key."""
    converted: dict[str, Tensor] = {}
    origins: dict[str, str] = {}
    for key, value in state.items():
        new = rename(key)
        if new is not None:
            converted[new] = value
            origins[new] = key
    return converted, origins


#: BAAI EVA02 module names -> timm's (dotted, so ``w12`` is never read as ``w1``).
_EVA_TO_TIMM: tuple[tuple[str, str], ...] = (
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".mlp.w12.", ".mlp.fc1."),
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
)
#: Entries of BAAI's EVA02 files inference does not use: MIM-only (mask token, regression head) and the RoPE
#: tables, top-level and under each block's attention (timm recomputes them for every grid).
_EVA_UNUSED = re.compile(r"^(mask_token|lm_head\..*)$|(^|\.)rope\.freqs_(cos|sin)$")


def eva02_tower_names(state: Mapping[str, Tensor], *, prefix: str, target: Mapping[str, Tensor]) -> Converted:
    """BAAI's (or timm's) EVA02 image-tower keys -> the target's keys under ``prefix`` (``visual.trunk.``).

    timm names pass through unchanged, so a timm ``Eva`` state dict goes through the same function. The final
    ``norm`` becomes ``fc_norm`` when the target tower norms after pooling instead (vltk's tiny/small towers):
    LayerNorm acts per token, so norming the cls token after pooling equals pooling the normed tokens.
    """
    separate_qkv = any(key.endswith("attn.q_proj.weight") for key in state)
    final_norm = "norm." if f"{prefix}norm.weight" in target or f"{prefix}fc_norm.weight" not in target else "fc_norm."

    def rename(key: str) -> str | None:
        if _EVA_UNUSED.search(key):
            return None
        dotted = "." + key
        for old, new in _EVA_TO_TIMM:
            dotted = dotted.replace(old, new)
        if separate_qkv:
            dotted = re.sub(r"\.attn\.(q|v)_bias$", r".attn.\1_proj.bias", dotted)
        key = dotted[1:]
        if key.startswith("norm."):
            key = final_norm + key[len("norm.") :]
        return prefix + key

    return _renamed(state, rename)


#: Top-level text-tower names of open_clip's ``CLIP`` (OpenAI's layout), which ``CustomTextCLIP`` keeps under
#: ``text.`` (the list of open_clip's ``convert_to_custom_text_state_dict``).
_OPENAI_TEXT_NAMES: tuple[str, ...] = (
    "text_projection",
    "positional_embedding",
    "token_embedding",
    "transformer",
    "ln_final",
)


def open_clip_text_layout(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> Converted:
    """A CLIP checkpoint in OpenAI's text layout (text tower at the top level) -> open_clip ``CustomTextCLIP``
    keys (``text.*``); EVA-CLIP's ``text.logit_scale`` -> ``logit_scale``; a logit scale or bias stored with
    another number of dimensions reshaped to the target's. A ``CustomTextCLIP`` checkpoint passes through."""
    openai_text = "text_projection" in state

    def rename(key: str) -> str:
        if openai_text and key.split(".", 1)[0] in _OPENAI_TEXT_NAMES:
            return "text." + key
        if key == "text.logit_scale" and "logit_scale" not in state:
            return "logit_scale"
        return key

    converted, origins = _renamed(state, rename)
    for name in ("logit_scale", "logit_bias"):
        if name in converted and name in target and converted[name].ndim != target[name].ndim:
            converted[name] = converted[name].reshape(target[name].shape)
    return converted, origins


def _split_vision_text(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    vision = {key[len("visual.") :]: value for key, value in state.items() if key.startswith("visual.")}
    rest = {key: value for key, value in state.items() if not key.startswith("visual.")}
    return vision, rest


def _convert_eva02_clip(state: dict[str, Tensor], context: ConvertContext) -> Converted:
    vision, rest = _split_vision_text(state)
    converted, origins = eva02_tower_names(vision, prefix="visual.trunk.", target=context.target)
    origins = {key: "visual." + origin for key, origin in origins.items()}
    text, text_origins = open_clip_text_layout(rest, context.target)
    return {**converted, **text}, {**origins, **text_origins}


def _convert_eva_tower(state: dict[str, Tensor], context: ConvertContext) -> Converted:
    """A bare EVA02 image tower, BAAI's names or timm's."""
    return eva02_tower_names(state, prefix="visual.trunk.", target=context.target)


def _convert_open_clip(state: dict[str, Tensor], context: ConvertContext) -> Converted:
    """An open_clip checkpoint in either text layout, or a bare image tower (prefixed with ``visual.``)."""
    if not any(key.startswith(("visual.", "text.")) or key == "text_projection" for key in state):
        return _renamed(state, lambda key: "visual." + key)
    return open_clip_text_layout(state, context.target)


def convert_meta_dinov2(state: Mapping[str, Tensor], *, no_embed_class: bool) -> Converted:
    """Meta's DINOv2 key layout -> timm's (a timm state dict passes through unchanged).

    Meta adds the cls position to the cls token inside the model; timm's register models (``no_embed_class``)
    keep no cls position, so for those it is folded into ``cls_token`` here, which gives the same first-block
    input.
    """
    swiglu = {".mlp.w12.": ".mlp.fc1.", ".mlp.w3.": ".mlp.fc2."}

    def rename(key: str) -> str | None:
        if key == "mask_token":
            return None
        if key == "register_tokens":
            return "reg_token"
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        for old, new in swiglu.items():
            key = key.replace(old, new)
        return key

    converted, origins = _renamed(state, rename)
    positions, cls = converted.get("pos_embed"), converted.get("cls_token")
    if no_embed_class and "register_tokens" in state and positions is not None and cls is not None:
        converted["cls_token"] = cls + positions[:, :1]
        converted["pos_embed"] = positions[:, 1:]
    return converted, origins


def _convert_dinov2_meta(state: dict[str, Tensor], context: ConvertContext) -> Converted:
    return convert_meta_dinov2(state, no_embed_class=context.num_prefix_tokens == 0)


def _identity(state: dict[str, Tensor], context: ConvertContext) -> Converted:
    return dict(state), {key: key for key in state}


def _convert_open_clip_eva02(state: dict[str, Tensor], context: ConvertContext) -> Converted:
    """open_clip's timm tower: the whole model, or its bare image tower (``trunk.*``, ``head.*``)."""
    if any(key.startswith("trunk.") for key in state):
        return _renamed(state, lambda key: "visual." + key)
    return open_clip_text_layout(state, context.target)


# ----------------------------------------------------------------------------------------------------- table
#: Every layout, in detection order: the first whose signature matches names the file. OpenAI before open_clip
#: (same keys plus markers), BAAI's EVA02 layouts before timm's, Meta's DINOv2 before timm's.
FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat(
        "openai-clip-vit",
        "OpenAI CLIP ViT (TorchScript archive or its state dict)",
        "clip-vit",
        _is_openai_vit,
        _convert_open_clip,
    ),
    WeightFormat(
        "openai-clip-resnet",
        "OpenAI CLIP ResNet (TorchScript archive or its state dict)",
        "clip-resnet",
        _is_openai_resnet,
        _convert_open_clip,
    ),
    WeightFormat(
        "eva02-clip",
        "EVA02-CLIP (BAAI release: visual.blocks.N.attn.q_proj, ...)",
        "eva02",
        _is_eva02_clip,
        _convert_eva02_clip,
    ),
    WeightFormat(
        "eva02",
        "EVA02 (BAAI MIM release or Rein's eva02_L_converted.pth: blocks.N.mlp.w1, ...)",
        "eva02",
        _is_eva02_official,
        _convert_eva_tower,
    ),
    WeightFormat(
        "open_clip-eva02",
        "open_clip EVA02 (timm tower: visual.trunk.*)",
        "eva02",
        _is_open_clip_eva02,
        _convert_open_clip_eva02,
    ),
    WeightFormat("timm-eva", "timm Eva (blocks.N.attn.q_bias, ...)", "eva02", _is_timm_eva, _convert_eva_tower),
    WeightFormat(
        "open_clip-vit", "open_clip ViT (visual.conv1, ...)", "clip-vit", _is_open_clip_vit, _convert_open_clip
    ),
    WeightFormat(
        "open_clip-resnet",
        "open_clip ResNet (visual.attnpool, ...)",
        "clip-resnet",
        _is_open_clip_resnet,
        _convert_open_clip,
    ),
    WeightFormat(
        "dinov2-meta",
        "DINOv2 (Meta release or Rein's dinov2_converted.pth)",
        "dinov2",
        _is_dinov2_meta,
        _convert_dinov2_meta,
    ),
    WeightFormat("timm-dinov2", "timm DINOv2 ViT (blocks.N.ls1.gamma, ...)", "dinov2", _is_timm_dinov2, _identity),
)


def detect_format(checkpoint: Checkpoint) -> WeightFormat | None:
    """The first of :data:`FORMATS` whose signature ``checkpoint`` matches; ``None`` for a layout vltk does not read."""
    return next((candidate for candidate in FORMATS if candidate.detect(checkpoint)), None)


def formats_for(backbone: str) -> tuple[WeightFormat, ...]:
    """The layouts the registered backbone ``backbone`` reads, in detection order."""
    return tuple(candidate for candidate in FORMATS if candidate.backbone == backbone)


__all__ = [
    "FORMATS",
    "ConvertContext",
    "Converted",
    "WeightFormat",
    "convert_meta_dinov2",
    "detect_format",
    "eva02_tower_names",
    "formats_for",
    "open_clip_text_layout",
]
