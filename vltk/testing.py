"""Helpers for plugin authors' tests (and ours): an isolated plugin manager, a pytest fixture and a CLI runner.

A context manager, for any test runner::

    from vltk.testing import invoke, isolated_plugin_manager

    def test_my_adapter_is_listed():
        with isolated_plugin_manager(autoload=False, extra={"mine": my_hooks_module}):
            result = invoke(["list", "adapters"])
        assert "my-adapter" in result.output

Or, with pytest, the ``vltk_plugin_manager`` fixture: make it visible by writing
``pytest_plugins = ["vltk.testing"]`` in your top-level ``conftest.py`` (or import it there), then::

    def test_my_adapter_builds(vltk_plugin_manager):
        manager = vltk_plugin_manager(extra={"mine": my_hooks_module})   # autoload=False by default
        assert "my-adapter" in manager.get_registry().names("adapter")

Both put the process-wide manager (and the ``vltk`` command's plugin commands) back exactly as they were when the
test ends, pass or fail, so one test's plugins never leak into the next.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from vltk.plugins import VltkPluginManager, current_plugin_manager, reset_plugin_manager

try:  # pytest is a test-time dependency; without it the context manager and invoke() still work
    import pytest
except ImportError:  # pragma: no cover - exercised only where pytest is absent
    pytest = None  # type: ignore[assignment]


def _forget_cli_plugin_commands() -> None:
    """Make the ``vltk`` click group ask the current manager for plugin commands again (if it was imported)."""
    cli_module = sys.modules.get("vltk.cli")
    if cli_module is not None:
        cli_module.cli.forget_plugin_commands()


@contextlib.contextmanager
def isolated_plugin_manager(
    *, autoload: bool = True, extra: dict[str, Any] | None = None, blocked: set[str] | None = None
) -> Iterator[VltkPluginManager]:
    """Temporarily replace the process-wide plugin manager (entry points optional, extra plugins added).

    The previous manager is saved as it is — ``None`` when none had been made yet, without making one — and put
    back on exit, together with the CLI's memory of which plugin commands it added.
    """
    previous = current_plugin_manager()
    manager = VltkPluginManager(autoload=autoload, blocked=blocked or set())
    for name, plugin in (extra or {}).items():
        manager.add_plugin(plugin, name)
    reset_plugin_manager(manager)
    _forget_cli_plugin_commands()
    try:
        yield manager
    finally:
        reset_plugin_manager(previous)
        _forget_cli_plugin_commands()


def invoke(args: Sequence[str], **kwargs: Any) -> Any:
    """Run the ``vltk`` CLI in-process with click's CliRunner; returns the click Result."""
    from click.testing import CliRunner

    from vltk.cli import cli

    return CliRunner().invoke(cli, list(args), **kwargs)


if pytest is not None:

    @pytest.fixture
    def vltk_plugin_manager() -> Iterator[Callable[..., VltkPluginManager]]:
        """A factory ``(*, autoload=False, extra=None, blocked=None) -> VltkPluginManager`` that installs an
        isolated process-wide manager for the rest of the test; everything is restored at teardown.

        ``autoload`` defaults to ``False`` here, unlike :func:`isolated_plugin_manager`: a plugin's own tests
        usually want only the plugins they name, not whatever else is installed.
        """
        with contextlib.ExitStack() as stack:

            def make(
                *, autoload: bool = False, extra: dict[str, Any] | None = None, blocked: set[str] | None = None
            ) -> VltkPluginManager:
                return stack.enter_context(isolated_plugin_manager(autoload=autoload, extra=extra, blocked=blocked))

            yield make
