"""Entry point of the DenseCLIP plugin (Rao et al., CVPR 2022): the ``denseclip`` prompter and its recipes."""

from __future__ import annotations

from pathlib import Path

from vltk import hookimpl


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]
