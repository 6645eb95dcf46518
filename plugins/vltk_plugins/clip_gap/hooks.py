"""Entry point of the CLIP the Gap plugin (Vidit, Engilberge, Salzmann, CVPR 2023): the ``clip-gap`` augmenter,
the ``clip-faster-rcnn`` decoder and their recipes (``clip-gap/dwd``, ``clip-gap/synthetic``).

Light on purpose: only the options models are imported; factories import torch/torchvision when built. The
backbone (``clip-resnet``), prompters (``clip-template``) and detection datasets (``synthetic-det``, ``dwd``)
are paper-agnostic: they live in the backbones, prompters and datasets plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vltk.api import hookimpl, lazy_factory
from vltk_plugins.clip_gap.options import ClipFasterRCNNOptions, ClipGapOptions

PAPER = "CLIP the Gap (Vidit, Engilberge, Salzmann, CVPR 2023)"


@hookimpl
def vltk_register_augmenters(register: Any) -> None:
    register(
        "clip-gap",
        lazy_factory("vltk_plugins.clip_gap.augmenter", "build_clip_gap"),
        options=ClipGapOptions,
        summary="semantic feature offsets fitted from text prompts (fit phase), added to the stage-a map in training",
        paper=PAPER,
    )


@hookimpl
def vltk_register_decoders(register: Any) -> None:
    register(
        "clip-faster-rcnn",
        lazy_factory("vltk_plugins.clip_gap.rcnn", "build_clip_faster_rcnn"),
        options=ClipFasterRCNNOptions,
        summary="detection: C4 Faster R-CNN on torchvision, RoIs through layer4 + attention pool, text classifier",
        paper=PAPER,
    )


@hookimpl
def vltk_recipe_dirs() -> list[str]:
    return [str(Path(__file__).parent / "recipes")]


@hookimpl
def vltk_release_formats() -> list[object]:
    """CLIP the Gap's released checkpoints (detectron2), read by ``vltk convert`` and ``vltk eval --checkpoint``."""
    from vltk_plugins.clip_gap.release import CLIP_GAP_RELEASE

    return [CLIP_GAP_RELEASE]
