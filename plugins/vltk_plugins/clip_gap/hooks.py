"""Entry point of the CLIP the Gap plugin (Vidit et al., CVPR 2023): the ``clip-gap`` augmenter, the
``clip-faster-rcnn`` decoder and their recipes."""

from __future__ import annotations

from pathlib import Path

from vltk import hookimpl


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]
