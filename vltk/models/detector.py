"""Detector: backbone (split into stage_a / stage_b / pool) + augmenters + detection decoder + prompter.

The detection twin of :class:`vltk.models.DensePredictor`, kept separate so neither grows branches for the
other task. It owns what every two-stage detector on a split backbone needs and no paper-specific logic:

* input normalisation with the backbone's mean/std and zero padding of a list of differently sized images into
  one batch (bottom/right, to a multiple of ``size_divisor``; boxes are unaffected);
* the order of the stages: image-stage augmenters -> ``backbone.stage_a`` -> feature-stage augmenters (training
  only; CLIP the Gap's offsets shift this map, so RPN and RoI head both see it) -> decoder, which receives the
  backbone to run ``stage_b`` / ``pool`` on RoIs and the prompter's class text embeddings;
* difficult boxes (VOC practice; the evaluator ignores them too) and empty ones are removed from the training
  targets;
* the adapter decides what of the backbone trains (``full`` + the backbone's ``trainable`` stages for CLIP the
  Gap) and, when it freezes the backbone, keeps it in eval mode; it hooks no blocks here (``stage_a`` has none).

Images are float tensors in [0, 1]; targets are dicts with ``boxes [N, 4]`` (xyxy pixels), 0-based
``labels [N]`` and optional ``difficult [N]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from vltk.errors import UserError
from vltk.interfaces import Adapter, Augmenter, Backbone, DetectionDecoder, require_split_backbone


class Detector(nn.Module):
    """A two-stage detector assembled from registered components (see the module docstring)."""

    task = "detection"

    def __init__(
        self,
        backbone: Backbone,
        adapter: Adapter,
        decoder: DetectionDecoder,
        *,
        prompter: nn.Module | None = None,
        augmenters: Sequence[Augmenter] = (),
        class_names: Sequence[str] = (),
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        require_split_backbone(backbone, needed_by="a detector")
        self.backbone = backbone
        self.adapter = adapter
        self.decoder = decoder
        self.prompter = prompter
        self.augmenters = nn.ModuleList(augmenters)
        self.class_names = tuple(class_names)
        self.size_divisor = int(size_divisor)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        if self.adapter.freezes_backbone:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------------------------ input
    def batch_images(self, images: Sequence[Tensor] | Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise and pad images (``[3, h, w]`` in [0, 1], or a ``[B, 3, H, W]`` batch) into one tensor."""
        if isinstance(images, Tensor) and images.ndim == 4:
            images = list(images.unbind(0))
        if not images:
            raise ValueError("no images")
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        divisor = self.size_divisor
        height = -(-max(h for h, _ in sizes) // divisor) * divisor
        width = -(-max(w for _, w in sizes) // divisor) * divisor
        batch = self.pixel_mean.new_zeros(len(images), 3, height, width)
        for index, image in enumerate(images):
            h, w = sizes[index]
            batch[index, :, :h, :w] = (image.to(batch) - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def text_embeddings(self) -> Tensor | None:
        """The prompter's class embeddings ``[K, D]`` (None without a prompter)."""
        if self.prompter is None:
            return None
        text = self.prompter()
        if text.ndim != 2:
            raise UserError(
                f"detection needs one text embedding per class [K, D]; the prompter gave {tuple(text.shape)} "
                "(image-conditioned prompters are not supported for detection)"
            )
        return text

    def features(self, batch: Tensor) -> Tensor:
        """Stage-a map of a normalised batch, with image/feature-stage augmenters in training mode."""
        if self.training:
            for augmenter in self.augmenters:
                if augmenter.stage == "image":
                    batch = augmenter(batch)
        features = self.backbone.stage_a(batch)
        if self.training:
            for augmenter in self.augmenters:
                if augmenter.stage == "feature":
                    features = augmenter(features)
        return features

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """``(detections, losses)``: losses in training mode (targets required), detections in eval mode."""
        batch, sizes = self.batch_images(images)
        if self.training and targets is not None:
            targets = [self._trainable_boxes(target, batch.device) for target in targets]
        return self.decoder(
            self.features(batch),
            sizes,
            backbone=self.backbone,
            text_embeddings=self.text_embeddings(),
            targets=targets,
            padded_size=tuple(batch.shape[-2:]),
        )

    @staticmethod
    def _trainable_boxes(target: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        boxes, labels = target["boxes"], target["labels"]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # degenerate boxes would give log(0) targets
        difficult = target.get("difficult")
        if difficult is not None:
            keep &= ~difficult.bool()
        return {"boxes": boxes[keep].to(device).float(), "labels": labels[keep].to(device).long()}

    def loss(self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Loss terms of a training batch (``"loss"`` is the total); call in training mode."""
        if not self.training:
            raise RuntimeError("Detector.loss needs training mode (call model.train())")
        return self(images, targets)[1]

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        """Per image ``boxes [N, 4]``, ``scores [N]`` and 0-based ``labels [N]``, in input pixel coordinates."""
        was_training = self.training
        self.eval()
        try:
            return self(images)[0]
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------------------------------------ params
    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                yield name, parameter


__all__ = ["Detector"]
