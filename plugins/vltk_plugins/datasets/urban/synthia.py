"""The ``synthia`` layout of the ``urban`` dataset: SYNTHIA-RAND-CITYSCAPES, the second synthetic source of DG.

Files: ``RGB/*.png`` and ``GT/LABELS/*.png`` (9,400 pairs, same stems). Labels are the raw 16-bit Synthia PNGs,
mapped to Cityscapes train ids on load (:mod:`vltk_plugins.datasets.urban.labels`), so DAFormer's converted
``*_labelTrainIds.png`` copies lying beside them are not needed (and are skipped: they match no image). The
dataset has no official val split: the last ``holdout`` files are held out, as for GTAV.
"""

from __future__ import annotations

from pathlib import Path

from vltk_plugins.datasets.urban.discovery import Pair, holdout_split, images_in, match_pairs, require_dir
from vltk_plugins.datasets.urban.options import UrbanDomain

SYNTHIA_FILES = "RGB/*.png and GT/LABELS/*.png (SYNTHIA-RAND-CITYSCAPES)"


def synthia_pairs(domain: UrbanDomain, split: str) -> list[Pair]:
    """The image/label pairs of ``split``: every file, less or only the held-out tail."""
    root = Path(domain.root)
    images = require_dir(root / "RGB", domain, SYNTHIA_FILES)
    labels = require_dir(root / "GT" / "LABELS", domain, SYNTHIA_FILES)
    pairs = match_pairs(images_in(images), images_in(labels), "", "", domain, str(labels), encoding="synthia")
    return holdout_split(pairs, split, domain.holdout)


__all__ = ["SYNTHIA_FILES", "synthia_pairs"]
