"""The ``vltk`` command line: a click group whose subcommands are imported only when they run.

``vltk --help`` must not pay for torch, so this module imports only click and the (light) plugin manager;
each subcommand lives in its own module and imports the heavy parts inside its function. Plugins add commands
through the ``vltk_register_commands`` hook. A :class:`vltk.errors.UserError` anywhere — or an exception of a
type a plugin declares through ``vltk_user_error_types`` — becomes one ``Error: ...`` line and exit code 2, never
a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from vltk import __version__
from vltk.errors import UserError

LAZY_COMMANDS: dict[str, str] = {
    "train": "vltk.cli.run:train_command",
    "pretrain": "vltk.cli.pretrain:pretrain_command",
    "eval": "vltk.cli.run:eval_command",
    "predict": "vltk.cli.predict:predict_command",
    "export": "vltk.cli.export:export_command",
    "list": "vltk.cli.info:list_command",
    "show": "vltk.cli.info:show_command",
    "plugins": "vltk.cli.info:plugins_command",
}


class UserErrorExit(click.ClickException):
    """Printed as ``Error: <message>`` by click; exit code 2 like click's own usage errors."""

    exit_code = 2


class LazyGroup(click.Group):
    """A click group that imports built-in subcommands on demand and asks plugins for theirs once."""

    _plugins_added = False
    #: names of the commands the plugins added, so :meth:`forget_plugin_commands` can take exactly those back
    _plugin_commands: frozenset[str] = frozenset()

    def _add_plugin_commands(self) -> None:
        if LazyGroup._plugins_added:
            return
        LazyGroup._plugins_added = True
        from vltk.plugins import get_plugin_manager

        before = set(self.commands)
        try:
            get_plugin_manager().register_commands(self)
        except UserError as error:
            raise UserErrorExit(str(error)) from None
        finally:
            LazyGroup._plugin_commands = frozenset(set(self.commands) - before)

    def forget_plugin_commands(self) -> None:
        """Drop the commands plugins added and ask the (then current) plugin manager again on next use.

        The group outlives plugin managers: a test that swaps the manager (:mod:`vltk.testing`) calls this so
        one test's plugin commands neither leak into the next nor hide the next manager's.
        """
        for name in LazyGroup._plugin_commands:
            self.commands.pop(name, None)
        LazyGroup._plugin_commands = frozenset()
        LazyGroup._plugins_added = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted(set(LAZY_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module_name, attribute = LAZY_COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module_name), attribute), cmd_name)
        if cmd_name not in self.commands:
            self._add_plugin_commands()
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
            from vltk.errors import did_you_mean

            hint = did_you_mean(name, self.list_commands(ctx))
            raise click.UsageError(f"no such command '{name}'.{hint}", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except UserError as error:
            if getattr(error, "silent", False):  # another rank of a data-parallel run prints it
                raise click.exceptions.Exit(UserErrorExit.exit_code) from None
            raise UserErrorExit(str(error)) from None
        except Exception as error:
            if isinstance(error, _plugin_user_error_types()):
                raise UserErrorExit(str(error)) from None
            raise


def _plugin_user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types plugins declare as user errors (``vltk_user_error_types``), e.g. the kernels' backend
    error, which cannot subclass :class:`UserError` because ``vltk_kernels`` stands alone. Asked only once an
    error is on its way out, so a run that succeeds never pays for it."""
    from vltk.plugins import get_plugin_manager

    return get_plugin_manager().user_error_types()


EPILOG = """\b
Examples:
  vltk train                                   # default recipe: tiny EVA02 + FPN on synthetic scenes, CPU
  vltk train --recipe rein/synthetic           # the Rein adapter on the same data
  vltk train --backbone eva02 --adapter rein --decoder fpn train.iters=50
  vltk list adapters                           # what is installed
  vltk show adapter rein                       # options, defaults, paper
  vltk eval --checkpoint runs/default/best.pt
  vltk predict street.jpg --checkpoint runs/default/best.pt --output preds/
"""


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="vltk")
def cli() -> None:
    """vltk: transfer vision(-language) foundation models to dense prediction under domain shift."""


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main() -> None:
    """Console-script entry point. Warnings (e.g. "random backbone weights") print as one line, no source."""
    import warnings

    warnings.formatwarning = _one_line_warning
    cli()
