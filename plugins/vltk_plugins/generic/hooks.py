"""Entry point of the generic built-ins: open_clip/timm backbones, frozen/full adapters, FPN, synthetic data.

Light on purpose: only options models are imported here; each factory imports torch and its module when a
run actually builds the component.
"""

from __future__ import annotations

from typing import Any

from vltk import hookimpl
from vltk.data.detection_options import DWDOptions, SyntheticDetectionOptions
from vltk.data.synthetic_options import SyntheticOptions
from vltk.data.urban_options import UrbanOptions
from vltk.registry import lazy_factory
from vltk_plugins.generic.adapter_options import FrozenOptions, FullOptions
from vltk_plugins.generic.backbone_options import ClipViTOptions, Eva02Options
from vltk_plugins.generic.clip_resnet_options import ClipResNetOptions
from vltk_plugins.generic.dinov2_options import Dinov2Options
from vltk_plugins.generic.fpn_options import FPNOptions
from vltk_plugins.generic.mask2former_options import Mask2FormerOptions
from vltk_plugins.generic.peft_options import LoRAOptions, VPTOptions
from vltk_plugins.generic.prompter_options import ClipTemplateOptions, CoOpOptions


@hookimpl
def vltk_register_backbones(register: Any) -> None:
    register(
        "eva02",
        lazy_factory("vltk_plugins.generic.backbones", "build_eva02"),
        options=Eva02Options,
        summary="EVA02-CLIP ViT (open_clip timm tower): tiny/small/base/large",
        paper="EVA-02 (Fang et al., 2023); EVA-CLIP (Sun et al., 2023)",
    )
    register(
        "clip-vit",
        lazy_factory("vltk_plugins.generic.backbones", "build_clip_vit"),
        options=ClipViTOptions,
        summary="CLIP ViT (open_clip native VisionTransformer)",
        paper="CLIP (Radford et al., ICML 2021)",
    )
    register(
        "clip-resnet",
        lazy_factory("vltk_plugins.generic.clip_resnet", "build_clip_resnet"),
        options=ClipResNetOptions,
        summary="CLIP ResNet (open_clip ModifiedResNet): pyramid + dense attention-pool embeddings; RN50/RN101",
        paper="CLIP (Radford et al., ICML 2021); dense pool from DenseCLIP (Rao et al., CVPR 2022)",
    )
    register(
        "dinov2",
        lazy_factory("vltk_plugins.generic.dinov2", "build_dinov2"),
        options=Dinov2Options,
        summary="DINOv2 ViT (timm), patch 16 as in Rein (patch-14 weights converted); tiny/small/base/large/giant",
        paper="DINOv2 (Oquab et al., TMLR 2024); registers: Darcet et al., ICLR 2024",
    )


@hookimpl
def vltk_register_prompters(register: Any) -> None:
    register(
        "clip-template",
        lazy_factory("vltk_plugins.generic.prompters", "build_clip_template"),
        options=ClipTemplateOptions,
        summary="hand-written prompt templates through the frozen text tower (CLIP zero-shot), cached",
        paper="CLIP (Radford et al., ICML 2021)",
    )
    register(
        "coop",
        lazy_factory("vltk_plugins.generic.prompters", "build_coop"),
        options=CoOpOptions,
        summary="learnable context tokens shared by all classes, frozen text tower",
        paper="CoOp (Zhou et al., IJCV 2022); DenseCLIP's language-domain prompt",
    )


@hookimpl
def vltk_register_adapters(register: Any) -> None:
    register(
        "lora",
        lazy_factory("vltk_plugins.generic.peft", "build_lora"),
        options=LoRAOptions,
        summary="low-rank updates W + (alpha/r)BA on attention q/k/v/proj of a frozen ViT",
        paper="LoRA (Hu et al., ICLR 2022); PEFT baseline of Rein (CVPR 2024) Table 3",
    )
    register(
        "vpt",
        lazy_factory("vltk_plugins.generic.peft", "build_vpt"),
        options=VPTOptions,
        summary="deep visual prompts: fresh learnable tokens before every block of a frozen ViT",
        paper="VPT (Jia et al., ECCV 2022); PEFT baseline of Rein (CVPR 2024) Table 3",
    )
    register(
        "frozen",
        lazy_factory("vltk_plugins.generic.adapters", "build_frozen"),
        options=FrozenOptions,
        summary="backbone frozen and kept in eval mode; only the decoder trains",
        paper="'Freeze' baseline, Rein (CVPR 2024) Table 2",
    )
    register(
        "full",
        lazy_factory("vltk_plugins.generic.adapters", "build_full"),
        options=FullOptions,
        summary="full fine-tuning, optional layer-wise lr decay",
        paper="'Full' baseline, Rein (CVPR 2024) Table 2; layer decay from BEiT",
    )


@hookimpl
def vltk_register_decoders(register: Any) -> None:
    register(
        "fpn",
        lazy_factory("vltk_plugins.generic.fpn", "build_fpn"),
        options=FPNOptions,
        summary="Semantic FPN: FPN neck (256) + FPN head, cross-entropy",
        paper="Panoptic FPN (Kirillov et al., CVPR 2019); as used by DenseCLIP and Rein Table 9",
    )
    register(
        "mask2former",
        lazy_factory("vltk_plugins.generic.mask2former", "build_mask2former"),
        options=Mask2FormerOptions,
        summary="Mask2Former: deformable pixel decoder + masked-attention decoder, set loss; takes Rein's queries",
        paper="Mask2Former (Cheng et al., CVPR 2022); head of Rein (Wei et al., CVPR 2024)",
    )


@hookimpl
def vltk_register_datasets(register: Any) -> None:
    register(
        "synthetic",
        lazy_factory("vltk.data.synthetic", "build_synthetic"),
        options=SyntheticOptions,
        summary="embedded procedural street scenes in 6 domains (flat source -> textured/fog/night/rain/snow)",
        paper="mimics GTAV -> Cityscapes/ACDC; no files, no downloads",
    )
    register(
        "urban",
        lazy_factory("vltk.data.urban", "build_urban"),
        options=UrbanOptions,
        summary="GTAV / Cityscapes / BDD100K / Mapillary / ACDC from local folders, 19 classes, mmseg augmentation",
        paper="the DG segmentation protocol of Rein, VLTSeg and others (GTAV -> Cityscapes, BDD100K, Mapillary)",
    )
    register(
        "synthetic-det",
        lazy_factory("vltk.data.detection", "build_synthetic_detection"),
        options=SyntheticDetectionOptions,
        summary="detection: instance boxes (cars, persons, signs) of the synthetic scenes in the same 6 domains",
        paper="boxes from the renderer's instances; a CPU stand-in for Diverse Weather",
    )
    register(
        "dwd",
        lazy_factory("vltk.data.detection", "build_dwd"),
        options=DWDOptions,
        summary="detection: Diverse Weather Dataset (VOC XML, 7 classes, 5 weather domains) from a local folder",
        paper="Single-DGOD (Wu & Deng, CVPR 2022); the protocol of CLIP the Gap (CVPR 2023)",
    )
