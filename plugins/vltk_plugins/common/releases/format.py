"""A released-checkpoint format: how vltk recognises a paper's published file and what it becomes.

Each paper's plugin declares one :class:`ReleaseFormat` (``vltk_release_formats``): ``detect`` recognises the
file by characteristic keys (Rein's ``backbone.reins.``, DenseCLIP's ``context_decoder.``), ``plan`` reads the
architecture off the tensor shapes and returns the :class:`ReleasePlan`: the key map (data, see
:mod:`~vltk_plugins.common.releases.keymap`), the recipe that rebuilds the model and the class names.
:meth:`ReleaseFormat.convert` runs both and returns a vltk checkpoint, the same layout ``vltk train`` writes
(``model``, ``config``, ``class_names``, ``backbone_included``) plus a ``release`` record of the renames.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vltk_plugins.common.releases.keymap import Rule, apply_keymap
from vltk_plugins.common.releases.read import ReleaseFile, read_release


@dataclass
class ReleasePlan:
    """What one released file becomes: ``rules`` map its keys, ``config`` is the run configuration (a recipe)
    that rebuilds the model, ``class_names`` the classes when the file records them (``None``: the dataset's),
    ``backbone_included`` whether the file holds the backbone, ``notes`` what the report should say, ``extra``
    tensors the upstream model has implicitly (a constant), filled in under their vltk names."""

    rules: Sequence[Rule]
    config: dict[str, Any]
    num_classes: int
    class_names: list[str] | None = None
    backbone_included: bool = False
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleaseFormat:
    """``name`` is what ``vltk convert --from`` takes; ``title`` names the paper and the layout; ``expects`` the
    keys a file of the format has (for the refusal of a wrong file)."""

    name: str
    title: str
    expects: str
    detect: Callable[[ReleaseFile], bool]
    plan: Callable[[ReleaseFile, dict[str, Any]], ReleasePlan]

    def convert(self, path: str, hints: dict[str, Any]) -> dict[str, Any] | None:
        """The vltk checkpoint ``path`` holds, or ``None`` when it is not a file of this format."""
        release = read_release(path)
        if release is None or not self.detect(release):
            return None
        plan = self.plan(release, hints)
        mapped = apply_keymap(release.state, plan.rules, title=self.title)
        for key, value in plan.extra.items():
            mapped.state.setdefault(key, value)
        checkpoint: dict[str, Any] = {
            "model": mapped.state,
            "config": plan.config,
            "backbone_included": plan.backbone_included,
            "step": 0,
            "num_classes": plan.num_classes,
            "release": {
                "format": self.name,
                "title": self.title,
                "source": str(Path(path).expanduser().resolve()),
                "renamed": mapped.renamed,
                "dropped": mapped.dropped,
                "notes": list(plan.notes),
            },
        }
        if plan.class_names:
            checkpoint["class_names"] = list(plan.class_names)
        return checkpoint


def recipe_file(path: Path) -> dict[str, Any]:
    """A plugin's recipe YAML as a dict: the base of a release's configuration (data, training, evaluation)."""
    return copy.deepcopy(yaml.safe_load(path.read_text()) or {})


def prefixed(prefix: str, rules: Sequence[Rule]) -> list[Rule]:
    """``rules`` with ``prefix`` (a regular expression) in front of every released key pattern."""
    out: list[Rule] = []
    for rule in rules:
        out.append(type(rule)(**{**rule.__dict__, "pattern": prefix + rule.pattern}))
    return out


def layer_count(release: ReleaseFile, pattern: str) -> int:
    """How many numbered layers ``pattern`` (a regex with one group for the index) finds among the keys."""
    import re

    compiled = re.compile(pattern)
    found = {int(match.group(1)) for key in release.state if (match := compiled.match(key))}
    return max(found) + 1 if found else 0


__all__ = ["ReleaseFormat", "ReleasePlan", "layer_count", "prefixed", "recipe_file"]
