"""Entry point of the built-in datasets: the embedded synthetic scenes, urban folders, ADE20K, synthetic-det, DWD.

Light on purpose: only options models are imported here; each factory imports torch and its module when a run
actually builds the component (:func:`vltk.api.lazy_factory`).
"""

from __future__ import annotations

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.datasets.ade20k.options import ADE20KOptions
from vltk_plugins.datasets.dwd.options import DWDOptions
from vltk_plugins.datasets.synthetic.captioned_options import CaptionedOptions
from vltk_plugins.datasets.synthetic.options import SyntheticOptions
from vltk_plugins.datasets.synthetic_det.options import SyntheticDetectionOptions
from vltk_plugins.datasets.urban.options import UrbanOptions


@hookimpl
def vltk_register_datasets(register: Register) -> None:
    register(
        "synthetic",
        lazy_factory("vltk_plugins.datasets.synthetic.dataset", "build_synthetic"),
        options=SyntheticOptions,
        summary="embedded procedural street scenes in 6 domains (flat source -> textured/fog/night/rain/snow)",
        paper="mimics GTAV -> Cityscapes/ACDC; no files, no downloads",
    )
    register(
        "synthetic-captions",
        lazy_factory("vltk_plugins.datasets.synthetic.captioned", "build_captioned"),
        options=CaptionedOptions,
        summary="pretraining: synthetic scenes in a continuous appearance space with generated captions",
        paper="the embedded image-text corpus of `vltk pretrain`; val = the 6 named domains",
    )
    register(
        "urban",
        lazy_factory("vltk_plugins.datasets.urban.dataset", "build_urban"),
        options=UrbanOptions,
        summary="GTAV / Synthia / Cityscapes / BDD100K / Mapillary / ACDC from local folders, 19 (or 16) classes",
        paper="the DG segmentation protocol of Rein, VLTSeg and others (GTAV -> Cityscapes, BDD100K, Mapillary)",
    )
    register(
        "ade20k",
        lazy_factory("vltk_plugins.datasets.ade20k.dataset", "build_ade20k"),
        options=ADE20KOptions,
        summary="ADE20K (ADEChallengeData2016) from a local folder, 150 classes, mmseg's ADE20K pipeline",
        paper="the benchmark of DenseCLIP (CVPR 2022) and most semantic segmentation papers",
    )
    register(
        "synthetic-det",
        lazy_factory("vltk_plugins.datasets.synthetic_det.dataset", "build_synthetic_detection"),
        options=SyntheticDetectionOptions,
        summary="detection: instance boxes (cars, persons, signs) of the synthetic scenes in the same 6 domains",
        paper="boxes from the renderer's instances; a CPU stand-in for Diverse Weather",
    )
    register(
        "dwd",
        lazy_factory("vltk_plugins.datasets.dwd.dataset", "build_dwd"),
        options=DWDOptions,
        summary="detection: Diverse Weather Dataset (VOC XML, 7 classes, 5 weather domains) from a local folder",
        paper="Single-DGOD (Wu & Deng, CVPR 2022); the protocol of CLIP the Gap (CVPR 2023)",
    )
