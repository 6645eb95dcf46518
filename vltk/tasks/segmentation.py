"""``task: segmentation``: label maps, mIoU per domain, a :class:`~vltk.models.DensePredictor`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltk.errors import UserError
from vltk.tasks.base import Task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vltk.config import EvalConfig
    from vltk.context import BuildContext
    from vltk.resolved import ResolvedRun


def collate_segmentation(items: list[dict[str, Any]]) -> dict[str, Any]:
    """uint8 images -> float [0, 1]; labels stacked as int64."""
    import torch

    images = torch.stack([item["image"] for item in items]).float().div_(255.0)
    labels = torch.stack([item["label"] for item in items]).long()
    return {"image": images, "label": labels, "domain": [item["domain"] for item in items]}


class SegmentationMetric:
    """Confusion matrix of one domain (mIoU, pixel accuracy, per-class IoU) plus the first few overlay PNGs."""

    def __init__(self, source: Any, eval_config: EvalConfig, domain: str, overlay_dir: Path | None) -> None:
        from vltk.engine.metrics import ConfusionMatrix

        self.source = source
        self.eval_config = eval_config
        self.domain = domain
        self.overlay_dir = overlay_dir
        self.matrix = ConfusionMatrix(len(source.classes), source.ignore_index)
        self.written = 0

    def update(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> None:
        from vltk.models.inference import inference_from_config

        prediction = inference_from_config(model, batch["image"].to(device), self.eval_config).argmax(1).cpu()
        self.matrix.update(prediction, batch["label"])
        wanted = self.eval_config.overlays
        if self.overlay_dir is None or self.written >= wanted:
            return
        import numpy as np

        from vltk.engine.report import write_overlay

        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        for i in range(min(wanted - self.written, prediction.shape[0])):
            image = (batch["image"][i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            write_overlay(
                self.overlay_dir / f"{self.domain}_{self.written}.png",
                image,
                batch["label"][i].numpy(),
                prediction[i].numpy(),
                self.source.palette,
                self.source.ignore_index,
                class_names=self.source.classes,
                title=f"domain {self.domain}, image {self.written}",
            )
            self.written += 1

    def reduce_across_ranks(self, dist: Any) -> None:
        """The confusion matrices of all ranks' shards, summed: the whole domain's matrix on every rank."""
        from vltk.engine.distributed import all_reduce_sum_

        all_reduce_sum_(dist, self.matrix.matrix)

    def result(self) -> dict[str, Any]:
        return {
            "miou": self.matrix.miou(),
            "accuracy": self.matrix.accuracy(),
            "iou": dict(zip(self.source.classes, self.matrix.iou(), strict=True)),
        }


class SegmentationTask(Task):
    """Dense prediction of label maps; ``best.pt`` follows the target-domain mIoU (the DG number)."""

    name = "segmentation"
    provides = "label maps"
    score_key = "miou"
    metric = "mIoU"
    best_key = "best_target_miou"
    predicts_label_maps = True

    def check_adapter(self, adapter: Any, backbone: Any, run: ResolvedRun) -> None:
        from vltk.interfaces import require_adapter_fits

        require_adapter_fits(adapter, backbone, adapter_name=run.adapter.name, backbone_name=run.backbone.name)

    def decoder_context(self, context: BuildContext, prompter: Any) -> BuildContext:
        """With a prompter that concatenates its K-channel score map to a level, that level is K wider."""
        index = getattr(prompter, "score_concat_index", None) if prompter is not None else None
        if index is None:
            return context
        from vltk.models.text_guidance import widen_in_channels

        widths = widen_in_channels(context.in_channels, index, context.num_classes)
        return context.evolve(in_channels=tuple(widths))

    def check_decoder(self, decoder: Any, run: ResolvedRun) -> None:
        from vltk.interfaces import Decoder

        if not isinstance(decoder, Decoder):
            raise UserError(
                f"decoder '{run.decoder.name}' does not predict label maps; task segmentation needs a segmentation "
                "decoder (e.g. fpn, mask2former), or set task=detection"
            )

    def model_class(self) -> type[nn.Module]:
        from vltk.models import DensePredictor

        return DensePredictor

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_segmentation(items)

    def batch_losses(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return model.loss(batch["image"].to(device), batch["label"].to(device))

    def batch_images(self, batch: dict[str, Any]) -> Any:
        return batch["image"]

    def domain_metric(
        self, source: Any, eval_config: EvalConfig, domain: str, overlay_dir: Path | None = None
    ) -> SegmentationMetric:
        return SegmentationMetric(source, eval_config, domain, overlay_dir)

    def progress_message(self, step: int, results: dict[str, Any]) -> str:
        summary = results["summary"]
        return f"iter {step}: target mIoU {100 * summary['target_avg']:.1f}, rPD {summary['rpd_avg']:.1f}%"

    def result_table(self, results: dict[str, Any], train_domains: Sequence[str], title: str | None = None) -> Any:
        from vltk.engine.report import segmentation_tables

        return segmentation_tables(results, train_domains, title=title or "mIoU per domain")

    def plot_history(self, history: dict[str, Any], path: Path, train_domains: Sequence[str]) -> Path:
        from vltk.engine.report import plot_history

        return plot_history(history, path, train_domains)


__all__ = ["SegmentationMetric", "SegmentationTask", "collate_segmentation"]
