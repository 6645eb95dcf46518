"""A released checkpoint file as read: its tensors under their released names, and the metadata beside them.

Releases come as ``torch.save`` files (mmseg's ``{"meta", "state_dict"}``, Lightning's ``{"state_dict",
"hyper_parameters", ...}``, detectron2's ``{"model", ...}``) or ``.safetensors`` (Hugging Face), sometimes with a
``config.json`` beside them. :func:`read_release` reads one with ``weights_only=True`` and keeps the names as they
are (unlike backbone weight loading, which peels prefixes): the key map matches the released names. Metadata a
training framework pickles beside the weights (Lightning's ``AttributeDict`` hyper-parameters, ``argparse``
namespaces, ``pathlib`` paths) is read through plain stand-ins, still with ``weights_only=True``. Every format
asks for the same file in turn, so the last reads are cached by path, size and modification time.
"""

from __future__ import annotations

import functools
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Keys whose value holds the weights (mmseg/Lightning ``state_dict``, detectron2 ``model``, DeepSpeed ``module``).
WEIGHT_KEYS: tuple[str, ...] = ("state_dict", "model", "module")


@dataclass(frozen=True)
class ReleaseFile:
    """``state``: the tensors under their released names; ``meta``: what the file keeps beside the weights
    (mmseg's ``meta``, Lightning's ``hyper_parameters``, a Hugging Face ``config.json`` next to the file);
    ``wrapper``: the key the weights sat under (``""`` for a bare state dict)."""

    path: str
    state: dict[str, Tensor]
    container: str
    wrapper: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def has(self, *prefixes: str) -> bool:
        """Whether some key starts with each of ``prefixes``: how formats recognise their files."""
        return all(any(key.startswith(prefix) for key in self.state) for prefix in prefixes)


class _Namespace:
    """Stand-in for ``argparse.Namespace`` in a release's metadata: its attributes, nothing else."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _path(*parts: Any) -> str:
    """Stand-in for ``pathlib.PosixPath``/``WindowsPath`` in a release's metadata: the path as text (no I/O)."""
    from pathlib import PurePosixPath

    return str(PurePosixPath(*(str(part) for part in parts)))


def _metadata_stand_in(name: str) -> Any:
    """The plain stand-in for a metadata class a training framework pickles beside the weights, or None.

    Lightning writes ``hyper_parameters`` as its ``AttributeDict`` (a ``dict`` subclass), training scripts keep
    ``argparse.Namespace`` arguments and ``pathlib`` paths. ``weights_only`` refuses them; they are read as a dict,
    an attribute bag and a string instead, so no code of the file's framework is imported or run.
    """
    if name.endswith(".AttributeDict") and name.split(".")[0] in ("pytorch_lightning", "lightning", "lightning_fabric"):
        return dict
    if name == "argparse.Namespace":
        return _Namespace
    if name in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path"):
        return _path
    return None


def _load(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        stand_ins = [(_metadata_stand_in(name), name) for name in names]
        if not names or any(stand_in is None for stand_in, _ in stand_ins):
            raise
        with torch.serialization.safe_globals(stand_ins):  # still weights_only: only these plain stand-ins
            return torch.load(path, map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, size: int, mtime_ns: int) -> ReleaseFile | None:
    file = Path(path)
    try:
        loaded = _load(file)
    except Exception:  # an unreadable file is no release of any format; the caller's error says what to pass
        return None
    if not isinstance(loaded, Mapping):
        return None
    meta: dict[str, Any] = {key: value for key, value in loaded.items() if not isinstance(value, (Tensor, Mapping))}
    wrapper = ""
    for key in WEIGHT_KEYS:
        if isinstance(loaded.get(key), Mapping):
            meta.update({name: value for name, value in loaded.items() if name != key})
            loaded, wrapper = loaded[key], key
            break
    state = {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, Tensor)}
    if not state:
        return None
    config = file.with_name("config.json")
    if file.suffix in (".safetensors", ".bin") and config.is_file():
        try:
            meta["config.json"] = json.loads(config.read_text())
        except (OSError, ValueError):
            pass
    container = "safetensors" if file.suffix == ".safetensors" else "torch.save"
    return ReleaseFile(path=path, state=state, container=container, wrapper=wrapper, meta=meta)


def read_release(path: str) -> ReleaseFile | None:
    """The released file at ``path``, or ``None`` when it is missing or holds no state dict of tensors."""
    file = Path(path).expanduser()
    if not file.is_file():
        return None
    stat = file.stat()
    return _read_cached(str(file), stat.st_size, stat.st_mtime_ns)


__all__ = ["WEIGHT_KEYS", "ReleaseFile", "read_release"]
