"""The built-in experiment loggers on their own: what they write, how a resume rewinds them, what a missing
package says (TensorBoard for real when installed, wandb through a fake module injected in ``sys.modules``)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from vltk.api import LoggerContext, UserError
from vltk_plugins.loggers import jsonl, tensorboard
from vltk_plugins.loggers import wandb as wandb_logger
from vltk_plugins.loggers.options import JsonLinesOptions, TensorBoardOptions, WandbOptions

RESULTS = {"domains": {"synthetic": {"miou": 0.5, "images": 4}, "fog": {"miou": float("nan")}}, "summary": {"gap": 0.1}}


def _context(tmp_path: Path, *, start_step: int = 0, resumed: bool = False) -> LoggerContext:
    return LoggerContext(run_dir=tmp_path, run_name="run", config={"seed": 0}, start_step=start_step, resumed=resumed)


def _log_steps(logger: Any, steps: range, scale: float = 1.0) -> None:
    for step in steps:
        logger.log_scalars({"train/loss": scale * step}, step)


def test_jsonl_writes_one_strict_json_object_per_call(tmp_path: Path) -> None:
    logger = jsonl.build_jsonl_logger(JsonLinesOptions(), _context(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()  # the factory writes nothing
    logger.start()
    _log_steps(logger, range(1, 3))
    logger.log_scalars({"eval/fog/miou": float("nan")}, 2)
    logger.log_results(RESULTS, 2)
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON: NaN became null
    assert [(record["step"], record.get("train/loss")) for record in records[:2]] == [(1, 1.0), (2, 2.0)]
    assert records[2]["eval/fog/miou"] is None
    assert records[3]["final"]["domains"]["synthetic"]["miou"] == 0.5
    assert records[3]["final"]["domains"]["fog"]["miou"] is None


def test_jsonl_resume_rewinds_to_the_checkpoint_and_never_repeats_a_step(tmp_path: Path) -> None:
    first = jsonl.build_jsonl_logger(JsonLinesOptions(), _context(tmp_path))
    first.start()
    _log_steps(first, range(1, 6))  # the checkpoint is at 3; steps 4 and 5 are lost with the run
    first.log_scalars({"eval/gap": 0.2}, 3)
    first.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "train/lo')  # torn by a SIGKILL
    resumed = jsonl.build_jsonl_logger(JsonLinesOptions(), _context(tmp_path, start_step=3, resumed=True))
    resumed.start()
    resumed.log_scalars({"eval/gap": 0.2, "eval/fog/miou": 0.4}, 3)  # a re-evaluation of step 3
    _log_steps(resumed, range(4, 7), scale=10.0)
    resumed.close()
    records = jsonl.read_lines(tmp_path / "metrics.jsonl")
    losses = [(record["step"], record["train/loss"]) for record in records if "train/loss" in record]
    assert losses == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    gaps = [record["step"] for record in records if "eval/gap" in record]
    assert gaps == [3]  # written once; the new value of step 3 is kept
    assert [record["eval/fog/miou"] for record in records if "eval/fog/miou" in record] == [0.4]


def test_jsonl_new_run_replaces_the_file_of_the_run_it_starts_over(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "train/loss": 1.0}\n')
    logger = jsonl.build_jsonl_logger(JsonLinesOptions(file="log.jsonl"), _context(tmp_path))
    logger.start()
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text().startswith('{"step": 9')  # another file: untouched
    logger = jsonl.build_jsonl_logger(JsonLinesOptions(), _context(tmp_path))
    logger.start()
    _log_steps(logger, range(1, 2))
    logger.close()
    assert [record["step"] for record in jsonl.read_lines(tmp_path / "metrics.jsonl")] == [1]


def test_tensorboard_missing_package_is_one_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` sees when it is missing
    with pytest.raises(UserError) as raised:
        tensorboard.build_tensorboard_logger(TensorBoardOptions(), _context(tmp_path))
    message = str(raised.value)
    assert 'pip install "vltk-dg[tensorboard]"' in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard would show, honouring purge_step as TensorBoard's own loader does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), purge_orphaned_data=True)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_writes_scalars_and_a_resume_purges_the_lost_steps(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    logger = tensorboard.build_tensorboard_logger(TensorBoardOptions(), _context(tmp_path))
    logger.start()
    _log_steps(logger, range(1, 6))
    logger.close()
    resumed = tensorboard.build_tensorboard_logger(TensorBoardOptions(), _context(tmp_path, start_step=3, resumed=True))
    resumed.start()
    _log_steps(resumed, range(4, 7), scale=10.0)
    resumed.log_results(RESULTS, 6)
    resumed.close()
    assert (tmp_path / "tensorboard").is_dir()
    assert _scalars(tmp_path / "tensorboard")["train/loss"] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
        (5, 50.0),
        (6, 60.0),
    ]


class FakeRun:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls
        self.summary: dict[str, float] = {}

    def log(self, values: dict[str, float], step: int) -> None:
        self.calls.append(("log", (step, values)))

    def finish(self) -> None:
        self.calls.append(("finish", None))


def _fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    module = types.ModuleType("wandb")
    module.runs = []  # type: ignore[attr-defined]

    def init(**settings: Any) -> FakeRun:
        calls.append(("init", settings))
        run = FakeRun(calls)
        module.runs.append(run)  # type: ignore[attr-defined]
        return run

    module.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_is_not_imported_by_the_hooks_and_missing_is_one_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib

    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    importlib.reload(importlib.import_module("vltk_plugins.loggers.hooks"))
    assert "wandb" not in sys.modules
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r'pip install "vltk-dg\[wandb\]"'):
        wandb_logger.build_wandb_logger(WandbOptions(), _context(tmp_path))


def test_wandb_logs_offline_and_a_resume_continues_the_same_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _fake_wandb(monkeypatch)
    logger = wandb_logger.build_wandb_logger(WandbOptions(mode="offline", tags=["a"]), _context(tmp_path))
    logger.start()
    logger.log_scalars({"train/loss": 1.5}, 1)
    logger.log_results(RESULTS, 1)
    logger.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["project"] == "vltk" and init["name"] == "run"
    assert init["config"] == {"seed": 0} and init["tags"] == ["a"] and init["dir"] == str(tmp_path)
    assert calls[1] == ("log", (1, {"train/loss": 1.5})) and calls[-1] == ("finish", None)
    run = sys.modules["wandb"].runs[0]
    assert run.summary == {"final/synthetic/miou": 0.5, "final/synthetic/images": 4.0, "final/gap": 0.1}
    resumed = wandb_logger.build_wandb_logger(WandbOptions(), _context(tmp_path, start_step=1, resumed=True))
    resumed.start()
    resumed.close()
    again = [settings for name, settings in calls if name == "init"][1]
    assert again["id"] == init["id"] and again["resume"] == "allow"
    assert "mode" not in again  # unset: wandb reads WANDB_MODE itself
    fresh = wandb_logger.build_wandb_logger(WandbOptions(), _context(tmp_path))
    fresh.start()
    assert [settings for name, settings in calls if name == "init"][2]["id"] != init["id"]  # a run from scratch
