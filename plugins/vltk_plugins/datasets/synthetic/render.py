"""The renderer's front door: scene ``(seed, index)`` of ``size`` in a domain, as an image and its label map.

numpy only (no torch, a test checks it), so scripts, benchmarks and notebooks can render scenes without the
dataset classes of :mod:`.dataset`. The layout comes from :func:`~.layout.scene_layout` (labels shared by every
domain), the appearance from :func:`~.domains.paint_domain`.
"""

from __future__ import annotations

import numpy as np

from vltk_plugins.datasets.synthetic.domains import check_domain, paint_domain
from vltk_plugins.datasets.synthetic.layout import scene_layout
from vltk_plugins.datasets.synthetic.options import SYNTHETIC_DOMAINS


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def render_scene(seed: int, index: int, size: tuple[int, int] | int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``index`` of ``seed`` in ``domain``: ``(image uint8 [H, W, 3], label uint8 [H, W])``.

    The label map depends only on ``(seed, index, size)``, so every domain of one scene shares it exactly; the
    random stream does not depend on ``size`` either, so other sizes show the same scene. Every pixel has a class
    (no ignore pixels). The image is a transposed view of a channels-first buffer (``image.transpose(2, 0, 1)``
    is contiguous and free); call ``np.ascontiguousarray`` if you need an HWC-contiguous array.
    """
    check_domain(domain)
    layout = scene_layout(seed, index, _size(size))
    return paint_domain(layout, seed, index, domain), layout.label


def render_domains(
    seed: int, index: int, size: tuple[int, int] | int, domains: tuple[str, ...] | list[str] = SYNTHETIC_DOMAINS
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Render one layout in several domains at once (the layout is computed once): ``({domain: image}, label)``."""
    for domain in domains:
        check_domain(domain)
    layout = scene_layout(seed, index, _size(size))
    return {domain: paint_domain(layout, seed, index, domain) for domain in domains}, layout.label


__all__ = ["render_domains", "render_scene"]
