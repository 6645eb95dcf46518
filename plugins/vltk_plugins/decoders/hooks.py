"""Entry point of the built-in decoders: Semantic FPN and Mask2Former.

Light on purpose: only options models are imported here; each factory imports torch and its module when a run
actually builds the component (:func:`vltk.api.lazy_factory`).
"""

from __future__ import annotations

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.decoders.clip_contrastive.options import ClipContrastiveOptions
from vltk_plugins.decoders.fpn.options import FPNOptions
from vltk_plugins.decoders.mask2former.options import Mask2FormerOptions


@hookimpl
def vltk_register_decoders(register: Register) -> None:
    register(
        "fpn",
        lazy_factory("vltk_plugins.decoders.fpn.model", "build_fpn"),
        options=FPNOptions,
        summary="Semantic FPN: FPN neck (256) + FPN head, cross-entropy",
        paper="Panoptic FPN (Kirillov et al., CVPR 2019); as used by DenseCLIP and Rein Table 9",
    )
    register(
        "clip-contrastive",
        lazy_factory("vltk_plugins.decoders.clip_contrastive.model", "build_clip_contrastive"),
        options=ClipContrastiveOptions,
        summary="pretraining head (task pretrain): CLIP/SigLIP loss + patch-word alignment and optional MIM",
        paper="CLIP (Radford et al., 2021), SigLIP (Zhai et al., 2023), FILIP (Yao et al., 2022), SimMIM (2022)",
    )
    register(
        "mask2former",
        lazy_factory("vltk_plugins.decoders.mask2former.head", "build_mask2former"),
        options=Mask2FormerOptions,
        summary="Mask2Former: deformable pixel decoder + masked-attention decoder, set loss; takes Rein's queries",
        paper="Mask2Former (Cheng et al., CVPR 2022); head of Rein (Wei et al., CVPR 2024)",
    )


@hookimpl
def vltk_release_formats() -> list[object]:
    """Hugging Face Mask2Former checkpoints, read into the ``mask2former`` decoder."""
    from vltk_plugins.decoders.mask2former.release import HF_MASK2FORMER

    return [HF_MASK2FORMER]
