"""Shared tiny, randomly initialised CLIP ResNet (8 wide, one block per stage): builds in well under a second."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from vltk_plugins.backbones.clip_resnet.model import ClipResNetBackbone, build_clip_resnet


def _tiny_backbone(**options: object) -> ClipResNetBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" is the point here
        return build_clip_resnet({"variant": "tiny", **options})


@pytest.fixture
def make_backbone() -> Callable[..., ClipResNetBackbone]:
    """A factory: ``make_backbone(bn="frozen")`` builds a fresh tiny backbone."""
    return _tiny_backbone


@pytest.fixture(scope="module")
def backbone() -> ClipResNetBackbone:
    return _tiny_backbone(trainable=["layer3", "layer4", "attnpool"]).eval()
