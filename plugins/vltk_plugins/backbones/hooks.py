"""Entry point of the built-in backbones: open_clip/timm ViTs (eva02, clip-vit), CLIP ResNets, DINOv2, and the
``vltk convert`` command that rewrites their weight files.

Light on purpose: only options models are imported here; each factory imports torch and its module when a run
actually builds the component (:func:`vltk.api.lazy_factory`), and the command imports torch when it runs.
"""

from __future__ import annotations

from typing import Any

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.backbones.clip_resnet.options import ClipResNetOptions
from vltk_plugins.backbones.dinov2.options import Dinov2Options
from vltk_plugins.backbones.open_clip_vit.options import ClipViTOptions, Eva02Options


@hookimpl
def vltk_builtin_weights() -> list[Any]:
    from vltk_plugins.backbones.shipped import shipped_weights

    return shipped_weights()


@hookimpl
def vltk_register_backbones(register: Register) -> None:
    register(
        "eva02",
        lazy_factory("vltk_plugins.backbones.open_clip_vit.model", "build_eva02"),
        options=Eva02Options,
        summary="EVA02-CLIP ViT (open_clip timm tower): tiny/small/base/large",
        paper="EVA-02 (Fang et al., 2023); EVA-CLIP (Sun et al., 2023)",
    )
    register(
        "clip-vit",
        lazy_factory("vltk_plugins.backbones.open_clip_vit.model", "build_clip_vit"),
        options=ClipViTOptions,
        summary="CLIP ViT (open_clip native VisionTransformer)",
        paper="CLIP (Radford et al., ICML 2021)",
    )
    register(
        "clip-resnet",
        lazy_factory("vltk_plugins.backbones.clip_resnet.model", "build_clip_resnet"),
        options=ClipResNetOptions,
        summary="CLIP ResNet (open_clip ModifiedResNet): pyramid + dense attention-pool embeddings; RN50/RN101",
        paper="CLIP (Radford et al., ICML 2021); dense pool from DenseCLIP (Rao et al., CVPR 2022)",
    )
    register(
        "dinov2",
        lazy_factory("vltk_plugins.backbones.dinov2.model", "build_dinov2"),
        options=Dinov2Options,
        summary="DINOv2 ViT (timm), patch 16 as in Rein (patch-14 weights converted); tiny/small/base/large/giant",
        paper="DINOv2 (Oquab et al., TMLR 2024); registers: Darcet et al., ICLR 2024",
    )


@hookimpl
def vltk_register_commands(cli: Any) -> None:
    """``vltk convert``: a weights file in any layout these backbones read -> their own (open_clip/timm) layout."""
    from vltk_plugins.backbones.convert import convert_command

    cli.add_command(convert_command, "convert")
