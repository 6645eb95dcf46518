"""Checkpoints: two generations of last.pt, the fallback to the older one, loading errors that never echo torch's
"weights_only=False" advice, the fit check that names keys and shapes, RNG states, and a full disk during a save."""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vltk.engine import checkpoint
from vltk.engine.checkpoint import (
    CheckpointWarning,
    load_checkpoint,
    load_model_state,
    load_resume_checkpoint,
    restore_rng_state,
    rng_state,
    save_atomic,
    state_mismatch,
)
from vltk.errors import UserError


def _state(value: float, step: int) -> dict[str, Any]:
    return {"model": {"w": torch.full((2,), value)}, "config": {}, "step": step}


def test_last_pt_keeps_the_previous_generation(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic(_state(1.0, 1), path, keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    save_atomic(_state(2.0, 2), path, keep_previous=True)
    save_atomic(_state(3.0, 3), path, keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]
    assert load_checkpoint(path)["step"] == 3 and load_checkpoint(tmp_path / "last.prev.pt")["step"] == 2


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic(_state(1.0, 10), path, keep_previous=True)
    save_atomic(_state(2.0, 20), path, keep_previous=True)
    path.write_bytes(path.read_bytes()[:200])  # truncated after the fact
    with pytest.warns(
        CheckpointWarning, match=r"cannot be read .*resuming from the previous checkpoint .*iteration 10"
    ):
        state, used = load_resume_checkpoint(tmp_path)
    assert used.name == "last.prev.pt" and state["step"] == 10
    path.unlink()
    with pytest.warns(CheckpointWarning, match="is missing"):
        assert load_resume_checkpoint(tmp_path)[0]["step"] == 10
    (tmp_path / "last.prev.pt").write_bytes(b"garbage")
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="no readable checkpoint to resume from"):
        load_resume_checkpoint(tmp_path)
    assert load_resume_checkpoint(tmp_path / "empty") is None


class Foreign:
    """A class a checkpoint should not need to import."""


def test_load_errors_never_suggest_weights_only_false(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": Foreign(), "config": {}}, pickled)
    with pytest.raises(UserError) as error:
        load_checkpoint(pickled)
    assert "weights_only" not in str(error.value) and "Foreign" in str(error.value)
    assert "\n" not in str(error.value)
    listed = tmp_path / "listed.pt"
    torch.save({"model": [torch.zeros(1)], "config": {}}, listed)
    with pytest.raises(UserError, match="its 'model' entry is a list, not a mapping"):
        load_checkpoint(listed)


def test_misfitting_weights_name_the_keys_with_both_shapes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    weights = {**model.state_dict(), "0.weight": torch.zeros(5, 4), "extra": torch.zeros(1)}
    del weights["1.bias"]
    problem = state_mismatch(model, weights)
    assert problem is not None
    assert "0.weight is [5, 4] in the checkpoint but [3, 4] in the model" in problem
    assert "missing from the checkpoint: 1.bias" in problem and "not in the model: extra" in problem
    with pytest.raises(UserError, match=r"^ckpt does not fit the model built from its configuration: 0\.weight is"):
        load_model_state(model, {"model": weights}, source="ckpt")
    assert state_mismatch(model, model.state_dict()) is None


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    save_atomic({"model": {}, "config": {}, "rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])  # weights_only loads every RNG state
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_no_space_left_is_one_error_line_and_the_previous_checkpoint_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vltk.testing import invoke

    real_save = torch.save
    calls = []

    def save_until_the_disk_is_full(obj: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) > 1:
            stream.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_is_full)
    out = tmp_path / "run"
    tiny = ["dataset.size=32", "dataset.num_train=4", "dataset.num_val=1", "dataset.domains=[synthetic]"]
    model = ["backbone.variant=tiny", "decoder.channels=16", "decoder.head_channels=16", "--adapter", "frozen"]
    steps = ["train.iters=3", "train.batch_size=2", "train.checkpoint_interval=1", "--quiet"]
    result = invoke(["train", "--output", str(out), *tiny, *model, *steps])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "no space left on device" in errors[0] and "last.pt holds iteration 1, the last good" in errors[0]
    assert load_checkpoint(out / "last.pt")["step"] == 1  # the previous checkpoint survived
    assert not list(out.glob(".*.tmp")) and not (out / "run.lock").exists()
