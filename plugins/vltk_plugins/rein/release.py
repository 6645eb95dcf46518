"""Rein's released checkpoints (w1oves/Rein, mmseg 1.x) -> a vltk checkpoint of ``rein`` + ``mask2former``.

A release such as ``dinov2_rein_and_head.pth`` is an mmseg ``{"meta", "state_dict"}`` file holding only what
trains: the adapter inside the backbone (``backbone.reins.*``: ``learnable_tokens_a/_b`` for LoRA tokens or
``learnable_tokens``, ``scale``, ``mlp_token2feat``, ``mlp_delta_f``, ``transform``, ``merge``) and the head
(``decode_head.*``, mmdet's ``Mask2FormerHead`` as Rein subclasses it). Rein's ``ReinsDinoVisionTransformer``
drops the frozen trunk from its own state dict, so the trunk comes from the backbone file
(``--backbone-weights``, e.g. ``dinov2_converted.pth``); Rein's ``tools/generate_full_weights.py`` writes the trunk
back under ``backbone.``, and such a full file is its own backbone file (``backbone.pretrained`` points at it).

The map is data: ``backbone.reins.X`` is ``adapter.X``; the head is
:func:`vltk_plugins.decoders.mask2former.release.mmdet_head_rules` under ``decode_head.``, with ``query_embed`` /
``query_feat`` dropped as Rein's head deletes them when the link provides the queries. The architecture is read off
the shapes: token count, LoRA rank, query width, backbone width and depth (DINOv2 unless only EVA02 has that size,
or the backbone file says otherwise), head widths and depths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import CITYSCAPES_CLASSES, UserError
from vltk_plugins.common.releases import Drop, ReleaseFile, ReleaseFormat, ReleasePlan, Rename, prefixed, recipe_file
from vltk_plugins.common.releases.hints import hinted
from vltk_plugins.decoders.mask2former.release import mmdet_head_options, mmdet_head_rules

TITLE = "Rein release (mmseg 1.x: backbone.reins.* + decode_head.* of mmdet's Mask2FormerHead)"

#: (width, depth) -> variant of the backbones Rein ships heads for.
DINOV2_SIZES = {(192, 4): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1536, 40): "giant"}
EVA02_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}

ADAPTER_RULES = (
    Rename(r"backbone\.reins\.(learnable_tokens|learnable_tokens_a|learnable_tokens_b|scale)", r"adapter.\1"),
    Rename(r"backbone\.reins\.(mlp_token2feat|mlp_delta_f|transform|merge)\.(weight|bias)", r"adapter.\1.\2"),
)

TRUNK_DROP = Drop(r"backbone\.(?!reins\.).*", "the frozen trunk: read from this file through backbone.pretrained")


def _detect(release: ReleaseFile) -> bool:
    return release.has("backbone.reins.", "decode_head.")


def _backbone_kind(width: int, depth: int, hints: dict[str, Any]) -> str:
    named = hinted(hints, "backbone", None) or hinted(hints, "backbone.name", None)
    if named in ("dinov2", "eva02"):
        return str(named)
    weights = hints.get("backbone_weights")
    if weights:
        from vltk_plugins.common.weights import detect_format, read_checkpoint

        found = detect_format(read_checkpoint(str(weights), "rein release", "backbone checkpoint"))
        if found is not None and found.backbone in ("dinov2", "eva02"):
            return found.backbone
    if (width, depth) in DINOV2_SIZES:
        return "dinov2"
    if (width, depth) in EVA02_SIZES:
        return "eva02"
    raise UserError(
        f"{TITLE}: the Rein tokens are {depth} layers x {width} wide, which is no DINOv2 or EVA02 size vltk builds; "
        "the file is of another backbone"
    )


def _class_names(release: ReleaseFile, num_classes: int) -> list[str] | None:
    meta = release.meta.get("meta") or {}
    classes = (meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES")
    if classes and len(classes) == num_classes:
        return [str(name) for name in classes]
    return list(CITYSCAPES_CLASSES) if num_classes == len(CITYSCAPES_CLASSES) else None


def _plan(release: ReleaseFile, hints: dict[str, Any]) -> ReleasePlan:
    state = release.state
    tokens = state.get("backbone.reins.learnable_tokens_b", state.get("backbone.reins.learnable_tokens"))
    if tokens is None:
        raise UserError(f"{TITLE}: the file has backbone.reins.* but no learnable tokens; it is damaged")
    depth, width = int(tokens.shape[0]), int(tokens.shape[-1])
    lora = state.get("backbone.reins.learnable_tokens_a")
    token_length = int((lora if lora is not None else state["backbone.reins.learnable_tokens"]).shape[1])
    linked = "decode_head.querys2feat.weight" in state
    kind = _backbone_kind(width, depth, hints)
    variant = (DINOV2_SIZES if kind == "dinov2" else EVA02_SIZES).get((width, depth))
    if variant is None:
        raise UserError(f"{TITLE}: {kind} has no variant {depth} layers x {width} wide; pass backbone=dinov2 or eva02")
    trunk = [key for key in state if key.startswith("backbone.") and not key.startswith("backbone.reins.")]
    config = recipe_file(Path(__file__).parent / "recipes" / "gta2city.yaml")
    config["recipe"] = "rein/gta2city"
    config["backbone"] = {"name": kind, "variant": variant, "patch_size": 16}
    if trunk:
        config["backbone"]["pretrained"] = str(Path(release.path).resolve())
    adapter: dict[str, Any] = {
        "name": "rein",
        "token_length": token_length,
        "lora_dim": int(lora.shape[2]) if lora is not None else None,
        "link_token_to_query": linked,
    }
    if linked:
        adapter["query_dims"] = int(state["backbone.reins.transform.weight"].shape[0])
    if "backbone.reins.scale" not in state:
        adapter["zero_mlp_delta_f"] = True
    config["adapter"] = adapter
    config["decoder"] = mmdet_head_options(release, "decode_head.", hints, TITLE)
    if linked:
        config["decoder"]["num_queries"] = token_length
    num_classes = int(state["decode_head.cls_embed.weight"].shape[0]) - 1
    rules = [*ADAPTER_RULES, *prefixed(r"decode_head\.", mmdet_head_rules(linked=linked)), TRUNK_DROP]
    if not linked:  # upstream keeps transform/merge even without the link; vltk builds them only with it
        rules.insert(0, Drop(r"backbone\.reins\.(transform|merge)\.(weight|bias)", "unused without the link"))
    notes = [f"backbone: {kind} {variant} ({depth} blocks x {width}), Rein tokens {token_length}"]
    if not trunk:
        notes.append("the file holds no backbone trunk: give the backbone file (--backbone-weights FILE)")
    return ReleasePlan(
        rules=rules,
        config=config,
        num_classes=num_classes,
        class_names=_class_names(release, num_classes),
        backbone_included=False,
        notes=notes,
    )


REIN_RELEASE = ReleaseFormat(
    name="rein",
    title=TITLE,
    expects="backbone.reins.learnable_tokens_a, decode_head.pixel_decoder.*, decode_head.transformer_decoder.*",
    detect=_detect,
    plan=_plan,
)

__all__ = ["REIN_RELEASE"]
