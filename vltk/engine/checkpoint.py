"""Checkpoints written atomically and read back safely.

A crash or Ctrl-C in the middle of ``torch.save`` must never leave a truncated ``last.pt`` behind: we write to
a temporary file in the same folder and ``os.replace`` it (atomic on POSIX). Reading uses
``weights_only=True`` so a checkpoint cannot run code; everything we store is tensors and plain containers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vltk.errors import UserError


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vltk checkpoint; missing, corrupt or foreign files are user errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist (runs write <output>/last.pt and best.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors come in many types; all mean "not a readable checkpoint"
        raise UserError(f"checkpoint '{path}' cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(
            f"'{path}' is not a vltk checkpoint (expected the keys 'model' and 'config'); "
            "to start from backbone weights use backbone.pretrained=FILE instead"
        )
    return state


def model_state_for_checkpoint(model: torch.nn.Module, *, include_backbone: bool) -> dict[str, torch.Tensor]:
    """The model's state dict, without the frozen backbone when it can be re-loaded from its pretrained file.

    That keeps a Rein checkpoint at adapter + head size (as the paper's 0.01 GB + 0.08 GB) while a run whose
    backbone was randomly initialised or fine-tuned keeps everything.
    """
    state = model.state_dict()
    if include_backbone:
        return state
    return {key: value for key, value in state.items() if not key.startswith("backbone.")}
