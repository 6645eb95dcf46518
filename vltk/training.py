"""``vltk.train``: one training run from Python (notebooks, sweeps), the same run ``vltk train`` makes.

A researcher driving experiments from a notebook wants ``metrics = vltk.train("rein/synthetic", ...)`` rather
than a subprocess and a JSON file: this resolves the configuration the way the CLI does (recipe or config, then
dotted overrides), trains in the given run folder with the same :class:`~vltk.engine.trainer.Trainer` and returns
the final per-domain results that ``metrics.json`` records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vltk.errors import UserError


def _override_strings(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """``{"train.iters": 10}`` or ``["train.iters=10"]`` -> ``["train.iters=10"]`` (values written as JSON, which
    the YAML reading of overrides parses back to the same value)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise UserError(f"overrides must be a list of 'key=value' strings or a dict, not one string: {overrides!r}")
    return [str(item) for item in overrides]


def train(
    config: Any = None,
    *,
    output: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    resume: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train one run and return its final results (``{"domains": {...}, "summary": {...}}``, as ``metrics.json``).

    ``config`` is a recipe name (``"rein/synthetic"``), a YAML path, a dict or a :class:`~vltk.config.RunConfig`
    (``None``: the default recipe); ``overrides`` dotted keys as a dict (``{"train.iters": 50}``) or as the CLI's
    ``key=value`` strings. ``output`` is the run folder (default ``runs/<recipe>``); ``resume=True`` continues
    the run in ``output`` from its ``config.resolved.yaml`` and ``last.pt`` (then ``config`` is not needed, and
    overrides that change the saved configuration are refused, as ``vltk train --resume``).
    """
    from vltk.cli.run import RESUME_HERE, default_output, plan_resume
    from vltk.config import RunConfig, build_config, resolve
    from vltk.engine.trainer import Trainer
    from vltk.plugins import get_plugin_manager

    manager = get_plugin_manager()
    extra = _override_strings(overrides)
    if resume:
        if output is None:
            raise UserError("vltk.train(resume=True) needs output=<run folder> to continue")
        out, run, _ = plan_resume(RESUME_HERE, str(output), None, {}, extra, False)
        return Trainer(run.with_settings(output=str(out)), out, resume=True, quiet=quiet).fit()
    if config is None or isinstance(config, (str, Path)):
        recipe = None if config is None else str(config)
        built = build_config(recipe, overrides=extra, recipe_dirs=manager.recipe_dirs())
    elif isinstance(config, RunConfig):
        built = build_config(base=config.to_dict(), overrides=extra)
    elif isinstance(config, Mapping):
        built = build_config(base=dict(config), overrides=extra)
    else:
        kind = type(config).__name__
        raise UserError(f"config must be a recipe name, a YAML path, a dict or a RunConfig, not a {kind}")
    run = resolve(built, manager.get_registry())
    out = Path(output) if output else default_output(run)
    return Trainer(run.with_settings(output=str(out)), out, quiet=quiet).fit()


__all__ = ["train"]
