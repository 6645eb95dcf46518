"""Options of the ``clip-resnet`` backbone (CLIP's ModifiedResNet, DenseCLIP / CLIP the Gap). No torch import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vltk.api import Options

#: The parts of CLIP's ModifiedResNet, in forward order: what ``trainable`` may name.
STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4", "attnpool")

Stage = Literal["stem", "layer1", "layer2", "layer3", "layer4", "attnpool"]


class ClipResNetOptions(Options):
    """CLIP ResNet (open_clip ``ModifiedResNet`` + its text tower). The pyramid is layer1..layer4 (strides
    4/8/16/32); the attention pool, run densely with an interpolated position embedding (DenseCLIP), gives the
    text-space embeddings. ``tiny`` is a 1-block-per-stage, 8-wide ResNet with a 2-block text tower for tests."""

    variant: Literal["tiny", "RN50", "RN101"] = Field(
        default="RN50",
        description=(
            "RN50 (layers 3-4-6-3, text_dim 1024; DenseCLIP's backbone), RN101 (3-4-23-3, text_dim 512; "
            "CLIP the Gap's), tiny (1-1-1-1, width 8, text_dim 64; random, for tests and CPU smoke runs)."
        ),
    )
    pretrained: str | None = Field(
        default=None,
        description=(
            "Path of a local CLIP ResNet weights file of the same variant: an open_clip checkpoint, OpenAI's "
            "TorchScript archive (RN50.pt, RN101.pt) or a state dict saved from it (torch.save'd, raw or under "
            "'state_dict'/'model'/'module', or .safetensors). null = random weights (a warning says so). Nothing "
            "is downloaded."
        ),
    )
    quick_gelu: bool = Field(
        default=True,
        description=(
            "QuickGELU in the text tower, as in OpenAI's CLIP weights (what DenseCLIP and CLIP the Gap load). "
            "Set false for open_clip RN checkpoints trained with nn.GELU (open_clip's plain 'RN50' config)."
        ),
    )
    bn: Literal["train", "frozen"] = Field(
        default="train",
        description=(
            "BatchNorm behaviour. train: ordinary BatchNorm2d (statistics update in training mode, CLIP the "
            "Gap's released code). frozen: every BN uses its stored statistics and has no trainable affine "
            "(torchvision FrozenBatchNorm2d semantics), whatever the adapter or train() says."
        ),
    )
    trainable: list[Stage] | None = Field(
        default=None,
        description=(
            "Stages that may train when the adapter fine-tunes the backbone (e.g. adapter=full): any of stem, "
            "layer1..layer4, attnpool. null = all. CLIP the Gap: layer3, layer4, attnpool. The restriction "
            "wins over the adapter; with adapter=frozen nothing trains anyway."
        ),
    )

    @field_validator("trainable")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"lists a stage twice: {value}")
        return value


__all__ = ["STAGES", "ClipResNetOptions"]
