"""The experiment-logger contract: what a logger plugin implements and what it is told about the run.

Loggers are components like the others (registered through ``vltk_register_loggers``, chosen in the run config's
``loggers:`` list, options validated once by :func:`vltk.config.resolve`), but they never touch the model: the
trainer hands them numbers. The contract is small on purpose, so that a logger for any tracking service is a
page of code:

* the factory ``build_x(options, context)`` gets a :class:`LoggerContext` and must not write anything yet (it
  runs before the run folder is touched, so a missing package is an error that leaves the folder as it was);
* :meth:`ExperimentLogger.start` opens files or connections, once the run folder is ready;
* :meth:`ExperimentLogger.log_scalars` records named numbers at a training step (``train/loss``, ``train/lr``,
  ``eval/<domain>/<metric>``...), steps increasing;
* :meth:`ExperimentLogger.log_results` records the final per-domain results at the end of a run;
* :meth:`ExperimentLogger.close` flushes and releases whatever :meth:`start` opened (also on errors and stops).

A resumed run continues at ``context.start_step``: whatever a logger recorded after that step belongs to the
lost part of the interrupted run and should be dropped (the JSON-lines logger rewrites its file, TensorBoard
purges by step), so that no step appears twice.

Plain Python (no torch): hook modules import this to subclass :class:`ExperimentLogger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LoggerContext:
    """What a logger factory learns about the run it will log.

    ``run_dir`` is the run folder (``--output``), ``run_name`` a short name for services that show runs side by
    side (the folder's name), ``config`` the resolved configuration as plain data (what
    ``config.resolved.yaml`` holds), ``start_step`` the iteration the run starts from (0, or the resumed
    checkpoint's), ``resumed`` whether it continues an earlier run in the same folder.
    """

    run_dir: Path
    run_name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    start_step: int = 0
    resumed: bool = False


class ExperimentLogger:
    """Base class of experiment loggers: override what the logger records; every method defaults to nothing.

    Methods are called by the trainer on the rank that writes the run folder, in this order: :meth:`start`,
    any number of :meth:`log_scalars`, at most one :meth:`log_results`, then :meth:`close` (always).
    """

    #: a short name for messages (``tensorboard``); subclasses set it
    name: str = "logger"

    def start(self) -> None:
        """Open files or connections; the run folder exists and the run's checks have passed."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Record ``scalars`` (slash-separated names: ``train/loss``, ``eval/fog/miou``) at iteration ``step``."""

    def log_results(self, results: Mapping[str, Any], step: int) -> None:
        """Record the final evaluation (``{"domains": ..., "summary": ...}``, as ``metrics.json``'s ``final``)."""

    def close(self) -> None:
        """Flush and release; called once, also when the run fails or is stopped."""


__all__ = ["ExperimentLogger", "LoggerContext"]
