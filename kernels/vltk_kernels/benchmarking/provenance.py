"""Where a measurement was taken: the commit, the device and the installed versions, written into every result.

One copy for every benchmark in the repository (``vltk bench`` and the scripts in ``benchmarks/``), so their
JSON files describe their machine the same way.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import torch

from vltk_kernels._dispatch import interpret_mode


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out at ``start`` (default: the working directory), read from ``.git`` directly.

    No git executable is needed (a bare container has none); a git worktree's ``.git`` file is followed to the
    main repository's refs. None outside a repository.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        for base in (git, Path(str(git).split("/worktrees/")[0]) if "/worktrees/" in str(git) else git):
            ref_file = base / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        return None
    return None


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture with the torch threads used and the cores present."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def kernels_distribution() -> tuple[str | None, str | None]:
    """``(name, version)`` of the installed distribution that provides ``vltk_kernels``, or ``(None, None)``.

    Looked up rather than hard-coded: the package may ship in vltk's distribution or on its own.
    """
    names = sorted(set(metadata.packages_distributions().get("vltk_kernels", [])))
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, interpreter mode, versions, platform and commit: the provenance block of a benchmark's JSON."""
    distribution, version = kernels_distribution()
    return {
        "device": describe_device(device),
        "cuda": device.type == "cuda",
        "triton_interpreter": interpret_mode(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "vltk_kernels": version,
            "cuda": torch.version.cuda,
        },
        "distribution": distribution,
        "platform": sys.platform,
        "commit": git_commit(Path(__file__).parent),
    }


def result_header(benchmark: str, device: torch.device) -> dict[str, Any]:
    """The first keys of a ``benchmarks/`` script's JSON: what ran, where, with which versions and threads.

    The thread count is part of the figure on a CPU (ratios move with it), so every result records it.
    """
    return {
        "benchmark": benchmark,
        "device": describe_device(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(Path(__file__).parent),
        "torch_threads": torch.get_num_threads(),
    }


def fail(message: str) -> NoReturn:
    """End a benchmark script on bad input as the CLI does: one ``Error:`` line on stderr, exit code 2."""
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_result(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a benchmark's JSON (folders created) and say where, so every script ends the same way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


__all__ = [
    "describe_device",
    "environment",
    "fail",
    "git_commit",
    "kernels_distribution",
    "result_header",
    "write_result",
]
