"""Options of the ``lora`` and ``vpt`` adapters (Rein's Table 3 PEFT baselines). No torch import.

Parameter counts of Table 3 (24 blocks, width 1024): LoRA 0.79M on DINOv2-L is rank 8 on q and v
(24 x 2 x 8 x (1024 + 1024) = 786,432, the default); EVA02-L's 1.18M is rank 8 on q, k and v (1,179,648). Both
are "rank 8 on every attention input-projection Linear as the model defines it": DINOv2 has one fused qkv
Linear (r x (1024 + 3072) per block = the same 32,768 as q+v), EVA02-L separate q/k/v ones. VPT's 3.69M is 150
deep prompts per block (24 x 150 x 1024 = 3,686,400; Rein issue #12).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vltk.api import Options

#: The attention weights LoRA can adapt, in the order they are stored (fused qkv rows are q, k, v).
LORA_TARGETS: tuple[str, ...] = ("q", "k", "v", "proj")

LoRATarget = Literal["q", "k", "v", "proj"]


class LoRAOptions(Options):
    """LoRA (Hu et al., ICLR 2022) on the attention projections of every block of a frozen ViT backbone.

    Each adapted weight becomes ``W + (alpha / rank) * B @ A`` with ``B`` zero-initialised, so training starts
    from the frozen backbone exactly.
    """

    rank: int = Field(default=8, ge=1, le=1024, description="Rank r of each low-rank update (Rein's Table 3: 8).")
    alpha: float = Field(
        default=8.0,
        gt=0.0,
        description=(
            "Scale numerator: the update is (alpha / rank) * B @ A. Keeping alpha fixed while changing rank "
            "keeps the update's size comparable, as in the LoRA paper (8 = scale 1 at rank 8)."
        ),
    )
    targets: list[LoRATarget] = Field(
        default_factory=lambda: ["q", "v"],
        description=(
            "Which attention weights get an update: any of q, k, v (the rows of the input projection, fused or "
            "separate) and proj (the output projection). [q, v] reproduces Table 3's 0.79M on DINOv2-L; "
            "[q, k, v] its 1.18M on EVA02-L."
        ),
    )
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Dropout on the entries of A during training. The update is merged into the weight (that is what "
            "makes it work on fused and nn.MultiheadAttention projections alike), so this is weight-space "
            "(DropConnect-style) dropout, not PEFT's dropout on the layer input. 0 disables it."
        ),
    )

    @field_validator("targets")
    @classmethod
    def _unique_canonical(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"needs at least one of {', '.join(LORA_TARGETS)}")
        return [target for target in LORA_TARGETS if target in value]  # canonical order, duplicates dropped


class VPTOptions(Options):
    """Deep Visual Prompt Tuning (Jia et al., ECCV 2022): new learnable tokens before every block of a frozen
    ViT, dropped again after it, so the pyramid and decoder never see them."""

    num_tokens: int = Field(
        default=150,
        ge=1,
        le=4096,
        description="Prompt tokens per block (Rein's VPT baseline: 150, i.e. 3.69M parameters on a ViT-L).",
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout on the prompt tokens during training (VPT's prompt dropout)."
    )


__all__ = ["LORA_TARGETS", "LoRAOptions", "VPTOptions"]
