"""``vltk train --resume`` through real subprocesses: the run comes back from its folder, changes are refused or
recorded, and SIGINT, SIGTERM and SIGKILL at chosen points resume, with the printed command, to exactly the losses
of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_runs import tiny_cli

pytestmark = pytest.mark.slow

TINY = tiny_cli("train.iters=8", "train.checkpoint_interval=3", "train.log_interval=1", "eval.overlays=0")
VLTK = [sys.executable, "-m", "vltk"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _vltk(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*VLTK, *args], capture_output=True, text=True, env=_env(), timeout=timeout)


def _losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((folder / "metrics.json").read_text())["history"]["train"]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of TINY: the reference every resumed run must equal."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = _vltk("train", "--output", str(out), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(folder, target)
    return target


def test_resume_rebuilds_the_run_from_its_folder(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    saved = (run / "config.resolved.yaml").read_text()
    printed = _vltk("train", "--resume", str(run), "--dry-run")
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["train"]["iters"] == 8 and config["dataset"]["num_train"] == 8  # not the default recipe's
    assert config["adapter"]["name"] == "frozen" and config["output"] == str(run)
    resumed = _vltk("train", "--output", str(run), "--resume", "--quiet")  # the flag form: same run
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    # not overwritten by the default recipe; only `output` follows the folder (this one is a copy)
    assert (run / "config.resolved.yaml").read_text() == saved.replace(str(finished), str(run))


def test_changes_on_resume_are_refused_with_a_summary(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    refused = _vltk("train", "--resume", str(run), "seed=7", "train.lr=0.1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1
    assert "would change train.lr 0.0003 -> 0.1, seed 0 -> 7" in lines[0] and "--allow-changes" in lines[0]
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_allowed_changes_are_applied_and_recorded(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    done = _vltk("train", "--resume", str(run), "train.iters=9", "--allow-changes", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    entries = yaml.safe_load((run / "changes.yaml").read_text())
    assert entries[0]["at_iteration"] == 8 and entries[0]["changes"] == {"train.iters": {"old": 8, "new": 9}}
    assert yaml.safe_load((run / "config.resolved.yaml").read_text())["train"]["iters"] == 9
    assert [entry["iter"] for entry in json.loads((run / "metrics.json").read_text())["history"]["train"]] == list(
        range(1, 10)
    )


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*VLTK, "train", "--output", str(out), *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _wait_for_iteration(process: subprocess.Popen, iteration: int) -> list[str]:
    """Read stderr until the log line of ``iteration`` (the loop has passed it); returns what was read."""
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stderr:
        seen.append(line)
        if line.startswith(f"iter {iteration}/") or time.monotonic() > deadline:
            break
    return seen


def _run_printed_command(stderr: str) -> subprocess.CompletedProcess:
    commands = re.findall(r"`(vltk train --resume [^`]+)`", stderr)
    assert commands, stderr[-2000:]
    arguments = shlex.split(commands[-1])
    assert arguments[0] == "vltk"
    return _vltk(*arguments[1:], "--quiet")


@pytest.mark.parametrize(
    ("signum", "iteration"),
    [pytest.param(signal.SIGINT, 2, id="sigint-at-2"), pytest.param(signal.SIGTERM, 5, id="sigterm-at-5")],
)
def test_a_signal_stops_at_a_step_and_the_printed_command_resumes_exactly(
    signum: int, iteration: int, finished: Path, tmp_path: Path
) -> None:
    out = tmp_path / "my run"  # a space: the printed command must quote it
    process = _start(out)
    _wait_for_iteration(process, iteration)
    process.send_signal(signum)
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, rest[-2000:]
    assert "Traceback" not in rest and "saved; continue with" in rest
    resumed = _run_printed_command(rest)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _losses(out) == _losses(finished)  # exactly, step by step


def test_sigkill_after_a_checkpoint_resumes_exactly_and_takes_over_the_stale_lock(
    finished: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = _start(out)
    _wait_for_iteration(process, 4)  # last.pt of iteration 3 is on disk
    process.kill()
    process.communicate(timeout=60)
    assert (out / "run.lock").exists()  # nobody removed it: the process was killed
    resumed = _vltk("train", "--output", str(out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stale lock" in resumed.stderr
    assert _losses(out) == _losses(finished)
    assert not (out / "run.lock").exists()
    # metrics.jsonl had step 4 (after the checkpoint of step 3) when the run died: rewound, every step once
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [(record["step"], record["train/loss"]) for record in logged if "train/loss" in record]
    assert steps == list(enumerate(_losses(finished), start=1))
