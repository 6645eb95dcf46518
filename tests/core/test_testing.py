"""``vltk.testing``: the isolated plugin manager and the pytest fixture put the process-wide state back exactly."""

from __future__ import annotations

import types

import pytest

from vltk import plugins
from vltk.api import hookimpl
from vltk.plugins import VltkPluginManager, current_plugin_manager, reset_plugin_manager
from vltk.testing import invoke, isolated_plugin_manager, vltk_plugin_manager  # noqa: F401  (a fixture)


def _command_plugin(command: str) -> types.ModuleType:
    @hookimpl
    def vltk_register_commands(cli):
        @cli.command(command)
        def greet() -> None:
            print(f"{command} says hi")

    module = types.ModuleType(f"{command}_plugin")
    module.vltk_register_commands = vltk_register_commands
    return module


@pytest.fixture
def no_manager_yet():
    """Start from a process with no plugin manager made; put whatever was there back afterwards."""
    saved = current_plugin_manager()
    reset_plugin_manager(None)
    yield
    reset_plugin_manager(saved)


@pytest.mark.usefixtures("no_manager_yet")
@pytest.mark.parametrize("autoload", [True, False])
def test_no_previous_manager_stays_none_and_none_is_built(autoload: bool) -> None:
    with isolated_plugin_manager(autoload=autoload) as manager:
        assert plugins.get_plugin_manager() is manager
    assert current_plugin_manager() is None


@pytest.mark.usefixtures("no_manager_yet")
def test_the_previous_manager_comes_back_even_when_the_test_fails() -> None:
    previous = VltkPluginManager(autoload=False)
    reset_plugin_manager(previous)
    with pytest.raises(RuntimeError, match="boom"), isolated_plugin_manager(autoload=False):
        raise RuntimeError("boom")
    assert current_plugin_manager() is previous


@pytest.mark.usefixtures("no_manager_yet")
def test_plugin_commands_do_not_leak_into_the_next_manager() -> None:
    reset_plugin_manager(VltkPluginManager(autoload=False))
    assert "Usage:" in invoke(["--help"]).output  # the CLI has asked the outer manager for its commands
    with isolated_plugin_manager(autoload=False, extra={"greeter": _command_plugin("greet")}):
        assert invoke(["greet"]).output.strip() == "greet says hi"
    after = invoke(["greet"])
    assert after.exit_code == 2 and "no such command 'greet'" in after.output
    with isolated_plugin_manager(autoload=False, extra={"other": _command_plugin("wave")}):
        assert invoke(["wave"]).exit_code == 0
        assert "greet" not in invoke(["--help"]).output


def test_the_fixture_installs_managers_for_the_test(vltk_plugin_manager) -> None:  # noqa: F811
    before = current_plugin_manager()
    first = vltk_plugin_manager(extra={"greeter": _command_plugin("greet")})
    assert plugins.get_plugin_manager() is first and first.plugins()[0].name == "greeter"
    second = vltk_plugin_manager()
    assert plugins.get_plugin_manager() is second and second.plugins() == []
    assert before is not first


def test_the_fixture_restored_the_state() -> None:
    """Runs after the fixture test (file order): its managers and its ``greet`` command are gone."""
    assert "greeter" not in {info.name for info in plugins.get_plugin_manager().plugins()}
    assert invoke(["greet"]).exit_code == 2
