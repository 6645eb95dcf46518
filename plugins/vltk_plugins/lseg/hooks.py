"""Entry point of the LSeg plugin (Li et al., ICLR 2022): the ``lseg`` decoder and its recipes."""

from __future__ import annotations

from pathlib import Path

from vltk import hookimpl


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]
