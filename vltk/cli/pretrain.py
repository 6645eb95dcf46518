"""``vltk pretrain``: ``vltk train`` with the ``pretrain`` recipe and ``task: pretrain`` as defaults.

The same options, run folder, progress, checkpoints, resume and loggers as ``vltk train`` (it is that command's
function); what differs is the recipe (an image-text foundation on captioned synthetic scenes) and the file the
run leaves at the end, ``open_clip.pt``, which ``backbone.pretrained=RUN/open_clip.pt`` loads.
"""

from __future__ import annotations

from typing import Any

import click

from vltk.cli.run import train_command
from vltk.errors import UserError

PRETRAIN_EPILOG = """\b
Examples:
  vltk pretrain                                   # the pretrain recipe: tiny EVA02-CLIP on captioned scenes
  vltk pretrain train.iters=2000 --output runs/fm # longer, elsewhere
  vltk pretrain decoder.loss=siglip               # SigLIP's sigmoid loss instead of CLIP's
  vltk pretrain --resume runs/pretrain            # continue a run
  vltk train backbone.pretrained=runs/pretrain/open_clip.pt   # fine-tune the default recipe from the result
"""

#: The recipe ``vltk pretrain`` uses when none is given.
PRETRAIN_RECIPE = "pretrain"


def _pretrain(**values: Any) -> None:
    """Train an image-text foundation (recipe ``pretrain`` by default); writes RUN/open_clip.pt at the end."""
    task = values.get("task")
    if task not in (None, "pretrain"):
        raise UserError(f"vltk pretrain trains task 'pretrain', not '{task}'; leave out --task or use vltk train")
    values["task"] = "pretrain" if values.get("resume") is None else task
    values["recipe"] = values.get("recipe") or (PRETRAIN_RECIPE if values.get("resume") is None else None)
    click.get_current_context().invoke(train_command.callback, **values)  # type: ignore[arg-type]


pretrain_command = click.Command(
    "pretrain",
    callback=_pretrain,
    params=list(train_command.params),
    help=_pretrain.__doc__,
    epilog=PRETRAIN_EPILOG,
)

__all__ = ["PRETRAIN_RECIPE", "pretrain_command"]
