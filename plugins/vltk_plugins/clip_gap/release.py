"""CLIP the Gap's released checkpoints (vidit09/domaingen, detectron2) -> ``clip-resnet`` + ``clip-faster-rcnn``
+ the ``clip-gap`` augmenter.

A release is detectron2's ``DetectionCheckpointer`` file, ``{"model": ..., "iteration", ...}``, of
``ClipRCNNWithClipBackboneWithOffsetGenTrainable``: the CLIP visual tower as the backbone (``backbone.enc.*``,
OpenAI names), the RPN (``proposal_generator.rpn_head.conv``, ``objectness_logits``, ``anchor_deltas``), the box
predictor (``roi_heads.box_predictor.bbox_pred``; its ``cls_score`` is a ``ClipPredictor`` holding the whole CLIP
``model`` whose ``visual`` *is* ``backbone.enc``, an untrained copy ``frozen_clip_model``, the alias
``visual_enc`` and projections for features wider than 512), the fitted offsets ``offsets`` and detectron2's
``pixel_mean``/``pixel_std``.

The map: ``backbone.enc.X`` is ``backbone.visual.X``; CLIP's text side in ``cls_score.model`` is
``backbone.text.*`` (the class embeddings come from it, as upstream computes them once from that tower);
``offsets`` is ``augmenters.0.offsets`` (marked fitted; 15 of them are the Diverse Weather prompts of the recipe,
7 the PASCAL VOC -> Comic/Watercolor model's style prompts, set in the recipe). Two tensors change layout, as
data in the table: detectron2 orders the anchors of a location size-major (``s * R + r``), torchvision
ratio-major (``r * S + s``), so the rows of ``objectness_logits`` and ``anchor_deltas`` are permuted;
detectron2's class-specific ``bbox_pred`` has ``4 K`` rows where torchvision's has a background slot first,
written as zeros (no prediction reads it). Left out: the duplicates of the visual tower
(``cls_score.model.visual``, ``cls_score.visual_enc``, ``backbone.backbone_unchanged`` = ``layer3[:19]``), the
frozen copy, the unused projections (``backbone.proj``/``global_proj``, ``cls_score.projection*``), detectron2's
``roi_heads.res5`` (built by ``Res5ROIHeads``, replaced by the backbone's layer4 in ``ClipRes5ROIHeadsAttn``)
and the pixel statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import UserError
from vltk_plugins.clip_gap.options import VOC_SOURCE_PROMPT, VOC_STYLE_PROMPTS, diverse_weather_prompts
from vltk_plugins.common.releases import Drop, ReleaseFile, ReleaseFormat, ReleasePlan, Rename, layer_count, recipe_file
from vltk_plugins.common.releases.hints import hinted

TITLE = "CLIP the Gap release (detectron2 model: backbone.enc.*, proposal_generator.*, roi_heads.*, offsets)"

#: Bottleneck blocks per stage -> clip-resnet variant.
RESNETS = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101", (1, 1, 1, 1): "tiny"}
#: detectron2's C4 anchors (and the clip-faster-rcnn defaults): 5 sizes x 3 aspect ratios per location.
ANCHOR_SIZES, ASPECT_RATIOS = 5, 3

_CS = r"roi_heads\.box_predictor\.cls_score\."


def anchor_rows(sizes: int, ratios: int, per_anchor: int) -> tuple[int, ...]:
    """Released row of every vltk row: vltk anchor ``r * sizes + s`` is detectron2's ``s * ratios + r``."""
    return tuple(
        (s * ratios + r) * per_anchor + k for r in range(ratios) for s in range(sizes) for k in range(per_anchor)
    )


def rules(*, sizes: int = ANCHOR_SIZES, ratios: int = ASPECT_RATIOS, class_agnostic: bool = False) -> list[Any]:
    """The CLIP the Gap map (released key -> vltk key) for ``sizes x ratios`` anchors per location."""
    return [
        Rename(r"backbone\.enc\.(.*)", r"backbone.visual.\1"),
        Rename(
            _CS + r"model\.(transformer\..*|token_embedding\.weight|positional_embedding|ln_final\..*)",
            r"backbone.text.\1",
        ),
        Rename(_CS + r"model\.text_projection", "backbone.text.text_projection"),
        Rename(_CS + r"model\.logit_scale", "backbone.logit_scale"),
        Drop(_CS + r"(model\.visual|visual_enc)\..*", "the same tensors as backbone.enc (one module, three names)"),
        Drop(_CS + r"frozen_clip_model\..*", "an untrained copy of CLIP kept by ClipPredictor"),
        Drop(_CS + r"(projection|projection_global)\.(weight|bias)", "unused: the pooled features are 512 wide"),
        Drop(r"backbone\.(proj|global_proj)\.(weight|bias)", "unused by the released forward"),
        Drop(r"backbone\.backbone_unchanged\..*", "layer3's first 19 blocks under a second name (ClipRN101)"),
        Drop(r"roi_heads\.res5\..*", "Res5ROIHeads' own res5, replaced by the backbone's layer4"),
        Drop(r"pixel_(mean|std)", "vltk normalises with the backbone's CLIP mean and std"),
        Drop(r"proposal_generator\.anchor_generator\..*", "anchors are generated, not learned"),
        Rename(r"proposal_generator\.rpn_head\.conv\.(weight|bias)", r"decoder.rpn.head.conv.0.0.\1"),
        Rename(
            r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)",
            r"decoder.rpn.head.cls_logits.\1",
            rows=anchor_rows(sizes, ratios, 1),
        ),
        Rename(
            r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)",
            r"decoder.rpn.head.bbox_pred.\1",
            rows=anchor_rows(sizes, ratios, 4),
        ),
        Rename(
            r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)",
            r"decoder.bbox_pred.\1",
            prepend_rows=0 if class_agnostic else 4,
        ),
        Rename(r"offsets", "augmenters.0.offsets"),
    ]


def _detect(release: ReleaseFile) -> bool:
    return release.has("backbone.enc.", "proposal_generator.rpn_head.", "roi_heads.box_predictor.")


def _plan(release: ReleaseFile, hints: dict[str, Any]) -> ReleasePlan:
    import torch

    state = release.state
    blocks = tuple(layer_count(release, rf"backbone\.enc\.layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4))
    variant = RESNETS.get(blocks)
    if variant is None:
        raise UserError(f"{TITLE}: a ResNet of {list(blocks)} blocks per stage, which clip-resnet does not build")
    box_rows = int(state["roi_heads.box_predictor.bbox_pred.weight"].shape[0])
    class_agnostic = box_rows == 4 and bool(hinted(hints, "decoder.class_agnostic_box", False))
    num_classes = 1 if class_agnostic else box_rows // 4
    config = recipe_file(Path(__file__).parent / "recipes" / "dwd.yaml")
    config["recipe"] = "clip-gap/dwd"
    config["backbone"] = {**config["backbone"], "variant": variant}
    config["backbone"].pop("pretrained", None)
    if class_agnostic:
        config["decoder"] = {**config["decoder"], "class_agnostic_box": True}
    extra: dict[str, Any] = {}
    notes = [f"backbone: clip-resnet {variant}; {num_classes} classes (names from the dataset)"]
    if "offsets" in state:
        offsets = state["offsets"]
        augmenter = dict((config.get("augmenters") or [{"name": "clip-gap"}])[0])
        augmenter["offset_size"] = int(offsets.shape[-1])
        count = int(offsets.shape[0])
        if count == len(VOC_STYLE_PROMPTS) and count != len(
            augmenter.get("target_prompts") or diverse_weather_prompts()
        ):
            # the PASCAL VOC -> Comic/Watercolor model (ClipRCNNWithClipBackboneWithOffsetGenTrainableVOC): its 7
            # style prompts, from "a realistic image"
            augmenter["source_prompt"], augmenter["target_prompts"] = VOC_SOURCE_PROMPT, list(VOC_STYLE_PROMPTS)
            notes.append("7 offsets: the PASCAL VOC -> Comic/Watercolor model, with its style prompts")
        config["augmenters"] = [augmenter]
        extra["augmenters.0.fitted"] = torch.ones((), dtype=torch.bool)
        notes.append(
            f"{offsets.shape[0]} fitted offsets of {offsets.shape[-1]}x{offsets.shape[-1]}: the recipe's "
            "clip-gap.target_prompts must list as many target domains"
        )
    sizes = hinted(hints, "decoder.anchor_sizes", None) or config["decoder"].get("anchor_sizes") or [0] * ANCHOR_SIZES
    ratios = hinted(hints, "decoder.aspect_ratios", None) or config["decoder"].get("aspect_ratios")
    ratios = ratios or [0] * ASPECT_RATIOS
    return ReleasePlan(
        rules=rules(sizes=len(sizes), ratios=len(ratios), class_agnostic=class_agnostic),
        config=config,
        num_classes=num_classes,
        class_names=None,
        backbone_included=True,
        extra=extra,
        notes=notes,
    )


CLIP_GAP_RELEASE = ReleaseFormat(
    name="clip-gap",
    title=TITLE,
    expects="backbone.enc.*, proposal_generator.rpn_head.*, roi_heads.box_predictor.*, offsets",
    detect=_detect,
    plan=_plan,
)

__all__ = ["CLIP_GAP_RELEASE", "anchor_rows", "rules"]
