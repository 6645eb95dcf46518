"""The ``vltk`` command when plugins misbehave or are switched off, run as real subprocesses.

A broken plugin setup must end in one ``Error: ...`` line (exit 2) or one ``warning: ...`` line, never a
traceback; with every built-in plugin blocked the command still starts, lists and explains what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILT_IN_PLUGINS = "backbones,adapters,prompters,decoders,datasets,kernels,rein,denseclip,lseg,vltseg,clip-gap,loggers"


def _vltk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vltk", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def duplicate_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An installed (dist-info on PYTHONPATH) plugin ``dup`` registering the adapter name ``rein`` again."""
    site = tmp_path_factory.mktemp("site")
    (site / "vltk_dup_hooks.py").write_text(
        "from vltk.api import hookimpl, lazy_factory\n\n\n"
        "@hookimpl\n"
        "def vltk_register_adapters(register):\n"
        "    register('rein', lazy_factory('vltk_dup_hooks', 'build'), summary='a second rein')\n"
    )
    dist_info = site / "vltk_dup-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: vltk-dup\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[vltk]\ndup = vltk_dup_hooks\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_that_fails_to_import_says_how_to_skip_it(tmp_path: Path) -> None:
    (tmp_path / "vltk_broken_hooks.py").write_text("import a_module_that_is_not_installed\n")
    dist_info = tmp_path / "vltk_broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: vltk-broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[vltk]\nbroken = vltk_broken_hooks\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for args in (["list"], ["train", "--dry-run"]):
        done = _vltk(*args, env=env)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "plugin 'broken'" in errors[0] and "skip it with VLTK_BLOCK_PLUGINS=broken" in errors[0]
    skipped = _vltk("list", "adapters", env={**env, "VLTK_BLOCK_PLUGINS": "broken"})
    assert skipped.returncode == 0 and "rein" in skipped.stdout, skipped.stderr


def test_two_plugins_registering_one_name_is_one_error_line(duplicate_plugin: dict[str, str]) -> None:
    done = _vltk("list", env=duplicate_plugin)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "adapter 'rein' is registered twice" in errors[0]
    assert "plugin 'rein'" in errors[0] and "plugin 'dup'" in errors[0] and "VLTK_BLOCK_PLUGINS=" in errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "Usage:"),
        (
            ["list"],
            "no backbones, adapters, prompters, decoders, augmenters, datasets, loggers registered: install a plugin",
        ),
        (["list", "adapters"], "no adapters registered: install a plugin or unset VLTK_BLOCK_PLUGINS"),
        (["plugins"], "no plugins loaded: install a plugin or unset VLTK_BLOCK_PLUGINS"),
    ],
)
def test_blocking_every_built_in_plugin_leaves_the_command_working(args: list[str], expected: str) -> None:
    done = _vltk(*args, env={"VLTK_BLOCK_PLUGINS": BUILT_IN_PLUGINS})
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    assert done.stderr == ""


def test_a_misspelled_blocked_plugin_is_one_warning_line() -> None:
    done = _vltk("list", "adapters", env={"VLTK_BLOCK_PLUGINS": "reinn"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("warning: VLTK_BLOCK_PLUGINS names 'reinn'") and "did you mean 'rein'?" in done.stderr
    assert "rein" in done.stdout  # nothing was blocked


def test_help_lists_no_plugin_command_of_a_blocked_plugin() -> None:
    assert "bench" in _vltk("--help").stdout
    assert "bench" not in _vltk("--help", env={"VLTK_BLOCK_PLUGINS": "kernels"}).stdout
