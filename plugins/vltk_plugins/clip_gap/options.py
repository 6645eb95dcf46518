"""Options of the CLIP the Gap components (Vidit, Engilberge, Salzmann, CVPR 2023). No torch import.

Defaults are the released configuration (``configs/diverse_weather.yaml`` + detectron2's C4 defaults), written
out explicitly wherever torchvision's defaults differ (pre-NMS top-n, smooth-L1 beta), so that
``config.resolved.yaml`` shows every number that shaped a run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from vltk.api import Options

#: The source-domain prompt p^s of the released code (the paper capitalises it: "An image taken during the day").
SOURCE_PROMPT = "an image taken during the day"

#: Weather words and times of day of the 15 Diverse Weather target prompts (``prunedprompts2.txt``).
WEATHERS: tuple[str, ...] = ("snow", "fog", "cloudy", "rain", "stormy")
TIMES_OF_DAY: tuple[str, ...] = ("night", "day", "evening")


def diverse_weather_prompts() -> list[str]:
    """The 15 target prompts P^t in the released order: time of day outer, weather inner."""
    return [f"an image taken on a {weather} {time}" for time in TIMES_OF_DAY for weather in WEATHERS]


#: The PASCAL VOC -> Comic/Watercolor variant of the released code (source "a realistic image").
VOC_SOURCE_PROMPT = "a realistic image"
VOC_STYLE_PROMPTS: tuple[str, ...] = tuple(
    f"an image in the {style} style"
    for style in ("comics", "painting", "cartoon", "digital-art", "sketch", "watercolor painting", "oil painting")
)


class ClipGapOptions(Options):
    """Semantic augmentation: M offsets A_j in the stage-a feature space, fitted before training so that
    V_b(V_a(crop) + A_j) moves towards "this crop, but in target domain j" in CLIP space; during training a
    randomly chosen, spatially averaged A_j is added to the stage-a map."""

    source_prompt: str = Field(SOURCE_PROMPT, min_length=1, description="Source-domain prompt p^s.")
    target_prompts: list[str] = Field(
        default_factory=diverse_weather_prompts,
        min_length=1,
        description=(
            "Target-domain prompts P^t, one offset each. Default: the 15 Diverse Weather prompts "
            "'an image taken on a {snow,fog,cloudy,rain,stormy} {night,day,evening}'."
        ),
    )
    probability: float = Field(
        0.5, ge=0.0, le=1.0, description="Probability of augmenting a training batch (theta; paper/code 0.5)."
    )
    per_image: bool = Field(
        False,
        description=(
            "Flip the augmentation coin per image instead of once per batch (the released code: once per batch; "
            "the offset index j is drawn per image either way)."
        ),
    )
    fit_steps: int | None = Field(
        None,
        ge=0,
        description=(
            "Adam steps of the fit phase (0 = no fitting). None: the paper's 1000 (OFFSET_OPT_ITERS), but at most "
            "the run's train.iters, so a short run has a short fit phase."
        ),
    )
    fit_lr: float = Field(0.01, gt=0, description="Adam learning rate of the fit phase.")
    fit_bn: Literal["train", "eval"] = Field(
        "train",
        description=(
            "BatchNorm during the fit phase. train: batch statistics of the crops, one offset per pass, as the "
            "released code (whose detector stays in training mode); L_opt is then invariant to the per-channel "
            "mean of A_j, the only part training adds, so that mean is not what the fit optimises. eval: stored "
            "statistics; L_opt then does depend on that mean and the fit moves it towards the target prompt. "
            "Weights, modes and BatchNorm statistics are restored after the phase either way."
        ),
    )
    crops_per_image: int = Field(15, ge=1, description="Random square crops per source image and step.")
    crop_size: int = Field(
        400, ge=8, description="Crop side in pixels of the (resized) training image, capped by the image size."
    )
    offset_size: int = Field(
        14,
        ge=1,
        description=(
            "Spatial side of each A_j; crops are resized to offset_size x the backbone's stage-a stride "
            "(14 x 16 = 224, CLIP's input size, whose 7x7 layer4 grid the attention pool expects)."
        ),
    )
    l1_weight: float = Field(1.0, ge=0.0, description="Weight of the L1 term ||z_bar_j - z||_1 in L_opt.")
    fit_chunk: int = Field(
        256,
        ge=1,
        description=(
            "Fit phase: at most this many crop copies (crops x offsets) per backbone pass; offsets are batched "
            "up to it (faster), gradients accumulate over passes. Lower it when memory is short."
        ),
    )
    channels: int | None = Field(
        None,
        ge=1,
        description="Width of the stage-a map (C of A_j). null = the backbone's channels_a (1024 for RN101).",
    )

    @field_validator("target_prompts")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not prompt.strip() for prompt in value):
            raise ValueError("target_prompts must not contain empty strings")
        return value


class ClipFasterRCNNOptions(Options):
    """Faster R-CNN, C4 layout, on torchvision parts: RPN on the stage-a map, RoIAlign (aligned) 14x14 at 1/16,
    the backbone's stage_b (layer4) per RoI, then (a) its attention pool -> cosine similarity x gamma with the
    class text embeddings and a constant-zero background logit, (b) a linear box regressor on the mean-pooled RoI
    features."""

    anchor_sizes: list[float] = Field(
        default_factory=lambda: [32.0, 64.0, 128.0, 256.0, 512.0], min_length=1, description="Anchor sizes (pixels)."
    )
    aspect_ratios: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0], min_length=1, description="Anchor aspect ratios (h/w)."
    )
    rpn_fg_iou: float = Field(0.7, gt=0, le=1, description="RPN: anchors with IoU >= this are foreground.")
    rpn_bg_iou: float = Field(0.3, ge=0, le=1, description="RPN: anchors with IoU < this are background.")
    rpn_batch_size_per_image: int = Field(256, ge=1, description="RPN: anchors sampled per image for the loss.")
    rpn_positive_fraction: float = Field(0.5, gt=0, le=1, description="RPN: foreground share of sampled anchors.")
    rpn_pre_nms_top_n_train: int = Field(
        12000, ge=1, description="RPN: proposals kept before NMS in training (detectron2 C4: 12000; torchvision 2000)."
    )
    rpn_pre_nms_top_n_test: int = Field(
        6000, ge=1, description="RPN: proposals kept before NMS at test time (detectron2 C4: 6000; torchvision 1000)."
    )
    rpn_post_nms_top_n_train: int = Field(2000, ge=1, description="RPN: proposals kept after NMS in training.")
    rpn_post_nms_top_n_test: int = Field(1000, ge=1, description="RPN: proposals kept after NMS at test time.")
    rpn_nms_thresh: float = Field(0.7, gt=0, le=1, description="RPN: NMS IoU threshold.")
    rpn_smooth_l1_beta: float = Field(
        0.0, ge=0, description="RPN box loss smooth-L1 beta (detectron2: 0 = plain L1; torchvision: 1/9)."
    )
    roi_size: int = Field(14, ge=1, description="RoIAlign output side (14: stage_b halves it to the 7x7 pool grid).")
    sampling_ratio: int = Field(0, ge=0, description="RoIAlign sampling points per bin (0 = adaptive, detectron2).")
    aligned: bool = Field(True, description="RoIAlign with the half-pixel correction (detectron2 ROIAlignV2).")
    box_batch_size_per_image: int = Field(512, ge=1, description="RoIs sampled per image for the head's loss.")
    box_positive_fraction: float = Field(0.25, gt=0, le=1, description="Foreground share of sampled RoIs.")
    box_fg_iou: float = Field(0.5, gt=0, le=1, description="RoIs with IoU >= this are foreground.")
    box_bg_iou: float = Field(0.5, ge=0, le=1, description="RoIs with IoU < this are background.")
    box_smooth_l1_beta: float = Field(
        0.0, ge=0, description="Box head loss smooth-L1 beta (detectron2: 0 = plain L1; torchvision: 1/9)."
    )
    bbox_reg_weights: tuple[float, float, float, float] = Field(
        (10.0, 10.0, 5.0, 5.0), description="Box coder weights (wx, wy, ww, wh)."
    )
    class_agnostic_box: bool = Field(
        False, description="One box per RoI instead of one per class (the paper: class-specific, 4K outputs)."
    )
    logit_scale: float = Field(100.0, gt=0, description="gamma: logits = gamma * cos(F_r, Q_k); fixed (CLIP's 100).")
    background: Literal["zero", "learned"] = Field(
        "zero",
        description=(
            "Background logit: zero = a constant 0 (the released code); learned = cosine with a learnable "
            "embedding (the paper's (K+1) x D description)."
        ),
    )
    score_thresh: float = Field(0.05, ge=0, le=1, description="Inference: drop detections scoring below this.")
    nms_thresh: float = Field(0.5, gt=0, le=1, description="Inference: per-class NMS IoU threshold.")
    detections_per_img: int = Field(100, ge=1, description="Inference: detections kept per image.")

    @field_validator("anchor_sizes", "aspect_ratios")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(item <= 0 for item in value):
            raise ValueError(f"must be positive, got {value}")
        return value


__all__ = [
    "SOURCE_PROMPT",
    "TIMES_OF_DAY",
    "VOC_SOURCE_PROMPT",
    "VOC_STYLE_PROMPTS",
    "WEATHERS",
    "ClipFasterRCNNOptions",
    "ClipGapOptions",
    "diverse_weather_prompts",
]
