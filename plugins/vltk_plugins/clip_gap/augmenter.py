"""The ``clip-gap`` augmenter: CLIP the Gap's semantic feature augmentation (Vidit et al., CVPR 2023, Sec. 3.2).

What it learns. M offsets ``A_j`` (``[M, C, S, S]``, zero-initialised; C = the backbone's stage-a width, S = 14)
in the output space of V_a (``backbone.stage_a``). For a source crop I with CLIP embedding
``z = normalise(V(I))`` and the text direction ``d_j = normalise(normalise(T(p^t_j)) - normalise(T(p^s)))``,
``A_j`` is fitted so that ``z_bar_j = normalise(V_b(V_a(I) + A_j))`` approaches ``z*_j = normalise(z + d_j)``:

    L_opt = sum_j [ mean_crops (1 - <z_bar_j, z*_j>) + l1_weight * mean |z_bar_j - z| ] / (M + 1)

(the ``M + 1`` divisor is the released code's ``len(domain_tk)``, source prompt counted). Only ``A`` is optimised
(Adam, lr 0.01, 1,000 steps), on random square crops of source training images resized to ``S * stride_a``
(224 for CLIP). This is the ``fit`` phase the engine runs once before training.

How it is used. In training (``forward``), with probability ``probability`` per batch (optionally per image), each
image b gets ``mean_hw(A_{j_b})`` added to its stage-a map, ``j_b`` uniform: a per-channel shift that works on
maps of any size. Identity in eval mode. The offsets never train with the detector (``requires_grad`` is off
outside ``fit``; the released code likewise stops stepping them after the phase).

Segmentation. ``DensePredictor`` calls feature augmenters on every pyramid level; this one shifts only maps
with C channels (the stride-16 layer3 level of ``clip-resnet``) and passes the others through. The deeper level
(layer4) is computed from the un-shifted layer3 inside the backbone, so in segmentation only the stride-16 level
sees the augmentation — unlike detection, where the shifted map feeds the RPN and the RoI head's layer4.

BatchNorm during ``fit`` (``fit_bn``). The released code fits with the whole detector in training mode, so every
BatchNorm normalises with the statistics of the crop batch, and each ``A_j`` is one forward pass over all crops.
``fit_bn="train"`` (the default) does the same, one offset per pass so that the statistics are per ``A_j`` as
there. What each choice optimises:

* ``train``: ``A_j`` is the same for every crop of the batch, and layer4 begins with 1x1 convolutions followed by
  batch-statistics BatchNorm on both of its branches, so the per-channel spatial mean of ``A_j`` is subtracted
  again right there: L_opt is exactly invariant to ``mean_hw(A_j)``, which is the only part of ``A_j`` that
  training later adds. The fit shapes the spatial pattern of ``A_j``, which training throws away; the mean that
  is used ends up wherever Adam's per-element steps (whose gradient has zero spatial mean per channel) move it.
  Choose it to reproduce the released numbers.
* ``eval``: BatchNorm uses its stored statistics, a fixed affine map, so L_opt does depend on ``mean_hw(A_j)``
  and the fit moves the shift that training adds towards the CLIP embedding of the target prompt, which is what
  the paper describes (though the mean is still fitted jointly with a spatial pattern that is then discarded).

Either way the phase changes nothing but ``A``: modes, ``requires_grad`` flags and BatchNorm running statistics
(updated by every train-mode pass) are restored afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.api import Augmenter, BuildContext, UserError, coerce_options, require_split_backbone
from vltk_plugins.clip_gap.options import ClipGapOptions

#: OFFSET_OPT_ITERS of the released code: fit steps when ``fit_steps`` is unset and the run is at least this long
PAPER_FIT_STEPS = 1000

#: The normalisation layers whose training mode means "batch statistics" (and whose running statistics move).
BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextmanager
def fit_modes(model: nn.Module, fit_bn: str) -> Iterator[None]:
    """Run the body with ``model`` in the fit phase's modes and restore everything that mode can change.

    ``fit_bn="eval"``: the whole model in eval mode. ``"train"``: BatchNorm layers as in training (through the
    model's own ``train()``, so components that keep theirs in eval, e.g. ``clip-resnet`` with ``bn=frozen``,
    still do), every other module in eval mode (no dropout). Afterwards every module's mode and every BatchNorm's
    running statistics are what they were.
    """
    if fit_bn not in ("train", "eval"):
        raise ValueError(f"fit_bn must be 'train' or 'eval', got {fit_bn!r}")
    modes = [(module, module.training) for module in model.modules()]
    statistics = [
        (buffer, buffer.detach().clone())
        for module in model.modules()
        if isinstance(module, BATCH_NORMS)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]
    if fit_bn == "train":
        model.train()
        for module in model.modules():
            if not isinstance(module, BATCH_NORMS):
                module.training = False
    else:
        model.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in statistics:
                buffer.copy_(saved)
        for module, mode in modes:
            module.training = mode


def _encode_text(model: nn.Module, backbone: Any, texts: Sequence[str]) -> Tensor:
    """Text embeddings from the backbone's text tower (or the prompter's, when only it has one)."""
    for owner in (backbone, getattr(model, "prompter", None)):
        encode = getattr(owner, "encode_text", None)
        if callable(encode):
            return encode(list(texts))
    raise UserError("clip-gap needs a text encoder: the backbone (or prompter) must provide encode_text(texts)")


class ClipGapAugmenter(Augmenter):
    """Offsets ``A`` ``[M, C, S, S]`` + the fit phase + the training-time per-channel shift."""

    stage = "feature"

    def __init__(self, options: ClipGapOptions, channels: int, stride: int = 16) -> None:
        super().__init__()
        self.options = options
        self.channels = int(channels)
        self.stride = int(stride)
        self.source_prompt = options.source_prompt
        self.target_prompts = tuple(options.target_prompts)
        size = options.offset_size
        self.offsets = nn.Parameter(
            torch.zeros(len(self.target_prompts), self.channels, size, size), requires_grad=False
        )
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def num_offsets(self) -> int:
        return self.offsets.shape[0]

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` ran (saved in checkpoints: a resumed run skips the phase)."""
        return bool(self.fitted)

    @property
    def crop_resolution(self) -> int:
        return self.options.offset_size * self.stride

    # ----------------------------------------------------------------------------------------- training shift
    def pooled_offsets(self) -> Tensor:
        """``[M, C]``: each ``A_j`` averaged over space (what training actually adds)."""
        return self.offsets.mean(dim=(2, 3))

    def augment(self, features: Tensor, indices: Tensor | None = None, gate: Tensor | None = None) -> Tensor:
        """``features [B, C, H, W] + mean_hw(A_{indices[b]})`` for the images where ``gate`` is true.

        ``indices`` ``[B]`` (default uniform random) and ``gate`` ``[B]`` bool (default: all) make it
        deterministic for tests. Maps whose width is not ``C`` are returned unchanged.
        """
        if features.ndim != 4 or features.shape[1] != self.channels:
            return features
        batch = features.shape[0]
        device = features.device
        if indices is None:
            indices = torch.randint(self.num_offsets, (batch,)).to(device)
        delta = self.pooled_offsets().to(features.dtype)[indices.to(self.offsets.device)].to(device)
        if gate is not None:
            delta = delta * gate.to(device=device, dtype=features.dtype)[:, None]
        return features + delta[:, :, None, None]

    def forward(self, features: Tensor) -> Tensor:
        """Training: shift with probability ``probability`` (per batch, or per image); eval: identity."""
        if not self.training or features.ndim != 4 or features.shape[1] != self.channels:
            return features
        probability = self.options.probability
        if self.options.per_image:
            gate = torch.rand(features.shape[0]) < probability
            return self.augment(features, gate=gate) if bool(gate.any()) else features
        if float(torch.rand(())) >= probability:
            return features
        return self.augment(features)

    # ------------------------------------------------------------------------------------------- the fit phase
    @torch.no_grad()
    def text_directions(self, model: nn.Module, backbone: Any | None = None) -> Tensor:
        """``[M, D]`` unit directions ``normalise(normalise(T(p^t_j)) - normalise(T(p^s)))``."""
        backbone = backbone if backbone is not None else getattr(model, "backbone", model)
        texts = _encode_text(model, backbone, [self.source_prompt, *self.target_prompts]).float()
        texts = F.normalize(texts, dim=-1)
        return F.normalize(texts[1:] - texts[:1], dim=-1)

    def random_crops(self, images: Sequence[Tensor] | Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
        """``crops_per_image`` random square crops of every image (float in [0, 1], ``[3, H, W]``), resized to
        ``offset_size * stride`` and normalised with the backbone's mean/std: ``[N, 3, R, R]``."""
        resolution = self.crop_resolution
        crops = []
        for image in images:
            height, width = image.shape[-2:]
            side = min(self.options.crop_size, height, width)
            for _ in range(self.options.crops_per_image):
                top = int(torch.randint(height - side + 1, ()))
                left = int(torch.randint(width - side + 1, ()))
                crop = image[None, :, top : top + side, left : left + side].float()
                crops.append(F.interpolate(crop, size=(resolution, resolution), mode="bilinear", align_corners=False))
        batch = torch.cat(crops)
        mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        return (batch - mean_t) / std_t

    def _targets(self, backbone: Any, crops: Tensor, directions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(stage-a features, z [N, D], z* [M, N, D])`` of the crops, without gradients."""
        with torch.no_grad():
            features = backbone.stage_a(crops)
            if features.shape[1] != self.channels or features.shape[-1] != self.options.offset_size:
                raise UserError(
                    f"clip-gap: stage_a gives {tuple(features.shape[1:])} for {crops.shape[-1]}px crops but the "
                    f"offsets are {tuple(self.offsets.shape[1:])}; set augmenter channels/offset_size to match"
                )
            z = F.normalize(backbone.pool(backbone.stage_b(features)).float(), dim=-1)
            z_star = F.normalize(z[None] + directions[:, None].to(z), dim=-1)
        return features, z, z_star

    def _offset_loss(self, backbone: Any, features: Tensor, z: Tensor, z_star: Tensor, offsets: slice) -> Tensor:
        """L_opt terms of the offsets ``offsets`` (a slice of j), all crops x offsets in one backbone pass."""
        chosen = self.offsets[offsets]
        count, crops = chosen.shape[0], features.shape[0]
        shifted = (features[None] + chosen[:, None]).flatten(0, 1)  # [count * N, C, S, S]
        z_bar = F.normalize(backbone.pool(backbone.stage_b(shifted)).float(), dim=-1).view(count, crops, -1)
        cosine_distance = (1.0 - (z_bar * z_star[offsets]).sum(-1)).mean(dim=1)  # per offset, mean over crops
        l1 = (z_bar - z[None]).abs().mean(dim=(1, 2))  # F.l1_loss(z_bar_j, z) per offset
        return (cosine_distance + self.options.l1_weight * l1).sum() / (self.num_offsets + 1)

    def _chunks(self, crops: int) -> list[slice]:
        """Offsets per backbone pass so that one pass holds at most ``fit_chunk`` crop copies; one offset per pass
        with ``fit_bn="train"``, where the batch statistics must be those of one ``A_j`` (as the released code)."""
        per_pass = 1 if self.options.fit_bn == "train" else max(1, self.options.fit_chunk // max(crops, 1))
        return [slice(start, start + per_pass) for start in range(0, self.num_offsets, per_pass)]

    def objective(self, backbone: Any, crops: Tensor, directions: Tensor) -> Tensor:
        """L_opt of the current offsets on normalised crops ``[N, 3, R, R]`` (no gradients; for monitoring/tests).

        Evaluated as in :meth:`fit` (the backbone in ``fit_bn`` mode, everything restored), so nothing changes.
        """
        with fit_modes(backbone, self.options.fit_bn), torch.no_grad():
            features, z, z_star = self._targets(backbone, crops, directions)
            parts = self._chunks(len(crops))
            return sum(self._offset_loss(backbone, features, z, z_star, part) for part in parts)

    def _fit_loop(
        self,
        backbone: Any,
        iterator: Iterator[Any],
        steps: int,
        device: torch.device,
        directions: Tensor,
        log: Callable[[str], None] | None,
        log_interval: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[float]:
        """The Adam steps of :meth:`fit` (modes and flags are set by the caller); returns L_opt per step.

        Progress goes to ``log`` after the first step (the first estimate of the phase's duration) and every
        ``log_interval`` steps; ``should_stop`` is asked before every step (a Ctrl-C ends the phase there).
        """
        optimizer = torch.optim.Adam([self.offsets], lr=self.options.fit_lr)
        history: list[float] = []
        started = time.perf_counter()
        for step in range(steps):
            if should_stop is not None and should_stop():
                break
            batch = next(iterator, None)
            if batch is None:  # a finite iterable: one pass over it is the phase
                break
            images = [image.to(device) for image in batch]
            crops = self.random_crops(images, backbone.mean, backbone.std)
            features, z, z_star = self._targets(backbone, crops, directions)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for part in self._chunks(len(crops)):  # gradients accumulate over the chunks
                loss = self._offset_loss(backbone, features, z, z_star, part)
                loss.backward()
                total += float(loss.detach())
            optimizer.step()
            history.append(total)
            if log is not None and (step == 0 or (step + 1) % log_interval == 0 or step + 1 == steps):
                per_step = (time.perf_counter() - started) / (step + 1)
                left = per_step * (steps - step - 1)
                log(f"clip-gap fit {step + 1}/{steps}: L_opt {total:.4f}  {per_step:.2f} s/step, ETA {left:.0f}s")
        return history

    def fit(
        self,
        model: nn.Module,
        batches: Iterable[Sequence[Tensor] | Tensor],
        *,
        steps: int | None = None,
        device: torch.device | str | None = None,
        log: Callable[[str], None] | None = None,
        log_interval: int | None = None,
        run_iters: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Fit the offsets on source images (one batch of images per step, float [0, 1]); returns a summary.

        Runs ``steps`` Adam steps, or fewer when ``batches`` runs out. ``steps`` defaults to ``fit_steps``, whose
        own default is the paper's 1000 capped at ``run_iters`` (the training run's length, given by the engine).
        Progress lines (with an estimate of the time left) go to ``log`` every ``log_interval`` steps (default:
        about ten lines per phase). ``should_stop`` is asked before each step; when it says stop, the phase ends
        there, the offsets are not marked fitted and the summary has ``stopped: True``.

        ``model`` is the whole predictor (its ``backbone`` is used, or ``model`` itself when it is the backbone).
        Backbone and prompter stay untouched: they run in the ``fit_bn`` mode with gradients off, and their modes,
        flags and BatchNorm statistics are restored afterwards; only ``A`` is updated.
        """
        backbone = getattr(model, "backbone", model)
        require_split_backbone(backbone, needed_by="augmenter 'clip-gap'")
        steps = self.fit_budget(run_iters) if steps is None else int(steps)
        log_interval = log_interval or max(1, min(100, steps // 10))
        device = torch.device(device) if device is not None else self.offsets.device
        directions = self.text_directions(model, backbone).to(device)
        grads = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        for parameter, _ in grads:
            parameter.requires_grad_(False)
        self.offsets.requires_grad_(True)
        try:
            with fit_modes(model, self.options.fit_bn):
                history = self._fit_loop(
                    backbone, iter(batches), steps, device, directions, log, log_interval, should_stop
                )
        finally:
            self.offsets.requires_grad_(False)
            self.offsets.grad = None
            for parameter, flag in grads:
                parameter.requires_grad_(flag)
        stopped = should_stop is not None and len(history) < steps and should_stop()
        if not stopped:
            self.fitted.fill_(True)
        return {
            "stopped": stopped,
            "steps": len(history),
            "initial_loss": history[0] if history else math.nan,
            "final_loss": history[-1] if history else math.nan,
            "offset_norm": float(self.offsets.detach().norm()),
        }

    def fit_budget(self, run_iters: int | None = None) -> int:
        """Steps of the fit phase: ``fit_steps`` when set, else the paper's :data:`PAPER_FIT_STEPS` capped at the
        run's ``train.iters`` (a 30-step smoke run must not spend minutes fitting offsets)."""
        if self.options.fit_steps is not None:
            return self.options.fit_steps
        return PAPER_FIT_STEPS if run_iters is None else min(PAPER_FIT_STEPS, int(run_iters))

    def extra_repr(self) -> str:
        return (
            f"offsets={tuple(self.offsets.shape)}, probability={self.options.probability}, "
            f"fit_bn={self.options.fit_bn}, fitted={self.is_fitted}"
        )


def build_clip_gap(options: ClipGapOptions | dict[str, Any] | None, context: BuildContext) -> ClipGapAugmenter:
    """Factory of the ``clip-gap`` augmenter. Channels and stride of the stage-a map come from the build context
    (``channels_a``, ``stride_a`` of a split backbone), else from ``options.channels`` (stride 16)."""
    options = coerce_options(options, ClipGapOptions, "clip-gap")
    channels = options.channels or context.channels_a
    if channels is None:
        raise UserError(
            "clip-gap needs the width of the stage-a feature map: use a backbone with channels_a (clip-resnet) "
            "or set augmenter channels"
        )
    return ClipGapAugmenter(options, channels=int(channels), stride=context.stride_a or 16)


__all__ = ["BATCH_NORMS", "PAPER_FIT_STEPS", "ClipGapAugmenter", "build_clip_gap", "fit_modes"]
