"""The one evaluation loop: every domain of a data source, the task's metric per domain, the DG summary.

What is measured per domain is the task's (:meth:`vltk.tasks.base.Task.domain_metric`: mIoU for segmentation,
VOC AP50 for detection); the loop, the per-domain cap, and the domain-generalisation summary (source score,
target average, gap, relative performance drop per target and on average) are the same for every task.

In a data-parallel run every rank evaluates a contiguous shard of each domain and the task's metric combines the
shards (``reduce_across_ranks``, :class:`vltk.tasks.base.DomainMetric`), so all ranks get the single-process
result; only rank 0 writes overlays.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from vltk.engine.distributed import SINGLE, DistributedContext, shard
from vltk.engine.metrics import nanmean, relative_drops, summarise_domains

if TYPE_CHECKING:
    from vltk.config import EvalConfig
    from vltk.engine.progress import EvalProgress
    from vltk.tasks.base import Task


@torch.no_grad()
def evaluate(
    model: nn.Module,
    source: Any,
    task: Task,
    eval_config: EvalConfig,
    device: torch.device,
    overlay_dir: Path | None = None,
    progress: EvalProgress | None = None,
    dist: DistributedContext = SINGLE,
) -> dict[str, Any]:
    """``{"domains": {domain: result}, "summary": {...}}`` for every domain of ``source``.

    Each domain's result is the task metric's (plus ``images`` and, for targets, ``rpd``: the relative
    performance drop against the source in percent); ``summary`` has ``source``, ``target_avg``, ``gap`` and
    ``rpd_avg`` of the task's ``score_key``. ``eval_config.max_images`` caps each domain.
    ``progress`` (see :mod:`vltk.engine.progress`) is told each domain's start, the images done and its score.
    With ``dist`` of several ranks, each rank measures its shard (a metric that cannot combine shards measures the
    whole domain); the progress counts this rank's images.
    """
    model.eval()
    domains: dict[str, Any] = {}
    for domain in source.domains:
        dataset = source.split("val", domain)
        if eval_config.max_images is not None and len(dataset) > eval_config.max_images:
            dataset = Subset(dataset, range(eval_config.max_images))
        metric = task.domain_metric(source, eval_config, domain, overlay_dir if dist.is_main else None)
        sharded = dist.is_distributed and callable(getattr(metric, "reduce_across_ranks", None))
        part = shard(dist, dataset) if sharded else dataset
        if progress is not None:
            progress.start_domain(domain, len(part))
        for batch in DataLoader(part, batch_size=eval_config.batch_size, collate_fn=task.collate):
            metric.update(model, batch, device)
            if progress is not None:
                progress.advance(len(task.batch_images(batch)))
        if sharded:
            metric.reduce_across_ranks(dist)
        domains[domain] = {**metric.result(), "images": len(dataset)}
        if progress is not None:
            score = domains[domain].get(task.score_key)
            progress.end_domain(f"{task.score_key} {100 * score:.1f}" if isinstance(score, float) else "")
    scores = {domain: entry[task.score_key] for domain, entry in domains.items()}
    summary = summarise_domains(scores, source.train_domains)
    drops = relative_drops(scores, source.train_domains)
    for domain, drop in drops.items():
        domains[domain]["rpd"] = drop
    summary["rpd_avg"] = nanmean(drops.values())
    return {"domains": domains, "summary": summary, **task.result_extras(eval_config)}


__all__ = ["evaluate"]
