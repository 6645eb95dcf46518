"""The :class:`Task` contract and the per-domain metric protocol of the one evaluation loop."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vltk.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vltk.config import EvalConfig
    from vltk.context import BuildContext
    from vltk.pipeline import Components
    from vltk.resolved import ResolvedRun


class DomainMetric(Protocol):
    """Accumulates one domain's evaluation: the loop feeds it batches, then asks for the domain's result dict.

    A metric may also have ``reduce_across_ranks(dist)``, which combines the shards the ranks of a data-parallel
    run measured (:mod:`vltk.engine.distributed`) into the whole domain's state on every rank; without it, every
    rank evaluates the whole domain.
    """

    def update(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> None: ...

    def result(self) -> dict[str, Any]: ...


class Task(ABC):
    """What one task (``segmentation``, ``detection``) decides; see :mod:`vltk.tasks`.

    Class attributes: ``name``; ``provides`` (what its data sources yield, for messages); ``score_key`` (the
    per-domain number the DG summary is built from, e.g. ``miou``);
    ``metric`` (its display name); ``best_key`` (where ``metrics.json`` records the best selection score);
    ``predicts_label_maps`` (whether ``vltk predict`` applies).
    """

    name: str
    provides: str
    score_key: str
    metric: str
    best_key: str
    predicts_label_maps: bool = False

    # ------------------------------------------------------------------------------------------------ building

    def check_data_source(self, source: Any, dataset_name: str) -> None:
        """A data source of another task is a :class:`UserError` saying what would fit."""
        provides = getattr(source, "task", "segmentation")
        if provides != self.name:
            from vltk.tasks import TASKS, get_task

            other = get_task(provides).provides if provides in TASKS else provides
            raise UserError(
                f"dataset '{dataset_name}' provides {other} ({provides}) but task is '{self.name}'; use a dataset "
                f"that provides {self.provides} (`vltk list datasets`), or task={provides}"
            )

    def build_model(self, run: ResolvedRun, context: BuildContext) -> nn.Module:
        """Build every component (:func:`vltk.pipeline.build_components`) and wire them into one module."""
        from vltk.pipeline import build_components

        return self.assemble(build_components(run, context, self), context.class_names)

    def check_backbone(self, backbone: Any, run: ResolvedRun) -> None:  # noqa: B027 (optional hook)
        """Refuse a backbone the task cannot use (default: any backbone fits)."""

    @abstractmethod
    def check_adapter(self, adapter: Any, backbone: Any, run: ResolvedRun) -> None:
        """Refuse an adapter that does not fit the backbone in this task."""

    def decoder_context(self, context: BuildContext, prompter: Any) -> BuildContext:
        """The context the decoder is built with (default: unchanged)."""
        return context

    @abstractmethod
    def check_decoder(self, decoder: Any, run: ResolvedRun) -> None:
        """Refuse a decoder of another task."""

    @abstractmethod
    def model_class(self) -> type[nn.Module]:
        """The module that wires the components together (``DensePredictor``, ``Detector``)."""

    def assemble(self, parts: Components, class_names: Sequence[str]) -> nn.Module:
        """Wire the built components into the task's model (one constructor signature for every task)."""
        return self.model_class()(
            parts.backbone,
            parts.adapter,
            parts.decoder,
            prompter=parts.prompter,
            augmenters=parts.augmenters,
            class_names=class_names,
        )

    # ------------------------------------------------------------------------------------------------ training

    @abstractmethod
    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Training and evaluation batches of this task's samples."""

    @abstractmethod
    def batch_losses(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """The model's loss terms for one collated batch (``"loss"`` is the total)."""

    @abstractmethod
    def batch_images(self, batch: dict[str, Any]) -> Any:
        """The images of a collated batch (what an augmenter's fit phase consumes)."""

    # ------------------------------------------------------------------------------------------------ evaluation

    @abstractmethod
    def domain_metric(
        self, source: Any, eval_config: EvalConfig, domain: str, overlay_dir: Path | None = None
    ) -> DomainMetric:
        """A fresh accumulator for one domain of ``source``."""

    def result_extras(self, eval_config: EvalConfig) -> dict[str, Any]:
        """Entries added to the top level of the evaluation results (default: none)."""
        return {}

    def selection_score(self, results: dict[str, Any]) -> float:
        """What ``best.pt`` follows (default: the target average, the source when there is no target)."""
        score = results["summary"]["target_avg"]
        return results["summary"]["source"] if math.isnan(score) else score

    @abstractmethod
    def progress_message(self, step: int, results: dict[str, Any]) -> str:
        """One line after an evaluation during training."""

    @abstractmethod
    def result_table(self, results: dict[str, Any], train_domains: Sequence[str], title: str | None = None) -> Any:
        """A rich table of the per-domain results."""

    def write_artifacts(self, model: nn.Module, output: Path) -> list[Path]:
        """Files the task leaves in the run folder after the final evaluation (default: none); e.g. pretraining's
        ``open_clip.pt``, the foundation as a plain open_clip state dict."""
        return []

    @abstractmethod
    def plot_history(self, history: dict[str, Any], path: Path, train_domains: Sequence[str]) -> Path:
        """``curves.png``: loss and the per-domain score over iterations."""


__all__ = ["DomainMetric", "Task"]
