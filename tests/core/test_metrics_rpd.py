"""Relative performance drop (rPD): hand-computed values, and that it reaches metrics, tables and evaluate()."""

from __future__ import annotations

import math

import pytest
import torch

from vltk.engine.metrics import nanmean, relative_drop, relative_drops
from vltk.engine.report import domain_table


def test_relative_drop_by_hand() -> None:
    # source 60 mIoU, target 45: (60 - 45) / 60 = 25 %
    assert relative_drop(0.60, 0.45) == pytest.approx(25.0)
    assert relative_drop(0.50, 0.50) == 0.0
    assert relative_drop(0.40, 0.50) == pytest.approx(-25.0)  # a target better than the source: negative drop
    assert math.isnan(relative_drop(0.0, 0.3)) and math.isnan(relative_drop(math.nan, 0.3))
    assert math.isnan(relative_drop(0.5, math.nan))


def test_relative_drops_per_target_and_mean() -> None:
    miou = {"gta": 0.80, "city": 0.60, "bdd": 0.40, "map": 0.70}
    drops = relative_drops(miou, ["gta"])
    assert drops == pytest.approx({"city": 25.0, "bdd": 50.0, "map": 12.5})
    assert nanmean(drops.values()) == pytest.approx((25.0 + 50.0 + 12.5) / 3)


def test_several_source_domains_use_their_mean() -> None:
    drops = relative_drops({"a": 0.6, "b": 0.4, "t": 0.25}, ["a", "b"])
    assert drops == pytest.approx({"t": 50.0})  # source = (0.6 + 0.4) / 2 = 0.5


def test_domain_table_shows_rpd() -> None:
    from rich.console import Console

    results = {
        "domains": {
            "src": {"miou": 0.8, "accuracy": 0.9},
            "tgt": {"miou": 0.6, "accuracy": 0.7, "rpd": 25.0},
        },
        "summary": {"source": 0.8, "target_avg": 0.6, "gap": 0.2, "rpd_avg": 25.0},
    }
    console = Console(width=200, record=True)
    console.print(domain_table(results, ["src"]))
    text = console.export_text()
    assert "rPD" in text and "25.0" in text and "80.0" in text


def test_segmentation_tables_show_per_class_iou_beside_the_domains() -> None:
    from rich.console import Console

    from vltk.engine.report import segmentation_tables

    nan = float("nan")
    results = {
        "domains": {
            "tgt": {"miou": 0.5, "accuracy": 0.7, "rpd": 37.5, "iou": {"road": 0.625, "giraffe": nan}},
            "src": {"miou": 0.8, "accuracy": 0.9, "iou": {"road": 0.9, "giraffe": 0.7}},
        },
        "summary": {"source": 0.8, "target_avg": 0.5, "gap": 0.3, "rpd_avg": 37.5},
    }
    console = Console(width=200, record=True)
    console.print(segmentation_tables(results, ["src"]))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "class" in line and "src" in line).split("class")[1]
    assert header.index("src") < header.index("tgt")  # source column first
    road = next(line for line in lines if "road" in line).split("road")[1].split()
    assert [cell for cell in road if cell not in "│┃"] == ["90.0", "62.5"]
    giraffe = next(line for line in lines if "giraffe" in line).split("giraffe")[1].split()
    assert [cell for cell in giraffe if cell not in "│┃"] == ["70.0", "-"]  # no IoU where the class never occurs


def test_evaluate_reports_rpd_for_targets_only() -> None:
    from vltk.config import build_config
    from vltk.engine.evaluation import evaluate
    from vltk.pipeline import build_data_source, build_model
    from vltk.plugins import get_plugin_manager
    from vltk.tasks import get_task

    config = build_config(
        overrides=["dataset.size=64", "dataset.num_train=2", "dataset.num_val=2", "dataset.domains=[synthetic,fog]"],
        recipe_dirs=get_plugin_manager().recipe_dirs(),
    )
    torch.manual_seed(0)
    source = build_data_source(config)
    model = build_model(config)
    results = evaluate(model, source, get_task("segmentation"), config.eval, torch.device("cpu"))
    domains, summary = results["domains"], results["summary"]
    assert "rpd" not in domains["synthetic"]
    expected = relative_drop(domains["synthetic"]["miou"], domains["fog"]["miou"])
    assert domains["fog"]["rpd"] == pytest.approx(expected, nan_ok=True)
    assert summary["rpd_avg"] == pytest.approx(expected, nan_ok=True)
