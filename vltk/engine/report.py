"""What a run leaves for a person to look at: the per-domain table, the loss/mIoU plot, prediction overlays."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vltk.data.base import colorize


def to_json(payload: Any) -> str:
    """Strict JSON (NaN -> null, e.g. the IoU of a class absent from a domain) that any tool can read."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {str(key): clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(payload), indent=2, allow_nan=False, default=str)


def domain_table(results: dict[str, Any], train_domains: Sequence[str], title: str = "mIoU per domain") -> Any:
    """A rich table: one row per domain (source first), then the target average and the gap.

    The rPD column is the relative performance drop of each target domain, ``100 (mIoU_S - mIoU_T) / mIoU_S``
    (see :func:`vltk.engine.metrics.relative_drop`); its average row is the mean over the targets.
    """
    from rich.table import Table

    table = Table(title=title)
    table.add_column("domain")
    table.add_column("role")
    table.add_column("mIoU", justify="right")
    table.add_column("pixel acc", justify="right")
    table.add_column("rPD %", justify="right")
    domains = results["domains"]
    ordered = [d for d in domains if d in train_domains] + [d for d in domains if d not in train_domains]
    for domain in ordered:
        entry = domains[domain]
        role = "source" if domain in train_domains else "target"
        drop = _number(entry.get("rpd")) if role == "target" else ""
        table.add_row(domain, role, _pct(entry["miou"]), _pct(entry["accuracy"]), drop)
    summary = results["summary"]
    table.add_section()
    table.add_row("target average", "", _pct(summary["target_avg"]), "", _number(summary.get("rpd_avg")))
    table.add_row("domain gap (source - target)", "", _pct(summary["gap"]), "", "")
    return table


def class_table(results: dict[str, Any], train_domains: Sequence[str], title: str = "IoU per class") -> Any:
    """A rich table of per-class IoU: one row per class, one column per domain (source first).

    The view papers print beside mIoU (Rein's and DenseCLIP's per-class tables): it shows which classes a domain
    shift breaks. A class that neither occurs nor is predicted in a domain has no IoU ("-").
    """
    from rich.table import Table

    domains = results["domains"]
    ordered = [d for d in domains if d in train_domains] + [d for d in domains if d not in train_domains]
    table = Table(title=title)
    table.add_column("class")
    for domain in ordered:
        table.add_column(domain, justify="right")
    names = list(next(iter(domains.values()), {}).get("iou", {}))
    for name in names:
        cells = []
        for domain in ordered:
            value = domains[domain].get("iou", {}).get(name)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else _pct(value))
        table.add_row(name, *cells)
    return table


def segmentation_tables(results: dict[str, Any], train_domains: Sequence[str], title: str = "mIoU per domain") -> Any:
    """The per-domain table and, beside it (below on a narrow terminal), the per-class IoU table."""
    from rich.columns import Columns

    tables = [domain_table(results, train_domains, title=title)]
    if any(entry.get("iou") for entry in results["domains"].values()):
        tables.append(class_table(results, train_domains))
    return Columns(tables)


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _number(value: float | None) -> str:
    """A value that is already in percent (rPD); n/a when missing or undefined."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def plot_history(history: dict[str, Any], path: str | Path, train_domains: Sequence[str]) -> Path:
    """Training loss (left) and per-domain mIoU over iterations (right) as one PNG."""
    return plot_curves(history, path, train_domains, score_key="miou", score_label="mIoU")


def plot_curves(
    history: dict[str, Any], path: str | Path, train_domains: Sequence[str], *, score_key: str, score_label: str
) -> Path:
    """Training loss (left) and the per-domain score ``score_key`` (mIoU, AP50...) with the target average over
    iterations (right) as one PNG: the curves every task draws, whatever its metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [entry["iter"] for entry in history["train"]]
    losses = [entry["loss"] for entry in history["train"]]
    loss_axis.plot(steps, losses, color="tab:blue", linewidth=1)
    loss_axis.set(xlabel="iteration", ylabel="training loss", title="loss")
    loss_axis.grid(alpha=0.3)
    evals = history["eval"]
    if evals:
        eval_steps = [entry["iter"] for entry in evals]
        for domain in evals[-1]["domains"]:
            values = [100 * (entry["domains"][domain][score_key] or 0.0) for entry in evals]
            style = "-" if domain in train_domains else "--"
            score_axis.plot(eval_steps, values, style, marker="o", label=domain)
        averages = [100 * (entry["summary"]["target_avg"] or 0.0) for entry in evals]
        score_axis.plot(eval_steps, averages, "k-", linewidth=2, label="target avg")
        score_axis.legend(fontsize=8)
    score_axis.set(xlabel="iteration", ylabel=f"{score_label} (%)", title=f"{score_label} per domain (solid: source)")
    score_axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    label: np.ndarray | None,
    prediction: np.ndarray,
    palette: Sequence[Sequence[int]],
    ignore_index: int = 255,
) -> Path:
    """One PNG: image | ground truth blended on the image | prediction blended on the image.

    ``label=None`` (``vltk predict``: no ground truth) leaves the middle panel out.
    """
    from PIL import Image

    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    panels = [image]
    if label is not None:
        truth = colorize(label, palette, ignore_index)
        panels += [gap, (0.4 * image + 0.6 * truth).astype(np.uint8)]
    predicted = colorize(prediction, palette, ignore_index)
    panels += [gap, (0.4 * image + 0.6 * predicted).astype(np.uint8)]
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    return Path(path)
