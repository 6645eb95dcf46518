"""Entry point of the built-in adapters: the frozen/full baselines and the PEFT baselines LoRA and VPT.

Light on purpose: only options models are imported here; each factory imports torch and its module when a run
actually builds the component (:func:`vltk.api.lazy_factory`).
"""

from __future__ import annotations

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.adapters.finetune.options import FrozenOptions, FullOptions
from vltk_plugins.adapters.peft.options import LoRAOptions, VPTOptions


@hookimpl
def vltk_register_adapters(register: Register) -> None:
    register(
        "lora",
        lazy_factory("vltk_plugins.adapters.peft.model", "build_lora"),
        options=LoRAOptions,
        summary="low-rank updates W + (alpha/r)BA on attention q/k/v/proj of a frozen ViT",
        paper="LoRA (Hu et al., ICLR 2022); PEFT baseline of Rein (CVPR 2024) Table 3",
    )
    register(
        "vpt",
        lazy_factory("vltk_plugins.adapters.peft.model", "build_vpt"),
        options=VPTOptions,
        summary="deep visual prompts: fresh learnable tokens before every block of a frozen ViT",
        paper="VPT (Jia et al., ECCV 2022); PEFT baseline of Rein (CVPR 2024) Table 3",
    )
    register(
        "frozen",
        lazy_factory("vltk_plugins.adapters.finetune.model", "build_frozen"),
        options=FrozenOptions,
        summary="backbone frozen and kept in eval mode; only the decoder trains",
        paper="'Freeze' baseline, Rein (CVPR 2024) Table 2",
    )
    register(
        "full",
        lazy_factory("vltk_plugins.adapters.finetune.model", "build_full"),
        options=FullOptions,
        summary="full fine-tuning, optional layer-wise lr decay",
        paper="'Full' baseline, Rein (CVPR 2024) Table 2; layer decay from BEiT",
    )
