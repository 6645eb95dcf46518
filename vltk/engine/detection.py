"""Detection training and evaluation: what differs from the segmentation loop, and nothing else.

:class:`DetectionTrainer` reuses :class:`vltk.engine.trainer.Trainer` (run folder, optimizer and schedule,
augmenter fit phase, checkpoints, resume, progress) and changes four things:

* batches keep images as a list (sizes may differ; the detector pads) with per-image box targets;
* the loss is ``model.loss(images, targets)``;
* evaluation is VOC AP at IoU 0.5 per class and domain (:mod:`vltk.engine.detection_metrics`), 11-point by
  default (``eval.ap_interpolation``), with the same DG summary (source, target average, gap, rPD) as mIoU;
* ``best.pt`` follows the **source-domain** AP50: CLIP the Gap picks its checkpoint on the day-clear test set
  ("training-set validation"), never on the targets it reports.

Reports: ``metrics.json`` (final per-domain/per-class AP, history), ``curves.png`` (loss and AP50 per domain)
and a rich table on stdout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from vltk.config import RunConfig
from vltk.data.detection import collate_detection
from vltk.engine.detection_metrics import VOCAveragePrecision
from vltk.engine.metrics import nanmean, relative_drops, summarise_domains
from vltk.engine.trainer import Trainer


@torch.no_grad()
def evaluate_detection(model: nn.Module, source: Any, config: RunConfig, device: torch.device) -> dict[str, Any]:
    """AP50 (mAP over classes) and per-class AP for every domain, plus ``summary`` (source, target_avg, gap,
    rpd_avg). ``eval.max_images`` caps each domain, ``eval.batch_size`` sets the batch."""
    model.eval()
    interpolation = config.eval.ap_interpolation
    domains: dict[str, Any] = {}
    for domain in source.domains:
        dataset = source.split("val", domain)
        if config.eval.max_images is not None and len(dataset) > config.eval.max_images:
            dataset = Subset(dataset, range(config.eval.max_images))
        loader = DataLoader(dataset, batch_size=config.eval.batch_size, collate_fn=collate_detection)
        metric = VOCAveragePrecision(len(source.classes), iou_threshold=0.5, interpolation=interpolation)
        for batch in loader:
            predictions = model.predict([image.to(device) for image in batch["images"]])
            metric.update([{k: v.cpu() for k, v in p.items()} for p in predictions], batch["targets"])
        result = metric.compute()
        domains[domain] = {
            "ap50": result["map"],
            "ap": dict(zip(source.classes, result["ap"], strict=True)),
            "num_gt": dict(zip(source.classes, result["num_gt"], strict=True)),
            "images": len(dataset),
            "interpolation": interpolation,
        }
    ap50 = {domain: entry["ap50"] for domain, entry in domains.items()}
    summary = summarise_domains(ap50, source.train_domains)
    drops = relative_drops(ap50, source.train_domains)
    for domain, drop in drops.items():
        domains[domain]["rpd"] = drop
    summary["rpd_avg"] = nanmean(drops.values())
    return {"domains": domains, "summary": summary, "metric": f"AP50 ({interpolation})"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [entry["iter"] for entry in history["train"]]
    loss_axis.plot(steps, [entry["loss"] for entry in history["train"]], color="tab:blue", linewidth=1)
    loss_axis.set(xlabel="iteration", ylabel="training loss", title="loss")
    loss_axis.grid(alpha=0.3)
    evals = history["eval"]
    if evals:
        eval_steps = [entry["iter"] for entry in evals]
        for domain in evals[-1]["domains"]:
            values = [100 * (entry["domains"][domain]["ap50"] or 0.0) for entry in evals]
            ap_axis.plot(eval_steps, values, "-" if domain in train_domains else "--", marker="o", label=domain)
        ap_axis.legend(fontsize=8)
    ap_axis.set(xlabel="iteration", ylabel="AP50 (%)", title="AP50 per domain (solid: source)")
    ap_axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class DetectionTrainer(Trainer):
    """The training loop for ``task: detection`` (see the module docstring for what differs)."""

    collate_fn = staticmethod(collate_detection)

    def _batch_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = [image.to(self.device) for image in batch["images"]]
        targets = [{key: value.to(self.device) for key, value in target.items()} for target in batch["targets"]]
        return self.model.loss(images, targets)

    best_key = "best_source_ap50"

    def _run_evaluation(self, overlays: bool) -> dict[str, Any]:
        return evaluate_detection(self.model, self.source, self.config, self.device)

    def _selection_score(self, results: dict[str, Any]) -> float:
        """The paper selects on source-domain AP50 (no target data in single-source DG)."""
        score = results["summary"]["source"]
        return -1.0 if math.isnan(score) else score  # no source ground truth: the first evaluation stays best

    def _progress_message(self, results: dict[str, Any]) -> str:
        summary = results["summary"]
        return f"iter {self.step}: source AP50 {_pct(summary['source'])}, target AP50 {_pct(summary['target_avg'])}"

    def _plot_and_table(self, results: dict[str, Any]) -> Any:
        plot_detection_history(self.history, self.output / "curves.png", self.source.train_domains)
        return detection_table(results, self.source.train_domains)


def make_trainer(config: RunConfig, output: Path, *, resume: bool = False, quiet: bool = False) -> Trainer:
    """The trainer for ``config.task``: :class:`DetectionTrainer` for detection, :class:`Trainer` otherwise."""
    cls = DetectionTrainer if config.task == "detection" else Trainer
    return cls(config, output, resume=resume, quiet=quiet)


__all__ = ["DetectionTrainer", "detection_table", "evaluate_detection", "make_trainer", "plot_detection_history"]
