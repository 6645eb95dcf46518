"""Entry point of the Rein plugin (Wei et al., CVPR 2024): the ``rein`` adapter and its recipes."""

from __future__ import annotations

from pathlib import Path

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.rein.options import ReinOptions


@hookimpl
def vltk_register_adapters(register: Register) -> None:
    register(
        "rein",
        lazy_factory("vltk_plugins.rein.adapter", "build_rein"),
        options=ReinOptions,
        summary="learnable low-rank tokens refine every block of a frozen backbone; tokens -> decoder queries",
        paper="Rein: Stronger, Fewer & Superior (Wei et al., CVPR 2024), arXiv:2312.04265",
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]


@hookimpl
def vltk_release_formats() -> list[object]:
    """Rein's released checkpoints (mmseg 1.x), read by ``vltk convert`` and ``vltk eval --checkpoint``."""
    from vltk_plugins.rein.release import REIN_RELEASE

    return [REIN_RELEASE]
