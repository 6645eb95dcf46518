"""LSeg's released checkpoints (isl-org/lang-seg, PyTorch Lightning) -> ``clip-vit`` + ``lseg`` decoder.

A release (``demo_e200.ckpt``) is a Lightning file: ``{"state_dict": {"net.<LSegNet>"...}, "hyper_parameters",
"epoch", ...}``. ``LSegNet`` keeps CLIP (``net.clip_pretrained.*``, OpenAI's names: ``visual.*``, ``transformer.*``,
``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``), its DPT image
encoder (``net.pretrained.model.*``: a timm ViT, and ``net.pretrained.act_postprocess1..4``: DPT's reassemble
stage) and the decoder (``net.scratch.layer1_rn..layer4_rn``, ``refinenet1..4`` with ``resConfUnit1/2``
(``conv1``, ``bn1``, ``conv2``, ``bn2``) and ``out_conv``, ``head1`` and the spatial block ``head_block``).

The map (docstring of :mod:`vltk_plugins.lseg.decoder`): ``layer{N}_rn`` is ``scratch.{N-1}``, ``refinenet{N}`` is
``fusion.{N-1}`` (``resConfUnit1`` the ``lateral_unit``, ``resConfUnit2`` the ``output_unit``, ``bn`` the
``norm``), ``head1`` is ``head``, ``head_block.depthwise.depthwise`` is ``spatial.conv``; CLIP goes to the
``clip-vit`` backbone's ``visual``/``text`` towers. Left out, with the reason the report prints:
``refinenet4.resConfUnit1`` (built by DPT, run by no forward; vltk does not build it) and the DPT image encoder,
which no vltk backbone is: vltk's pyramid comes from its ViT's own levels, so ``layer{N}_rn`` of a real release
(DPT widths 256/512/1024/1024) do not fit vltk's ``scratch`` convs and such a file is refused naming both shapes
(docs/deviations.md). Options no shape tells (``spatial_block``, ``num_spatial_blocks``, ``activation``) come from
the ``lseg/gta2city`` recipe or the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import CITYSCAPES_CLASSES
from vltk_plugins.common.releases import Drop, ReleaseFile, ReleaseFormat, ReleasePlan, Rename, layer_count, recipe_file
from vltk_plugins.common.releases.hints import hinted

TITLE = "LSeg release (PyTorch Lightning state_dict: net.clip_pretrained.*, net.pretrained.*, net.scratch.*)"

#: (vision width, patch) of OpenAI CLIP -> the open_clip config vltk builds for OpenAI weights.
CLIP_MODELS = {(768, 32): "ViT-B-32-quickgelu", (768, 16): "ViT-B-16-quickgelu", (1024, 14): "ViT-L-14-quickgelu"}

_UNITS = {"resConfUnit1": "lateral_unit", "resConfUnit2": "output_unit"}
_LAYERS = {"conv1": "conv1", "conv2": "conv2", "bn1": "norm1", "bn2": "norm2"}


def rules() -> list[Rename | Drop]:
    """The LSeg map, released key -> vltk key (one rule per level: LSeg counts from 1, vltk from 0)."""
    table: list[Rename | Drop] = [
        Drop(r"net\.scratch\.refinenet4\.resConfUnit1\..*", "DPT builds it on the coarsest level, no forward runs it"),
        Drop(r"net\.pretrained\..*", "LSeg's DPT image encoder (timm ViT + reassemble), which no vltk backbone is"),
    ]
    for level in range(1, 5):
        table.append(Rename(rf"net\.scratch\.layer{level}_rn\.weight", f"decoder.scratch.{level - 1}.weight"))
        for unit, vltk_unit in _UNITS.items():
            for layer, vltk_layer in _LAYERS.items():
                table.append(
                    Rename(
                        rf"net\.scratch\.refinenet{level}\.{unit}\.{layer}\.(.*)",
                        rf"decoder.fusion.{level - 1}.{vltk_unit}.{vltk_layer}.\1",
                    )
                )
        table.append(
            Rename(
                rf"net\.scratch\.refinenet{level}\.out_conv\.(weight|bias)", rf"decoder.fusion.{level - 1}.out_conv.\1"
            )
        )
    table += [
        Rename(r"net\.scratch\.head1\.(weight|bias)", r"decoder.head.\1"),
        Rename(r"net\.scratch\.head_block\.depthwise\.depthwise\.(weight|bias)", r"decoder.spatial.conv.\1"),
        Rename(r"net\.clip_pretrained\.visual\.(.*)", r"backbone.visual.\1"),
        Rename(
            r"net\.clip_pretrained\.(transformer\..*|token_embedding\.weight|positional_embedding|ln_final\..*"
            r"|text_projection)",
            r"backbone.text.\1",
        ),
        Rename(r"net\.clip_pretrained\.logit_scale", "backbone.logit_scale"),
    ]
    return table


def _detect(release: ReleaseFile) -> bool:
    return release.has("net.clip_pretrained.", "net.scratch.")


def _plan(release: ReleaseFile, hints: dict[str, Any]) -> ReleasePlan:
    state = release.state
    conv1 = state.get("net.clip_pretrained.visual.conv1.weight")
    width, patch = (int(conv1.shape[0]), int(conv1.shape[-1])) if conv1 is not None else (0, 0)
    config = recipe_file(Path(__file__).parent / "recipes" / "gta2city.yaml")
    config["recipe"] = "lseg/gta2city"
    named = hinted(hints, "backbone.variant", None)
    if named == "tiny":
        config["backbone"] = {"name": "clip-vit", "variant": "tiny"}
    else:
        model = hinted(hints, "backbone.model", None) or CLIP_MODELS.get((width, patch), "ViT-B-32-quickgelu")
        config["backbone"] = {"name": "clip-vit", "model": str(model)}
    decoder = dict(config.get("decoder") or {"name": "lseg"})
    decoder["width"] = int(state["net.scratch.layer1_rn.weight"].shape[0])
    if "net.scratch.head_block.depthwise.depthwise.weight" not in state:
        decoder["num_spatial_blocks"] = 0
    config["decoder"] = decoder
    hyper = release.meta.get("hyper_parameters") or {}
    labels = hyper.get("labels") if isinstance(hyper, dict) else None
    depth = layer_count(release, r"net\.clip_pretrained\.visual\.transformer\.resblocks\.(\d+)\.")
    return ReleasePlan(
        rules=rules(),
        config=config,
        num_classes=len(labels) if labels else len(CITYSCAPES_CLASSES),  # any count fits a classifier-free head
        class_names=[str(label) for label in labels] if labels else None,
        backbone_included=True,
        notes=[
            f"backbone: clip-vit {config['backbone'].get('model', 'tiny')} from net.clip_pretrained ({depth} blocks); "
            "LSeg's DPT image encoder is left out (docs/deviations.md)",
            "the head has no classifier: classes come from the dataset (or vltk predict --labels)",
        ],
    )


LSEG_RELEASE = ReleaseFormat(
    name="lseg",
    title=TITLE,
    expects="net.clip_pretrained.*, net.scratch.layer1_rn.weight, net.scratch.refinenet1.*",
    detect=_detect,
    plan=_plan,
)

__all__ = ["LSEG_RELEASE", "rules"]
