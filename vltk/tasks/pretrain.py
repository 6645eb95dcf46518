"""``task: pretrain``: image-text pretraining of a foundation, zero-shot retrieval and classification per domain.

The model is an :class:`~vltk.models.pretrainer.ImageTextPretrainer`: the run's backbone (which must have a text
space), its adapter, and an image-text head in the ``decoder`` section that owns the objectives. Batches are
images with one caption each (plus, when the data source gives them, the condition index and the presence of
countable objects). Per domain the metric measures, with the embeddings alone (no training on val scenes):
retrieval R@1 between the domain's images and their captions (both directions, averaged; the selection score),
zero-shot condition classification among the data source's conditions, and zero-shot object presence
classification ("a street with cars." vs "a street with no cars.": accuracy, and the threshold-free ROC AUC of
their score difference). At the end of a run the task writes
``open_clip.pt``: the foundation as an ordinary open_clip state dict for ``backbone.pretrained=FILE``.
"""

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
    from vltk.resolved import ResolvedRun

#: The file a pretraining run leaves for ``backbone.pretrained=``.
FOUNDATION_FILE = "open_clip.pt"


def collate_captioned(items: list[dict[str, Any]]) -> dict[str, Any]:
    """uint8 images -> float [0, 1]; captions as a list; condition and object presence stacked when present."""
    import torch

    batch: dict[str, Any] = {
        "image": torch.stack([item["image"] for item in items]).float().div_(255.0),
        "caption": [item["caption"] for item in items],
        "domain": [item["domain"] for item in items],
    }
    if "condition" in items[0]:
        batch["condition"] = torch.tensor([int(item["condition"]) for item in items])
    if "objects" in items[0]:
        batch["objects"] = torch.stack([item["objects"] for item in items])
    return batch


def _prompt_embeddings(model: nn.Module, prompts: list[list[str]]) -> torch.Tensor:
    """One normalised embedding per prompt group (the mean of its prompts' embeddings, renormalised)."""
    import torch

    flat = [text for group in prompts for text in group]
    embedded = model.encode_texts(flat)
    out, start = [], 0
    for group in prompts:
        out.append(embedded[start : start + len(group)].mean(0))
        start += len(group)
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)


def _mean_auc(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Mean over classes (columns) of the ROC AUC of ``scores`` for ``truth``; classes without both kinds skipped.

    Threshold-free: whether images that show a class score higher than those that do not (0.5 = chance), which
    "with" vs "with no" accuracy cannot tell apart from a text tower that never learnt negation.
    """
    aucs = []
    for column in range(scores.shape[1]):
        positive, negative = scores[truth[:, column] == 1, column], scores[truth[:, column] == 0, column]
        if len(positive) and len(negative):
            wins = (positive[:, None] > negative[None, :]).float() + 0.5 * (positive[:, None] == negative[None, :])
            aucs.append(wins.mean().item())
    return sum(aucs) / len(aucs) if aucs else None


class PretrainMetric:
    """One domain's image and caption embeddings, conditions and object presence -> R@1 and zero-shot accuracies."""

    def __init__(self, source: Any, domain: str) -> None:
        self.source, self.domain = source, domain
        self.images: list[Any] = []
        self.texts: list[Any] = []
        self.conditions: list[Any] = []
        self.objects: list[Any] = []
        self.condition_embeddings: Any = None
        self.object_embeddings: Any = None

    def update(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> None:
        self.images.append(model.encode_images(batch["image"].to(device)).float().cpu())
        self.texts.append(model.encode_texts(batch["caption"]).float().cpu())
        if "condition" in batch and hasattr(self.source, "condition_prompts") and self.condition_embeddings is None:
            groups = [self.source.condition_prompts(name) for name in self.source.conditions]
            self.condition_embeddings = _prompt_embeddings(model, groups).float().cpu()
        if "objects" in batch and hasattr(self.source, "object_prompts") and self.object_embeddings is None:
            groups = [self.source.object_prompts(i, present) for i in range(len(self.source.object_classes))
                      for present in (False, True)]  # fmt: skip
            self.object_embeddings = _prompt_embeddings(model, groups).float().cpu()
        if "condition" in batch:
            self.conditions.append(batch["condition"])
        if "objects" in batch:
            self.objects.append(batch["objects"])

    def result(self) -> dict[str, Any]:
        import torch

        images, texts = torch.cat(self.images), torch.cat(self.texts)
        similarity = images @ texts.T
        truth = torch.arange(len(images))
        i2t = (similarity.argmax(1) == truth).float().mean().item()
        t2i = (similarity.argmax(0) == truth).float().mean().item()
        result: dict[str, Any] = {"r1": (i2t + t2i) / 2, "r1_image_to_text": i2t, "r1_text_to_image": t2i}
        if self.conditions and self.condition_embeddings is not None:
            predicted = (images @ self.condition_embeddings.T).argmax(1)
            result["condition_acc"] = (predicted == torch.cat(self.conditions)).float().mean().item()
        if self.objects and self.object_embeddings is not None:
            scores = (images @ self.object_embeddings.T).view(len(images), -1, 2)
            predicted = scores.argmax(-1)  # 1 = "with", 0 = "with no"
            correct = (predicted == torch.cat(self.objects)).float().mean(0)
            result["object_acc"] = correct.mean().item()
            result["object_acc_per_class"] = dict(zip(self.source.object_classes, correct.tolist(), strict=True))
            result["object_auc"] = _mean_auc(scores[..., 1] - scores[..., 0], torch.cat(self.objects))
        return result


class PretrainTask(Task):
    """Image-text pretraining; ``best.pt`` follows the target-domain retrieval R@1."""

    name = "pretrain"
    provides = "captioned images"
    score_key = "r1"
    metric = "R@1"
    best_key = "best_target_r1"
    predicts_label_maps = False

    def check_backbone(self, backbone: Any, run: ResolvedRun) -> None:
        from vltk.interfaces import require_text_space

        require_text_space(backbone, needed_by="task 'pretrain'", backbone_name=run.backbone.name)

    def check_adapter(self, adapter: Any, backbone: Any, run: ResolvedRun) -> None:
        from vltk.interfaces import require_adapter_fits

        require_adapter_fits(adapter, backbone, adapter_name=run.adapter.name, backbone_name=run.backbone.name)

    def check_decoder(self, decoder: Any, run: ResolvedRun) -> None:
        needed = ("image_text_loss", "encode_images", "encode_texts", "foundation_state")
        if not all(callable(getattr(decoder, name, None)) for name in needed):
            raise UserError(
                f"decoder '{run.decoder.name}' is no image-text head; task pretrain needs one (e.g. "
                "decoder=clip-contrastive, `vltk list decoders`), or set task=segmentation"
            )

    def model_class(self) -> type[nn.Module]:
        from vltk.models.pretrainer import ImageTextPretrainer

        return ImageTextPretrainer

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_captioned(items)

    def batch_losses(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        extra = {"objects": batch["objects"].to(device)} if "objects" in batch else {}
        return model.loss(batch["image"].to(device), batch["caption"], **extra)

    def batch_images(self, batch: dict[str, Any]) -> Any:
        return batch["image"]

    def domain_metric(
        self, source: Any, eval_config: EvalConfig, domain: str, overlay_dir: Path | None = None
    ) -> PretrainMetric:
        return PretrainMetric(source, domain)

    def progress_message(self, step: int, results: dict[str, Any]) -> str:
        summary = results["summary"]
        return f"iter {step}: source R@1 {100 * summary['source']:.1f}, target R@1 {100 * summary['target_avg']:.1f}"

    def result_table(self, results: dict[str, Any], train_domains: Sequence[str], title: str | None = None) -> Any:
        from rich.table import Table

        table = Table(title=title or "zero-shot results per domain")
        for column in ("domain", "role", "R@1", "condition acc", "object acc", "object AUC", "images"):
            table.add_column(column, justify="left" if column in ("domain", "role") else "right")

        def pct(value: Any) -> str:
            return "n/a" if value is None else f"{100 * value:.1f}"

        for domain, entry in results["domains"].items():
            role = "source" if domain in train_domains else "target"
            scores = [pct(entry.get(key)) for key in ("r1", "condition_acc", "object_acc", "object_auc")]
            table.add_row(domain, role, *scores, str(entry.get("images", "")))
        return table

    def plot_history(self, history: dict[str, Any], path: Path, train_domains: Sequence[str]) -> Path:
        from vltk.engine.report import plot_curves

        return plot_curves(history, path, train_domains, score_key="r1", score_label="R@1")

    def write_artifacts(self, model: nn.Module, output: Path) -> list[Path]:
        """``open_clip.pt``: the foundation's open_clip state dict (atomically: temporary file, then rename)."""
        import torch

        path = output / FOUNDATION_FILE
        temporary = path.with_suffix(".tmp")
        state = {key: value.detach().cpu().contiguous() for key, value in model.foundation_state().items()}
        torch.save(state, temporary)
        temporary.replace(path)
        return [path]


__all__ = ["FOUNDATION_FILE", "PretrainMetric", "PretrainTask", "collate_captioned"]
