"""Checks that run before a command writes anything or builds a large model.

A run that fails after an hour because a target-domain folder is misspelt, or that rewrites an existing run
folder's ``config.resolved.yaml`` before finding out the data is missing, loses work. So ``vltk train``, ``eval``
and ``predict`` first check what they can without side effects: that the output folder can be written (probing
with a temporary file that is removed at once), and that every split of the data source a run will read exists,
with at least one training batch in it. Each problem is one :class:`~vltk.errors.UserError`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from vltk.errors import UserError


def check_output_folder(path: str | Path, *, option: str = "--output") -> None:
    """Refuse an output folder that cannot be created or written, without leaving anything behind.

    An existing folder gets a temporary probe file; a new one is probed in its nearest existing parent (which
    must be a folder: a file in the way is named). ``option`` is the flag the fix refers to.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder '{path}' is a file; choose another {option} or move the file away")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"output folder '{path}' cannot be created: '{existing}' is a file, not a folder; choose another {option}"
        )
    try:
        if existing == path:
            handle, probe = tempfile.mkstemp(prefix=".vltk-write-check.", dir=path)
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".vltk-write-check.", dir=existing))
    except OSError as error:
        what = "written" if existing == path else f"created (in '{existing}')"
        raise UserError(
            f"output folder '{path}' cannot be {what}: {error.strerror or error}; choose another {option} or fix the "
            "folder's permissions"
        ) from None


def make_output_folder(path: str | Path, *, option: str = "--output") -> Path:
    """Create ``path`` (and parents) after :func:`check_output_folder`; an OS error is one clear line too."""
    path = Path(path)
    check_output_folder(path, option=option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise UserError(f"output folder '{path}' cannot be created: {reason}; choose another {option}") from None
    return path


def check_data_source(source: Any, train_batch_size: int | None = None) -> dict[str, Any]:
    """Open every split a run reads (the train split of each training domain when ``train_batch_size`` is given,
    the val split of every domain) so that a missing folder fails now, not at the first evaluation.

    Returns the opened training splits by domain (the trainer reuses them). A training set smaller than one
    batch is an error: the loop would otherwise train silently on smaller batches than configured. The first
    sample of every split is read too (every random state kept as it was), so that files a dataset cannot use
    throughout (labels in another id encoding, an image header claiming 40000x40000 pixels) fail before anything
    is written; a bad file later in a split still fails with one error naming it, when it is read.
    """
    train: dict[str, Any] = {}
    if train_batch_size is not None:
        train = {domain: source.split("train", domain) for domain in source.train_domains}
        for split in train.values():
            read_first_sample(split)
        total = sum(len(split) for split in train.values())
        if total < train_batch_size:
            domains = ", ".join(source.train_domains)
            raise UserError(
                f"train.batch_size={train_batch_size} is larger than the training set ({total} images in {domains}); "
                f"set train.batch_size to at most {total} or use more training images"
            )
    for domain in source.domains:
        read_first_sample(source.split("val", domain))
    return train


def read_first_sample(split: Any) -> None:
    """Read ``split[0]`` (if there is one) leaving Python's, NumPy's and torch's random states untouched, so that
    a checked run draws exactly what an unchecked one would."""
    if not len(split):
        return
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            split[0]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


__all__ = ["check_data_source", "check_output_folder", "make_output_folder", "read_first_sample"]
