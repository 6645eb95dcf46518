"""Ctrl-C and SIGTERM as requests to stop at the next step boundary, so that every saved state is a real one.

A ``KeyboardInterrupt`` raised wherever Python happens to be leaves a half-done step behind (BatchNorm buffers and
the RNG already advanced, the optimizer and the step counter not), and a checkpoint of that state cannot resume
exactly. Here the first SIGINT or SIGTERM only sets :attr:`StopSignals.requested`; the training loop looks at it
between steps (and after an evaluation), saves ``last.pt`` and raises :class:`Interrupted`. A second signal stops
at once without saving, except while a checkpoint is being written: then it waits for the save to finish, so a
file on disk is always whole. Clusters pre-empt jobs with SIGTERM, which is treated like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: The signals that ask a run to stop, and how messages name them.
SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``saved``: whether ``last.pt`` was written for the step it stopped at.

    ``exit_code`` is the shell convention, 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, signum: int, *, saved: bool) -> None:
        super().__init__(SIGNAL_NAMES.get(signum, f"signal {signum}"))
        self.signum = signum
        self.saved = saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return SIGNAL_NAMES.get(self.signum, f"signal {self.signum}")


class StopSignals:
    """Installed for the duration of ``with``: SIGINT/SIGTERM set :attr:`requested` instead of raising.

    ``immediate`` (set by the loop when nothing is left to lose, e.g. during the final evaluation after
    ``last.pt`` was written) makes the first signal raise at once. ``second_stops=False`` (the ranks of a
    data-parallel run) ignores further signals: the launcher forwards a signal that may also have reached the
    worker directly (SLURM signals every process of a step), and it kills its workers itself after a timeout.
    Outside the main thread signals cannot be caught; then nothing is installed and Python's default behaviour
    stays.
    """

    def __init__(self, notify: Callable[[str], None] | None = None, *, second_stops: bool = True) -> None:
        self.notify = notify or (lambda message: print(message, file=sys.stderr, flush=True))
        self.second_stops = second_stops
        self.requested: int | None = None
        self.immediate = False
        self._saving = 0
        self._raise_after_save: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        first = self.requested is None
        if first:
            self.requested = signum
            if not self.immediate:
                again = "again to stop at once" if self.second_stops else "further signals are the launcher's"
                self.notify(f"\n{name}: stopping after the current step to save last.pt ({again})")
                return
        elif not self.second_stops:
            return
        if self._saving:
            self.notify(f"{name}: a checkpoint is being written; stopping as soon as it is complete")
            self._raise_after_save = signum
            return
        raise Interrupted(self.requested if first else signum, saved=False)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Signals wait while a checkpoint is written; a stop asked for meanwhile happens right after."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
        if not self._saving and self._raise_after_save is not None:
            signum, self._raise_after_save = self._raise_after_save, None
            raise Interrupted(signum, saved=False)


__all__ = ["SIGNAL_NAMES", "Interrupted", "StopSignals"]
