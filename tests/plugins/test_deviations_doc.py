"""docs/deviations.md cannot name a switch that does not exist.

Every backticked ``component.option`` (or ``component.option=value``) whose component is a registered name, and
every ``train.option`` / ``eval.option``, must be a field of that component's options model (or of the run's
train/eval section); a value, when given, must validate. Backticked names that are not components (weight keys
such as ``refinenet4.resConfUnit1``) are not switches and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vltk.config import EvalConfig, TrainConfig
from vltk.plugins import get_registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "deviations.md"
SWITCH = re.compile(r"`([a-z][a-z0-9-]*)\.([a-z_]+)(?:=([^`\s]+))?`")
KINDS = ("backbone", "adapter", "prompter", "decoder", "augmenter", "dataset")


def options_models() -> dict[str, type]:
    registry = get_registry()
    models: dict[str, type] = {"train": TrainConfig, "eval": EvalConfig}
    for kind in KINDS:
        for spec in registry.specs(kind):
            models[spec.name] = spec.options
    return models


def switches() -> list[tuple[str, str, str | None]]:
    """The ``component.option[=value]`` mentions whose component is an options model (see the module docstring)."""
    models = options_models()
    return [match.groups() for match in SWITCH.finditer(DOC.read_text()) if match.group(1) in models]


def test_the_doc_names_switches_of_every_paper() -> None:
    named = {component for component, _, _ in switches()}
    assert {"rein", "mask2former", "denseclip", "clip-gap", "lora", "train"} <= named


@pytest.mark.parametrize(("component", "option", "value"), switches())
def test_every_named_switch_exists(component: str, option: str, value: str | None) -> None:
    model = options_models()[component]
    assert option in model.model_fields, f"docs/deviations.md names {component}.{option}, which does not exist"
    if value is not None:
        model.model_validate({option: {"true": True, "false": False}.get(value, value)})
