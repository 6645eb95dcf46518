"""Options of the ``rein`` adapter. No torch import: ``hooks.py`` registers this model and ``vltk show`` prints it.

Defaults are the upstream ``LoRAReins`` constructor defaults used by every released config (DINOv2-L, EVA02-L,
CLIP-L): 100 tokens of LoRA rank 16, 256-wide decoder queries, learnable gate initialised at 1e-3.
"""

from __future__ import annotations

from pydantic import Field

from vltk.api import Options


class ReinOptions(Options):
    """Knobs of Rein. Width, depth and patch size come from the backbone, not from here."""

    token_length: int = Field(
        default=100,
        ge=2,
        description=(
            "Number m of learnable tokens per layer. Token 0 is a 'null' token that only absorbs attention, so at "
            "least 2 are needed. With the query link on this is also the decoder's number of queries."
        ),
    )
    lora_dim: int | None = Field(
        default=16,
        ge=1,
        description=(
            "Rank r of the low-rank token factorisation T = A @ B (LoRAReins). null stores full [m, c] tokens "
            "per layer (the plain Reins variant)."
        ),
    )
    query_dims: int = Field(
        default=256,
        ge=1,
        description="Width c' of the decoder queries made from the tokens (only used when link_token_to_query).",
    )
    link_token_to_query: bool = Field(
        default=True,
        description=(
            "Turn the tokens of all layers into decoder queries [m, query_dims] (Mask2Former-style heads). Turn "
            "off for heads without queries (e.g. FPN), which saves the transform/merge parameters."
        ),
    )
    scale_init: float = Field(
        default=1e-3,
        description=(
            "Initial value of the learnable scalar gate on the feature update; small keeps the backbone's "
            "features almost unchanged at the start of training. Ignored when zero_mlp_delta_f is true."
        ),
    )
    zero_mlp_delta_f: bool = Field(
        default=False,
        description=(
            "Zero-initialise the output projection (paper Algorithm 1) so the update is exactly zero at init; the "
            "gate then becomes the constant 1.0 instead of a parameter (one trainable scalar fewer)."
        ),
    )
    use_softmax: bool = Field(
        default=True,
        description=(
            "Normalise feature-token similarities with a softmax (scaled by c^-0.5) over all tokens; false uses "
            "the raw dot products."
        ),
    )


__all__ = ["ReinOptions"]
