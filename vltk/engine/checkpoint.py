"""Checkpoints written atomically, kept one generation deep, read back safely, and checked against the model.

A crash, Ctrl-C or SIGKILL in the middle of ``torch.save`` must never leave a truncated ``last.pt`` behind: we
write to a temporary file in the same folder and ``os.replace`` it (atomic on POSIX). ``last.pt`` also keeps the
previous generation as ``last.prev.pt``, so a newest file that was damaged after the fact (a disk or copy error, a
filesystem that lost unsynced data) still leaves a checkpoint to resume from (:func:`load_resume_checkpoint`).
Reading uses ``weights_only=True`` so a checkpoint cannot run code; everything we store is tensors and plain
containers, RNG states included (:func:`rng_state`).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vltk.errors import UserError

#: Suffix of the previous generation of a checkpoint kept by ``save_atomic(..., keep_previous=True)``.
PREVIOUS_SUFFIX = ".prev.pt"


class CheckpointError(UserError):
    """A file that is no readable vltk checkpoint; ``reason`` is the short why (for the fallback warning)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used and an older one is used instead (printed as one ``warning:`` line)."""


def previous_path(path: str | Path) -> Path:
    """``last.pt`` -> ``last.prev.pt``: where :func:`save_atomic` keeps the generation before the newest."""
    path = Path(path)
    return path.with_name(path.stem + PREVIOUS_SUFFIX)


def save_atomic(state: dict[str, Any], path: str | Path, *, keep_previous: bool = False) -> Path:
    """``torch.save`` to ``path`` through a temporary file + rename; the old file survives any failure.

    With ``keep_previous`` the file being replaced becomes :func:`previous_path` (only once the new one is fully
    written and synced), so two generations exist from the second save on.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        if keep_previous and path.is_file():
            os.replace(path, previous_path(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def is_unfinished_save(path: Path) -> bool:
    """Whether ``path`` is the temporary file of a :func:`save_atomic` that never finished (``.last.pt.x.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and ".pt." in path.name


def _load_error_text(error: BaseException) -> str:
    """A short reason a file is no checkpoint, never torch's advice to load it with ``weights_only=False``."""
    text = str(error)
    if "weights_only" in text or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{what}, not only tensors, and vltk never runs code from a checkpoint"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vltk checkpoint; missing, corrupt or foreign files are user errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist (runs write <output>/last.pt and best.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors come in many types; all mean "not a readable checkpoint"
        reason = f"cannot be read ({_load_error_text(error)})"
        raise CheckpointError(
            f"checkpoint '{path}' {reason}; use a last.pt or best.pt written by `vltk train`, or give backbone "
            "weights with backbone.pretrained=FILE",
            reason,
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(
            f"'{path}' is not a vltk checkpoint (expected the keys 'model' and 'config'); "
            "to start from backbone weights use backbone.pretrained=FILE instead",
            "is not a vltk checkpoint",
        )
    for key, kind in (("model", "a mapping of parameter names to tensors"), ("config", "a mapping")):
        if not isinstance(state[key], dict):
            reason = f"is damaged: its '{key}' entry is a {type(state[key]).__name__}, not {kind}"
            raise CheckpointError(
                f"checkpoint '{path}' {reason}; use a last.pt or best.pt written by `vltk train`", reason
            )
    return state


def load_resume_checkpoint(folder: str | Path, name: str = "last.pt") -> tuple[dict[str, Any], Path] | None:
    """The newest readable generation of ``folder/name`` (``last.pt``, else ``last.prev.pt``) and its path.

    ``None`` when neither exists. Falling back to the older generation is a one-line :class:`CheckpointWarning`
    naming both; when no generation is readable it is a :class:`UserError` naming each file and its problem.
    """
    newest = Path(folder) / name
    problems: list[str] = []
    for path in (newest, previous_path(newest)):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            problems.append(f"'{path}' {error.reason}")
            continue
        if path != newest:
            why = problems[0] if problems else f"'{newest}' is missing (a save was interrupted between two renames)"
            warnings.warn(
                f"{why}; resuming from the previous checkpoint '{path}' (iteration {state.get('step', '?')})",
                CheckpointWarning,
                stacklevel=2,
            )
        return state, path
    if problems:
        raise UserError(
            f"no readable checkpoint to resume from in '{folder}': {'; '.join(problems)}; restore last.pt from a "
            "backup, or start the run again without --resume"
        )
    return None


# ----------------------------------------------------------------------------------------------------- model fit


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def state_mismatch(
    model: torch.nn.Module, weights: dict[str, Any], *, skip_prefix: str | tuple[str, ...] | None = None
) -> str | None:
    """Why ``weights`` do not fit ``model`` (shapes first, then missing and unexpected keys), or ``None``.

    Names the first few offending keys with both shapes, e.g. ``decoder.conv.weight is [16, 192] in the
    checkpoint but [16, 384] in the model``; keys starting with ``skip_prefix`` (one or several) may be missing (a
    checkpoint saved without its frozen backbone, an export without the parts inference never uses).
    """
    own = model.state_dict()
    mismatched = [
        f"{key} is {_shape(value)} in the checkpoint but {_shape(own[key])} in the model"
        for key, value in weights.items()
        if key in own and (not isinstance(value, torch.Tensor) or value.shape != own[key].shape)
    ]
    missing = [key for key in own if key not in weights and not (skip_prefix and key.startswith(skip_prefix))]
    unexpected = [key for key in weights if key not in own]
    parts = []
    groups = (("", mismatched), ("missing from the checkpoint: ", missing), ("not in the model: ", unexpected))
    for label, items in groups:
        if items:
            more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(label + ", ".join(items[:3]) + more)
    return "; ".join(parts) if parts else None


def load_model_state(
    model: torch.nn.Module, state: dict[str, Any], *, source: str = "checkpoint", fix: str = ""
) -> None:
    """Load a checkpoint's weights after checking that they fit; a backbone-less checkpoint keeps the backbone
    the model was built with. A misfit is one :class:`UserError` naming the first keys with both shapes."""
    weights = state["model"]
    skip = tuple(state.get("omitted") or ()) + (() if state.get("backbone_included", True) else ("backbone.",))
    problem = state_mismatch(model, weights, skip_prefix=skip or None)
    if problem is not None:
        fix = fix or "use the configuration it was trained with (the checkpoint's own, without overrides)"
        raise UserError(f"{source} does not fit the model built from its configuration: {problem}; {fix}")
    model.load_state_dict(weights, strict=False)


# ------------------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """Python ``random``, NumPy's global generator, torch's CPU generator and (when initialised) every CUDA one.

    Stored as tensors and plain containers so that ``weights_only=True`` loads them.
    """
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` captured (older checkpoints hold only ``torch``)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
                "has_gauss": saved["has_gauss"],
                "gauss": saved["gauss"],
            }
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state_for_checkpoint(model: torch.nn.Module, *, include_backbone: bool) -> dict[str, torch.Tensor]:
    """The model's state dict, without the frozen backbone when it can be re-loaded from its pretrained file.

    That keeps a Rein checkpoint at adapter + head size (as the paper's 0.01 GB + 0.08 GB) while a run whose
    backbone was randomly initialised or fine-tuned keeps everything.
    """
    state = model.state_dict()
    if include_backbone:
        return state
    return {key: value for key, value in state.items() if not key.startswith("backbone.")}
