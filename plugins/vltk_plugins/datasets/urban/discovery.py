"""File discovery shared by the ``urban`` layouts: image/label pairs, folder checks, held-out and capped splits.

One module the layout readers (``dataset.py``, ``synthia.py``, ``mapillary.py``) import, so each layout states only
where its files are and how its labels are encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vltk.api import UserError
from vltk_plugins.datasets.urban.options import UrbanDomain

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Pair:
    """One image and its label file; ``label_ids`` says how the label is encoded."""

    image: Path
    label: Path
    label_ids: str = "train"


def require_dir(path: Path, domain: UrbanDomain, what: str) -> Path:
    """``path`` if it is a folder, else one error naming the folder, the expected files and the option to fix."""
    if not path.is_dir():
        raise UserError(
            f"dataset folder '{path}' for domain '{domain.name}' ({domain.kind}) does not exist: expected {what}; "
            f"check dataset.*.root (now '{domain.root}')"
        )
    return path


def _by_stem(files: list[Path], suffix: str) -> dict[str, Path]:
    return {path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.stem: path for path in files}


def match_pairs(
    images: list[Path],
    labels: list[Path],
    image_suffix: str,
    label_suffix: str,
    domain: UrbanDomain,
    where: str,
    encoding: str | None = None,
) -> list[Pair]:
    """Pair files that share a key after removing the layout's suffixes; an image without a label is an error.

    ``encoding`` is the labels' (:mod:`~vltk_plugins.datasets.urban.labels`); by default Cityscapes label ids for
    GTAV and the domain's ``label_ids`` otherwise.
    """
    if encoding is None:
        encoding = "cityscapes" if domain.kind == "gtav" else domain.label_ids
    label_map = _by_stem(labels, label_suffix)
    pairs = []
    for image in sorted(images):
        key = image.name[: -len(image_suffix)] if image_suffix and image.name.endswith(image_suffix) else image.stem
        label = label_map.get(key)
        if label is None:
            raise UserError(
                f"image '{image}' of domain '{domain.name}' has no label file "
                f"(looked for '{key}{label_suffix or '.png'}' in {where})"
            )
        pairs.append(Pair(image, label, encoding))
    if not pairs:
        raise UserError(f"no images found for domain '{domain.name}' ({domain.kind}) under '{domain.root}'")
    return pairs


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (png, jpg) directly in ``folder``, or anywhere below it when ``recursive``."""
    pattern = "**/*" if recursive else "*"
    return [path for path in folder.glob(pattern) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]


def holdout_split(pairs: list[Pair], split: str, holdout: int) -> list[Pair]:
    """Layouts without a val split: the last ``holdout`` pairs are val and leave train (0: val = train)."""
    if holdout == 0:
        return pairs
    if holdout >= len(pairs):
        raise UserError(f"holdout={holdout} leaves no training images ({len(pairs)} files)")
    return pairs[-holdout:] if split == "val" else pairs[:-holdout]


def spread(pairs: list[Pair], count: int | None) -> list[Pair]:
    """At most ``count`` pairs evenly spaced over the list (first and last kept), so a capped val split of a
    sequence-ordered dataset such as GTAV still covers every part of it rather than its first frames."""
    if count is None or len(pairs) <= count:
        return pairs
    return [pairs[int(index)] for index in np.linspace(0, len(pairs) - 1, count).round().astype(int)]


__all__ = ["IMAGE_SUFFIXES", "Pair", "holdout_split", "images_in", "match_pairs", "require_dir", "spread"]
