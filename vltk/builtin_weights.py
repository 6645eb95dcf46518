"""Weights that ship inside an installed package, addressed by name: ``backbone.pretrained=builtin:<name>``.

Nothing is ever downloaded, so a package that wants its users to start from a pretrained model ships the file and
declares it through the ``vltk_builtin_weights`` hook (:class:`BuiltinWeights`: the file, its sha256, the
backbones it fits, how it was made and what it scores). The core resolves a ``builtin:`` reference to the file,
checks the file against its recorded sha256 (once per file and process), and otherwise treats it as the path it
stands for; checkpoints record the reference itself, not the path, so a run trained from shipped weights
evaluates on any machine where the package is installed. No torch import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vltk.errors import UserError, did_you_mean

#: How a weights option names shipped weights rather than a file.
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinWeights:
    """One shipped weights file, as a plugin declares it.

    ``backbones`` lists the backbone names the file loads into (``("eva02", "clip-vit")``) and ``variant`` the
    variant option it needs (``"tiny"``; None when any); ``reproduce`` is the exact command that made it and
    ``evaluation`` its measured numbers, shown by ``vltk show backbone`` and ``vltk list weights``.
    """

    name: str
    path: Path
    sha256: str
    backbones: tuple[str, ...]
    summary: str = ""
    variant: str | None = None
    reproduce: str = ""
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """What ``backbone.pretrained`` takes: ``builtin:<name>``."""
        return BUILTIN_PREFIX + self.name


def is_builtin(value: str | None) -> bool:
    """Whether a weights option names shipped weights (``builtin:<name>``) rather than a file."""
    return isinstance(value, str) and value.startswith(BUILTIN_PREFIX)


def builtin_weights() -> dict[str, BuiltinWeights]:
    """``{name: BuiltinWeights}`` of every ``vltk_builtin_weights`` declaration of the loaded plugins."""
    from vltk.plugins import get_plugin_manager

    return {name: weights for name, (_, weights) in get_plugin_manager().builtin_weights().items()}


def weights_for_backbone(backbone: str) -> list[BuiltinWeights]:
    """The shipped weights that load into the backbone registered as ``backbone``."""
    return [weights for weights in builtin_weights().values() if backbone in weights.backbones]


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: (path, size, mtime) of files already checked against their sha256 in this process.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verified(weights: BuiltinWeights) -> Path:
    path = Path(weights.path)
    if not path.is_file():
        raise UserError(
            f"the built-in weights '{weights.name}' are declared but their file {path} is missing; reinstall the "
            "package that ships them (pip install --force-reinstall)"
        )
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        found = sha256_of(path)
        if found != weights.sha256:
            raise UserError(
                f"the built-in weights '{weights.name}' ({path}) are damaged or were replaced: sha256 {found[:12]}… "
                f"where {weights.sha256[:12]}… is recorded; reinstall the package that ships them"
            )
        _VERIFIED.add(key)
    return path


def resolve_builtin(reference: str, *, backbone: str | None = None, variant: str | None = None) -> Path:
    """The checked file behind ``builtin:<name>``.

    An unknown name lists the shipped ones (closest first); weights meant for another backbone or variant are
    refused before anything is read; a missing or changed file is one error saying to reinstall.
    """
    name = reference[len(BUILTIN_PREFIX) :]
    known = builtin_weights()
    if name not in known:
        shipped = ", ".join(sorted(known)) or "none are installed"
        raise UserError(
            f"unknown built-in weights '{reference}';{did_you_mean(name, known)} shipped: {shipped} (vltk list weights)"
        )
    weights = known[name]
    if backbone is not None and backbone not in weights.backbones:
        raise UserError(
            f"the built-in weights '{name}' are for the {' / '.join(weights.backbones)} backbone, not '{backbone}'; "
            f"use --backbone {weights.backbones[0]} or other weights"
        )
    if variant is not None and weights.variant is not None and variant != weights.variant:
        raise UserError(
            f"the built-in weights '{name}' are for variant '{weights.variant}', not '{variant}'; "
            f"set backbone.variant={weights.variant}"
        )
    return _verified(weights)


def resolve_weights_file(value: str, *, backbone: str | None = None, variant: str | None = None) -> str:
    """A weights option's file: ``builtin:<name>`` resolved (:func:`resolve_builtin`), anything else unchanged."""
    if is_builtin(value):
        return str(resolve_builtin(value, backbone=backbone, variant=variant))
    return value


__all__ = [
    "BUILTIN_PREFIX",
    "BuiltinWeights",
    "builtin_weights",
    "is_builtin",
    "resolve_builtin",
    "resolve_weights_file",
    "sha256_of",
    "weights_for_backbone",
]
