"""The ``wandb`` logger: a Weights & Biases run per run folder, imported only when a run chooses it.

The W&B run id is kept in ``<run>/wandb-run.json``, so ``vltk train --resume RUN_DIR`` continues the same W&B run
(``resume="allow"``) instead of starting a second one. ``mode: offline`` (or ``WANDB_MODE=offline`` in the
environment, which wandb reads itself when the option is left unset) writes everything under ``<run>/wandb`` for
a later ``wandb sync``; nothing is sent. W&B keeps the first value it receives for a step, so on resume the steps
after the checkpoint that the interrupted run had already sent are the ones shown.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vltk.api import ExperimentLogger, LoggerContext, UserError
from vltk_plugins.loggers.options import WandbOptions

RUN_ID_FILE = "wandb-run.json"
INSTALL_HINT = 'pip install "vltk-dg[wandb]"'


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise UserError(
            f"logger 'wandb' needs the wandb package, which cannot be imported ({error}); {INSTALL_HINT}, or remove "
            "wandb from loggers"
        ) from None
    return wandb


def final_summary(results: Mapping[str, Any]) -> dict[str, float]:
    """``final/<domain>/<metric>`` and ``final/<summary key>`` numbers for the W&B run summary."""
    summary: dict[str, float] = {}
    for domain, entry in (results.get("domains") or {}).items():
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                summary[f"final/{domain}/{key}"] = float(value)
    for key, value in (results.get("summary") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[f"final/{key}"] = float(value)
    return {key: value for key, value in summary.items() if math.isfinite(value)}


class WandbLogger(ExperimentLogger):
    name = "wandb"

    def __init__(self, wandb: Any, options: WandbOptions, context: LoggerContext) -> None:
        self.wandb = wandb
        self.options = options
        self.context = context
        self.run: Any = None

    def _run_id(self) -> str:
        """The id of this folder's W&B run: kept across resumes, new for a run started from scratch."""
        path = Path(self.context.run_dir) / RUN_ID_FILE
        if self.context.resumed and path.is_file():
            try:
                return str(json.loads(path.read_text())["id"])
            except (ValueError, KeyError, TypeError):
                pass
        run_id = uuid.uuid4().hex[:12]
        path.write_text(json.dumps({"id": run_id}) + "\n")
        return run_id

    def start(self) -> None:
        settings: dict[str, Any] = {
            "project": self.options.project,
            "entity": self.options.entity,
            "name": self.options.name or self.context.run_name,
            "id": self._run_id(),
            "resume": "allow",
            "dir": str(self.context.run_dir),
            "config": dict(self.context.config),
            "tags": list(self.options.tags),
        }
        if self.options.mode is not None:  # unset: wandb reads WANDB_MODE itself
            settings["mode"] = self.options.mode
        self.run = self.wandb.init(**settings)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log({key: float(value) for key, value in scalars.items()}, step=step)

    def log_results(self, results: Mapping[str, Any], step: int) -> None:
        self.run.summary.update(final_summary(results))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def build_wandb_logger(options: WandbOptions, context: LoggerContext) -> WandbLogger:
    """Factory registered as logger ``wandb``: imports wandb here (so a missing package fails before the run
    writes anything), and only for runs that chose it."""
    return WandbLogger(import_wandb(), options, context)


__all__ = ["RUN_ID_FILE", "WandbLogger", "build_wandb_logger", "final_summary", "import_wandb"]
