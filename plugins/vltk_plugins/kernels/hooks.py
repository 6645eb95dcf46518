"""Entry point of the kernels plugin: the ``vltk bench`` command over the fused ops of :mod:`vltk_kernels`.

The core never imports ``vltk_kernels`` (ops are called by components, components are built by the core), so the
command that times the ops is contributed like any plugin command. Light: click is imported by the command module
only when the group asks for it.
"""

from __future__ import annotations

from typing import Any

from vltk.api import hookimpl


@hookimpl
def vltk_register_commands(cli: Any) -> None:
    from vltk_plugins.kernels.bench_command import bench_command

    cli.add_command(bench_command, "bench")
