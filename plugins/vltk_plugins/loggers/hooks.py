"""Entry point of the built-in experiment loggers (``loggers:`` in a run config, ``--logger`` on ``vltk train``).

Light on purpose: only the options models are imported here; TensorBoard and wandb are imported by the factory
of the logger a run chooses, never by ``vltk list`` or a run that does not use them.
"""

from __future__ import annotations

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.loggers.options import JsonLinesOptions, TensorBoardOptions, WandbOptions


@hookimpl
def vltk_register_loggers(register: Register) -> None:
    register(
        "jsonl",
        lazy_factory("vltk_plugins.loggers.jsonl", "build_jsonl_logger"),
        options=JsonLinesOptions,
        summary="metrics.jsonl in the run folder: one JSON line per step and evaluation (on by default)",
    )
    register(
        "tensorboard",
        lazy_factory("vltk_plugins.loggers.tensorboard", "build_tensorboard_logger"),
        options=TensorBoardOptions,
        summary='TensorBoard events in RUN/tensorboard (torch.utils.tensorboard; pip install "vltk-dg[tensorboard]")',
    )
    register(
        "wandb",
        lazy_factory("vltk_plugins.loggers.wandb", "build_wandb_logger"),
        options=WandbOptions,
        summary='Weights & Biases run (online or offline), resumed with the run folder (pip install "vltk-dg[wandb]")',
    )
