"""``benchmarks/gpu_suite.sh``: the parts a CPU machine can check. ``--dry-run`` prints every step and checks
every tool and script; the real run refuses, in one line, where there is no CUDA device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def run_suite(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SUITE), *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def test_dry_run_lists_every_step_and_passes_its_checks() -> None:
    result = run_suite("--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "check FAILED" not in out and "dry run: all checks passed" in out
    assert "vltk bench --list names the ops" in out and "train_step.py --help takes --precision" in out
    assert "-m pytest -m gpu" in out
    for op in ("rein_attention", "pixel_text_similarity", "ms_deform_attn"):
        for dtype in ("fp32", "fp16", "bf16"):
            assert f"[bench_{op}_{dtype}]" in out
            assert f"-m vltk bench {op} --device cuda --dtype {dtype} --json benchmarks/results/<gpu>/" in out
    for precision in ("fp32", "bf16"):
        assert f"benchmarks/train_step.py --device cuda --precision {precision}" in out
    for script in ("activation_checkpointing", "rein_memory"):  # the memory benchmarks at the paper's 512^2
        assert f"check ok: benchmarks/{script}.py --help runs" in out
        assert f"[{script}]" in out and f"benchmarks/{script}.py --device cuda" in out and "--size 512" in out
    assert "check ok: benchmarks/scaling.py --help runs" in out
    assert (
        "[scaling_bf16]" in out
        and "benchmarks/scaling.py --device cuda --precision bf16 --sizes 128 256 512 768 1024" in out
    )
    assert "benchmarks/results/<gpu>/manifest.json" in out


def test_dry_run_fails_when_a_tool_is_missing() -> None:
    """The checks are real: an interpreter that cannot run the scripts fails the dry run."""
    result = run_suite("--dry-run", PYTHON="/bin/false")
    assert result.returncode == 1
    assert "check FAILED: /bin/false imports torch" in result.stdout
    assert "check FAILED" in result.stdout.split("imports torch", 1)[1]  # --list and --help fail too


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_real_run_without_cuda_exits_2_in_one_line() -> None:
    result = run_suite()
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device is available here" in lines[0]


def test_unknown_argument_is_refused() -> None:
    result = run_suite("--dryrun")
    assert result.returncode == 2 and "unknown argument '--dryrun'" in result.stderr
