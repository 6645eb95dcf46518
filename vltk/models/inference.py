"""Whole-image and sliding-window inference (mmseg's ``slide`` test mode), shared by ``evaluate`` and ``predict``.

Papers evaluate large images with a window of the training crop size moved at a fixed stride (Rein and DenseCLIP:
crop 512 / stride 341; VLTSeg: 512 / 426). The semantics follow mmseg's ``slide_inference`` so numbers are
comparable: ``ceil((size - crop) / stride) + 1`` windows per axis, the last one shifted back to end at the image
border, per-class scores of overlapping windows **averaged** (summed, then divided by a count matrix). An image
smaller than the crop along an axis gets a single window covering that whole axis; the model's own padding
(``DensePredictor`` pads to its size divisor) takes care of the rest, so no extra padding happens here.

Test-time augmentation (mmseg's ``TestTimeAug`` + ``SegTTAModel``): with ``flip`` and/or several ``scales`` the
image is resized by each scale factor (bilinear), optionally mirrored, passed through the whole or slide mode,
and the **softmax probabilities** of every view, mirrored back and resized to the input size, are averaged (as
mmseg merges TTA views). Without augmentation the model's raw scores are returned unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Pair = tuple[int, int]


def _pair(value: int | tuple[int, int] | list[int], name: str) -> Pair:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = (int(value[0]), int(value[1])) if len(value) == 2 else (0, 0)
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair


def _predictor(model: Any) -> Callable[[Tensor], Tensor]:
    """``model.predict`` when the model has one (``DensePredictor``), else the model itself (any callable)."""
    predict = getattr(model, "predict", None)
    return predict if callable(predict) else model


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets along one axis, as mmseg: ``max(size - crop + stride - 1, 0) // stride + 1`` windows, each
    ``min(crop, size)`` long; a window that would run past the border is shifted back to end at it."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    starts = []
    for index in range(count):
        end = min(index * stride + crop, size)
        starts.append(max(end - crop, 0))
    return starts


@torch.no_grad()
def slide_inference(
    model: Any,
    images: Tensor,
    crop: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    windows_per_call: int = 1,
) -> Tensor:
    """Class scores ``[B, K, H, W]`` from windows of ``crop`` moved by ``stride``, averaged where they overlap.

    ``model`` is a ``DensePredictor`` (its ``predict`` is called on every window) or any callable mapping images
    ``[b, 3, h, w]`` to scores ``[b, K, h, w]``. ``windows_per_call`` stacks that many windows into one call
    (they all have the same size), trading memory for speed; results do not depend on it. ``stride`` must not
    exceed ``crop`` (otherwise pixels between windows would never be predicted).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    crop_h, crop_w = _pair(crop, "crop")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride_h, stride_w} larger than crop {crop_h, crop_w} leaves pixels unpredicted")
    if windows_per_call < 1:
        raise ValueError(f"windows_per_call must be >= 1, got {windows_per_call}")
    predict = _predictor(model)
    batch, _, height, width = images.shape
    boxes = [
        (top, left, min(top + crop_h, height), min(left + crop_w, width))
        for top in window_starts(height, crop_h, stride_h)
        for left in window_starts(width, crop_w, stride_w)
    ]
    scores: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for first in range(0, len(boxes), windows_per_call):
        group = boxes[first : first + windows_per_call]
        crops = torch.cat([images[:, :, top:bottom, left:right] for top, left, bottom, right in group])
        outputs = predict(crops)
        for index, (top, left, bottom, right) in enumerate(group):
            window = outputs[index * batch : (index + 1) * batch]
            if window.shape[-2:] != (bottom - top, right - left):
                raise ValueError(
                    f"the model returned scores of size {tuple(window.shape[-2:])} for a "
                    f"{bottom - top}x{right - left} window; predict must return scores at the input resolution"
                )
            if scores is None:
                scores = window.new_zeros(batch, window.shape[1], height, width)
            scores[:, :, top:bottom, left:right] += window
            count[:, :, top:bottom, left:right] += 1
    assert scores is not None  # at least one window always exists
    return scores / count.to(scores.dtype)


@torch.no_grad()
def whole_inference(model: Any, images: Tensor) -> Tensor:
    """Class scores ``[B, K, H, W]`` from one forward pass over the whole images."""
    return _predictor(model)(images)


def _single_view(
    model: Any, images: Tensor, mode: str, crop_size: int | tuple[int, int], stride: int | tuple[int, int]
) -> Tensor:
    if mode == "whole":
        return whole_inference(model, images)
    if mode == "slide":
        return slide_inference(model, images, crop_size, stride)
    raise ValueError(f"unknown inference mode {mode!r}: expected 'whole' or 'slide'")


@torch.no_grad()
def inference(
    model: Any,
    images: Tensor,
    *,
    mode: str = "whole",
    crop_size: int | tuple[int, int] = 512,
    stride: int | tuple[int, int] = 341,
    flip: bool = False,
    scales: tuple[float, ...] | list[float] = (1.0,),
) -> Tensor:
    """Class scores ``[B, K, H, W]`` in the evaluation mode (``EvalConfig.mode``: ``"whole"`` or ``"slide"``).

    ``flip`` adds the horizontally mirrored view and ``scales`` resizes the image by each factor first (test-time
    augmentation); with either, the result is the mean softmax probability over all views at the input size.
    """
    scales = tuple(float(scale) for scale in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive factors, got {scales!r}")
    if not flip and scales == (1.0,):
        return _single_view(model, images, mode, crop_size, stride)
    from torch.nn import functional as F

    height, width = images.shape[-2:]
    total: Tensor | None = None
    views = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images
        if size != (height, width):
            scaled = F.interpolate(images, size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            scores = _single_view(model, view, mode, crop_size, stride)
            if mirrored:
                scores = scores.flip(-1)
            if scores.shape[-2:] != (height, width):
                scores = F.interpolate(scores, (height, width), mode="bilinear", align_corners=False)
            probabilities = scores.float().softmax(1)
            total = probabilities if total is None else total + probabilities
            views += 1
    assert total is not None
    return total / views


def inference_from_config(model: Any, images: Tensor, eval_config: Any) -> Tensor:
    """:func:`inference` with ``mode``, ``crop_size``, ``stride``, ``flip`` and ``scales`` read from a
    :class:`vltk.config.EvalConfig`."""
    return inference(
        model,
        images,
        mode=getattr(eval_config, "mode", "whole"),
        crop_size=getattr(eval_config, "crop_size", 512),
        stride=getattr(eval_config, "stride", 341),
        flip=getattr(eval_config, "flip", False),
        scales=tuple(getattr(eval_config, "scales", (1.0,))),
    )


__all__ = ["inference", "inference_from_config", "slide_inference", "whole_inference", "window_starts"]
