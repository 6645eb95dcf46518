"""Entry point of the Rein plugin (Wei et al., CVPR 2024): the ``rein`` adapter and its recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import hookimpl
from vltk_plugins.rein.options import ReinOptions


def _build_rein(options: Any, **context: Any) -> Any:
    from vltk_plugins.rein.adapter import build_rein

    return build_rein(options, **context)


@hookimpl
def vltk_register_adapters(register: Any) -> None:
    register(
        "rein",
        _build_rein,
        options=ReinOptions,
        summary="learnable low-rank tokens refine every block of a frozen backbone; tokens -> decoder queries",
        paper="Rein: Stronger, Fewer & Superior (Wei et al., CVPR 2024), arXiv:2312.04265",
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]
