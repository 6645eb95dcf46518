"""Entry point of the LSeg plugin (Li et al., ICLR 2022): the ``lseg`` decoder, LSeg's ``lseg-vit`` encoder pair
(timm ImageNet ViT + CLIP text tower), its recipes and its released checkpoints.

Light on purpose: only the options model is imported here; the factory imports torch when a run builds it.
"""

from __future__ import annotations

from pathlib import Path

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.lseg.options import LSegOptions, LSegViTOptions


@hookimpl
def vltk_register_decoders(register: Register) -> None:
    register(
        "lseg",
        lazy_factory("vltk_plugins.lseg.decoder", "build_lseg"),
        options=LSegOptions,
        summary="language-driven head: pixel embeddings x text embeddings / 0.07; any label list at inference",
        paper="LSeg: Language-driven Semantic Segmentation (Li et al., ICLR 2022), arXiv:2201.03546",
    )


@hookimpl
def vltk_register_backbones(register: Register) -> None:
    register(
        "lseg-vit",
        lazy_factory("vltk_plugins.lseg.backbone", "build_lseg_vit"),
        options=LSegViTOptions,
        summary="LSeg's encoders: timm ImageNet ViT (DPT token pyramid) + a CLIP text tower for the labels",
        paper="LSeg: Language-driven Semantic Segmentation (Li et al., ICLR 2022); DPT (Ranftl et al., ICCV 2021)",
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]


@hookimpl
def vltk_release_formats() -> list[object]:
    """LSeg's released checkpoints (Lightning), read by ``vltk convert`` and ``vltk eval --checkpoint``."""
    from vltk_plugins.lseg.release import LSEG_RELEASE

    return [LSEG_RELEASE]
