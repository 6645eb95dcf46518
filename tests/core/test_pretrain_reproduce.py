"""``benchmarks/pretrain_reproduce.py``: a run folder compared with a shipped record, within a proportion's noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _compare(run: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "benchmarks" / "pretrain_reproduce.py"), str(run), "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def record() -> dict:
    from vltk_plugins.backbones.shipped import SHIPPED_DIR

    return json.loads((SHIPPED_DIR / "vltk-tiny-clip.json").read_text())


def _fake_run(folder: Path, record: dict, shift: float) -> Path:
    """A finished pretraining folder: the shipped weights as ``open_clip.pt`` and the record's numbers + ``shift``."""
    from vltk_plugins.backbones.ship import build_backbone

    folder.mkdir()
    model = build_backbone("eva02", "tiny", "builtin:vltk-tiny-clip")
    torch.save(model.state_dict(), folder / "open_clip.pt")
    domains = {
        name: {**{key: value + shift for key, value in scores.items()}, "images": 64}
        for name, scores in record["evaluation"]["zero_shot"].items()
    }
    (folder / "metrics.json").write_text(json.dumps({"final": {"domains": domains}}))
    return folder


def test_a_faithful_run_is_within_noise_and_a_shifted_one_is_not(record: dict, tmp_path: Path) -> None:
    same = _compare(_fake_run(tmp_path / "same", record, 0.0), tmp_path / "same.json")
    assert same.returncode == 0, same.stderr[-2000:]
    payload = json.loads((tmp_path / "same.json").read_text())
    assert payload["all_within_noise"] is True and payload["validation_images"] == 6 * 64
    assert payload["check_embedding_max_difference"] < 1e-3  # fp16 file vs its fp32 copy: same numbers
    shifted = _compare(_fake_run(tmp_path / "shifted", record, 0.2), tmp_path / "shifted.json")
    assert shifted.returncode == 0, shifted.stderr[-2000:]
    comparison = json.loads((tmp_path / "shifted.json").read_text())["zero_shot_mean"]
    assert not any(entry["within_noise"] for entry in comparison.values())


def test_an_unfinished_run_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = _compare(tmp_path / "run", tmp_path / "out.json")
    assert result.returncode == 2 and result.stderr.strip().startswith("Error:") and "metrics.json" in result.stderr
    assert not (tmp_path / "out.json").exists()
