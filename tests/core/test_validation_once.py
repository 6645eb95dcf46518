"""Each component's options are validated exactly once per run: by ``vltk.config.resolve``, never again.

The run goes through the real CLI (in-process): config, resolution, data source, model, trainer, evaluation and
the run folder. Every ``ComponentSpec.validate`` call is counted per component section.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from vltk.registry import ComponentSpec
from vltk.testing import invoke

TINY_SEGMENTATION = [
    "--prompter",
    "clip-template",
    "backbone.variant=tiny",
    "decoder.channels=16",
    "decoder.head_channels=16",
    "dataset.size=32",
    "dataset.num_train=4",
    "dataset.num_val=1",
    "dataset.domains=[synthetic,fog]",
    "train.iters=1",
    "train.batch_size=2",
    "eval.overlays=0",
]
TINY_DETECTION = [
    "--recipe",
    "clip-gap/synthetic",
    "augmenters.0.fit_steps=1",
    "augmenters.0.crops_per_image=1",
    "augmenters.0.crop_size=64",
    "augmenters.0.offset_size=3",
    "dataset.size=[64,64]",
    "dataset.num_train=2",
    "dataset.num_val=1",
    "dataset.domains=[synthetic,fog]",
    "train.iters=1",
    "train.batch_size=2",
    "train.warmup_iters=0",
    "train.steps=[1]",
]


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counts: Counter = Counter()
    original = ComponentSpec.validate

    def counting(self: ComponentSpec, values=None, *, where=None):  # noqa: ANN001, ANN202 - same as the original
        counts[(where or self.kind, self.name)] += 1
        return original(self, values, where=where)

    monkeypatch.setattr(ComponentSpec, "validate", counting)
    return counts


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            TINY_SEGMENTATION,
            {
                "backbone": "eva02",
                "adapter": "full",
                "prompter": "clip-template",
                "decoder": "fpn",
                "dataset": "synthetic",
                "loggers.0": "jsonl",
            },
        ),
        (
            TINY_DETECTION,
            {
                "backbone": "clip-resnet",
                "adapter": "full",
                "prompter": "clip-template",
                "decoder": "clip-faster-rcnn",
                "dataset": "synthetic-det",
                "augmenters.0": "clip-gap",
                "loggers.0": "jsonl",
            },
        ),
    ],
    ids=["segmentation", "detection"],
)
def test_every_component_is_validated_once_per_run(
    validations: Counter, tmp_path: Path, arguments: list[str], expected: dict[str, str]
) -> None:
    result = invoke(["train", *arguments, "--quiet", "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert dict(validations) == {(section, name): 1 for section, name in expected.items()}
