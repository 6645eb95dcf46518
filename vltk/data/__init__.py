"""Datasets: the :class:`~vltk.data.base.DenseDataSource` contract and the built-in ``synthetic`` source.

``synthetic`` renders street scenes procedurally (no files, no downloads) in a GTAV-like source domain and five
shifted target domains (``textured``, ``fog``, ``night``, ``rain``, ``snow``) that share every label map, so
domain generalisation can be tested anywhere in seconds.

Importing this package stays light: the names below are resolved on first use, so ``import vltk.data`` (and
``SyntheticOptions`` for config validation) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vltk.data.base import SPLITS, DenseDataSource, DenseSample
    from vltk.data.synthetic import (
        CITYSCAPES_CLASSES,
        CITYSCAPES_PALETTE,
        SyntheticScenes,
        SyntheticSplit,
        build_synthetic,
        colorize,
        render_domains,
        render_scene,
    )
    from vltk.data.synthetic_options import SYNTHETIC_DOMAINS, VAL_INDEX_OFFSET, SyntheticOptions

_LAZY: dict[str, str] = {
    "SPLITS": "vltk.data.base",
    "DenseDataSource": "vltk.data.base",
    "DenseSample": "vltk.data.base",
    "CITYSCAPES_CLASSES": "vltk.data.synthetic",
    "CITYSCAPES_PALETTE": "vltk.data.synthetic",
    "VAL_INDEX_OFFSET": "vltk.data.synthetic_options",
    "SyntheticScenes": "vltk.data.synthetic",
    "SyntheticSplit": "vltk.data.synthetic",
    "build_synthetic": "vltk.data.synthetic",
    "colorize": "vltk.data.synthetic",
    "render_domains": "vltk.data.synthetic",
    "render_scene": "vltk.data.synthetic",
    "SYNTHETIC_DOMAINS": "vltk.data.synthetic_options",
    "SyntheticOptions": "vltk.data.synthetic_options",
}

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "SPLITS",
    "SYNTHETIC_DOMAINS",
    "VAL_INDEX_OFFSET",
    "DenseDataSource",
    "DenseSample",
    "SyntheticOptions",
    "SyntheticScenes",
    "SyntheticSplit",
    "build_synthetic",
    "colorize",
    "render_domains",
    "render_scene",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vltk.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
