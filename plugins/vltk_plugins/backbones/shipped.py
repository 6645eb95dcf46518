"""The weights this plugin ships (``backbone.pretrained=builtin:<name>``), declared by one JSON record each.

A record ``builtin/<name>.json`` sits beside its weights file and says what ``vltk list weights`` and ``vltk show
backbone`` print: the file, its sha256 (checked before the file is read), the backbones and variant it loads into,
the command that reproduces it and its evaluation numbers. :func:`write_record` writes one for a new file, so the
sha256 is computed, never typed. Light (json only): the hook module imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vltk.api import BuiltinWeights, UserError, sha256_of

#: Where the shipped files and their records live (package data).
SHIPPED_DIR = Path(__file__).parent / "builtin"

#: The fields a record must have.
REQUIRED = ("name", "file", "sha256", "backbones")


def read_record(path: Path) -> BuiltinWeights:
    """One record as :class:`~vltk.api.BuiltinWeights`; its ``file`` is relative to the record's folder."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"built-in weights record {path} cannot be read ({error}); reinstall vltk") from None
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise UserError(f"built-in weights record {path} lacks {', '.join(missing)}; reinstall vltk")
    return BuiltinWeights(
        name=record["name"],
        path=path.parent / record["file"],
        sha256=record["sha256"],
        backbones=tuple(record["backbones"]),
        variant=record.get("variant"),
        summary=record.get("summary", ""),
        reproduce=record.get("reproduce", ""),
        evaluation=record.get("evaluation", {}),
    )


def shipped_weights(folder: Path = SHIPPED_DIR) -> list[BuiltinWeights]:
    """Every record in ``folder``, by name."""
    return [read_record(path) for path in sorted(folder.glob("*.json"))]


def write_record(
    weights_file: Path,
    *,
    name: str,
    backbones: Sequence[str],
    variant: str | None = None,
    summary: str = "",
    reproduce: str = "",
    evaluation: Mapping[str, Any] | None = None,
    check: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<name>.json`` beside ``weights_file`` with the file's sha256: how a new shipped file is declared.

    ``check`` is what a test recomputes from the shipped file (the embedding of a fixed image,
    :mod:`vltk_plugins.backbones.ship`)."""
    record_path = weights_file.parent / f"{name}.json"
    digest = sha256_of(weights_file)
    payload = {
        "name": name,
        "file": weights_file.name,
        "sha256": digest,
        "backbones": list(backbones),
        "variant": variant,
        "summary": summary,
        "reproduce": reproduce,
        "evaluation": dict(evaluation or {}),
        "check": dict(check or {}),
    }
    record_path.write_text(json.dumps(payload, indent=2) + "\n")
    return record_path


__all__ = ["REQUIRED", "SHIPPED_DIR", "read_record", "shipped_weights", "write_record"]
