"""``ImageTextPretrainer``: the model of ``task: pretrain`` — a backbone with a text space and an image-text head.

Paper-agnostic glue, like :class:`~vltk.models.DensePredictor`: it normalises images with the backbone's
mean/std, passes the adapter as the block hook, and leaves every objective (contrastive loss, dense objective,
how text is encoded) to the head, the run's ``decoder`` section. The head contract (duck-typed, checked by
:class:`~vltk.tasks.pretrain.PretrainTask`):

* ``image_text_loss(backbone, hooks, images, captions) -> dict`` whose ``"loss"`` is the total;
* ``encode_images(backbone, hooks, images) -> [B, D]`` and ``encode_texts(texts) -> [K, D]``, L2-normalised,
  for zero-shot retrieval and classification;
* ``foundation_state(backbone) -> dict`` — what ``open_clip.pt`` holds: an open_clip state dict that
  ``backbone.pretrained=FILE`` loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class ImageTextPretrainer(nn.Module):
    """Backbone (+ adapter as its block hook) and an image-text head; see the module docstring for the contract."""

    def __init__(
        self,
        backbone: nn.Module,
        adapter: nn.Module,
        decoder: nn.Module,
        *,
        prompter: nn.Module | None = None,
        augmenters: Sequence[nn.Module] = (),
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.decoder = decoder
        self.class_names = tuple(class_names)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ImageTextPretrainer:
        """As :class:`~vltk.models.DensePredictor`: a freezing adapter keeps the backbone in eval mode."""
        super().train(mode)
        if getattr(self.adapter, "freezes_backbone", False):
            self.backbone.eval()
        return self

    def normalise(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the backbone's normalisation."""
        return (images - self.pixel_mean) / self.pixel_std

    def loss(self, images: Tensor, captions: Sequence[str], **extra: Any) -> dict[str, Tensor]:
        """The head's loss terms for images in [0, 1] and one caption each (``extra``: e.g. object presence)."""
        return self.decoder.image_text_loss(self.backbone, (self.adapter,), self.normalise(images), captions, **extra)

    def encode_images(self, images: Tensor) -> Tensor:
        return self.decoder.encode_images(self.backbone, (self.adapter,), self.normalise(images))

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        return self.decoder.encode_texts(list(texts))

    def foundation_state(self) -> dict[str, Tensor]:
        """The open_clip state dict ``open_clip.pt`` holds (the backbone's towers as trained)."""
        return self.decoder.foundation_state(self.backbone)


__all__ = ["ImageTextPretrainer"]
