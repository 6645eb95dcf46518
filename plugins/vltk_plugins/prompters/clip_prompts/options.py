"""Options of the reusable prompters ``clip-template`` and ``coop`` (and the text-guidance knobs every prompter shares).

No torch import: ``hooks.py`` registers these. The text-guidance fields live on the prompter because they only make
sense with one: they decide what :class:`~vltk.models.DensePredictor` does with the pixel-text score map (append it
to a pyramid level, supervise it with an auxiliary loss), for any decoder.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vltk.api import Options


class TextGuidanceOptions(Options):
    """DenseCLIP's text guidance: the cosine score map between the dense image embeddings and the K class
    embeddings, appended to one pyramid level and supervised by an auxiliary pixel-text cross-entropy."""

    score_concat_index: int | Literal["auto"] | None = Field(
        default="auto",
        description=(
            "Pyramid level (0..3 = stride 4/8/16/32) that gets the K-channel score map appended (resized to the "
            "level when sizes differ); the decoder's input width there grows by K. auto = 3 for CNN backbones "
            "(clip-resnet; DenseCLIP's ResNet setting) and 2 for ViTs (DenseCLIP's ViT-B setting). null = no "
            "concatenation."
        ),
    )
    aux_loss_weight: float = Field(
        default=0.4,
        ge=0.0,
        description=(
            "Weight of the auxiliary pixel-text loss: cross-entropy of score/temperature upsampled to the labels "
            "(DenseCLIP's identity head: 0.4). 0 = off."
        ),
    )
    temperature: float = Field(
        default=0.07,
        gt=0.0,
        description="τ dividing the cosine scores in the auxiliary loss and in open-vocabulary logits (CLIP's 0.07).",
    )

    @field_validator("score_concat_index")
    @classmethod
    def _level(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 0 <= value <= 3:
            raise ValueError(f"must be a pyramid level 0..3, 'auto' or null, got {value}")
        return value


class ClipTemplateOptions(TextGuidanceOptions):
    """Hand-written prompts, CLIP zero-shot style: each class name is put into every template, encoded by the frozen
    text tower, the normalised embeddings are averaged over templates and normalised again. Nothing is learned,
    so the class embeddings are computed once and cached."""

    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}."],
        description="Prompt templates; '{}' is replaced by the class name. Embeddings are averaged over templates.",
    )

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one template, e.g. ['a photo of a {}.']")
        bad = [template for template in value if template.count("{}") != 1]
        if bad:
            raise ValueError(f"every template needs exactly one '{{}}' for the class name; not: {bad}")
        return value


class CoOpOptions(TextGuidanceOptions):
    """CoOp-style learnable context shared by all classes: ``[SOT, p1..p_n, name tokens, EOT, pad]`` through the
    frozen text tower (DenseCLIP's prompt: 8 context tokens, text length 13)."""

    n_ctx: int = Field(default=8, ge=1, description="Number of learnable context tokens (DenseCLIP: 8).")
    context_length: int = Field(
        default=13,
        ge=4,
        description=(
            "Length of the text sequence fed to the text tower (DenseCLIP: 13, i.e. class names get "
            "13 - n_ctx = 5 positions including SOT and EOT). Longer names get more positions automatically: "
            "with the causal text mask, positions after EOT do not change the result."
        ),
    )
    init_std: float = Field(
        default=0.02,
        gt=0.0,
        description=(
            "Std of the initial context tokens, drawn from a normal truncated at -2 and 2 (absolute bounds, "
            "torch's trunc_normal_ defaults). 0.02 is CoOp's init (its normal_(std=0.02); the bounds never bind); "
            "denseclip defaults to 1.0, DenseCLIP's trunc_normal_ with default arguments."
        ),
    )

    @model_validator(mode="after")
    def _room_for_names(self) -> CoOpOptions:
        if self.context_length < self.n_ctx + 3:
            raise ValueError(
                f"context_length={self.context_length} leaves no room for a class name after n_ctx={self.n_ctx} "
                "context tokens: it needs at least n_ctx + 3 (SOT, one name token, EOT)"
            )
        return self


__all__ = ["ClipTemplateOptions", "CoOpOptions", "TextGuidanceOptions"]
