"""Ctrl-C and SIGTERM stop training at a step boundary, and the resumed run equals the uninterrupted one exactly.

The signals are real (``os.kill`` of this process from inside the loop, at a chosen step), so the handlers of
:mod:`vltk.engine.interrupts` are what is tested; the run is tiny (6 steps over two epochs, an evaluation in the
middle, decoder dropout drawing from the torch RNG) so that a missing RNG state or data position shows at once.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import tiny_overrides

from vltk.config import build_config, resolve
from vltk.engine.checkpoint import load_checkpoint
from vltk.engine.interrupts import Interrupted
from vltk.engine.trainer import EpochBatches, Trainer
from vltk.plugins import get_plugin_manager

TINY = tiny_overrides(
    "dataset.num_train=6", "train.iters=6", "train.eval_interval=3", "train.checkpoint_interval=1000", "eval.overlays=0"
)


def _run(*extra: str) -> Any:
    manager = get_plugin_manager()
    config = build_config(overrides=[*TINY, *extra], recipe_dirs=manager.recipe_dirs())
    return resolve(config, manager.get_registry())


def _losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.history["train"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: its loss at every step and its final weights."""
    trainer = Trainer(_run(), tmp_path_factory.mktemp("reference") / "run", quiet=True)
    results = trainer.fit()
    return {"losses": _losses(trainer), "state": trainer.model.state_dict(), "results": results}


def _signal_at(monkeypatch: pytest.MonkeyPatch, method: str, step: int, signum: int, times: int = 1) -> None:
    """Send ``signum`` to this process ``times`` times while ``Trainer.<method>`` runs at iteration ``step``."""
    original = getattr(Trainer, method)

    def wrapped(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        if self.step == step - (method == "_train_step"):
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, method, wrapped)


def _assert_exact(trainer: Trainer, reference: dict[str, Any]) -> None:
    assert _losses(trainer) == reference["losses"]  # exactly, step by step
    for key, value in reference["state"].items():
        assert torch.equal(trainer.model.state_dict()[key], value), key


def _resume_and_compare(out: Path, reference: dict[str, Any]) -> None:
    """Resume the run in ``out`` to its end: losses, weights and final results equal the reference's exactly."""
    resumed = Trainer(_run(), out, resume=True, quiet=True)
    results = resumed.fit()
    _assert_exact(resumed, reference)
    assert json.dumps(results["summary"]) == json.dumps(reference["results"]["summary"])  # NaN-safe, exact


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "step", "method"),
    [
        pytest.param(signal.SIGINT, 2, "_train_step", id="sigint-mid-epoch"),  # 3 steps per epoch
        pytest.param(signal.SIGTERM, 4, "_train_step", id="sigterm-second-epoch"),  # after the mid-run evaluation
        pytest.param(signal.SIGINT, 3, "_run_evaluation", id="sigint-in-evaluation"),  # it finishes, then the save
    ],
)
def test_interrupt_saves_at_the_step_boundary_and_resumes_exactly(
    signum: int, step: int, method: str, reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _signal_at(patch, method, step, signum)
        trainer = Trainer(_run(), out, quiet=True)
        with pytest.raises(Interrupted) as stopped:
            trainer.fit()
    assert stopped.value.exit_code == 128 + signum and stopped.value.saved
    assert trainer.step == step and not (out / "run.lock").exists()
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == step and len(state["history"]["train"]) == step
    assert state["data"]["epoch"] == step // 3 and state["data"]["batch"] == step % 3
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    if step >= 3:
        assert [entry["iter"] for entry in state["history"]["eval"]] == [3]  # the evaluation completed

    _resume_and_compare(out, reference)


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_save_waits_for_it(
    reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first Ctrl-C asks for the save; the second arrives while last.pt is written and must not tear it."""
    import vltk.engine.trainer as trainer_module

    real_save = trainer_module.save_atomic

    def save_with_a_second_ctrl_c(state: dict[str, Any], path: Path, **kwargs: Any) -> Path:
        os.kill(os.getpid(), signal.SIGINT)  # lands inside the save
        return real_save(state, path, **kwargs)

    out = tmp_path / "run"
    _signal_at(monkeypatch, "_train_step", 2, signal.SIGINT)
    monkeypatch.setattr(trainer_module, "save_atomic", save_with_a_second_ctrl_c)
    trainer = Trainer(_run(), out, quiet=True)
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert stopped.value.saved and load_checkpoint(out / "last.pt")["step"] == 2
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    resumed = Trainer(_run(), out, resume=True, quiet=True)
    resumed.fit()
    _assert_exact(resumed, reference)


@pytest.mark.slow
def test_two_ctrl_c_stop_at_once_and_say_nothing_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _signal_at(monkeypatch, "_train_step", 2, signal.SIGINT, times=2)
    trainer = Trainer(_run(), tmp_path / "run", quiet=True)
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert not stopped.value.saved and trainer.last_saved_step is None
    assert not (tmp_path / "run" / "last.pt").exists()
    from vltk.cli.run import interrupt_message

    message = interrupt_message(trainer, stopped.value)
    assert "no checkpoint was saved yet" in message and "holds" not in message


@pytest.mark.slow
def test_ctrl_c_in_the_final_evaluation_stops_with_the_trained_model_saved(
    reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _signal_at(patch, "_run_evaluation", 6, signal.SIGINT)
        trainer = Trainer(_run(), out, quiet=True)
        with pytest.raises(Interrupted) as stopped:
            trainer.fit()
    assert stopped.value.saved and load_checkpoint(out / "last.pt")["step"] == 6
    from vltk.cli.run import interrupt_message

    assert "final evaluation" in interrupt_message(trainer, stopped.value)
    _resume_and_compare(out, reference)


@pytest.mark.slow
def test_a_new_run_never_keeps_an_older_runs_checkpoint_as_its_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting over in a folder: the first save replaces the old last.pt and drops the old last.prev.pt, so a
    fallback can never resume another run."""
    from vltk.engine.checkpoint import save_atomic

    out = tmp_path / "run"
    for name in ("last.pt", "last.prev.pt"):
        save_atomic({"model": {}, "config": {}, "step": 999}, out / name)
    _signal_at(monkeypatch, "_train_step", 1, signal.SIGINT)
    trainer = Trainer(_run(), out, quiet=True)
    with pytest.raises(Interrupted):
        trainer.fit()
    assert load_checkpoint(out / "last.pt")["step"] == 1 and not (out / "last.prev.pt").exists()


def test_batches_resume_mid_epoch_without_loading_the_skipped_ones() -> None:
    """``EpochBatches`` from a saved position yields what the uninterrupted stream yields from there on."""
    loaded: list[int] = []

    class Numbers(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 7

        def __getitem__(self, index: int) -> int:
            loaded.append(index)
            return index

    def collate(items: list[int]) -> list[int]:
        return items

    stream = EpochBatches(Numbers(), 3, 5, 0, collate)
    full = [next(stream) for _ in range(7)]  # 2 batches per epoch, the 7th item of an epoch never used
    assert stream.position() == {"epoch": 3, "batch": 1, "size": 7, "batch_size": 3}
    assert full[0] != full[2]  # epochs are shuffled differently
    loaded.clear()
    later = EpochBatches(Numbers(), 3, 5, 0, collate, epoch=1, batch=1)
    assert [next(later) for _ in range(4)] == full[3:]
    assert sorted(loaded) == sorted(i for batch in full[3:] for i in batch)  # nothing skipped was loaded
    old_style = torch.utils.data.DataLoader(
        Numbers(), batch_size=3, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(5 * 100_003)
    )
    assert [list(map(int, batch)) for batch in old_style] == full[:2]  # the order of earlier versions' runs


class _SignalDispositions(torch.utils.data.Dataset):
    """Each item says whether SIGINT and SIGTERM are ignored in the process that loads it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> bool:
        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def _first(items: list[bool]) -> list[bool]:
    return items


def test_loader_workers_leave_stopping_to_the_main_process() -> None:
    """Ctrl-C reaches the whole process group; a worker killed by it would break the orderly stop."""
    batch = next(EpochBatches(_SignalDispositions(), 2, 0, 1, _first))
    assert batch == [True, True]
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the main process is untouched
