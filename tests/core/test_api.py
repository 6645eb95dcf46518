"""``vltk.api``, the one module plugins import from: light to import, complete, documented, typed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import vltk.api

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_api_does_not_import_torch() -> None:
    code = "import sys, vltk.api; print(sorted(name for name in ('torch', 'numpy') if name in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", vltk.api.__all__)
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    assert getattr(vltk.api, name) is not None
    assert f"``{name}``" in (vltk.api.__doc__ or ""), f"vltk.api's docstring does not list {name}"


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        vltk.api.Trainer  # noqa: B018


def test_the_package_ships_a_py_typed_marker() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert (REPO / "vltk" / "py.typed").is_file()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["vltk"]
