"""Base classes every component derives from: the contracts between backbones, adapters and decoders.

They are small on purpose. The pipeline (``vltk.pipeline``) only relies on what is written here, so a plugin
that honours these attributes and methods composes with every other plugin: any adapter with any backbone,
any decoder with any adapter. Importing this module imports torch; ``import vltk`` does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Protocol

from torch import Tensor, nn


class BlockHook(Protocol):
    """Called by a backbone after every block: ``x = hook(x, layer_idx)``.

    ``x`` is the block output, batch-first ``[B, T, C]``; when the backbone ``has_cls_token`` the cls token is
    row 0 and the patch tokens follow in row-major grid order. The hook returns a tensor of the same shape.
    """

    def __call__(self, x: Tensor, layer_idx: int) -> Tensor: ...


class Backbone(nn.Module, ABC):
    """A (vision-language) ViT wrapped so adapters can reach every block and decoders get a 4-level pyramid.

    Facts the pipeline hands to the other components: ``embed_dim`` (token width c), ``num_layers`` (blocks L),
    ``patch_size``, ``mean``/``std`` (input normalisation for images scaled to [0, 1]), ``has_cls_token``,
    ``text_dim`` (width of the joint image-text space, ``None`` for vision-only backbones) and
    ``out_indices`` (the blocks whose outputs make the pyramid).
    """

    embed_dim: int
    num_layers: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_cls_token: bool = True
    text_dim: int | None = None
    out_indices: tuple[int, ...]

    @abstractmethod
    def forward_features(
        self,
        x: Tensor,
        block_hooks: Sequence[BlockHook] = (),
        out_indices: Sequence[int] | None = None,
    ) -> list[Tensor]:
        """Run the blocks, calling every hook after every block; return 4 maps ``[B, embed_dim, H/s, W/s]``.

        Strides are 4, 8, 16, 32 (the outputs of ``out_indices`` resized ×4, ×2, ×1, ×0.5, as in Rein).
        """

    def forward(self, x: Tensor, block_hooks: Sequence[BlockHook] = ()) -> list[Tensor]:
        return self.forward_features(x, block_hooks=block_hooks)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(global_embedding [B, D], dense_embeddings [B, D, h, w])`` in the text space."""
        raise TypeError(f"{type(self).__name__} is a vision-only backbone: it has no text space")

    @property
    def strides(self) -> tuple[int, int, int, int]:
        return (4, 8, 16, 32)


class Adapter(nn.Module):
    """Decides what of the backbone trains and may refine every block's output (a :class:`BlockHook`).

    ``freezes_backbone``: when True the pipeline keeps the backbone in eval mode and ``setup`` has set
    ``requires_grad=False`` on all its parameters, so only the adapter (and the decoder) learn.
    """

    freezes_backbone: bool = True

    def setup(self, backbone: Backbone) -> None:
        """Called once by the pipeline after construction: set ``requires_grad`` on the backbone."""
        for parameter in backbone.parameters():
            parameter.requires_grad_(not self.freezes_backbone)

    def forward(self, x: Tensor, layer_idx: int) -> Tensor:
        return x

    def queries(self) -> Tensor | None:
        """Decoder queries ``[num_queries, query_dims]`` derived from the adapter (Rein's link), or None."""
        return None

    @property
    def query_dims(self) -> int | None:
        """Width of :meth:`queries` when the adapter provides them, so decoders can size their layers."""
        return None

    def no_weight_decay_names(self) -> set[str]:
        """Names (relative to the adapter) of parameters that must not get weight decay, e.g. tokens."""
        return set()

    def backbone_lr_multipliers(self, backbone: Backbone) -> dict[str, float]:
        """Per-parameter lr multipliers for trainable backbone parameters (layer-wise decay); empty = all 1."""
        return {}


class Decoder(nn.Module, ABC):
    """Turns the pyramid (plus optional adapter queries and text embeddings) into predictions; owns its loss.

    ``forward`` returns a dict; ``seg_logits`` ``[B, K, h, w]`` (any resolution) is what :meth:`predict` uses by
    default. ``loss`` returns a dict of named terms whose ``"loss"`` entry is the total to back-propagate.
    """

    ignore_index: int = 255

    @abstractmethod
    def forward(
        self,
        features: list[Tensor],
        queries: Tensor | None = None,
        text_embeddings: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Predict from the pyramid; ``queries``/``text_embeddings`` are None when nothing provides them."""

    @abstractmethod
    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Loss terms for ``targets`` ``[B, H, W]`` (int64, ``ignore_index`` for unlabelled pixels)."""

    def predict(self, outputs: dict[str, Tensor], image_size: tuple[int, int]) -> Tensor:
        """Per-class scores ``[B, K, H, W]`` at the input resolution (argmax gives the label map)."""
        logits = outputs["seg_logits"]
        return nn.functional.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)


class Prompter(nn.Module, ABC):
    """Class names (and optional learned context / visual context) -> text embeddings ``[K, D]`` or ``[B, K, D]``."""

    @abstractmethod
    def forward(self, visual_context: Tensor | None = None) -> Tensor:
        """Return the class text embeddings."""


class Augmenter(nn.Module):
    """Training-time augmentation. ``stage`` is ``"image"`` (before the backbone) or ``"feature"``."""

    stage: str = "image"

    def forward(self, x: Tensor) -> Tensor:
        return x


def named_trainable(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(name, parameter)`` for parameters that require grad, with ``prefix`` prepended to names."""
    for name, parameter in module.named_parameters(prefix=prefix):
        if parameter.requires_grad:
            yield name, parameter


def count_trainable(module: nn.Module) -> int:
    """Number of trainable scalars: what the papers' "trainable parameters" columns count."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


__all__ = [
    "Adapter",
    "Augmenter",
    "Backbone",
    "BlockHook",
    "Decoder",
    "Prompter",
    "count_trainable",
    "named_trainable",
]
