"""Shared tools of the released-checkpoint tests (``tests/plugins/*/test_*_release.py``).

Each test builds a tiny vltk model, renames its tensors to the upstream names with an inverse table written in the
test itself (independently of the plugin's key map), saves them in the upstream wrapper format, converts the file
back and compares the outputs of both models.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch


class ReleaseTools:
    """Build tiny models, rename state dicts with a test's inverse table, compare model outputs."""

    @staticmethod
    def resolve(recipe: str | None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None) -> Any:
        from vltk.config import build_config, resolve
        from vltk.plugins import get_plugin_manager

        manager = get_plugin_manager()
        config = build_config(recipe, overrides=list(overrides), recipe_dirs=manager.recipe_dirs(), base=base)
        return resolve(config, manager.get_registry())

    @classmethod
    def model(cls, recipe: str, overrides: Sequence[str], class_names: Sequence[str], seed: int = 0) -> Any:
        """The recipe's model with every parameter and buffer of floating type redrawn (so zero-initialised
        offsets, LayerScales and biases carry information through the comparison), in eval mode."""
        from vltk.pipeline import build_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(cls.resolve(recipe, overrides), class_names=list(class_names), ignore_index=255)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.is_floating_point() and "running_var" not in name:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
                elif "running_var" in name:
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        return model.eval()

    @staticmethod
    def rename(state: dict[str, torch.Tensor], table: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Every key through the first ``(regex, replacement)`` of ``table`` that matches it whole; a key no entry
        matches fails the test (the inverse table must be complete)."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            for pattern, replacement in table:
                if re.fullmatch(pattern, key):
                    out[re.sub(pattern, replacement, key)] = value.clone()
                    break
            else:
                raise AssertionError(f"the test's inverse table has no entry for {key}")
        return out

    @staticmethod
    def logits(model: Any, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(images)["seg_logits"]

    @staticmethod
    def load_converted(
        path: str | Path,
        overrides: Sequence[str] = (),
        backbone_weights: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Any:
        """The model ``vltk eval`` builds from ``path`` (a converted checkpoint or a release read in memory), with
        the dataset's ``class_names`` where the release records none."""
        from vltk.cli.run import build_checkpoint_model, load_checkpoint_config

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, run = load_checkpoint_config(str(path), tuple(overrides), backbone_weights)
            names = state.get("class_names") or class_names or [f"class_{i}" for i in range(state["num_classes"])]
            return build_checkpoint_model(state, run, list(names), 255)


@pytest.fixture
def release_tools() -> type[ReleaseTools]:
    return ReleaseTools
