"""Entry point of the generic built-ins: open_clip/timm backbones, frozen/full adapters, FPN, synthetic data.

Light on purpose: only options models are imported here; each factory imports torch and its module when a
run actually builds the component.
"""

from __future__ import annotations

from typing import Any

from vltk import hookimpl
from vltk.data.synthetic_options import SyntheticOptions
from vltk.data.urban_options import UrbanOptions
from vltk_plugins.generic.adapter_options import FrozenOptions, FullOptions
from vltk_plugins.generic.backbone_options import ClipViTOptions, Eva02Options
from vltk_plugins.generic.fpn_options import FPNOptions


def _lazy(module: str, attribute: str) -> Any:
    """A factory that imports ``module.attribute`` on first call (keeps ``vltk list`` free of torch)."""

    def factory(options: Any, **context: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), attribute)(options, **context)

    factory.__qualname__ = f"{module}.{attribute}"
    return factory


@hookimpl
def vltk_register_backbones(register: Any) -> None:
    register(
        "eva02",
        _lazy("vltk_plugins.generic.backbones", "build_eva02"),
        options=Eva02Options,
        summary="EVA02-CLIP ViT (open_clip timm tower): tiny/small/base/large",
        paper="EVA-02 (Fang et al., 2023); EVA-CLIP (Sun et al., 2023)",
    )
    register(
        "clip-vit",
        _lazy("vltk_plugins.generic.backbones", "build_clip_vit"),
        options=ClipViTOptions,
        summary="CLIP ViT (open_clip native VisionTransformer)",
        paper="CLIP (Radford et al., ICML 2021)",
    )


@hookimpl
def vltk_register_adapters(register: Any) -> None:
    register(
        "frozen",
        _lazy("vltk_plugins.generic.adapters", "build_frozen"),
        options=FrozenOptions,
        summary="backbone frozen and kept in eval mode; only the decoder trains",
        paper="'Freeze' baseline, Rein (CVPR 2024) Table 2",
    )
    register(
        "full",
        _lazy("vltk_plugins.generic.adapters", "build_full"),
        options=FullOptions,
        summary="full fine-tuning, optional layer-wise lr decay",
        paper="'Full' baseline, Rein (CVPR 2024) Table 2; layer decay from BEiT",
    )


@hookimpl
def vltk_register_decoders(register: Any) -> None:
    register(
        "fpn",
        _lazy("vltk_plugins.generic.fpn", "build_fpn"),
        options=FPNOptions,
        summary="Semantic FPN: FPN neck (256) + FPN head, cross-entropy",
        paper="Panoptic FPN (Kirillov et al., CVPR 2019); as used by DenseCLIP and Rein Table 9",
    )


@hookimpl
def vltk_register_datasets(register: Any) -> None:
    register(
        "synthetic",
        _lazy("vltk.data.synthetic", "build_synthetic"),
        options=SyntheticOptions,
        summary="embedded procedural street scenes in 6 domains (flat source -> textured/fog/night/rain/snow)",
        paper="mimics GTAV -> Cityscapes/ACDC; no files, no downloads",
    )
    register(
        "urban",
        _lazy("vltk.data.urban", "build_urban"),
        options=UrbanOptions,
        summary="GTAV / Cityscapes / BDD100K / Mapillary / ACDC from local folders, 19 classes, mmseg augmentation",
        paper="the DG segmentation protocol of Rein, VLTSeg and others (GTAV -> Cityscapes, BDD100K, Mapillary)",
    )
