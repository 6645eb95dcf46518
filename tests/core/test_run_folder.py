"""The run folder's safety: one live run per folder (stale locks taken over), leftovers of killed saves removed,
output folders probed without leaving anything, and configuration changes on resume described and recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vltk.engine.preflight import check_output_folder
from vltk.engine.run_folder import (
    RunFolderWarning,
    RunLock,
    config_changes,
    describe_changes,
    record_changes,
    remove_unfinished_saves,
    resume_command,
)
from vltk.errors import UserError


def _write_lock(folder: Path, pid: int, **extra: object) -> None:
    record = {"pid": pid, "host": socket.gethostname(), "started": "earlier", **extra}
    (folder / "run.lock").write_text(json.dumps(record))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_run_holds_the_folder(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(UserError, match=rf"in use by another vltk run \(pid {sleeper.pid}"):
            RunLock(tmp_path).check()
        with pytest.raises(UserError, match="in use"):
            RunLock(tmp_path).acquire()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == sleeper.pid  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    _write_lock(tmp_path, _dead_pid())
    lock = RunLock(tmp_path)
    lock.check()  # a dead holder does not refuse
    with pytest.warns(RunFolderWarning, match="stale lock"):
        lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_a_reused_pid_and_an_unreadable_lock_are_stale(tmp_path: Path) -> None:
    _write_lock(tmp_path, os.getppid(), pid_start="not the start time of that process")
    RunLock(tmp_path).check()
    (tmp_path / "run.lock").write_text("{half a json")
    RunLock(tmp_path).check()


def test_release_only_removes_our_own_lock(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, 999_999_999)  # someone else's, written after ours
    lock.release()
    assert (tmp_path / "run.lock").exists()


def test_unfinished_saves_are_removed_and_nothing_else(tmp_path: Path) -> None:
    for name in (".last.pt.k2j3_x.tmp", ".best.pt.abc.tmp", "last.pt", "notes.tmp", ".hidden"):
        (tmp_path / name).write_bytes(b"x" * 10)
    removed = remove_unfinished_saves(tmp_path)
    assert sorted(path.name for path, _ in removed) == [".best.pt.abc.tmp", ".last.pt.k2j3_x.tmp"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".hidden", "last.pt", "notes.tmp"]


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_output_folder_checks_leave_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    before = _listing(tmp_path)
    check_output_folder(tmp_path)  # existing and writable
    check_output_folder(tmp_path / "new" / "deeper")  # to be created
    assert _listing(tmp_path) == before
    with pytest.raises(UserError, match="'.*file' is a file, not a folder; choose another --output"):
        check_output_folder(tmp_path / "file" / "run")
    with pytest.raises(UserError, match="is a file; choose another --output"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(UserError, match="cannot be created"):
        check_output_folder("/proc/vltk-run", option="--output")
    assert _listing(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot be written"):
            check_output_folder(folder)
        with pytest.raises(UserError, match="cannot be created"):
            check_output_folder(folder / "run")
    finally:
        folder.chmod(0o755)


def test_config_changes_are_dotted_old_to_new() -> None:
    old = {"seed": 0, "train": {"lr": 3e-4, "iters": 30}, "augmenters": [{"name": "a", "p": 1}], "output": "x"}
    new = {"seed": 7, "train": {"lr": 0.1, "iters": 30}, "augmenters": [{"name": "a", "p": 2}], "output": "y"}
    changes = config_changes(old, new)
    assert changes == {"seed": (0, 7), "train.lr": (3e-4, 0.1), "augmenters.0.p": (1, 2)}  # output: not a change
    assert describe_changes(changes) == "seed 0 -> 7, train.lr 0.0003 -> 0.1, augmenters.0.p 1 -> 2"
    listed = config_changes({"dataset": {"domains": ["a", "b"]}}, {"dataset": {"domains": ["a"]}, "prompter": None})
    assert describe_changes(listed) == "dataset.domains [a, b] -> [a], prompter (unset) -> null"
    assert describe_changes({f"k{i}": (0, 1) for i in range(10)}, limit=2) == "k0 0 -> 1, k1 0 -> 1 (and 8 more)"


def test_changes_are_appended_to_changes_yaml(tmp_path: Path) -> None:
    record_changes(tmp_path, {"train.iters": (30, 60)}, step=30)
    record_changes(tmp_path, {"seed": (0, 7)}, step=45)
    entries = yaml.safe_load((tmp_path / "changes.yaml").read_text())
    assert [entry["at_iteration"] for entry in entries] == [30, 45]
    assert entries[0]["changes"] == {"train.iters": {"old": 30, "new": 60}}


def test_the_resume_command_is_quoted_to_work_as_printed() -> None:
    assert resume_command("runs/r8") == "vltk train --resume runs/r8"
    assert resume_command("my runs/r 8") == "vltk train --resume 'my runs/r 8'"
