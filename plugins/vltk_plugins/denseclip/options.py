"""Options of the ``denseclip`` prompter (Rao et al., CVPR 2022). No torch import: ``hooks.py`` registers them.

Defaults are the released configs': CoOp context 8 tokens in a 13-long text, initialised as DenseCLIP does
(``trunc_normal_`` with its default arguments: std 1, truncated at ±2, where ``coop`` keeps CoOp's std 0.02), a
3-layer 256-wide 4-head context decoder with dropout 0.1, γ initialised to 1e-4, score map on the stride-32 level
(ResNet) / stride 16 (ViT), auxiliary pixel-text loss weight 0.4 at τ = 0.07.
"""

from __future__ import annotations

from pydantic import Field

from vltk_plugins.prompters.clip_prompts.options import CoOpOptions


class DenseCLIPOptions(CoOpOptions):
    """CoOp context + DenseCLIP's post-model prompting: a transformer decoder lets the K text embeddings attend to
    the image's ``[z̄; z]`` and adds ``γ · t_diff`` (γ per channel, starting at 1e-4), giving ``[B, K, D]``."""

    init_std: float = Field(
        default=1.0,
        gt=0.0,
        description=(
            "Std of the initial learnable context, a normal truncated at -2 and 2 (absolute). 1.0 is DenseCLIP's "
            "nn.init.trunc_normal_(self.contexts) with default arguments; 0.02 gives CoOp's init (the coop default)."
        ),
    )
    decoder_layers: int = Field(default=3, ge=1, description="Context-decoder layers (released configs: 3).")
    decoder_width: int = Field(default=256, ge=8, description="Context-decoder width (256).")
    decoder_heads: int = Field(default=4, ge=1, description="Attention heads of the context decoder (4).")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout in the context decoder (0.1).")
    gamma_init: float = Field(
        default=1e-4,
        description="Initial value of γ ∈ R^text_dim scaling the decoder's update t + γ·t_diff (1e-4).",
    )


__all__ = ["DenseCLIPOptions"]
