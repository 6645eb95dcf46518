"""``benchmarks/dg_table.py`` wiring: entries train through ``vltk.train`` into their own run folders, the JSON
holds every domain and the summary, and a second call reads finished entries back instead of training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _table(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "benchmarks" / "dg_table.py"), "--smoke", "--iters", "1"]
    command += ["--pretrained", "null", "--runs", str(tmp_path / "runs"), "--json", str(tmp_path / "dg.json"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_entries_train_report_and_are_reused(tmp_path: Path) -> None:
    first = _table(tmp_path, "--only", "random-full,foundation-frozen", "--markdown")
    assert first.returncode == 0, first.stderr[-2000:]
    payload = json.loads((tmp_path / "dg.json").read_text())
    rows = {row["name"]: row for row in payload["results"]}
    assert list(rows) == ["random-full", "foundation-frozen"]
    for row in rows.values():
        assert set(row["result"]["domains"]) == {"synthetic", "textured", "fog", "night", "rain", "snow"}
        assert {"source", "target_avg", "rpd_avg"} <= set(row["result"]["summary"])
        assert row["result"]["reused"] is False
    frozen = (tmp_path / "runs" / "foundation-frozen" / "config.resolved.yaml").read_text()
    assert "name: frozen" in frozen and "iters: 1" in frozen
    assert "| random init, full, FPN | mIoU |" in first.stdout
    assert rows["random-full"]["pretrained"] == "null"
    second = _table(tmp_path, "--only", "random-full")
    assert second.returncode == 0, second.stderr[-2000:]
    merged = {row["name"]: row for row in json.loads((tmp_path / "dg.json").read_text())["results"]}
    assert list(merged) == ["random-full", "foundation-frozen"]  # the row not re-run is kept
    again = merged["random-full"]["result"]
    assert again["reused"] is True and again["summary"] == rows["random-full"]["result"]["summary"]
    assert merged["foundation-frozen"] == rows["foundation-frozen"]


def test_an_unknown_entry_is_one_error_line(tmp_path: Path) -> None:
    result = _table(tmp_path, "--only", "random-ful")
    assert result.returncode == 2 and result.stderr.strip().startswith("Error: unknown entries ['random-ful']")


def test_lseg_entry_is_also_scored_with_the_held_out_words(tmp_path: Path) -> None:
    result = _table(tmp_path, "--only", "foundation-lseg", "--markdown")
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / "dg.json").read_text())["results"][0]
    table = row["zero_shot"]
    assert table["labels"]["car"] == "automobile" and "road" not in table["labels"]
    assert set(table["domains"]) == {"synthetic", "textured", "fog", "night", "rain", "snow"}
    saved = json.loads((tmp_path / "runs" / "foundation-lseg" / "zero_shot" / "eval.json").read_text())
    assert saved["labels"]["person"] == "pedestrian"
    assert "held-out words (zero-shot)" in result.stdout
