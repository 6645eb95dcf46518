"""Entry point of the DenseCLIP plugin (Rao et al., CVPR 2022): the ``denseclip`` prompter and its recipes."""

from __future__ import annotations

from pathlib import Path

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.denseclip.options import DenseCLIPOptions


@hookimpl
def vltk_register_prompters(register: Register) -> None:
    register(
        "denseclip",
        lazy_factory("vltk_plugins.denseclip.prompter", "build_denseclip"),
        options=DenseCLIPOptions,
        summary="CoOp context + context decoder over the global + dense image embeddings: t + γ·t_diff per image",
        paper="DenseCLIP (Rao et al., CVPR 2022), arXiv:2112.01518",
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]


@hookimpl
def vltk_release_formats() -> list[object]:
    """DenseCLIP's released checkpoints (mmseg 0.x), read by ``vltk convert`` and ``vltk eval --checkpoint``."""
    from vltk_plugins.denseclip.release import DENSECLIP_RELEASE

    return [DENSECLIP_RELEASE]
