"""The small contract between a dataset plugin and the engine: what a registered ``dataset`` factory returns.

A factory returns a :class:`DenseDataSource`: class names and colours (for metrics, prompts and
visualisation), the domains to evaluate, which of them are trained on, and ``split(split, domain)`` giving a
``torch.utils.data.Dataset`` of :class:`DenseSample` dicts. Nothing else is assumed, so a loader for real
GTAV/Cityscapes/ACDC files and the procedural ``synthetic`` source are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from vltk.errors import UserError, did_you_mean

#: Split names every data source understands.
SPLITS: tuple[str, ...] = ("train", "val")


class DenseSample(TypedDict):
    """One item of a split: ``image`` uint8 ``[3, H, W]``, ``label`` int64 ``[H, W]``, its domain and index."""

    image: torch.Tensor
    label: torch.Tensor
    domain: str
    index: int


class DenseDataSource(ABC):
    """Labelled images from one or more domains, trained on ``train_domains`` and evaluated on ``domains``.

    Subclasses set ``classes``, ``palette``, ``domains`` and ``train_domains`` (class attributes or in
    ``__init__``) and implement :meth:`split`. Labels are class indices into ``classes``; ``ignore_index``
    marks unlabelled pixels.
    """

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    domains: tuple[str, ...]
    train_domains: tuple[str, ...]
    ignore_index: int = 255

    @abstractmethod
    def split(self, split: str, domain: str) -> Dataset:
        """The ``"train"`` or ``"val"`` images of ``domain``; anything else raises :class:`vltk.errors.UserError`."""

    @property
    def target_domains(self) -> tuple[str, ...]:
        """Domains evaluated but never trained on: where domain generalisation is measured."""
        return tuple(domain for domain in self.domains if domain not in self.train_domains)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_split(self, split: str, domain: str, known_domains: Iterable[str] | None = None) -> None:
        """Raise a :class:`UserError` naming the closest valid choice for an unknown split or domain."""
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}';{did_you_mean(split, SPLITS)} splits: {', '.join(SPLITS)}")
        valid = tuple(known_domains) if known_domains is not None else self.domains
        if domain not in valid:
            raise UserError(
                f"unknown domain '{domain}' for {type(self).__name__};{did_you_mean(domain, valid)} "
                f"domains: {', '.join(valid)}"
            )


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """Label map ``[H, W]`` -> RGB ``[H, W, 3]`` uint8 (ignored pixels black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = 0
    return lut[np.clip(label, 0, 255).astype(np.uint8)]


__all__ = ["SPLITS", "DenseDataSource", "DenseSample", "colorize"]
