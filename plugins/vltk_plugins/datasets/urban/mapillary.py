"""The ``mapillary`` layout of the ``urban`` dataset: Mapillary Vistas with raw v1.2 labels or converted ones.

Mapillary ships ``<training|validation>/images/*.jpg`` with ``<...>/v1.2/labels/*.png`` (the 2.0 download) or
``<...>/labels/*.png`` (the 1.x download): palette PNGs indexing 66 classes, mapped to the 19 Cityscapes train
ids on load with the table the DG papers use (:data:`~vltk_plugins.datasets.urban.labels.MAPILLARY_ID_TO_TRAIN_ID`).
Labels already converted to train ids (Rein's preparation) live in ``<...>/labels_trainid/``. With
``mapillary_labels: auto`` a ``labels_trainid`` folder wins, then ``v1.2/labels``, then ``labels``; a folder named
by ``mapillary_label_folder`` is read as raw when its PNGs are palette images (as Mapillary ships them).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vltk.api import UserError
from vltk_plugins.datasets.urban.discovery import Pair, images_in, match_pairs, require_dir
from vltk_plugins.datasets.urban.options import UrbanDomain

#: Label folders under ``<training|validation>/`` in the order ``auto`` tries them, with their encoding.
LABEL_FOLDERS: tuple[tuple[str, str], ...] = (
    ("labels_trainid", "trainid"),
    ("v1.2/labels", "raw"),
    ("labels", "raw"),
)


def _is_palette(path: Path) -> bool:
    with Image.open(path) as handle:
        return handle.mode == "P"


def label_folder(folder: Path, domain: UrbanDomain) -> tuple[Path, str]:
    """The label folder of one split and whether it holds ``raw`` v1.2 ids or ``trainid`` labels."""
    if domain.mapillary_label_folder is not None:
        labels = folder / domain.mapillary_label_folder
        mode = domain.mapillary_labels
        if mode == "auto":  # raw v1.2 labels are palette PNGs, converted ones plain 8-bit
            first = next(iter(sorted(labels.glob("*.png"))), None) if labels.is_dir() else None
            mode = "raw" if first is not None and _is_palette(first) else "trainid"
        return labels, mode
    candidates = [(name, mode) for name, mode in LABEL_FOLDERS if domain.mapillary_labels in ("auto", mode)]
    for name, mode in candidates:
        if (folder / name).is_dir():
            return folder / name, mode
    expected = " or ".join(f"{folder.name}/{name}/*.png" for name, _ in candidates)
    raise UserError(
        f"no Mapillary label folder for domain '{domain.name}' under '{folder}': expected {expected} "
        f"(mapillary_labels={domain.mapillary_labels}); check dataset.*.root (now '{domain.root}')"
    )


def mapillary_pairs(domain: UrbanDomain, split: str) -> list[Pair]:
    """The pairs of ``training`` (split train) or ``validation`` (split val)."""
    folder = require_dir(
        Path(domain.root) / ("training" if split == "train" else "validation"),
        domain,
        "training/ and validation/ folders with images/*.jpg and v1.2/labels/*.png",
    )
    images = require_dir(folder / "images", domain, f"{folder.name}/images/*.jpg")
    labels, mode = label_folder(folder, domain)
    require_dir(labels, domain, f"{folder.name}/{labels.relative_to(folder)}/*.png")
    encoding = "mapillary" if mode == "raw" else "train"
    return match_pairs(images_in(images), images_in(labels), "", "", domain, str(labels), encoding=encoding)


__all__ = ["LABEL_FOLDERS", "label_folder", "mapillary_pairs"]
