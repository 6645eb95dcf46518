"""``vltk convert SRC DST --to BACKBONE [OPTION=VALUE ...]``: a weights file rewritten in the backbone's layout;
without ``--to``, a released paper checkpoint rewritten as a vltk checkpoint (:mod:`vltk_plugins.common.releases`).

``backbone.pretrained=FILE`` already reads every layout a backbone knows (:mod:`vltk_plugins.common.weights`)
and converts it on each load. ``vltk convert`` does that work once and writes the result: an open_clip state
dict (``eva02``, ``clip-vit``, ``clip-resnet``) or a timm one (``dinov2``) with the patch kernel and position grid
already at the backbone's patch size and grid, which ``backbone.pretrained=DST`` with the same options then
loads strictly, and which open_clip or timm load themselves. The backbone options after the paths are the ones
``vltk show backbone NAME`` lists (``variant=large patch_size=16``); the target is built on the meta device, so
converting ViT-g costs no memory beyond the file. Light module: click and the options models only; torch and the
backbone modules are imported when the command runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from vltk.api import Options, UserError, did_you_mean
from vltk_plugins.backbones.clip_resnet.options import ClipResNetOptions
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.backbones.open_clip_vit.options import ClipViTOptions, Eva02Options

#: backbone -> (its options model, "module:function" returning its target state dict and WeightSpec).
CONVERTIBLE: dict[str, tuple[type[Options], str]] = {
    "eva02": (Eva02Options, "vltk_plugins.backbones.open_clip_vit.model:eva02_weight_target"),
    "clip-vit": (ClipViTOptions, "vltk_plugins.backbones.open_clip_vit.model:clip_vit_weight_target"),
    "clip-resnet": (ClipResNetOptions, "vltk_plugins.backbones.clip_resnet.model:clip_resnet_weight_target"),
    "dinov2": (Dinov2Options, "vltk_plugins.backbones.dinov2.model:dinov2_weight_target"),
}

EPILOG = """\b
Examples:
  vltk convert dinov2_vitl14_pretrain.pth dinov2_l16.pt --to dinov2 variant=large
  vltk convert eva02_L_pt_m38m_p14to16.pt eva02_l16.pt --to eva02 variant=large patch_size=16 image_size=512
  vltk convert ViT-B-16.pt clip_b16.safetensors --to clip-vit model=ViT-B-16-quickgelu
\b
Then: vltk train --backbone dinov2 backbone.variant=large backbone.pretrained=dinov2_l16.pt ...
\b
Released paper checkpoints (format detected; DST.yaml is the recipe that rebuilds the model):
  vltk convert dinov2_rein_and_head.pth rein_citys.pt
  vltk convert denseclip_fpn_res50.pth denseclip.pt --from denseclip
  vltk convert mask2former-swin-tiny/model.safetensors m2f.pt backbone=clip-resnet
Then: vltk eval --checkpoint rein_citys.pt --backbone-weights dinov2_converted.pth
"""


def parse_options(backbone: str, tokens: tuple[str, ...]) -> Options:
    """``("variant=large", "backbone.patch_size=16")`` -> the validated options of ``backbone``.

    Values are YAML (``null``, numbers, lists), as in run overrides; ``pretrained`` is refused because SRC is the
    file read. Every problem is one :class:`UserError` naming the option.
    """
    import yaml

    model = CONVERTIBLE[backbone][0]
    values: dict[str, Any] = {}
    for token in tokens:
        key, sep, raw = token.partition("=")
        key = key.strip().removeprefix("backbone.")
        if not sep or not key:
            raise UserError(f"cannot read backbone option '{token}'; write KEY=VALUE, e.g. variant=large")
        if key == "pretrained":
            raise UserError("vltk convert reads SRC, so pretrained= is not an option here; drop it")
        if key not in model.model_fields:
            raise UserError(
                f"backbone {backbone} has no option '{key}';{did_you_mean(key, list(model.model_fields))} see "
                f"vltk show backbone {backbone}"
            )
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key] = raw
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "options"
        raise UserError(
            f"backbone {backbone} option '{where}': {first['msg']}; see vltk show backbone {backbone}"
        ) from None


def _standalone(value: Any) -> Any:
    """``value`` owning exactly its storage (a slice of a bigger tensor would save the whole; safetensors refuses
    shared storage)."""
    whole = value.untyped_storage().nbytes() == value.numel() * value.element_size()
    return value if whole and value.is_contiguous() else value.detach().contiguous().clone()


def write_state(state: dict[str, Any], destination: Path) -> None:
    """``torch.save`` the state dict, or ``.safetensors`` when the name says so."""
    import torch

    destination.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: _standalone(value) for key, value in state.items()}
    if destination.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(destination))
    else:
        torch.save(tensors, destination)


def convert(source: str, destination: str, backbone: str, tokens: tuple[str, ...], *, force: bool = False) -> list[str]:
    """Convert ``source`` for ``backbone`` built with the options ``tokens`` and write it to ``destination``.

    Returns the report lines the command prints. Unknown backbones, unreadable or unknown files, files of
    another backbone, bad options and an existing ``destination`` (without ``force``) are :class:`UserError`.
    """
    if backbone not in CONVERTIBLE:
        names = sorted(CONVERTIBLE)
        raise UserError(
            f"vltk convert --to '{backbone}': not a backbone whose weights vltk converts;"
            f"{did_you_mean(backbone, names)} choose one of {', '.join(names)}"
        )
    options = parse_options(backbone, tokens)
    target_dst, target_src = Path(destination).expanduser(), Path(source).expanduser()
    if target_dst.exists() and target_src.exists() and target_dst.resolve() == target_src.resolve():
        raise UserError(f"vltk convert: DST '{destination}' is SRC; write the converted file elsewhere")
    if target_dst.exists() and not force:
        raise UserError(f"vltk convert: '{destination}' exists; pass --force to overwrite it")
    from vltk_plugins.common.weights import prepare_weights

    module, function = CONVERTIBLE[backbone][1].split(":")
    target, spec = getattr(importlib.import_module(module), function)(options)
    prepared = prepare_weights(source, target, spec)
    write_state(prepared.state, target_dst)
    given = [f"backbone.{token.strip().removeprefix('backbone.')}" for token in tokens]
    layout = "timm" if backbone == "dinov2" else "open_clip"
    lines = [
        f"read {source} ({prepared.checkpoint.describe()}): {prepared.format.title}, "
        f"{len(prepared.checkpoint.state)} tensors",
        *(f"converted: {note}" for note in prepared.notes),
        f"wrote {destination}: {len(prepared.state)} tensors in the {layout} layout of {spec.label}",
    ]
    lines += [f"not in the file: {part.name} (random when loaded: {part.effect})" for part in prepared.missing]
    lines.append(" ".join(["load it with: --backbone", backbone, *given, f"backbone.pretrained={destination}"]))
    return lines


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.argument("options", nargs=-1, metavar="[OPTION=VALUE]...")
@click.option(
    "--to",
    "backbone",
    help="Backbone the weights are for: " + ", ".join(sorted(CONVERTIBLE)) + " (omit for a released checkpoint)",
)
@click.option(
    "--from",
    "from_format",
    help="Format of a released checkpoint (rein, denseclip, lseg, clip-gap, hf-mask2former); detected when omitted",
)
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
def convert_command(
    source: str, destination: str, options: tuple[str, ...], backbone: str | None, from_format: str | None, force: bool
) -> None:
    """Rewrite the weights file SRC for vltk and write it to DST.

    With --to BACKBONE, SRC is a backbone's weights, written in the layout of that vltk backbone (open_clip or
    timm keys, patch kernel and position grid converted; .safetensors by name, else torch.save). SRC may be any
    file backbone.pretrained reads: official EVA02/EVA02-CLIP, OpenAI CLIP (TorchScript too), Meta DINOv2, timm,
    open_clip, Rein's converted files, mmseg checkpoints (backbone.*). OPTION=VALUE are the backbone's options
    (vltk show backbone NAME), e.g. variant=large patch_size=16.

    Without --to, SRC is a released paper checkpoint (Rein, DenseCLIP, LSeg, CLIP the Gap, Hugging Face
    Mask2Former; format detected, or named with --from): DST becomes a vltk checkpoint that vltk eval reads, with
    its recipe beside it (DST.yaml). OPTION=VALUE are run overrides (dataset=synthetic, decoder.num_heads=4).
    """
    if backbone is not None and from_format is not None:
        raise UserError("vltk convert: --to names a backbone, --from a released checkpoint's format; give one of them")
    if backbone is None:
        from vltk_plugins.common.releases.convert import convert_release

        lines = convert_release(source, destination, options, from_format=from_format, force=force)
    else:
        lines = convert(source, destination, backbone, options, force=force)
    for line in lines:
        click.echo(line)


__all__ = ["CONVERTIBLE", "convert", "convert_command", "parse_options", "write_state"]
