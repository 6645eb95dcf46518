"""The run's experiment loggers as one object the trainer talks to (``loggers:`` in the run config).

The trainer reports what happened (a training step's record, an evaluation, the final results); this module turns
it into named scalars (``train/loss``, ``train/lr``, ``eval/<domain>/<metric>``, ``eval/<summary key>``) and hands
them to every logger the run chose. Loggers are built before the run folder is touched (a logger whose package is
missing is one error and nothing written) and started once it is ready; :meth:`RunLoggers.close` always runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vltk.loggers import ExperimentLogger, LoggerContext
from vltk.resolved import ResolvedRun


def train_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """``train/<term>`` for every number of a training step's record (loss terms, lr), the step left out."""
    return {
        f"train/{key}": float(value)
        for key, value in record.items()
        if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def eval_scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """``eval/<domain>/<metric>`` for each domain's numbers and ``eval/<key>`` for the summary (finite only)."""
    scalars: dict[str, float] = {}
    for domain, entry in (results.get("domains") or {}).items():
        for key, value in entry.items():
            if key != "images" and isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars[f"eval/{domain}/{key}"] = float(value)
    for key, value in (results.get("summary") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"eval/{key}"] = float(value)
    return {key: value for key, value in scalars.items() if math.isfinite(value)}


class RunLoggers:
    """Every logger of a run behind one call per event; with no loggers every call does nothing."""

    def __init__(self, loggers: Iterable[ExperimentLogger] = ()) -> None:
        self.loggers = list(loggers)
        self._started: list[ExperimentLogger] = []

    @classmethod
    def build(cls, run: ResolvedRun, output: Path, *, start_step: int, resumed: bool) -> RunLoggers:
        """The run's loggers from their factories (which write nothing): call before touching the folder."""
        context = LoggerContext(
            run_dir=Path(output),
            run_name=Path(output).resolve().name,
            config=run.config.to_dict(),
            start_step=start_step,
            resumed=resumed,
        )
        return cls(item.build(context) for item in run.loggers)

    @property
    def names(self) -> list[str]:
        return [getattr(logger, "name", type(logger).__name__) for logger in self.loggers]

    def start(self) -> None:
        for logger in self.loggers:
            logger.start()
            self._started.append(logger)

    def train_step(self, record: Mapping[str, Any]) -> None:
        scalars = train_scalars(record)
        for logger in self._started:
            logger.log_scalars(scalars, int(record["iter"]))

    def evaluation(self, results: Mapping[str, Any], step: int) -> None:
        scalars = eval_scalars(results)
        for logger in self._started:
            logger.log_scalars(scalars, step)

    def final(self, results: Mapping[str, Any], step: int) -> None:
        for logger in self._started:
            logger.log_results(results, step)

    def close(self) -> None:
        """Close every started logger (all of them, even when one fails; the first failure is raised after)."""
        failure: BaseException | None = None
        for logger in reversed(self._started):
            try:
                logger.close()
            except Exception as error:  # one logger's failure must not keep the others' files open
                failure = failure or error
        self._started.clear()
        if failure is not None:
            raise failure


__all__ = ["RunLoggers", "eval_scalars", "train_scalars"]
