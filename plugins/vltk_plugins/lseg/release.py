"""LSeg's released checkpoints (isl-org/lang-seg, PyTorch Lightning) -> ``lseg-vit`` backbone + ``lseg`` decoder.

A release (``demo_e200.ckpt``) is a Lightning file: ``{"state_dict": {"net.<LSegNet>"...}, "hyper_parameters",
"epoch", ...}``. ``LSegNet`` holds three parts, each mapped one to one:

* ``net.pretrained.model.*``: LSeg's image encoder, a timm ViT (``vit_large_patch16_384`` for
  ``clip_vitl16_384``) -> the ``lseg-vit`` backbone's ``trunk`` (timm's own names; the ImageNet ``head`` is left
  out, LSeg never runs it). ``net.pretrained.act_postprocess1..4``: DPT's reassemble stage -> the decoder's
  ``reassemble.levels.0..3`` (``0.project.0`` the readout Linear, ``3`` the 1x1 conv, ``4`` the ConvTranspose /
  stride-2 conv; :mod:`vltk_plugins.lseg.reassemble`).
* ``net.clip_pretrained.*``: the whole OpenAI CLIP (``clip.load("ViT-B/32")``, OpenAI's names). Its text half
  (``transformer``, ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``,
  ``logit_scale``) -> the backbone's text tower; its image tower ``visual.*`` is left out: LSeg loads it and
  never runs it.
* ``net.scratch.*``: the decoder. ``layer{N}_rn`` is ``scratch.{N-1}``, ``refinenet{N}`` is ``fusion.{N-1}``
  (``resConfUnit1`` the ``lateral_unit``, ``resConfUnit2`` the ``output_unit``, ``bn`` the ``norm``), ``head1``
  is ``head``, ``head_block.depthwise.depthwise`` is ``spatial.conv``; ``refinenet4.resConfUnit1`` is left out
  (built by DPT, run by no forward).

The architecture is read off the shapes (image tower width/patch/depth, reassemble widths, text tower width and
depth, head width); the readout is ``project`` when ``act_postprocess1.0.project.0`` is there (LSeg's default),
else ``ignore`` (``decoder.readout=add`` on the command line for DPT's third choice, which no shape tells apart).
The spatial block comes from the Lightning ``hyper_parameters`` (``arch_option``, ``block_depth``,
``activation``) when the file records them. Labels are encoded bare (``templates: ["{}"]``), as LSeg tokenises
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import CITYSCAPES_CLASSES, UserError
from vltk_plugins.common.releases import Drop, ReleaseFile, ReleaseFormat, ReleasePlan, Rename, layer_count, recipe_file
from vltk_plugins.common.releases.hints import hinted

TITLE = "LSeg release (PyTorch Lightning state_dict: net.pretrained.*, net.clip_pretrained.*, net.scratch.*)"

#: (width, patch, depth) of LSeg's timm image encoder -> the ``lseg-vit`` ``image_model``.
IMAGE_MODELS = {(1024, 16, 24): "vit_large_patch16_384", (768, 32, 12): "vit_base_patch32_384", (32, 16, 4): "tiny"}
#: (width, joint width, depth) of the CLIP text tower -> the open_clip config ``lseg-vit`` builds it from.
TEXT_MODELS = {(512, 512, 12): "ViT-B-32-quickgelu", (768, 768, 12): "RN50x16-quickgelu", (64, 64, 2): "tiny"}
#: LSeg's ``arch_option`` -> vltk's ``spatial_block``.
SPATIAL_BLOCKS = {1: "bottleneck", 2: "depthwise"}

_UNITS = {"resConfUnit1": "lateral_unit", "resConfUnit2": "output_unit"}
_LAYERS = {"conv1": "conv1", "conv2": "conv2", "bn1": "norm1", "bn2": "norm2"}
_REASSEMBLE = {r"0\.project\.0": "readout", "3": "project", "4": "resample"}


def rules() -> list[Rename | Drop]:
    """The LSeg map, released key -> vltk key (one rule per level: LSeg counts from 1, vltk from 0)."""
    table: list[Rename | Drop] = [
        Drop(r"net\.scratch\.refinenet4\.resConfUnit1\..*", "DPT builds it on the coarsest level, no forward runs it"),
        Drop(r"net\.pretrained\.model\.head\.(weight|bias)", "timm's ImageNet classifier, which LSeg never runs"),
        Drop(r"net\.clip_pretrained\.visual\..*", "CLIP's image tower, which LSeg loads but never runs"),
        Rename(r"net\.pretrained\.model\.(.*)", r"backbone.trunk.\1"),
    ]
    for level in range(1, 5):
        for upstream, vltk_name in _REASSEMBLE.items():
            table.append(
                Rename(
                    rf"net\.pretrained\.act_postprocess{level}\.{upstream}\.(weight|bias)",
                    rf"decoder.reassemble.levels.{level - 1}.{vltk_name}.\1",
                )
            )
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


def _shape(release: ReleaseFile, key: str) -> list[int]:
    value = release.state.get(key)
    if value is None:
        raise UserError(
            f"{TITLE}: the file has no {key}; an LSeg release holds its DPT image encoder (net.pretrained.*), CLIP "
            "(net.clip_pretrained.*) and the decoder (net.scratch.*); pass the complete Lightning checkpoint"
        )
    return list(value.shape)


def _image_model(release: ReleaseFile) -> str:
    width, _, patch, _ = _shape(release, "net.pretrained.model.patch_embed.proj.weight")
    depth = layer_count(release, r"net\.pretrained\.model\.blocks\.(\d+)\.")
    found = IMAGE_MODELS.get((width, patch, depth))
    if found is None:
        known = ", ".join(f"{name} ({w} wide, patch {p}, {d} blocks)" for (w, p, d), name in IMAGE_MODELS.items())
        raise UserError(
            f"{TITLE}: net.pretrained.model is a ViT {width} wide with patch {patch} and {depth} blocks, which is none "
            f"of LSeg's image encoders ({known})"
        )
    return found


def _text_model(release: ReleaseFile) -> str:
    width, joint = _shape(release, "net.clip_pretrained.text_projection")
    depth = layer_count(release, r"net\.clip_pretrained\.transformer\.resblocks\.(\d+)\.")
    found = TEXT_MODELS.get((width, joint, depth))
    if found is None:
        known = ", ".join(f"{name} ({w} wide, {j}-d, {d} blocks)" for (w, j, d), name in TEXT_MODELS.items())
        raise UserError(
            f"{TITLE}: the CLIP text tower is {width} wide, {joint}-d, with {depth} blocks, which is none of the "
            f"towers vltk builds for LSeg ({known})"
        )
    return found


def _plan(release: ReleaseFile, hints: dict[str, Any]) -> ReleasePlan:
    state = release.state
    image_model, text_model = _image_model(release), _text_model(release)
    config = recipe_file(Path(__file__).parent / "recipes" / "gta2city.yaml")
    config["recipe"] = "lseg/gta2city"
    config["backbone"] = {"name": "lseg-vit", "image_model": image_model, "text_model": text_model, "pyramid": "dpt"}
    config["prompter"] = {**dict(config.get("prompter") or {"name": "clip-template"}), "templates": ["{}"]}
    decoder = dict(config.get("decoder") or {"name": "lseg"})
    decoder["width"] = _shape(release, "net.scratch.layer1_rn.weight")[0]
    decoder["reassemble"] = "dpt"
    decoder["reassemble_widths"] = [
        _shape(release, f"net.pretrained.act_postprocess{n}.3.weight")[0] for n in (1, 2, 3, 4)
    ]
    projected = "net.pretrained.act_postprocess1.0.project.0.weight" in state
    decoder["readout"] = hinted(hints, "decoder.readout", "project" if projected else "ignore")
    hyper = release.meta.get("hyper_parameters") or {}
    hyper = hyper if isinstance(hyper, dict) else {}
    if "net.scratch.head_block.depthwise.depthwise.weight" not in state:
        decoder["num_spatial_blocks"] = 0
    elif hyper.get("arch_option") in SPATIAL_BLOCKS:
        decoder["spatial_block"] = SPATIAL_BLOCKS[int(hyper["arch_option"])]
        decoder["num_spatial_blocks"] = int(hyper.get("block_depth") or decoder.get("num_spatial_blocks") or 1)
        if hyper.get("activation") in ("lrelu", "tanh", "relu"):
            decoder["activation"] = hyper["activation"]
    config["decoder"] = decoder
    labels = hyper.get("labels")
    return ReleasePlan(
        rules=rules(),
        config=config,
        num_classes=len(labels) if labels else len(CITYSCAPES_CLASSES),  # any count fits a classifier-free head
        class_names=[str(label) for label in labels] if labels else None,
        backbone_included=True,
        notes=[
            f"backbone: lseg-vit, image tower {image_model} (net.pretrained.model), text tower {text_model} "
            f"(net.clip_pretrained); decoder: lseg with DPT's reassemble (widths {decoder['reassemble_widths']}, "
            f"readout {decoder['readout']})",
            "the head has no classifier: classes come from the dataset (or vltk predict --labels)",
        ],
    )


LSEG_RELEASE = ReleaseFormat(
    name="lseg",
    title=TITLE,
    expects="net.pretrained.model.*, net.pretrained.act_postprocess1..4.*, net.clip_pretrained.*, net.scratch.*",
    detect=_detect,
    plan=_plan,
)

__all__ = ["IMAGE_MODELS", "LSEG_RELEASE", "TEXT_MODELS", "rules"]
