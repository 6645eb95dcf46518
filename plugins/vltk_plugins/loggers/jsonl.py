"""The ``jsonl`` logger: ``metrics.jsonl`` in the run folder, one JSON object per line, readable while a run goes.

A line is ``{"step": 12, "time": 1733140000.1, "train/loss": 0.81, "train/lr": 0.0003, ...}`` for scalars and
``{"step": 500, "time": ..., "final": {"domains": ..., "summary": ...}}`` for the final results. Every line is
flushed as it is written, so a killed run loses at most the line being written (a torn last line is dropped when
the run resumes).

A resumed run rewinds the file to the checkpoint it continues from: lines after ``start_step`` were logged by
the interrupted part of the run, whose steps are trained again, so they are removed (the file is rewritten
through a temporary file and a rename). Values already logged at ``start_step`` itself are not written twice.
A run started from scratch in a folder replaces the file of the run it starts over.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from vltk.api import ExperimentLogger, LoggerContext
from vltk_plugins.loggers.options import JsonLinesOptions


def _clean(value: Any) -> Any:
    """Strict JSON: NaN and infinities (an IoU of a class absent from a domain) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a line that does not parse (torn by a kill) is skipped."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class JsonLinesLogger(ExperimentLogger):
    """Appends one JSON object per :meth:`log_scalars` / :meth:`log_results` call to ``<run>/<file>``."""

    name = "jsonl"

    def __init__(self, path: Path, *, start_step: int, resumed: bool) -> None:
        self.path = path
        self.start_step = start_step
        self.resumed = resumed
        #: names already on disk at ``start_step`` (the step a resumed run continues from): not written again
        self._at_start: set[str] = set()
        self._handle: IO[str] | None = None

    def start(self) -> None:
        kept: list[dict[str, Any]] = []
        if self.resumed and self.path.is_file():
            kept = [record for record in read_lines(self.path) if int(record.get("step", 0)) <= self.start_step]
        for record in kept:
            if int(record.get("step", 0)) == self.start_step:
                self._at_start |= set(record) - {"step", "time"}
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, allow_nan=False) + "\n" for record in kept)
        os.replace(temporary, self.path)
        self._handle = self.path.open("a", encoding="utf-8", buffering=1)

    def _write(self, step: int, values: Mapping[str, Any]) -> None:
        if self._handle is None:
            raise RuntimeError("JsonLinesLogger.start() was not called")
        if step == self.start_step:
            values = {key: value for key, value in values.items() if key not in self._at_start}
            if not values:
                return
        record = {"step": step, "time": round(time.time(), 3), **_clean(dict(values))}
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self._write(step, {key: float(value) for key, value in scalars.items()})

    def log_results(self, results: Mapping[str, Any], step: int) -> None:
        self._write(step, {"final": results})

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def build_jsonl_logger(options: JsonLinesOptions, context: LoggerContext) -> JsonLinesLogger:
    """Factory registered as logger ``jsonl``; writes nothing until :meth:`JsonLinesLogger.start`."""
    return JsonLinesLogger(Path(context.run_dir) / options.file, start_step=context.start_step, resumed=context.resumed)


__all__ = ["JsonLinesLogger", "build_jsonl_logger", "read_lines"]
