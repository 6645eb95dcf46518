"""Tasks as objects: what a run predicts decides how its model is assembled, trained, evaluated and reported.

One :class:`~vltk.tasks.base.Task` per task, looked up by the run's ``task`` in :data:`TASKS` — the only place the
core chooses between segmentation and detection. A task owns: which data sources, backbones, adapters and decoders
fit it; how the components are wired into one model; how a batch is collated and turned into loss terms; the
per-domain metric of the (single) evaluation loop; the selection score of ``best.pt``; the result table and plot;
and whether ``vltk predict`` applies. Importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vltk.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from vltk.tasks.base import Task

#: task name -> "module:class" of its Task (imported on first use; the modules import torch lazily too).
TASKS: dict[str, str] = {
    "segmentation": "vltk.tasks.segmentation:SegmentationTask",
    "detection": "vltk.tasks.detection:DetectionTask",
    "pretrain": "vltk.tasks.pretrain:PretrainTask",
}

_INSTANCES: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The task object for ``name``; an unknown name is a user error with the closest one."""
    if name not in _INSTANCES:
        if name not in TASKS:
            raise UserError(f"unknown task '{name}';{did_you_mean(name, TASKS)} tasks: {', '.join(TASKS)}")
        module, attribute = TASKS[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), attribute)()
    return _INSTANCES[name]


__all__ = ["TASKS", "get_task"]
