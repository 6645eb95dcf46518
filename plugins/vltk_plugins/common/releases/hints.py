"""What the command line tells a release conversion beyond the file: the run overrides, read once here.

Shapes give most of an architecture but not all (attention heads are in no shape). ``vltk convert`` and
``vltk eval`` pass their ``KEY=VALUE`` overrides to the format as ``hints["overrides"]``; a format reads the one
it needs with :func:`hinted` so that the model it plans is the one the overrides will build.
"""

from __future__ import annotations

from typing import Any

import yaml


def hinted(hints: dict[str, Any], key: str, default: Any) -> Any:
    """The value of the last ``key=VALUE`` override in ``hints["overrides"]`` (YAML-parsed), else ``default``."""
    value = default
    for token in hints.get("overrides") or ():
        name, sep, raw = str(token).partition("=")
        if sep and name.strip() == key:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
    return value


__all__ = ["hinted"]
