"""What a run shows while it works: the training bar (loss terms, learning rate, speed, ETA), evaluation progress
per domain, and the parameter counts at the start.

On a terminal this is one rich progress display on stderr; otherwise (CI, pipes, ``> log``) plain lines every
``log_interval`` steps and one line per evaluated domain. The speed and the ETA count training time only: the
clock stops while the run evaluates (or fits an augmenter), so an evaluation does not make the ETA jump.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

#: record keys that are not loss terms
_NOT_TERMS = {"iter", "lr", "loss"}


def format_count(count: int) -> str:
    """``1234567`` -> ``1.23M``: parameter counts at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def parameter_summary(model: Any) -> str:
    """``parameters: 5.52M total, 1.20M trainable (21.7%)``: what the adapter and the backbone left to train."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    share = 100.0 * trainable / total if total else 0.0
    return f"parameters: {format_count(total)} total, {format_count(trainable)} trainable ({share:.1f}%)"


def describe_step(record: Mapping[str, Any]) -> str:
    """``loss 0.812 (ce 0.703 dice 0.109)  lr 3.00e-04`` from a training step's record."""
    terms = [
        (key.removeprefix("loss_"), value)
        for key, value in record.items()
        if key not in _NOT_TERMS and isinstance(value, (int, float))
    ]
    text = f"loss {record['loss']:.4g}"
    if len(terms) > 1:  # a single term is the loss itself
        text += " (" + " ".join(f"{name} {value:.3g}" for name, value in terms) + ")"
    if "lr" in record:
        text += f"  lr {record['lr']:.2e}"
    return text


def format_seconds(seconds: float) -> str:
    if seconds == float("inf") or seconds != seconds:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainProgress:
    """The training display; :meth:`paused` stops its clock (evaluations, fit phases) and shows their progress.

    ``clock`` is injectable so that the rate arithmetic is testable without sleeping.
    """

    def __init__(
        self,
        console: Any,
        total: int,
        start: int,
        enabled: bool,
        log_interval: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.console = console
        self.total = total
        self.start_step = start
        self.step = start
        self.enabled = enabled
        self.interactive = enabled and bool(getattr(console, "is_terminal", False))
        self.log_interval = log_interval
        self.clock = clock
        self.train_seconds = 0.0
        self._running_since: float | None = None
        self.bar: Any = None
        self.task: Any = None

    # ---------------------------------------------------------------------------------------------- timing

    def _tick(self) -> None:
        now = self.clock()
        if self._running_since is not None:
            self.train_seconds += now - self._running_since
        self._running_since = now

    @property
    def speed(self) -> float:
        """Steps per second of training time (evaluations and fit phases excluded)."""
        done = self.step - self.start_step
        return done / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        speed = self.speed
        return (self.total - self.step) / speed if speed > 0 else float("inf")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The clock stops for the body: its time is not training time."""
        self._tick()
        self._running_since = None
        try:
            yield
        finally:
            self._running_since = self.clock()

    # --------------------------------------------------------------------------------------------- display

    def __enter__(self) -> TrainProgress:
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start_step, info="", eta="")
        self._running_since = self.clock()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    def advance(self, step: int, record: Mapping[str, Any]) -> None:
        """One training step done; ``record`` has ``loss``, its terms and ``lr``."""
        self.step = step
        self._tick()
        speed, eta = self.speed, format_seconds(self.eta_seconds)
        if self.bar is not None:
            info = f"{describe_step(record)}  {speed:.2f} it/s"
            self.bar.update(self.task, completed=step, info=info, eta=f"ETA {eta}")
        elif self.enabled and (step % self.log_interval == 0 or step == self.total):
            line = f"iter {step}/{self.total}  {describe_step(record)}  {speed:.2f} it/s  ETA {eta}"
            print(line, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def evaluation(self) -> EvalProgress:
        """Progress of an evaluation shown in this display (as its own line on the bar)."""
        return EvalProgress(self.console, enabled=self.enabled, bar=self.bar)


class EvalProgress:
    """Per-domain evaluation progress, handed to :func:`vltk.engine.evaluation.evaluate`.

    On a terminal: a bar per domain (on the training display when there is one, else its own); otherwise one
    line per evaluated domain.
    """

    def __init__(self, console: Any, *, enabled: bool, bar: Any = None) -> None:
        self.console = console
        self.enabled = enabled
        self.interactive = enabled and bool(getattr(console, "is_terminal", False))
        self.bar = bar
        self._own_bar = False
        self.task: Any = None
        self.domain = ""
        self.images = 0
        self.started = 0.0

    def start_domain(self, domain: str, images: int) -> None:
        self.domain, self.images, self.started = domain, 0, time.perf_counter()
        if not self.interactive:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console,
            )  # fmt: skip
            self.bar.__enter__()
            self._own_bar = True
        self.task = self.bar.add_task(f"eval {domain}", total=images, info="images", eta="")

    def advance(self, images: int) -> None:
        self.images += images
        if self.task is not None:
            self.bar.update(self.task, advance=images)

    def end_domain(self, summary: str = "") -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        elif self.enabled:
            seconds = time.perf_counter() - self.started
            print(
                f"eval {self.domain}: {self.images} images in {seconds:.1f}s{'  ' + summary if summary else ''}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._own_bar and self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
            self._own_bar = False


__all__ = ["EvalProgress", "TrainProgress", "describe_step", "format_count", "parameter_summary"]
