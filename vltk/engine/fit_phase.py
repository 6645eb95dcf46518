"""The fit phase of augmenters that have one (CLIP the Gap's offsets), run once before the first training step.

The engine tells a fit phase how long the run is (``run_iters``: an augmenter may scale its budget with it, so a
smoke run does not spend minutes fitting) and gives it ``should_stop`` (true once Ctrl-C or SIGTERM asked the run
to stop): the phase ends at its next step and the run stops cleanly, with the augmenter left unfitted, so that a
resume fits it again. Both are passed only to ``fit`` methods that accept them (older third-party augmenters
keep working). Fitted state lives in the checkpoint, so a resumed run skips the phase.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any


def pending_fits(model: Any) -> list[Any]:
    """The model's augmenters with a ``fit`` phase that has not run (an unfitted one after a resume, too)."""
    return [
        augmenter
        for augmenter in getattr(model, "augmenters", ())
        if callable(getattr(augmenter, "fit", None)) and not getattr(augmenter, "is_fitted", False)
    ]


def _accepted(function: Callable[..., Any], **candidates: Any) -> dict[str, Any]:
    """The keyword arguments of ``candidates`` that ``function`` takes by name (or through ``**kwargs``)."""
    parameters = inspect.signature(function).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return candidates
    return {name: value for name, value in candidates.items() if name in parameters}


def fit_augmenters(
    model: Any,
    images: Iterable[Any],
    *,
    device: Any,
    run_iters: int,
    should_stop: Callable[[], bool],
    log: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """Run every pending fit phase; returns one summary per augmenter (recorded in the run's history).

    Stops after the phase that saw ``should_stop()`` become true; the caller then stops the run.
    """
    summaries = []
    for augmenter in pending_fits(model):
        name = type(augmenter).__name__
        if log is not None:
            log(f"fit phase of {name} (before training; Ctrl-C stops it)...")
        started = time.perf_counter()
        extra = _accepted(augmenter.fit, run_iters=run_iters, should_stop=should_stop)
        summary = augmenter.fit(model, images, device=device, log=log, **extra)
        summary = {"augmenter": name, "seconds": time.perf_counter() - started, **dict(summary or {})}
        summaries.append(summary)
        if should_stop():
            break
        if log is not None:
            log(f"fit phase of {name} done in {summary['seconds']:.1f}s")
    return summaries


__all__ = ["fit_augmenters", "pending_fits"]
