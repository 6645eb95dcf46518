"""The tiny run the core's end-to-end tests train: a 32-pixel, two-domain synthetic set and the tiny EVA02 with a
16-channel FPN, so a whole `vltk train` takes seconds. One copy, so a change of a default (a new required option,
a slower decoder) is made in one place; each test adds only what it is about (iterations, intervals, overlays)."""

from __future__ import annotations

#: The data and model of a tiny run, as ``key=value`` overrides (frozen adapter prepended by :func:`tiny_cli`).
TINY_RUN = (
    "dataset.size=32",
    "dataset.num_train=8",
    "dataset.num_val=1",
    "dataset.domains=[synthetic,fog]",
    "backbone.variant=tiny",
    "decoder.channels=16",
    "decoder.head_channels=16",
    "train.batch_size=2",
)

#: A tiny run for ``vltk.train(overrides=...)`` and ``vltk.load``: 64 pixels (slide and flip tests need room), two
#: domains, two iterations, no overlays.
TINY_API = {
    "dataset.size": 64,
    "dataset.num_train": 4,
    "dataset.num_val": 2,
    "dataset.domains": ["synthetic", "night"],
    "train.iters": 2,
    "train.batch_size": 2,
    "eval.batch_size": 2,
    "eval.overlays": 0,
}


def tiny_overrides(*extra: str) -> list[str]:
    """:data:`TINY_RUN` followed by ``extra`` (later overrides win, so ``extra`` may change any of them)."""
    return [*TINY_RUN, *extra]


def tiny_cli(*extra: str) -> list[str]:
    """Arguments of ``vltk train`` for a tiny run with the frozen adapter, then ``extra``."""
    return ["--adapter", "frozen", *tiny_overrides(*extra)]
