"""``task: detection``: boxes, VOC AP50 per domain, a :class:`~vltk.models.detector.Detector` on a split backbone.

What differs from segmentation, and nothing else:

* batches keep images as a list (sizes may differ; the detector pads) with per-image box targets;
* the backbone must be split into ``stage_a/stage_b/pool`` (:class:`vltk.interfaces.SplitBackbone`), the adapter
  may not hook blocks (detection runs through ``stage_a``, not through token blocks) and the decoder is a
  :class:`vltk.interfaces.DetectionDecoder`;
* evaluation is VOC AP at IoU 0.5 per class and domain (:mod:`vltk.engine.detection_metrics`), 11-point by
  default (``eval.ap_interpolation``), with the same DG summary (source, target average, gap, rPD) as mIoU;
* ``best.pt`` follows the **source-domain** AP50: CLIP the Gap picks its checkpoint on the day-clear test set
  ("training-set validation"), never on the targets it reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltk.errors import UserError
from vltk.tasks.base import Task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vltk.config import EvalConfig
    from vltk.resolved import ResolvedRun


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


class DetectionMetric:
    """VOC AP50 of one domain: per-class AP, the mean over classes and the ground-truth counts."""

    def __init__(self, source: Any, eval_config: EvalConfig, domain: str = "", overlay_dir: Path | None = None) -> None:
        from vltk.engine.detection_metrics import VOCAveragePrecision

        self.source = source
        self.classes = list(source.classes)
        self.interpolation = eval_config.ap_interpolation
        self.metric = VOCAveragePrecision(len(self.classes), iou_threshold=0.5, interpolation=self.interpolation)
        self.domain = domain
        self.overlay_dir = overlay_dir
        self.wanted = eval_config.overlays
        self.written = 0

    def update(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> None:
        predictions = model.predict([image.to(device) for image in batch["images"]])
        predictions = [{k: v.cpu() for k, v in p.items()} for p in predictions]
        self.metric.update(predictions, batch["targets"])
        if self.overlay_dir is not None and self.written < self.wanted:
            self._write_overlays(batch, predictions)

    def _write_overlays(self, batch: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
        """``overlays/<domain>_<i>.png``: true and predicted boxes with class names (scores above
        ``score_thresh`` of the head), as segmentation runs write their label-map overlays."""
        from vltk.engine.overlays import write_box_overlay

        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        for image, target, prediction in zip(batch["images"], batch["targets"], predictions, strict=True):
            if self.written >= self.wanted:
                return
            pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype("uint8")
            write_box_overlay(
                self.overlay_dir / f"{self.domain}_{self.written}.png",
                pixels,
                {key: target[key].numpy() for key in ("boxes", "labels")},
                {key: value.numpy() for key, value in prediction.items()},
                self.classes,
                self.source.palette,
                title=f"domain {self.domain}, image {self.written}",
            )
            self.written += 1

    def reduce_across_ranks(self, dist: Any) -> None:
        """Every rank's detections and ground truth, gathered in rank order (the images' order in a single
        process, which the stable score sort of AP depends on for ties)."""
        from vltk.engine.detection_metrics import VOCAveragePrecision
        from vltk.engine.distributed import all_gather_objects

        self.metric = VOCAveragePrecision.merged(all_gather_objects(dist, self.metric))

    def result(self) -> dict[str, Any]:
        result = self.metric.compute()
        return {
            "ap50": result["map"],
            "ap": dict(zip(self.classes, result["ap"], strict=True)),
            "num_gt": dict(zip(self.classes, result["num_gt"], strict=True)),
            "interpolation": self.interpolation,
        }


def detection_table(results: dict[str, Any], train_domains: Sequence[str], title: str = "AP50 per domain") -> Any:
    """Rich table: one row per domain (source first) with mAP and per-class AP, then target average and gap."""
    from rich.table import Table

    domains = results["domains"]
    classes = list(next(iter(domains.values()))["ap"]) if domains else []
    table = Table(title=f"{title} ({results.get('metric', 'AP50')})")
    table.add_column("domain")
    table.add_column("role")
    table.add_column("mAP50", justify="right")
    for name in classes:
        table.add_column(name, justify="right")
    ordered = [d for d in domains if d in train_domains] + [d for d in domains if d not in train_domains]
    for domain in ordered:
        entry = domains[domain]
        role = "source" if domain in train_domains else "target"
        table.add_row(domain, role, _pct(entry["ap50"]), *(_pct(entry["ap"][name]) for name in classes))
    summary = results["summary"]
    table.add_section()
    table.add_row("target average", "", _pct(summary["target_avg"]), *([""] * len(classes)))
    table.add_row("domain gap (source - target)", "", _pct(summary["gap"]), *([""] * len(classes)))
    return table


def plot_detection_history(history: dict[str, Any], path: str | Path, train_domains: Sequence[str]) -> Path:
    """Training loss (left) and AP50 per domain over iterations (right) as one PNG."""
    from vltk.engine.report import plot_curves

    return plot_curves(history, path, train_domains, score_key="ap50", score_label="AP50")


class DetectionTask(Task):
    """Single-source domain-generalised detection (CLIP the Gap's protocol)."""

    name = "detection"
    provides = "boxes"
    score_key = "ap50"
    metric = "AP50"
    best_key = "best_source_ap50"

    def check_backbone(self, backbone: Any, run: ResolvedRun) -> None:
        from vltk.interfaces import require_split_backbone

        require_split_backbone(backbone, needed_by="task detection", backbone_name=run.backbone.name)

    def check_adapter(self, adapter: Any, backbone: Any, run: ResolvedRun) -> None:
        if any(True for _ in adapter.parameters()):
            raise UserError(
                f"adapter '{run.adapter.name}' refines backbone blocks, which detection does not run through; "
                "use adapter=full (train the backbone's `trainable` stages) or adapter=frozen"
            )

    def check_decoder(self, decoder: Any, run: ResolvedRun) -> None:
        from vltk.interfaces import DetectionDecoder

        if not isinstance(decoder, DetectionDecoder):
            raise UserError(
                f"decoder '{run.decoder.name}' predicts label maps; task detection needs a detection decoder "
                "(e.g. clip-faster-rcnn)"
            )

    def model_class(self) -> type[nn.Module]:
        from vltk.models.detector import Detector

        return Detector

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from vltk.data.detection import collate_detection

        return collate_detection(items)

    def batch_losses(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        images = [image.to(device) for image in batch["images"]]
        targets = [{key: value.to(device) for key, value in target.items()} for target in batch["targets"]]
        return model.loss(images, targets)

    def batch_images(self, batch: dict[str, Any]) -> Any:
        return batch["images"]

    def domain_metric(
        self, source: Any, eval_config: EvalConfig, domain: str, overlay_dir: Path | None = None
    ) -> DetectionMetric:
        return DetectionMetric(source, eval_config, domain, overlay_dir)

    def result_extras(self, eval_config: EvalConfig) -> dict[str, Any]:
        return {"metric": f"AP50 ({eval_config.ap_interpolation})"}

    def selection_score(self, results: dict[str, Any]) -> float:
        """The paper selects on source-domain AP50 (no target data in single-source DG)."""
        score = results["summary"]["source"]
        return -1.0 if math.isnan(score) else score  # no source ground truth: the first evaluation stays best

    def progress_message(self, step: int, results: dict[str, Any]) -> str:
        summary = results["summary"]
        return f"iter {step}: source AP50 {_pct(summary['source'])}, target AP50 {_pct(summary['target_avg'])}"

    def result_table(self, results: dict[str, Any], train_domains: Sequence[str], title: str | None = None) -> Any:
        return detection_table(results, train_domains, title=title or "AP50 per domain")

    def plot_history(self, history: dict[str, Any], path: Path, train_domains: Sequence[str]) -> Path:
        return plot_detection_history(history, path, train_domains)


__all__ = ["DetectionMetric", "DetectionTask", "detection_table", "plot_detection_history"]
