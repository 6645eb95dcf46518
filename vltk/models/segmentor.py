"""DensePredictor: backbone + adapter (block hooks, queries) + optional prompter/augmenters + decoder.

Paper-agnostic glue. It owns input normalisation and padding (so any image size works with any patch size),
keeps a frozen backbone in eval mode whatever ``train()`` is called with (as Rein's backbones do), and routes
adapter queries and prompter text embeddings to the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.interfaces import Adapter, Augmenter, Backbone, Decoder


class DensePredictor(nn.Module):
    """A dense-prediction model assembled from registered components.

    Images go in as float tensors in [0, 1], ``[B, 3, H, W]``; they are normalised with the backbone's
    mean/std and zero-padded on the bottom/right to a multiple of ``lcm(patch_size, 32)``; predictions are
    cropped back to ``H x W``.
    """

    def __init__(
        self,
        backbone: Backbone,
        adapter: Adapter,
        decoder: Decoder,
        *,
        prompter: nn.Module | None = None,
        augmenters: Sequence[Augmenter] = (),
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.decoder = decoder
        self.prompter = prompter
        self.augmenters = nn.ModuleList(augmenters)
        self.class_names = tuple(class_names)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.size_divisor = math.lcm(int(backbone.patch_size), 32)

    def train(self, mode: bool = True) -> DensePredictor:
        super().train(mode)
        if self.adapter.freezes_backbone:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------------------------ forward

    def _pad(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        pad_h = (-height) % self.size_divisor
        pad_w = (-width) % self.size_divisor
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return images

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Decoder outputs for images in [0, 1]; image-stage augmenters run only in training mode."""
        x = (images - self.pixel_mean) / self.pixel_std
        if self.training:
            for augmenter in self.augmenters:
                if augmenter.stage == "image":
                    x = augmenter(x)
        x = self._pad(x)
        features = self.backbone.forward_features(x, block_hooks=(self.adapter,))
        if self.training:
            for augmenter in self.augmenters:
                if augmenter.stage == "feature":
                    features = [augmenter(level) for level in features]
        text = self.prompter() if self.prompter is not None else None
        return self.decoder(features, queries=self.adapter.queries(), text_embeddings=text)

    def loss(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Loss terms for a batch; labels are padded with the ignore index to the padded image size."""
        outputs = self(images)
        padded_h, padded_w = self._pad(images[:1]).shape[-2:]
        height, width = labels.shape[-2:]
        if (padded_h, padded_w) != (height, width):
            labels = F.pad(labels, (0, padded_w - width, 0, padded_h - height), value=self.decoder.ignore_index)
        return self.decoder.loss(outputs, labels)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Class scores ``[B, K, H, W]`` at the input resolution."""
        height, width = images.shape[-2:]
        outputs = self(images)
        padded = self._pad(images[:1]).shape[-2:]
        scores = self.decoder.predict(outputs, tuple(padded))
        return scores[..., :height, :width]

    # ------------------------------------------------------------------------------------------------ params

    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                yield name, parameter
