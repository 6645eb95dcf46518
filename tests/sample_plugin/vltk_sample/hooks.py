"""Entry point of the sample plugin: registers the ``bitfit`` adapter and the ``vltk hello`` command."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vltk.api import Options, hookimpl


class BitFitOptions(Options):
    """Options of the BitFit adapter."""

    train_norms: bool = Field(False, description="also train normalisation weights, not only biases")


def build_bitfit(options: BitFitOptions, **context: Any) -> Any:
    from vltk_sample.adapter import BitFitAdapter

    return BitFitAdapter(train_norms=options.train_norms)


@hookimpl
def vltk_register_adapters(register: Any) -> None:
    register(
        "bitfit",
        build_bitfit,
        options=BitFitOptions,
        summary="train only the backbone's bias terms",
        paper="BitFit (Ben Zaken et al., ACL 2022)",
    )


@hookimpl
def vltk_register_commands(cli: Any) -> None:
    import click

    @cli.command("hello")
    def hello() -> None:
        """Say hello from the sample plugin."""
        click.echo("hello from vltk-sample")
