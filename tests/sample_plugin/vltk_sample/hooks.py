"""Entry point of the sample plugin (``[project.entry-points.vltk] sample = "vltk_sample.hooks"``).

Light on purpose: ``vltk list`` and ``vltk --help`` import this module, so it imports only options models and
``vltk.api``; :func:`vltk.api.lazy_factory` imports a component's model module when a run first builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import Register, hookimpl, lazy_factory
from vltk_sample.bitfit.options import BitFitOptions
from vltk_sample.linear.options import LinearHeadOptions


@hookimpl
def vltk_register_decoders(register: Register) -> None:
    register(
        "linear",
        lazy_factory("vltk_sample.linear.model", "build_linear_head"),
        options=LinearHeadOptions,
        summary="linear probe: BatchNorm + 1x1 conv on the stride-16 level, cross-entropy",
        paper="DINOv2 (Oquab et al., 2023), linear segmentation evaluation",
    )


@hookimpl
def vltk_register_adapters(register: Register) -> None:
    register(
        "bitfit",
        lazy_factory("vltk_sample.bitfit.model", "build_bitfit"),
        options=BitFitOptions,
        summary="train only the backbone's bias terms",
        paper="BitFit (Ben Zaken et al., ACL 2022)",
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    """``recipes/linear.yaml`` becomes the recipe ``sample/linear`` (plugin name / file stem)."""
    return [str(Path(__file__).parent / "recipes")]


@hookimpl
def vltk_register_commands(cli: Any) -> None:
    import click

    @cli.command("hello")
    def hello() -> None:
        """Say hello from the sample plugin."""
        click.echo("hello from vltk-sample")
