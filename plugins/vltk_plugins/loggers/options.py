"""Options of the built-in loggers. Light on purpose (pydantic only): ``hooks.py`` imports them for ``vltk list``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vltk.api import Options


class JsonLinesOptions(Options):
    """Where the JSON-lines log goes; one JSON object per line, so any tool (``pandas.read_json(lines=True)``,
    ``jq``) reads it while the run is still going."""

    file: str = Field("metrics.jsonl", min_length=1, description="file name inside the run folder")


class TensorBoardOptions(Options):
    """TensorBoard event files through ``torch.utils.tensorboard`` (needs the ``tensorboard`` package)."""

    folder: str = Field(
        "tensorboard", min_length=1, description="folder inside the run folder: `tensorboard --logdir RUN/FOLDER`"
    )
    flush_secs: int = Field(30, ge=1, description="seconds between writes of pending events to disk")


class WandbOptions(Options):
    """Weights & Biases (needs the ``wandb`` package); ``mode: offline`` logs to disk only (``wandb sync`` later)."""

    project: str = Field("vltk", min_length=1, description="W&B project the run belongs to")
    entity: str | None = Field(None, description="W&B team or user (None: your default entity)")
    name: str | None = Field(None, description="run name shown by W&B (None: the run folder's name)")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (no network: files under RUN/wandb) or disabled; None: $WANDB_MODE"
    )
    tags: list[str] = Field(default_factory=list, description="tags of the W&B run")


__all__ = ["JsonLinesOptions", "TensorBoardOptions", "WandbOptions"]
