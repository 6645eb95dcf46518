"""The errors vltk_kernels raises on purpose, so callers can tell "fix your setup" from a bug.

vltk_kernels stands alone (it imports nothing from vltk), so it owns its error types. An application built on it
decides how to show them: the vltk CLI learns them from the kernels plugin's ``vltk_user_error_types`` hook and
prints a :class:`KernelBackendError` as one ``Error: ...`` line with exit code 2, like its own user errors.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base of every error vltk_kernels raises deliberately (not a crash inside a kernel)."""


class KernelBackendError(KernelError, ValueError):
    """A kernel backend was requested that cannot run here (or does not exist); the message says how to fix it.

    A ``ValueError`` too: the bad value is the requested backend name or the environment it was asked for in.
    """


__all__ = ["KernelBackendError", "KernelError"]
