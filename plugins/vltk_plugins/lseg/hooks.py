"""Entry point of the LSeg plugin (Li et al., ICLR 2022): the ``lseg`` decoder and its recipes.

Light on purpose: only the options model is imported here; the factory imports torch when a run builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import hookimpl
from vltk_plugins.lseg.options import LSegOptions


def _build_lseg(options: Any, **context: Any) -> Any:
    from vltk_plugins.lseg.decoder import build_lseg

    return build_lseg(options, **context)


@hookimpl
def vltk_register_decoders(register: Any) -> None:
    register(
        "lseg",
        _build_lseg,
        options=LSegOptions,
        summary="language-driven head: pixel embeddings x text embeddings / 0.07; any label list at inference",
        paper="LSeg: Language-driven Semantic Segmentation (Li et al., ICLR 2022), arXiv:2201.03546",
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]
