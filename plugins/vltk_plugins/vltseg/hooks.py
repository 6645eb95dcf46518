"""Entry point of the VLTSeg plugin (Hümmer et al.): recipes combining EVA02-CLIP, Mask2Former and text guidance."""

from __future__ import annotations

from pathlib import Path

from vltk.api import hookimpl


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]
