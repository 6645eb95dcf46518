"""Entry point of the kernels plugin: the ``vltk bench`` command over the fused ops of :mod:`vltk_kernels`, the
built-in ops' bench cases, and the kernels' user-error type.

The core never imports ``vltk_kernels`` (ops are called by components, components are built by the core), so
what the CLI needs to know about them arrives like any plugin's contribution. Light: click, torch and
``vltk_kernels`` are imported inside the hooks only when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vltk.api import hookimpl


@hookimpl
def vltk_register_commands(cli: Any) -> None:
    from vltk_plugins.kernels.bench_command import bench_command

    cli.add_command(bench_command, "bench")


@hookimpl
def vltk_register_bench_cases(register: Callable[[Any], None]) -> None:
    from vltk_kernels.ms_deform_attn.bench import bench_case as ms_deform_attn_case
    from vltk_kernels.pixel_text_similarity.bench import bench_case as pixel_text_similarity_case
    from vltk_kernels.rein_attention.bench import bench_case as rein_attention_case

    for case in (rein_attention_case, pixel_text_similarity_case, ms_deform_attn_case):
        register(case())


@hookimpl
def vltk_user_error_types() -> list[type[BaseException]]:
    """A forced-but-unavailable or unknown kernel backend is the user's to fix: one ``Error:`` line, no traceback."""
    from vltk_kernels.errors import KernelBackendError

    return [KernelBackendError]
