"""Reading a weights file into one flat state dict of tensors, whatever container and wrappers it comes in.

Researchers' files come in three containers (a ``torch.save`` pickle, ``.safetensors``, OpenAI's TorchScript
archives ``ViT-*.pt``/``RN*.pt``) and under several wrappers: a training script's ``{"model": ...}`` (BAAI's EVA02),
``{"module": ...}`` (DeepSpeed), ``{"state_dict": ...}`` (mmseg, Lightning), ``module.``-prefixed keys (DDP), an
mmseg segmentor whose backbone sits under ``backbone.`` next to ``decode_head.*``, or a vltk ``dinov2`` backbone's
own ``trunk.*``. :func:`read_checkpoint` peels all of these off and says what it peeled, so that format detection
(:mod:`vltk_plugins.common.weights.formats`) sees the model's own key names only. Plain files are read with
``torch.load(..., weights_only=True)``; TorchScript archives cannot be (they hold code), so they go through
``torch.jit.load`` on the CPU and only their state dict is kept, as open_clip does with OpenAI's files. That runs
no Python, but it does run the archive's own TorchScript (``__setstate__``): pass archives you trust.
"""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vltk.api import UserError

logger = logging.getLogger(__name__)

#: Keys whose value is a checkpoint inside the checkpoint (training scripts, DeepSpeed, mmseg/Lightning).
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "module")

#: Scalars OpenAI's CLIP files carry beside the weights (open_clip drops them before loading).
OPENAI_EXTRA_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")

#: The one-line description of what a weights file may be, used in the read errors.
ACCEPTED_FILES = (
    "a torch.save'd state dict (raw or under 'state_dict'/'model'/'module'), a .safetensors file or an OpenAI "
    "TorchScript archive"
)


@dataclass(frozen=True)
class Checkpoint:
    """A weights file as read: the flat state dict and how it was stored.

    ``container`` is ``"torch.save"``, ``"safetensors"`` or ``"TorchScript"``; ``unwrapped`` lists what was peeled
    off, outermost first (``"'model'"``, ``"prefix 'module.'"``, ...); ``extras`` holds OpenAI's scalar entries
    (:data:`OPENAI_EXTRA_KEYS`), taken out of ``state`` because they are not weights.
    """

    path: str
    state: dict[str, Tensor]
    container: str
    unwrapped: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``"torch.save file, under 'model'"``: how the file was stored, for logs and ``vltk convert``."""
        how = f"{self.container} file"
        return f"{how}, under {', '.join(self.unwrapped)}" if self.unwrapped else how


def is_torchscript(file: Path) -> bool:
    """True for a TorchScript archive: a zip holding ``<name>/constants.pkl`` and ``<name>/code/``.

    ``torch.save`` files are zips too, but carry neither (they hold ``data.pkl`` and tensor data only).
    """
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names)


def _load_container(file: Path) -> tuple[Any, str]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu"), "safetensors"
    if is_torchscript(file):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": it is the only reader
            archive = torch.jit.load(str(file), map_location="cpu")
        return dict(archive.state_dict()), "TorchScript"
    return torch.load(file, map_location="cpu", weights_only=True), "torch.save"


def _strip_shared_prefix(state: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], str] | None:
    if all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}, f"prefix '{prefix}'"
    return None


def _strip_module(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str] | None:
    """DDP's ``module.`` on every key."""
    return _strip_shared_prefix(state, "module.")


def _strip_trunk(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str] | None:
    """A vltk ``dinov2`` backbone's own state dict (``trunk.*``), or an open_clip timm tower without projection."""
    return _strip_shared_prefix(state, "trunk.")


def _select_backbone(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str] | None:
    """An mmseg segmentor's backbone (``backbone.*`` beside ``decode_head.*``, ...), with what was left out."""
    inside = {  # Rein's adapter sits inside its backbone (``backbone.reins.*``): not backbone weights
        key[len("backbone.") :]: value
        for key, value in state.items()
        if key.startswith("backbone.") and not key.startswith("backbone.reins.")
    }
    if not inside:
        return None
    outside = sorted({key.split(".", 1)[0] for key in state if not key.startswith("backbone.")})
    if any(key.startswith("backbone.reins.") for key in state):
        outside.append("backbone.reins")
    if not outside:
        return inside, "prefix 'backbone.'"
    return inside, f"prefix 'backbone.' ({len(state) - len(inside)} keys of {', '.join(outside)} left out)"


def read_checkpoint(path: str, label: str, what: str = "checkpoint") -> Checkpoint:
    """Read ``path`` into a :class:`Checkpoint`; anything unreadable is a :class:`UserError` saying what to pass.

    ``label`` names the component in errors ("eva02 (tiny)"), ``what`` the kind of file it wants ("DINOv2
    checkpoint"). Wrappers are peeled in this order: :data:`WRAPPER_KEYS` (repeatedly, so mmseg's
    ``{"meta", "state_dict"}`` and nested training dicts work), a ``module.`` prefix on every key, an mmseg
    ``backbone.`` prefix (the other parts of a segmentor are left out and logged), a ``trunk.`` prefix on every
    key (a vltk ``dinov2`` backbone's state dict).
    """
    file = Path(path).expanduser()
    how = f"pass pretrained=<path to a local {what}> ({ACCEPTED_FILES}), or pretrained=null for random weights"
    if not file.is_file():
        raise UserError(f"{label}: pretrained file '{path}' does not exist; {how}")
    try:
        loaded, container = _load_container(file)
    except Exception as error:  # any unreadable file is the same user problem
        lines = str(error).splitlines() or [""]
        reason = f"{type(error).__name__}: {lines[0]}"
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in lines[0]:
            # a training checkpoint: weights_only loading refuses the Python objects stored beside the tensors
            found = next(
                (line.strip().split(" was not an allowed")[0] for line in lines if "Unsupported global" in line), ""
            )
            reason = f"it holds Python objects besides tensors{': ' + found if found else ''}"
            how = f"save the weights alone (torch.save(checkpoint['state_dict'], ...)) and {how}"
        raise UserError(f"{label}: could not read '{path}' as a state dict ({reason}); {how}") from None
    unwrapped: list[str] = []
    while isinstance(loaded, Mapping):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
        if wrapper is None:
            break
        loaded = loaded[wrapper]
        unwrapped.append(f"'{wrapper}'")
    if not isinstance(loaded, Mapping) or not loaded:
        raise UserError(f"{label}: '{path}' does not hold a state dict of tensors; {how}")
    extras = {key: loaded[key] for key in OPENAI_EXTRA_KEYS if key in loaded}
    state = {key: value for key, value in loaded.items() if key not in extras}
    if not state or not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()):
        raise UserError(f"{label}: '{path}' does not hold a state dict of tensors; {how}")
    for peel in (_strip_module, _select_backbone, _strip_trunk):
        peeled = peel(state)
        if peeled is not None:
            state = peeled[0]
            unwrapped.append(peeled[1])
    checkpoint = Checkpoint(path=path, state=state, container=container, unwrapped=tuple(unwrapped), extras=extras)
    logger.info("%s: read %d tensors from '%s' (%s)", label, len(state), path, checkpoint.describe())
    return checkpoint


def read_state_dict(path: str, label: str, what: str = "open_clip checkpoint") -> dict[str, Tensor]:
    """The flat state dict of :func:`read_checkpoint` (wrappers and prefixes peeled off, OpenAI scalars left out)."""
    return read_checkpoint(path, label, what).state


__all__ = [
    "ACCEPTED_FILES",
    "OPENAI_EXTRA_KEYS",
    "WRAPPER_KEYS",
    "Checkpoint",
    "is_torchscript",
    "read_checkpoint",
    "read_state_dict",
]
