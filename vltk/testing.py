"""Helpers for plugin authors' tests (and ours): an isolated plugin manager and a CLI runner.

from vltk.testing import isolated_plugin_manager, invoke

def test_my_adapter_is_listed():
    with isolated_plugin_manager(extra={"mine": my_hooks_module}):
        result = invoke(["list", "adapters"])
    assert "my-adapter" in result.output
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from vltk.plugins import VltkPluginManager, get_plugin_manager, reset_plugin_manager


@contextlib.contextmanager
def isolated_plugin_manager(
    *, autoload: bool = True, extra: dict[str, Any] | None = None, blocked: set[str] | None = None
) -> Iterator[VltkPluginManager]:
    """Temporarily replace the process-wide plugin manager (entry points optional, extra plugins added)."""
    previous = get_plugin_manager() if autoload else None
    manager = VltkPluginManager(autoload=autoload, blocked=blocked or set())
    for name, plugin in (extra or {}).items():
        manager.add_plugin(plugin, name)
    reset_plugin_manager(manager)
    try:
        yield manager
    finally:
        reset_plugin_manager(previous)


def invoke(args: Sequence[str], **kwargs: Any) -> Any:
    """Run the ``vltk`` CLI in-process with click's CliRunner; returns the click Result."""
    from click.testing import CliRunner

    from vltk.cli import cli

    return CliRunner().invoke(cli, list(args), **kwargs)
