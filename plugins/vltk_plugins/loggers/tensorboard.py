"""The ``tensorboard`` logger: event files in ``<run>/tensorboard`` through PyTorch's own
``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard`` package: an optional extra).

Resumes use the writer's ``purge_step``: TensorBoard hides every event of earlier event files in the folder at
or after the step the run continues with, so the steps the interrupted run logged after its checkpoint (and a
run started over in the same folder) never show twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vltk.api import ExperimentLogger, LoggerContext, UserError
from vltk_plugins.loggers.options import TensorBoardOptions

INSTALL_HINT = 'pip install "vltk-dg[tensorboard]"'


def summary_writer_class() -> type:
    """``SummaryWriter``, or a :class:`UserError` saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch raises ImportError/ModuleNotFoundError when tensorboard is missing
        raise UserError(
            f"logger 'tensorboard' needs the tensorboard package, which cannot be imported ({error}); "
            f"{INSTALL_HINT}, or remove tensorboard from loggers"
        ) from None
    return SummaryWriter


class TensorBoardLogger(ExperimentLogger):
    """Scalars as TensorBoard scalars; the configuration and the final results as text (JSON) panels."""

    name = "tensorboard"

    def __init__(self, writer_class: type, folder: Path, context: LoggerContext, flush_secs: int) -> None:
        self.writer_class = writer_class
        self.folder = folder
        self.context = context
        self.flush_secs = flush_secs
        self.writer: Any = None

    def start(self) -> None:
        # the first step this run logs is start_step + 1: anything at or after it in older event files is stale
        self.writer = self.writer_class(
            log_dir=str(self.folder), purge_step=self.context.start_step + 1, flush_secs=self.flush_secs
        )
        if not self.context.resumed:
            self.writer.add_text("config", _code_block(self.context.config), global_step=0)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), global_step=step)

    def log_results(self, results: Mapping[str, Any], step: int) -> None:
        self.writer.add_text("final results", _code_block(results), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _code_block(payload: Mapping[str, Any]) -> str:
    """TensorBoard's text panel renders markdown: indented JSON in a code block keeps its layout."""
    text = json.dumps(payload, indent=2, default=str).replace("NaN", "null")
    return "\n".join("    " + line for line in text.splitlines())


def build_tensorboard_logger(options: TensorBoardOptions, context: LoggerContext) -> TensorBoardLogger:
    """Factory registered as logger ``tensorboard``: fails here, before the run writes anything, when
    ``tensorboard`` is not installed."""
    writer_class = summary_writer_class()
    return TensorBoardLogger(writer_class, Path(context.run_dir) / options.folder, context, options.flush_secs)


__all__ = ["INSTALL_HINT", "TensorBoardLogger", "build_tensorboard_logger", "summary_writer_class"]
