"""What keeps a run folder consistent: one live run at a time, no leftovers of interrupted saves, the saved
configuration as the truth of a resumed run, and a record of every change made to it on resume.

* ``run.lock`` holds the pid, host and start time of the run writing the folder. A second run on the folder is
  refused while that process lives; the lock of a dead process (a SIGKILL, a power cut) is taken over with a
  warning. The lock is removed when the run ends, so a finished or failed command leaves the folder as it was.
* ``.<name>.pt.<random>.tmp`` files are what a checkpoint save leaves when it is killed before its rename; the
  next run removes them (they can be as large as a checkpoint).
* ``config.resolved.yaml`` is what ``vltk train --resume RUN_DIR`` rebuilds the run from, and
  ``changes.yaml`` lists every change accepted on resume with ``--allow-changes`` (iteration, time, old -> new).

Plain Python (no torch): the CLI reads the saved configuration before anything heavy is imported.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import shlex
import socket
import warnings
from pathlib import Path
from typing import Any

import yaml

from vltk.errors import UserError

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.resolved.yaml"
CHANGES_NAME = "changes.yaml"


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired (a stale lock taken over); printed as one ``warning:`` line."""


# ------------------------------------------------------------------------------------------------------- lock


def _process_facts(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a Linux process from ``/proc/<pid>/stat``; ``None`` where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces; it ends at the last ')'
    return fields[0], fields[19]


def _is_alive(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs. Another host's process cannot be asked: assume alive."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    facts = _process_facts(pid)
    if facts is None:
        return True
    state, started = facts
    # a zombie is dead; another start time means the pid was reused by an unrelated process
    return state != "Z" and holder.get("pid_start") in (None, started)


class RunLock:
    """``<folder>/run.lock``: refuses a second live run on one folder; stale locks are taken over."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says (``{}`` when it cannot be read), or ``None`` when there is no lock."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def check(self) -> None:
        """Refuse now (before any work) when another live process holds the folder; writes nothing."""
        holder = self.holder()
        if holder and holder.get("pid") != os.getpid() and _is_alive(holder):
            raise UserError(
                f"run folder '{self.folder}' is in use by another vltk run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, started {holder.get('started')}); wait for it to end or choose another "
                f"--output (if that run is gone, delete {self.path})"
            )

    def acquire(self) -> None:
        """Create the lock atomically; a stale one (dead pid, unreadable file) is replaced with a warning."""
        for _ in range(3):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check()
                holder = self.holder()
                if holder is not None and holder.get("pid") != os.getpid():
                    warnings.warn(
                        f"taking over the stale lock {self.path} of a run that is no longer alive "
                        f"(pid {holder.get('pid')}, started {holder.get('started')})",
                        RunFolderWarning,
                        stacklevel=2,
                    )
                self.path.unlink(missing_ok=True)
                continue
            facts = _process_facts(os.getpid())
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "pid_start": facts[1] if facts else None,
            }
            with os.fdopen(handle, "w") as stream:
                json.dump(record, stream)
            self.held = True
            atexit.register(self.release)
            return
        raise UserError(f"could not lock run folder '{self.folder}': another run keeps taking it; use another --output")

    def release(self) -> None:
        """Remove the lock if this process holds it (safe to call twice, and at exit)."""
        if self.held:
            holder = self.holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def resume_command(folder: str | Path, processes: int = 1) -> str:
    """The command that continues the run in ``folder``, quoted so that it works as printed; a data-parallel run
    resumes with as many processes (``--nproc``), so that every rank's saved RNG state is used."""
    nproc = f" --nproc {processes}" if processes > 1 else ""
    return f"vltk train --resume {shlex.quote(str(folder))}{nproc}"


# -------------------------------------------------------------------------------------------- leftover files


def is_unfinished_save(path: Path) -> bool:
    """Whether ``path`` is the temporary file of a checkpoint save that never finished (``.last.pt.x1y2.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and ".pt." in path.name


def remove_unfinished_saves(folder: str | Path) -> list[tuple[Path, int]]:
    """Delete the temporary files of interrupted checkpoint saves; returns ``(path, bytes)`` of each removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_unfinished_save(path):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append((path, size))
    return removed


# ----------------------------------------------------------------------------------------- saved configuration


def saved_config(folder: str | Path) -> dict[str, Any] | None:
    """``<folder>/config.resolved.yaml`` as a mapping, or ``None`` when the folder holds none."""
    from vltk.config import read_yaml_mapping

    path = Path(folder) / CONFIG_NAME
    return read_yaml_mapping(path, what="run configuration") if path.is_file() else None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings (and lists of mappings, as ``augmenters.0.name``); other values are leaves."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        items = ((str(index), item) for index, item in enumerate(data))
    else:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


_UNSET = "(unset)"


def config_changes(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ("output",)) -> dict[str, Any]:
    """``{dotted key: (old, new)}`` for every value that differs between two configuration mappings."""
    before, after = _flatten(old), _flatten(new)
    changes = {}
    for key in [*before, *(key for key in after if key not in before)]:
        if key.split(".")[0] in ignore:
            continue
        was, now = before.get(key, _UNSET), after.get(key, _UNSET)
        if was != now:
            changes[key] = (was, now)
    return changes


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def describe_changes(changes: dict[str, Any], limit: int = 8) -> str:
    """``train.iters 30 -> 60, seed 0 -> 7`` (the first ``limit``, then how many more)."""
    shown = [f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in list(changes.items())[:limit]]
    more = f" (and {len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(shown) + more


def record_changes(folder: str | Path, changes: dict[str, Any], step: int) -> Path:
    """Append one entry (iteration, time, ``key: {old, new}``) to ``<folder>/changes.yaml``; returns its path."""
    path = Path(folder) / CHANGES_NAME
    entry = {
        "at_iteration": step,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()},
    }
    with path.open("a", encoding="utf-8") as stream:
        stream.write(yaml.safe_dump([entry], sort_keys=False))
    return path


__all__ = [
    "CHANGES_NAME",
    "CONFIG_NAME",
    "LOCK_NAME",
    "RunFolderWarning",
    "RunLock",
    "config_changes",
    "describe_changes",
    "is_unfinished_save",
    "record_changes",
    "remove_unfinished_saves",
    "resume_command",
    "saved_config",
]


ENVIRONMENT_NAME = "environment.json"


def missing_plugins_hint(folder: str | Path) -> str:
    """What to install (or unblock) to rebuild a run whose plugins are gone, from the folder's ``environment.json``.

    A run folder records every plugin loaded when it trained, with its distribution and version; a plugin named
    there that is not loaded now is why a component of the run's configuration is unknown. Returns
    ``" the run was trained with plugin 'x' (vltk-x 0.3.0), which is not installed: pip install 'vltk-x==0.3.0'"``
    (or the ``VLTK_BLOCK_PLUGINS`` setting that skips it), or ``""`` when nothing is missing or nothing is recorded.
    """
    from vltk.plugins import get_plugin_manager

    try:
        recorded = json.loads((Path(folder) / ENVIRONMENT_NAME).read_text()).get("plugins") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    manager = get_plugin_manager()
    loaded = {info.name for info in manager.plugins()}
    hints = []
    for name, facts in sorted(recorded.items()):
        if name in loaded or not isinstance(facts, dict):
            continue
        distribution, version = facts.get("distribution"), facts.get("version")
        if name in manager.blocked:
            hints.append(f"plugin '{name}' is blocked by VLTK_BLOCK_PLUGINS: unset it or drop '{name}' from it")
        elif distribution:
            pinned = f"{distribution}=={version}" if version else distribution
            hints.append(
                f"the run was trained with plugin '{name}' ({distribution} {version or ''}".rstrip()
                + f"), which is not installed: pip install '{pinned}'"
            )
        else:
            hints.append(f"the run was trained with plugin '{name}', which is not loaded now")
    return (" " + "; ".join(hints)) if hints else ""
